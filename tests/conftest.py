"""Shared fixtures: a mock reddit, a recording upstream and the gateway, all real
servers on loopback, plus a browser-like client that can sign in."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.app import build_app, server_options
from gateway.config import Config, load_config
from gateway.mock_reddit import MockReddit

CLIENT_ID = "test-client-id"
CLIENT_SECRET = "test-client-secret-not-real"
SESSION_SECRET = "test-session-secret-0123456789abcdef"


class FakeClock:
    """A settable clock shared by the gateway and the mock reddit."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Received:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body_sha256: str
    body_length: int

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class RecordingUpstream:
    """An upstream app that records exactly what it received and echoes it."""

    received: list[Received] = field(default_factory=list)
    hold: asyncio.Event | None = None  # when set, answers wait for it

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/set-cookies", self._set_cookies)
        app.router.add_get("/stream", self._stream)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        return app

    @property
    def last(self) -> Received:
        return self.received[-1]

    async def _echo(self, request: web.Request) -> web.Response:
        if self.hold is not None:
            await self.hold.wait()
        digest = hashlib.sha256()
        length = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            length += len(chunk)
        got = Received(
            request.method,
            request.raw_path,
            raw_headers(request),
            digest.hexdigest(),
            length,
        )
        self.received.append(got)
        return web.json_response(
            {
                "user": request.headers.get("X-Reddit-User"),
                "path": request.raw_path,
                "length": length,
                "sha256": got.body_sha256,
            }
        )

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        """A chunked body written in pieces, like a download or an event stream."""
        response = web.StreamResponse()
        await response.prepare(request)
        for index in range(3):
            await response.write(b"chunk %d\n" % index)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def _set_cookies(self, request: web.Request) -> web.Response:
        response = web.Response(text="cookies")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
        return response


def raw_headers(request: web.BaseRequest) -> list[tuple[str, str]]:
    """The headers exactly as they arrived: names in their case, in order."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]


@dataclass
class Stack:
    """The three servers of a test, and how to reach them."""

    url: URL  # the gateway's public URL
    reddit: MockReddit
    upstream: RecordingUpstream
    config: Config
    clock: FakeClock
    app: web.Application

    def browser(self) -> aiohttp.ClientSession:
        """A cookie-keeping client, like one browser profile."""
        return aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            headers={"Accept": "text/html"},
        )

    async def login(
        self,
        browser: aiohttp.ClientSession,
        username: str,
        rd: str = "/",
        *,
        allow: bool = True,
    ) -> aiohttp.ClientResponse:
        """Sign in through the mock consent page; returns the callback's answer."""
        async with browser.get(
            self.url / "oauth2/start", params={"rd": rd}, allow_redirects=False
        ) as start:
            assert start.status == 302, await start.text()
            authorize = URL(start.headers["Location"])
        callback = await self.consent(browser, authorize, username, allow=allow)
        response = await browser.get(callback, allow_redirects=False)
        await response.read()
        return response

    async def consent(
        self,
        browser: aiohttp.ClientSession,
        authorize: URL,
        username: str,
        *,
        allow: bool = True,
    ) -> URL:
        """Answer the mock consent page; returns the callback URL reddit gave."""
        form = dict(authorize.query)
        form["username"] = username
        form["authorize"] = "Allow" if allow else "Decline"
        async with browser.post(
            authorize.with_query(None), data=form, allow_redirects=False
        ) as answer:
            assert answer.status == 302, await answer.text()
            return URL(answer.headers["Location"])


# Below Linux's ephemeral range (32768-60999), where the tests' own outgoing
# connections take their local ports: a port picked here is not taken by one
# of them between the pick and the server's bind.
PICKED_PORTS = range(20000, 32000)


def free_port() -> int:
    """A free loopback port for a server that must know its URL before it starts."""
    for _ in range(200):
        port = random.choice(PICKED_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-31999")


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_stack(aiohttp_server: Any) -> AsyncIterator[StackFactory]:
    """Start mock reddit + upstream + gateway; keyword args are GATEWAY_* overrides."""

    async def make(config_file: str | None = None, **overrides: str) -> Stack:
        clock = FakeClock()
        reddit = MockReddit(clock=clock)
        reddit_server: TestServer = await aiohttp_server(reddit.app())
        upstream = RecordingUpstream()
        upstream_server: TestServer = await aiohttp_server(upstream.app())

        reddit_url = str(reddit_server.make_url("")).rstrip("/")
        env = {
            "GATEWAY_UPSTREAM_URL": str(upstream_server.make_url("")).rstrip("/"),
            "GATEWAY_REDDIT_CLIENT_ID": CLIENT_ID,
            "GATEWAY_REDDIT_CLIENT_SECRET": CLIENT_SECRET,
            "GATEWAY_REDDIT_USER_AGENT": "test:reddit-gateway-tests:v1 (by /u/tests)",
            "GATEWAY_REDDIT_AUTHORIZE_URL": f"{reddit_url}/api/v1/authorize",
            "GATEWAY_REDDIT_TOKEN_URL": f"{reddit_url}/api/v1/access_token",
            "GATEWAY_REDDIT_REVOKE_URL": f"{reddit_url}/api/v1/revoke_token",
            "GATEWAY_REDDIT_API_URL": reddit_url,
            "GATEWAY_REDDIT_TIMEOUT": "2",
            "GATEWAY_SESSION_SECRET": SESSION_SECRET,
            "GATEWAY_SESSION_COOKIE_SECURE": "false",
        }
        env.update({f"GATEWAY_{k.upper()}": v for k, v in overrides.items()})

        # The gateway must know its URL before it listens; should the port be
        # taken between the pick and the bind, pick again.
        for _ in range(5):
            port = free_port()
            public = f"http://127.0.0.1:{port}"  # unless a test names another
            config = load_config(
                config_file, {"GATEWAY_SERVER_PUBLIC_URL": public, **env}
            )
            app = await build_app(config, clock=clock)
            server = TestServer(app, port=port)
            try:
                await server.start_server(**server_options())
            except OSError:
                await server.close()
                continue
            gateways.append(server)
            reddit.add_client(CLIENT_ID, CLIENT_SECRET, config.server.redirect_url)
            return Stack(URL(public), reddit, upstream, config, clock, app)
        raise RuntimeError("no port for the gateway")

    gateways: list[TestServer] = []
    yield make
    for server in gateways:
        await server.close()


class RedisServer:
    """A throwaway redis-server on loopback that keeps nothing on disk."""

    def __init__(self, executable: str, directory: pathlib.Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._command = [
            executable,
            *("--bind", "127.0.0.1", "--port", str(self.port)),
            *("--save", "", "--appendonly", "no", "--dir", str(directory)),
        ]
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (again, on the same port) and wait until it answers."""
        self._process = subprocess.Popen(
            self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self._command}")
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 10 s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2)


def redis_server_executable() -> str:
    """redis-server's path; without it, a skip (or in CI a failure) naming the fix."""
    executable = shutil.which("redis-server")
    if executable is None:
        message = (
            "redis-server is not installed; install Debian's package: "
            "apt-get install redis-server"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return executable


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole run; `redis_url` empties it for each test."""
    server = RedisServer(redis_server_executable(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url
