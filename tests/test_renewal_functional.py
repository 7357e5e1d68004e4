"""Sessions that last: token refresh, idle timeout and key rotation, end to end."""

from __future__ import annotations

import asyncio
import logging
import pathlib

import aiohttp
import pytest

from tests.conftest import SESSION_SECRET, Stack, StackFactory

API = {"Accept": "application/json"}
NEW_SECRET = "a-newer-session-secret-0123456789abcdef"


def refresh_calls(stack: Stack) -> int:
    return sum(
        1
        for call in stack.reddit.calls
        if call.path == "/api/v1/access_token"
        and call.form.get("grant_type") == "refresh_token"
    )


def session_cookie(browser: aiohttp.ClientSession, stack: Stack) -> str:
    return browser.cookie_jar.filter_cookies(stack.url)["_reddit_gateway"].value


@pytest.fixture
async def permanent(make_stack: StackFactory) -> Stack:
    stack = await make_stack(reddit_duration="permanent")
    stack.reddit.expires_in = 3600
    return stack


async def test_token_is_refreshed_ahead_of_expiry_and_the_cookie_renewed(
    permanent: Stack,
) -> None:
    async with permanent.browser() as browser:
        await permanent.login(browser, "alice")
        before = session_cookie(browser, permanent)

        permanent.clock.advance(3600 - 30)
        async with browser.get(permanent.url / "x", headers=API) as response:
            assert response.status == 200
            assert "_reddit_gateway=" in response.headers.get("Set-Cookie", "")
        after = session_cookie(browser, permanent)
        async with browser.get(permanent.url / "x", headers=API) as again:
            assert again.status == 200

    assert refresh_calls(permanent) == 1
    assert after != before


async def test_no_refresh_while_the_token_is_fresh(permanent: Stack) -> None:
    async with permanent.browser() as browser:
        await permanent.login(browser, "alice")
        permanent.clock.advance(3600 - 120)
        async with browser.get(permanent.url / "x", headers=API) as response:
            assert response.status == 200
            assert "Set-Cookie" not in response.headers

    assert refresh_calls(permanent) == 0


async def test_ten_concurrent_requests_at_refresh_time_make_one_token_call(
    permanent: Stack,
) -> None:
    async with permanent.browser() as browser:
        await permanent.login(browser, "alice")
        permanent.clock.advance(3600)
        permanent.reddit.fail_next("/api/v1/access_token", status=None, delay=0.2)

        async def one() -> int:
            async with browser.get(permanent.url / "x", headers=API) as response:
                return response.status

        statuses = await asyncio.gather(*(one() for _ in range(10)))

    assert statuses == [200] * 10
    assert refresh_calls(permanent) == 1


async def test_refreshed_cookie_reaches_the_browser_on_a_streamed_response(
    permanent: Stack,
) -> None:
    async with permanent.browser() as browser:
        await permanent.login(browser, "alice")
        permanent.clock.advance(3600)

        async with browser.get(permanent.url / "stream", headers=API) as response:
            assert await response.read() == b"chunk 0\nchunk 1\nchunk 2\n"
            assert "_reddit_gateway=" in response.headers.get("Set-Cookie", "")

    assert refresh_calls(permanent) == 1


async def test_refreshed_cookie_reaches_the_browser_on_the_gateways_own_answers(
    make_stack: StackFactory, tmp_path: pathlib.Path
) -> None:
    # The app is down (502) and a route refuses the user (403): the browser must
    # still get the renewed session, or its next request starts from a stale one.
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[[access.routes]]\nprefix = "/admin"\nmoderators_of = ["ExampleMods"]\n'
    )
    stack = await make_stack(
        config_file=str(config),
        reddit_duration="permanent",
        upstream_url="http://127.0.0.1:1",
    )
    stack.reddit.expires_in = 3600

    async with stack.browser() as browser:
        await stack.login(browser, "alice")
        for path, status in (("x", 502), ("admin", 403)):
            stack.clock.advance(3600)
            before = session_cookie(browser, stack)

            async with browser.get(stack.url / path, headers=API) as response:
                assert response.status == status
                assert "_reddit_gateway=" in response.headers.get("Set-Cookie", "")
            assert session_cookie(browser, stack) != before

    assert refresh_calls(stack) == 2


