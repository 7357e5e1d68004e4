"""Two gateway processes behind one public URL, sharing secrets (and redis): a
session works on either, and with redis it ends on both at once."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from yarl import URL

from gateway.__main__ import main
from gateway.mock_reddit import MockReddit
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    SESSION_SECRET,
    RecordingUpstream,
    RedisServer,
    StackFactory,
    free_port,
    redis_server_executable,
)
from tests.test_serve_functional import wait_until_serving

COOKIE = "_reddit_gateway"  # cookie_secure = false: no __Host- prefix


@dataclass
class Replicas:
    """Replica A serves the public URL (reddit returns there); B is another
    process anywhere else, as behind a load balancer."""

    a: URL
    b: URL
    env: dict[str, str]
    reddit: MockReddit
    upstream: RecordingUpstream

    async def sign_in(self, username: str, *, start_on: URL | None = None) -> str:
        """Sign in as a browser would; returns the session cookie's value."""
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(
            cookie_jar=jar, headers={"Accept": "text/html"}
        ) as browser:
            start = (start_on or self.a) / "oauth2/start"
            async with browser.get(start, allow_redirects=False) as started:
                authorize = URL(started.headers["Location"])
            form = {**authorize.query, "username": username, "authorize": "Allow"}
            async with browser.post(
                authorize.with_query(None), data=form, allow_redirects=False
            ) as consent:
                callback = URL(consent.headers["Location"])
            async with browser.get(callback, allow_redirects=False) as finished:
                assert finished.status == 302, await finished.text()
            return jar.filter_cookies(self.a)[COOKIE].value

    async def revoke(self, user: str) -> tuple[int, str, str]:
        """`reddit-gateway sessions revoke --user USER` with the replicas' config."""
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "gateway", "sessions", "revoke", "--user", user),
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()


