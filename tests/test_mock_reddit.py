"""The offline reddit keeps reddit's rules: consent, codes, tokens, revocation, /me."""

from __future__ import annotations

import asyncio
import base64
import html
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from gateway.mock_reddit import MockReddit

CLIENT_ID = "mockclient123456"
CLIENT_SECRET = "mock-secret-0123456789abcdefg"
OTHER_ID = "otherclient98765"
OTHER_SECRET = "other-secret-0123456789abcdef"
REDIRECT = "https://gw.example.com/oauth2/callback"
UA = "web:com.example.gateway:v1.0 (by /u/operator)"
START = 1_700_000_000.0

ClientFactory = Callable[[Any], Awaitable[TestClient[Any, Any]]]


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def basic(client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def authorize_params(**overrides: str) -> dict[str, str]:
    params = {
        "client_id": CLIENT_ID,
        "response_type": "code",
        "state": "state-123",
        "redirect_uri": REDIRECT,
        "duration": "temporary",
        "scope": "identity",
    }
    params.update(overrides)
    return {key: value for key, value in params.items() if value != "<omit>"}


def form_fields(page: str) -> dict[str, str]:
    pairs = re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page)
    return {name: html.unescape(value) for name, value in pairs}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mock(clock: FakeClock) -> MockReddit:
    reddit = MockReddit(clock=clock)
    reddit.add_client(CLIENT_ID, CLIENT_SECRET, REDIRECT)
    reddit.add_client(OTHER_ID, OTHER_SECRET, "https://other.example/cb")
    reddit.add_user("Example_User-42", link_karma=1520, comment_karma=8834)
    return reddit


@pytest.fixture
async def client(
    mock: MockReddit, aiohttp_client: ClientFactory
) -> TestClient[Any, Any]:
    return await aiohttp_client(mock.app())


async def consent(
    client: TestClient[Any, Any], username: str = "example_user-42", **overrides: str
) -> URL:
    """Fill in the consent page as a person would; return the redirect target."""
    page = await client.get("/api/v1/authorize", params=authorize_params(**overrides))
    assert page.status == 200
    fields = form_fields(await page.text())

    fields.update(username=username, authorize="Allow")
    answer = await client.post("/api/v1/authorize", data=fields, allow_redirects=False)
    assert answer.status == 302
    return URL(answer.headers["Location"])


async def redeem(
    client: TestClient[Any, Any], code: str, /, **overrides: str
) -> dict[str, Any]:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    auth = overrides.pop("auth", basic())
    form.update(overrides)
    answer = await client.post(
        "/api/v1/access_token",
        data=form,
        headers={"Authorization": auth, "User-Agent": UA},
    )
    assert answer.status == 200
    body: dict[str, Any] = await answer.json()
    return body


async def login(client: TestClient[Any, Any], **overrides: str) -> dict[str, Any]:
    target = await consent(client, **overrides)
    return await redeem(client, target.query["code"])


async def me(
    client: TestClient[Any, Any], token: str, query: str = "?raw_json=1"
) -> Any:
    return await client.get(
        f"/api/v1/me{query}",
        headers={"Authorization": f"bearer {token}", "User-Agent": UA},
    )


# --- consent page -----------------------------------------------------------------


async def test_consent_page_is_usable_by_a_person(client: TestClient[Any, Any]) -> None:
    answer = await client.get(
        "/api/v1/authorize", params=authorize_params(scope="identity mysubreddits")
    )

    page = await answer.text()
    assert answer.status == 200
    assert answer.content_type == "text/html"
    assert '<label for="username">' in page
    assert 'id="username" name="username"' in page
    assert 'value="Allow">Allow</button>' in page
    assert 'value="Decline" formnovalidate>Decline</button>' in page
    assert CLIENT_ID in page
    assert "<code>identity</code>" in page and "<code>mysubreddits</code>" in page
    assert "<style>" in page
    assert "src=" not in page and "<link" not in page and "@import" not in page
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]


async def test_consent_page_compact_variant(client: TestClient[Any, Any]) -> None:
    answer = await client.get("/api/v1/authorize.compact", params=authorize_params())

    assert answer.status == 200
    assert 'action="/api/v1/authorize.compact"' in await answer.text()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"client_id": "nosuchclient"}, "invalid client id"),
        ({"client_id": "<omit>"}, "invalid client id"),
        ({"redirect_uri": REDIRECT + "/"}, "invalid redirect_uri parameter"),
        ({"redirect_uri": REDIRECT.replace("https", "http")}, "invalid redirect_uri"),
        ({"redirect_uri": "https://GW.example.com/oauth2/callback"}, "redirect_uri"),
        (
            {"redirect_uri": "https://gw.example.com:443/oauth2/callback"},
            "redirect_uri",
        ),
        ({"redirect_uri": "<omit>"}, "invalid redirect_uri parameter"),
        ({"response_type": "token"}, "invalid response type"),
        ({"response_type": "<omit>"}, "invalid response type"),
        ({"scope": "identity nosuchscope"}, "invalid scope requested"),
        ({"scope": ""}, "invalid scope requested"),
        ({"state": "<omit>"}, "state parameter is required"),
        ({"state": ""}, "state parameter is required"),
        ({"duration": "forever"}, "invalid duration"),
    ],
)
async def test_consent_page_refuses_bad_requests_without_redirect(
    client: TestClient[Any, Any], overrides: dict[str, str], message: str
) -> None:
    query = authorize_params(**overrides)

    shown = await client.get("/api/v1/authorize", params=query)
    posted = await client.post(
        "/api/v1/authorize",
        data={**query, "username": "bob", "authorize": "Allow"},
        allow_redirects=False,
    )

    for answer in (shown, posted):
        assert answer.status == 400
        assert "Location" not in answer.headers
        assert message in await answer.text()


