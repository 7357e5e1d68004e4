"""Caps what one reddit account may hold open at once, so that no user can take
every connection to the app (long polls, event streams and websockets included)."""

from __future__ import annotations

from collections.abc import Callable


class OpenRequests:
    """Counts each user's requests and websockets in flight; 0 means no cap."""

    def __init__(self, per_user: int) -> None:
        self._per_user = per_user
        self._open: dict[str, int] = {}

    def enter(self, user: str) -> bool:
        """Take a slot for user; False (and nothing taken) when all are in use."""
        if not self._per_user:
            return True
        count = self._open.get(user, 0)
        # SECURITY: connection starvation: one account may not hold them all.
        if count >= self._per_user:
            return False
        self._open[user] = count + 1
        return True

    def leave(self, user: str) -> None:
        if not self._per_user:
            return
        count = self._open.get(user, 0) - 1
        if count > 0:
            self._open[user] = count
        else:
            self._open.pop(user, None)


class TokenBucket:
    """At most `rate` events a second on average, in bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        elapsed = max(0.0, now - self._at)
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
