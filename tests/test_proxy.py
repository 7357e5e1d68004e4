"""UpstreamProxy against real upstream servers on loopback: what each side receives."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import gzip
import hashlib
import ipaddress
import json
import logging
import os
import pathlib
import ssl
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient, AiohttpServer
from yarl import URL

import gateway.body_watch as body_watch
from gateway.config import UpstreamConfig
from gateway.errors import ConfigError
from gateway.headers import forwarded_facts, upstream_request_headers
from gateway.proxy import REQUEST_LIMITS, UpstreamProxy
from gateway.upstream_client import UpstreamPool
from gateway.upstream_session import make_upstream_session
from tests.conftest import StackFactory, free_port

MiB = 1024 * 1024
CHUNK = 64 * 1024
GATEWAY_COOKIE = "_reddit_gateway"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]
MakeGateway = Callable[..., Awaitable[TestServer]]
Client = TestClient[web.Request, None]
ClientOf = Callable[..., Awaitable[Client]]
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=10)
# aiohttp's server sets these when absent (Connection: close answers the request's)
AIOHTTP_ADDS = {b"date", b"server", b"connection"}


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
    cancel the handler (TestServer itself always cancels), and the gateway's
    limits on request lines and headers."""

    def __init__(
        self,
        app: web.Application,
        *,
        handler_cancellation: bool,
        lingering_time: float = 10.0,
    ) -> None:
        super().__init__(app)
        self._handler_cancellation = handler_cancellation
        self._lingering_time = lingering_time

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = self._handler_cancellation
        kwargs["lingering_time"] = self._lingering_time
        kwargs.update(REQUEST_LIMITS)
        return await super()._make_runner(**kwargs)


@pytest.fixture
async def gateway() -> AsyncIterator[MakeGateway]:
    """A stand-in gateway in front of ``upstream_url``; keyword arguments beyond
    its own are UpstreamConfig fields."""
    servers: list[TestServer] = []
    pools: list[UpstreamPool] = []

    async def make(
        upstream_url: URL,
        *,
        wait: float = 5.0,
        handler_cancellation: bool = False,
        lingering_time: float = 10.0,
        public_url: URL | None = None,
        **settings: Any,
    ) -> TestServer:
        config = UpstreamConfig(upstream_url, wait, **settings)
        pool = UpstreamPool(config)
        pools.append(pool)
        app = front_app(UpstreamProxy(config, pool, public_url=public_url))
        server = GatewayServer(
            app,
            handler_cancellation=handler_cancellation,
            lingering_time=lingering_time,
        )
        await server.start_server()
        servers.append(server)
        return server

    yield make

    for server in servers:
        await server.close()
    for pool in pools:
        await pool.close()


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


# --- what the upstream receives ------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/a%2Fb/%7E/c;x=1?q=a+b&q=%20&z",
        "/~u/!$&'()*+,;=:@/?/?a=?b",
        "//x//y/z",
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
        "X-Forwarded-Proto: http\r\nX-Forwarded-Host: app.example\r\n"
        "Forwarded: for=127.0.0.1;proto=http;host=app.example\r\n\r\n".encode()
    ]
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\nok")


@pytest.mark.parametrize(
    ("host", "passes"),
    [
        ("app.example", True),
        ("app.example:8443", True),
        ("10.0.0.7:80", True),
        ("[2001:db8::1]:443", True),
        ("app_1.internal", True),
        ("a b@evil.example/d?", False),
        ("evil.example/path", False),
        ("user@evil.example", False),
        ("evil.example\\app", False),
        ("app.example:80:80", False),
        ('app.example"', False),
    ],
)
async def test_host_header_poisoning_is_400_and_never_reaches_the_app(
    gateway: MakeGateway,
    raw_upstream: Callable[[Script], Awaitable[RawUpstream]],
    host: str,
    passes: bool,
) -> None:
    upstream = await raw_upstream(reply(b"HTTP/1.1 204 No Content\r\n\r\n"))
    server = await gateway(upstream.url)

    answer = await raw_exchange(
        server, f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )

    if passes:
        assert answer.startswith(b"HTTP/1.1 204 ")
        assert f"X-Forwarded-Host: {host}\r\n".encode() in upstream.heads[0]
    else:
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert upstream.heads == []


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
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n"
        b"Forwarded: for=127.0.0.1;proto=http;host=h\r\n\r\n"
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


# --- live streams -----------------------------------------------------------------


def parse_answer(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes, bool]:
    """Status line, header fields, decoded body, and whether the body was complete."""
    head, _, rest = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    fields = [(name, value) for name, _, value in (ln.partition(b": ") for ln in lines)]
    named = {name.lower(): value for name, value in fields}
    if named.get(b"transfer-encoding") == b"chunked":
        body, complete = dechunk(rest)
    elif b"content-length" in named:
        length = int(named[b"content-length"])
        body, complete = rest[:length], len(rest) >= length
    else:
        body, complete = rest, True  # delimited by the close: it cannot tell
    return status, fields, body, complete


def dechunk(data: bytes) -> tuple[bytes, bool]:
    body = b""
    while True:
        size_line, found, data = data.partition(b"\r\n")
        if not found:
            return body, False
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return body, data.startswith(b"\r\n")
        body += data[:size]
        if len(data) < size + 2:
            return body, False
        data = data[size + 2 :]


