"""In-process fan-out of what just happened (stored events, command changes) to waiting requests.

Long-polls watch a command id; SSE streams take the kinds and sites they subscribed to: a message goes
only to the subscribers of its site (and to those of every site), so a console on one estate costs
nothing per event of the hundreds of others, and :meth:`Hub.wants` lets ingest skip building events
that no one will read. Each subscriber has a bounded queue; a slow one loses its oldest messages
(counted) instead of holding memory. With several cloud instances
a change may be ingested elsewhere: :mod:`cloud.fanout` carries each instance's messages to the others
(``forward``), and waiters also re-read the store periodically, for what that live path loses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

KINDS = ("event", "command", "gateway", "work_order")


@dataclass(slots=True, eq=False)
class CommandWatch:
    """What a long-poll waits on: ``changed`` is set on every change to its command published here;
    ``row`` is the latest committed row that came with one (None if the publisher gave none)."""

    changed: asyncio.Event
    row: Any = None


@dataclass(slots=True, eq=False)
class Subscriber:
    queue: asyncio.Queue[dict[str, Any]]
    dropped: int = 0

    def put(self, message: dict[str, Any]) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(message)


# Recently changed commands' rows kept for waiters that start watching just after a change.
LATEST_COMMANDS = 1024


class Hub:
    def __init__(self, queue_size: int = 1000) -> None:
        self.queue_size = queue_size
        self._subscribers: set[Subscriber] = set()
        # kind -> site (None: every site) -> its subscribers.
        self._routes: dict[str, dict[str | None, set[Subscriber]]] = {kind: {} for kind in KINDS}
        self._command_waiters: dict[str, set[CommandWatch]] = {}
        self._latest: OrderedDict[str, Any] = OrderedDict()
        # Set while the other cloud instances are to hear of what is published here (cloud.fanout), and
        # whether a stream there would read an estate's events (None: whether any stream is open there).
        self.forward: Callable[[str, dict[str, Any]], None] | None = None
        self.remote_wants: Callable[[str | None], bool] | None = None
        self.subscribers_changed = asyncio.Event()

    def publish(self, kind: str, data: dict[str, Any], *, row: Any = None, forwarded: bool = False) -> None:
        """``row``: for a command, its committed row, handed to long-polls so they need not read it
        back from the store. ``forwarded``: it came from another instance, so it goes no further."""
        if self.forward is not None and not forwarded:
            self.forward(kind, data)
        message = {"kind": kind, "data": data}
        for sub in self._recipients(kind, data.get("site_id")):
            sub.put(message)
        if kind == "command":
            if row is not None:
                self._latest[data["id"]] = row
                self._latest.move_to_end(data["id"])
                if len(self._latest) > LATEST_COMMANDS:
                    self._latest.popitem(last=False)
            for waiter in self._command_waiters.get(data["id"], ()):
                if row is not None:
                    waiter.row = row
                waiter.changed.set()

    def _recipients(self, kind: str, site: str | None) -> list[Subscriber]:
        by_site = self._routes.get(kind)
        if not by_site:
            return []
        if site is None:
            # A message that does not say its site (a gateway marked offline by the sweeper) goes to
            # every subscriber of its kind; the stream checks the gateway's site itself.
            return list({sub for subs in by_site.values() for sub in subs})
        return [*by_site.get(None, ()), *by_site.get(site, ())]

    def wants(self, kind: str, site: str) -> bool:
        """Whether a message of ``kind`` at ``site`` would reach anyone: a stream here that takes it, or
        another instance's (for events, one that reads ``site``'s; other kinds always go there)."""
        by_site = self._routes.get(kind) or {}
        if by_site.get(None) or by_site.get(site):
            return True
        if self.remote_wants is None:
            return False
        return self.remote_wants(site if kind == "event" else None)

    def event_sites(self) -> frozenset[str] | None:
        """The estates whose events a stream here reads; None: some stream reads every estate's."""
        by_site = self._routes["event"]
        if by_site.get(None):
            return None
        return frozenset(site for site, subs in by_site.items() if site is not None and subs)

    def latest_command(self, command_id: str) -> Any:
        """The last row published here with a change to ``command_id``, if it is still remembered: a
        caller that has the command from before it began watching (``issue()``'s row) checks this
        instead of reading the store, so a change published in between is not missed."""
        return self._latest.get(command_id)

    @property
    def has_subscribers(self) -> bool:
        """Whether anyone may read what is published: a stream here, or one on another instance."""
        return bool(self._subscribers) or (self.remote_wants is not None and self.remote_wants(None))

    @property
    def subscriber_count(self) -> int:
        """Streams on this instance."""
        return len(self._subscribers)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, kinds: Iterable[str] | None = None, sites: Iterable[str] | None = None
    ) -> AsyncIterator[Subscriber]:
        """A queue of the messages of ``kinds`` (None: all) at ``sites`` (None: every site) published
        while the block runs."""
        sub = Subscriber(asyncio.Queue(maxsize=self.queue_size))
        keys: list[str | None] = list(sites) if sites is not None else [None]
        routes = [
            self._routes[kind].setdefault(key, set())
            for kind in (KINDS if kinds is None else kinds)
            if kind in self._routes
            for key in keys
        ]
        for subs in routes:
            subs.add(sub)
        self._subscribers.add(sub)
        self.subscribers_changed.set()
        try:
            yield sub
        finally:
            for subs in routes:
                subs.discard(sub)
            self._subscribers.discard(sub)
            self.subscribers_changed.set()

    @contextlib.contextmanager
    def watch(self, command_id: str) -> Iterator[CommandWatch]:
        """A watch whose event is set on every change to ``command_id`` published here while the block runs.

        Registered synchronously on entry, so a caller that enters, then reads the store, cannot miss a
        change committed and published after its read: the event is already set when it waits. Clear it
        *before* each re-read, never after (a change between the read and the clear would be lost)."""
        watch = CommandWatch(asyncio.Event())
        waiters = self._command_waiters.setdefault(command_id, set())
        waiters.add(watch)
        try:
            yield watch
        finally:
            waiters.discard(watch)
            if not waiters and self._command_waiters.get(command_id) is waiters:
                del self._command_waiters[command_id]
