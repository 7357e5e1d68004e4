"""UpstreamPool against apps scripted byte by byte on loopback: framing, reuse."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from multidict import CIMultiDict
from yarl import URL

from gateway.config import UpstreamConfig
from gateway.upstream_answer import (
    BUFFER_HIGH,
    MAX_FIELD_SIZE,
    MAX_HEADERS,
    UpstreamAnswer,
    UpstreamError,
)
from gateway.upstream_client import UpstreamPool, body_framing, request_head
from tests.conftest import free_port

MiB = 1024 * 1024
# The most one read of a socket hands over (asyncio's selector loop and uvloop).
READ_SIZE = 256 * 1024
WAIT = 5.0  # seconds any one step may take: a hang fails the test instead
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
FRESH = b"HTTP/1.1 200 OK\r\nX-Line: fresh\r\nContent-Length: 5\r\n\r\nfresh"
EVIL = (
    b"HTTP/1.1 302 Found\r\nLocation: https://evil.example/\r\n"
    b"Content-Length: 0\r\n\r\n"
)
# More than the parser may hold while waiting for a line to end.
ENDLESS = 16 * MAX_FIELD_SIZE


# --- the app on loopback --------------------------------------------------------------


@dataclass
class Line:
    """One connection the app accepted, and the request heads that came over it."""

    number: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    heads: list[bytes] = field(default_factory=list)
    dropped: asyncio.Event = field(default_factory=asyncio.Event)  # by the pool
    hung_up: bool = False  # by the app

    async def next_head(self) -> bytes:
        head = await self.reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head

    async def send(self, *parts: bytes) -> None:
        for part in parts:
            self.writer.write(part)
            await self.writer.drain()

    def hang_up(self) -> None:
        self.hung_up = True
        self.writer.close()


Script = Callable[[Line], Awaitable[None]]


@dataclass
class RawApp:
    """An app speaking HTTP by hand: every connection it accepts runs ``script``,
    then stays open until the pool closes it (unless the script hung up)."""

    script: Script
    url: URL = field(default_factory=URL)
    lines: list[Line] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = URL(f"http://127.0.0.1:{port}")

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        line = Line(len(self.lines), reader, writer)
        self.lines.append(line)
        try:
            await self.script(line)
            if not line.hung_up:
                await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception as exc:  # a script's own assertion: fails the test
            self.errors.append(exc)
        finally:
            if not line.hung_up:
                line.dropped.set()
            writer.close()
            self._tasks.discard(task)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


def every(answer: bytes) -> Script:
    """Each request, on any connection, gets ``answer``."""

    async def script(line: Line) -> None:
        while True:
            await line.next_head()
            await line.send(answer)

    return script


def in_turn(*answers: bytes) -> Script:
    """The n-th request the app reads, on whichever connection, gets answers[n]."""
    queue = list(answers)

    async def script(line: Line) -> None:
        while queue:
            await line.next_head()
            await line.send(queue.pop(0))

    return script


def per_line(*scripts: Script) -> Script:
    """The n-th connection the app accepts runs scripts[n]; one more fails the test."""

    async def script(line: Line) -> None:
        assert line.number < len(scripts), "a connection the test did not expect"
        await scripts[line.number](line)

    return script


async def echoes_targets(line: Line) -> None:
    """Answers each request with its target."""
    while True:
        target = (await line.next_head()).split(b" ")[1]
        await line.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(target))
        await line.send(target)


async def kept_then_hung_up(line: Line) -> None:
    """Answers one request with keep-alive, then closes as the next one arrives:
    to the pool, an idle connection the app had closed (RFC 9112 9.3.1)."""
    await line.next_head()
    await line.send(NO_CONTENT)
    await line.next_head()
    line.hang_up()


@pytest.fixture(autouse=True)
async def no_leftover_tasks() -> AsyncIterator[None]:
    yield
    for _ in range(10):
        await asyncio.sleep(0)
    leftover = asyncio.all_tasks() - {asyncio.current_task()}
    assert not leftover


@pytest.fixture
async def raw_app() -> AsyncIterator[Callable[[Script], Awaitable[RawApp]]]:
    started: list[RawApp] = []

    async def start(script: Script) -> RawApp:
        app = RawApp(script)
        await app.start()
        started.append(app)
        return app

    yield start

    for app in started:
        await app.close()
    for app in started:
        assert not app.errors


@pytest.fixture
async def pool_to(
    raw_app: Callable[[Script], Awaitable[RawApp]],
) -> AsyncIterator[Callable[..., UpstreamPool]]:
    """A pool to an app (or a URL); keyword arguments are UpstreamConfig fields.
    Closed before the apps are."""
    pools: list[UpstreamPool] = []

    def make(target: RawApp | URL, **settings: Any) -> UpstreamPool:
        url = target.url if isinstance(target, RawApp) else target
        pool = UpstreamPool(UpstreamConfig(url, WAIT, **settings))
        pools.append(pool)
        return pool

    yield make

    for pool in pools:
        await pool.close()


# --- talking to it --------------------------------------------------------------------


async def send(
    pool: UpstreamPool,
    method: str = "GET",
    *,
    target: str = "/",
    headers: dict[str, str] | None = None,
    body: AsyncIterator[bytes] | None = None,
) -> UpstreamAnswer:
    """One request, framed as the proxy frames it; the answer once its head came."""
    request_headers = CIMultiDict(headers or {})
    as_chunks = body_framing(method, request_headers, body is not None)
    head = request_head(method, target, request_headers, pool.authority)
    async with asyncio.timeout(WAIT):
        return await pool.request(method, head, body, as_chunks)


async def read_all(answer: UpstreamAnswer) -> bytes:
    parts = []
    async with asyncio.timeout(WAIT):
        while not answer.at_eof():
            parts.append(await answer.readany())
    return b"".join(parts)


async def exchange(
    pool: UpstreamPool, method: str = "GET", **request: Any
) -> tuple[UpstreamAnswer, bytes]:
    """A whole exchange as the proxy has it: send, read the body, release."""
    answer = await send(pool, method, **request)
    try:
        body = await read_all(answer)
    except BaseException:
        answer.close()
        raise
    answer.release()
    return answer, body


async def pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait for a state of the pool or an answer, which no event announces."""
    async with asyncio.timeout(WAIT):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


