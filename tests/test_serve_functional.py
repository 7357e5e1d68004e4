"""`reddit-gateway serve --config FILE` as a real process in front of an app."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from gateway.mock_reddit import MockReddit
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    SESSION_SECRET,
    RecordingUpstream,
    free_port,
)

CONFIG = """
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"

[upstream]
url = "{upstream}"

[reddit]
client_id = "{client_id}"
client_secret_file = "{secret_file}"
user_agent = "test:reddit-gateway-tests:v1 (by /u/tests)"
authorize_url = "{reddit}/api/v1/authorize"
token_url = "{reddit}/api/v1/access_token"
revoke_url = "{reddit}/api/v1/revoke_token"
api_url = "{reddit}"

[session]
cookie_secure = false

[access]
users = ["Alice"]

[log]
format = "json"
"""


async def wait_until_serving(url: URL, process: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as client:
        for _ in range(100):
            if process.returncode is not None:
                raise AssertionError("the gateway exited during start-up")
            try:
                async with client.get(url / "oauth2/ping") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    raise AssertionError("the gateway did not start within 10 s")


@pytest.fixture
async def served(
    aiohttp_server: Any, tmp_path: pathlib.Path
) -> AsyncIterator[tuple[URL, MockReddit, RecordingUpstream, pathlib.Path]]:
    reddit = MockReddit()
    reddit_url = str((await aiohttp_server(reddit.app())).make_url("")).rstrip("/")
    upstream = RecordingUpstream()
    upstream_url = str((await aiohttp_server(upstream.app())).make_url("")).rstrip("/")
    port = free_port()
    (tmp_path / "client_secret").write_text(CLIENT_SECRET + "\n")
    config = tmp_path / "gateway.toml"
    config.write_text(
        CONFIG.format(
            port=port,
            upstream=upstream_url,
            reddit=reddit_url,
            client_id=CLIENT_ID,
            secret_file=tmp_path / "client_secret",
        )
    )
    reddit.add_client(
        CLIENT_ID, CLIENT_SECRET, f"http://127.0.0.1:{port}/oauth2/callback"
    )
    log_path = tmp_path / "gateway.log"

    env = {**os.environ, "GATEWAY_SESSION_SECRET": SESSION_SECRET}
    with open(log_path, "wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            env=env,
            stdout=log,
            stderr=log,
        )
    url = URL(f"http://127.0.0.1:{port}")
    try:
        await wait_until_serving(url, process)
        yield url, reddit, upstream, log_path
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


async def test_served_gateway_signs_in_and_proxies(
    served: tuple[URL, MockReddit, RecordingUpstream, pathlib.Path],
) -> None:
    url, _, _, log_path = served
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"Accept": "text/html"}
    ) as browser:
        async with browser.get(url / "reports", allow_redirects=False) as first:
            authorize = URL(first.headers["Location"])
        form = {**authorize.query, "username": "alice", "authorize": "Allow"}
        async with browser.post(
            authorize.with_query(None), data=form, allow_redirects=False
        ) as consent:
            callback = URL(consent.headers["Location"])
        async with browser.get(callback, allow_redirects=False) as finished:
            assert finished.status == 302
            assert finished.headers["Location"] == "/reports#"

        async with browser.get(url / "reports") as page:
            assert page.status == 200
            assert (await page.json())["user"] == "alice"

    log = log_path.read_text()
    assert '"event":"login_ok"' in log
    assert '"path":"/reports"' in log
    assert callback.query["code"] not in log
    assert CLIENT_SECRET not in log
    assert SESSION_SECRET not in log


async def test_serve_refuses_a_bad_config_naming_the_key(
    tmp_path: pathlib.Path,
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[server]\npublic_url = "https://app.example.com"\nlisen = "x"\n')

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 2
    assert b"server.lisen: unknown key" in stderr
