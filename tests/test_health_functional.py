"""/oauth2/ping and /oauth2/ready: answered on their exact paths only, and by a
real `reddit-gateway serve` process the way an orchestrator probes it."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import sys
from typing import Any

import aiohttp
import pytest
from yarl import URL

from gateway.config import load_config
from gateway.healthcheck import main as healthcheck_main
from gateway.healthcheck import ping_url
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    SESSION_SECRET,
    RecordingUpstream,
    Stack,
    StackFactory,
    free_port,
)

API = {"Accept": "*/*"}
PAGE = {"Accept": "text/html"}
PROBE = {"User-Agent": "kube-probe/1.31", "Accept": "*/*"}


async def raw_get(
    stack: Stack, target: str, headers: dict[str, str], method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """Send the request target byte for byte (no client normalises it)."""
    reader, writer = await asyncio.open_connection(stack.url.host, stack.url.port)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {stack.url.host}:{stack.url.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join([*lines, "Connection: close", "", ""])).encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()

    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), fields, body


def is_health_answer(body: bytes) -> bool:
    if body == b"OK":
        return True
    try:
        return "ready" in json.loads(body)
    except ValueError:
        return False


@pytest.mark.parametrize(
    ("target", "headers", "status"),
    [
        # Under /oauth2/ the gateway answers, and only its exact paths exist.
        ("/oauth2/ping/", API, 404),
        ("/oauth2/Ping", API, 404),
        ("/oauth2/PING", API, 404),
        ("/oauth2/ping%2F", API, 404),
        ("/oauth2/ping%2f", API, 404),
        ("/oauth2/%70ing", API, 404),
        ("/oauth2/ping;x", API, 404),
        ("/oauth2/ping;", API, 404),
        ("/oauth2//ping", API, 404),
        ("/oauth2/ping.", API, 404),
        ("/oauth2/pingx", API, 404),
        ("/oauth2/ping/ready", API, 404),
        ("/oauth2/ready/", API, 404),
        ("/oauth2/Ready", API, 404),
        ("/oauth2/ready%2F", API, 404),
        ("/oauth2/ready;x", API, 404),
        ("/oauth2//ready", API, 404),
        # Every other path is the app's: no session, so 401 or off to reddit.
        ("/OAUTH2/ping", API, 401),
        ("//oauth2/ping", API, 401),
        ("/x/oauth2/ping", API, 401),
        ("/x?/oauth2/ping", API, 401),
        ("/x?oauth2/ping", API, 401),
        ("/x?rd=/oauth2/ping", API, 401),
        ("/x%3F/oauth2/ping", API, 401),
        ("/ping", API, 401),
        ("/ready", API, 401),
        ("/healthz", API, 401),
        ("/x", PROBE, 401),
        ("/", PROBE, 401),
        ("/x", {**PROBE, "X-Original-URL": "/oauth2/ping"}, 401),
        ("/x", {**PROBE, "X-Forwarded-Uri": "/oauth2/ready"}, 401),
        ("/x", {"User-Agent": "kube-probe/1.31", **PAGE}, 302),
        ("/x?/oauth2/ping", {"User-Agent": "kube-probe/1.31", **PAGE}, 302),
        # Dot segments are never resolved into a gateway path.
        ("/x/../oauth2/ping", API, 401),
        ("/x/%2e%2e/oauth2/ping", API, 401),
        ("/oauth2/x/../ping", API, 404),
        ("/oauth2/./ping", API, 404),
    ],
)
async def test_health_check_confusion_only_the_exact_paths_are_probes(
    make_stack: StackFactory, target: str, headers: dict[str, str], status: int
) -> None:
    stack = await make_stack()

    got, fields, body = await raw_get(stack, target, headers)

    assert got == status, body
    assert not is_health_answer(body)
    if status == 302:
        assert fields["Location"].startswith(str(stack.config.reddit.authorize_url))
    assert stack.upstream.received == []


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/oauth2/ping", {}),
        ("GET", "/oauth2/ping", API),
        ("GET", "/oauth2/ping", PAGE),  # a browser is never sent to reddit here
        ("GET", "/oauth2/ping", PROBE),
        ("GET", "/oauth2/ping?probe=1", API),
        ("GET", "/oauth2/ping", {"Cookie": "_reddit_gateway=garbage", **PAGE}),
        ("HEAD", "/oauth2/ping", API),
    ],
)
async def test_ping_answers_without_a_session(
    make_stack: StackFactory, method: str, target: str, headers: dict[str, str]
) -> None:
    stack = await make_stack()

    status, fields, body = await raw_get(stack, target, headers, method)

    assert status == 200
    assert "Set-Cookie" not in fields
    assert body == (b"" if method == "HEAD" else b"OK")
    assert stack.upstream.received == []


@pytest.mark.parametrize("headers", [API, PAGE, PROBE])
async def test_ready_checks_the_upstream_and_the_session_store(
    make_stack: StackFactory, headers: dict[str, str]
) -> None:
    stack = await make_stack()

    status, _, body = await raw_get(stack, "/oauth2/ready", headers)

    assert status == 200
    assert json.loads(body) == {"ready": True, "upstream": "ok", "sessions": "ok"}
    assert [got.raw_path for got in stack.upstream.received] == ["/"]


async def test_a_session_store_outage_fails_readiness_but_not_liveness(
    make_stack: StackFactory,
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    stack = await make_stack(session_store="redis", session_redis_url=nowhere)

    ping, _, ping_body = await raw_get(stack, "/oauth2/ping", API)
    ready, _, ready_body = await raw_get(stack, "/oauth2/ready", API)

    assert (ping, ping_body) == (200, b"OK")
    assert ready == 503
    assert json.loads(ready_body) == {
        "ready": False,
        "upstream": "ok",
        "sessions": "unreachable",
    }


async def test_a_served_gateway_is_live_at_once_and_ready_when_its_app_is(
    aiohttp_server: Any,
) -> None:
    port = free_port()
    app_port = free_port()
    env = {
        **os.environ,
        "GATEWAY_SERVER_LISTEN": f"127.0.0.1:{port}",
        "GATEWAY_SERVER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "GATEWAY_SERVER_WORKERS": "1",
        "GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{app_port}",
        "GATEWAY_REDDIT_CLIENT_ID": CLIENT_ID,
        "GATEWAY_REDDIT_CLIENT_SECRET": CLIENT_SECRET,
        "GATEWAY_REDDIT_USER_AGENT": "test:reddit-gateway-tests:v1 (by /u/tests)",
        "GATEWAY_SESSION_SECRET": SESSION_SECRET,
        "GATEWAY_SESSION_COOKIE_SECURE": "false",
    }
    env.pop("GATEWAY_CONFIG", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "gateway", "serve"),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = URL(f"http://127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession(headers=PROBE) as probe:
            assert await wait_for_ping(probe, url, process)
            async with probe.get(url / "oauth2/ready") as not_ready:
                assert not_ready.status == 503
                assert (await not_ready.json())["upstream"] == "unreachable"

            upstream = RecordingUpstream()
            await aiohttp_server(upstream.app(), port=app_port)

            async with probe.get(url / "oauth2/ready") as ready:
                assert ready.status == 200
                assert await ready.json() == {
                    "ready": True,
                    "upstream": "ok",
                    "sessions": "ok",
                }
            async with probe.get(url / "x") as private:
                assert private.status == 401  # the probe's User-Agent opens nothing
            assert [got.raw_path for got in upstream.received] == ["/"]

        # The image's HEALTHCHECK, with a proxy in the environment it must not use.
        proxied = {**env, "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": ""}
        assert await healthcheck(proxied) == 0
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()

    assert await healthcheck(env) == 1


async def healthcheck(env: dict[str, str]) -> int:
    """`python -m gateway.healthcheck`, as the Dockerfile's HEALTHCHECK runs it."""
    check = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway.healthcheck"),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await check.wait()


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("0.0.0.0:4180", "http://127.0.0.1:4180/oauth2/ping"),
        (":4180", "http://127.0.0.1:4180/oauth2/ping"),
        ("[::]:8443", "http://[::1]:8443/oauth2/ping"),
        ("127.0.0.1:80", "http://127.0.0.1:80/oauth2/ping"),
        ("10.1.2.3:4180", "http://10.1.2.3:4180/oauth2/ping"),
        ("[::1]:4180", "http://[::1]:4180/oauth2/ping"),
        ("localhost:9000", "http://localhost:9000/oauth2/ping"),
    ],
)
def test_the_healthcheck_asks_where_the_gateway_listens(listen: str, url: str) -> None:
    env = {
        "GATEWAY_SERVER_LISTEN": listen,
        "GATEWAY_SERVER_PUBLIC_URL": "https://app.example.com",
        "GATEWAY_REDDIT_CLIENT_ID": CLIENT_ID,
        "GATEWAY_REDDIT_CLIENT_SECRET": CLIENT_SECRET,
        "GATEWAY_REDDIT_USER_AGENT": "test:reddit-gateway-tests:v1 (by /u/tests)",
        "GATEWAY_SESSION_SECRET": SESSION_SECRET,
    }

    assert ping_url(load_config(None, env).server) == url