async def dropped(line: Line) -> None:
    """Wait until the pool has closed its end of ``line``."""
    async with asyncio.timeout(WAIT):
        await line.dropped.wait()


def chunked(*frames: bytes) -> bytes:
    """A 200 answer whose body is ``frames``, as sent."""
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(frames)


def header_values(head: bytes, name: bytes) -> list[bytes]:
    lines = head.split(b"\r\n")[1:]
    return [
        value.strip()
        for key, _, value in (line.partition(b":") for line in lines if line)
        if key.lower() == name.lower()
    ]


# --- keep-alive -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "connections"),
    [
        pytest.param(OK, 1, id="content-length"),
        pytest.param(chunked(b"2\r\nok\r\n0\r\n\r\n"), 1, id="chunked"),
        pytest.param(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
            1,
            id="http/1.0 with keep-alive",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            2,
            id="connection: close",
        ),
        pytest.param(
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 2, id="http/1.0"
        ),
    ],
)
async def test_keep_alive_reuses_the_connection_unless_the_app_ends_it(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
    answer: bytes,
    connections: int,
) -> None:
    app = await raw_app(every(answer))
    pool = pool_to(app)

    bodies = [(await exchange(pool))[1] for _ in range(2)]

    assert bodies == [b"ok", b"ok"]
    assert len(app.lines) == connections
    if connections == 2:
        await dropped(app.lines[0])  # the pool closed it; the app did not


@pytest.mark.parametrize(
    ("method", "body", "retried"),
    [
        ("GET", None, True),
        ("HEAD", None, True),
        ("OPTIONS", None, True),
        ("PUT", None, True),
        ("DELETE", None, True),
        ("POST", None, False),
        ("PATCH", None, False),
        ("POST", b"x", False),
        ("PUT", b"x", False),
    ],
)
async def test_stale_keep_alive_retried_once_only_when_idempotent_without_body(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
    method: str,
    body: bytes | None,
    retried: bool,
) -> None:
    app = await raw_app(per_line(kept_then_hung_up, every(NO_CONTENT)))
    pool = pool_to(app)
    await exchange(pool)
    upload = pieces(body) if body is not None else None

    if retried:
        answer, _ = await exchange(pool, method, body=upload)
        assert answer.status == 204
        assert len(app.lines) == 2
    else:
        with pytest.raises(UpstreamError):
            await exchange(pool, method, body=upload)
        assert len(app.lines) == 1
    assert len(app.lines[0].heads) == 2