@pytest.mark.parametrize("scope", ["identity,read", "identity read", "read  identity"])
async def test_consent_scope_separators_like_reddit(
    client: TestClient[Any, Any], scope: str
) -> None:
    token = await login(client, scope=scope)

    assert token["scope"] == "identity read"


async def test_consent_page_escapes_state_reflected_xss(
    client: TestClient[Any, Any],
) -> None:
    evil = '"><script>alert(1)</script>'

    answer = await client.get("/api/v1/authorize", params=authorize_params(state=evil))

    page = await answer.text()
    assert "<script>" not in page
    assert form_fields(page)["state"] == evil


async def test_allow_redirects_with_state_and_code(
    client: TestClient[Any, Any],
) -> None:
    target = await consent(client, state="s t&a=te")

    assert str(target.with_query(None).with_fragment(None)) == REDIRECT
    assert target.query["state"] == "s t&a=te"
    assert len(target.query["code"]) >= 20
    assert target.fragment == "_"


async def test_allow_keeps_query_of_registered_redirect(
    mock: MockReddit, aiohttp_client: ClientFactory
) -> None:
    mock.add_client("queryclient12345", "s" * 27, "https://q.example/cb?tenant=7")
    client = await aiohttp_client(mock.app())

    target = await consent(
        client,
        client_id="queryclient12345",
        redirect_uri="https://q.example/cb?tenant=7",
    )

    assert target.query["tenant"] == "7"
    assert "code" in target.query


async def test_decline_redirects_access_denied(client: TestClient[Any, Any]) -> None:
    fields = {**authorize_params(), "authorize": "Decline"}

    answer = await client.post("/api/v1/authorize", data=fields, allow_redirects=False)

    target = URL(answer.headers["Location"])
    assert answer.status == 302
    assert dict(target.query) == {"state": "state-123", "error": "access_denied"}


async def test_allow_without_username_asks_again(client: TestClient[Any, Any]) -> None:
    fields = {**authorize_params(), "username": "", "authorize": "Allow"}

    answer = await client.post("/api/v1/authorize", data=fields, allow_redirects=False)

    assert answer.status == 400
    assert "Type a username first." in await answer.text()


@pytest.mark.parametrize(
    "typed", ["ab", "bob smith", "bób", "bob\r\nX-Evil: 1", "x" * 40]
)
async def test_consent_accepts_any_typed_name_for_gateway_tests(
    client: TestClient[Any, Any], typed: str
) -> None:
    token = await login(client, username=typed)

    answer = await me(client, token["access_token"])
    assert (await answer.json())["name"] == typed


async def test_known_user_gets_canonical_casing(client: TestClient[Any, Any]) -> None:
    token = await login(client, username="EXAMPLE_user-42")

    body = await (await me(client, token["access_token"])).json()
    assert body["name"] == "Example_User-42"
    assert body["link_karma"] == 1520


# --- token endpoint ---------------------------------------------------------------


async def test_token_answer_shape(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    first = await login(client, scope="mysubreddits identity")
    second = await login(client)

    token = first["access_token"]
    assert set(first) == {"access_token", "token_type", "expires_in", "scope"}
    assert first["token_type"] == "bearer"
    assert first["expires_in"] == mock.expires_in == 86400
    assert first["scope"] == "identity mysubreddits"
    assert len(token) >= 900
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)
    assert token != second["access_token"]
    assert token.split(".")[2] != second["access_token"].split(".")[2]


@pytest.mark.parametrize(
    "auth",
    [
        "",
        basic(secret="wrong-secret"),
        basic(CLIENT_SECRET, CLIENT_ID),
        basic(OTHER_ID, CLIENT_SECRET),
        basic(CLIENT_ID, CLIENT_SECRET + " "),
        "Basic !!!notbase64",
        f"Bearer {CLIENT_SECRET}",
    ],
)
async def test_token_requires_basic_auth(
    client: TestClient[Any, Any], auth: str
) -> None:
    target = await consent(client)
    headers = {"User-Agent": UA}
    if auth:
        headers["Authorization"] = auth

    answer = await client.post(
        "/api/v1/access_token",
        data={"grant_type": "authorization_code", "code": target.query["code"]},
        headers=headers,
    )

    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="reddit"'
    assert await answer.json() == {"message": "Unauthorized", "error": 401}


