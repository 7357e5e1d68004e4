"""At the most verbose level, through sign-in, refresh, re-check, a failed and a
refused sign-in and sign-out, no token, code, state, secret or cookie value reaches
any log line: the gateway's, aiohttp's or the mock reddit's, as text or as JSON."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from yarl import URL

from gateway.log import JsonFormatter
from tests.conftest import Stack, StackFactory

TEXT = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
# What the mock was sent that is a secret: form fields, and Authorization's value.
SECRET_FIELDS = ("code", "state", "refresh_token", "token", "client_secret")


async def test_no_secret_reaches_the_logs_at_debug_level(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="gateway")
    stack = await make_stack(
        reddit_duration="permanent",
        access_min_karma="10",
        access_recheck_interval="600",
    )
    stack.reddit.expires_in = 120
    stack.reddit.add_user("alice", link_karma=500)
    stack.reddit.add_user("bob", link_karma=1)
    seen: list[str] = []

    async with stack.browser() as alice, stack.browser() as bob:
        assert await sign_in(stack, alice, "alice", seen) == 302

        stack.clock.advance(90)  # within a minute of expiry: refreshed
        async with alice.get(stack.url / "page") as page:
            assert page.status == 200
        seen += cookie_values(alice)

        stack.clock.advance(600)  # refreshed again, and the karma re-checked
        async with alice.get(stack.url / "page") as page:
            assert page.status == 200
        seen += cookie_values(alice)

        stack.reddit.fail_next("/api/v1/access_token", status=401)
        async with stack.browser() as carol:
            assert await sign_in(stack, carol, "carol", seen) == 502

        assert await sign_in(stack, bob, "bob", seen) == 403

        async with alice.post(stack.url / "oauth2/sign_out") as signed_out:
            assert signed_out.status == 200

    events = {getattr(record, "event", None) for record in caplog.records}
    assert {
        "login_ok",
        "refresh_ok",
        "recheck_ok",
        "login_failed",
        "denied",
        "signed_out",
    } <= events
    assert any(record.name == "aiohttp.access" for record in caplog.records)
    secrets = secrets_sent(stack) | {v for v in seen if len(v) >= 8}
    assert len(secrets) >= 12  # codes, states, tokens, cookies, both secrets

    output = "\n".join(
        f"{TEXT.format(record)}\n{JsonFormatter().format(record)}\n{record.__dict__}"
        for record in caplog.records
    )
    leaked = sorted(secret for secret in secrets if secret in output)
    assert not leaked


async def sign_in(
    stack: Stack, browser: aiohttp.ClientSession, username: str, seen: list[str]
) -> int:
    """Sign in, noting the state, the code and every cookie on the way."""
    async with browser.get(stack.url / "oauth2/start", allow_redirects=False) as start:
        authorize = URL(start.headers["Location"])
    seen += cookie_values(browser)  # the login-state cookie
    callback = await stack.consent(browser, authorize, username)
    seen += [authorize.query["state"], callback.query["code"]]

    async with browser.get(callback, allow_redirects=False) as finished:
        await finished.read()
    seen += cookie_values(browser)  # the session cookie
    return finished.status


def cookie_values(browser: aiohttp.ClientSession) -> list[str]:
    return [cookie.value for cookie in browser.cookie_jar]


def secrets_sent(stack: Stack) -> set[str]:
    """Every token, code and credential the gateway sent the mock, as sent."""
    found = {
        stack.config.reddit.client_secret.reveal(),
        *(secret.reveal() for secret in stack.config.session.secrets),
    }
    for call in stack.reddit.calls:
        found.update(call.form[name] for name in SECRET_FIELDS if name in call.form)
        authorization = call.headers.get("Authorization", "")
        if authorization:
            found.add(authorization.partition(" ")[2])  # a bearer token, or Basic
    return {secret for secret in found if secret}
