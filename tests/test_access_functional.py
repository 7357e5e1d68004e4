"""Access rules that reddit communities need, end to end through the mock reddit."""

from __future__ import annotations

import asyncio
import logging
import pathlib

import aiohttp
import pytest

from tests.conftest import Stack, StackFactory

API = {"Accept": "application/json"}
HTML = {"Accept": "text/html"}


async def get(browser: aiohttp.ClientSession, stack: Stack, path: str) -> int:
    async with browser.get(
        stack.url.with_path(path), headers=API, allow_redirects=False
    ) as response:
        return response.status


async def test_a_moderator_is_admitted_and_others_refused_with_the_reason(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.auth")
    stack = await make_stack(access_moderators_of="r/ExampleMods")
    stack.reddit.add_user("mod_alice", moderator_of=["ExampleMods", "other"])
    stack.reddit.add_user("plain_bob", subscriber_of=["ExampleMods"])

    async with stack.browser() as alice, stack.browser() as bob:
        assert (await stack.login(alice, "mod_alice")).status == 302
        assert await get(alice, stack, "/queue") == 200

        refused = await stack.login(bob, "plain_bob")
        assert refused.status == 403
        text = await refused.text()
        assert "u/plain_bob" in text
        assert "r/ExampleMods" in text
        async with bob.get(stack.url / "queue", headers=API) as api:
            assert api.status == 403
            assert "r/ExampleMods" in (await api.json())["message"]
        async with bob.get(stack.url / "oauth2/auth") as auth:
            assert auth.status == 403

    assert "denied" in caplog.text
    assert "access.moderators_of" in caplog.text
    assert [r.header("X-Reddit-User") for r in stack.upstream.received] == ["mod_alice"]


async def test_listing_rules_ask_reddit_for_mysubreddits(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(access_contributors_of="example")
    async with stack.browser() as browser:
        async with browser.get(
            stack.url / "oauth2/start", allow_redirects=False
        ) as start:
            scope = start.headers["Location"]

    assert "scope=identity+mysubreddits" in scope or "mysubreddits" in scope


async def test_a_moderator_removed_mid_session_loses_access_after_the_recheck(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(
        access_moderators_of="ExampleMods", access_recheck_interval="600"
    )
    stack.reddit.add_user("mod_alice", moderator_of=["ExampleMods"])
    async with stack.browser() as browser:
        await stack.login(browser, "mod_alice")
        assert await get(browser, stack, "/queue") == 200

        stack.reddit.add_user("mod_alice", moderator_of=[])
        stack.clock.advance(300)
        assert await get(browser, stack, "/queue") == 200  # within the interval
        stack.clock.advance(301)
        assert await get(browser, stack, "/queue") == 403


async def test_reddit_down_at_recheck_keeps_access_for_the_grace_then_fails_closed(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(
        access_moderators_of="ExampleMods",
        access_recheck_interval="600",
        access_recheck_grace="900",
    )
    stack.reddit.add_user("mod_alice", moderator_of=["ExampleMods"])
    async with stack.browser() as browser:
        await stack.login(browser, "mod_alice")

        stack.clock.advance(601)
        stack.reddit.fail_next("/api/v1/me", status=503, body="down")
        assert await get(browser, stack, "/queue") == 200

        stack.clock.advance(1000)  # past interval + grace, reddit still down
        for _ in range(3):
            stack.reddit.fail_next("/api/v1/me", status=503, body="down")
        assert await get(browser, stack, "/queue") == 401


async def test_rules_on_account_age_karma_and_email(make_stack: StackFactory) -> None:
    stack = await make_stack(
        access_min_account_age_days="30",
        access_min_karma="100",
        access_require_verified_email="true",
    )
    now = stack.clock()
    stack.reddit.add_user(
        "veteran",
        created_utc=now - 90 * 86400,
        link_karma=80,
        comment_karma=50,
        has_verified_email=True,
    )
    stack.reddit.add_user(
        "newcomer",
        created_utc=now - 3 * 86400,
        link_karma=500,
        comment_karma=0,
        has_verified_email=True,
    )
    async with stack.browser() as veteran, stack.browser() as newcomer:
        assert (await stack.login(veteran, "veteran")).status == 302
        refused = await stack.login(newcomer, "newcomer")

    assert refused.status == 403
    assert "30 days" in await refused.text()


async def test_suspended_accounts_are_refused_unless_allowed(
    make_stack: StackFactory,
) -> None:
    strict = await make_stack()
    lenient = await make_stack(access_allow_suspended="true")
    for stack in (strict, lenient):
        stack.reddit.add_user(
            "Temp_Banned", is_suspended=True, suspension_expiration_utc=2e9
        )

    async with strict.browser() as one, lenient.browser() as two:
        assert (await strict.login(one, "Temp_Banned")).status == 403
        assert (await lenient.login(two, "Temp_Banned")).status == 302


async def test_per_route_rules_and_public_routes(
    make_stack: StackFactory, tmp_path: pathlib.Path
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[[access.routes]]\nprefix = "/admin"\nmoderators_of = ["ExampleMods"]\n'
        '[[access.routes]]\nprefix = "/health"\npublic = true\n'
    )
    stack = await make_stack(config_file=str(config))
    stack.reddit.add_user("mod_alice", moderator_of=["ExampleMods"])

    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(
            stack.url / "health", headers={"X-Reddit-User": "admin", **API}
        ) as health:
            assert health.status == 200
        async with anonymous.get(stack.url / "admin", headers=API) as admin:
            assert admin.status == 401
    public = stack.upstream.last
    assert public.all("X-Reddit-User") == []

    async with stack.browser() as alice, stack.browser() as bob:
        await stack.login(alice, "mod_alice")
        await stack.login(bob, "bob")
        assert await get(alice, stack, "/admin/settings") == 200
        assert await get(bob, stack, "/admin/settings") == 403
        assert await get(bob, stack, "/Admin/settings") == 403
        assert await get(bob, stack, "/%61dmin") == 403
        assert await get(bob, stack, "//admin") == 403
        assert await get(bob, stack, "/administrator") == 200
        assert await get(bob, stack, "/dashboard") == 200


async def test_fewer_scopes_granted_than_asked_is_refused_clearly(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(access_moderators_of="ExampleMods")
    stack.reddit.fail_next(
        "/api/v1/access_token",
        status=200,
        body={
            "access_token": "x" * 40,
            "token_type": "bearer",
            "expires_in": 3600,
            "scope": "identity",
        },
    )
    async with stack.browser() as browser:
        response = await stack.login(browser, "mod_alice")

    assert response.status == 403
    assert "mysubreddits" in await response.text()


async def test_connection_starvation_by_one_user_is_capped(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(upstream_max_requests_per_user="2")
    gate = asyncio.Event()
    async with stack.browser() as hog, stack.browser() as other:
        await stack.login(hog, "hog")
        await stack.login(other, "other")
        stack.upstream.hold = gate
        held = [
            asyncio.create_task(get(hog, stack, f"/poll{index}")) for index in range(2)
        ]
        await asyncio.sleep(0.2)

        assert await get(hog, stack, "/third") == 429
        extra = asyncio.create_task(get(other, stack, "/fine"))
        await asyncio.sleep(0.2)
        gate.set()
        assert await extra == 200
        assert await asyncio.gather(*held) == [200, 200]
        assert await get(hog, stack, "/again") == 200