async def test_token_refuses_credentials_in_form_body(
    client: TestClient[Any, Any],
) -> None:
    target = await consent(client)
    form = {
        "grant_type": "authorization_code",
        "code": target.query["code"],
        "redirect_uri": REDIRECT,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }

    answer = await client.post(
        "/api/v1/access_token", data=form, headers={"User-Agent": UA}
    )

    assert answer.status == 401


@pytest.mark.parametrize(
    "agent",
    [
        None,
        "",
        "python-requests/2.31.0",
        "aiohttp/3.9",
        "Python/3.11 aiohttp/3.14.5",
        "Python-urllib/3.11",
        "curl/8.5.0",
        "CURL/8.5.0",
        "PYTHON-REQUESTS/2",
    ],
)
@pytest.mark.parametrize(
    "path", ["/api/v1/access_token", "/api/v1/revoke_token", "/api/v1/me"]
)
async def test_default_user_agent_is_throttled(
    client: TestClient[Any, Any], agent: str | None, path: str
) -> None:
    headers = {"Authorization": basic()}
    if agent is not None:
        headers["User-Agent"] = agent
    skip = ["User-Agent"] if agent is None else []

    answer = await client.request(
        "GET" if path.endswith("/me") else "POST",
        path,
        headers=headers,
        skip_auto_headers=skip,
        data={"grant_type": "client_credentials"} if path.endswith("token") else None,
    )

    assert answer.status == 429
    assert await answer.json() == {"message": "Too Many Requests", "error": 429}


async def test_code_replay_revokes_tokens(client: TestClient[Any, Any]) -> None:
    target = await consent(client)
    first = await redeem(client, target.query["code"])
    assert (await me(client, first["access_token"])).status == 200

    second = await redeem(client, target.query["code"])

    assert second == {"error": "invalid_grant"}
    answer = await me(client, first["access_token"])
    assert answer.status == 401
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]


async def test_code_replay_revokes_refresh_token_too(
    client: TestClient[Any, Any],
) -> None:
    target = await consent(client, duration="permanent")
    first = await redeem(client, target.query["code"])

    await redeem(client, target.query["code"])

    refreshed = await client.post(
        "/api/v1/access_token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        headers={"Authorization": basic(), "User-Agent": UA},
    )
    assert refreshed.status == 400


@pytest.mark.parametrize(("age", "works"), [(0, True), (599, True), (600, False)])
async def test_code_lives_ten_minutes(
    client: TestClient[Any, Any], clock: FakeClock, age: float, works: bool
) -> None:
    target = await consent(client)

    clock.now += age
    body = await redeem(client, target.query["code"])

    assert ("access_token" in body) is works
    assert body.get("error") == (None if works else "invalid_grant")


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"redirect_uri": REDIRECT + "/"}, "invalid_grant"),
        ({"redirect_uri": ""}, "invalid_request"),
        ({"code": ""}, "invalid_request"),
        ({"code": "nosuchcode"}, "invalid_grant"),
        ({"auth": basic(OTHER_ID, OTHER_SECRET)}, "invalid_grant"),
        ({"grant_type": "implicit"}, "unsupported_grant_type"),
        ({"grant_type": ""}, "unsupported_grant_type"),
        ({"grant_type": "password"}, "unauthorized_client"),
    ],
)
async def test_token_errors_come_in_200_bodies(
    client: TestClient[Any, Any], overrides: dict[str, str], error: str
) -> None:
    target = await consent(client)

    body = await redeem(client, target.query["code"], **overrides)

    assert body["error"] == error
    assert "access_token" not in body


async def test_password_grant_error_has_description(
    client: TestClient[Any, Any],
) -> None:
    body = await redeem(client, "x", grant_type="password")

    assert body == {
        "error": "unauthorized_client",
        "error_description": "Only script apps may use password auth",
    }


async def test_json_body_is_not_a_form(client: TestClient[Any, Any]) -> None:
    target = await consent(client)

    answer = await client.post(
        "/api/v1/access_token",
        json={"grant_type": "authorization_code", "code": target.query["code"]},
        headers={"Authorization": basic(), "User-Agent": UA},
    )

    assert await answer.json() == {"error": "unsupported_grant_type"}


async def test_access_token_expires_per_expires_in(
    client: TestClient[Any, Any], mock: MockReddit, clock: FakeClock
) -> None:
    mock.expires_in = 3600
    token = await login(client)
    assert token["expires_in"] == 3600

    clock.now += 3599
    assert (await me(client, token["access_token"])).status == 200
    clock.now += 1
    assert (await me(client, token["access_token"])).status == 401


