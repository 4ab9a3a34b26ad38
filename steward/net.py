"""Loopback ports for servers this process starts (the embedded broker, a Mosquitto of its own, the
simulators, the tests' clouds)."""

from __future__ import annotations

import collections
import random
import socket

# Ports handed out lately by this process, not handed out again: the caller may not have bound one yet.
_GIVEN: collections.deque[int] = collections.deque(maxlen=4096)


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, for a server about to bind it.

    Picked below the kernel's ephemeral range: a port the OS had chosen (bind to port 0) comes from
    that range, which is also where it picks the local port of every outgoing connection, so a client
    connecting anywhere between this call and the server's bind could take it ("address already in
    use", seen in the tests). Ports outside the range are only ever taken by explicit binds."""
    low, _high = _ephemeral_range()
    top = min(low, 32768) - 1
    bottom = max(1024, top - 12_000)
    for _ in range(200):
        port = random.randint(bottom, top)
        if port in _GIVEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:  # a listener, or a socket lingering in TIME_WAIT: another one
                continue
        _GIVEN.append(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # all taken: the OS's choice
        s.bind((host, 0))
        return int(s.getsockname()[1])
