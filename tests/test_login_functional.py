"""Sign in with reddit end to end: gateway, mock reddit and upstream on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from tests.conftest import CLIENT_ID, Stack, StackFactory

HTML = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack()


@pytest.fixture
async def browser(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with stack.browser() as session:
        yield session


def token_calls(stack: Stack) -> int:
    return sum(1 for call in stack.reddit.calls if call.path == "/api/v1/access_token")


async def test_whole_login_reaches_the_upstream_as_the_reddit_user(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    async with browser.get(stack.url / "dashboard", allow_redirects=False) as first:
        assert first.status == 302
        authorize = URL(first.headers["Location"])

    assert authorize.path == "/api/v1/authorize"
    assert authorize.query["client_id"] == CLIENT_ID
    assert authorize.query["response_type"] == "code"
    assert authorize.query["redirect_uri"] == stack.config.server.redirect_url
    assert authorize.query["duration"] == "temporary"
    assert authorize.query["scope"] == "identity"
    assert len(authorize.query["state"]) >= 22

    callback = await stack.consent(browser, authorize, "Example_User-42")
    async with browser.get(callback, allow_redirects=False) as finished:
        assert finished.status == 302
        assert finished.headers["Location"] == "/dashboard#"

    async with browser.get(stack.url / "dashboard") as page:
        assert page.status == 200
        assert (await page.json())["user"] == "Example_User-42"
    assert stack.upstream.last.all("X-Reddit-User") == ["Example_User-42"]


async def test_username_is_forwarded_in_reddits_canonical_spelling(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    stack.reddit.add_user("CamelCase_Mod")

    await stack.login(browser, "camelcase_mod")
    async with browser.get(stack.url / "x") as page:
        assert (await page.json())["user"] == "CamelCase_Mod"


async def test_session_cookie_attributes(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    response = await stack.login(browser, "alice")

    cookie = next(
        v
        for v in response.headers.getall("Set-Cookie")
        if v.startswith("_reddit_gateway=")
    )
    lowered = cookie.lower()
    assert "httponly" in lowered
    assert "samesite=lax" in lowered
    assert "max-age=" in lowered
    assert "path=/" in lowered
    assert len(cookie) < 4096


async def test_cookies_are_secure_when_configured(make_stack: StackFactory) -> None:
    stack = await make_stack(session_cookie_secure="true")
    async with stack.browser() as browser:
        async with browser.get(stack.url / "oauth2/start", allow_redirects=False) as r:
            login_cookie = r.headers["Set-Cookie"]
            authorize = URL(r.headers["Location"])
        callback = await stack.consent(browser, authorize, "alice")
        # The client jar keeps Secure cookies off plain http, as browsers do.
        name_value = login_cookie.split(";", 1)[0]
        async with browser.get(
            callback, headers={"Cookie": name_value}, allow_redirects=False
        ) as response:
            assert response.status == 302
            session_cookie = next(
                v
                for v in response.headers.getall("Set-Cookie")
                if v.startswith("__Host-_reddit_gateway=")
            )

    # SECURITY: cookie tossing: the session cookie can only come from this origin.
    assert login_cookie.startswith("__Secure-_reddit_gateway_login_")
    assert "secure" in login_cookie.lower()
    assert "secure" in session_cookie.lower()


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        ("GET", {"Accept": "text/html"}, 302),
        ("GET", {"Sec-Fetch-Mode": "navigate", "Accept": "*/*"}, 302),
        ("HEAD", {"Accept": "text/html"}, 302),
        ("GET", {"Accept": "*/*"}, 401),
        ("GET", {"Accept": "application/json"}, 401),
        ("GET", {"Accept": "text/html", "Sec-Fetch-Mode": "cors"}, 401),
        ("GET", {"Accept": "text/html", "X-Requested-With": "XMLHttpRequest"}, 401),
        ("POST", {"Accept": "text/html"}, 401),
        ("DELETE", {"Accept": "text/html"}, 401),
    ],
)
async def test_requests_without_a_session_go_to_reddit_only_when_navigating(
    stack: Stack, method: str, headers: dict[str, str], expected: int
) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.request(
            method, stack.url / "page", headers=headers, allow_redirects=False
        ) as response:
            assert response.status == expected
            if expected == 302:
                assert response.headers["Location"].startswith(
                    str(stack.config.reddit.authorize_url)
                )
            else:
                assert "Set-Cookie" not in response.headers
                if method != "HEAD":
                    assert (await response.json())["error"] == "unauthorized"
    assert stack.upstream.received == []


async def test_streamed_post_reaches_the_upstream_intact(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    await stack.login(browser, "alice")
    chunk = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(8):
            digest.update(chunk)
            yield chunk

    url = stack.url.with_path("/upload").with_query("x=1")
    async with browser.post(url, data=body()) as response:
        echoed = await response.json()

    assert response.status == 200
    assert echoed["length"] == 8 * len(chunk)
    assert echoed["sha256"] == digest.hexdigest()
    assert stack.upstream.last.raw_path == "/upload?x=1"


async def test_sign_out_clears_the_session_and_revokes_the_token(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    await stack.login(browser, "alice")

    async with browser.post(
        stack.url / "oauth2/sign_out", params={"rd": "/bye"}, allow_redirects=False
    ) as response:
        assert response.status == 302
        assert response.headers["Location"] == "/bye"

    revokes = [c for c in stack.reddit.calls if c.path == "/api/v1/revoke_token"]
    assert len(revokes) == 1
    assert revokes[0].form["token_type_hint"] == "access_token"
    async with browser.get(stack.url / "x", headers={"Accept": "*/*"}) as after:
        assert after.status == 401


async def test_session_replay_after_sign_out_is_refused_by_this_gateway(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    await stack.login(browser, "alice")
    copied = browser.cookie_jar.filter_cookies(stack.url)["_reddit_gateway"].value

    async with browser.post(stack.url / "oauth2/sign_out", allow_redirects=False):
        pass

    async with aiohttp.ClientSession() as thief:
        async with thief.get(
            stack.url / "x",
            headers={"Cookie": f"_reddit_gateway={copied}", "Accept": "*/*"},
        ) as response:
            assert response.status == 401
    assert stack.upstream.received == []


async def test_sign_out_still_ends_the_session_when_reddit_is_down(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    await stack.login(browser, "alice")
    stack.reddit.fail_next("/api/v1/revoke_token", status=503, body="down")

    async with browser.get(stack.url / "oauth2/sign_out", allow_redirects=False) as r:
        assert r.status == 200
        text = await r.text()
        assert "signed out" in text.lower()
        assert "could not be reached to revoke" in text
    async with browser.get(stack.url / "x", headers={"Accept": "*/*"}) as after:
        assert after.status == 401


async def test_callback_replay_is_refused_and_the_code_redeemed_once(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    async with browser.get(stack.url / "oauth2/start", allow_redirects=False) as start:
        authorize = URL(start.headers["Location"])
    callback = await stack.consent(browser, authorize, "alice")
    async with browser.get(callback, allow_redirects=False) as first:
        assert first.status == 302

    async with browser.get(callback, allow_redirects=False) as replay:
        assert replay.status == 400
        assert "already signed in as u/alice" in await replay.text()
    assert token_calls(stack) == 1


async def test_login_csrf_state_from_another_browser_is_refused(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    async with browser.get(stack.url / "oauth2/start", allow_redirects=False) as start:
        authorize = URL(start.headers["Location"])
    callback = await stack.consent(browser, authorize, "attacker")

    async with stack.browser() as victim:
        async with victim.get(callback, allow_redirects=False) as response:
            assert response.status == 400
            assert "Set-Cookie" not in response.headers or "_reddit_gateway=" not in (
                response.headers.get("Set-Cookie", "")
            )
    assert token_calls(stack) == 0


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"code": "abc"},
        {"code": "abc", "state": "not-a-state-we-issued"},
        {"error": "access_denied", "state": "forged"},
    ],
)
async def test_callback_without_a_valid_state_sends_nothing_to_reddit(
    stack: Stack, browser: aiohttp.ClientSession, query: dict[str, str]
) -> None:
    async with browser.get(stack.url / "oauth2/start", allow_redirects=False):
        pass

    async with browser.get(
        stack.url / "oauth2/callback", params=query, allow_redirects=False
    ) as response:
        assert response.status == 400
        assert "Sign in with reddit" in await response.text()
    assert token_calls(stack) == 0


async def test_expired_state_is_refused(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    async with browser.get(stack.url / "oauth2/start", allow_redirects=False) as start:
        authorize = URL(start.headers["Location"])
    callback = await stack.consent(browser, authorize, "alice")
    stack.clock.advance(601)

    async with browser.get(callback, allow_redirects=False) as response:
        assert response.status == 400
    assert token_calls(stack) == 0


async def test_two_tabs_signing_in_at_once_both_finish(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    starts = []
    for rd in ("/tab-one", "/tab-two"):
        async with browser.get(
            stack.url / "oauth2/start", params={"rd": rd}, allow_redirects=False
        ) as start:
            starts.append(URL(start.headers["Location"]))
    callbacks = [await stack.consent(browser, a, "alice") for a in starts]

    locations = []
    for callback in reversed(callbacks):
        async with browser.get(callback, allow_redirects=False) as response:
            assert response.status == 302
            locations.append(response.headers["Location"])

    assert locations == ["/tab-two#", "/tab-one#"]


@pytest.mark.parametrize(
    "rd",
    [
        "//evil.example",
        "https://evil.example/",
        "/\\evil.example",
        "/\t/evil.example",
        "javascript:alert(1)",
        "/.//evil.example",
        "http://127.0.0.1.evil.example/",
    ],
)
async def test_open_redirect_after_login_lands_on_the_origin(
    stack: Stack, browser: aiohttp.ClientSession, rd: str
) -> None:
    response = await stack.login(browser, "alice", rd=rd)

    assert response.status == 302
    assert response.headers["Location"] == "/#"


@pytest.mark.parametrize(
    "spoof",
    [
        "X-Reddit-User",
        "x-reddit-user",
        "X_Reddit_User",
        "X-REDDIT-USER",
        "X-Reddit-Id",
        "X-Forwarded-For",
    ],
)
async def test_identity_header_spoofing_never_reaches_the_upstream(
    stack: Stack,
    browser: aiohttp.ClientSession,
    spoof: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await stack.login(browser, "alice")

    async with browser.get(stack.url / "x", headers={spoof: "admin"}) as response:
        assert response.status == 200

    received = stack.upstream.last
    assert received.all("X-Reddit-User") == ["alice"]
    assert all(value != "admin" for _, value in received.headers)


async def test_gateway_cookies_are_removed_and_others_kept(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    await stack.login(browser, "alice")
    browser.cookie_jar.update_cookies({"theme": "dark", "app_session": "xyz"})

    async with browser.get(stack.url / "x") as response:
        assert response.status == 200

    cookie = ";".join(stack.upstream.last.all("Cookie"))
    assert "theme=dark" in cookie
    assert "app_session=xyz" in cookie
    assert "_reddit_gateway" not in cookie


async def test_each_upstream_set_cookie_is_kept(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    await stack.login(browser, "alice")

    async with browser.get(stack.url / "set-cookies") as response:
        assert response.headers.getall("Set-Cookie") == [
            "a=1; Path=/",
            "b=2; Path=/; HttpOnly",
        ]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda v: v[:-5],
        lambda v: v[:10] + ("A" if v[10] != "A" else "B") + v[11:],
        lambda v: "garbage",
        lambda v: "",
        lambda v: "AAAA" + v,
        lambda v: "x" * 6000,
    ],
    ids=["truncated", "bit-flipped", "garbage", "empty", "prepended", "huge"],
)
async def test_broken_session_cookie_is_no_session_never_a_500(
    stack: Stack, browser: aiohttp.ClientSession, mangle: object
) -> None:
    await stack.login(browser, "alice")
    good = browser.cookie_jar.filter_cookies(stack.url)["_reddit_gateway"].value
    bad = mangle(good)  # type: ignore[operator]

    async with aiohttp.ClientSession() as client:
        async with client.get(
            stack.url / "x",
            headers={"Cookie": f"_reddit_gateway={bad}", "Accept": "*/*"},
        ) as response:
            assert response.status == 401
    assert len(stack.upstream.received) == 0


async def test_session_cookie_from_another_key_is_refused(
    make_stack: StackFactory,
) -> None:
    one = await make_stack()
    two = await make_stack(session_secret="another-secret-0123456789abcdefghij")
    async with one.browser() as browser:
        await one.login(browser, "alice")
        cookie = browser.cookie_jar.filter_cookies(one.url)["_reddit_gateway"].value

    async with aiohttp.ClientSession() as client:
        async with client.get(
            two.url / "x",
            headers={"Cookie": f"_reddit_gateway={cookie}", "Accept": "*/*"},
        ) as response:
            assert response.status == 401


async def test_session_expires_after_max_age(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    await stack.login(browser, "alice")
    stack.clock.advance(stack.config.session.max_age + 1)

    async with browser.get(stack.url / "x", headers={"Accept": "*/*"}) as response:
        assert response.status == 401


@pytest.mark.parametrize(
    ("path", "status", "body", "content_type", "expected", "words"),
    [
        ("/api/v1/access_token", 200, {"error": "invalid_grant"}, None, 400, "expired"),
        (
            "/api/v1/access_token",
            200,
            {"error": "invalid_request"},
            None,
            502,
            "reddit",
        ),
        (
            "/api/v1/access_token",
            401,
            {"message": "Unauthorized", "error": 401},
            None,
            502,
            "client_secret",
        ),
        (
            "/api/v1/access_token",
            429,
            {"message": "Too Many Requests"},
            None,
            502,
            "try",
        ),
        (
            "/api/v1/access_token",
            403,
            "<html>whoa there, pardner!</html>",
            None,
            502,
            "try",
        ),
        ("/api/v1/access_token", 500, "<html>oops</html>", None, 502, "try"),
        ("/api/v1/access_token", 200, "<html>not json</html>", None, 502, "try"),
        (
            "/api/v1/me",
            401,
            {"message": "Unauthorized", "error": 401},
            None,
            502,
            "try",
        ),
        ("/api/v1/me", 200, {"features": {}}, None, 403, "which account"),
        (
            "/api/v1/me",
            200,
            {"name": "bad name!", "id": "1"},
            None,
            403,
            "which account",
        ),
        (
            "/api/v1/me",
            200,
            {"name": "x\r\nX-Evil: 1", "id": "1"},
            None,
            403,
            "which account",
        ),
    ],
)
async def test_reddit_failures_at_callback_give_clear_pages_never_500(
    stack: Stack,
    browser: aiohttp.ClientSession,
    path: str,
    status: int,
    body: object,
    content_type: str | None,
    expected: int,
    words: str,
) -> None:
    stack.reddit.fail_next(path, status=status, body=body, content_type=content_type)  # type: ignore[arg-type]

    response = await stack.login(browser, "alice")

    assert response.status == expected
    text = await response.text()
    assert words.lower() in text.lower()
    assert "Try again" in text or "Start again" in text
    assert "_reddit_gateway=" not in response.headers.get("Set-Cookie", "")


async def test_reddit_timeout_at_callback_is_a_502(make_stack: StackFactory) -> None:
    stack = await make_stack(reddit_timeout="0.3")
    stack.reddit.fail_next("/api/v1/access_token", status=None, delay=1.0)
    async with stack.browser() as browser:
        response = await stack.login(browser, "alice")

    assert response.status == 502
    assert "not answering" in await response.text()


async def junk_callback(stack: Stack, browser: aiohttp.ClientSession) -> int:
    """A fresh state of this browser's, with a code reddit never issued."""
    async with browser.get(stack.url / "oauth2/start", allow_redirects=False) as start:
        state = URL(start.headers["Location"]).query["state"]
    callback = URL(stack.config.server.redirect_url).with_query(
        state=state, code="junk-code"
    )
    async with browser.get(callback, allow_redirects=False) as response:
        return response.status