def chunk(piece: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(piece), piece)


async def test_sse_first_event_reaches_client_within_milliseconds(
    gateway: MakeGateway, aiohttp_server: AiohttpServer, client_of: ClientOf
) -> None:
    events = [f"id: {i}\ndata: event {i}\n\n".encode() for i in range(20)]
    sent_at: list[float] = []
    headers_arrived = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        await asyncio.wait_for(headers_arrived.wait(), 5)  # headers before any event
        for event in events:
            await asyncio.sleep(0.01)
            sent_at.append(time.perf_counter())
            await response.write(event)
        return response

    upstream = await aiohttp_server(upstream_app(handler))
    client = await client_of(await gateway(upstream.make_url("/")))

    resp = await client.get("/events", headers={"Accept": "text/event-stream"})
    headers_arrived.set()
    latencies = []
    for expected in events:
        got = await resp.content.readuntil(b"\n\n")
        latencies.append(time.perf_counter() - sent_at[len(latencies)])
        assert got == expected

    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Transfer-Encoding"] == "chunked"
    print(
        f"SSE through the gateway: first event {latencies[0] * 1000:.2f} ms, "
        f"median {statistics.median(latencies) * 1000:.2f} ms, "
        f"max {max(latencies) * 1000:.2f} ms after the upstream sent it"
    )
    assert latencies[0] < 0.5  # in practice about a millisecond
    assert await resp.read() == b""


STREAM_KINDS = [
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        b"Transfer-Encoding: chunked",
        id="sse-chunked",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 27\r\n\r\n",
        b"Content-Length: 27",
        id="content-length",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
        b"Transfer-Encoding: chunked",
        id="until-close",
    ),
]


@pytest.mark.parametrize(("head", "framing"), STREAM_KINDS)
async def test_stream_forwarded_piece_by_piece_as_it_arrives(
    gateway: MakeGateway,
    raw_upstream: Callable[[Script], Awaitable[RawUpstream]],
    head: bytes,
    framing: bytes,
) -> None:
    pieces = [b"data: first\n\n", b"second\n", b"third\n\n"]  # 27 bytes
    client_has = [asyncio.Event() for _ in pieces]
    chunked = b"chunked" in head

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes
    ) -> None:
        writer.write(head)
        for piece, arrived in zip(pieces, client_has, strict=True):
            writer.write(chunk(piece) if chunked else piece)
            await writer.drain()
            await asyncio.wait_for(arrived.wait(), 5)  # times out if buffered
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    upstream = await raw_upstream(script)
    server = await gateway(upstream.url)
    reader, writer = await asyncio.open_connection(server.host, server.port)

    writer.write(b"GET /stream HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    received = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    for piece, arrived in zip(pieces, client_has, strict=True):
        while not parse_answer(received)[2].endswith(piece):
            received += await asyncio.wait_for(reader.read(65536), 5)
        arrived.set()
    received += await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()

    status, fields, body, complete = parse_answer(received)
    assert status == b"HTTP/1.1 200 OK"
    assert framing in [b": ".join(field) for field in fields]
    assert (body, complete) == (b"".join(pieces), True)


async def test_long_poll_answer_within_timeout_passes(
    gateway: MakeGateway, aiohttp_server: AiohttpServer, client_of: ClientOf
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.5)  # the app holds the poll open, then answers
        return web.json_response({"messages": ["hi"]})

    upstream = await aiohttp_server(upstream_app(handler))
    client = await client_of(await gateway(upstream.make_url("/"), wait=2.0))
    started = time.perf_counter()

    resp = await client.get("/poll?since=41")

    assert resp.status == 200
    assert await resp.json() == {"messages": ["hi"]}
    assert time.perf_counter() - started >= 0.5


IDLE_CASES = [
    # (framing, pauses before each piece, idle_timeout, complete?)
    pytest.param("chunked", [0.1, 0.1, 0.1, 0.1], 0.4, True, id="chunked-pauses-short"),
    pytest.param("length", [0.1, 0.1, 0.1, 0.1], 0.4, True, id="length-pauses-short"),
    pytest.param("chunked", [0.1, 1.0, 0.1, 0.1], 0.3, False, id="chunked-stalls"),
    pytest.param("length", [0.1, 1.0, 0.1, 0.1], 0.3, False, id="length-stalls"),
    pytest.param("length", [1.0, 0.1, 0.1, 0.1], 0.3, False, id="stalls-at-start"),
    pytest.param("chunked", [0.1, 0.6, 0.1, 0.1], 0.0, True, id="off"),
]


@pytest.mark.parametrize(("framing", "pauses", "idle", "complete"), IDLE_CASES)
async def test_upstream_idle_body_is_cut_off_never_complete_looking(
    gateway: MakeGateway,
    raw_upstream: Callable[[Script], Awaitable[RawUpstream]],
    caplog: pytest.LogCaptureFixture,
    framing: str,
    pauses: list[float],
    idle: float,
    complete: bool,
) -> None:
    pieces = [b"0123456789"] * len(pauses)
    gateway_hung_up = asyncio.Event()

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes
    ) -> None:
        if framing == "chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n")
        for pause, piece in zip(pauses, pieces, strict=True):
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), pause) == b"":
                    gateway_hung_up.set()
                    return
            writer.write(chunk(piece) if framing == "chunked" else piece)
            await writer.drain()
        if framing == "chunked":
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    upstream = await raw_upstream(script)
    server = await gateway(upstream.url, idle_timeout=idle)

    with caplog.at_level(logging.WARNING, logger="gateway.proxy"):
        got = await raw_exchange(
            server, b"GET /feed HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )

    status, _, body, was_complete = parse_answer(got)
    assert status == b"HTTP/1.1 200 OK"
    assert was_complete is complete
    if complete:
        assert body == b"".join(pieces)
        assert "upstream_idle" not in caplog.text
    else:
        assert len(body) < 40
        assert "upstream_idle" in caplog.text
        await asyncio.wait_for(gateway_hung_up.wait(), 5)  # the upstream is released


@pytest.mark.parametrize(
    "idle",
    [
        {"idle_timeout": 0.3, "client_idle_timeout": 0},
        # SECURITY: pool exhaustion: bounded by default, with bodies unbounded
        {"idle_timeout": 0, "client_idle_timeout": 0.3},
        {"idle_timeout": 60, "client_idle_timeout": 0.3},
    ],
    ids=["idle_timeout", "client_idle_timeout", "the-shorter"],
)
@pytest.mark.parametrize(
    ("head", "first_part", "chunked"),
    [
        (b"Content-Length: 100\r\n", b"0123456789", False),
        (b"Transfer-Encoding: chunked\r\n", chunk(b"0123456789"), True),
    ],
    ids=["content-length", "chunked"],
)
async def test_slowloris_idle_client_upload_is_cut_off_with_408(
    gateway: MakeGateway,
    raw_upstream: Callable[[Script], Awaitable[RawUpstream]],
    caplog: pytest.LogCaptureFixture,
    head: bytes,
    first_part: bytes,
    chunked: bool,
    idle: dict[str, float],
) -> None:
    upstream_got: list[bytes] = []
    upstream_done = asyncio.Event()

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes
    ) -> None:
        upstream_got.append(await reader.read())  # until the gateway hangs up
        upstream_done.set()

    upstream = await raw_upstream(script)
    # aiohttp reads what may still come of an unfinished upload for lingering_time
    # (10 s by default) before it closes the connection
    server = await gateway(upstream.url, lingering_time=0.2, **idle)
    reader, writer = await asyncio.open_connection(server.host, server.port)
    started = time.perf_counter()

    with caplog.at_level(logging.WARNING, logger="gateway.proxy"):
        writer.write(b"PUT /file HTTP/1.1\r\nHost: h\r\n" + head + b"\r\n" + first_part)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # it stalls
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        answer = head + await asyncio.wait_for(reader.readexactly(length), 5)
        closed = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()

    status, fields, body, _ = parse_answer(answer)
    assert status == b"HTTP/1.1 408 Request Timeout"
    assert (b"Connection", b"close") in fields
    assert json.loads(body)["error"] == "request_timeout"
    assert 0.25 < time.perf_counter() - started < 3
    assert "client_idle" in caplog.text
    assert closed == b""
    await asyncio.wait_for(upstream_done.wait(), 5)
    (got,) = upstream_got  # cut short: never a complete body
    assert (dechunk(got) if chunked else (got, False)) == (b"0123456789", False)
    assert upstream.heads[0].startswith(b"PUT /file HTTP/1.1\r\n")


