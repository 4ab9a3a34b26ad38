"""In-process fan-out of what just happened (stored events, command changes) to waiting requests.

Long-polls wait on a command id; SSE streams take every message. Each subscriber has a bounded queue;
a slow one loses its oldest messages (counted) instead of holding memory. With several cloud instances
a change may be ingested elsewhere, so waiters also re-read the store periodically.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, eq=False)
class Subscriber:
    queue: asyncio.Queue[dict[str, Any]]
    dropped: int = 0


class Hub:
    def __init__(self, queue_size: int = 1000) -> None:
        self.queue_size = queue_size
        self._subscribers: set[Subscriber] = set()
        self._command_waiters: dict[str, set[asyncio.Event]] = {}

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        message = {"kind": kind, "data": data}
        for sub in list(self._subscribers):
            if sub.queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    sub.queue.get_nowait()
                sub.dropped += 1
            sub.queue.put_nowait(message)
        if kind == "command":
            for waiter in self._command_waiters.pop(data["id"], set()):
                waiter.set()

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscriber]:
        sub = Subscriber(asyncio.Queue(maxsize=self.queue_size))
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)

    async def wait_command(self, command_id: str, timeout: float) -> bool:
        """Wait until a change to ``command_id`` is published here, at most ``timeout`` seconds."""
        waiter = asyncio.Event()
        self._command_waiters.setdefault(command_id, set()).add(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter.wait()
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._command_waiters.get(command_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    self._command_waiters.pop(command_id, None)