@pytest.mark.parametrize(
    "partial",
    [
        b"H",
        b"HTTP/1.1 2",
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
    ],
)
async def test_stale_keep_alive_not_retried_once_answer_bytes_came(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
    partial: bytes,
) -> None:
    async def answers_part_then_hangs_up(line: Line) -> None:
        await line.next_head()
        await line.send(NO_CONTENT)
        await line.next_head()
        await line.send(partial)
        line.hang_up()

    app = await raw_app(per_line(answers_part_then_hangs_up))
    pool = pool_to(app)
    await exchange(pool)

    with pytest.raises(UpstreamError):
        await exchange(pool)

    assert len(app.lines) == 1  # the app had the request: it is not sent again


@pytest.mark.parametrize(
    "head_answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
async def test_head_answer_completes_without_body_and_the_next_answer_parses(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
    head_answer: bytes,
) -> None:
    app = await raw_app(in_turn(head_answer, OK))
    pool = pool_to(app)

    head = await send(pool, "HEAD")
    complete_at_once = head.is_eof()
    head_body = await read_all(head)
    head.release()
    answer, body = await exchange(pool)

    assert complete_at_once
    assert (head.status, head_body) == (200, b"")
    assert (answer.status, body) == (200, b"ok")
    assert len(app.lines) == 1


@pytest.mark.parametrize(
    "answer",
    [
        NO_CONTENT,
        b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n',
        # The length the body would have had: 304 never has one (RFC 9110 8.6).
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n",
    ],
)
async def test_no_content_and_not_modified_end_at_the_head_and_reuse(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
    answer: bytes,
) -> None:
    app = await raw_app(in_turn(answer, OK))
    pool = pool_to(app)

    first = await send(pool)
    complete_at_once = first.is_eof()
    first.release()
    second, body = await exchange(pool)

    assert complete_at_once
    assert first.status in (204, 304)
    assert (second.status, body) == (200, b"ok")
    assert len(app.lines) == 1


@pytest.mark.parametrize(
    "interim",
    [
        [b"HTTP/1.1 100 Continue\r\n\r\n"],
        [b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n"],
        [
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n",
        ],
        [
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n"
        ],
    ],
    ids=["100", "103", "100 then 103", "100 and 103 in one write"],
)
async def test_interim_answers_are_skipped_and_the_connection_reused(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
    interim: list[bytes],
) -> None:
    final = b"HTTP/1.1 200 Fine\r\nX-Final: yes\r\nContent-Length: 2\r\n\r\nok"

    async def interim_then_final(line: Line) -> None:
        await line.next_head()
        await line.send(*interim, final)
        await line.next_head()
        await line.send(OK)

    app = await raw_app(interim_then_final)
    pool = pool_to(app)

    answer, body = await exchange(pool)
    _, second_body = await exchange(pool)

    assert (answer.status, answer.reason, body) == (200, "Fine", b"ok")
    assert dict(answer.headers) == {"X-Final": "yes", "Content-Length": "2"}
    assert second_body == b"ok"
    assert len(app.lines) == 1


@pytest.mark.parametrize(
    "switch",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n\r\n\x81\x05hello",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
    ids=["upgrade", "bare"],
)
async def test_unasked_switching_protocols_is_101_and_never_reused(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
    switch: bytes,
) -> None:
    app = await raw_app(in_turn(switch, OK))
    pool = pool_to(app)

    switched = await send(pool)
    switched.release()
    _, body = await exchange(pool)

    assert switched.status == 101
    assert body == b"ok"
    assert len(app.lines) == 2
    await dropped(app.lines[0])


# --- the app's answer as an attack ----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "parts", "status", "body"),
    [
        pytest.param("GET", [OK + EVIL], 200, b"ok", id="two answers in one write"),
        pytest.param("GET", [OK, EVIL], 200, b"ok", id="two answers, two writes"),
        pytest.param("GET", [NO_CONTENT + EVIL], 204, b"", id="an answer after 204"),
        pytest.param(
            "GET",
            [b"HTTP/1.1 304 Not Modified\r\n\r\n" + EVIL],
            304,
            b"",
            id="an answer after 304",
        ),
        pytest.param(
            "GET",
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + EVIL],
            200,
            b"",
            id="an answer after a chunked body",
        ),
        pytest.param("GET", [OK + b"tail"], 200, b"ok", id="bytes past the length"),
        pytest.param(
            "HEAD",
            [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(EVIL) + EVIL],
            200,
            b"",
            id="a body to HEAD",
        ),
        pytest.param(
            "HEAD",
            [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(EVIL), EVIL],
            200,
            b"",
            id="a body to HEAD, later",
        ),
    ],
)
async def test_response_splitting_extra_answer_never_answers_this_or_the_next(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
    method: str,
    parts: list[bytes],
    status: int,
    body: bytes,
) -> None:
    async def answers_twice(line: Line) -> None:
        await line.next_head()
        await line.send(*parts)

    app = await raw_app(per_line(answers_twice, every(FRESH)))
    pool = pool_to(app)

    first, first_body = await exchange(pool, method)
    await dropped(app.lines[0])
    second, second_body = await exchange(pool)

    assert (first.status, first_body) == (status, body)
    assert "Location" not in first.headers
    assert (second.status, second.headers["X-Line"], second_body) == (
        200,
        "fresh",
        b"fresh",
    )
    assert len(app.lines) == 2


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n2\r\nok\r\n0\r\n\r\n",
            id="content-length and chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n"
            b"\r\n2\r\nok\r\n0\r\n\r\n",
            id="chunked and content-length",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 7\r\n\r\nokEVIL!",
            id="two content-lengths",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            id="content-length twice",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
            id="content-length list",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", id="signed length"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", id="negative length"
        ),
        pytest.param(chunked(b"zz\r\nok\r\n0\r\n\r\n"), id="chunk size not hex"),
        pytest.param(chunked(b"-2\r\nok\r\n0\r\n\r\n"), id="negative chunk size"),
        pytest.param(chunked(b"0x2\r\nok\r\n0\r\n\r\n"), id="chunk size 0x"),
        pytest.param(chunked(b"2 \r\nok\r\n0\r\n\r\n"), id="space after chunk size"),
        pytest.param(
            chunked(b"1" + b"0" * 20 + b"\r\nok\r\n0\r\n\r\n"), id="chunk size overflow"
        ),
        pytest.param(chunked(b"2\nok\r\n0\r\n\r\n"), id="bare LF after chunk size"),
        pytest.param(chunked(b"2\r\nokEVIL\r\n0\r\n\r\n"), id="chunk past its size"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
            id="obs-fold, space",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-A: a\r\n\tb\r\nContent-Length: 0\r\n\r\n",
            id="obs-fold, tab",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-A: a\nContent-Length: 0\r\n\r\n",
            id="bare LF in a header",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", id="bare LF after status"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n", id="bare LF ends head"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
            id="bare CR in a header",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
            id="NUL in a value",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX\x00A: a\r\nContent-Length: 0\r\n\r\n",
            id="NUL in a name",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length : 7\r\n\r\nokEVIL!",
            id="space before colon",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\n Content-Length: 7\r\n\r\nokEVIL!",
            id="space before the first name",
        ),
        pytest.param(
            b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n", id="status 000"
        ),
        pytest.param(b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n", id="status 99"),
        pytest.param(
            b"HTTP/1.1 1000 Big\r\nContent-Length: 0\r\n\r\n", id="status 1000"
        ),
        pytest.param(b"XTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", id="not HTTP"),
        pytest.param(
            chunked(b"2\r\nok\r\n0\r\nX-T: a\x00\r\n\r\n"), id="NUL in a trailer"
        ),
    ],
)
async def test_response_smuggling_answer_llhttp_cannot_frame_is_an_error(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
    answer: bytes,
) -> None:
    app = await raw_app(per_line(every(answer), every(FRESH)))
    pool = pool_to(app)

    with pytest.raises(UpstreamError):
        await exchange(pool)
    fresh, body = await exchange(pool)

    assert (fresh.headers["X-Line"], body) == ("fresh", b"fresh")
    assert len(app.lines) == 2