async def test_slow_upload_within_idle_timeout_passes(
    gateway: MakeGateway, aiohttp_server: AiohttpServer, client_of: ClientOf
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=await request.read())

    async def trickle() -> AsyncIterator[bytes]:
        for i in range(5):
            await asyncio.sleep(0.15)
            yield str(i).encode()

    upstream = await aiohttp_server(upstream_app(handler))
    server = await gateway(upstream.make_url("/"), wait=0.3, idle_timeout=0.5)
    client = await client_of(server)

    resp = await client.post("/upload", data=trickle())

    assert resp.status == 200
    assert await resp.read() == b"01234"


@pytest.mark.parametrize("handler_cancellation", [False, True])
async def test_client_leaving_a_long_poll_releases_upstream(
    gateway: MakeGateway,
    aiohttp_server: AiohttpServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    handler_cancellation: bool,
) -> None:
    monkeypatch.setattr(body_watch, "CLIENT_CHECK_INTERVAL", 0.05)
    polled = asyncio.Event()
    released = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        polled.set()
        try:
            await asyncio.sleep(30)  # no news yet
        except asyncio.CancelledError:  # TestServer cancels when the gateway hangs up
            released.set()
            raise
        return web.Response()

    upstream = await aiohttp_server(upstream_app(handler))
    server = await gateway(
        upstream.make_url("/"), wait=60, handler_cancellation=handler_cancellation
    )
    _, writer = await asyncio.open_connection(server.host, server.port)

    with caplog.at_level(logging.INFO, logger="gateway.proxy"):
        writer.write(b"GET /poll HTTP/1.1\r\nHost: h\r\n\r\n")
        await asyncio.wait_for(polled.wait(), 5)
        writer.transport.abort()
        await asyncio.wait_for(released.wait(), 5)  # not after the 60 s timeout
        await asyncio.sleep(0.05)  # let the gateway's handler finish

    assert "upstream_timeout" not in caplog.text


