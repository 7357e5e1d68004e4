"""Fair shares: open requests per user, and the sign-in rate."""

from __future__ import annotations

from yarl import URL

from gateway.fair_share import OpenRequests, TokenBucket
from tests.conftest import FakeClock, StackFactory


def test_open_requests_cap_each_user_separately() -> None:
    limits = OpenRequests(per_user=2)

    assert limits.enter("alice") and limits.enter("alice")
    assert not limits.enter("alice")
    assert limits.enter("bob")
    limits.leave("alice")
    assert limits.enter("alice")


def test_open_requests_without_a_cap() -> None:
    limits = OpenRequests(per_user=0)

    assert all(limits.enter("alice") for _ in range(1000))


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)

    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)
    assert bucket.take()
    assert not bucket.take()


async def test_reddit_call_amplification_by_junk_callbacks_is_capped(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    statuses = []
    async with stack.browser() as attacker:
        for _ in range(60):
            async with attacker.get(
                stack.url / "oauth2/start", allow_redirects=False
            ) as start:
                state = URL(start.headers["Location"]).query["state"]
            async with attacker.get(
                stack.url / "oauth2/callback",
                params={"state": state, "code": "junk"},
                allow_redirects=False,
            ) as callback:
                statuses.append(callback.status)

    token_calls = [c for c in stack.reddit.calls if c.path == "/api/v1/access_token"]
    assert len(token_calls) == 50
    assert statuses.count(429) == 10
