"""UpstreamProxy against real upstream servers on loopback: what each side receives."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient, AiohttpServer
from yarl import URL

from gateway.config import UpstreamConfig
from gateway.headers import forwarded_facts, upstream_request_headers
from gateway.proxy import UpstreamProxy, make_upstream_session

MiB = 1024 * 1024
CHUNK = 64 * 1024
GATEWAY_COOKIE = "_reddit_gateway"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]
MakeGateway = Callable[..., Awaitable[TestServer]]
Client = TestClient[web.Request, None]
ClientOf = Callable[..., Awaitable[Client]]
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=10)


# --- the pieces on loopback ---------------------------------------------------------


def front_app(proxy: UpstreamProxy) -> web.Application:
    """A stand-in for the gateway: every path goes through forward()."""

    async def handler(request: web.Request) -> web.StreamResponse:
        forwarded = forwarded_facts(
            request.headers, request.remote, request.scheme, request.host, ()
        )
        headers, _ = upstream_request_headers(
            request.headers,
            user="alice",
            forwarded=forwarded,
            own_cookie_names=frozenset({GATEWAY_COOKIE}),
        )
        return await proxy.forward(request, headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@dataclass
class Seen:
    """One request as an aiohttp upstream received it (the body only as a digest)."""

    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body_size: int
    body_sha256: str
    peer_port: int

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


async def record(request: web.Request, seen: list[Seen]) -> Seen:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    entry = Seen(
        request.method,
        request.raw_path,
        [(k.decode(), v.decode()) for k, v in request.raw_headers],
        size,
        digest.hexdigest(),
        peer[1] if peer else 0,
    )
    seen.append(entry)
    return entry


def upstream_app(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@dataclass
class RawUpstream:
    """An upstream speaking HTTP by hand: exact request bytes in, scripted bytes out."""

    script: Script
    url: URL = field(default_factory=URL)
    heads: list[bytes] = field(default_factory=list)
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
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            await self.script(reader, writer, head)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


def reply(data: bytes, *, then_sleep: float = 0.0) -> Script:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(then_sleep)

    return script


@pytest.fixture(autouse=True)
async def no_leftover_tasks() -> AsyncIterator[None]:
    yield
    for _ in range(10):
        await asyncio.sleep(0)
    leftover = asyncio.all_tasks() - {asyncio.current_task()}
    assert not leftover


class GatewayServer(TestServer):
    """A TestServer with aiohttp's production default: a client leaving does not
    cancel the handler (TestServer itself always cancels)."""

    def __init__(self, app: web.Application, *, handler_cancellation: bool) -> None:
        super().__init__(app)
        self._handler_cancellation = handler_cancellation

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = self._handler_cancellation
        return await super()._make_runner(**kwargs)


@pytest.fixture
async def gateway() -> AsyncIterator[MakeGateway]:
    servers: list[TestServer] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(
        upstream_url: URL, *, wait: float = 5.0, handler_cancellation: bool = False
    ) -> TestServer:
        config = UpstreamConfig(upstream_url, wait)
        session = make_upstream_session(config)
        sessions.append(session)
        app = front_app(UpstreamProxy(config, session))
        server = GatewayServer(app, handler_cancellation=handler_cancellation)
        await server.start_server()
        servers.append(server)
        return server

    yield make

    for server in servers:
        await server.close()
    for session in sessions:
        await session.close()


@pytest.fixture
def client_of(aiohttp_client: AiohttpClient) -> ClientOf:
    """aiohttp_client with a timeout: a hung body fails the test, not stalls it."""

    async def make(server: TestServer, **kwargs: Any) -> Client:
        return await aiohttp_client(server, timeout=CLIENT_TIMEOUT, **kwargs)

    return make


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[Script], Awaitable[RawUpstream]]]:
    started: list[RawUpstream] = []

    async def start(script: Script) -> RawUpstream:
        upstream = RawUpstream(script)
        await upstream.start()
        started.append(upstream)
        return upstream

    yield start

    for upstream in started:
        await upstream.close()


async def raw_exchange(server: TestServer, data: bytes) -> bytes:
    """Send bytes to the gateway and read until it closes the connection."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def pattern_chunks(total: int) -> tuple[list[int], str]:
    """Sizes of the pieces of a generated body, and the body's sha256."""
    digest = hashlib.sha256()
    sizes = []
    for i in range(0, total, CHUNK):
        piece = pattern(i, min(CHUNK, total - i))
        digest.update(piece)
        sizes.append(len(piece))
    return sizes, digest.hexdigest()