def head_with(count: int) -> bytes:
    """An answer whose head has ``count`` header fields, Content-Length among them."""
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(count - 1))
    return b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok"


def trailers(count: int) -> bytes:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(count))
    return chunked(b"2\r\nok\r\n0\r\n", fields, b"\r\n")


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(head_with(MAX_HEADERS + 1), id="more than MAX_HEADERS"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX: "
            + b"a" * MAX_FIELD_SIZE
            + b"\r\nContent-Length: 0\r\n\r\n",
            id="a field longer than MAX_FIELD_SIZE",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX: " + b"a" * ENDLESS, id="a value that never ends"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\n" + b"X" * ENDLESS, id="a name that never ends"
        ),
        pytest.param(b"HTTP/1.1 200 " + b"O" * ENDLESS, id="a reason that never ends"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX: " + b" " * ENDLESS, id="blanks that never end"
        ),
        pytest.param(trailers(MAX_HEADERS), id="more than MAX_HEADERS with trailers"),
        pytest.param(
            chunked(b"2\r\nok\r\n0\r\nX-T: " + b"a" * ENDLESS),
            id="a trailer that never ends",
        ),
    ],
)
async def test_header_flooding_by_the_app_is_an_error(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
    answer: bytes,
) -> None:
    app = await raw_app(per_line(every(answer), every(FRESH)))
    pool = pool_to(app)

    with pytest.raises(UpstreamError):
        await exchange(pool)
    _, body = await exchange(pool)

    assert body == b"fresh"


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(head_with(MAX_HEADERS), id="MAX_HEADERS fields"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX: "
            + b"a" * (MAX_FIELD_SIZE - 1)
            + b"\r\nContent-Length: 2\r\n\r\nok",
            id="a field of MAX_FIELD_SIZE",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 8000) for i in range(100))
            + b"Content-Length: 2\r\n\r\nok",
            id="a large head of many fields",
        ),
    ],
)
async def test_header_flooding_limits_leave_room_for_a_large_head(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
    sent: bytes,
) -> None:
    app = await raw_app(every(sent))
    pool = pool_to(app)

    answer, body = await exchange(pool)

    assert (answer.status, body) == (200, b"ok")


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK"])
async def test_read_until_close_body_is_whole_when_the_app_closes(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
    status_line: bytes,
) -> None:
    async def close_delimited(line: Line) -> None:
        await line.next_head()
        await line.send(status_line + b"\r\nX-A: a\r\n\r\n", b"first, ", b"second")
        line.hang_up()

    app = await raw_app(per_line(close_delimited, every(FRESH)))
    pool = pool_to(app)

    _, body = await exchange(pool)
    _, fresh = await exchange(pool)

    assert body == b"first, second"
    assert fresh == b"fresh"


