"""A real `serve` process through its life: SIGTERM drains, SIGHUP reloads, and
`server.workers` processes share the port."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import pathlib
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from yarl import URL

from gateway.mock_reddit import MockReddit
from tests.conftest import CLIENT_ID, CLIENT_SECRET, SESSION_SECRET, free_port
from tests.test_serve_functional import wait_until_serving

CONFIG = """
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
workers = {workers}
shutdown_timeout = {shutdown_timeout}

[upstream]
url = "{upstream}"

[reddit]
client_id = "{client_id}"
client_secret = "{client_secret}"
user_agent = "test:reddit-gateway-tests:v1 (by /u/tests)"
authorize_url = "{reddit}/api/v1/authorize"
token_url = "{reddit}/api/v1/access_token"
revoke_url = "{reddit}/api/v1/revoke_token"
api_url = "{reddit}"

[session]
cookie_secure = false
max_age = {max_age}

[access]
users = {users}
{extra_access}

[[access.routes]]
prefix = "/public"
public = true

[log]
format = "json"
"""


@dataclass
class App:
    """An upstream app that names itself, answers /slow late, and echoes websockets."""

    name: str
    slow_seconds: float = 1.0
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends /slow now

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/public/slow", self._slow)
        app.router.add_get("/ws", self._echo_websocket)
        app.router.add_route("*", "/{tail:.*}", self._hello)
        return app

    async def _hello(self, request: web.Request) -> web.Response:
        user = request.headers.get("X-Reddit-User")
        return web.json_response({"app": self.name, "user": user})

    async def _slow(self, request: web.Request) -> web.Response:
        self.slow_started.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.release.wait(), self.slow_seconds)
        return web.json_response({"app": self.name, "slow": True})

    async def _echo_websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(message.data)
        return ws


@dataclass
class Gateway:
    """`python -m gateway serve` as a child process of the test."""

    url: URL
    config_path: pathlib.Path
    log_path: pathlib.Path
    process: asyncio.subprocess.Process
    settings: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def write_config(self, **changes: Any) -> None:
        self.settings.update(changes)
        self.config_path.write_text(CONFIG.format(**self.settings))

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def log_shows(self, text: str, count: int = 1) -> None:
        async with asyncio.timeout(10):
            while self.log().count(text) < count:  # noqa: ASYNC110 (a file: poll it)
                await asyncio.sleep(0.02)

    async def exit_status(self, within: float) -> int:
        return await asyncio.wait_for(self.process.wait(), within)


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
def reddit() -> MockReddit:
    return MockReddit()


@pytest.fixture
async def start_gateway(
    aiohttp_server: Any, tmp_path: pathlib.Path, reddit: MockReddit
) -> AsyncIterator[GatewayFactory]:
    """Start a gateway in front of an App; keyword arguments fill in CONFIG."""
    reddit_url = str((await aiohttp_server(reddit.app())).make_url("")).rstrip("/")
    started: list[Gateway] = []

    async def start(upstream: App, **settings: Any) -> Gateway:
        server = await aiohttp_server(upstream.app())
        values = {
            "port": free_port(),
            "workers": 1,
            "shutdown_timeout": 10,
            "upstream": str(server.make_url("")).rstrip("/"),
            "reddit": reddit_url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "max_age": 604800,
            "users": '["Alice"]',
            "extra_access": "",
            **settings,
        }
        port = values["port"]
        reddit.add_client(
            CLIENT_ID, CLIENT_SECRET, f"http://127.0.0.1:{port}/oauth2/callback"
        )
        config_path = tmp_path / f"gateway-{port}.toml"
        config_path.write_text(CONFIG.format(**values))
        log_path = tmp_path / f"gateway-{port}.log"
        env = {**os.environ, "GATEWAY_SESSION_SECRET": SESSION_SECRET}
        with open(log_path, "wb") as log:
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "gateway", "serve", "--config", config_path),
                env=env,
                stdout=log,
                stderr=log,
            )
        url = URL(f"http://127.0.0.1:{port}")
        gateway = Gateway(url, config_path, log_path, process, values)
        started.append(gateway)
        await wait_until_serving(url, process)
        return gateway

    yield start

    for gateway in started:
        stragglers = worker_pids(gateway.pid)
        if gateway.process.returncode is None:
            gateway.process.kill()
            await gateway.process.wait()
        for pid in stragglers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def worker_pids(parent: int) -> set[int]:
    """The running child processes of `parent`, from /proc."""
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after ")".
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == parent and state != "Z":
            children.add(int(entry))
    return children


def is_running(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def read_text(path: pathlib.Path) -> str:
    return path.read_text()


def serving_pid(client_port: int, server_port: int, candidates: set[int]) -> int:
    """Which of `candidates` holds the server end of the connection from
    client_port: /proc/net/tcp gives the socket's inode, /proc/PID/fd its owner."""
    inode = ""
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        remote_port = int(fields[2].split(":")[1], 16)
        if (local_port, remote_port) == (server_port, client_port):
            inode = fields[9]
    assert inode, "no such connection"
    for pid in candidates:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker holds socket {inode}")


