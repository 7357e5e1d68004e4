"""RedditClient reads reddit's answers by their bodies, refusing what it cannot use."""

from __future__ import annotations

import html
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from aioresponses import aioresponses
from yarl import URL

from gateway.config import RedditConfig, Secret
from gateway.errors import (
    RedditClientRejected,
    RedditError,
    RedditGrantError,
    RedditIdentityError,
    RedditUnavailable,
)
from gateway.mock_reddit import MockReddit
from gateway.reddit import DEFAULT_EXPIRES_IN, Identity, RedditClient, TokenGrant

CLIENT_ID = "gwclient1234567"
CLIENT_SECRET = "gw-secret-abcdefghijklmnopqrstu"
UA = "web:com.example.gateway:v1.2.0 (by /u/operator_account)"
REDIRECT = "https://gw.example.com/oauth2/callback/"
TOKEN_URL = "https://www.reddit.com/api/v1/access_token"
REVOKE_URL = "https://www.reddit.com/api/v1/revoke_token"
ME_URL = "https://oauth.reddit.com/api/v1/me?raw_json=1"
CODE = "code-Zx9yW8vU7tS6rQ5pO4nM3"
ACCESS = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl-access"
REFRESH = "123456789012-Zx9yW8vU7tS6rQ5pO4nM3lK2jIh1Gg"
BASIC = "Basic Z3djbGllbnQxMjM0NTY3Omd3LXNlY3JldC1hYmNkZWZnaGlqa2xtbm9wcXJzdHU="
HTML = "text/html"
BLOCK_PAGE = "<html><title>Blocked</title><body>whoa there, pardner!</body></html>"


def reddit_config(**overrides: Any) -> RedditConfig:
    values: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": Secret(CLIENT_SECRET),
        "user_agent": UA,
        "scopes": ("identity", "mysubreddits"),
        "duration": "temporary",
        "authorize_url": URL("https://www.reddit.com/api/v1/authorize"),
        "token_url": URL(TOKEN_URL),
        "revoke_url": URL(REVOKE_URL),
        "api_url": URL("https://oauth.reddit.com"),
        "timeout": 7.5,
    }
    values.update(overrides)
    return RedditConfig(**values)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