@pytest.mark.parametrize(
    "sent",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        chunked(b"3\r\nabc\r\n"),
        chunked(b"5\r\nabc"),
        chunked(b"3\r\nabc\r\n0\r\n"),
    ],
    ids=["content-length", "chunked, between chunks", "chunked, mid-chunk", "trailer"],
)
async def test_truncated_body_raises_on_read_never_looks_complete(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
    sent: bytes,
) -> None:
    async def cut_short(line: Line) -> None:
        await line.next_head()
        await line.send(sent)
        line.hang_up()

    app = await raw_app(cut_short)
    pool = pool_to(app)
    answer = await send(pool)
    got = []

    with pytest.raises(UpstreamError):
        async with asyncio.timeout(WAIT):
            while not answer.at_eof():
                got.append(await answer.readany())

    assert b"".join(got) == b"abc"
    assert not answer.is_eof()
    answer.close()


async def test_back_pressure_unread_body_is_buffered_only_to_buffer_high(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
) -> None:
    size = 20 * MiB
    payload = bytes(range(256)) * (size // 256)

    async def large(line: Line) -> None:
        await line.next_head()
        await line.send(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size, payload
        )

    app = await raw_app(large)
    pool = pool_to(app)

    answer = await send(pool)
    await eventually(lambda: answer._size > BUFFER_HIGH)
    await asyncio.sleep(0.05)  # time for reads that must not happen
    buffered = answer._size
    backlog = app.lines[0].writer.transport.get_write_buffer_size()
    body = await read_all(answer)
    answer.release()

    assert buffered <= BUFFER_HIGH + READ_SIZE
    assert backlog > 0  # the app is blocked on sending the rest
    assert len(body) == size
    assert body == payload


async def test_back_pressure_paused_answer_released_unread_leaves_the_line_read(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
) -> None:
    rest = asyncio.Event()

    async def large_then_ok(line: Line) -> None:
        await line.next_head()
        length = BUFFER_HIGH + 2
        await line.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length)
        await line.send(b"a" * BUFFER_HIGH)
        await rest.wait()
        await line.send(b"zz")
        await line.next_head()
        await line.send(OK)

    app = await raw_app(large_then_ok)
    pool = pool_to(app)

    answer = await send(pool)
    await eventually(lambda: answer._size == BUFFER_HIGH)
    rest.set()
    await eventually(answer.is_eof)  # all came, over BUFFER_HIGH: reading paused
    answer.release()  # done with it, its body unread
    _, body = await exchange(pool)

    assert body == b"ok"
    assert len(app.lines) == 1


