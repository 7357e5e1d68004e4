"""Websockets through the real gateway to a real websocket app, all on loopback."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.reloadable import RELOADABLE
from tests.conftest import Stack, StackFactory, free_port, raw_headers

BIG = 3 * 1024 * 1024  # large, under upstream.websocket_max_message's 4 MiB
CLIENT_KEY = base64.b64encode(b"0123456789abcdef").decode()


@dataclass
class Seen:
    """One message the app received: type, data and (for a Close) the reason."""

    type: WSMsgType
    data: Any
    extra: str | None = None


@dataclass
class WebSocketApp:
    """A websocket app that records what it receives and obeys "cmd:" messages."""

    handshakes: list[list[tuple[str, str]]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    final_code: int | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws/echo", self._echo)
        app.router.add_get("/refuse", self._refuse)
        app.router.add_get("/refuse-big", self._refuse_big)
        app.router.add_get("/plain", self._plain)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/http", self._http)
        return app

    def header(self, name: str, index: int = -1) -> list[str]:
        return [v for k, v in self.handshakes[index] if k.lower() == name.lower()]

    async def _echo(self, request: web.Request) -> web.WebSocketResponse:
        self.handshakes.append(raw_headers(request))
        query = request.query
        protocols = tuple(p for p in query.get("protocols", "").split(",") if p)
        ws: web.WebSocketResponse = web.WebSocketResponse(
            protocols=protocols,
            autoping=False,
            autoclose=False,
            max_msg_size=0,
            compress=query.get("compress", "1") == "1",
        )
        ws.set_cookie("app_cookie", "1")
        ws.set_cookie("_reddit_gateway", "forged")
        await ws.prepare(request)

        async for message in _messages(ws):
            data = message.data
            self.seen.append(
                Seen(
                    message.type,
                    bytes(data) if isinstance(data, bytearray) else data,
                    message.extra if message.type is WSMsgType.CLOSE else None,
                )
            )
            if message.type is WSMsgType.CLOSE:
                await ws.close(code=int(query.get("reply", "1000")))
                break
            if message.type is WSMsgType.PING:
                await ws.pong(b"app:" + message.data)
            elif message.type is WSMsgType.TEXT and message.data.startswith("cmd:"):
                if await self._command(request, ws, message.data[4:]):
                    break
            elif message.type is WSMsgType.TEXT:
                await ws.send_str(message.data)
            elif message.type is WSMsgType.BINARY:
                await ws.send_bytes(message.data)

        self.final_code = ws.close_code
        self.finished.set()
        return ws

    async def _command(
        self, request: web.Request, ws: web.WebSocketResponse, command: str
    ) -> bool:
        name, _, argument = command.partition(":")
        if name == "close":
            code, _, reason = argument.partition(":")
            await ws.close(code=int(code), message=reason.encode())
            return True
        if name == "ping":
            await ws.ping(argument.encode())
        elif name == "big":
            await ws.send_bytes(b"\xab" * BIG)
        elif name == "vanish":
            assert request.transport is not None
            request.transport.close()
            return True
        return False

    async def _refuse(self, request: web.Request) -> web.Response:
        self.handshakes.append(raw_headers(request))
        response = web.Response(status=403, text="not for you")
        response.headers["X-App-Reason"] = "members only"
        return response

    async def _refuse_big(self, request: web.Request) -> web.Response:
        self.handshakes.append(raw_headers(request))
        return web.Response(status=403, body=b"x" * (1024 * 1024))

    async def _plain(self, request: web.Request) -> web.Response:
        self.handshakes.append(raw_headers(request))
        return web.Response(text="not a websocket")

    async def _redirect(self, request: web.Request) -> web.Response:
        self.handshakes.append(raw_headers(request))
        raise web.HTTPFound("/ws/echo")

    async def _slow(self, request: web.Request) -> web.Response:
        self.handshakes.append(raw_headers(request))
        await self.release.wait()
        return web.Response(text="late")

    async def _http(self, request: web.Request) -> web.Response:
        self.handshakes.append(raw_headers(request))
        return web.Response(text="plain http")


async def _messages(ws: web.WebSocketResponse) -> AsyncIterator[aiohttp.WSMessage]:
    while True:
        message = await ws.receive()
        if message.type in (WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR):
            return
        yield message


@pytest.fixture
def ws_app() -> WebSocketApp:
    return WebSocketApp()


@pytest.fixture
async def ws_server(aiohttp_server: Any, ws_app: WebSocketApp) -> TestServer:
    server: TestServer = await aiohttp_server(ws_app.app())
    return server


@pytest.fixture
async def stack(make_stack: StackFactory, ws_server: TestServer) -> Stack:
    return await make_stack(upstream_url=upstream_url(ws_server))


@pytest.fixture
async def browser(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with stack.browser() as session:
        await stack.login(session, "alice")
        yield session


def upstream_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def connect(
    browser: aiohttp.ClientSession, stack: Stack, path: str = "/ws/echo", **kw: Any
) -> aiohttp.ClientWebSocketResponse:
    kw.setdefault("origin", str(stack.url))
    return await browser.ws_connect(
        stack.url.with_path(path.partition("?")[0]).with_query(path.partition("?")[2]),
        autoping=False,
        autoclose=False,
        max_msg_size=0,
        **kw,
    )


async def open_count_reaches(stack: Stack, count: int) -> None:
    relay = stack.app[RELOADABLE]
    async with asyncio.timeout(5):
        while relay.open_websockets != count:  # noqa: ASYNC110 (a plain number: poll it)
            await asyncio.sleep(0.01)


async def settled(stack: Stack) -> None:
    """Wait for the gateway to finish every relay; none may leave a task behind."""
    await open_count_reaches(stack, 0)
    pumps = [t for t in asyncio.all_tasks() if t.get_coro().__name__ == "_pump"]
    assert pumps == []


async def receive(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    async with asyncio.timeout(5):
        return await ws.receive()


def cookie_header(browser: aiohttp.ClientSession, stack: Stack) -> str:
    cookies = browser.cookie_jar.filter_cookies(stack.url)
    return "; ".join(f"{name}={morsel.value}" for name, morsel in cookies.items())


async def raw_upgrade(
    stack: Stack, path: str, headers: dict[str, str]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A hand-made upgrade request; returns the connection and the answer's head."""
    assert stack.url.host is not None and stack.url.port is not None
    reader, writer = await asyncio.open_connection(stack.url.host, stack.url.port)
    fields = {
        "Host": stack.url.authority,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": CLIENT_KEY,
        "Sec-WebSocket-Version": "13",
        **headers,
    }
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head