# --- refresh and revoke -----------------------------------------------------------


async def test_temporary_grant_has_no_refresh_token(
    client: TestClient[Any, Any],
) -> None:
    assert "refresh_token" not in await login(client)


async def test_refresh_returns_new_access_and_refresh_field(
    client: TestClient[Any, Any],
) -> None:
    first = await login(client, duration="permanent", scope="identity read")

    answer = await client.post(
        "/api/v1/access_token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        headers={"Authorization": basic(), "User-Agent": UA},
    )

    body = await answer.json()
    assert answer.status == 200
    assert body["refresh_token"] == first["refresh_token"]
    assert body["access_token"] != first["access_token"]
    assert body["scope"] == "identity read"
    assert (await me(client, body["access_token"])).status == 200


@pytest.mark.parametrize("refresh", ["", "123-unknown"])
async def test_refresh_unknown_token_is_400(
    client: TestClient[Any, Any], refresh: str
) -> None:
    answer = await client.post(
        "/api/v1/access_token",
        data={"grant_type": "refresh_token", "refresh_token": refresh},
        headers={"Authorization": basic(), "User-Agent": UA},
    )

    assert answer.status == 400
    assert await answer.json() == {"error": "invalid_request"}


async def test_refresh_by_another_client_is_refused(
    client: TestClient[Any, Any],
) -> None:
    first = await login(client, duration="permanent")

    answer = await client.post(
        "/api/v1/access_token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        headers={"Authorization": basic(OTHER_ID, OTHER_SECRET), "User-Agent": UA},
    )

    assert answer.status == 400


async def revoke(
    client: TestClient[Any, Any], token: str, auth: str | None = None
) -> Any:
    return await client.post(
        "/api/v1/revoke_token",
        data={"token": token, "token_type_hint": "access_token"},
        headers={"Authorization": auth or basic(), "User-Agent": UA},
    )


async def test_revoke_access_token(client: TestClient[Any, Any]) -> None:
    token = await login(client)

    answer = await revoke(client, token["access_token"])

    assert answer.status == 200
    assert await answer.read() == b""
    assert (await me(client, token["access_token"])).status == 401


async def test_revoke_refresh_token_kills_its_access_tokens(
    client: TestClient[Any, Any],
) -> None:
    first = await login(client, duration="permanent")

    assert (await revoke(client, first["refresh_token"])).status == 200

    assert (await me(client, first["access_token"])).status == 401
    refreshed = await client.post(
        "/api/v1/access_token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        headers={"Authorization": basic(), "User-Agent": UA},
    )
    assert refreshed.status == 400


async def test_revoke_unknown_token_succeeds(client: TestClient[Any, Any]) -> None:
    assert (await revoke(client, "no-such-token")).status == 200


async def test_revoke_other_clients_token_is_refused(
    client: TestClient[Any, Any],
) -> None:
    token = await login(client)

    answer = await revoke(client, token["access_token"], basic(OTHER_ID, OTHER_SECRET))

    assert answer.status == 400
    assert await answer.json() == {"error": "unauthorized_client"}
    assert (await me(client, token["access_token"])).status == 200


async def test_revoke_requires_basic_auth(client: TestClient[Any, Any]) -> None:
    token = await login(client)

    answer = await revoke(client, token["access_token"], basic(secret="wrong"))

    assert answer.status == 401
    assert (await me(client, token["access_token"])).status == 200


# --- /api/v1/me -------------------------------------------------------------------


async def test_me_normal_account(client: TestClient[Any, Any]) -> None:
    token = await login(client)

    answer = await me(client, token["access_token"])

    body = await answer.json()
    assert answer.status == 200
    assert body["name"] == "Example_User-42"
    assert re.fullmatch(r"[0-9a-z]{8}", body["id"])
    assert body["is_suspended"] is False
    assert body["has_verified_email"] is True
    assert isinstance(body["created_utc"], float)
    assert body["total_karma"] == 1520 + 8834
    assert answer.headers["X-Ratelimit-Remaining"] == "999.0"


async def test_me_escapes_urls_without_raw_json(client: TestClient[Any, Any]) -> None:
    token = await login(client)

    escaped = await (await me(client, token["access_token"], query="")).json()
    raw = await (await me(client, token["access_token"])).json()

    assert "&amp;" in escaped["icon_img"]
    assert "&amp;" not in raw["icon_img"] and "&" in raw["icon_img"]


@pytest.mark.parametrize(
    ("header", "status", "challenge"),
    [
        (None, 401, 'Bearer realm="reddit"'),
        ("bearer no-such-token", 401, 'Bearer realm="reddit", error="invalid_token"'),
        ("Basic abc", 400, 'Bearer realm="reddit", error="invalid_request"'),
        ("bearer", 400, 'Bearer realm="reddit", error="invalid_request"'),
    ],
)
async def test_me_refuses_bad_bearer(
    client: TestClient[Any, Any], header: str | None, status: int, challenge: str
) -> None:
    headers = {"User-Agent": UA}
    if header is not None:
        headers["Authorization"] = header

    answer = await client.get("/api/v1/me", headers=headers)

    assert answer.status == status
    assert answer.headers["WWW-Authenticate"] == challenge