async def test_closing_a_released_answer_leaves_the_reused_connection_alone(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
) -> None:
    rest = asyncio.Event()

    async def two_answers(line: Line) -> None:
        await line.next_head()
        await line.send(OK)
        await line.next_head()
        await line.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        await rest.wait()
        await line.send(b"next")

    app = await raw_app(two_answers)
    pool = pool_to(app)

    first, _ = await exchange(pool)
    second = await send(pool)
    first.close()  # late: its connection already serves the second request
    rest.set()
    body = await read_all(second)
    second.release()

    assert body == b"next"
    assert len(app.lines) == 1


# --- uploads --------------------------------------------------------------------------


async def test_upload_with_content_length_is_sent_raw(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
) -> None:
    received = []

    async def takes_six(line: Line) -> None:
        await line.next_head()
        received.append(await line.reader.readexactly(6))
        await line.send(NO_CONTENT)
        await line.next_head()
        await line.send(NO_CONTENT)

    app = await raw_app(takes_six)
    pool = pool_to(app)

    body = pieces(b"abc", b"", b"def")
    await exchange(pool, "POST", headers={"Content-Length": "6"}, body=body)
    await exchange(pool)

    post, get = app.lines[0].heads
    assert received == [b"abcdef"]
    assert header_values(post, b"Content-Length") == [b"6"]
    assert header_values(post, b"Transfer-Encoding") == []
    assert get.startswith(b"GET / HTTP/1.1\r\n")  # nothing sent past the body


async def test_upload_without_length_is_chunked_and_an_empty_piece_never_ends_it(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
) -> None:
    received = []

    async def takes_chunks(line: Line) -> None:
        await line.next_head()
        raw = b""
        while True:
            size_line = await line.reader.readuntil(b"\r\n")
            size = int(size_line, 16)
            raw += size_line + await line.reader.readexactly(size + 2)
            if size == 0:
                break
        received.append(raw)
        await line.send(NO_CONTENT)
        await line.next_head()
        await line.send(NO_CONTENT)

    app = await raw_app(takes_chunks)
    pool = pool_to(app)

    body = pieces(b"abc", b"", b"defgh")
    await exchange(pool, "POST", body=body)
    await exchange(pool)

    post, get = app.lines[0].heads
    assert received == [b"3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n"]
    assert header_values(post, b"Transfer-Encoding") == [b"chunked"]
    assert header_values(post, b"Content-Length") == []
    assert get.startswith(b"GET / HTTP/1.1\r\n")