class FakeTime:
    """A clock, and a sleep that only moves it on, noting every wait."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def reddit(session: aiohttp.ClientSession, fake_time: FakeTime) -> RedditClient:
    return RedditClient(
        reddit_config(), REDIRECT, session, clock=fake_time, sleep=fake_time.sleep
    )


class _StreamWriterShim(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without the stream_writer argument that
    aiohttp 3.14 requires (pnuckowski/aioresponses#289, fix pending in #288)."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class Offline(aioresponses):
    def add(self, url: Any, method: str = "GET", *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _StreamWriterShim)
        super().add(url, method, *args, **kwargs)


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with Offline() as mock:
        yield mock


def sent(mocked: aioresponses, method: str, url: str) -> dict[str, Any]:
    calls = mocked.requests[(method, URL(url))]
    assert len(calls) == 1
    kwargs: dict[str, Any] = calls[0].kwargs
    return kwargs


def call_for(reddit: RedditClient, kind: str) -> Callable[[], Any]:
    if kind == "redeem":
        return lambda: reddit.redeem_code(CODE)
    return lambda: reddit.refresh(Secret(REFRESH))


# --- authorize URL ----------------------------------------------------------------


@pytest.mark.parametrize(
    "redirect",
    [
        "https://gw.example.com/oauth2/callback/",
        "https://gw.example.com/oauth2/callback",
        "http://localhost:4180/oauth2/callback",
        "https://gw.example.com:8443/a%7Eb/cb?tenant=a%2Fb&x=1",
        "https://gw.example.com:443/cb",
    ],
)
def test_authorize_url_redirect_uri_byte_for_byte(
    session: aiohttp.ClientSession, redirect: str
) -> None:
    reddit = RedditClient(reddit_config(), redirect, session)

    url = reddit.authorize_url("st4te")

    query = parse_qs(urlsplit(url).query, keep_blank_values=True, strict_parsing=True)
    assert query["redirect_uri"] == [redirect]


def test_authorize_url_shape(reddit: RedditClient) -> None:
    url = reddit.authorize_url("k3Jt0c1aB9-_~.")

    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=True)
    assert url.startswith("https://www.reddit.com/api/v1/authorize?")
    assert query == {
        "client_id": [CLIENT_ID],
        "response_type": ["code"],
        "state": ["k3Jt0c1aB9-_~."],
        "redirect_uri": [REDIRECT],
        "duration": ["temporary"],
        "scope": ["identity mysubreddits"],
    }
    assert "scope=identity%20mysubreddits" in parts.query
    for absent in ("code_challenge", "nonce", "prompt", "login_hint", "client_secret"):
        assert absent not in parts.query


def test_authorize_url_permanent_duration(session: aiohttp.ClientSession) -> None:
    reddit = RedditClient(reddit_config(duration="permanent"), REDIRECT, session)

    query = parse_qs(urlsplit(reddit.authorize_url("s")).query)

    assert query["duration"] == ["permanent"]


# --- token endpoint: the error table from reddit-api.md ---------------------------

TOKEN_ERRORS = [
    # (id, answer for aioresponses, expected exception, expected .error)
    ("200-invalid_grant", {"payload": {"error": "invalid_grant"}}, RedditGrantError,
     "invalid_grant"),
    ("200-invalid_request", {"payload": {"error": "invalid_request"}},
     RedditGrantError, "invalid_request"),
    ("200-unsupported_grant_type", {"payload": {"error": "unsupported_grant_type"}},
     RedditGrantError, "unsupported_grant_type"),
    ("200-invalid_scope", {"payload": {"error": "invalid_scope"}}, RedditGrantError,
     "invalid_scope"),
    ("200-unauthorized_client", {"payload": {
        "error": "unauthorized_client",
        "error_description": "Only script apps may use password auth"}},
     RedditGrantError, "unauthorized_client"),
    ("401-bad-client", {"status": 401, "payload": {"message": "Unauthorized",
     "error": 401}, "headers": {"WWW-Authenticate": 'Basic realm="reddit"'}},
     RedditClientRejected, None),
    ("400-refresh-invalid", {"status": 400, "payload": {"error": "invalid_request"}},
     RedditGrantError, "invalid_request"),
    ("400-refresh-2016", {"status": 400, "payload": {"error": 400}},
     RedditGrantError, "400"),
    ("429-json", {"status": 429, "payload": {"message": "Too Many Requests",
     "error": 429}}, RedditUnavailable, None),
    ("429-html", {"status": 429, "body": "<html>Too Many Requests</html>",
     "content_type": HTML}, RedditUnavailable, None),
    ("403-html-block-page", {"status": 403, "body": BLOCK_PAGE, "content_type": HTML},
     RedditUnavailable, None),
    ("500-html", {"status": 500, "body": "<h1>500</h1>", "content_type": HTML},
     RedditUnavailable, None),
    ("502-json", {"status": 502, "payload": {"error": "bad gateway"}},
     RedditUnavailable, None),
    ("503-empty", {"status": 503, "body": b""}, RedditUnavailable, None),
    ("timeout", {"exception": TimeoutError()}, RedditUnavailable, None),
    ("connection-error", {"exception": aiohttp.ClientConnectionError("refused")},
     RedditUnavailable, None),
    ("server-disconnected", {"exception": aiohttp.ServerDisconnectedError()},
     RedditUnavailable, None),
    ("200-non-json", {"body": "<html>ok</html>", "content_type": HTML},
     RedditUnavailable, None),
    ("200-json-type-broken-body", {"body": "{not json", "content_type":
     "application/json"}, RedditUnavailable, None),
    ("200-json-not-utf8", {"body": b'{"a": "\xff"}', "content_type":
     "application/json"}, RedditUnavailable, None),
    ("200-json-array", {"payload": ["access_token"]}, RedditUnavailable, None),
    ("200-no-access-token", {"payload": {"token_type": "bearer"}},
     RedditUnavailable, None),
    ("200-empty-access-token", {"payload": {"access_token": ""}},
     RedditUnavailable, None),
    ("302-redirect-not-followed", {"status": 302, "headers": {
     "Location": "https://evil.example/steal"}, "body": b""}, RedditUnavailable, None),
    ("404-json-without-error", {"status": 404, "payload": {"message": "Not Found"}},
     RedditUnavailable, None),
]  # fmt: skip


@pytest.mark.parametrize("kind", ["redeem", "refresh"])
@pytest.mark.parametrize(
    ("answer", "expected", "error"),
    [pytest.param(*row[1:], id=row[0]) for row in TOKEN_ERRORS],
)
async def test_token_error_table(
    reddit: RedditClient,
    mocked: aioresponses,
    kind: str,
    answer: dict[str, Any],
    expected: type[RedditError],
    error: str | None,
) -> None:
    mocked.post(TOKEN_URL, **answer)

    with pytest.raises(expected) as caught:
        await call_for(reddit, kind)()

    assert type(caught.value) is expected
    if error is not None:
        assert isinstance(caught.value, RedditGrantError)
        assert caught.value.error == error
    assert CODE not in str(caught.value) and REFRESH not in str(caught.value)


async def test_token_401_tells_operator_to_check_credentials(
    reddit: RedditClient, mocked: aioresponses
) -> None:
    mocked.post(
        TOKEN_URL, status=401, payload={"message": "Unauthorized", "error": 401}
    )

    with pytest.raises(RedditClientRejected, match="client id and secret"):
        await reddit.redeem_code(CODE)


async def test_token_odd_error_code_is_not_echoed(
    reddit: RedditClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload={"error": "bad\r\nX-Injected: 1"})

    with pytest.raises(RedditGrantError) as caught:
        await reddit.redeem_code(CODE)

    assert caught.value.error == "unrecognised_error"


# --- token endpoint: success shapes -----------------------------------------------


@pytest.mark.parametrize(
    ("payload", "grant"),
    [
        pytest.param(
            {"access_token": ACCESS, "token_type": "bearer", "expires_in": 86400,
             "scope": "identity"},
            TokenGrant(Secret(ACCESS), "bearer", 86400.0, frozenset({"identity"}),
                       None),
            id="temporary",
        ),
        pytest.param(
            {"access_token": ACCESS, "token_type": "bearer", "expires_in": 3600,
             "refresh_token": REFRESH, "scope": "identity mysubreddits"},
            TokenGrant(Secret(ACCESS), "bearer", 3600.0,
                       frozenset({"identity", "mysubreddits"}), Secret(REFRESH)),
            id="permanent",
        ),
        pytest.param(
            {"access_token": ACCESS, "token_type": "bearer", "expires_in": 86399.5,
             "scope": "identity"},
            TokenGrant(Secret(ACCESS), "bearer", 86399.5, frozenset({"identity"}),
                       None),
            id="float-expires_in",
        ),
        pytest.param(
            {"access_token": ACCESS, "expires_in": "7200", "scope": "identity"},
            TokenGrant(Secret(ACCESS), "bearer", 7200.0, frozenset({"identity"}),
                       None),
            id="string-expires_in",
        ),
        pytest.param(
            {"access_token": ACCESS, "token_type": "bearer", "expires_in": 60,
             "device_id": "abc"},
            TokenGrant(Secret(ACCESS), "bearer", 60.0, frozenset(), None),
            id="scope-missing",
        ),
        pytest.param(
            {"access_token": ACCESS, "token_type": "bearer", "scope": "identity read"},
            TokenGrant(Secret(ACCESS), "bearer", DEFAULT_EXPIRES_IN,
                       frozenset({"identity", "read"}), None),
            id="expires_in-missing",
        ),
    ],
)  # fmt: skip
async def test_token_success_shapes(
    reddit: RedditClient,
    mocked: aioresponses,
    payload: dict[str, Any],
    grant: TokenGrant,
) -> None:
    mocked.post(TOKEN_URL, payload=payload)

    assert await reddit.redeem_code(CODE) == grant


@pytest.mark.parametrize("expires_in", ["soon", -5, 0, True, [3600], "NaN", "inf"])
async def test_token_unusable_expires_in(
    reddit: RedditClient, mocked: aioresponses, expires_in: object
) -> None:
    mocked.post(TOKEN_URL, payload={"access_token": ACCESS, "expires_in": expires_in})

    with pytest.raises(RedditUnavailable, match="expires_in"):
        await reddit.redeem_code(CODE)


async def test_refresh_keeps_a_returned_refresh_token(
    reddit: RedditClient, mocked: aioresponses
) -> None:
    payload = {"access_token": ACCESS, "expires_in": 86400, "scope": "identity",
               "refresh_token": "rotated-refresh"}  # fmt: skip
    mocked.post(TOKEN_URL, payload=payload)

    grant = await reddit.refresh(Secret(REFRESH))

    assert grant.refresh_token == Secret("rotated-refresh")


def test_token_grant_repr_hides_tokens() -> None:
    grant = TokenGrant(Secret(ACCESS), "bearer", 1.0, frozenset(), Secret(REFRESH))

    assert ACCESS not in repr(grant) and REFRESH not in repr(grant)


# --- what every call sends --------------------------------------------------------


async def test_redeem_sends_ua_basic_auth_and_form(
    reddit: RedditClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload={"access_token": ACCESS, "expires_in": 3600})

    await reddit.redeem_code(CODE)

    request = sent(mocked, "POST", TOKEN_URL)
    assert request["headers"]["User-Agent"] == UA
    assert request["headers"]["Authorization"] == BASIC
    assert request["data"] == {
        "grant_type": "authorization_code",
        "code": CODE,
        "redirect_uri": REDIRECT,
    }
    assert "json" not in request
    assert request["timeout"] == aiohttp.ClientTimeout(total=7.5)
    assert request["allow_redirects"] is False


async def test_refresh_sends_ua_basic_auth_and_form(
    reddit: RedditClient, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload={"access_token": ACCESS, "expires_in": 3600})

    await reddit.refresh(Secret(REFRESH))

    request = sent(mocked, "POST", TOKEN_URL)
    assert request["headers"]["User-Agent"] == UA
    assert request["headers"]["Authorization"] == BASIC
    assert request["data"] == {"grant_type": "refresh_token", "refresh_token": REFRESH}
    assert request["timeout"] == aiohttp.ClientTimeout(total=7.5)


@pytest.mark.parametrize("hint", ["access_token", "refresh_token"])
async def test_revoke_sends_ua_basic_auth_and_form(
    reddit: RedditClient, mocked: aioresponses, hint: str
) -> None:
    mocked.post(REVOKE_URL, status=200, body=b"")

    await reddit.revoke(Secret(ACCESS), hint)

    request = sent(mocked, "POST", REVOKE_URL)
    assert request["headers"]["User-Agent"] == UA
    assert request["headers"]["Authorization"] == BASIC
    assert request["data"] == {"token": ACCESS, "token_type_hint": hint}
    assert request["timeout"] == aiohttp.ClientTimeout(total=7.5)


async def test_me_sends_ua_bearer_and_raw_json(
    reddit: RedditClient, mocked: aioresponses
) -> None:
    mocked.get(ME_URL, payload={"name": "Example_User-42"})

    await reddit.fetch_identity(Secret(ACCESS))

    request = sent(mocked, "GET", ME_URL)
    assert request["headers"] == {"User-Agent": UA, "Authorization": f"bearer {ACCESS}"}
    assert request.get("auth") is None
    assert request["timeout"] == aiohttp.ClientTimeout(total=7.5)
    assert request["allow_redirects"] is False


# --- revoke -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 204])
async def test_revoke_accepts_200_and_204(
    reddit: RedditClient, mocked: aioresponses, status: int
) -> None:
    mocked.post(REVOKE_URL, status=status, body=b"")

    await reddit.revoke(Secret(ACCESS))

    assert len(mocked.requests[("POST", URL(REVOKE_URL))]) == 1


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"status": 401, "payload": {"error": 401}}, RedditClientRejected),
        ({"status": 400, "payload": {"error": "unauthorized_client"}},
         RedditGrantError),
        ({"status": 429, "payload": {"error": 429}}, RedditUnavailable),
        ({"status": 503, "body": "<h1>down</h1>", "content_type": HTML},
         RedditUnavailable),
        ({"status": 400, "body": "<h1>bad</h1>", "content_type": HTML},
         RedditUnavailable),
        ({"exception": TimeoutError()}, RedditUnavailable),
        ({"exception": aiohttp.ClientConnectionError()}, RedditUnavailable),
    ],
)  # fmt: skip
async def test_revoke_failures(
    reddit: RedditClient,
    mocked: aioresponses,
    answer: dict[str, Any],
    expected: type[RedditError],
) -> None:
    mocked.post(REVOKE_URL, **answer)

    with pytest.raises(expected) as caught:
        await reddit.revoke(Secret(ACCESS))

    assert type(caught.value) is expected


# --- /api/v1/me -------------------------------------------------------------------

NORMAL_ME = {
    "is_employee": False, "has_verified_email": True, "verified": True,
    "is_mod": True, "is_suspended": False, "suspension_expiration_utc": None,
    "name": "Example_User-42", "id": "1a2b3c4d", "created": 1514764800.0,
    "created_utc": 1514764800.0, "link_karma": 1520, "comment_karma": 8834,
    "total_karma": 10366, "icon_img": "https://styles.redditmedia.com/x.png?a=1&b=2",
    "features": {"chat": True}, "subreddit": None,
}  # fmt: skip


async def test_me_normal_account(reddit: RedditClient, mocked: aioresponses) -> None:
    mocked.get(ME_URL, payload=NORMAL_ME)

    identity = await reddit.fetch_identity(Secret(ACCESS))

    assert identity == Identity(
        name="Example_User-42",
        id="t2_1a2b3c4d",
        is_suspended=False,
        created_utc=1514764800.0,
        has_verified_email=True,
        link_karma=1520,
        comment_karma=8834,
        total_karma=10366,
    )


@pytest.mark.parametrize(
    ("payload", "identity"),
    [
        pytest.param({"name": "abc"},
                     Identity("abc", "", False, None, None, 0, 0), id="only-name"),
        pytest.param({"name": "a" * 20, "id": "T2_BAD!", "created_utc": 1514764800,
                      "has_verified_email": "yes", "link_karma": 3.0,
                      "comment_karma": "9", "total_karma": "12"},
                     Identity("a" * 20, "", False, 1514764800.0, None, 3, 0, None),
                     id="odd-types"),
        pytest.param({"name": "abc", "total_karma": True},
                     Identity("abc", "", False, None, None, 0, 0, None),
                     id="boolean-karma"),
        pytest.param({"name": "abc", "total_karma": -4.0},
                     Identity("abc", "", False, None, None, 0, 0, -4),
                     id="negative-float-karma"),
        pytest.param({**NORMAL_ME, "is_suspended": False, "id": None},
                     Identity("Example_User-42", "", False, 1514764800.0, True,
                              1520, 8834, 10366), id="missing-id"),
    ],
)  # fmt: skip
async def test_me_tolerates_missing_and_odd_fields(
    reddit: RedditClient,
    mocked: aioresponses,
    payload: dict[str, Any],
    identity: Identity,
) -> None:
    mocked.get(ME_URL, payload=payload)

    assert await reddit.fetch_identity(Secret(ACCESS)) == identity


@pytest.mark.parametrize(
    ("payload", "identity"),
    [
        ({"name": "Banned_Example", "is_suspended": True, "is_blocked": False,
          "awardee_karma": 0, "awarder_karma": 0, "total_karma": 57},
         Identity("Banned_Example", "", True, None, None, 0, 0, 57)),
        ({**NORMAL_ME, "is_suspended": True, "suspension_expiration_utc": 2e9},
         Identity("Example_User-42", "t2_1a2b3c4d", True, 1514764800.0, True, 1520,
                  8834, 10366)),
        ({"name": "Odd_Flag", "is_suspended": "yes"},
         Identity("Odd_Flag", "", True, None, None, 0, 0, None)),
        ({"name": "Odd_Flag", "is_suspended": 0},
         Identity("Odd_Flag", "", True, None, None, 0, 0, None)),
        ({"name": "Null_Flag", "is_suspended": None},
         Identity("Null_Flag", "", False, None, None, 0, 0, None)),
        ({"name": "Fine_User", "is_suspended": False},
         Identity("Fine_User", "", False, None, None, 0, 0, None)),
    ],
)  # fmt: skip
async def test_me_suspended_account_is_left_to_the_access_rules(
    reddit: RedditClient,
    mocked: aioresponses,
    payload: dict[str, Any],
    identity: Identity,
) -> None:
    mocked.get(ME_URL, payload=payload)

    found = await reddit.fetch_identity(Secret(ACCESS))

    assert found == identity


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(
            {"features": {"chat": False, "do_not_track": True}}, id="app-only"
        ),
        pytest.param({}, id="empty"),
        pytest.param({"name": ""}, id="empty-name"),
        pytest.param({"name": None}, id="null-name"),
        pytest.param({"name": 42}, id="non-string-int"),
        pytest.param({"name": ["bob"]}, id="non-string-list"),
        pytest.param({"name": "ab"}, id="too-short"),
        pytest.param({"name": "a" * 21}, id="too-long"),
        pytest.param({"name": "bób"}, id="unicode"),
        pytest.param({"name": "\uff22ob"}, id="unicode-fullwidth"),
        pytest.param({"name": "bob٣"}, id="unicode-digit"),
        pytest.param({"name": "bob smith"}, id="space"),
        pytest.param({"name": "bob\r\nX-Evil: 1"}, id="header-injection"),
        pytest.param({"name": "bob\n"}, id="trailing-newline"),
        pytest.param({"name": "bob.smith"}, id="dot"),
        pytest.param({"name": "../admin"}, id="path"),
    ],
)
async def test_me_name_refused_header_injection(
    reddit: RedditClient, mocked: aioresponses, payload: dict[str, Any]
) -> None:
    mocked.get(ME_URL, payload=payload)

    with pytest.raises(RedditIdentityError) as caught:
        await reddit.fetch_identity(Secret(ACCESS))

    assert "\n" not in caught.value.reason and "\r" not in caught.value.reason


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"status": 401, "payload": {"message": "Unauthorized", "error": 401},
          "headers": {"WWW-Authenticate":
                      'Bearer realm="reddit", error="invalid_token"'}},
         "me: 401 (invalid_token)"),
        ({"status": 403, "payload": {"error": 403}, "headers": {"WWW-Authenticate":
          'Bearer realm="reddit", error="insufficient_scope"'}},
         "me: 403 (insufficient_scope)"),
        ({"status": 401, "body": "<html>401 Unauthorized</html>",
          "content_type": HTML}, "me: 401 (no error given)"),
        ({"status": 403, "body": BLOCK_PAGE, "content_type": HTML},
         "me: 403 (no error given)"),
        ({"status": 418, "payload": {"error": 418}}, "me: unexpected status 418"),
        ({"status": 500, "body": "<h1>oops</h1>", "content_type": HTML},
         "me: unexpected status 500"),
        ({"status": 302, "headers": {"Location": "https://www.reddit.com/login"}},
         "me: unexpected status 302"),
        ({"body": "<html>hi</html>", "content_type": HTML}, "me: answer is not JSON"),
        ({"body": "{", "content_type": "application/json"},
         "me: answer is broken JSON"),
        ({"payload": "{}"}, "me: answer is not a JSON object"),
        ({"exception": TimeoutError()}, "me: timed out"),
        ({"exception": aiohttp.ClientConnectionError()},
         "me: connection failed (ClientConnectionError)"),
    ],
)  # fmt: skip
async def test_me_unavailable(
    reddit: RedditClient, mocked: aioresponses, answer: dict[str, Any], reason: str
) -> None:
    mocked.get(ME_URL, **answer)

    with pytest.raises(RedditUnavailable) as caught:
        await reddit.fetch_identity(Secret(ACCESS))

    assert caught.value.reason == reason


# --- logs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 403, "body": f"<html>blocked {CODE} {CLIENT_SECRET}</html>",
         "content_type": HTML},
        {"status": 429, "body": "x" * 150 + CODE, "content_type": HTML},
        {"body": f"<p>code={CODE}&token={REFRESH}</p>", "content_type": HTML},
        {"body": f"{{{CODE}", "content_type": "application/json"},
        {"payload": {"error": "invalid_grant", "code": CODE}},
        {"status": 401, "payload": {"error": 401, "secret": CLIENT_SECRET}},
        {"status": 500, "body": CODE * 3, "content_type": "text/plain"},
    ],
)  # fmt: skip
@pytest.mark.parametrize("kind", ["redeem", "refresh"])
async def test_failures_never_log_token_leak(
    reddit: RedditClient,
    mocked: aioresponses,
    caplog: pytest.LogCaptureFixture,
    answer: dict[str, Any],
    kind: str,
) -> None:
    mocked.post(TOKEN_URL, **answer)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(RedditError) as caught:
        await call_for(reddit, kind)()

    for secret in (CODE if kind == "redeem" else REFRESH, CLIENT_SECRET):
        assert secret not in caplog.text
        assert secret not in str(caught.value)


async def test_me_failures_never_log_token_leak(
    reddit: RedditClient, mocked: aioresponses, caplog: pytest.LogCaptureFixture
) -> None:
    mocked.get(ME_URL, status=500, body=f"bad token {ACCESS}", content_type=HTML)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(RedditUnavailable):
        await reddit.fetch_identity(Secret(ACCESS))

    assert ACCESS not in caplog.text
    assert "[redacted]" in caplog.text


async def test_unexpected_body_is_logged_briefly_on_gateway_auth(
    reddit: RedditClient, mocked: aioresponses, caplog: pytest.LogCaptureFixture
) -> None:
    mocked.post(TOKEN_URL, status=403, body=BLOCK_PAGE + "z" * 5000, content_type=HTML)

    with pytest.raises(RedditUnavailable):
        await reddit.redeem_code(CODE)

    [record] = caplog.records
    assert record.name == "gateway.auth"
    assert record.levelno == logging.WARNING
    assert "status=403" in record.getMessage()
    assert "whoa there, pardner!" in record.getMessage()
    assert "z" * 300 not in record.getMessage()


async def test_unexpected_body_log_injection_is_escaped(
    reddit: RedditClient, mocked: aioresponses, caplog: pytest.LogCaptureFixture
) -> None:
    mocked.post(
        TOKEN_URL, status=503, body="down\r\nlogin_ok user=admin", content_type=HTML
    )

    with pytest.raises(RedditUnavailable):
        await reddit.redeem_code(CODE)

    [record] = caplog.records
    assert "\n" not in record.getMessage() and "\r" not in record.getMessage()


# --- against the mock reddit on loopback ------------------------------------------

MOCK_ID = "mockclient123456"
MOCK_SECRET = "mock-secret-0123456789abcdefg"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def mock_server(
    aiohttp_server: Callable[..., Any], clock: FakeClock
) -> AsyncIterator[tuple[MockReddit, TestServer]]:
    mock = MockReddit(clock=clock)
    mock.add_client(MOCK_ID, MOCK_SECRET, REDIRECT)
    mock.add_user("Example_User-42")
    server = await aiohttp_server(mock.app())
    yield mock, server


def mock_client(
    server: TestServer,
    session: aiohttp.ClientSession,
    *,
    fake_time: FakeTime | None = None,
    **overrides: Any,
) -> RedditClient:
    settings: dict[str, Any] = {
        "client_id": MOCK_ID,
        "client_secret": Secret(MOCK_SECRET),
        "authorize_url": server.make_url("/api/v1/authorize"),
        "token_url": server.make_url("/api/v1/access_token"),
        "revoke_url": server.make_url("/api/v1/revoke_token"),
        "api_url": server.make_url("/"),
    }
    config = reddit_config(**{**settings, **overrides})
    if fake_time is None:
        return RedditClient(config, REDIRECT, session)
    return RedditClient(
        config, REDIRECT, session, clock=fake_time, sleep=fake_time.sleep
    )


async def browser_consent(
    reddit: RedditClient,
    state: str,
    username: str = "example_user-42",
    **details: str,
) -> URL:
    """Open the consent page, fill it in and press Allow, as a person would;
    details are the "More about this account" fields."""
    async with aiohttp.ClientSession() as browser:
        page = await browser.get(reddit.authorize_url(state))
        text = await page.text()
        action = re.search(r'<form method="post" action="([^"]+)"', text)
        fields = re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', text)
        assert page.status == 200 and action is not None

        form = {name: html.unescape(value) for name, value in fields}
        form.update(details, username=username, authorize="Allow")
        answer = await browser.post(
            page.url.join(URL(action.group(1))), data=form, allow_redirects=False
        )
        assert answer.status == 302
        return URL(answer.headers["Location"])


async def test_full_cycle_against_mock_reddit(
    mock_server: tuple[MockReddit, TestServer], session: aiohttp.ClientSession
) -> None:
    mock, server = mock_server
    reddit = mock_client(server, session, scopes=("identity",))

    target = await browser_consent(reddit, "st4te")
    assert target.query["state"] == "st4te"

    grant = await reddit.redeem_code(target.query["code"])
    assert grant.scopes == frozenset({"identity"})
    assert grant.expires_in == 86400.0
    assert grant.refresh_token is None
    assert len(grant.access_token.reveal()) >= 900

    identity = await reddit.fetch_identity(grant.access_token)
    assert identity.name == "Example_User-42"
    assert identity.id.startswith("t2_")

    await reddit.revoke(grant.access_token)
    with pytest.raises(RedditUnavailable, match="invalid_token"):
        await reddit.fetch_identity(grant.access_token)

    token_call, me_call = mock.calls[2], mock.calls[3]
    assert token_call.path == "/api/v1/access_token"
    assert token_call.headers["User-Agent"] == UA
    assert token_call.headers["Authorization"].startswith("Basic ")
    assert token_call.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert token_call.form["redirect_uri"] == REDIRECT
    assert me_call.query == {"raw_json": "1"}
    assert all(call.headers.get("User-Agent") == UA for call in mock.calls[2:])


async def test_permanent_grant_refresh_and_revoke_against_mock_reddit(
    mock_server: tuple[MockReddit, TestServer], session: aiohttp.ClientSession
) -> None:
    _, server = mock_server
    reddit = mock_client(server, session, duration="permanent")
    target = await browser_consent(reddit, "s")
    grant = await reddit.redeem_code(target.query["code"])
    assert grant.refresh_token is not None

    refreshed = await reddit.refresh(grant.refresh_token)
    assert refreshed.refresh_token == grant.refresh_token
    assert (await reddit.fetch_identity(refreshed.access_token)).name

    await reddit.revoke(grant.refresh_token, "refresh_token")
    with pytest.raises(RedditUnavailable):
        await reddit.fetch_identity(refreshed.access_token)
    with pytest.raises(RedditGrantError) as caught:
        await reddit.refresh(grant.refresh_token)
    assert caught.value.error == "invalid_request"


async def test_code_replay_against_mock_reddit_revokes_first_token(
    mock_server: tuple[MockReddit, TestServer], session: aiohttp.ClientSession
) -> None:
    _, server = mock_server
    reddit = mock_client(server, session)
    target = await browser_consent(reddit, "s")
    grant = await reddit.redeem_code(target.query["code"])

    with pytest.raises(RedditGrantError) as caught:
        await reddit.redeem_code(target.query["code"])

    assert caught.value.error == "invalid_grant"
    with pytest.raises(RedditUnavailable, match="invalid_token"):
        await reddit.fetch_identity(grant.access_token)


async def test_expired_code_against_mock_reddit(
    mock_server: tuple[MockReddit, TestServer],
    session: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    _, server = mock_server
    reddit = mock_client(server, session)
    target = await browser_consent(reddit, "s")

    clock.now += 601

    with pytest.raises(RedditGrantError, match="invalid_grant"):
        await reddit.redeem_code(target.query["code"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"user_agent": "Python/3.11 aiohttp/3.14"}, RedditUnavailable),
        (
            {"client_secret": Secret("wrong-secret-000000000000000")},
            RedditClientRejected,
        ),
        ({"client_id": "nosuchclient0000"}, RedditClientRejected),
    ],
)
async def test_misconfiguration_against_mock_reddit(
    mock_server: tuple[MockReddit, TestServer],
    session: aiohttp.ClientSession,
    overrides: dict[str, Any],
    expected: type[RedditError],
) -> None:
    _, server = mock_server

    with pytest.raises(expected):
        await mock_client(server, session, **overrides).redeem_code("anycode")


async def test_slow_reddit_times_out(
    mock_server: tuple[MockReddit, TestServer], session: aiohttp.ClientSession
) -> None:
    mock, server = mock_server
    mock.fail_next("/api/v1/access_token", status=None, delay=0.5)
    reddit = mock_client(server, session, timeout=0.05)

    with pytest.raises(RedditUnavailable, match="timed out"):
        await reddit.redeem_code("anycode")


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"status": 403, "body": BLOCK_PAGE}, RedditUnavailable),
        ({"status": 429, "body": {"message": "Too Many Requests", "error": 429}},
         RedditUnavailable),
        ({"status": 200, "body": "<html>maintenance</html>"}, RedditUnavailable),
        ({"status": 200, "body": {"error": "invalid_grant"}}, RedditGrantError),
    ],
)  # fmt: skip
async def test_injected_faults_against_mock_reddit(
    mock_server: tuple[MockReddit, TestServer],
    session: aiohttp.ClientSession,
    fault: dict[str, Any],
    expected: type[RedditError],
) -> None:
    mock, server = mock_server
    mock.fail_next("/api/v1/access_token", **fault)

    with pytest.raises(expected):
        await mock_client(server, session).redeem_code("anycode")


@pytest.mark.parametrize(
    ("username", "fields", "expected"),
    [
        ("bob\r\nX-Evil: 1", {}, "unacceptable account name"),
        ("ab", {}, "unacceptable account name"),
        ("App_Like", {"me_override": {"features": {}}}, "no account name"),
    ],
)
async def test_identity_refusals_against_mock_reddit(
    mock_server: tuple[MockReddit, TestServer],
    session: aiohttp.ClientSession,
    username: str,
    fields: dict[str, Any],
    expected: str,
) -> None:
    mock, server = mock_server
    if fields:
        mock.add_user(username, **fields)
    reddit = mock_client(server, session)
    target = await browser_consent(reddit, "s", username=username)
    grant = await reddit.redeem_code(target.query["code"])

    with pytest.raises(RedditIdentityError, match=expected):
        await reddit.fetch_identity(grant.access_token)
