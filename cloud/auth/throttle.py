"""Login throttling: failures per username and per client IP within a sliding window.

After ``max_per_user`` failures for one username (or ``max_per_ip`` from one address) within
``window_s``, further attempts are refused with 429 until the oldest counted failure leaves the window
-- even with the right password, so a locked account cannot be brute-forced. A successful login clears
the username's count (not the address's: one valid account must not reset an attacker's budget).

Kept in memory, per cloud process: several instances behind a load balancer each allow the budget.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

__all__ = ["LoginThrottle"]

_MAX_KEYS = 100_000  # bound memory under a spray of usernames or addresses


class _Window:
    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.failures: dict[str, deque[float]] = {}

    def _prune(self, key: str, now: float) -> deque[float] | None:
        times = self.failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self.failures[key]
            return None
        return times

    def wait(self, key: str, now: float) -> float:
        times = self._prune(key, now)
        if times is None or len(times) < self.limit:
            return 0.0
        return times[-self.limit] + self.window_s - now

    def fail(self, key: str, now: float) -> None:
        if key not in self.failures and len(self.failures) >= _MAX_KEYS:
            self.failures.pop(next(iter(self.failures)))  # the longest-tracked key
        times = self.failures.setdefault(key, deque())
        times.append(now)
        while len(times) > self.limit:
            times.popleft()

    def clear(self, key: str) -> None:
        self.failures.pop(key, None)


class LoginThrottle:
    def __init__(
        self, *, max_per_user: int, max_per_ip: int, window_s: float, clock: Callable[[], float]
    ) -> None:
        self._users = _Window(max_per_user, window_s)
        self._ips = _Window(max_per_ip, window_s)
        self.clock = clock

    def retry_after(self, username: str, ip: str | None) -> float:
        """Seconds to wait before this attempt may be tried; 0 if it may go ahead."""
        now = self.clock()
        return max(self._users.wait(username, now), self._ips.wait(ip, now) if ip else 0.0)

    def failed(self, username: str, ip: str | None) -> None:
        now = self.clock()
        self._users.fail(username, now)
        if ip:
            self._ips.fail(ip, now)

    def succeeded(self, username: str) -> None:
        self._users.clear(username)