def pattern(offset: int, size: int) -> bytes:
    block = hashlib.sha256(offset.to_bytes(8, "big")).digest()
    return (block * (size // len(block) + 1))[:size]


async def generated_body(total: int) -> AsyncIterator[bytes]:
    for i in range(0, total, CHUNK):
        yield pattern(i, min(CHUNK, total - i))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- what the upstream receives ------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/a%2Fb/%7E/c;x=1?q=a+b&q=%20&z",
        "/~u/!$&'()*+,;=:@/?/?a=?b",
        "//x//y/./../z",
        "/%00%ff/%zz%",
        "/q?a[]=1&b=|^`{}",
        "/",
    ],
)
async def test_get_reaches_upstream_byte_for_byte(
    gateway: MakeGateway,
    raw_upstream: Callable[[Script], Awaitable[RawUpstream]],
    target: str,
) -> None:
    upstream = await raw_upstream(
        reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    )
    server = await gateway(upstream.url)

    answer = await raw_exchange(
        server,
        f"GET {target} HTTP/1.1\r\nHost: app.example\r\nX-Custom: 1\r\n"
        f"Cookie: a=1; {GATEWAY_COOKIE}=sealed; b=2\r\n"
        "Connection: close\r\n\r\n".encode(),
    )

    assert upstream.heads == [
        f"GET {target} HTTP/1.1\r\nHost: app.example\r\nX-Custom: 1\r\n"
        "Cookie: a=1; b=2\r\nX-Reddit-User: alice\r\nX-Forwarded-For: 127.0.0.1\r\n"
        "X-Forwarded-Proto: http\r\nX-Forwarded-Host: app.example\r\n\r\n".encode()
    ]
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\nok")