def masked_frame(opcode: int, payload: bytes) -> bytes:
    assert len(payload) < 126
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


# Messages, pings and subprotocols


async def test_text_and_binary_messages_cross_both_ways(
    stack: Stack, browser: aiohttp.ClientSession, ws_app: WebSocketApp
) -> None:
    ws = await connect(browser, stack)
    assert stack.app[RELOADABLE].open_websockets == 1

    await ws.send_str("héllo")
    assert (await receive(ws)).data == "héllo"
    await ws.send_bytes(b"\x00\xff\x01")
    assert (await receive(ws)).data == b"\x00\xff\x01"
    await ws.send_bytes(b"\xcd" * BIG)
    assert (await receive(ws)).data == b"\xcd" * BIG
    await ws.send_str("cmd:big")
    assert (await receive(ws)).data == b"\xab" * BIG

    await ws.close()
    await settled(stack)
    assert ws_app.seen[:2] == [
        Seen(WSMsgType.TEXT, "héllo"),
        Seen(WSMsgType.BINARY, b"\x00\xff\x01"),
    ]
    assert ws_app.seen[2] == Seen(WSMsgType.BINARY, b"\xcd" * BIG)


async def test_pings_and_pongs_cross_end_to_end(
    stack: Stack, browser: aiohttp.ClientSession, ws_app: WebSocketApp
) -> None:
    ws = await connect(browser, stack)

    await ws.ping(b"from-client")
    answer = await receive(ws)
    assert (answer.type, answer.data) == (WSMsgType.PONG, b"app:from-client")

    await ws.send_str("cmd:ping:from-app")
    ping = await receive(ws)
    assert (ping.type, ping.data) == (WSMsgType.PING, b"from-app")
    await ws.pong(b"client-answer")
    await ws.close()
    await settled(stack)

    assert Seen(WSMsgType.PING, b"from-client") in ws_app.seen
    assert Seen(WSMsgType.PONG, b"client-answer") in ws_app.seen


