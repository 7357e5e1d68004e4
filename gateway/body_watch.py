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


class AnswerDeadline:
    """Bounds the wait for the app's answer head with one timer: ``timeout`` seconds
    (moved by ``reschedule``; None pauses it), and cut short once the client left,
    which is looked at every CLIENT_CHECK_INTERVAL. Either cancels the waiting task;
    ``settle`` then tells that cancellation from any other.

    What asyncio.timeout plus a watch of the client did, at a third of the cost:
    this runs on every proxied request.
    """

    __slots__ = (
        "_cancelling",
        "_handle",
        "_loop",
        "_request",
        "_task",
        "_when",
        "fired",
    )

    def __init__(self, request: web.Request, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._loop = loop
        self._request = request
        self._task = task
        self._cancelling = task.cancelling()
        now = loop.time()
        self._when: float | None = now + timeout
        self.fired = False
        self._handle = loop.call_at(
            min(self._when, now + CLIENT_CHECK_INTERVAL), self._check
        )

    def _check(self) -> None:
        now = self._loop.time()
        when = self._when
        if (when is not None and now >= when) or client_left(self._request):
            self.fired = True
            self._task.cancel()
            return
        next_check = now + CLIENT_CHECK_INTERVAL
        if when is not None and when < next_check:
            next_check = when
        self._handle = self._loop.call_at(next_check, self._check)

    def reschedule(self, when: float | None) -> None:
        """The deadline is now ``when`` (loop time); None: no deadline for now."""
        self._when = when
        if when is not None and not self.fired and when < self._handle.when():
            self._handle.cancel()
            self._handle = self._loop.call_at(when, self._check)

    def expired(self) -> bool:
        return self.fired

    def stop(self) -> None:
        self._handle.cancel()

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
