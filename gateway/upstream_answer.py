"""One answer of the app as httptools (llhttp) parses it: status, bounded headers,
then the body, buffered up to BUFFER_HIGH before its connection stops being read."""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Protocol

from multidict import CIMultiDict

# What the app may answer (else 502): long Content-Security-Policy and Link headers.
MAX_FIELD_SIZE = 65536
MAX_HEADERS = 256
# Bytes the parser may take without handing any over: httptools keeps a header to
# itself until its line ends. A line of MAX_FIELD_SIZE, and the status line before.
MAX_HELD = 2 * MAX_FIELD_SIZE
# Body bytes buffered per answer before the app's connection stops being read (one
# read of the event loop may bring more). What the client has not taken yet waits
# at the app, not here: memory is flat in body size and grows little with each
# concurrent download. A megabyte streamed no faster and held 3x the memory.
BUFFER_HIGH = 1 << 16
_NO_BODY_STATUS = frozenset({204, 304})
_NO_HEADERS: CIMultiDict[str] = CIMultiDict()


class Line(Protocol):
    """What an answer needs of the connection it arrives on."""

    loop: asyncio.AbstractEventLoop
    parser: Any
    answer: UpstreamAnswer | None

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def answer_complete(self, answer: UpstreamAnswer) -> None: ...

    def release(self, answer: UpstreamAnswer) -> None: ...

    def close(self) -> None: ...


class UpstreamError(Exception):
    """No usable answer from the app (502); ``reason`` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpstreamAnswer:
    """One answer: status, reason and headers once they came, then its body.

    The body has aiohttp's StreamReader methods the proxy uses: ``is_eof`` (it all
    came), ``at_eof`` (and was read), ``read_nowait`` and ``readany``.
    """

    __slots__ = (
        "_chunks",
        "_connection",
        "_error",
        "_head",
        "_raw_headers",
        "_reason",
        "_size",
        "_skip_body",
        "_until_close",
        "_waiter",
        "complete",
        "headers",
        "held",
        "reason",
        "started",
        "status",
    )

    def __init__(self, connection: Line, skip_body: bool) -> None:
        self._connection = connection
        self._skip_body = skip_body  # an answer to HEAD
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._head: asyncio.Future[None] = connection.loop.create_future()
        self._until_close = False
        self.held = 0  # bytes fed since the parser last handed something over
        self.started = False  # any byte of an answer came
        self.complete = False
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict[str] = _NO_HEADERS

    @property
    def content(self) -> UpstreamAnswer:
        return self

    # --- httptools callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            # SECURITY: response splitting: a second answer to one request is never
            # parsed, so it can replace neither this answer nor the next request's
            raise UpstreamError("bytes after the answer")

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.held = 0
        raw = self._raw_headers
        # SECURITY: header flooding by the app: a bounded head, else 502
        if len(raw) >= MAX_HEADERS or len(name) + len(value) > MAX_FIELD_SIZE:
            raise UpstreamError("answer head too large")
        raw.append((name, value))

    def on_headers_complete(self) -> None:
        self.held = 0
        status = self._connection.parser.get_status_code()
        if status < 100:  # llhttp takes any three digits: "000" is no answer
            raise UpstreamError("malformed answer")
        if 100 <= status < 200 and status != 101:
            self._raw_headers.clear()  # 100 Continue, 103 Early Hints: not passed on
            self._reason = b""
            return
        self.status = status
        self.reason = self._reason.decode("latin-1")
        # As aiohttp's parser: bytes that are not UTF-8 survive the round trip.
        self.headers = headers = CIMultiDict(
            [
                (n.decode("latin-1"), v.decode("utf-8", "surrogateescape"))
                for n, v in self._raw_headers
            ]
        )
        if self._skip_body or status in _NO_BODY_STATUS:
            self._connection.answer_complete(self)
            self._finish()
        elif "Content-Length" not in headers and "Transfer-Encoding" not in headers:
            self._until_close = True  # HTTP/1.0 style: the body ends with the line
        if not self._head.done():
            self._head.set_result(None)

    def on_body(self, chunk: bytes) -> None:
        if self.complete:
            raise UpstreamError("bytes after the answer")  # a body to HEAD
        self.held = 0
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > BUFFER_HIGH:
            self._connection.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.held = 0
        if self.status == 0:
            return  # the end of an interim (1xx) answer
        if not self.complete:
            self._connection.answer_complete(self)
            self._finish()

    # --- the connection's side ----------------------------------------------------

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def connection_lost(self) -> None:
        if self.complete:
            return
        if self._until_close and self._head.done():
            self._finish()
            return
        self.fail(UpstreamError("app closed the connection"))

    def fail(self, error: UpstreamError) -> None:
        if self.complete or self._error is not None:
            return
        self._error = error
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: a waiter may be gone already
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the reader's side --------------------------------------------------------

    async def wait_head(self) -> None:
        await self._head

    def is_eof(self) -> bool:
        return self.complete

    def at_eof(self) -> bool:
        return self.complete and not self._chunks

    def read_nowait(self) -> bytes:
        chunks = self._chunks
        if not chunks:
            if self._error is not None and not self.complete:
                raise self._error
            return b""
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        self._connection.resume_reading()
        return data

    async def readany(self) -> bytes:
        while not self._chunks and not self.complete and self._error is None:
            self._waiter = self._connection.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.read_nowait()

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool if it can."""
        self._connection.release(self)

    def close(self) -> None:
        """Done with the answer, which was not read to its end: drop the line."""
        if self._connection.answer is self:  # else the line serves another by now
            self._connection.close()