@pytest.mark.parametrize("handler_cancellation", [False, True])
async def test_client_leaving_a_quiet_stream_releases_upstream(
    gateway: MakeGateway,
    aiohttp_server: AiohttpServer,
    monkeypatch: pytest.MonkeyPatch,
    handler_cancellation: bool,
) -> None:
    monkeypatch.setattr(body_watch, "CLIENT_CHECK_INTERVAL", 0.05)
    released = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: hello\n\n")
        try:
            await asyncio.sleep(30)  # nothing more to say for now
        except asyncio.CancelledError:  # TestServer cancels when the gateway hangs up
            released.set()
            raise
        return response

    upstream = await aiohttp_server(upstream_app(handler))
    server = await gateway(
        upstream.make_url("/"), handler_cancellation=handler_cancellation
    )
    reader, writer = await asyncio.open_connection(server.host, server.port)

    writer.write(b"GET /events HTTP/1.1\r\nHost: h\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"data: hello\n\n"), 5)
    writer.transport.abort()

    await asyncio.wait_for(released.wait(), 5)


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
    pool = UpstreamPool(config)
    proxy = UpstreamProxy(config, pool)

    async def handler(request: web.Request) -> web.StreamResponse:
        bad = CIMultiDict({"Host": "h", "X-Note": "a\r\nX-Reddit-User: admin"})
        return await proxy.forward(request, bad)

    client = await client_of(await aiohttp_server(upstream_app(handler)))
    try:
        resp = await client.get("/")
    finally:
        await pool.close()

    assert resp.status == 400
    assert (await resp.json())["error"] == "bad_request"
    assert upstream.heads == []


# --- huge bodies: nothing piles up in the gateway ---------------------------------


async def test_slow_client_pauses_the_upstream_download(
    gateway: MakeGateway, aiohttp_server: AiohttpServer
) -> None:
    sent = 0
    stopped = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse()
        await response.prepare(request)
        block = b"x" * CHUNK
        try:
            while True:
                await response.write(block)
                sent += len(block)
        except BaseException:  # ConnectionResetError, or cancelled (TestServer)
            stopped.set()
            raise

    upstream = await aiohttp_server(upstream_app(handler))
    server = await gateway(upstream.make_url("/"))
    reader, writer = await asyncio.open_connection(server.host, server.port)

    writer.write(b"GET /endless HTTP/1.1\r\nHost: h\r\n\r\n")
    await asyncio.wait_for(reader.readexactly(MiB), 5)
    await asyncio.sleep(1.0)  # the client stops reading
    paused_at = sent
    await asyncio.sleep(0.5)
    still_at = sent
    writer.transport.abort()
    await asyncio.wait_for(stopped.wait(), 5)

    # What is in flight fits in the socket buffers; the rest waits at the upstream.
    assert paused_at - MiB < 48 * MiB
    assert still_at == paused_at


async def test_a_client_that_stops_reading_is_cut_off_and_frees_the_app(
    gateway: MakeGateway,
    aiohttp_server: AiohttpServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # SECURITY: pool exhaustion: a download nobody takes must not hold the app's
    # connection for ever, even with idle_timeout off
    stopped = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            while True:
                await response.write(b"x" * CHUNK)
        except BaseException:  # the gateway hung up
            stopped.set()
            raise

    upstream = await aiohttp_server(upstream_app(handler))
    server = await gateway(
        upstream.make_url("/"), idle_timeout=0, client_idle_timeout=0.5
    )
    reader, writer = await asyncio.open_connection(server.host, server.port)
    started = time.perf_counter()

    with caplog.at_level(logging.WARNING, logger="gateway.proxy"):
        writer.write(b"GET /endless HTTP/1.1\r\nHost: h\r\n\r\n")
        await asyncio.wait_for(reader.readexactly(MiB), 5)  # then reads no more
        await asyncio.wait_for(stopped.wait(), 5)
    writer.transport.abort()

    assert 0.4 < time.perf_counter() - started < 4
    assert "client_idle" in caplog.text


async def test_a_slow_but_steady_reader_is_not_cut_off(
    gateway: MakeGateway, aiohttp_server: AiohttpServer
) -> None:
    body = b"y" * (4 * MiB)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body)

    upstream = await aiohttp_server(upstream_app(handler))
    server = await gateway(upstream.make_url("/"), client_idle_timeout=0.3)
    reader, writer = await asyncio.open_connection(server.host, server.port)

    writer.write(b"GET /big HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    received = b""
    while chunk := await asyncio.wait_for(reader.read(256 * 1024), 5):
        received += chunk
        await asyncio.sleep(0.02)  # pauses, each far shorter than the limit
    writer.close()

    assert received.endswith(body)


async def test_slow_upstream_pauses_the_client_upload(
    gateway: MakeGateway, aiohttp_server: AiohttpServer
) -> None:
    sent = 0
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.content.readexactly(MiB)
        await asyncio.wait_for(release.wait(), 10)  # then stops reading
        return web.Response()

    async def upload(writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.write(
            b"PUT /big HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000000000\r\n\r\n"
        )
        block = b"y" * CHUNK
        while True:
            writer.write(block)
            await writer.drain()
            sent += len(block)

    upstream = await aiohttp_server(upstream_app(handler))
    server = await gateway(upstream.make_url("/"), wait=3.0, lingering_time=0.1)
    reader, writer = await asyncio.open_connection(server.host, server.port)
    uploading = asyncio.create_task(upload(writer))

    await asyncio.sleep(1.5)
    paused_at = sent
    await asyncio.sleep(0.5)
    still_at = sent
    uploading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await uploading
    # An upstream that takes nothing for `timeout` seconds is as slow as one that
    # does not answer. (Had the client left instead, the gateway would notice only
    # then too: it has stopped reading from it, which is the backpressure.)
    answer = await asyncio.wait_for(reader.read(), 5)  # closed after lingering_time
    writer.transport.abort()
    release.set()

    assert MiB <= paused_at < 48 * MiB
    assert still_at == paused_at
    assert answer.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")


# --- HTTP details -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"GET http://evil.example/x HTTP/1.1", 400),  # absolute-form
        (b"GET https://127.0.0.1/oauth2/x HTTP/1.1", 400),
        (b"GET evil.example/x HTTP/1.1", 400),
        (b"GET * HTTP/1.1", 400),
        (b"GET /a#fragment HTTP/1.1", 400),
        (b"GET /a b HTTP/1.1", 400),
        (b"GET /a\x00b HTTP/1.1", 400),
        (b"GET /a\x7fb HTTP/1.1", 400),
        (b"GET /a\xffb HTTP/1.1", 400),
        (b"GET /a\tb HTTP/1.1", 400),
        (b"GET  HTTP/1.1", 400),
        (b"GET /" + b"a" * 100_000 + b" HTTP/1.1", 400),
        (b"GET /" + b"a" * 8300 + b" HTTP/1.1", 400),
        # valid forms that are not for an app: aiohttp's router has no such path
        (b"OPTIONS * HTTP/1.1", 404),
        (b"CONNECT evil.example:443 HTTP/1.1", 404),
    ],
    ids=lambda value: value if isinstance(value, int) else repr(value[:40]),
)
async def test_request_smuggling_malformed_targets_refused_never_500(
    gateway: MakeGateway,
    raw_upstream: Callable[[Script], Awaitable[RawUpstream]],
    request_line: bytes,
    status: int,
) -> None:
    upstream = await raw_upstream(reply(b"HTTP/1.1 204 No Content\r\n\r\n"))
    server = await gateway(upstream.url)

    answer = await raw_exchange(
        server, request_line + b"\r\nHost: h\r\nConnection: close\r\n\r\n"
    )

    assert answer.split(b" ", 2)[1] == str(status).encode()
    assert upstream.heads == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"X-Big: " + b"a" * 100_000 + b"\r\n", 400),
        (b"Cookie: " + b"c" * 20_000 + b"\r\n", 400),
        (b"".join(b"X-%d: 1\r\n" % i for i in range(200)), 400),
        (b"Cookie: big=" + b"c" * 12_000 + b"\r\n", 204),  # over aiohttp's 8190
        (b"".join(b"X-%d: 1\r\n" % i for i in range(100)), 204),
    ],
    ids=["100KB-header", "20KB-cookie", "200-headers", "12KB-cookie", "100-headers"],
)
async def test_header_flooding_oversized_request_headers_are_400_never_500(
    gateway: MakeGateway,
    raw_upstream: Callable[[Script], Awaitable[RawUpstream]],
    headers: bytes,
    status: int,
) -> None:
    upstream = await raw_upstream(reply(b"HTTP/1.1 204 No Content\r\n\r\n"))
    server = await gateway(upstream.url)

    answer = await raw_exchange(
        server,
        b"GET / HTTP/1.1\r\nHost: h\r\n" + headers + b"Connection: close\r\n\r\n",
    )

    assert answer.split(b" ", 2)[1] == str(status).encode()
    if status == 204:
        assert headers in upstream.heads[0]
    else:
        assert upstream.heads == []


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (b"Content-Security-Policy: default-src " + b"a" * 20_000, 200),
        (b"X-Huge: " + b"a" * 100_000, 502),
    ],
    ids=["20KB-csp", "100KB-header"],
)
async def test_long_upstream_headers_pass_or_502_never_500(
    gateway: MakeGateway,
    raw_upstream: Callable[[Script], Awaitable[RawUpstream]],
    header: bytes,
    status: int,
) -> None:
    upstream = await raw_upstream(
        reply(b"HTTP/1.1 200 OK\r\n" + header + b"\r\nContent-Length: 2\r\n\r\nok")
    )
    server = await gateway(upstream.url)

    answer = await raw_exchange(
        server, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )

    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert (header + b"\r\n" in answer) is (status == 200)


