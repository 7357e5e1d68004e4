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


class ClientWatch:
    """Ends the wait for the upstream's answer, as a timeout, once the client left:
    a long poll or a stalled upload must not hold an upstream connection for it."""

    __slots__ = ("_deadline", "_handle", "_request")

    def __init__(self, request: web.Request, deadline: asyncio.Timeout) -> None:
        self._request = request
        self._deadline = deadline
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(CLIENT_CHECK_INTERVAL, self._check)

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        if self._deadline.expired():
            return
        if client_left(self._request):
            self._deadline.reschedule(loop.time())
        else:
            self._handle = loop.call_later(CLIENT_CHECK_INTERVAL, self._check)

    def stop(self) -> None:
        self._handle.cancel()


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
        self.deadline: asyncio.Timeout | None = None
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