@pytest.mark.parametrize(
    ("offered", "app_speaks", "app_is_offered", "client_gets"),
    [
        (("chat.v2", "chat.v1"), "chat.v1,chat.v0", ["chat.v2,chat.v1"], "chat.v1"),
        (("chat.v2", "chat.v1"), "chat.v1,chat.v2", ["chat.v2,chat.v1"], "chat.v2"),
        (("chat.v1",), "", ["chat.v1"], None),
        ((), "chat.v1", [], None),
    ],
)
async def test_subprotocol_is_the_apps_choice_among_the_clients_offers(
    stack: Stack,
    browser: aiohttp.ClientSession,
    ws_app: WebSocketApp,
    offered: tuple[str, ...],
    app_speaks: str,
    app_is_offered: list[str],
    client_gets: str | None,
) -> None:
    ws = await connect(
        browser, stack, f"/ws/echo?protocols={app_speaks}", protocols=offered
    )

    assert ws.protocol == client_gets
    assert ws_app.header("Sec-WebSocket-Protocol") == app_is_offered
    await ws.close()
    await settled(stack)


@pytest.mark.parametrize(
    ("client_offers", "app_accepts", "client_gets"),
    [
        (15, True, 15),
        (15, False, 0),
        (0, True, 0),
    ],
)
async def test_compression_only_when_both_ends_take_it(
    stack: Stack,
    browser: aiohttp.ClientSession,
    ws_app: WebSocketApp,
    client_offers: int,
    app_accepts: bool,
    client_gets: int,
) -> None:
    path = f"/ws/echo?compress={int(app_accepts)}"
    ws = await connect(browser, stack, path, compress=client_offers)

    assert ws.compress == client_gets
    await ws.send_str("squeeze " * 1000)
    assert (await receive(ws)).data == "squeeze " * 1000
    await ws.close()
    await settled(stack)
    extensions = ws_app.header("Sec-WebSocket-Extensions")
    assert bool(extensions) is bool(client_offers)


# Closing


async def test_client_close_code_and_reason_reach_app_and_its_reply_returns(
    stack: Stack, browser: aiohttp.ClientSession, ws_app: WebSocketApp
) -> None:
    ws = await connect(browser, stack, "/ws/echo?reply=4002")

    await ws.close(code=4001, message=b"client bye")

    assert ws.close_code == 4002
    await settled(stack)
    assert ws_app.seen[-1] == Seen(WSMsgType.CLOSE, 4001, "client bye")


async def test_app_close_code_and_reason_reach_client_and_its_reply_returns(
    stack: Stack, browser: aiohttp.ClientSession, ws_app: WebSocketApp
) -> None:
    ws = await connect(browser, stack)

    await ws.send_str("cmd:close:4003:server bye")
    closing = await receive(ws)
    assert (closing.type, closing.data, closing.extra) == (
        WSMsgType.CLOSE,
        4003,
        "server bye",
    )
    await ws.close(code=4004)

    await settled(stack)
    await asyncio.wait_for(ws_app.finished.wait(), 5)
    assert ws_app.final_code == 4004


