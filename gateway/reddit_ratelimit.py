"""Reddit's API budget, shared by every user of one client id: read, wait, refuse."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from gateway.errors import RedditUnavailable

log = logging.getLogger("gateway.auth")

WINDOW = 600.0  # reddit counts requests in ten-minute windows
MIN_BACKOFF = 1.0  # after a 429, never come back sooner than this

Sleep = Callable[[float], Awaitable[None]]


class RateLimit:
    """What oauth.reddit.com last said about the budget, and the wait it implies.

    Reddit sends ``X-Ratelimit-Remaining`` (a float string such as "597.0") and
    ``X-Ratelimit-Reset`` (seconds until the window ends) on its API answers. When
    the budget is spent, the next call waits for the window to end, but never
    longer than ``max_wait``: past that it is refused as "rate limited".
    """

    def __init__(
        self,
        max_wait: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._max_wait = max_wait
        self._clock = clock
        self._sleep = sleep
        self._remaining: float | None = None
        self._resets_at: float | None = None

    @property
    def remaining(self) -> float | None:
        """Requests left in the window as reddit last said, or None if never said."""
        return self._remaining

    def record(
        self, remaining: str | None, reset: str | None, *, throttled: bool = False
    ) -> None:
        """Note an answer's headers; ``throttled`` for a 429, which spends the rest."""
        left, seconds = _number(remaining), _number(reset)
        if seconds is not None:
            # A reset beyond one window is not reddit's: never lock ourselves out
            # for longer than that on the word of one odd answer.
            seconds = min(seconds, WINDOW)
        now = self._clock()

        if throttled:
            # A 429 means the budget is gone, whatever else it says; without a
            # reset we still back off for a moment rather than hammer reddit.
            self._remaining = 0.0
            self._resets_at = now + max(MIN_BACKOFF, seconds or 0.0)
            return
        if left is not None:
            self._remaining = left
        if seconds is not None:
            self._resets_at = now + seconds

    async def wait_turn(self) -> None:
        """Return when a call may go out; RedditUnavailable if that is too far off."""
        if self._remaining is None or self._remaining >= 1:
            return
        wait = (self._resets_at or 0.0) - self._clock()
        if wait <= 0:
            return  # the window is over; the next answer tells the new budget

        if wait > self._max_wait:
            log.warning("reddit_rate_limited wait=%.1fs refused", wait)
            raise RedditUnavailable("rate limited")
        log.warning("reddit_rate_limited wait=%.1fs", wait)
        await self._sleep(wait)


def _number(value: str | None) -> float | None:
    """A header's number of requests or seconds; None when absent or nonsense."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return number