@pytest.mark.parametrize(
    "upload_ends", ["before the release", "never"], ids=["ends later", "stalls"]
)
async def test_request_smuggling_early_answer_before_the_upload_ends_drops_the_line(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
    upload_ends: str,
) -> None:
    # The app answers without reading the body and keeps the connection: reused,
    # the body would be read as the start of a request, which the next request's
    # head completes (as the value of X-Ignore), and that request would be answered
    # as /smuggled.
    smuggled = b"GET /smuggled HTTP/1.1\r\nX-Ignore: "
    go_on = asyncio.Event()
    finished = asyncio.Event()

    async def refuses_then_echoes_targets(line: Line) -> None:
        await line.next_head()
        await line.send(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
        await echoes_targets(line)

    async def upload() -> AsyncIterator[bytes]:
        yield smuggled
        await go_on.wait()  # the client's end of the body comes after the answer
        finished.set()

    app = await raw_app(per_line(refuses_then_echoes_targets, echoes_targets))
    pool = pool_to(app)
    length = {"Content-Length": str(len(smuggled))}

    refused = await send(pool, "POST", headers=length, body=upload())
    refused_body = await read_all(refused)
    if upload_ends == "before the release":
        go_on.set()
        async with asyncio.timeout(WAIT):
            await finished.wait()
    refused.release()
    _, body = await exchange(pool, target="/second")

    assert (refused.status, refused_body) == (413, b"")
    assert body == b"/second"
    assert len(app.lines) == 2


async def test_upload_that_fails_is_an_error_and_never_ends_the_body(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
) -> None:
    received = []

    async def takes_all(line: Line) -> None:
        await line.next_head()
        received.append(await line.reader.read())

    async def broken() -> AsyncIterator[bytes]:
        yield b"abc"
        raise RuntimeError("the client's body broke: s3cr3t")

    app = await raw_app(takes_all)
    pool = pool_to(app)

    with pytest.raises(UpstreamError) as caught:
        await send(pool, "POST", body=broken())
    await dropped(app.lines[0])

    assert caught.value.reason == "upload: RuntimeError"
    assert received == [b"3\r\nabc\r\n"]  # no last chunk: the body never looks whole


@pytest.mark.parametrize(
    ("method", "lengths"),
    [
        ("GET", []),
        ("HEAD", []),
        ("OPTIONS", []),
        ("POST", [b"0"]),
        ("PUT", [b"0"]),
        ("PATCH", [b"0"]),
        ("DELETE", [b"0"]),
    ],
)
async def test_bodiless_request_gets_content_length_as_aiohttp_sent_it(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
    method: str,
    lengths: list[bytes],
) -> None:
    app = await raw_app(every(NO_CONTENT))
    pool = pool_to(app)

    await exchange(pool, method)

    head = app.lines[0].heads[0]
    assert head.startswith(method.encode() + b" / HTTP/1.1\r\n")
    assert header_values(head, b"Content-Length") == lengths
    assert header_values(head, b"Transfer-Encoding") == []


# --- request_head ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Note", "a\r\nX-Forwarded-User: admin"),
        ("X-Note", "a\nX-Forwarded-User: admin"),
        ("X-Note", "a\rX-Forwarded-User: admin"),
        ("X-Note", "a\r\n\r\nGET /admin HTTP/1.1"),
        ("X-Note\r\nX-Forwarded-User", "admin"),
        ("X-Note\nX-Forwarded-User", "admin"),
        ("X-Note\r", "a"),
    ],
)
def test_header_injection_line_break_in_a_header_is_refused(
    name: str, value: str
) -> None:
    with pytest.raises(ValueError):
        request_head("GET", "/", CIMultiDict({name: value}), "app")


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/ HTTP/1.1\r\nHost: app\r\n\r\nGET /admin"),
        ("GET", "/a\nb"),
        ("GET", "/a\rb"),
        ("GET", "/a b"),
        ("GET", "/a\x00"),
        ("GET", "/a\tb"),
        ("GET /admin HTTP/1.1\r\n", "/"),
        ("GET ", "/"),
    ],
)
def test_request_splitting_break_in_the_request_line_is_refused(
    method: str, target: str
) -> None:
    with pytest.raises(ValueError):
        request_head(method, target, CIMultiDict(), "app")


@pytest.mark.parametrize(
    ("headers", "host_lines"),
    [
        ({}, [b"Host: app:8080"]),
        ({"Host": "public.example"}, [b"Host: public.example"]),
        ({"host": "public.example"}, [b"host: public.example"]),
    ],
)
def test_request_head_host_from_the_authority_only_when_missing(
    headers: dict[str, str], host_lines: list[bytes]
) -> None:
    head = request_head("GET", "/p?q=1", CIMultiDict(headers), "app:8080")

    lines = head.split(b"\r\n")
    assert lines[0] == b"GET /p?q=1 HTTP/1.1"
    assert [line for line in lines if line.lower().startswith(b"host:")] == host_lines
    assert head.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("plain", b"plain"),
        ("caf\u00e9", b"caf\xc3\xa9"),
        (b"caf\xe9".decode("utf-8", "surrogateescape"), b"caf\xe9"),
        (b"\xff\xfe\x80".decode("utf-8", "surrogateescape"), b"\xff\xfe\x80"),
    ],
)
def test_request_head_non_utf8_header_bytes_round_trip(value: str, wire: bytes) -> None:
    head = request_head("GET", "/", CIMultiDict({"X-Name": value}), "app")

    assert b"\r\nX-Name: " + wire + b"\r\n" in head