def browser() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"Accept": "text/html"}
    )


async def sign_in(
    gateway: Gateway,
    starts: aiohttp.ClientSession,
    finishes: aiohttp.ClientSession | None = None,
    user: str = "alice",
    rd: str = "/reports",
) -> None:
    """A login begun by `starts` and finished by `finishes`, through mock reddit."""
    async with starts.get(
        gateway.url / "oauth2/start", params={"rd": rd}, allow_redirects=False
    ) as started:
        assert started.status == 302
        authorize = URL(started.headers["Location"])
    form = {**authorize.query, "username": user, "authorize": "Allow"}
    async with aiohttp.ClientSession() as reddit_side:
        async with reddit_side.post(
            authorize.with_query(None), data=form, allow_redirects=False
        ) as consent:
            callback = URL(consent.headers["Location"])

    async with (finishes or starts).get(callback, allow_redirects=False) as finished:
        assert finished.status == 302, await finished.text()
        assert finished.headers["Location"] == f"{rd}#"


async def test_sigterm_lets_requests_in_flight_finish_then_exits(
    start_gateway: GatewayFactory,
) -> None:
    app = App("a", slow_seconds=1.0)
    gateway = await start_gateway(app, shutdown_timeout=10)
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert f"1 worker, {loop} event loop" in gateway.log()
    async with browser() as alice:
        await sign_in(gateway, alice)
        ws = await alice.ws_connect(gateway.url / "ws", origin=str(gateway.url))
        await ws.send_str("hello")
        assert (await ws.receive()).data == "hello"
        slow = asyncio.create_task(alice.get(gateway.url / "slow"))
        await asyncio.wait_for(app.slow_started.wait(), 5)

        gateway.signal(signal.SIGTERM)
        stopped_at = time.monotonic()

        closing = await asyncio.wait_for(ws.receive(), 5)
        assert (closing.type, closing.data) == (WSMsgType.CLOSE, 1001)
        await ws.close()
        async with asyncio.timeout(5):
            while True:  # the listening socket closes at once
                try:
                    _, writer = await asyncio.open_connection(
                        "127.0.0.1", gateway.url.port
                    )
                except ConnectionRefusedError:
                    break
                writer.close()
                await asyncio.sleep(0.01)
        assert not slow.done()
        async with await slow as answer:
            assert answer.status == 200
            assert await answer.json() == {"app": "a", "slow": True}

    assert await gateway.exit_status(within=10) == 0
    assert time.monotonic() - stopped_at < 10


async def test_sigterm_cuts_off_a_request_slower_than_shutdown_timeout(
    start_gateway: GatewayFactory,
) -> None:
    app = App("a", slow_seconds=30.0)
    gateway = await start_gateway(app, users="[]", shutdown_timeout=1)
    async with browser() as anyone:
        slow = asyncio.create_task(anyone.get(gateway.url / "public/slow"))
        await asyncio.wait_for(app.slow_started.wait(), 5)

        gateway.signal(signal.SIGTERM)
        stopped_at = time.monotonic()

        assert await gateway.exit_status(within=5) == 0
        assert time.monotonic() - stopped_at < 4
        with pytest.raises(aiohttp.ClientError):
            await slow
    app.release.set()


