"""Prometheus metrics: a flow through the real gateway moves the counters that a
scrape of the metrics listener shows; off unless metrics.listen is set."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import pathlib
import re
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from gateway.config import load_config
from gateway.log import (
    UPSTREAM_SECONDS,
    AccessLogger,
    access_log,
    auth_event,
    auth_log,
    setup_logging,
)
from gateway.metrics import METRICS, Metrics, sum_expositions
from gateway.mock_reddit import MockReddit
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    SESSION_SECRET,
    StackFactory,
    free_port,
)
from tests.test_lifecycle_functional import serving_pid, worker_pids
from tests.test_serve_functional import wait_until_serving

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# The gauges' sources before any traffic: reddit has not said, nothing is open.
IDLE: dict[str, Any] = {
    "ratelimit_remaining": lambda: None,
    "open_websockets": lambda: 0,
}


class Upstream:
    """An app that answers any path with "ok" and echoes on /ws."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self._echo)
        app.router.add_route("*", "/{tail:.*}", self._ok)
        return app

    async def _ok(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    async def _echo(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(message.data)
        return ws


async def scrape(url: URL) -> Samples:
    async with aiohttp.ClientSession() as client, client.get(url) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_a_flow_moves_the_counters_a_scrape_shows(
    make_stack: StackFactory, aiohttp_server: Any
) -> None:
    upstream: TestServer = await aiohttp_server(Upstream().app())
    port = free_port()
    stack = await make_stack(
        metrics_listen=f"127.0.0.1:{port}",
        server_workers="1",
        access_users="alice",
        upstream_url=str(upstream.make_url("")).rstrip("/"),
    )
    metrics_url = URL(f"http://127.0.0.1:{port}/metrics")
    before = await scrape(metrics_url)

    async with stack.browser() as alice, stack.browser() as bob:
        assert (await stack.login(alice, "alice")).status == 302
        assert (await stack.login(bob, "bob")).status == 403
        async with bob.get(stack.url / "page") as refused:
            assert refused.status == 403

        async with alice.get(stack.url / "page") as page:
            assert page.status == 200
        async with alice.post(stack.url / "form", data={"a": "1"}) as form:
            assert form.status == 200
        spoof = {"X-Reddit-User": "mallory", "X-Reddit-Admin": "1"}
        async with alice.get(stack.url / "page", headers=spoof) as spoofed:
            assert spoofed.status == 200

        async with alice.ws_connect(stack.url / "ws") as ws:
            await ws.send_str("hello")
            assert (await ws.receive()).data == "hello"
            during = await scrape(metrics_url)

        stack.reddit.fail_next("/api/v1/access_token", status=401)
        async with stack.browser() as carol:
            assert (await stack.login(carol, "carol")).status == 502
    after = await scrape(metrics_url)
    again = await scrape(metrics_url)

    requests = "reddit_gateway_requests_total"
    assert value(before, requests, method="GET", status="2xx") == 0
    assert value(after, requests, method="GET", status="3xx") == 4  # 3 starts, 1 in
    assert value(after, requests, method="GET", status="4xx") == 2  # bob, twice
    assert value(after, requests, method="GET", status="5xx") == 1  # carol
    assert value(after, requests, method="POST", status="2xx") == 1
    # The pages and the form; not the websocket: aiohttp's test server cancels a
    # handler when its client leaves, so a websocket never reaches the access log
    # here (the served gateway's test below counts one).
    assert value(after, "reddit_gateway_upstream_response_seconds_count") == 3
    assert value(after, "reddit_gateway_upstream_response_seconds_sum") > 0

    logins = "reddit_gateway_logins_total"
    assert value(after, logins, outcome="ok") == 1
    assert value(after, logins, outcome="denied") == 1
    assert value(after, logins, outcome="failed") == 1
    assert value(after, "reddit_gateway_refusals_total", rule="access.users") == 2
    assert value(after, "reddit_gateway_spoofed_headers_total") == 2

    calls = "reddit_gateway_reddit_calls_total"
    assert value(after, calls, endpoint="token", status="200") == 2
    assert value(after, calls, endpoint="token", status="401") == 1
    assert value(after, calls, endpoint="me", status="200") == 2
    assert 0 < value(after, "reddit_gateway_reddit_ratelimit_remaining") < 1000
    assert "reddit_gateway_reddit_ratelimit_remaining" not in {n for n, _ in before}

    assert value(during, "reddit_gateway_websockets_open") == 1
    assert value(after, "reddit_gateway_websockets_open") == 0

    assert again == after  # scrapes are neither logged nor counted


SERVED = """
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
workers = {workers}

[upstream]
url = "{upstream}"

[reddit]
client_id = "{client_id}"
user_agent = "test:reddit-gateway-tests:v1 (by /u/tests)"
authorize_url = "{reddit}/api/v1/authorize"
token_url = "{reddit}/api/v1/access_token"
revoke_url = "{reddit}/api/v1/revoke_token"
api_url = "{reddit}"

[session]
cookie_secure = false

[access]
users = ["alice"]

[log]
level = "warning"

[metrics]
listen = "127.0.0.1:{metrics_port}"
"""


async def test_a_served_gateway_shows_its_counters_at_metrics_listen(
    aiohttp_server: Any, tmp_path: pathlib.Path
) -> None:
    reddit = MockReddit()
    reddit_url = str((await aiohttp_server(reddit.app())).make_url("")).rstrip("/")
    upstream = await aiohttp_server(Upstream().app())
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        SERVED.format(
            port=port,
            workers=1,
            metrics_port=metrics_port,
            upstream=str(upstream.make_url("")).rstrip("/"),
            reddit=reddit_url,
            client_id=CLIENT_ID,
        )
    )
    url = URL(f"http://127.0.0.1:{port}")
    reddit.add_client(CLIENT_ID, CLIENT_SECRET, str(url / "oauth2/callback"))
    env = {
        **os.environ,
        "GATEWAY_SESSION_SECRET": SESSION_SECRET,
        "GATEWAY_REDDIT_CLIENT_SECRET": CLIENT_SECRET,
    }
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "gateway", "serve", "--config", str(config)),
            env=env,
            stdout=log,
            stderr=log,
        )
    metrics_url = URL(f"http://127.0.0.1:{metrics_port}/metrics")

    try:
        await wait_until_serving(url, process)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as alice:
            assert await sign_in(alice, url, "alice") == 302
            async with alice.get(url / "page") as page:
                assert page.status == 200
            async with alice.ws_connect(url / "ws") as ws:
                await ws.send_str("hello")
                assert (await ws.receive()).data == "hello"
        async with aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True)
        ) as bob:
            assert await sign_in(bob, url, "bob") == 403
        samples = await scrape(metrics_url)
        for _ in range(50):  # the websocket's line is written once it has closed
            if value(
                samples, "reddit_gateway_requests_total", method="GET", status="1xx"
            ):
                break
            await asyncio.sleep(0.1)
            samples = await scrape(metrics_url)
    finally:
        process.terminate()
        await process.wait()

    assert value(samples, "reddit_gateway_logins_total", outcome="ok") == 1
    assert value(samples, "reddit_gateway_logins_total", outcome="denied") == 1
    assert value(samples, "reddit_gateway_refusals_total", rule="access.users") == 1
    requests = "reddit_gateway_requests_total"
    assert value(samples, requests, method="GET", status="2xx") == 2  # ping, page
    assert value(samples, requests, method="GET", status="1xx") == 1
    assert value(samples, "reddit_gateway_upstream_response_seconds_count") == 2
    calls = "reddit_gateway_reddit_calls_total"
    assert value(samples, calls, endpoint="token", status="200") == 2
    assert value(samples, "reddit_gateway_websockets_open") == 0
    logged = log_path.read_text()
    assert "login_ok" not in logged and '"GET /page"' not in logged  # level warning


