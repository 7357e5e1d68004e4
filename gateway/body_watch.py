"""Watches bodies in flight: idle timeouts both ways, and a client that left.

With aiohttp's default handler_cancellation=False nothing tells a handler that its
client went away, so a wait that may be long looks at the connection now and then.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import aiohttp
from aiohttp import web

# How often a long wait (for the answer's headers, for a quiet body) checks that the
# client is still there.
CLIENT_CHECK_INTERVAL = 2.0


class Body(Protocol):
    """An answer's body as it arrives (aiohttp's StreamReader, or ours)."""

    def read_nowait(self) -> bytes: ...

    def at_eof(self) -> bool: ...

    async def readany(self) -> bytes: ...


async def next_chunk(request: web.Request, content: Body, idle: float) -> bytes:
    """What has arrived of the upstream's body, waiting for it if need be; b"" at
    its end. Raises ClientGone, or UpstreamIdle after ``idle`` seconds (0: never)."""
    chunk = content.read_nowait()
    if chunk or content.at_eof():
        return chunk  # the usual case: no timer needed

    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    while True:
        wait = CLIENT_CHECK_INTERVAL
        if idle:
            wait = min(wait, quiet_since + idle - loop.time())
        try:
            async with asyncio.timeout(wait):
                return await content.readany()
        except TimeoutError:
            if client_left(request):
                raise ClientGone from None
            if idle and loop.time() - quiet_since >= idle:
                raise UpstreamIdle from None


# How often the deadlines of waits for the app's answers are looked at: the
# precision of upstream.timeout.
DEADLINE_TICK = 0.05


class Deadlines:
    """The one timer behind every AnswerDeadline of a proxy: a tick every
    DEADLINE_TICK seconds while any wait is open, none while none is. A timer
    per request, armed and cancelled, cost more than anything else the gateway
    itself did for a small request."""

    __slots__ = ("_handle", "_loop", "_open")

    def __init__(self) -> None:
        self._open: set[AnswerDeadline] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, request: web.Request, timeout: float) -> AnswerDeadline:
        """A deadline ``timeout`` seconds from now for the current task's wait."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = AnswerDeadline(self, request, loop.time(), timeout)
        self._open.add(deadline)
        if self._handle is None:
            self._handle = loop.call_later(DEADLINE_TICK, self._tick)
        return deadline

    def stop(self, deadline: AnswerDeadline) -> None:
        self._open.discard(deadline)

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        for deadline in [d for d in self._open if d.due(now)]:
            self._open.discard(deadline)
            deadline.fire()
        self._handle = (
            loop.call_later(DEADLINE_TICK, self._tick) if self._open else None
        )


class AnswerDeadline:
    """Bounds the wait for the app's answer head: ``timeout`` seconds (moved by
    ``reschedule``; None pauses it), and cut short once the client left, which is
    looked at every CLIENT_CHECK_INTERVAL. Either cancels the waiting task;
    ``settle`` then tells that cancellation from any other."""

    __slots__ = (
        "_cancelling",
        "_deadlines",
        "_look_at",
        "_request",
        "_task",
        "_when",
        "fired",
    )

    def __init__(
        self, deadlines: Deadlines, request: web.Request, now: float, timeout: float
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._deadlines = deadlines
        self._request = request
        self._task = task
        self._cancelling = task.cancelling()
        self._when: float | None = now + timeout
        self._look_at = now + CLIENT_CHECK_INTERVAL
        self.fired = False

    def due(self, now: float) -> bool:
        when = self._when
        if when is not None and now >= when:
            return True
        if now < self._look_at:
            return False
        self._look_at = now + CLIENT_CHECK_INTERVAL
        return client_left(self._request)

    def fire(self) -> None:
        self.fired = True
        self._task.cancel()

    def reschedule(self, when: float | None) -> None:
        """The deadline is now ``when`` (loop time); None: no deadline for now."""
        self._when = when

    def expired(self) -> bool:
        return self.fired

    def stop(self) -> None:
        self._deadlines.stop(self)

    def settle(self) -> bool:
        """In an ``except CancelledError``: True if this deadline was the cause
        (the cancellation is then withdrawn), False if the task itself is being
        cancelled and the error must go on."""
        return self.fired and self._task.uncancel() <= self._cancelling


class ClientGone(Exception):
    """The client left while we relayed the body."""


class UpstreamIdle(Exception):
    """The upstream sent no byte of the body for idle_timeout seconds."""


class ClientIdle(Exception):
    """The client sent no byte of its upload for idle_timeout seconds."""


class Upload:
    """The client's request body, pausing the upstream deadline while we read it.

    After ``idle`` seconds (0: never) without a byte it stops the upload and sets
    ``went_idle``.
    """

    __slots__ = ("_content", "_idle", "_loop", "_timeout", "deadline", "went_idle")

    def __init__(
        self, content: aiohttp.StreamReader, timeout: float, idle: float
    ) -> None:
        self._content = content
        self._timeout = timeout
        self._idle = idle
        self._loop = asyncio.get_running_loop()
        self.deadline: AnswerDeadline | None = None
        self.went_idle = False

    def __aiter__(self) -> Upload:
        return self

    async def __anext__(self) -> bytes:
        self._reschedule(None)  # the client's pace is not the upstream's fault

        if self._idle:
            try:
                # SECURITY: slowloris: an upload that stops coming cannot hold an
                # upstream connection (and a pool slot) for ever
                async with asyncio.timeout(self._idle):
                    chunk = await self._content.readany()
            except TimeoutError:
                # aiohttp would report a TimeoutError as the upstream's; this
                # becomes a ClientConnectionError and went_idle says whose it was
                self.went_idle = True
                raise ClientIdle from None
        else:
            chunk = await self._content.readany()

        self._reschedule(self._loop.time() + self._timeout)
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def _reschedule(self, when: float | None) -> None:
        deadline = self.deadline
        if deadline is not None and not deadline.expired():
            deadline.reschedule(when)


def client_left(request: web.Request) -> bool:
    """True once the client's connection is closed or closing."""
    transport = request.transport
    return transport is None or transport.is_closing()