async def test_repeated_request_headers_reach_upstream_in_order(
    gateway: MakeGateway, raw_upstream: Callable[[Script], Awaitable[RawUpstream]]
) -> None:
    repeated = [
        (b"Accept", b"text/html"),
        (b"X-Multi", b"1"),
        (b"accept", b"application/json;q=0.9"),
        (b"X-Multi", b"2, 3"),
        (b"Cache-Control", b"no-cache"),
        (b"Cache-Control", b"max-age=0"),
        (b"Cookie", b"a=1"),
        (b"Cookie", b"b=2"),
    ]
    upstream = await raw_upstream(reply(b"HTTP/1.1 204 No Content\r\n\r\n"))
    server = await gateway(upstream.url)

    await raw_exchange(
        server,
        b"GET /h HTTP/1.1\r\nHost: h\r\n"
        + b"".join(name + b": " + value + b"\r\n" for name, value in repeated)
        + b"Connection: close\r\n\r\n",
    )

    _, fields, _, _ = parse_answer(upstream.heads[0])
    # values and order byte for byte; aiohttp's parser spells known names its way
    assert [(name.lower(), value) for name, value in fields[1:9]] == [
        (name.lower(), value) for name, value in repeated
    ]


async def test_repeated_response_headers_reach_client_in_order(
    gateway: MakeGateway, raw_upstream: Callable[[Script], Awaitable[RawUpstream]]
) -> None:
    repeated = [
        (b"Vary", b"Accept"),
        (b"Link", b"</a.css>; rel=preload"),
        (b"Vary", b"Cookie"),
        (b"Link", b"</b.js>; rel=preload, </c.js>; rel=preload"),
        (b"WWW-Authenticate", b'Basic realm="app"'),
        (b"WWW-Authenticate", b"Bearer"),
        (b"Cache-Control", b"private"),
        (b"Cache-Control", b"max-age=0"),
    ]
    upstream = await raw_upstream(
        reply(
            b"HTTP/1.1 401 Unauthorized\r\n"
            + b"".join(name + b": " + value + b"\r\n" for name, value in repeated)
            + b"Content-Length: 2\r\n\r\nno"
        )
    )
    server = await gateway(upstream.url)

    answer = await raw_exchange(
        server, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )

    status, fields, body, _ = parse_answer(answer)
    assert status == b"HTTP/1.1 401 Unauthorized"
    assert fields[: len(repeated)] == repeated
    assert body == b"no"