async def test_me_bearer_scheme_is_case_insensitive(
    client: TestClient[Any, Any],
) -> None:
    token = await login(client)

    answer = await client.get(
        "/api/v1/me",
        headers={"Authorization": f"BEARER {token['access_token']}", "User-Agent": UA},
    )

    assert answer.status == 200


async def test_me_without_identity_scope_is_403(client: TestClient[Any, Any]) -> None:
    token = await login(client, scope="read")

    answer = await me(client, token["access_token"])

    assert answer.status == 403
    assert 'error="insufficient_scope"' in answer.headers["WWW-Authenticate"]
    assert await answer.json() == {"error": 403}


async def test_me_app_only_token_has_no_name(client: TestClient[Any, Any]) -> None:
    answer = await client.post(
        "/api/v1/access_token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic(), "User-Agent": UA},
    )
    token = await answer.json()
    assert token["scope"] == "*"

    body = await (await me(client, token["access_token"])).json()

    assert "name" not in body
    assert "features" in body


async def test_me_suspended_account_is_minimal(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    mock.add_user("Banned_Example", is_suspended=True)
    token = await login(client, username="banned_example")

    body = await (await me(client, token["access_token"])).json()

    assert body["name"] == "Banned_Example"
    assert body["is_suspended"] is True
    assert "id" not in body and "link_karma" not in body


async def test_me_temporarily_suspended_account_is_full(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    mock.add_user("Paused_User", is_suspended=True, suspension_expiration_utc=2e9)
    token = await login(client, username="Paused_User")

    body = await (await me(client, token["access_token"])).json()

    assert body["is_suspended"] is True
    assert "link_karma" in body


async def test_me_fields_and_override(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    mock.add_user("Odd_One", has_verified_email=False, created_utc=1.5, id="zz9")
    mock.add_user("App_Like", me_override={"features": {"chat": False}})

    odd = await (
        await me(client, (await login(client, username="odd_one"))["access_token"])
    ).json()
    app_like = await me(
        client, (await login(client, username="app_like"))["access_token"]
    )

    assert (odd["has_verified_email"], odd["created_utc"], odd["id"]) == (
        False,
        1.5,
        "zz9",
    )
    assert await app_like.json() == {"features": {"chat": False}}


# --- test knobs -------------------------------------------------------------------


async def test_calls_are_recorded(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    target = await consent(client)
    await redeem(client, target.query["code"])

    token_call = mock.calls[-1]
    assert [call.path for call in mock.calls] == [
        "/api/v1/authorize",
        "/api/v1/authorize",
        "/api/v1/access_token",
    ]
    assert mock.calls[0].method == "GET"
    assert mock.calls[0].query["state"] == "state-123"
    assert mock.calls[1].form["username"] == "example_user-42"
    assert token_call.method == "POST"
    assert token_call.headers["user-agent"] == UA
    assert token_call.headers["Authorization"] == basic()
    assert token_call.form["code"] == target.query["code"]
    assert token_call.form["redirect_uri"] == REDIRECT


async def test_fail_next_is_one_shot(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    mock.fail_next(
        "/api/v1/me",
        status=503,
        body="<html>down</html>",
        headers={"Retry-After": "3"},
    )
    mock.fail_next("/api/v1/me", status=429, body={"message": "Too Many Requests"})
    token = await login(client)

    first = await me(client, token["access_token"])
    second = await me(client, token["access_token"])
    third = await me(client, token["access_token"])

    assert (first.status, first.content_type) == (503, "text/html")
    assert first.headers["Retry-After"] == "3"
    assert await first.text() == "<html>down</html>"
    assert (second.status, second.content_type) == (429, "application/json")
    assert await second.json() == {"message": "Too Many Requests"}
    assert third.status == 200


async def test_fail_next_delay_then_normal_answer(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    token = await login(client)
    mock.fail_next("/api/v1/me", status=None, delay=0.05)

    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await me(client, token["access_token"])

    assert answer.status == 200
    assert loop.time() - started >= 0.05


# --- subreddit listings -------------------------------------------------------------


async def listing(
    client: TestClient[Any, Any], token: str, kind: str = "moderator", **query: str
) -> Any:
    return await client.get(
        f"/subreddits/mine/{kind}",
        params={"raw_json": "1", **query},
        headers={"Authorization": f"bearer {token}", "User-Agent": UA},
    )


async def member_token(client: TestClient[Any, Any], username: str) -> str:
    token = await login(client, username=username, scope="identity mysubreddits")
    access: str = token["access_token"]
    return access


async def test_listing_shaped_like_reddit(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    mock.add_user("Example_User-42", moderator_of=["ExampleCommunity"])
    token = await member_token(client, "example_user-42")

    answer = await listing(client, token, limit="2")

    body = await answer.json()
    assert answer.status == 200
    assert body["kind"] == "Listing"
    data = body["data"]
    assert set(data) == {"after", "dist", "modhash", "geo_filter", "children", "before"}
    assert (data["after"], data["before"], data["dist"]) == (None, None, 2)
    community, profile = (child["data"] for child in data["children"])
    assert {child["kind"] for child in data["children"]} == {"t5"}
    assert community["display_name"] == "ExampleCommunity"
    assert community["display_name_prefixed"] == "r/ExampleCommunity"
    assert community["name"] == f"t5_{community['id']}"
    assert community["url"] == "/r/ExampleCommunity/"
    assert community["subreddit_type"] == "public"
    assert community["user_is_moderator"] is True
    assert community["user_is_subscriber"] is False
    assert profile["display_name"] == "u_Example_User-42"
    assert profile["display_name_prefixed"] == "u/Example_User-42"
    assert profile["subreddit_type"] == "user"
    assert profile["url"] == "/user/Example_User-42/"


async def test_listing_pages_follow_after(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    names = ["one", "Two", "three", "Four", "five"]
    mock.add_user("Example_User-42", subscriber_of=names)
    mock.page_size = 2
    token = await member_token(client, "example_user-42")

    pages: list[dict[str, Any]] = []
    after: str | None = None
    while after is not None or not pages:
        query = {"limit": "100", **({"after": after} if after else {})}
        page = (await (await listing(client, token, "subscriber", **query)).json())[
            "data"
        ]
        pages.append(page)
        after = page["after"]

    seen = [
        child["data"]["display_name"] for page in pages for child in page["children"]
    ]
    assert seen == names
    assert [page["dist"] for page in pages] == [2, 2, 1]
    assert pages[0]["after"] == pages[0]["children"][-1]["data"]["name"]
    assert pages[1]["before"] == pages[1]["children"][0]["data"]["name"]


@pytest.mark.parametrize(
    ("limit", "page_size", "dist"),
    [(None, 100, 25), ("10", 100, 10), ("1000", 100, 30), ("0", 100, 1),
     ("many", 100, 25), ("100", 7, 7)],
)  # fmt: skip
async def test_listing_limit_like_reddit(
    client: TestClient[Any, Any],
    mock: MockReddit,
    limit: str | None,
    page_size: int,
    dist: int,
) -> None:
    mock.add_user("Example_User-42", subscriber_of=[f"sub_{i:02d}" for i in range(30)])
    mock.page_size = page_size
    token = await member_token(client, "example_user-42")

    query = {} if limit is None else {"limit": limit}
    body = await (await listing(client, token, "subscriber", **query)).json()

    assert body["data"]["dist"] == dist


async def test_listing_unknown_after_is_an_empty_page(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    mock.add_user("Example_User-42", subscriber_of=["one", "two"])
    token = await member_token(client, "example_user-42")

    body = await (await listing(client, token, "subscriber", after="t5_nope")).json()

    assert (body["data"]["children"], body["data"]["after"]) == ([], None)


async def test_listing_kinds_are_separate(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    mock.add_user(
        "Example_User-42",
        moderator_of=["Modded"],
        subscriber_of=["Modded", "Read"],
        contributor_of=["Approved"],
    )
    token = await member_token(client, "example_user-42")

    found = {}
    for kind in ("moderator", "subscriber", "contributor"):
        body = await (await listing(client, token, kind)).json()
        found[kind] = {
            c["data"]["display_name"]: c["data"] for c in body["data"]["children"]
        }

    assert set(found["moderator"]) == {"Modded", "u_Example_User-42"}
    assert set(found["subscriber"]) == {"Modded", "Read"}
    assert set(found["contributor"]) == {"Approved"}
    assert found["subscriber"]["Modded"]["user_is_moderator"] is True
    assert found["subscriber"]["Read"]["user_is_moderator"] is False
    assert found["contributor"]["Approved"]["user_is_contributor"] is True


async def test_listing_escapes_urls_without_raw_json(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    mock.add_user("Example_User-42", subscriber_of=["one"])
    token = await member_token(client, "example_user-42")

    escaped = await (await listing(client, token, "subscriber", raw_json="0")).json()
    raw = await (await listing(client, token, "subscriber")).json()

    assert "&amp;" in escaped["data"]["children"][0]["data"]["community_icon"]
    assert "&amp;" not in raw["data"]["children"][0]["data"]["community_icon"]


async def test_listing_without_mysubreddits_is_403(
    client: TestClient[Any, Any],
) -> None:
    token = await login(client, scope="identity")

    answer = await listing(client, token["access_token"])

    assert answer.status == 403
    assert 'error="insufficient_scope"' in answer.headers["WWW-Authenticate"]
    assert await answer.json() == {"error": 403}


async def test_listing_app_only_token_gets_the_string_of_an_empty_object(
    client: TestClient[Any, Any],
) -> None:
    answer = await client.post(
        "/api/v1/access_token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic(), "User-Agent": UA},
    )
    token = (await answer.json())["access_token"]

    answer = await listing(client, token)

    assert answer.status == 200
    assert await answer.text() == '"{}"'


async def test_listing_refuses_a_dead_token(client: TestClient[Any, Any]) -> None:
    answer = await listing(client, "no-such-token")

    assert answer.status == 401
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]


async def test_me_is_mod_follows_the_moderator_list(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    mock.add_user("Mod_One", moderator_of=["example"], subscriber_of=["other"])
    mock.add_user("Plain_One")

    modded = await (await me(client, await member_token(client, "mod_one"))).json()
    plain = await (await me(client, await member_token(client, "plain_one"))).json()

    assert (modded["is_mod"], plain["is_mod"]) == (True, False)
    assert not {"moderator_of", "subscriber_of", "contributor_of"} & set(modded)


async def test_add_user_lists_take_r_prefixes_and_keep_first_casing(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    mock.add_user("Someone_Else", subscriber_of=["Example"])
    mock.add_user("Mod_One", moderator_of=["r/EXAMPLE", "/r/example/", "Other"])
    token = await member_token(client, "mod_one")

    first = await (await listing(client, token)).json()
    mock.add_user("Mod_One", karma_note="no list given")
    kept = await (await listing(client, token)).json()
    mock.add_user("Mod_One", moderator_of=[])
    cleared = await (await listing(client, token)).json()

    def names(body: Any) -> list[str]:
        return [c["data"]["display_name"] for c in body["data"]["children"]]

    assert names(first) == ["Example", "Other", "u_Mod_One"]
    assert names(kept) == names(first)
    assert names(cleared) == ["u_Mod_One"]


@pytest.mark.parametrize("name", ["no spaces", "x", "a" * 22, "r/", "ex-ample"])
def test_add_user_refuses_what_is_not_a_subreddit(mock: MockReddit, name: str) -> None:
    with pytest.raises(ValueError, match="not a subreddit name"):
        mock.add_user("Mod_One", moderator_of=[name])


# --- rate limits ------------------------------------------------------------------


async def test_oauth_answers_spend_the_budget(
    client: TestClient[Any, Any], mock: MockReddit, clock: FakeClock
) -> None:
    token = (await login(client))["access_token"]
    assert mock.ratelimit_remaining == 1000.0  # the consent page and token are free

    first = await me(client, token)
    clock.now += 100
    second = await me(client, token)

    assert first.headers["X-Ratelimit-Remaining"] == "999.0"
    assert first.headers["X-Ratelimit-Used"] == "1"
    assert first.headers["X-Ratelimit-Reset"] == "600"
    assert second.headers["X-Ratelimit-Remaining"] == "998.0"
    assert second.headers["X-Ratelimit-Used"] == "2"
    assert second.headers["X-Ratelimit-Reset"] == "500"
    assert mock.ratelimit_remaining == 998.0


async def test_budget_at_zero_answers_429_until_the_window_ends(
    client: TestClient[Any, Any], mock: MockReddit, clock: FakeClock
) -> None:
    token = (await login(client))["access_token"]
    mock.ratelimit_remaining = 1
    mock.ratelimit_reset = 5

    last = await me(client, token)
    refused = await me(client, token)
    clock.now += 5
    refilled = await me(client, token)

    assert (last.status, last.headers["X-Ratelimit-Remaining"]) == (200, "0.0")
    assert refused.status == 429
    assert await refused.json() == {"message": "Too Many Requests", "error": 429}
    assert refused.headers["X-Ratelimit-Remaining"] == "0.0"
    assert refused.headers["X-Ratelimit-Reset"] == "5"
    assert refilled.status == 200
    assert refilled.headers["X-Ratelimit-Remaining"] == "999.0"
    assert refilled.headers["X-Ratelimit-Reset"] == "600"


async def test_budget_is_settable(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    token = (await login(client))["access_token"]
    mock.ratelimit_budget = mock.ratelimit_remaining = 600.0

    answer = await me(client, token)

    assert answer.headers["X-Ratelimit-Remaining"] == "599.0"
    assert answer.headers["X-Ratelimit-Used"] == "1"


async def test_token_endpoint_is_outside_the_api_budget(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    mock.ratelimit_remaining = 0

    target = await consent(client)
    answer = await client.post(
        "/api/v1/access_token",
        data={"grant_type": "authorization_code", "code": target.query["code"],
              "redirect_uri": REDIRECT},
        headers={"Authorization": basic(), "User-Agent": UA},
    )  # fmt: skip

    assert answer.status == 200
    assert "X-Ratelimit-Remaining" not in answer.headers


# --- consent page: more about this account ------------------------------------------


async def consent_with(
    client: TestClient[Any, Any], username: str, details: dict[str, str]
) -> Any:
    """Send the consent form as a browser would after filling in the details."""
    page = await client.get(
        "/api/v1/authorize", params=authorize_params(scope="identity mysubreddits")
    )
    fields = form_fields(await page.text())
    fields.update(details, username=username, authorize="Allow")
    return await client.post("/api/v1/authorize", data=fields, allow_redirects=False)


async def test_consent_page_folds_the_account_details_away(
    client: TestClient[Any, Any],
) -> None:
    page = await (
        await client.get("/api/v1/authorize", params=authorize_params())
    ).text()

    assert "<details>" in page
    assert "<summary>More about this account</summary>" in page
    for field, label in [
        ("moderator_of", "Moderator of"),
        ("subscriber_of", "Subscriber of"),
        ("contributor_of", "Approved user of"),
        ("account_age_days", "Account age (days)"),
        ("karma", "Karma"),
    ]:
        assert f'<label for="{field}">{label}</label>' in page
        assert f'id="{field}"' in page and f'name="{field}"' in page
    # Checkboxes carry no value, so a script copying name="..." value="..." pairs
    # (as the gateway's own tests do) never ticks one by accident.
    assert '<input type="checkbox" name="unverified_email">' in page
    assert '<input type="checkbox" name="suspended">' in page


async def test_consent_details_seed_the_account(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    details = {
        "moderator_of": "Example, r/Other",
        "subscriber_of": "python",
        "contributor_of": " secret_club ,",
        "account_age_days": "30",
        "karma": "150",
        "unverified_email": "on",
    }

    answer = await consent_with(client, "New_Mod", details)
    code = URL(answer.headers["Location"]).query["code"]
    token = (await redeem(client, code))["access_token"]

    body = await (await me(client, token)).json()
    assert body["created_utc"] == START - 30 * 86400
    assert (body["link_karma"], body["comment_karma"], body["total_karma"]) == (
        150,
        0,
        150,
    )
    assert body["has_verified_email"] is False
    assert body["is_mod"] is True
    found = {}
    for kind in ("moderator", "subscriber", "contributor"):
        page = await (await listing(client, token, kind)).json()
        found[kind] = [c["data"]["display_name"] for c in page["data"]["children"]]
    assert found == {
        "moderator": ["Example", "Other", "u_New_Mod"],
        "subscriber": ["python"],
        "contributor": ["secret_club"],
    }


async def test_consent_details_suspended(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    answer = await consent_with(client, "Bad_Actor", {"suspended": "on"})
    code = URL(answer.headers["Location"]).query["code"]
    token = (await redeem(client, code))["access_token"]

    body = await (await me(client, token)).json()

    assert body == {"name": "Bad_Actor", "is_suspended": True, "is_blocked": False}


async def test_consent_without_details_leaves_a_seeded_account(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    mock.add_user("Seeded", moderator_of=["example"], has_verified_email=False)

    token = await member_token(client, "seeded")

    body = await (await me(client, token)).json()
    modded = await (await listing(client, token)).json()
    assert body["has_verified_email"] is False
    assert modded["data"]["children"][0]["data"]["display_name"] == "example"


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ({"moderator_of": "fine, not fine"},
         "Moderator of: &#x27;not fine&#x27; is not a subreddit name."),
        ({"contributor_of": "<script>"},
         "Approved user of: &#x27;&lt;script&gt;&#x27; is not a subreddit name."),
        ({"account_age_days": "-1"}, "Account age: a whole number of days, like 30."),
        ({"account_age_days": "1.5"}, "Account age: a whole number of days, like 30."),
        ({"karma": "lots"}, "Karma: a whole number, like 100."),
        ({"karma": "1e9"}, "Karma: a whole number, like 100."),
    ],
)  # fmt: skip
async def test_consent_details_that_cannot_be_used_are_asked_again(
    client: TestClient[Any, Any],
    mock: MockReddit,
    details: dict[str, str],
    message: str,
) -> None:
    answer = await consent_with(client, "Typo_User", {**details, "suspended": "on"})

    page = await answer.text()
    assert answer.status == 400
    assert f'<p class="error" role="alert">{message}</p>' in page
    assert "<details open>" in page
    assert '<input type="checkbox" name="suspended" checked>' in page
    [(field, typed)] = details.items()
    assert f'name="{field}" value="{html.escape(typed)}"' in page
    assert "<script>" not in page
    assert "typo_user" not in mock._users


async def test_consent_details_are_ignored_on_decline(
    client: TestClient[Any, Any], mock: MockReddit
) -> None:
    page = await client.get("/api/v1/authorize", params=authorize_params())
    fields = form_fields(await page.text())
    fields.update(username="Shy_User", authorize="Decline", suspended="on")

    answer = await client.post("/api/v1/authorize", data=fields, allow_redirects=False)

    assert "error=access_denied" in answer.headers["Location"]
    assert "shy_user" not in mock._users