async def fetch(url: URL, cookie: str, method: str = "GET") -> tuple[int, Any]:
    """One API request carrying exactly this cookie value, as a replayed copy."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        async with client.request(
            method,
            url,
            headers={"Cookie": f"{COOKIE}={cookie}", "Accept": "application/json"},
            allow_redirects=False,
        ) as response:
            if response.content_type != "application/json":
                return response.status, await response.text()
            return response.status, await response.json()


def gateway_env(
    public: URL, upstream: str, reddit: str, store: str, redis_url: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        {
            "GATEWAY_SERVER_PUBLIC_URL": str(public),
            "GATEWAY_UPSTREAM_URL": upstream,
            "GATEWAY_REDDIT_CLIENT_ID": CLIENT_ID,
            "GATEWAY_REDDIT_CLIENT_SECRET": CLIENT_SECRET,
            "GATEWAY_REDDIT_USER_AGENT": "test:reddit-gateway-tests:v1 (by /u/tests)",
            "GATEWAY_REDDIT_AUTHORIZE_URL": f"{reddit}/api/v1/authorize",
            "GATEWAY_REDDIT_TOKEN_URL": f"{reddit}/api/v1/access_token",
            "GATEWAY_REDDIT_REVOKE_URL": f"{reddit}/api/v1/revoke_token",
            "GATEWAY_REDDIT_API_URL": reddit,
            "GATEWAY_SESSION_SECRET": SESSION_SECRET,
            "GATEWAY_SESSION_COOKIE_SECURE": "false",
            "GATEWAY_SESSION_STORE": store,
            "GATEWAY_SESSION_REDIS_URL": redis_url,
            "GATEWAY_LOG_FORMAT": "json",
        }
    )
    return env


ReplicasFactory = Callable[..., Awaitable[Replicas]]


@pytest.fixture
async def make_replicas(
    aiohttp_server: Any, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> AsyncIterator[ReplicasFactory]:
    """Start mock reddit, an upstream and two `reddit-gateway serve` processes;
    keyword arguments are extra GATEWAY_* settings."""
    processes: list[asyncio.subprocess.Process] = []

    async def make(store: str, expires_in: int = 86400, **settings: str) -> Replicas:
        reddit = MockReddit(expires_in=expires_in)
        reddit_url = str((await aiohttp_server(reddit.app())).make_url(""))
        upstream = RecordingUpstream()
        upstream_url = str((await aiohttp_server(upstream.app())).make_url(""))
        redis_url = request.getfixturevalue("redis_url") if store == "redis" else ""

        a, b = (URL(f"http://127.0.0.1:{free_port()}") for _ in range(2))
        env = gateway_env(
            a, upstream_url.rstrip("/"), reddit_url.rstrip("/"), store, redis_url
        )
        env.update({f"GATEWAY_{k.upper()}": v for k, v in settings.items()})
        reddit.add_client(CLIENT_ID, CLIENT_SECRET, str(a / "oauth2/callback"))

        for url in (a, b):
            with open(tmp_path / f"gateway-{url.port}.log", "wb") as log:
                processes.append(
                    await asyncio.create_subprocess_exec(
                        *(sys.executable, "-m", "gateway", "serve"),
                        env={**env, "GATEWAY_SERVER_LISTEN": f"127.0.0.1:{url.port}"},
                        stdout=log,
                        stderr=log,
                    )
                )
        await asyncio.gather(
            wait_until_serving(a, processes[-2]), wait_until_serving(b, processes[-1])
        )
        return Replicas(a, b, env, reddit, upstream)

    try:
        yield make
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
            await process.wait()


@pytest.mark.parametrize("store", ["cookie", "redis"])
async def test_signed_in_on_one_replica_works_on_the_other(
    make_replicas: ReplicasFactory, store: str
) -> None:
    replicas = await make_replicas(store)

    # Started on B, finished on A (reddit returns to the public URL).
    cookie = await replicas.sign_in("alice", start_on=replicas.b)

    for url in (replicas.a, replicas.b):
        status, body = await fetch(url / "reports", cookie)
        assert status == 200
        assert body["user"] == "alice"


@pytest.mark.parametrize(
    ("store", "old_cookie_status"),
    [
        ("redis", 401),  # the session ended on every replica
        ("cookie", 200),  # documented: a copied cookie lives until it expires
    ],
)
async def test_an_old_cookie_after_a_sign_out_on_the_other_replica(
    make_replicas: ReplicasFactory, store: str, old_cookie_status: int
) -> None:
    replicas = await make_replicas(store)
    cookie = await replicas.sign_in("alice")

    status, _ = await fetch(
        (replicas.a / "oauth2/sign_out").with_query(rd="/"), cookie, "POST"
    )
    assert status == 302

    status, body = await fetch(replicas.b / "reports", cookie)
    assert status == old_cookie_status
    if old_cookie_status == 401:
        assert body["error"] == "unauthorized"


async def test_sessions_revoke_ends_a_users_sessions_on_every_replica(
    make_replicas: ReplicasFactory,
) -> None:
    replicas = await make_replicas("redis")
    alice_here = await replicas.sign_in("alice")
    alice_there = await replicas.sign_in("alice", start_on=replicas.b)
    bob = await replicas.sign_in("bob")

    code, out, err = await replicas.revoke("ALICE")

    assert (code, err) == (0, "")
    assert out == "ended 2 sessions of u/ALICE\n"
    for url in (replicas.a, replicas.b):
        for cookie in (alice_here, alice_there):
            assert (await fetch(url / "reports", cookie))[0] == 401
        assert (await fetch(url / "reports", bob))[0] == 200


async def test_sessions_revoke_needs_the_redis_store() -> None:
    env = gateway_env(
        URL("http://127.0.0.1:9"), "http://127.0.0.1:9", "http://127.0.0.1:9", "", ""
    )
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway", "sessions", "revoke", "--user", "alice"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 2
    assert out == b""
    assert b'sessions revoke needs session.store = "redis"' in err


def test_sessions_revoke_refuses_a_name_that_is_not_a_reddit_username(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "http://127.0.0.1:9"
    env = gateway_env(URL(url), url, url, "redis", "redis://127.0.0.1:9/0")
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    assert main(["sessions", "revoke", "--user", "not a name"]) == 2
    assert "'not a name' is not a reddit username" in capsys.readouterr().err


async def test_replicas_refresh_a_session_once_between_them(
    make_replicas: ReplicasFactory,
) -> None:
    # Tokens that expire within the refresh margin: the first request is due.
    replicas = await make_replicas("redis", expires_in=30, reddit_duration="permanent")
    cookie = await replicas.sign_in("alice")
    replicas.reddit.expires_in = 3600
    # A slow refresh, so that both replicas find the session due meanwhile.
    replicas.reddit.fail_next("/api/v1/access_token", status=None, delay=1.0)

    answers = await asyncio.gather(
        *(fetch((replicas.a, replicas.b)[i % 2] / "reports", cookie) for i in range(12))
    )

    assert [status for status, _ in answers] == [200] * 12
    refreshes = [
        call
        for call in replicas.reddit.calls
        if call.form.get("grant_type") == "refresh_token"
    ]
    assert len(refreshes) == 1


async def test_a_redis_outage_is_a_503_that_never_reaches_the_app(
    make_stack: StackFactory, tmp_path: pathlib.Path
) -> None:
    server = RedisServer(redis_server_executable(), tmp_path)
    server.start()
    try:
        stack = await make_stack(session_store="redis", session_redis_url=server.url)
        async with stack.browser() as browser:
            await stack.login(browser, "alice")
            async with browser.get(stack.url / "reports") as before:
                assert before.status == 200
            reached = len(stack.upstream.received)

            server.stop()

            async with browser.get(
                stack.url / "reports", allow_redirects=False
            ) as page:
                assert page.status == 503
                assert "Location" not in page.headers  # no login loop
                assert "session store is not answering" in await page.text()
            async with browser.post(
                stack.url / "api", data=b"{}", headers={"Accept": "application/json"}
            ) as api:
                assert api.status == 503
                assert api.headers["Retry-After"] == "5"
                assert (await api.json())["error"] == "session_store_unavailable"
            async with browser.get(stack.url / "oauth2/auth") as auth:
                assert auth.status == 503
            assert len(stack.upstream.received) == reached

            async with browser.get(stack.url / "oauth2/ping") as ping:
                assert ping.status == 200
            async with browser.get(stack.url / "oauth2/ready") as ready:
                assert ready.status == 503
                answer = await ready.json()
                assert (answer["ready"], answer["sessions"]) == (False, "unreachable")

            server.start()  # empty: redis kept nothing on disk

            async with browser.get(stack.url / "oauth2/ready") as ready:
                assert ready.status == 200
                assert (await ready.json())["sessions"] == "ok"
            async with browser.get(
                stack.url / "reports", allow_redirects=False
            ) as again:
                assert again.status == 302  # signed out, off to reddit
    finally:
        server.stop()