@pytest.mark.parametrize(
    ("headers", "status"),
    [(API, 401), ({"Accept": "text/html"}, 302)],
    ids=["api-client", "browser"],
)
async def test_a_refused_refresh_ends_the_session_cleanly(
    permanent: Stack, headers: dict[str, str], status: int
) -> None:
    async with permanent.browser() as browser:
        await permanent.login(browser, "alice")
        permanent.clock.advance(3600)
        permanent.reddit.fail_next(
            "/api/v1/access_token", status=400, body={"error": "invalid_request"}
        )

        async with browser.get(
            permanent.url / "x", headers=headers, allow_redirects=False
        ) as response:
            assert response.status == status
            cleared = [
                c
                for c in response.headers.getall("Set-Cookie", [])
                if c.startswith("_reddit_gateway=")
            ]
            assert cleared and "Max-Age=0" in cleared[0]

    assert len(permanent.upstream.received) == 0


async def test_reddit_down_at_refresh_time_keeps_serving_and_retries_later(
    permanent: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.auth")
    async with permanent.browser() as browser:
        await permanent.login(browser, "alice")
        permanent.clock.advance(3600)
        permanent.reddit.fail_next("/api/v1/access_token", status=503, body="down")

        async with browser.get(permanent.url / "x", headers=API) as first:
            assert first.status == 200
        async with browser.get(permanent.url / "x", headers=API) as second:
            assert second.status == 200
        assert refresh_calls(permanent) == 1  # not again at once

        permanent.clock.advance(31)
        async with browser.get(permanent.url / "x", headers=API) as later:
            assert later.status == 200
            assert "_reddit_gateway=" in later.headers.get("Set-Cookie", "")

    assert refresh_calls(permanent) == 2
    assert "refresh_failed" in caplog.text
    assert "refresh_ok" in caplog.text


async def test_temporary_sessions_never_call_reddit_after_login(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    async with stack.browser() as browser:
        await stack.login(browser, "alice")
        calls = len(stack.reddit.calls)
        stack.clock.advance(2 * 86400)
        for _ in range(3):
            async with browser.get(stack.url / "x", headers=API) as response:
                assert response.status == 200

    assert len(stack.reddit.calls) == calls


async def test_idle_timeout_ends_a_quiet_session_and_activity_extends_it(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(session_idle_timeout="600")
    async with stack.browser() as active, stack.browser() as quiet:
        await stack.login(active, "alice")
        await stack.login(quiet, "bob")

        for _ in range(3):
            stack.clock.advance(400)
            async with active.get(stack.url / "x", headers=API) as response:
                assert response.status == 200
        async with quiet.get(stack.url / "x", headers=API) as response:
            assert response.status == 401


async def test_max_age_ends_the_session_however_active(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(session_idle_timeout="600", session_max_age="1800")
    async with stack.browser() as browser:
        await stack.login(browser, "alice")
        for _ in range(4):
            stack.clock.advance(500)
            async with browser.get(stack.url / "x", headers=API) as response:
                last = response.status

    assert last == 401


async def test_key_rotation_keeps_users_signed_in_and_reseals_their_cookie(
    make_stack: StackFactory,
) -> None:
    old = await make_stack()
    rotated = await make_stack(
        session_secret="", session_secrets=f"{NEW_SECRET},{SESSION_SECRET}"
    )
    only_new = await make_stack(session_secret=NEW_SECRET)
    async with old.browser() as browser:
        await old.login(browser, "alice")
        old_cookie = session_cookie(browser, old)

    async with aiohttp.ClientSession() as client:
        cookie = {"Cookie": f"_reddit_gateway={old_cookie}", **API}
        async with client.get(rotated.url / "x", headers=cookie) as response:
            assert response.status == 200
            renewed = response.cookies["_reddit_gateway"].value
        async with client.get(only_new.url / "x", headers=cookie) as response:
            assert response.status == 401
        resealed = {"Cookie": f"_reddit_gateway={renewed}", **API}
        async with client.get(only_new.url / "x", headers=resealed) as response:
            assert response.status == 200


async def test_refresh_amplification_by_a_stale_cookie_makes_no_new_calls(
    permanent: Stack,
) -> None:
    async with permanent.browser() as browser:
        await permanent.login(browser, "alice")
        stale = session_cookie(browser, permanent)
        permanent.clock.advance(3600)
        async with browser.get(permanent.url / "x", headers=API) as first:
            assert first.status == 200

    async with aiohttp.ClientSession() as replayer:
        for _ in range(20):
            async with replayer.get(
                permanent.url / "x",
                headers={"Cookie": f"_reddit_gateway={stale}", **API},
            ) as response:
                assert response.status == 200

    assert refresh_calls(permanent) == 1
