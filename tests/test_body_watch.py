"""AnswerDeadline: what bounds the wait for the app's answer head, on one timer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway import body_watch
from gateway.body_watch import AnswerDeadline, Deadlines


class FakeTransport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


class FakeRequest:
    def __init__(self) -> None:
        self.transport = FakeTransport()


async def wait_under(deadline_of: Any, seconds: float) -> str:
    """Wait ``seconds`` under a deadline made by ``deadline_of``; what ended it."""
    deadline = deadline_of()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if not deadline.settle():
            raise
        return "deadline"
    finally:
        deadline.stop()
    return "done"


async def test_the_deadline_ends_a_wait_that_outlasts_it() -> None:
    request = FakeRequest()

    ended = await wait_under(lambda: Deadlines().start(request, 0.05), 5)

    assert ended == "deadline"
    assert asyncio.current_task().cancelling() == 0  # withdrawn, as asyncio.timeout


async def test_a_wait_within_the_deadline_is_left_alone() -> None:
    request = FakeRequest()

    assert await wait_under(lambda: Deadlines().start(request, 5), 0.01) == "done"
    await asyncio.sleep(0.02)  # the stopped timer cancels nothing later


async def test_a_cancellation_from_outside_is_not_taken_for_the_deadline() -> None:
    # A shutdown cancelling the handler must stop it, not turn into a 504.
    request = FakeRequest()
    waiting = asyncio.create_task(wait_under(lambda: Deadlines().start(request, 5), 5))
    await asyncio.sleep(0.01)

    waiting.cancel()

    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_client_that_left_ends_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SECURITY: pool exhaustion: a long poll whose client left frees its slot
    monkeypatch.setattr(body_watch, "CLIENT_CHECK_INTERVAL", 0.02)
    request = FakeRequest()
    asyncio.get_running_loop().call_later(
        0.05, setattr, request.transport, "closing", 1
    )

    ended = await asyncio.wait_for(
        wait_under(lambda: Deadlines().start(request, 30), 30), 2
    )

    assert ended == "deadline"


async def test_a_paused_deadline_waits_until_rescheduled() -> None:
    request = FakeRequest()
    loop = asyncio.get_running_loop()
    made: list[AnswerDeadline] = []

    def make() -> AnswerDeadline:
        deadline = Deadlines().start(request, 0.03)
        deadline.reschedule(None)  # an upload is awaited: not the app's time
        loop.call_later(0.1, lambda: deadline.reschedule(loop.time() + 0.03))
        made.append(deadline)
        return deadline

    began = loop.time()
    ended = await wait_under(make, 5)

    assert ended == "deadline"
    assert 0.12 <= loop.time() - began < 1.0
    assert made[0].expired()


async def test_an_earlier_deadline_fires_earlier() -> None:
    request = FakeRequest()
    loop = asyncio.get_running_loop()

    def make() -> AnswerDeadline:
        deadline = Deadlines().start(request, 30)
        deadline.reschedule(loop.time() + 0.03)
        return deadline

    began = loop.time()
    assert await wait_under(make, 5) == "deadline"
    assert loop.time() - began < 1.0


async def test_no_timer_runs_while_no_wait_is_open() -> None:
    # An idle gateway does not wake up 20 times a second for nothing.
    deadlines = Deadlines()
    request = FakeRequest()

    assert await wait_under(lambda: deadlines.start(request, 5), 0.01) == "done"
    await asyncio.sleep(0.12)

    assert deadlines._handle is None
    assert not deadlines._open


async def test_many_waits_share_one_timer_and_each_ends_on_time() -> None:
    deadlines = Deadlines()
    request = FakeRequest()

    ended = await asyncio.gather(
        wait_under(lambda: deadlines.start(request, 0.05), 5),
        wait_under(lambda: deadlines.start(request, 0.15), 5),
        wait_under(lambda: deadlines.start(request, 5), 0.1),
    )

    assert ended == ["deadline", "deadline", "done"]
    assert not deadlines._open