async def test_reddit_call_amplification_by_junk_callbacks_stops_at_the_burst(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(reddit_sign_in_burst="3", reddit_sign_ins_per_second="0.5")
    assert stack.config.reddit.sign_in_burst == 3

    async with stack.browser() as attacker:
        statuses = [await junk_callback(stack, attacker) for _ in range(5)]
    assert statuses == [400, 400, 400, 429, 429]
    assert token_calls(stack) == 3

    async with stack.browser() as browser:
        refused = await stack.login(browser, "alice")
        assert refused.status == 429
        assert "Too many sign-ins" in await refused.text()
        assert token_calls(stack) == 3

        stack.clock.advance(2)  # one sign-in's worth at 0.5 a second
        finished = await stack.login(browser, "alice")
        assert finished.status == 302
        assert await junk_callback(stack, browser) == 429
    assert token_calls(stack) == 4


async def test_declined_consent_is_a_friendly_page_without_a_loop(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    response = await stack.login(browser, "alice", rd="/somewhere", allow=False)

    assert response.status == 403
    text = await response.text()
    assert "declined" in text
    assert "/oauth2/start?rd=%2Fsomewhere" in text
    assert "Location" not in response.headers
    assert token_calls(stack) == 0


async def test_access_users_admits_listed_and_refuses_others(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(access_users="Alice,bob")
    async with stack.browser() as allowed, stack.browser() as refused:
        await stack.login(allowed, "alice")
        async with allowed.get(stack.url / "x") as ok:
            assert ok.status == 200

        response = await stack.login(refused, "mallory")
        assert response.status == 403
        text = await response.text()
        assert "u/mallory" in text
        assert "/oauth2/sign_out" in text
        async with refused.get(stack.url / "x", headers=HTML) as page:
            assert page.status == 403
        async with refused.get(stack.url / "x", headers={"Accept": "*/*"}) as api:
            assert api.status == 403
            assert (await api.json())["error"] == "forbidden"
    assert [r.header("X-Reddit-User") for r in stack.upstream.received] == ["alice"]


async def test_auth_endpoint_for_auth_request(make_stack: StackFactory) -> None:
    stack = await make_stack(access_users="alice")
    async with stack.browser() as anon:
        async with anon.get(stack.url / "oauth2/auth") as response:
            assert response.status == 401
    async with stack.browser() as alice:
        await stack.login(alice, "Alice")
        async with alice.get(stack.url / "oauth2/auth") as response:
            assert response.status == 202
            assert response.headers["X-Reddit-User"] == "Alice"
    async with stack.browser() as eve:
        await stack.login(eve, "eve")
        async with eve.get(stack.url / "oauth2/auth") as response:
            assert response.status == 403


async def test_userinfo_shows_identity_and_never_tokens(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    async with browser.get(stack.url / "oauth2/userinfo") as anon:
        assert anon.status == 401
    await stack.login(browser, "alice")

    async with browser.get(stack.url / "oauth2/userinfo") as response:
        info = await response.json()
        text = await response.text()

    assert info["user"] == "alice"
    assert info["id"].startswith("t2_")
    assert "token" not in text
    assert "eyJ" not in text


async def test_ping_and_ready(make_stack: StackFactory) -> None:
    stack = await make_stack()
    down = await make_stack(upstream_url="http://127.0.0.1:9")
    async with aiohttp.ClientSession() as client:
        async with client.get(stack.url / "oauth2/ping") as ping:
            assert ping.status == 200
        async with client.get(stack.url / "oauth2/ready") as ready:
            assert ready.status == 200
        async with client.get(down.url / "oauth2/ready") as not_ready:
            assert not_ready.status == 503


async def test_unknown_gateway_path_is_a_404_not_the_upstreams(stack: Stack) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(stack.url / "oauth2/nope") as response:
            assert response.status == 404
    assert stack.upstream.received == []


async def test_upstream_unreachable_is_a_502(make_stack: StackFactory) -> None:
    stack = await make_stack(upstream_url="http://127.0.0.1:9")
    async with stack.browser() as browser:
        await stack.login(browser, "alice")
        async with browser.get(stack.url / "x") as response:
            assert response.status == 502


async def test_no_token_code_or_secret_reaches_the_log(
    stack: Stack, browser: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with browser.get(stack.url / "oauth2/start", allow_redirects=False) as start:
        authorize = URL(start.headers["Location"])
    callback = await stack.consent(browser, authorize, "alice")
    async with browser.get(callback, allow_redirects=False):
        pass
    async with browser.get(callback, allow_redirects=False):
        pass  # a replay, logged as a failure
    session_cookie = browser.cookie_jar.filter_cookies(stack.url)[
        "_reddit_gateway"
    ].value
    async with browser.post(stack.url / "oauth2/sign_out", allow_redirects=False):
        pass
    await asyncio.sleep(0)

    token_answers = [c for c in stack.reddit.calls if c.path == "/api/v1/revoke_token"]
    secrets = [
        callback.query["code"],
        authorize.query["state"],
        session_cookie,
        token_answers[0].form["token"],
        stack.config.reddit.client_secret.reveal(),
        stack.config.session.secrets[0].reveal(),
    ]
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert "login_ok" in logged
    for secret in secrets:
        assert secret not in logged


@pytest.mark.parametrize(
    ("content_type", "extra", "body"),
    [
        ("application/x-www-form-urlencoded; charset=bogus", {}, b"rd=/x"),
        ("application/x-www-form-urlencoded; charset=utf-16", {}, b"rd=/x"),
        ("multipart/form-data; boundary=zzz", {}, b"--zzz\r\nbroken"),
        ("application/x-www-form-urlencoded", {"Content-Encoding": "gzip"}, b"rd=/x"),
        ("application/x-www-form-urlencoded", {}, b"\xff\xferd=/x"),
    ],
    ids=["bogus-charset", "utf-16", "broken-multipart", "fake-gzip", "bad-bytes"],
)
async def test_sign_out_with_a_broken_form_body_still_signs_out(
    stack: Stack,
    browser: aiohttp.ClientSession,
    content_type: str,
    extra: dict[str, str],
    body: bytes,
) -> None:
    await stack.login(browser, "alice")

    async with browser.post(
        stack.url / "oauth2/sign_out",
        data=body,
        headers={"Content-Type": content_type, **extra},
        allow_redirects=False,
    ) as response:
        assert response.status == 200
        assert "Max-Age=0" in response.headers.get("Set-Cookie", "")


async def test_sign_in_denial_by_login_cookie_pile_up_is_cleared(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    starts = []
    for index in range(8):
        stack.clock.advance(1)
        async with browser.get(
            stack.url / "oauth2/start",
            params={"rd": f"/tab{index}"},
            allow_redirects=False,
        ) as start:
            starts.append(URL(start.headers["Location"]))
    callback = await stack.consent(browser, starts[-1], "alice")

    async with browser.get(callback, allow_redirects=False) as response:
        assert response.status == 302
        cleared = [
            c.split("=", 1)[0]
            for c in response.headers.getall("Set-Cookie")
            if "_login_" in c and "Max-Age=0" in c
        ]

    assert len(cleared) == 5  # four of the oldest, and the one just used
    remaining = [
        c.key for c in browser.cookie_jar if c.key.startswith("_reddit_gateway_login_")
    ]
    assert len(remaining) == 3


async def test_a_session_too_large_for_a_cookie_is_a_clear_page_not_a_loop(
    stack: Stack, browser: aiohttp.ClientSession
) -> None:
    stack.reddit.token_padding = 2600  # an access token of about 4 KB

    response = await stack.login(browser, "alice")

    assert response.status == 502
    assert "session.store = &quot;redis&quot;" in await response.text()
    assert "_reddit_gateway=" not in response.headers.get("Set-Cookie", "")
