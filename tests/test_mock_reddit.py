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
    assert answer.headers["X-Ratelimit-Remaining"] == "599.0"


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
