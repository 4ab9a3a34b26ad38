"""A null-modem cable in software: two linked pseudo-terminals for Modbus RTU without hardware.

Two ``os.openpty()`` pairs; an asyncio relay copies bytes between the two master ends, so whatever
is written to one slave path comes out of the other::

    simulator (ModbusSimServer serial=server_path) <-> server slave | master ==relay== master | client
    slave <-> gateway (ModbusRtuTransport port=client_path)

Both slave ends are put in raw mode and kept open by the link itself, so either side may open,
close and reopen its path without the other master seeing a hang-up. The line has no baud rate
(bytes move as fast as the relay copies them), so RTU tests run at any configured speed.

For fault tests :meth:`PtyLink.corrupt_next` flips the last byte of the next chunk going one way,
which breaks that frame's CRC the way line noise would::

    async with PtyLink() as link:
        server = ModbusSimServer(serial=link.server_path, baudrate=115200)
        ...
        link.corrupt_next("to_client")   # the next reply arrives with a bad CRC
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator
from typing import Literal, Self

import structlog

__all__ = ["Direction", "PtyLink", "linked_ptys"]

Direction = Literal["to_server", "to_client"]

log = structlog.get_logger("steward.sim.pty")


class PtyLink:
    """Owns four pty file descriptors and the relay; ``async with`` starts and stops it."""

    def __init__(self) -> None:
        self._fds: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server_master = self._client_master = -1
        self.server_path = ""
        self.client_path = ""
        self._corrupt: dict[Direction, int] = {"to_server": 0, "to_client": 0}
        self.relayed: dict[Direction, int] = {"to_server": 0, "to_client": 0}
        self.corrupted: dict[Direction, int] = {"to_server": 0, "to_client": 0}
        self.dropped = 0

    async def start(self) -> None:
        if self._loop is not None:
            return
        try:
            server_master, server_slave = os.openpty()
            self._fds += [server_master, server_slave]
            client_master, client_slave = os.openpty()
            self._fds += [client_master, client_slave]
            for slave in (server_slave, client_slave):
                tty.setraw(slave)
            for master in (server_master, client_master):
                os.set_blocking(master, False)
            self.server_path = os.ttyname(server_slave)
            self.client_path = os.ttyname(client_slave)
        except OSError:
            self._close_fds()
            raise
        self._server_master, self._client_master = server_master, client_master
        loop = self._loop = asyncio.get_running_loop()
        loop.add_reader(server_master, self._relay, server_master, client_master, "to_client")
        loop.add_reader(client_master, self._relay, client_master, server_master, "to_server")
        log.debug("pty link up", server=self.server_path, client=self.client_path)

    async def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            for master in (self._server_master, self._client_master):
                loop.remove_reader(master)
        self._close_fds()

    def _close_fds(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def corrupt_next(self, direction: Direction = "to_client", count: int = 1) -> None:
        """Flip the last byte of the next ``count`` chunks relayed in ``direction`` (a CRC error)."""
        self._corrupt[direction] += count

    def _relay(self, src: int, dst: int, direction: Direction) -> None:
        try:
            data = os.read(src, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EIO while a side reopens; the slave we hold keeps the pty itself alive
        if not data:
            return
        if self._corrupt[direction]:
            self._corrupt[direction] -= 1
            self.corrupted[direction] += 1
            data = data[:-1] + bytes((data[-1] ^ 0xFF,))
        self.relayed[direction] += len(data)
        view = memoryview(data)
        while view:
            try:
                written = os.write(dst, view)
            except (BlockingIOError, InterruptedError, OSError):
                # Nobody is draining the other end: drop, as a line with no listener would.
                self.dropped += len(view)
                return
            view = view[written:]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def linked_ptys() -> AsyncIterator[tuple[str, str]]:
    """``async with linked_ptys() as (server_path, client_path):`` when no fault injection is needed."""
    async with PtyLink() as link:
        yield link.server_path, link.client_path