async def test_answer_non_utf8_header_bytes_round_trip(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
) -> None:
    app = await raw_app(
        every(
            b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9 \xc3\xa9\r\nContent-Length: 0\r\n\r\n"
        )
    )
    pool = pool_to(app)

    answer, _ = await exchange(pool)

    value = answer.headers["X-Name"]
    assert value == "caf\udce9 \u00e9"
    assert value.encode("utf-8", "surrogateescape") == b"caf\xe9 \xc3\xa9"


# --- the pool -------------------------------------------------------------------------


async def test_pool_limit_third_request_waits_for_a_released_connection(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
) -> None:
    app = await raw_app(every(OK))
    pool = pool_to(app, max_connections=2)

    first = await send(pool)
    second = await send(pool)
    third = asyncio.create_task(send(pool))
    await eventually(lambda: len(pool._waiters) == 1)
    opened_while_waiting = len(app.lines)
    first.release()
    answer = await third

    assert opened_while_waiting == 2
    assert await read_all(answer) == b"ok"
    assert len(app.lines) == 2
    answer.release()
    second.release()


@pytest.mark.parametrize("when", ["while queued", "just as its turn came"])
async def test_pool_limit_cancelled_waiter_does_not_leak_its_turn(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
    when: str,
) -> None:
    app = await raw_app(every(OK))
    pool = pool_to(app, max_connections=2)
    first = await send(pool)
    second = await send(pool)

    if when == "while queued":
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await send(pool)
        fourth = asyncio.create_task(send(pool))
        await eventually(lambda: len(pool._waiters) == 1)
        first.release()
    else:
        third = asyncio.create_task(send(pool))
        fourth = asyncio.create_task(send(pool))
        await eventually(lambda: len(pool._waiters) == 2)
        first.release()  # the turn goes to the third...
        third.cancel()  # ...which is cancelled before it can take it
    answer = await fourth

    assert await read_all(answer) == b"ok"
    assert len(app.lines) == 2
    answer.release()
    second.release()


async def test_keepalive_timeout_idle_connection_is_closed_not_reused(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
) -> None:
    app = await raw_app(every(OK))
    pool = pool_to(app, keepalive_timeout=0.2)
    loop = asyncio.get_running_loop()

    await exchange(pool)
    released_at = loop.time()
    await exchange(pool)  # within the timeout: reused
    await dropped(app.lines[0])
    idle = loop.time() - released_at
    await exchange(pool)

    assert idle >= 0.2
    assert len(app.lines) == 2
    assert [len(line.heads) for line in app.lines] == [2, 1]


async def test_keepalive_timeout_checked_when_an_idle_connection_is_taken(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
) -> None:
    app = await raw_app(every(OK))
    pool = pool_to(app, keepalive_timeout=60.0)
    await exchange(pool)

    for connection in pool._idle:
        connection.idle_since -= 61.0  # idle too long; the sweeper has not run yet
    await exchange(pool)

    assert len(app.lines) == 2
    await dropped(app.lines[0])


async def test_connect_error_reason_names_the_errno_never_a_header(
    pool_to: Callable[..., UpstreamPool],
) -> None:
    pool = pool_to(URL(f"http://127.0.0.1:{free_port()}"))
    secrets = {"Cookie": "session=s3cr3t", "Authorization": "Bearer t0k3n"}

    with pytest.raises(UpstreamError) as caught:
        await send(pool, headers=secrets, target="/?code=c0de")

    reason = caught.value.reason
    assert reason.startswith("connect: ")
    assert f"[Errno {errno.ECONNREFUSED}]" in reason
    for secret in ("s3cr3t", "t0k3n", "c0de"):
        assert secret not in reason
        assert secret not in repr(caught.value)


async def test_pool_close_closes_idle_connections(
    raw_app: Callable[[Script], Awaitable[RawApp]],
    pool_to: Callable[..., UpstreamPool],
) -> None:
    app = await raw_app(every(OK))
    pool = pool_to(app)
    await exchange(pool)

    await pool.close()
    await dropped(app.lines[0])

    with pytest.raises(UpstreamError, match="closed"):
        await send(pool)
