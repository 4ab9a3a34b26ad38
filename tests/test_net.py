"""steward.net.free_port: ports for the servers a process starts, outside the range the kernel picks
clients' local ports from (a client connecting between the pick and the server's bind took the port:
"address already in use" in the tests)."""

from __future__ import annotations

import socket

import pytest

from steward import net


def test_ports_come_from_below_the_ephemeral_range_bindable_and_never_twice() -> None:
    low, _high = net._ephemeral_range()
    ports = [net.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < low for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # free for the server that asked for it


def test_a_port_with_a_listener_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", net.free_port()))
        taken.listen()
        busy = taken.getsockname()[1]
        free = net.free_port()
        picks = iter([busy, busy, free])
        monkeypatch.setattr(net.random, "randint", lambda _a, _b: next(picks))
        net._GIVEN.clear()
        assert net.free_port() == free