@pytest.mark.xfail(strict=True, reason="yarl drops an empty query's '?'")
async def test_empty_query_marker_reaches_upstream(
    gateway: MakeGateway, raw_upstream: Callable[[Script], Awaitable[RawUpstream]]
) -> None:
    upstream = await raw_upstream(reply(b"HTTP/1.1 204 No Content\r\n\r\n"))
    server = await gateway(upstream.url)

    await raw_exchange(
        server, b"GET /p? HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )

    assert upstream.heads[0].startswith(b"GET /p? HTTP/1.1\r\n")


async def test_base_path_of_upstream_url_is_prefixed(
    gateway: MakeGateway, raw_upstream: Callable[[Script], Awaitable[RawUpstream]]
) -> None:
    upstream = await raw_upstream(reply(b"HTTP/1.1 204 No Content\r\n\r\n"))
    server = await gateway(upstream.url / "base" / "")

    await raw_exchange(
        server, b"GET /a%2Fb?x=%20 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )

    assert upstream.heads[0].startswith(b"GET /base/a%2Fb?x=%20 HTTP/1.1\r\n")


async def test_request_smuggling_absolute_form_target_refused(
    gateway: MakeGateway, raw_upstream: Callable[[Script], Awaitable[RawUpstream]]
) -> None:
    upstream = await raw_upstream(reply(b"HTTP/1.1 204 No Content\r\n\r\n"))
    server = await gateway(upstream.url)

    answer = await raw_exchange(
        server,
        b"GET http://evil.example/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "bad_request"
    assert upstream.heads == []


async def test_aiohttp_adds_no_headers_of_its_own_to_a_post(
    gateway: MakeGateway, raw_upstream: Callable[[Script], Awaitable[RawUpstream]]
) -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        await reader.readexactly(5)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    upstream = await raw_upstream(script)
    server = await gateway(upstream.url)

    await raw_exchange(
        server,
        b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\nhello",
    )

    assert upstream.heads == [
        b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
        b"X-Reddit-User: alice\r\nX-Forwarded-For: 127.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n"
    ]


async def test_get_with_aiohttp_upstream(
    gateway: MakeGateway, aiohttp_server: AiohttpServer, client_of: ClientOf
) -> None:
    seen: list[Seen] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await record(request, seen)
        return web.json_response({"ok": True}, headers={"X-App": "1"})

    upstream = await aiohttp_server(upstream_app(handler))
    client = await client_of(await gateway(upstream.make_url("/")))

    resp = await client.get(
        "/items?x=1",
        headers={"X-Reddit-User": "admin", "Cookie": f"{GATEWAY_COOKIE}=v; theme=dark"},
    )

    assert resp.status == 200
    assert await resp.json() == {"ok": True}
    assert resp.headers["X-App"] == "1"
    (got,) = seen
    assert (got.method, got.raw_path, got.body_size) == ("GET", "/items?x=1", 0)
    assert got.header("X-Reddit-User") == ["alice"]
    assert got.header("Cookie") == ["theme=dark"]
    assert got.header("Content-Length") == []
    assert got.header("Transfer-Encoding") == []


async def test_bodyless_post_gets_content_length_zero(
    gateway: MakeGateway, aiohttp_server: AiohttpServer, client_of: ClientOf
) -> None:
    seen: list[Seen] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await record(request, seen)
        return web.Response(status=204)

    upstream = await aiohttp_server(upstream_app(handler))
    client = await client_of(await gateway(upstream.make_url("/")))

    resp = await client.post("/act")

    assert resp.status == 204
    (got,) = seen
    assert got.body_size == 0
    assert got.header("Content-Length") == ["0"]  # what RFC 9110 asks of a POST
    assert got.header("Transfer-Encoding") == []


@pytest.mark.parametrize(
    "send_length", [True, False], ids=["content-length", "chunked"]
)
async def test_large_upload_streams_through(
    gateway: MakeGateway,
    aiohttp_server: AiohttpServer,
    client_of: ClientOf,
    send_length: bool,
) -> None:
    seen: list[Seen] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        got = await record(request, seen)
        return web.json_response({"size": got.body_size})

    total = 20 * MiB + 123
    _, expected_sha = pattern_chunks(total)
    upstream = await aiohttp_server(upstream_app(handler))
    client = await client_of(await gateway(upstream.make_url("/")))
    headers = {"Content-Length": str(total)} if send_length else {}

    resp = await client.put(
        "/upload",
        data=generated_body(total),
        headers=headers,
        skip_auto_headers=("Content-Type",),
    )

    assert resp.status == 200
    assert await resp.json() == {"size": total}
    (got,) = seen
    assert got.body_sha256 == expected_sha
    if send_length:
        assert got.header("Content-Length") == [str(total)]
        assert got.header("Transfer-Encoding") == []
    else:
        assert got.header("Content-Length") == []
        assert got.header("Transfer-Encoding") == ["chunked"]
    assert got.header("Content-Type") == []  # the client sent none; none was added


async def test_upload_reaches_upstream_before_client_finishes(
    gateway: MakeGateway, aiohttp_server: AiohttpServer, client_of: ClientOf
) -> None:
    first_arrived = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        received = b""
        async for chunk in request.content.iter_any():
            received += chunk
            first_arrived.set()
        return web.Response(body=received)

    async def body() -> AsyncIterator[bytes]:
        yield b"first;"
        await asyncio.wait_for(first_arrived.wait(), 5)  # deadlocks if buffered
        yield b"second"

    upstream = await aiohttp_server(upstream_app(handler))
    client = await client_of(await gateway(upstream.make_url("/")))

    resp = await client.post("/stream", data=body())

    assert await resp.read() == b"first;second"


async def test_expect_100_continue_answered_by_gateway_not_forwarded(
    gateway: MakeGateway, raw_upstream: Callable[[Script], Awaitable[RawUpstream]]
) -> None:
    async def script(  # an app server that ignores Expect: it just reads the body
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        body = await reader.readexactly(4)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n" + body)
        await writer.drain()

    upstream = await raw_upstream(script)
    server = await gateway(upstream.url)
    reader, writer = await asyncio.open_connection(server.host, server.port)

    writer.write(
        b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.write(b"data")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert answer.endswith(b"\r\n\r\ndata")
    assert b"expect" not in upstream.heads[0].lower()


async def test_upstream_keep_alive_connection_reused(
    gateway: MakeGateway, aiohttp_server: AiohttpServer, client_of: ClientOf
) -> None:
    seen: list[Seen] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await record(request, seen)
        return web.Response(text="x")

    upstream = await aiohttp_server(upstream_app(handler))
    client = await client_of(await gateway(upstream.make_url("/")))

    for _ in range(3):
        resp = await client.get("/")
        await resp.read()

    assert len({entry.peer_port for entry in seen}) == 1


# --- what the client receives -----------------------------------------------------


async def test_gzip_response_passed_through_untouched(
    gateway: MakeGateway, aiohttp_server: AiohttpServer, client_of: ClientOf
) -> None:
    seen: list[Seen] = []
    compressed = gzip.compress(b"hello gateway " * 5000)

    async def handler(request: web.Request) -> web.StreamResponse:
        await record(request, seen)
        return web.Response(
            body=compressed,
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )

    upstream = await aiohttp_server(upstream_app(handler))
    client = await client_of(
        await gateway(upstream.make_url("/")), auto_decompress=False
    )

    resp = await client.get("/z", headers={"Accept-Encoding": "gzip"})

    assert await resp.read() == compressed
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Content-Length"] == str(len(compressed))
    assert seen[0].header("Accept-Encoding") == ["gzip"]


async def test_repeated_set_cookie_kept_separate_in_order(
    gateway: MakeGateway, raw_upstream: Callable[[Script], Awaitable[RawUpstream]]
) -> None:
    upstream = await raw_upstream(
        reply(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nContent-Length: 0\r\n"
            b"Set-Cookie: b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT\r\n"
            b"set-cookie: c=3; HttpOnly\r\n\r\n"
        )
    )
    server = await gateway(upstream.url)

    answer = await raw_exchange(
        server, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )

    fields = [
        line.split(b": ", 1) for line in answer.split(b"\r\n\r\n")[0].split(b"\r\n")
    ]
    assert [value for name, *value in fields if name.lower() == b"set-cookie"] == [
        [b"a=1; Path=/"],
        [b"b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT"],
        [b"c=3; HttpOnly"],
    ]


@pytest.mark.parametrize(
    ("method", "status", "upstream_headers", "expected_headers"),
    [
        ("HEAD", 200, {"Content-Length": "1234"}, [b"Content-Length: 1234"]),
        ("GET", 204, {}, []),
        ("GET", 304, {"ETag": '"v1"'}, [b'ETag: "v1"']),
        ("DELETE", 204, {"X-Done": "1"}, [b"X-Done: 1"]),
    ],
)
async def test_responses_without_body_keep_the_connection_framed(
    gateway: MakeGateway,
    aiohttp_server: AiohttpServer,
    method: str,
    status: int,
    upstream_headers: dict[str, str],
    expected_headers: list[bytes],
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/next":
            return web.Response(text="next")
        if method == "HEAD":
            return web.Response(body=b"x" * 1234, headers=upstream_headers)
        return web.Response(status=status, headers=upstream_headers)

    upstream = await aiohttp_server(upstream_app(handler))
    server = await gateway(upstream.make_url("/"))

    answer = await raw_exchange(  # two requests on one connection: framing must hold
        server,
        f"{method} /first HTTP/1.1\r\nHost: h\r\n\r\n"
        "GET /next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode(),
    )

    first, rest = answer.split(b"\r\n\r\n", 1)
    assert first.startswith(f"HTTP/1.1 {status} ".encode())
    for header in expected_headers:
        assert header.lower() in first.lower().split(b"\r\n")
    assert b"transfer-encoding" not in first.lower()
    if status != 200:
        assert b"content-length" not in first.lower()
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest.endswith(b"\r\n\r\nnext")


@pytest.mark.parametrize(
    "with_length", [True, False], ids=["content-length", "chunked"]
)
async def test_large_download_streams_through(
    gateway: MakeGateway,
    aiohttp_server: AiohttpServer,
    client_of: ClientOf,
    with_length: bool,
) -> None:
    total = 20 * MiB + 7
    sizes, expected_sha = pattern_chunks(total)

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-data"})
        if with_length:
            response.content_length = total
        await response.prepare(request)
        offset = 0
        for size in sizes:
            await response.write(pattern(offset, size))
            offset += size
        await response.write_eof()
        return response

    upstream = await aiohttp_server(upstream_app(handler))
    client = await client_of(await gateway(upstream.make_url("/")))

    resp = await client.get("/big")
    digest = hashlib.sha256()
    async for chunk in resp.content.iter_any():
        digest.update(chunk)

    assert digest.hexdigest() == expected_sha
    if with_length:
        assert resp.headers["Content-Length"] == str(total)
        assert "Transfer-Encoding" not in resp.headers
    else:
        assert "Content-Length" not in resp.headers
        assert resp.headers["Transfer-Encoding"] == "chunked"


async def test_response_reaches_client_before_upstream_finishes(
    gateway: MakeGateway, aiohttp_server: AiohttpServer, client_of: ClientOf
) -> None:
    client_has_first = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await asyncio.wait_for(client_has_first.wait(), 5)  # deadlocks if buffered
        await response.write(b"data: second\n\n")
        return response

    upstream = await aiohttp_server(upstream_app(handler))
    client = await client_of(await gateway(upstream.make_url("/")))

    resp = await client.get("/events")
    first = await resp.content.readuntil(b"\n\n")
    client_has_first.set()

    assert first == b"data: first\n\n"
    assert await resp.read() == b"data: second\n\n"


# --- failures -----------------------------------------------------------------------


async def test_upstream_down_is_502(
    gateway: MakeGateway, client_of: ClientOf, caplog: pytest.LogCaptureFixture
) -> None:
    client = await client_of(await gateway(URL(f"http://127.0.0.1:{free_port()}")))

    with caplog.at_level(logging.WARNING, logger="gateway.proxy"):
        resp = await client.get("/page?token=s3cr3t")

    assert resp.status == 502
    assert await resp.json() == {
        "error": "bad_gateway",
        "message": "The app could not be reached.",
    }
    (entry,) = [r for r in caplog.records if r.name == "gateway.proxy"]
    assert entry.levelno == logging.WARNING
    assert "upstream_unreachable" in entry.getMessage()
    assert "s3cr3t" not in caplog.text


@pytest.mark.parametrize(
    "answer",
    [
        b"",  # closes without a word
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
    ],
    ids=["silent-close", "not-http", "unasked-101", "two-lengths"],
)
async def test_upstream_broken_answer_is_502(
    gateway: MakeGateway,
    raw_upstream: Callable[[Script], Awaitable[RawUpstream]],
    client_of: ClientOf,
    caplog: pytest.LogCaptureFixture,
    answer: bytes,
) -> None:
    upstream = await raw_upstream(reply(answer))
    client = await client_of(await gateway(upstream.url))

    with caplog.at_level(logging.INFO, logger="gateway.proxy"):
        resp = await client.get(
            "/?code=s3cr3t", headers={"Cookie": "app_session=c00kie", "X-Token": "t0k"}
        )

    assert resp.status == 502
    assert (await resp.json())["error"] == "bad_gateway"
    assert "upstream_unreachable" in caplog.text
    for secret in ("s3cr3t", "c00kie", "t0k"):
        assert secret not in caplog.text


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_upstream_slow_headers_is_504(
    gateway: MakeGateway,
    aiohttp_server: AiohttpServer,
    client_of: ClientOf,
    caplog: pytest.LogCaptureFixture,
    method: str,
) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 5)
        return web.Response(text="too late")

    upstream = await aiohttp_server(upstream_app(handler))
    client = await client_of(await gateway(upstream.make_url("/"), wait=0.3))
    loop = asyncio.get_running_loop()
    started = loop.time()

    with caplog.at_level(logging.WARNING, logger="gateway.proxy"):
        resp = await client.request(method, "/slow?code=abc123", data=b"x" * 10)
    elapsed = loop.time() - started
    release.set()

    assert resp.status == 504
    assert await resp.json() == {
        "error": "gateway_timeout",
        "message": "The app did not answer in time.",
    }
    assert 0.25 < elapsed < 3
    assert "upstream_timeout" in caplog.text
    assert "abc123" not in caplog.text


async def test_slow_upload_is_not_timed_out(
    gateway: MakeGateway, aiohttp_server: AiohttpServer, client_of: ClientOf
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=await request.read())

    async def trickle() -> AsyncIterator[bytes]:
        for i in range(5):
            await asyncio.sleep(0.15)  # 0.75 s in all, the timeout is 0.3 s
            yield str(i).encode()

    upstream = await aiohttp_server(upstream_app(handler))
    client = await client_of(await gateway(upstream.make_url("/"), wait=0.3))

    resp = await client.post("/upload", data=trickle())

    assert resp.status == 200
    assert await resp.read() == b"01234"


async def test_slow_body_after_headers_is_not_timed_out(
    gateway: MakeGateway, aiohttp_server: AiohttpServer, client_of: ClientOf
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for part in (b"a", b"b", b"c"):
            await response.write(part)
            await asyncio.sleep(0.4)  # each pause beyond the 0.3 s timeout
        return response

    upstream = await aiohttp_server(upstream_app(handler))
    client = await client_of(await gateway(upstream.make_url("/"), wait=0.3))

    resp = await client.get("/slow-body")

    assert resp.status == 200
    assert await resp.read() == b"abc"


TRUNCATED = [
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789", 0.0, id="length"
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789",
        0.2,
        id="length-late",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
        0.0,
        id="chunked",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
        0.2,
        id="chunked-late",
    ),
]


@pytest.mark.parametrize(("answer", "pause"), TRUNCATED)
async def test_truncated_upstream_body_aborts_client_response(
    gateway: MakeGateway,
    raw_upstream: Callable[[Script], Awaitable[RawUpstream]],
    client_of: ClientOf,
    caplog: pytest.LogCaptureFixture,
    answer: bytes,
    pause: float,
) -> None:
    upstream = await raw_upstream(reply(answer, then_sleep=pause))
    client = await client_of(await gateway(upstream.url))

    with caplog.at_level(logging.WARNING, logger="gateway.proxy"):
        resp = await client.get("/download")

        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()

    assert "upstream_aborted" in caplog.text


@pytest.mark.parametrize(("answer", "pause"), TRUNCATED)
async def test_truncated_upstream_body_never_looks_complete_on_the_wire(
    gateway: MakeGateway,
    raw_upstream: Callable[[Script], Awaitable[RawUpstream]],
    answer: bytes,
    pause: float,
) -> None:
    upstream = await raw_upstream(reply(answer, then_sleep=pause))
    server = await gateway(upstream.url)

    # a keep-alive request: only an abort ends the connection (read to EOF)
    got = await raw_exchange(server, b"GET /download HTTP/1.1\r\nHost: h\r\n\r\n")

    head, _, body = got.partition(b"\r\n\r\n")
    if b"content-length: 1000" in head.lower():
        assert len(body) < 1000
    else:
        assert b"transfer-encoding: chunked" in head.lower()
        assert not body.endswith(b"0\r\n\r\n")


@pytest.mark.parametrize("handler_cancellation", [False, True])
async def test_client_leaving_mid_upload_aborts_upstream_request(
    gateway: MakeGateway,
    aiohttp_server: AiohttpServer,
    caplog: pytest.LogCaptureFixture,
    handler_cancellation: bool,
) -> None:
    receiving = asyncio.Event()
    aborted = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            async for _ in request.content.iter_any():
                receiving.set()
        except BaseException:  # ConnectionResetError, or cancelled (TestServer)
            aborted.set()
            raise
        return web.Response(text="complete?")

    upstream = await aiohttp_server(upstream_app(handler))
    server = await gateway(
        upstream.make_url("/"), handler_cancellation=handler_cancellation
    )
    _, writer = await asyncio.open_connection(server.host, server.port)

    writer.write(b"PUT /big HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000\r\n\r\n")
    writer.write(b"x" * 200_000)
    await writer.drain()
    await asyncio.wait_for(receiving.wait(), 5)
    writer.transport.abort()

    await asyncio.wait_for(aborted.wait(), 5)
    await asyncio.sleep(0.05)  # let the gateway's handler finish
    assert "upstream_unreachable" not in caplog.text


@pytest.mark.parametrize("handler_cancellation", [False, True])
async def test_client_leaving_mid_download_releases_upstream(
    gateway: MakeGateway, aiohttp_server: AiohttpServer, handler_cancellation: bool
) -> None:
    stopped = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(10_000):
                await response.write(b"x" * CHUNK)
                await asyncio.sleep(0.001)
        except BaseException:  # ConnectionResetError, or cancelled (TestServer)
            stopped.set()
            raise
        return response

    upstream = await aiohttp_server(upstream_app(handler))
    server = await gateway(
        upstream.make_url("/"), handler_cancellation=handler_cancellation
    )
    reader, writer = await asyncio.open_connection(server.host, server.port)

    writer.write(b"GET /endless HTTP/1.1\r\nHost: h\r\n\r\n")
    await asyncio.wait_for(reader.readexactly(100_000), 5)
    writer.transport.abort()

    await asyncio.wait_for(stopped.wait(), 5)


async def test_header_injection_into_upstream_request_is_400_not_500(
    raw_upstream: Callable[[Script], Awaitable[RawUpstream]],
    aiohttp_server: AiohttpServer,
    client_of: ClientOf,
) -> None:
    upstream = await raw_upstream(reply(b"HTTP/1.1 204 No Content\r\n\r\n"))
    config = UpstreamConfig(upstream.url, 5.0)
    session = make_upstream_session(config)
    proxy = UpstreamProxy(config, session)

    async def handler(request: web.Request) -> web.StreamResponse:
        bad = CIMultiDict({"Host": "h", "X-Note": "a\r\nX-Reddit-User: admin"})
        return await proxy.forward(request, bad)

    client = await client_of(await aiohttp_server(upstream_app(handler)))
    try:
        resp = await client.get("/")
    finally:
        await session.close()

    assert resp.status == 400
    assert (await resp.json())["error"] == "bad_request"
    assert upstream.heads == []


# --- the session ----------------------------------------------------------------


async def test_upstream_session_leaves_bodies_and_cookies_alone() -> None:
    session = make_upstream_session(UpstreamConfig(URL("http://127.0.0.1:1"), 1.0))
    try:
        assert session.auto_decompress is False
        assert isinstance(session.cookie_jar, aiohttp.DummyCookieJar)
        assert session.timeout.total is None
        assert isinstance(session.connector, aiohttp.TCPConnector)
        assert session.connector.limit == 100
        assert not session.connector.force_close
    finally:
        await session.close()