async def test_sighup_reloads_access_rules_and_upstream_without_dropping_requests(
    start_gateway: GatewayFactory, aiohttp_server: Any
) -> None:
    old_app, new_app = App("old"), App("new")
    new_server = await aiohttp_server(new_app.app())
    gateway = await start_gateway(old_app)
    async with browser() as alice:
        await sign_in(gateway, alice)
        slow = asyncio.create_task(alice.get(gateway.url / "slow"))
        await asyncio.wait_for(old_app.slow_started.wait(), 5)

        gateway.write_config(
            users='["Bob"]',
            upstream=str(new_server.make_url("")).rstrip("/"),
            max_age=3600,
        )
        gateway.signal(signal.SIGHUP)
        await gateway.log_shows("config_reloaded")

        async with alice.get(gateway.url / "reports") as refused:
            assert refused.status == 403
        async with alice.get(gateway.url / "public/page") as public:
            assert await public.json() == {"app": "new", "user": None}
        async with await slow as answer:
            assert answer.status == 200
            assert await answer.json() == {"app": "old", "slow": True}
        assert "config_needs_restart session.max_age changed" in gateway.log()

        reloaded = gateway.config_path.read_text()
        broken = {
            "access.userz: unknown key": reloaded.replace("users =", "userz ="),
            "--config: ": reloaded.replace("[access]", "[access"),
        }
        for error, text in broken.items():
            gateway.config_path.write_text(text)
            gateway.signal(signal.SIGHUP)
            await gateway.log_shows(f"config_reload_refused {error}")

            async with alice.get(gateway.url / "reports") as still_refused:
                assert still_refused.status == 403
            async with alice.get(gateway.url / "public/page") as public:
                assert await public.json() == {"app": "new", "user": None}
    assert gateway.log().count("config_reloaded") == 1
    assert "is not valid TOML" in gateway.log()


async def test_sighup_refuses_rules_that_need_a_scope_not_asked_for(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway(App("a"))

    gateway.write_config(extra_access='moderators_of = ["demo"]')
    gateway.signal(signal.SIGHUP)

    await gateway.log_shows(
        "config_reload_refused access.moderators_of: needs reddit's mysubreddits"
    )
    async with browser() as alice:
        await sign_in(gateway, alice)
        async with alice.get(gateway.url / "reports") as page:
            assert await page.json() == {"app": "a", "user": "alice"}


async def client_of_worker(
    gateway: Gateway, jar: aiohttp.CookieJar, wanted: int, workers: set[int]
) -> aiohttp.ClientSession:
    """A client whose one kept-alive connection is served by worker `wanted`."""
    port = gateway.url.port
    assert port is not None
    for _ in range(100):
        own_port = free_port()
        client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, local_addr=("127.0.0.1", own_port)),
            cookie_jar=jar,
            headers={"Accept": "text/html"},
        )
        try:
            async with client.get(gateway.url / "oauth2/ping") as pong:
                assert pong.status == 200
            if serving_pid(own_port, port, workers) == wanted:
                return client
        except BaseException:
            await client.close()
            raise
        await client.close()
    raise AssertionError(f"worker {wanted} never answered")


async def test_workers_share_the_port_and_stop_together(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway(App("a"), workers=2)
    await gateway.log_shows("serving on", count=2)
    workers = worker_pids(gateway.pid)
    assert len(workers) == 2
    first, second = sorted(workers)
    jar = aiohttp.CookieJar(unsafe=True)
    on_first = await client_of_worker(gateway, jar, first, workers)
    on_second = await client_of_worker(gateway, jar, second, workers)

    try:
        # A login begun on one worker finishes on the other, both ways round.
        for number in range(6):
            starts, finishes = (on_first, on_second)[:: 1 if number % 2 else -1]
            await sign_in(gateway, starts, finishes, rd=f"/page{number}")
            async with starts.get(gateway.url / f"page{number}") as page:
                assert await page.json() == {"app": "a", "user": "alice"}

        gateway.write_config(users='["Bob"]')
        gateway.signal(signal.SIGHUP)
        await gateway.log_shows("config_reloaded", count=2)
        for client in (on_first, on_second):
            async with client.get(gateway.url / "page0") as refused:
                assert refused.status == 403
    finally:
        await on_first.close()
        await on_second.close()

    os.kill(first, signal.SIGKILL)
    await gateway.log_shows(f"worker {first} exited (-9); starting another")
    await gateway.log_shows("serving on", count=3)
    assert len(worker_pids(gateway.pid) - {first}) == 2

    workers = worker_pids(gateway.pid)
    gateway.signal(signal.SIGTERM)
    assert await gateway.exit_status(within=10) == 0
    assert not any(map(is_running, workers))


async def test_workers_exit_non_zero_when_one_cannot_start(
    tmp_path: pathlib.Path, start_gateway: GatewayFactory
) -> None:
    with socket.socket() as taken:  # bound without SO_REUSEPORT, not listening
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]

        with pytest.raises(AssertionError, match="exited during start-up"):
            await start_gateway(App("a"), workers=2, port=port)

    log = read_text(tmp_path / f"gateway-{port}.log")
    assert "cannot listen on" in log
    assert "failed to start" in log