async def test_chunked_request_body_reaches_upstream_chunked(
    gateway: MakeGateway, raw_upstream: Callable[[Script], Awaitable[RawUpstream]]
) -> None:
    bodies: list[bytes] = []

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes
    ) -> None:
        bodies.append(await reader.readuntil(b"0\r\n\r\n"))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    upstream = await raw_upstream(script)
    server = await gateway(upstream.url)

    answer = await raw_exchange(
        server,
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )

    assert answer.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert upstream.heads == [
        b"POST /c HTTP/1.1\r\nHost: h\r\n"
        b"X-Reddit-User: alice\r\nX-Forwarded-For: 127.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n"
        b"Forwarded: for=127.0.0.1;proto=http;host=h\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"  # aiohttp's own framing, last
    ]
    assert dechunk(bodies[0]) == (b"hello world", True)


@pytest.mark.parametrize(
    ("method", "answer", "expected_head"),
    [
        (
            "HEAD",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 1234\r\n\r\n",
            [b"Content-Type: text/plain", b"Content-Length: 1234"],
        ),
        (
            "HEAD",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            [b"Content-Type: text/plain"],
        ),
        ("GET", b"HTTP/1.1 204 No Content\r\nX-Done: 1\r\n\r\n", [b"X-Done: 1"]),
        (
            "GET",
            b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 99\r\n\r\n',
            [b'ETag: "v1"'],
        ),
    ],
    ids=["head-length", "head-chunked", "204", "304-with-length"],
)
async def test_bodyless_answers_exact_on_the_wire(
    gateway: MakeGateway,
    raw_upstream: Callable[[Script], Awaitable[RawUpstream]],
    method: str,
    answer: bytes,
    expected_head: list[bytes],
) -> None:
    upstream = await raw_upstream(reply(answer))
    server = await gateway(upstream.url)

    got = await raw_exchange(
        server, f"{method} / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode()
    )

    head, _, body = got.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    assert status == answer.split(b"\r\n", 1)[0]
    passed = [line for line in lines if line.split(b":")[0].lower() not in AIOHTTP_ADDS]
    assert [line.lower() for line in passed] == [line.lower() for line in expected_head]
    assert body == b""


# --- the app's links to itself ------------------------------------------------------

PUBLIC_URL = URL("https://app.example.com")