async def sign_in(browser: aiohttp.ClientSession, url: URL, username: str) -> int:
    """Through the mock's consent page; the status of the gateway's callback."""
    async with browser.get(url / "oauth2/start", allow_redirects=False) as start:
        authorize = URL(start.headers["Location"])
    form = {**authorize.query, "username": username, "authorize": "Allow"}
    async with browser.post(
        authorize.with_query(None), data=form, allow_redirects=False
    ) as consent:
        callback = URL(consent.headers["Location"])
    async with browser.get(callback, allow_redirects=False) as finished:
        return finished.status


async def test_workers_counts_are_summed_at_one_listener(
    aiohttp_server: Any, tmp_path: pathlib.Path
) -> None:
    reddit = MockReddit()
    reddit_url = str((await aiohttp_server(reddit.app())).make_url("")).rstrip("/")
    upstream = await aiohttp_server(Upstream().app())
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        SERVED.format(
            port=port,
            workers=2,
            metrics_port=metrics_port,
            upstream=str(upstream.make_url("")).rstrip("/"),
            reddit=reddit_url,
            client_id=CLIENT_ID,
        )
    )
    url = URL(f"http://127.0.0.1:{port}")
    env = {
        **os.environ,
        "GATEWAY_SESSION_SECRET": SESSION_SECRET,
        "GATEWAY_REDDIT_CLIENT_SECRET": CLIENT_SECRET,
    }
    with open(tmp_path / "gateway.log", "wb") as log:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "gateway", "serve", "--config", str(config)),
            env=env,
            stdout=log,
            stderr=log,
        )
    metrics_url = URL(f"http://127.0.0.1:{metrics_port}/metrics")
    workers: set[int] = set()
    try:
        await wait_until_serving(url, process)  # one ping, on either worker
        sent = 1
        async with asyncio.timeout(10):
            while len(workers := worker_pids(process.pid)) < 2:  # noqa: ASYNC110 (/proc)
                await asyncio.sleep(0.02)
        served: dict[int, int] = {}
        while sent < 20 or len(served) < 2:
            assert sent < 400, f"one worker served every request: {served}"
            own_port = free_port()
            connector = aiohttp.TCPConnector(local_addr=("127.0.0.1", own_port))
            async with (
                aiohttp.ClientSession(connector=connector) as client,
                client.get(url / "oauth2/ping") as pong,
            ):
                assert pong.status == 200
                pid = serving_pid(own_port, port, workers)
            served[pid] = served.get(pid, 0) + 1
            sent += 1

        requests = "reddit_gateway_requests_total"
        async with asyncio.timeout(10):
            while True:  # a request's line is written once it has been answered
                samples = await scrape(metrics_url)
                if value(samples, requests, method="GET", status="2xx") >= sent:
                    break
                await asyncio.sleep(0.05)
        assert value(samples, requests, method="GET", status="2xx") == sent
        assert value(samples, "reddit_gateway_websockets_open") == 0
        assert value(samples, "reddit_gateway_logins_total", outcome="ok") == 0
    finally:
        process.terminate()
        assert await process.wait() == 0
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_sums_take_the_least_of_reddits_budget_and_of_created() -> None:
    def worker(requests: int, remaining: float, created: float) -> str:
        return (
            "# TYPE reddit_gateway_requests counter\n"
            f'reddit_gateway_requests_total{{method="GET",status="2xx"}} {requests}\n'
            f'reddit_gateway_requests_created{{method="GET",status="2xx"}} {created}\n'
            "# TYPE reddit_gateway_reddit_ratelimit_remaining gauge\n"
            f"reddit_gateway_reddit_ratelimit_remaining {remaining}\n"
            "# TYPE reddit_gateway_websockets_open gauge\n"
            f"reddit_gateway_websockets_open {requests}\n"
        )

    summed = sum_expositions([worker(3, 500, 20.0), worker(4, 480, 10.0)])
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for sample in (s for family in summed for s in family.samples)
    }
    get = {"method": "GET", "status": "2xx"}
    assert value(samples, "reddit_gateway_requests_total", **get) == 7
    assert value(samples, "reddit_gateway_requests_created", **get) == 10.0
    assert value(samples, "reddit_gateway_reddit_ratelimit_remaining") == 480
    assert value(samples, "reddit_gateway_websockets_open") == 7


