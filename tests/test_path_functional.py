"""Request targets that try to leave the app's base path, or to echo the request."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.proxy import has_dot_segment
from tests.conftest import Stack, StackFactory


async def raw_request(
    stack: Stack, cookie: str, target: str, method: str = "GET"
) -> int:
    """Send exact bytes, as curl --path-as-is would; return the status."""
    reader, writer = await asyncio.open_connection(stack.url.host, stack.url.port)
    writer.write(
        f"{method} {target} HTTP/1.1\r\nHost: {stack.url.host}\r\n"
        f"Cookie: _reddit_gateway={cookie}\r\nAccept: */*\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/a/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/a/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/a/..%5c..%5csecret.txt",
        "/./secret.txt",
        "/a/..",
        "/a/..?x=1",
    ],
)
async def test_path_traversal_out_of_the_upstream_base_path_is_refused(
    make_stack: StackFactory, target: str
) -> None:
    stack = await make_stack()
    async with stack.browser() as browser:
        await stack.login(browser, "alice")
        cookie = browser.cookie_jar.filter_cookies(stack.url)["_reddit_gateway"].value

    assert await raw_request(stack, cookie, target) == 400
    assert stack.upstream.received == []


@pytest.mark.parametrize(
    ("target", "dotted"),
    [
        ("/a/b.c/d", False),
        ("/.well-known/x", False),
        ("/a/...", False),
        ("/a/%2e", True),
        ("/base/..%00/admin", True),
        ("/base/..%20/admin", True),
        ("/base/%2e%2e%09/admin", True),
        ("/files/%2Fetc", False),
        ("/a?next=/../x", False),
        ("/public/..;/admin", True),
        ("/a/.;x/b", True),
        ("/a/..%3Bx/b", True),
        ("/a/%2e%2e;/b", True),
        ("/a;../b", False),
        ("/a/;../b", False),
        ("/a/..x;/b", False),
    ],
)
def test_has_dot_segment(target: str, dotted: bool) -> None:
    assert has_dot_segment(target) is dotted


async def test_cross_site_tracing_is_refused(make_stack: StackFactory) -> None:
    stack = await make_stack()
    async with stack.browser() as browser:
        await stack.login(browser, "alice")
        cookie = browser.cookie_jar.filter_cookies(stack.url)["_reddit_gateway"].value

    assert await raw_request(stack, cookie, "/x", method="TRACE") == 405
    assert stack.upstream.received == []


async def test_a_malformed_request_gets_400_and_one_quiet_access_line(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await make_stack()

    assert await raw_request(stack, "x", "*", method="OPTIONS") in (400, 404)

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