@pytest.mark.parametrize(
    ("header", "value", "rewrite", "expected"),
    [
        (
            "Location",
            "http://{up}/next?a=1#b",
            True,
            "https://app.example.com/next?a=1#b",
        ),
        ("Location", "/next", True, "/next"),
        ("Location", "../up", True, "../up"),
        ("Location", "https://www.reddit.com/x", True, "https://www.reddit.com/x"),
        ("Location", "http://{up}@evil.example/", True, "http://{up}@evil.example/"),
        (
            "Content-Location",
            "http://{up}/doc.json",
            True,
            "https://app.example.com/doc.json",
        ),
        (
            "Refresh",
            "5; url=http://{up}/later",
            True,
            "5; url=https://app.example.com/later",
        ),
        ("Refresh", "5; url=/later", True, "5; url=/later"),
        ("Location", "http://{up}/next", False, "http://{up}/next"),
        ("Content-Location", "http://{up}/doc.json", False, "http://{up}/doc.json"),
        ("Refresh", "0;url=http://{up}/later", False, "0;url=http://{up}/later"),
    ],
)
async def test_upstream_redirect_to_itself_points_at_public_url(
    gateway: MakeGateway,
    raw_upstream: Callable[[Script], Awaitable[RawUpstream]],
    header: str,
    value: str,
    rewrite: bool,
    expected: str,
) -> None:
    answer: list[bytes] = []

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes
    ) -> None:
        writer.write(answer[0])
        await writer.drain()

    upstream = await raw_upstream(script)
    authority = upstream.url.raw_authority
    answer.append(
        f"HTTP/1.1 302 Found\r\n{header}: {value.format(up=authority)}\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )
    server = await gateway(
        upstream.url, public_url=PUBLIC_URL, rewrite_redirects=rewrite
    )

    got = await raw_exchange(
        server, b"GET /go HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )

    _, fields, _, _ = parse_answer(got)
    assert fields[0] == (header.encode(), expected.format(up=authority).encode())


# --- Host and forwarding ------------------------------------------------------------


@pytest.mark.parametrize("pass_host", [True, False])
async def test_host_header_passed_or_upstream_own(
    gateway: MakeGateway,
    raw_upstream: Callable[[Script], Awaitable[RawUpstream]],
    pass_host: bool,
) -> None:
    upstream = await raw_upstream(reply(b"HTTP/1.1 204 No Content\r\n\r\n"))
    server = await gateway(upstream.url, pass_host_header=pass_host)
    host = "app.example:8443" if pass_host else upstream.url.raw_authority

    await raw_exchange(
        server,
        b"GET /p HTTP/1.1\r\nHost: app.example:8443\r\nX-App: 1\r\n"
        b"Connection: close\r\n\r\n",
    )

    assert upstream.heads == [
        f"GET /p HTTP/1.1\r\nHost: {host}\r\nX-App: 1\r\nX-Reddit-User: alice\r\n"
        "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
        "X-Forwarded-Host: app.example:8443\r\n"
        'Forwarded: for=127.0.0.1;proto=http;host="app.example:8443"\r\n\r\n'.encode()
    ]


SPOOFED = {
    "X-Forwarded-For": "203.0.113.66",
    "X-Real-IP": "203.0.113.66",
    "True-Client-IP": "203.0.113.66",
    "Forwarded": "for=203.0.113.66;host=admin.example",
    "X-Forwarded-Uri": "/oauth2/ping",
    "X-Original-URL": "/oauth2/ping",
    "X-Original-URI": "/oauth2/ping",
    "X-Rewrite-URL": "/oauth2/ping",
    "X-Forwarded-Prefix": "/oauth2",
}
URL_CLAIMS = ("X-Forwarded-Uri", "X-Original-URL", "X-Original-URI", "X-Rewrite-URL")


@pytest.mark.parametrize("trusted", ["", "127.0.0.0/8"], ids=["nobody", "loopback"])
async def test_forwarded_uri_spoofing_never_changes_routing_or_logged_client(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture, trusted: str
) -> None:
    stack = await make_stack(server_trusted_proxies=trusted)
    api = {"Accept": "application/json", **SPOOFED}

    with caplog.at_level(logging.INFO, logger="gateway.access"):
        async with aiohttp.ClientSession() as anonymous:
            async with anonymous.get(stack.url / "private", headers=api) as refused:
                assert refused.status == 401  # not the ping the headers name
            spoof = {"X-Original-URL": "/private", "X-Forwarded-Uri": "/private"}
            async with anonymous.get(stack.url / "oauth2/ping", headers=spoof) as ping:
                assert ping.status == 200
        async with stack.browser() as browser:
            await stack.login(browser, "alice")
            page_url = (stack.url / "private").with_query("x=1")
            async with browser.get(page_url, headers=SPOOFED) as page:
                assert page.status == 200

    (got,) = stack.upstream.received
    assert got.raw_path == "/private?x=1"
    assert got.all("X-Reddit-User") == ["alice"]
    for name in (*URL_CLAIMS, "X-Forwarded-Prefix", "X-Real-IP", "True-Client-IP"):
        assert got.all(name) == []
    if trusted:
        assert got.all("X-Forwarded-For") == ["203.0.113.66, 127.0.0.1"]
        assert got.all("Forwarded")[0].startswith(
            "for=203.0.113.66;host=admin.example, "
        )
    else:
        assert got.all("X-Forwarded-For") == ["127.0.0.1"]
        assert got.all("Forwarded")[0].startswith("for=127.0.0.1;")
    logged = [r.access for r in caplog.records if r.name == "gateway.access"]
    assert {entry["client"] for entry in logged} == {"127.0.0.1"}
    answered = [(entry["path"], entry["status"]) for entry in logged]
    assert answered[:2] == [("/private", 401), ("/oauth2/ping", 200)]
    assert answered[-1] == ("/private?x=1", 200)


# --- upstream kinds: https, Unix socket, the pool -----------------------------------


@dataclass
class TlsFiles:
    ca: str
    cert: str
    key: str


def make_tls_files(directory: pathlib.Path) -> TlsFiles:
    """A CA and a certificate it signed for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "app")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(
        str(directory / "ca.pem"),
        str(directory / "app.pem"),
        str(directory / "app.key"),
    )
    pathlib.Path(files.ca).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pathlib.Path(files.cert).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pathlib.Path(files.key).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@contextlib.asynccontextmanager
async def serving(
    app: web.Application, site: Callable[[web.AppRunner], web.BaseSite]
) -> AsyncIterator[web.AppRunner]:
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await site(runner).start()
        yield runner
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("verify", "with_ca", "status"),
    [(True, True, 200), (True, False, 502), (False, False, 200), (False, True, 200)],
    ids=["verified-by-ca-file", "unknown-ca-refused", "unverified", "unverified-ca"],
)
async def test_https_upstream_with_ca_file_and_tls_verify(
    gateway: MakeGateway,
    client_of: ClientOf,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
    verify: bool,
    with_ca: bool,
    status: int,
) -> None:
    tls = make_tls_files(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    seen: list[Seen] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await record(request, seen)
        return web.Response(text=f"over {request.scheme}")

    port = free_port()
    site = functools.partial(
        web.TCPSite, host="127.0.0.1", port=port, ssl_context=context
    )
    async with serving(upstream_app(handler), site):
        server = await gateway(
            URL(f"https://127.0.0.1:{port}"),
            tls_verify=verify,
            ca_file=tls.ca if with_ca else "",
        )
        client = await client_of(server)

        with caplog.at_level(logging.WARNING, logger="gateway.proxy"):
            resp = await client.post("/tls?x=1", data=b"secret body")
            body = await resp.read()

    assert resp.status == status
    if status == 200:
        assert body == b"over https"
        (got,) = seen
        assert (got.raw_path, got.body_size) == ("/tls?x=1", 11)
    else:
        assert seen == []
        assert "upstream_unreachable" in caplog.text
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


def test_ca_file_that_is_not_pem_stops_start_up(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    config = UpstreamConfig(URL("https://app:8443"), 5.0, ca_file=str(bad))

    with pytest.raises(ConfigError, match=r"upstream\.ca_file"):
        make_upstream_session(config)


@pytest.mark.parametrize("pass_host", [True, False])
async def test_unix_socket_upstream(
    gateway: MakeGateway, client_of: ClientOf, pass_host: bool
) -> None:
    seen: list[Seen] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        got = await record(request, seen)
        return web.json_response({"size": got.body_size})

    with tempfile.TemporaryDirectory(prefix="gw") as directory:
        path = os.path.join(directory, "app.sock")  # short: sun_path has 108 bytes
        site = functools.partial(web.UnixSite, path=path)
        async with serving(upstream_app(handler), site):
            server = await gateway(
                URL("http://localhost"), unix_socket=path, pass_host_header=pass_host
            )
            client = await client_of(server)

            resp = await client.put(
                "/a%2Fb?q=1", data=b"x" * 100_000, headers={"Host": "app.example"}
            )
            answer = await resp.json()

    assert resp.status == 200
    assert answer == {"size": 100_000}
    (got,) = seen
    assert got.raw_path == "/a%2Fb?q=1"
    assert got.header("Host") == ["app.example" if pass_host else "localhost"]
    assert got.header("X-Forwarded-Host") == ["app.example"]


async def test_pool_never_opens_more_than_max_connections(
    gateway: MakeGateway, aiohttp_server: AiohttpServer, client_of: ClientOf
) -> None:
    active = 0
    most = 0
    seen: list[Seen] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal active, most
        await record(request, seen)
        active += 1
        most = max(most, active)
        await asyncio.sleep(0.1)
        active -= 1
        return web.Response(text="ok")

    upstream = await aiohttp_server(upstream_app(handler))
    client = await client_of(await gateway(upstream.make_url("/"), max_connections=2))

    answers = await asyncio.gather(*(client.get(f"/{i}") for i in range(6)))

    assert [a.status for a in answers] == [200] * 6
    assert most == 2
    assert len({entry.peer_port for entry in seen}) == 2


@pytest.mark.parametrize(
    ("keepalive", "pause", "connections"),
    [(1.0, 0.05, 1), (0.1, 0.4, 2)],
    ids=["reused-within-keepalive", "closed-after-keepalive"],
)
async def test_idle_upstream_connection_kept_for_keepalive_timeout(
    gateway: MakeGateway,
    aiohttp_server: AiohttpServer,
    client_of: ClientOf,
    keepalive: float,
    pause: float,
    connections: int,
) -> None:
    seen: list[Seen] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await record(request, seen)
        return web.Response(text="ok")

    upstream = await aiohttp_server(upstream_app(handler))
    server = await gateway(upstream.make_url("/"), keepalive_timeout=keepalive)
    client = await client_of(server)

    for _ in range(2):
        resp = await client.get("/")
        await resp.read()
        await asyncio.sleep(pause)

    assert len({entry.peer_port for entry in seen}) == connections


# --- the session ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "connector", "limit"),
    [
        ({}, aiohttp.TCPConnector, 100),
        ({"max_connections": 7}, aiohttp.TCPConnector, 7),
        ({"unix_socket": "/run/app.sock"}, aiohttp.UnixConnector, 100),
    ],
    ids=["defaults", "configured", "unix-socket"],
)
async def test_upstream_session_from_config(
    settings: dict[str, Any], connector: type, limit: int
) -> None:
    session = make_upstream_session(
        UpstreamConfig(URL("http://127.0.0.1:1"), 1.0, **settings)
    )
    try:
        assert session.auto_decompress is False
        assert isinstance(session.cookie_jar, aiohttp.DummyCookieJar)
        assert session.timeout.total is None
        assert type(session.connector) is connector
        assert session.connector.limit == limit
        assert not session.connector.force_close
    finally:
        await session.close()