def test_metrics_listen_is_allowed_with_several_workers() -> None:
    env = {
        "GATEWAY_SERVER_PUBLIC_URL": "https://app.example.com",
        "GATEWAY_SERVER_WORKERS": "2",
        "GATEWAY_REDDIT_CLIENT_ID": CLIENT_ID,
        "GATEWAY_REDDIT_CLIENT_SECRET": CLIENT_SECRET,
        "GATEWAY_REDDIT_USER_AGENT": "test:reddit-gateway-tests:v1 (by /u/tests)",
        "GATEWAY_SESSION_SECRET": SESSION_SECRET,
        "GATEWAY_METRICS_LISTEN": "127.0.0.1:9180",
    }
    config = load_config(None, env)
    assert (config.server.workers, config.metrics.listen) == (2, "127.0.0.1:9180")


async def test_metrics_are_off_by_default(make_stack: StackFactory) -> None:
    stack = await make_stack()

    assert stack.config.metrics.listen == ""
    assert METRICS not in stack.app
    assert not access_log.handlers and not auth_log.handlers


async def test_the_listener_stops_with_the_app(aiohttp_server: Any) -> None:
    port = free_port()
    metrics = Metrics()
    app = web.Application()
    metrics.install(app, f"127.0.0.1:{port}", **IDLE)
    server: TestServer = await aiohttp_server(app)

    samples = await scrape(URL(f"http://127.0.0.1:{port}/metrics"))
    assert value(samples, "reddit_gateway_logins_total", outcome="ok") == 0
    assert ("reddit_gateway_websockets_open", frozenset()) in samples
    assert access_log.handlers and auth_log.handlers
    await server.close()

    assert not access_log.handlers and not auth_log.handlers
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))