def test_the_healthcheck_reads_the_port_from_the_config_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[server]\nlisten = "0.0.0.0:5190"\n')
    calls: list[str] = []

    class Opener:
        def open(self, url: str, timeout: float) -> Any:
            calls.append(url)
            raise OSError("connection refused")

    monkeypatch.setattr("urllib.request.build_opener", lambda *handlers: Opener())
    for name, value in {
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_SERVER_PUBLIC_URL": "https://app.example.com",
        "GATEWAY_REDDIT_CLIENT_ID": CLIENT_ID,
        "GATEWAY_REDDIT_CLIENT_SECRET": CLIENT_SECRET,
        "GATEWAY_REDDIT_USER_AGENT": "test:reddit-gateway-tests:v1 (by /u/tests)",
        "GATEWAY_SESSION_SECRET": SESSION_SECRET,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GATEWAY_SERVER_LISTEN", raising=False)

    assert healthcheck_main() == 1
    assert calls == ["http://127.0.0.1:5190/oauth2/ping"]


async def wait_for_ping(
    client: aiohttp.ClientSession, url: URL, process: asyncio.subprocess.Process
) -> bool:
    for _ in range(100):
        if process.returncode is not None:
            return False
        try:
            async with client.get(url / "oauth2/ping") as response:
                if response.status == 200 and await response.text() == "OK":
                    return True
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.1)
    return False