async def test_app_vanishing_closes_client_with_bad_gateway(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    ws = await connect(browser, stack)

    await ws.send_str("cmd:vanish")
    closing = await receive(ws)

    assert (closing.type, closing.data) == (WSMsgType.CLOSE, 1014)
    await ws.close()
    await settled(stack)


async def test_client_vanishing_closes_app_with_going_away(
    stack: Stack, browser: aiohttp.ClientSession, ws_app: WebSocketApp
) -> None:
    headers = {"Cookie": cookie_header(browser, stack)}
    reader, writer, head = await raw_upgrade(stack, "/ws/echo", headers)
    assert head.startswith(b"HTTP/1.1 101 ")
    writer.write(masked_frame(0x1, b"hello"))
    async with asyncio.timeout(5):
        assert await reader.readexactly(7) == b"\x81\x05hello"
    assert stack.app[RELOADABLE].open_websockets == 1

    writer.close()  # no Close frame: the line just drops
    await writer.wait_closed()

    await asyncio.wait_for(ws_app.finished.wait(), 5)
    assert ws_app.seen[-1].type is WSMsgType.CLOSE
    assert ws_app.seen[-1].data == 1001
    await settled(stack)


async def test_client_close_without_a_code_reaches_app_as_1000(
    stack: Stack, browser: aiohttp.ClientSession, ws_app: WebSocketApp
) -> None:
    headers = {"Cookie": cookie_header(browser, stack)}
    reader, writer, head = await raw_upgrade(stack, "/ws/echo", headers)
    assert head.startswith(b"HTTP/1.1 101 ")

    writer.write(masked_frame(0x8, b""))
    async with asyncio.timeout(5):
        reply = await reader.readexactly(4)
    writer.close()
    await writer.wait_closed()

    assert reply == b"\x88\x02\x03\xe8"  # the app's reply: 1000
    await settled(stack)
    assert ws_app.seen[-1] == Seen(WSMsgType.CLOSE, 1000, "")


# What the app sees


async def test_app_sees_the_same_identity_headers_as_plain_http(
    stack: Stack, browser: aiohttp.ClientSession, ws_app: WebSocketApp
) -> None:
    browser.cookie_jar.update_cookies({"theme": "dark"}, stack.url)
    spoofs = {"X-Reddit-User": "mallory", "X-Forwarded-For": "6.6.6.6"}
    async with browser.get(stack.url / "http", headers=spoofs) as plain:
        assert plain.status == 200
    ws = await connect(browser, stack, headers=spoofs)
    await ws.close()
    await settled(stack)

    http_seen = dict(ws_app.handshakes[0])
    for name in (
        "X-Reddit-User",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "Forwarded",
        "Host",
    ):
        assert ws_app.header(name) == [http_seen[name]], name
    assert ws_app.header("X-Reddit-User") == ["alice"]
    assert ws_app.header("X-Forwarded-For") == ["127.0.0.1"]
    assert ws_app.header("Host") == [stack.url.authority]
    assert ws_app.header("Cookie") == ["theme=dark"]
    assert ws_app.header("Origin") == [str(stack.url)]
    assert ws_app.header("Upgrade") == ["websocket"]
    assert ws_app.header("Connection") == ["Upgrade"]
    assert ws_app.header("Sec-WebSocket-Version") == ["13"]
    assert len(ws_app.header("Sec-WebSocket-Key")) == 1


async def test_app_cookies_on_the_101_reach_the_browser_but_never_the_gateways(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    before = browser.cookie_jar.filter_cookies(stack.url)["_reddit_gateway"].value

    ws = await connect(browser, stack)
    await ws.close()
    await settled(stack)

    cookies = browser.cookie_jar.filter_cookies(stack.url)
    assert cookies["app_cookie"].value == "1"
    assert cookies["_reddit_gateway"].value == before


async def test_host_is_the_upstreams_when_pass_host_header_is_off(
    make_stack: StackFactory, ws_server: TestServer, ws_app: WebSocketApp
) -> None:
    stack = await make_stack(
        upstream_url=upstream_url(ws_server), upstream_pass_host_header="false"
    )
    async with stack.browser() as browser:
        await stack.login(browser, "alice")
        ws = await connect(browser, stack)
        await ws.close()
    await settled(stack)

    assert ws_app.header("Host") == [URL(upstream_url(ws_server)).authority]
    assert ws_app.header("X-Forwarded-Host") == [stack.url.authority]


@pytest.mark.parametrize("origin", ["SAME", None])
async def test_websocket_origin_replaces_the_browsers(
    make_stack: StackFactory,
    ws_server: TestServer,
    ws_app: WebSocketApp,
    origin: str | None,
) -> None:
    stack = await make_stack(
        upstream_url=upstream_url(ws_server),
        upstream_websocket_origin="http://app.internal:8080",
    )
    async with stack.browser() as browser:
        await stack.login(browser, "alice")
        ws = await connect(
            browser, stack, origin=str(stack.url) if origin == "SAME" else None
        )
        await ws.close()
    await settled(stack)

    assert ws_app.header("Origin") == ["http://app.internal:8080"]


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "null", "http://127.0.0.1:1", "not a url"]
)
async def test_cross_site_websocket_hijacking_refused_when_origin_is_rewritten(
    make_stack: StackFactory,
    ws_server: TestServer,
    ws_app: WebSocketApp,
    origin: str,
) -> None:
    stack = await make_stack(
        upstream_url=upstream_url(ws_server),
        upstream_websocket_origin="http://app.internal:8080",
    )
    async with stack.browser() as browser:
        await stack.login(browser, "alice")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect(browser, stack, origin=origin)

    assert refused.value.status == 403
    assert ws_app.handshakes == []
    assert stack.app[RELOADABLE].open_websockets == 0


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "http://127.0.0.1:1", "null", "http://localhost:1"],
)
async def test_cross_site_websocket_hijacking_is_refused_by_default(
    stack: Stack, browser: aiohttp.ClientSession, ws_app: WebSocketApp, origin: str
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connect(browser, stack, origin=origin)

    assert refused.value.status == 403
    assert ws_app.handshakes == []


async def test_a_same_origin_websocket_keeps_its_origin(
    stack: Stack, browser: aiohttp.ClientSession, ws_app: WebSocketApp
) -> None:
    ws = await connect(browser, stack)
    await ws.close()
    await settled(stack)

    assert ws_app.header("Origin") == [str(stack.url)]


async def test_memory_exhaustion_by_a_huge_websocket_message_is_refused(
    stack: Stack, browser: aiohttp.ClientSession, ws_app: WebSocketApp
) -> None:
    ws = await connect(browser, stack, compress=15)

    await ws.send_bytes(b"\0" * (5 * 1024 * 1024))  # deflates to a few KiB
    closing = await receive(ws)

    assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    await settled(stack)
    assert all(seen.type != WSMsgType.BINARY for seen in ws_app.seen)


# Refusals and failures


@pytest.mark.parametrize("navigation", [{}, {"Sec-Fetch-Mode": "navigate"}])
async def test_upgrade_without_session_gets_401_json_never_a_redirect(
    stack: Stack, ws_app: WebSocketApp, navigation: dict[str, str]
) -> None:
    async with stack.browser() as anonymous:
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": CLIENT_KEY,
            "Sec-WebSocket-Version": "13",
            **navigation,
        }
        async with anonymous.get(
            stack.url / "ws/echo", headers=headers, allow_redirects=False
        ) as answer:
            body = await answer.json()

        assert answer.status == 401
        assert "Location" not in answer.headers
        assert body["error"] == "unauthorized"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect(anonymous, stack)
        assert refused.value.status == 401

    assert ws_app.handshakes == []


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/refuse", 403, b"not for you"),
        ("/refuse-big", 403, b"x" * (1024 * 1024)),
        ("/missing", 404, b"404: Not Found"),
        ("/plain", 200, b"not a websocket"),
        ("/redirect", 302, b"302: Found"),
    ],
)
async def test_refused_upgrade_passes_status_and_body_as_plain_http(
    stack: Stack,
    browser: aiohttp.ClientSession,
    ws_app: WebSocketApp,
    path: str,
    status: int,
    body: bytes,
) -> None:
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": CLIENT_KEY,
        "Sec-WebSocket-Version": "13",
    }
    async with browser.get(
        stack.url.with_path(path), headers=headers, allow_redirects=False
    ) as answer:
        got = await answer.read()

    assert (answer.status, got) == (status, body)
    assert "Sec-WebSocket-Accept" not in answer.headers
    assert answer.headers.get("Upgrade") is None
    if path == "/refuse":
        assert answer.headers["X-App-Reason"] == "members only"
    if path == "/redirect":  # passed on, not followed
        assert answer.headers["Location"] == "/ws/echo"
        assert len(ws_app.handshakes) == 1
    assert stack.app[RELOADABLE].open_websockets == 0


