"""The proxy's HTTP/1.1 client to the app: a keep-alive pool of connections whose
answers httptools (llhttp) parses, bodies streamed both ways with back-pressure.

It does only what a reverse proxy needs: no redirects, cookies, decompression or
retries beyond the one RFC 9112 allows (an idempotent request without a body whose
reused connection the app had closed). aiohttp's general-purpose client spent about
three times as much CPU per proxied request. gateway/upstream_answer.py reads the
answers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import ssl
from collections.abc import AsyncIterable
from typing import Any, cast

import httptools
from multidict import CIMultiDict

from gateway.config import UpstreamConfig
from gateway.upstream_answer import MAX_HELD, UpstreamAnswer, UpstreamError
from gateway.upstream_session import tls_context

# RFC 9112 9.3.1: only these may be sent again on a fresh connection.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Methods that carry no body: aiohttp's client adds "Content-Length: 0" to others.
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# What ends a request line early: a space, a control character.
_BREAKS_REQUEST_LINE = re.compile(r"[\x00-\x20\x7f]")


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the app, one request at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser: Any = None
        self.answer: UpstreamAnswer | None = None
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        self._reusable = False
        self._read_paused = False
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self.upload: asyncio.Task[None] | None = None

    # --- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass

    def data_received(self, data: bytes) -> None:
        answer = self.answer
        if answer is None or answer.complete:
            # SECURITY: response splitting/queue poisoning: bytes no request asked
            # for never become the next request's answer
            self._reusable = False
            self.close()
            return
        answer.started = True
        answer.held += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reusable = False  # a 101: the line is no longer HTTP
            self.close()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            error = cause if isinstance(cause, UpstreamError) else None
            answer.fail(error or UpstreamError("malformed answer"))
            self.close()
        except httptools.HttpParserError:
            # SECURITY: response smuggling: an answer llhttp cannot frame is 502
            answer.fail(UpstreamError("malformed answer"))
            self.close()
        else:
            if answer.held > MAX_HELD:
                # SECURITY: header flooding by the app: a line that never ends is
                # cut off, not buffered for as long as the app goes on sending it
                answer.fail(UpstreamError("answer head too large"))
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._reusable = False
        self.pool._lost(self)
        if self.answer is not None:
            self.answer.connection_lost()
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_exception(UpstreamError("app closed the connection"))
            drained.exception()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # --- flow control ---------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = False
            self.transport.resume_reading()

    async def drain(self) -> None:
        if self.closed:
            raise UpstreamError("app closed the connection")
        if self._write_paused:
            self._drained = self.loop.create_future()
            try:
                await self._drained
            finally:
                self._drained = None

    # --- one exchange ---------------------------------------------------------------

    def send(self, head: bytes, method: str) -> UpstreamAnswer:
        # A parser per exchange: after a HEAD, the last one still waits for a body.
        answer = UpstreamAnswer(self, skip_body=method == "HEAD")
        self.parser = httptools.HttpResponseParser(answer)
        self.answer = answer
        self._reusable = False
        assert self.transport is not None
        self.transport.write(head)
        return answer

    def answer_complete(self, answer: UpstreamAnswer) -> None:
        upload = self.upload
        # SECURITY: request smuggling: an answer that came before the whole body went
        # leaves the body's rest unread at the app, which would read it, on this
        # line, as the start of the next request
        uploading = upload is not None and not upload.done()
        self._reusable = bool(self.parser.should_keep_alive()) and not uploading

    def release(self, answer: UpstreamAnswer) -> None:
        if self.answer is not answer:
            return
        # An upload still going has made the line unreusable (answer_complete);
        # close() then cancels it.
        if not (answer.complete and self._reusable) or self.closed:
            self.close()
            return
        self.answer = None
        self.upload = None
        self.resume_reading()  # an unread body paused it: idle, a close must show
        self.pool._idle_connection(self)

    def close(self) -> None:
        self._reusable = False
        if self.upload is not None and not self.upload.done():
            self.upload.cancel()
        if self.transport is not None and not self.closed:
            self.transport.close()
            self.closed = True
            self.pool._lost(self)


class UpstreamPool:
    """Keep-alive connections to the app, at most upstream.max_connections at once.

    Idle ones are kept for ``keepalive_timeout`` seconds; a request that finds none
    free and the limit reached waits its turn.
    """

    def __init__(self, upstream: UpstreamConfig) -> None:
        self.loop = asyncio.get_running_loop()
        url = upstream.url
        self._unix_socket = upstream.unix_socket
        self._host = url.raw_host or "localhost"
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = tls_context(upstream)  # ConfigError: a bad CA file
        self.authority = url.raw_authority or "localhost"
        self._limit = upstream.max_connections
        self._keepalive = upstream.keepalive_timeout
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self,
        method: str,
        head: bytes,
        body: AsyncIterable[bytes] | None,
        chunked: bool,
    ) -> UpstreamAnswer:
        """Send a request whose head is ``head`` (from ``request_head``) and return
        the answer once its headers came. ``body`` is streamed after the head,
        framed as chunks when ``chunked``. Raises UpstreamError."""
        for attempt in range(2):
            connection = await self._acquire(fresh=attempt > 0)
            answer = connection.send(head, method)
            if body is not None:
                connection.upload = self.loop.create_task(
                    _upload(connection, answer, body, chunked)
                )
            try:
                await answer.wait_head()
            except UpstreamError:
                connection.close()
                retry = (
                    connection.reused
                    and body is None
                    and method in _IDEMPOTENT
                    and not answer.started
                )
                if retry and attempt == 0:
                    continue  # RFC 9112 9.3.1: the app had closed an idle line
                raise
            except BaseException:
                connection.close()  # cancelled (a timeout): the line is in between
                raise
            return answer
        raise AssertionError("unreachable")

    async def _acquire(self, fresh: bool) -> _Connection:
        while True:
            if not fresh:
                while self._idle:
                    connection = self._idle.pop()
                    if not connection.closed:
                        if self.loop.time() - connection.idle_since < self._keepalive:
                            connection.reused = True
                            return connection
                        connection.close()
            if len(self._open) < self._limit:
                return await self._connect()
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled: pass the turn on
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            fresh = False

    async def _connect(self) -> _Connection:
        if self._closed:
            raise UpstreamError("the pool is closed")
        connection = _Connection(self)
        self._open.add(connection)
        try:
            if self._unix_socket:
                await self.loop.create_unix_connection(
                    lambda: connection, self._unix_socket
                )
            else:
                await self.loop.create_connection(
                    lambda: connection,
                    self._host.strip("[]"),
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host.strip("[]") if self._ssl else None,
                )
        except BaseException as exc:
            self._lost(connection)
            if isinstance(exc, ssl.SSLError):
                raise UpstreamError(f"TLS: {exc.reason or exc}") from None
            if isinstance(exc, OSError):
                raise UpstreamError(f"connect: {_os_reason(exc)}") from None
            raise
        return connection

    def _idle_connection(self, connection: _Connection) -> None:
        if self._closed:
            connection.close()
            return
        connection.idle_since = self.loop.time()
        self._idle.append(connection)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._keepalive, self._sweep)
        self._wake_one()

    def _lost(self, connection: _Connection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.loop.time()
        kept = []
        for connection in self._idle:
            if connection.closed:
                continue
            if now - connection.idle_since >= self._keepalive:
                connection.close()
            else:
                kept.append(connection)
        self._idle = kept
        if kept:
            self._sweeper = self.loop.call_later(self._keepalive / 2, self._sweep)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing


def request_head(
    method: str, target: str, headers: CIMultiDict[str], authority: str
) -> bytes:
    """The request line and headers, as the app receives them.

    Raises ValueError for a space or control character in the method or target
    (request splitting), a line break in a name or value (header injection)."""
    # SECURITY: request splitting: a space, CR or LF would end the request line
    # early, the rest read as headers or as a request of its own
    if _BREAKS_REQUEST_LINE.search(method) or _BREAKS_REQUEST_LINE.search(target):
        raise ValueError("space or control character in the request line")
    text = "\r\n".join(map(": ".join, headers.items()))
    lines = len(headers)
    if "Host" not in headers:
        text = f"{text}\r\nHost: {authority}" if text else f"Host: {authority}"
        lines += 1
    # SECURITY: header injection: a CR or LF inside a name or value would start a
    # header (or a request) of its own at the app
    if text.count("\n") != lines - 1 or text.count("\r") != lines - 1:
        raise ValueError("line break in a header")
    head = f"{method} {target} HTTP/1.1\r\n{text}\r\n\r\n"
    return head.encode("utf-8", "surrogateescape")


def body_framing(method: str, headers: CIMultiDict[str], has_body: bool) -> bool:
    """Add the framing headers a body needs; True when it goes as chunks."""
    if has_body:
        if "Content-Length" in headers:
            return False
        headers["Transfer-Encoding"] = "chunked"
        return True
    if method not in _BODILESS and "Content-Length" not in headers:
        headers["Content-Length"] = "0"
    return False


async def _upload(
    connection: _Connection,
    answer: UpstreamAnswer,
    body: AsyncIterable[bytes],
    chunked: bool,
) -> None:
    transport = connection.transport
    assert transport is not None
    try:
        async for chunk in body:
            if connection.closed:
                raise UpstreamError("app closed the connection")
            if not chunk:
                continue
            if chunked:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                transport.write(chunk)
            await connection.drain()
        if chunked:
            transport.write(b"0\r\n\r\n")
    except asyncio.CancelledError:
        raise
    except UpstreamError as exc:
        answer.fail(exc)
        connection.close()
    except Exception as exc:  # the client's upload failed or stopped (ClientIdle)
        answer.fail(UpstreamError(f"upload: {type(exc).__name__}"))
        connection.close()


def _os_reason(exc: OSError) -> str:
    return str(exc) if exc.errno is None else f"[Errno {exc.errno}] {exc.strerror}"