async def test_a_taken_metrics_port_is_named_at_start(aiohttp_server: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = web.Application()
        Metrics().install(app, f"127.0.0.1:{port}", **IDLE)

        with pytest.raises(
            OSError, match=re.escape(f"metrics.listen 127.0.0.1:{port}")
        ):
            await aiohttp_server(app)

    assert not access_log.handlers and not auth_log.handlers


def test_apps_in_one_process_keep_separate_registries() -> None:
    first, second = Metrics(), Metrics()

    first.count_reddit_call("me", 200)

    assert first.registry.get_sample_value(
        "reddit_gateway_reddit_calls_total", {"endpoint": "me", "status": "200"}
    )
    assert not second.registry.get_sample_value(
        "reddit_gateway_reddit_calls_total", {"endpoint": "me", "status": "200"}
    )


@pytest.mark.parametrize(
    ("method", "label"),
    [("GET", "GET"), ("DELETE", "DELETE"), ("PROPFIND", "OTHER"), ("X" * 50, "OTHER")],
)
def test_methods_a_client_makes_up_share_one_label(method: str, label: str) -> None:
    metrics = Metrics()

    for status in (200, 204, 404):
        metrics.count_request({"method": method, "status": status, "upstream_ms": None})

    get = metrics.registry.get_sample_value
    assert get("reddit_gateway_requests_total", {"method": label, "status": "2xx"}) == 2
    assert get("reddit_gateway_requests_total", {"method": label, "status": "4xx"}) == 1


@pytest.fixture
def quiet_gateway_logs() -> Iterator[io.StringIO]:
    """setup_logging at warning into a buffer; the logging setup restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("gateway").level)
    buffer = io.StringIO()
    setup_logging("warning", "text")
    root.handlers[0].setStream(buffer)  # type: ignore[attr-defined]
    yield buffer
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("gateway").setLevel(saved[2])


def test_log_level_warning_leaves_metrics_whole_and_the_output_quiet(
    quiet_gateway_logs: io.StringIO,
) -> None:
    metrics = Metrics()
    metrics.attach()
    request = make_mocked_request("GET", "/page")
    request[UPSTREAM_SECONDS] = 0.02

    auth_event("login_ok", user="alice")
    auth_event("refresh_failed", logging.WARNING, user="alice", reason="down")
    AccessLogger(access_log, "").log(request, web.Response(), 0.03)
    metrics.detach()

    get = metrics.registry.get_sample_value
    assert get("reddit_gateway_logins_total", {"outcome": "ok"}) == 1
    assert get("reddit_gateway_token_refreshes_total", {"outcome": "failed"}) == 1
    assert get("reddit_gateway_requests_total", {"method": "GET", "status": "2xx"})
    assert get("reddit_gateway_upstream_response_seconds_count") == 1
    printed = quiet_gateway_logs.getvalue()
    assert "refresh_failed" in printed
    assert "login_ok" not in printed and "GET /page" not in printed
    assert not access_log.isEnabledFor(logging.INFO)  # as it was before attach