async def test_refused_upgrade_never_becomes_a_tunnel(
    stack: Stack, browser: aiohttp.ClientSession, ws_app: WebSocketApp
) -> None:
    headers = {"Cookie": cookie_header(browser, stack)}
    reader, writer, head = await raw_upgrade(stack, "/refuse", headers)
    assert head.startswith(b"HTTP/1.1 403 ")
    length = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    assert await reader.readexactly(length) == b"not for you"

    writer.write(masked_frame(0x1, b"smuggled"))  # read as HTTP, not relayed
    async with asyncio.timeout(5):
        after = await reader.read(4096)
    writer.close()
    await writer.wait_closed()

    assert after == b"" or after.split(b" ", 2)[1] == b"400"
    assert len(ws_app.handshakes) == 1
    assert ws_app.seen == []


async def test_unreachable_upstream_gives_502_and_no_handshake(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(upstream_url=f"http://127.0.0.1:{free_port()}")
    async with stack.browser() as browser:
        await stack.login(browser, "alice")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect(browser, stack)

    assert refused.value.status == 502
    assert stack.app[RELOADABLE].open_websockets == 0


async def test_slow_upstream_handshake_gives_504(
    make_stack: StackFactory, ws_server: TestServer, ws_app: WebSocketApp
) -> None:
    stack = await make_stack(
        upstream_url=upstream_url(ws_server), upstream_timeout="0.3"
    )
    async with stack.browser() as browser:
        await stack.login(browser, "alice")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect(browser, stack, "/slow")
    ws_app.release.set()

    assert refused.value.status == 504
    assert stack.app[RELOADABLE].open_websockets == 0


async def test_malformed_client_handshake_gets_400_and_never_reaches_app(
    stack: Stack, browser: aiohttp.ClientSession, ws_app: WebSocketApp
) -> None:
    headers = {"Cookie": cookie_header(browser, stack), "Sec-WebSocket-Key": "short"}
    _, writer, head = await raw_upgrade(stack, "/ws/echo", headers)
    writer.close()
    await writer.wait_closed()

    assert head.startswith(b"HTTP/1.1 400 ")
    assert ws_app.handshakes == []


# Counting and upstream kinds


async def test_open_websockets_are_counted(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    relay = stack.app[RELOADABLE]
    first = await connect(browser, stack)
    second = await connect(browser, stack)
    assert relay.open_websockets == 2

    await first.close()
    await open_count_reaches(stack, 1)
    await second.send_str("cmd:close:1000:")
    await receive(second)
    await second.close()

    await settled(stack)


async def test_gateway_shutdown_closes_both_ends_with_going_away(
    stack: Stack, browser: aiohttp.ClientSession, ws_app: WebSocketApp
) -> None:
    relay = stack.app[RELOADABLE]
    assert relay.close_websockets in stack.app.on_shutdown
    ws = await connect(browser, stack)

    await relay.close_websockets(stack.app)

    closing = await receive(ws)
    assert (closing.type, closing.data) == (WSMsgType.CLOSE, 1001)
    await ws.close()
    await asyncio.wait_for(ws_app.finished.wait(), 5)
    assert ws_app.seen[-1] == Seen(WSMsgType.CLOSE, 1001, "")
    await settled(stack)


async def test_idle_websocket_outlives_the_upstream_timeout(
    make_stack: StackFactory, ws_server: TestServer
) -> None:
    stack = await make_stack(
        upstream_url=upstream_url(ws_server), upstream_timeout="0.3"
    )
    async with stack.browser() as browser:
        await stack.login(browser, "alice")
        ws = await connect(browser, stack)

        await asyncio.sleep(1.0)  # no heartbeat, no receive timeout at the gateway

        await ws.send_str("still here")
        assert (await receive(ws)).data == "still here"
        await ws.close()
    await settled(stack)


async def test_unix_socket_upstream(
    make_stack: StackFactory, ws_app: WebSocketApp
) -> None:
    directory = tempfile.mkdtemp(prefix="gw", dir="/tmp")
    path = f"{directory}/app.sock"
    runner = web.AppRunner(ws_app.app())
    await runner.setup()
    try:
        await web.UnixSite(runner, path).start()
        stack = await make_stack(upstream_url=f"unix://{path}")
        async with stack.browser() as browser:
            await stack.login(browser, "alice")
            ws = await connect(browser, stack)
            await ws.send_str("over a socket")
            assert (await receive(ws)).data == "over a socket"
            await ws.close()
        await settled(stack)
    finally:
        await runner.cleanup()
        shutil.rmtree(directory)

    assert ws_app.header("X-Reddit-User") == ["alice"]


async def test_a_websocket_outliving_sign_out_is_closed(
    stack: Stack,
    browser: aiohttp.ClientSession,
    ws_app: WebSocketApp,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gateway.websocket.SESSION_CHECK_EVERY", 0.1)
    ws = await connect(browser, stack)
    await ws.send_str("before")
    assert (await receive(ws)).data == "before"

    async with browser.post(stack.url / "oauth2/sign_out", allow_redirects=False):
        pass
    closing = await receive(ws)

    assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
    await settled(stack)


async def test_a_refreshed_session_reaches_the_browser_on_the_upgrade(
    make_stack: StackFactory, ws_server: TestServer, ws_app: WebSocketApp
) -> None:
    stack = await make_stack(
        upstream_url=upstream_url(ws_server), reddit_duration="permanent"
    )
    stack.reddit.expires_in = 3600
    async with stack.browser() as browser:
        await stack.login(browser, "alice")
        stack.clock.advance(3600)

        ws = await connect(browser, stack)
        renewed = ws._response.headers.getall("Set-Cookie", [])
        await ws.close()
    await settled(stack)

    assert any(cookie.startswith("_reddit_gateway=") for cookie in renewed)


@pytest.mark.parametrize(
    "path", ["/ws/../ws/echo", "/ws/%2e%2e/ws/echo", "/ws/..;/echo"]
)
async def test_path_traversal_on_a_websocket_upgrade_is_refused(
    stack: Stack, browser: aiohttp.ClientSession, ws_app: WebSocketApp, path: str
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await browser.ws_connect(
            URL(str(stack.url) + path, encoded=True), origin=str(stack.url)
        )

    assert refused.value.status == 400
    assert ws_app.handshakes == []
