"""RedditClient reads subreddit listings completely, and spends reddit's shared
API budget with care: it waits for a spent window and retries a 429 only once."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from aioresponses import aioresponses
from yarl import URL

from gateway.config import Secret
from gateway.errors import RedditError, RedditIdentityError, RedditUnavailable
from gateway.mock_reddit import MockReddit
from gateway.reddit import RedditClient
from tests.test_reddit import (
    ACCESS,
    BLOCK_PAGE,
    CODE,
    HTML,
    ME_URL,
    MOCK_ID,
    MOCK_SECRET,
    REDIRECT,
    REFRESH,
    REVOKE_URL,
    TOKEN_URL,
    UA,
    FakeTime,
    Offline,
    browser_consent,
    mock_client,
    reddit_config,
)

API = "https://oauth.reddit.com"
TOKEN = Secret(ACCESS)
RATE_LIMITED = {"message": "Too Many Requests", "error": 429}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def reddit(session: aiohttp.ClientSession, fake_time: FakeTime) -> RedditClient:
    return RedditClient(
        reddit_config(), REDIRECT, session, clock=fake_time, sleep=fake_time.sleep
    )


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with Offline() as mock:
        yield mock


def page_url(kind: str = "moderator", after: str | None = None) -> str:
    url = URL(f"{API}/subreddits/mine/{kind}").with_query(limit="100", raw_json="1")
    return str(url.update_query(after=after) if after else url)


def t5(name: str, kind: str = "public") -> dict[str, Any]:
    return {
        "kind": "t5",
        "data": {
            "display_name": name,
            "name": f"t5_{name.lower()[:8]}",
            "subreddit_type": kind,
        },
    }


def listing(*children: Any, after: str | None = None) -> dict[str, Any]:
    return {
        "kind": "Listing",
        "data": {
            "after": after,
            "dist": len(children),
            "modhash": None,
            "geo_filter": "",
            "children": list(children),
            "before": None,
        },
    }


def requests_sent(mocked: aioresponses) -> list[tuple[str, URL, dict[str, Any]]]:
    return [
        (method, url, call.kwargs)
        for (method, url), calls in mocked.requests.items()
        for call in calls
    ]


# --- paging ---------------------------------------------------------------------


async def test_reads_every_page_until_after_is_null(
    reddit: RedditClient, mocked: aioresponses
) -> None:
    mocked.get(page_url(), payload=listing(t5("Alpha"), t5("Beta"), after="t5_b"))
    mocked.get(
        page_url(after="t5_b"),
        payload=listing(t5("Gamma"), t5("u_Example_User-42", "user"), after="t5_p"),
    )
    mocked.get(page_url(after="t5_p"), payload=listing(t5("Delta")))

    found = await reddit.fetch_memberships(TOKEN, "moderator")

    assert found == {"alpha", "beta", "gamma", "delta"}
    sent = requests_sent(mocked)
    assert len(sent) == 3
    for _, url, kwargs in sent:
        assert url.query["limit"] == "100" and url.query["raw_json"] == "1"
        assert kwargs["headers"] == {
            "User-Agent": UA,
            "Authorization": f"bearer {ACCESS}",
        }
        assert kwargs["allow_redirects"] is False
    assert sorted(url.query.get("after", "") for _, url, _ in sent) == [
        "",
        "t5_b",
        "t5_p",
    ]


@pytest.mark.parametrize(
    ("wanted", "pages_read"),
    [
        (frozenset({"example"}), 1),
        (frozenset({"EXAMPLE", "other"}), 1),
        (frozenset({"example", "third"}), 2),
        (frozenset({"nowhere"}), 3),
        (None, 3),
    ],
)
async def test_stops_once_every_wanted_name_is_seen(
    reddit: RedditClient,
    mocked: aioresponses,
    wanted: frozenset[str] | None,
    pages_read: int,
) -> None:
    mocked.get(page_url(), payload=listing(t5("Example"), t5("Other"), after="t5_1"))
    mocked.get(page_url(after="t5_1"), payload=listing(t5("Third"), after="t5_2"))
    mocked.get(page_url(after="t5_2"), payload=listing(t5("Last")))

    found = await reddit.fetch_memberships(TOKEN, "moderator", wanted=wanted)

    assert len(requests_sent(mocked)) == pages_read
    assert {"example", "other"} <= found


async def test_page_bound_returns_what_was_read_and_warns(
    reddit: RedditClient, mocked: aioresponses, caplog: pytest.LogCaptureFixture
) -> None:
    mocked.get(page_url("subscriber"), payload=listing(t5("One"), after="t5_1"))
    mocked.get(page_url("subscriber", "t5_1"), payload=listing(t5("Two"), after="t5_2"))
    mocked.get(page_url("subscriber", "t5_2"), payload=listing(t5("Three")))

    found = await reddit.fetch_memberships(
        TOKEN, "subscriber", wanted=frozenset({"three"}), max_pages=2
    )

    # Short of "three": an allow rule naming it refuses, which is the safe side.
    assert found == {"one", "two"}
    assert len(requests_sent(mocked)) == 2
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "reddit_listing_truncated kind=subscriber pages=2"


async def test_nothing_wanted_spends_nothing(
    reddit: RedditClient, mocked: aioresponses
) -> None:
    assert await reddit.fetch_memberships(TOKEN, "moderator", frozenset()) == set()
    assert requests_sent(mocked) == []


@pytest.mark.parametrize(
    ("kind", "max_pages"), [("banned", 10), ("moderators", 10), ("moderator", 0)]
)
async def test_misuse_is_a_programming_error(
    reddit: RedditClient, kind: str, max_pages: int
) -> None:
    with pytest.raises(ValueError):
        await reddit.fetch_memberships(TOKEN, kind, max_pages=max_pages)


CHILDREN = [
    (t5("ExampleCommunity"), "examplecommunity"),
    (t5("ab"), "ab"),
    (t5("A" * 21), "a" * 21),
    (t5("u_Example_User-42", "user"), None),
    (t5("u_someone"), None),  # a profile, whatever its type says
    (t5("Profile_Like", "user"), None),
    ({"kind": "t3", "data": {"display_name": "NotASub"}}, None),
    ({"kind": "t5", "data": {"display_name": 42}}, None),
    ({"kind": "t5", "data": {"display_name": "bad name"}}, None),
    ({"kind": "t5", "data": {"display_name": "Ünïcode"}}, None),
    ({"kind": "t5", "data": {"display_name": "A" * 22}}, None),
    ({"kind": "t5"}, None),
    ("t5_string", None),
]


@pytest.mark.parametrize(
    ("child", "name"), CHILDREN, ids=[str(i) for i in range(len(CHILDREN))]
)
async def test_only_communities_are_kept_casefolded(
    reddit: RedditClient, mocked: aioresponses, child: Any, name: str | None
) -> None:
    mocked.get(page_url(), payload=listing(child, t5("Anchor")))

    found = await reddit.fetch_memberships(TOKEN, "moderator")

    assert found == ({"anchor", name} if name else {"anchor"})


@pytest.mark.parametrize("answer", [{"payload": "{}"}, {"payload": {}}])
async def test_app_only_token_answer_is_empty(
    reddit: RedditClient, mocked: aioresponses, answer: dict[str, Any]
) -> None:
    mocked.get(page_url(), **answer)

    assert await reddit.fetch_memberships(TOKEN, "moderator") == set()


# --- failures -------------------------------------------------------------------

SCOPE_403 = 'Bearer realm="reddit", error="insufficient_scope"'
TOKEN_401 = 'Bearer realm="reddit", error="invalid_token"'

LISTING_FAILURES = [
    ("403-insufficient-scope", {"status": 403, "payload": {"error": 403},
     "headers": {"WWW-Authenticate": SCOPE_403}}, RedditIdentityError,
     "mysubreddits scope not granted"),
    ("401-invalid-token", {"status": 401, "payload": {"error": 401},
     "headers": {"WWW-Authenticate": TOKEN_401}}, RedditUnavailable,
     "mine/moderator: 401 (invalid_token)"),
    ("401-html", {"status": 401, "body": "<html>401</html>", "content_type": HTML},
     RedditUnavailable, "mine/moderator: 401 (no error given)"),
    ("403-html-block-page", {"status": 403, "body": BLOCK_PAGE, "content_type": HTML},
     RedditUnavailable, "mine/moderator: 403 (no error given)"),
    ("500-html", {"status": 500, "body": "<h1>500</h1>", "content_type": HTML},
     RedditUnavailable, "mine/moderator: unexpected status 500"),
    ("302-not-followed", {"status": 302, "headers": {"Location": "https://x.test/"}},
     RedditUnavailable, "mine/moderator: unexpected status 302"),
    ("200-html", {"body": "<html>maintenance</html>", "content_type": HTML},
     RedditUnavailable, "mine/moderator: answer is not JSON"),
    ("200-broken-json", {"body": '{"kind": "Li', "content_type": "application/json"},
     RedditUnavailable, "mine/moderator: answer is broken JSON"),
    ("200-array", {"payload": [t5("Example")]}, RedditUnavailable,
     "mine/moderator: answer is not a listing"),
    ("200-children-not-a-list", {"payload": {"kind": "Listing",
     "data": {"children": "Example"}}}, RedditUnavailable,
     "mine/moderator: answer is not a listing"),
    ("200-after-injection", {"payload": listing(t5("Example"),
     after="t5_x&limit=1")}, RedditUnavailable,
     "mine/moderator: listing has an unusable after"),
    ("200-after-number", {"payload": listing(t5("Example"), after=5)},
     RedditUnavailable, "mine/moderator: listing has an unusable after"),
    ("timeout", {"exception": TimeoutError()}, RedditUnavailable,
     "mine/moderator: timed out"),
    ("connection-error", {"exception": aiohttp.ClientConnectionError()},
     RedditUnavailable, "mine/moderator: connection failed (ClientConnectionError)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "expected", "reason"),
    [pytest.param(*row[1:], id=row[0]) for row in LISTING_FAILURES],
)
async def test_listing_failures(
    reddit: RedditClient,
    mocked: aioresponses,
    answer: dict[str, Any],
    expected: type[RedditError],
    reason: str,
) -> None:
    mocked.get(page_url(), **answer)

    with pytest.raises(expected) as caught:
        await reddit.fetch_memberships(TOKEN, "moderator")

    assert type(caught.value) is expected
    assert caught.value.reason == reason


async def test_listing_failures_never_log_token_leak(
    reddit: RedditClient, mocked: aioresponses, caplog: pytest.LogCaptureFixture
) -> None:
    mocked.get(page_url(), status=500, body=f"bad token {ACCESS}", content_type=HTML)

    with pytest.raises(RedditUnavailable):
        await reddit.fetch_memberships(TOKEN, "moderator")

    assert ACCESS not in caplog.text
    assert "[redacted]" in caplog.text


# --- rate limits ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "remaining"),
    [("597.0", 597.0), ("597", 597.0), ("0.0", 0.0), ("12.5", 12.5), ("NaN", None),
     ("inf", None), ("-1", None), ("", None), ("many", None), (None, None)],
)  # fmt: skip
async def test_ratelimit_remaining_read_as_a_float(
    reddit: RedditClient, mocked: aioresponses, header: str | None, remaining: float
) -> None:
    headers = {"X-Ratelimit-Reset": "300"}
    if header is not None:
        headers["X-Ratelimit-Remaining"] = header
    mocked.get(ME_URL, payload={"name": "Example_User-42"}, headers=headers)

    assert reddit.ratelimit_remaining is None
    await reddit.fetch_identity(TOKEN)

    assert reddit.ratelimit_remaining == remaining


def budget(remaining: str, reset: str) -> dict[str, str]:
    return {"X-Ratelimit-Remaining": remaining, "X-Ratelimit-Reset": reset}


async def test_spent_budget_waits_for_the_window(
    reddit: RedditClient, mocked: aioresponses, fake_time: FakeTime
) -> None:
    mocked.get(ME_URL, payload={"name": "First_One"}, headers=budget("0.0", "5"))
    mocked.get(page_url(), payload=listing(t5("Example")), headers=budget("999", "600"))

    await reddit.fetch_identity(TOKEN)
    found = await reddit.fetch_memberships(TOKEN, "moderator")

    assert fake_time.waits == [5.0]
    assert found == {"example"}
    assert reddit.ratelimit_remaining == 999.0


async def test_spent_budget_past_the_timeout_is_refused_without_asking(
    reddit: RedditClient, mocked: aioresponses, fake_time: FakeTime
) -> None:
    mocked.get(ME_URL, payload={"name": "First_One"}, headers=budget("0.0", "30"))
    await reddit.fetch_identity(TOKEN)

    with pytest.raises(RedditUnavailable) as caught:
        await reddit.fetch_memberships(TOKEN, "moderator")

    assert caught.value.reason == "rate limited"
    assert fake_time.waits == []
    assert len(requests_sent(mocked)) == 1


async def test_spent_budget_of_a_window_already_over_does_not_wait(
    reddit: RedditClient, mocked: aioresponses, fake_time: FakeTime
) -> None:
    mocked.get(ME_URL, payload={"name": "First_One"}, headers=budget("0.0", "5"))
    mocked.get(ME_URL, payload={"name": "First_One"})
    await reddit.fetch_identity(TOKEN)

    fake_time.now += 6
    await reddit.fetch_identity(TOKEN)

    assert fake_time.waits == []


async def test_reset_longer_than_a_window_is_not_believed(
    session: aiohttp.ClientSession, mocked: aioresponses, fake_time: FakeTime
) -> None:
    reddit = RedditClient(
        reddit_config(timeout=3600.0),
        REDIRECT,
        session,
        clock=fake_time,
        sleep=fake_time.sleep,
    )
    mocked.get(ME_URL, payload={"name": "First_One"}, headers=budget("0", "99999"))
    mocked.get(ME_URL, payload={"name": "First_One"})

    await reddit.fetch_identity(TOKEN)
    await reddit.fetch_identity(TOKEN)

    assert fake_time.waits == [600.0]


def api_call(reddit: RedditClient, kind: str) -> Callable[[], Any]:
    if kind == "me":
        return lambda: reddit.fetch_identity(TOKEN)
    return lambda: reddit.fetch_memberships(TOKEN, "moderator")


def api_url(kind: str) -> str:
    return ME_URL if kind == "me" else page_url()


def api_success(kind: str) -> dict[str, Any]:
    return {"name": "Example_User-42"} if kind == "me" else listing(t5("Example"))


@pytest.mark.parametrize("kind", ["me", "listing"])
@pytest.mark.parametrize(
    ("headers", "wait"),
    [(budget("0.0", "3"), 3.0), (budget("0", "0"), 1.0), ({}, 1.0),
     ({"X-Ratelimit-Reset": "0.2"}, 1.0), ({"X-Ratelimit-Reset": "7"}, 7.0)],
)  # fmt: skip
async def test_429_waits_for_the_reset_then_retries_once(
    reddit: RedditClient,
    mocked: aioresponses,
    fake_time: FakeTime,
    kind: str,
    headers: dict[str, str],
    wait: float,
) -> None:
    mocked.get(api_url(kind), status=429, payload=RATE_LIMITED, headers=headers)
    mocked.get(api_url(kind), payload=api_success(kind), headers=budget("999.0", "600"))

    assert await api_call(reddit, kind)()

    assert fake_time.waits == [wait]
    assert len(requests_sent(mocked)) == 2
    assert reddit.ratelimit_remaining == 999.0


@pytest.mark.parametrize("kind", ["me", "listing"])
async def test_429_twice_is_rate_limited(
    reddit: RedditClient,
    mocked: aioresponses,
    fake_time: FakeTime,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    mocked.get(
        api_url(kind), status=429, payload=RATE_LIMITED, headers=budget("0", "2")
    )
    mocked.get(
        api_url(kind),
        status=429,
        body="<html>Too Many Requests</html>",
        content_type=HTML,
    )

    with pytest.raises(RedditUnavailable) as caught:
        await api_call(reddit, kind)()

    assert caught.value.reason == "rate limited"
    assert fake_time.waits == [2.0]
    assert len(requests_sent(mocked)) == 2
    assert "status=429" in caplog.text and "Too Many Requests" in caplog.text


async def test_429_with_a_reset_past_the_timeout_is_not_retried(
    reddit: RedditClient, mocked: aioresponses, fake_time: FakeTime
) -> None:
    mocked.get(ME_URL, status=429, payload=RATE_LIMITED, headers=budget("0", "60"))

    with pytest.raises(RedditUnavailable, match="rate limited"):
        await reddit.fetch_identity(TOKEN)

    assert fake_time.waits == []
    assert len(requests_sent(mocked)) == 1


@pytest.mark.parametrize("call", ["redeem", "refresh", "revoke"])
async def test_token_calls_are_never_retried(
    reddit: RedditClient, mocked: aioresponses, fake_time: FakeTime, call: str
) -> None:
    url = REVOKE_URL if call == "revoke" else TOKEN_URL
    mocked.post(url, status=429, payload=RATE_LIMITED, headers=budget("0", "1"))
    mocked.post(url, payload={"access_token": "never-asked-for"})

    with pytest.raises(RedditUnavailable) as caught:
        if call == "redeem":
            await reddit.redeem_code(CODE)
        elif call == "refresh":
            await reddit.refresh(Secret(REFRESH))
        else:
            await reddit.revoke(TOKEN)

    assert (
        caught.value.reason
        == f"{'revoke' if call == 'revoke' else 'token'}: status 429"
    )
    assert len(requests_sent(mocked)) == 1
    assert fake_time.waits == []
    assert reddit.ratelimit_remaining is None  # www.reddit.com has its own limits


async def test_token_calls_do_not_wait_for_the_api_budget(
    reddit: RedditClient, mocked: aioresponses, fake_time: FakeTime
) -> None:
    mocked.get(ME_URL, payload={"name": "First_One"}, headers=budget("0.0", "5"))
    mocked.post(TOKEN_URL, payload={"access_token": "fresh", "expires_in": 60})
    await reddit.fetch_identity(TOKEN)

    grant = await reddit.redeem_code(CODE)

    assert grant.access_token == Secret("fresh")
    assert fake_time.waits == []


# --- against the mock reddit on loopback ------------------------------------------


@pytest.fixture
async def mock_server(
    aiohttp_server: Callable[..., Any], fake_time: FakeTime
) -> AsyncIterator[tuple[MockReddit, TestServer]]:
    mock = MockReddit(clock=fake_time)
    mock.add_client(MOCK_ID, MOCK_SECRET, REDIRECT)
    server = await aiohttp_server(mock.app())
    yield mock, server


async def signed_in(
    server: TestServer,
    session: aiohttp.ClientSession,
    fake_time: FakeTime,
    username: str = "Mod_One",
    scopes: tuple[str, ...] = ("identity", "mysubreddits"),
    **details: str,
) -> tuple[RedditClient, Secret]:
    reddit = mock_client(server, session, fake_time=fake_time, scopes=scopes)
    target = await browser_consent(reddit, "st4te", username, **details)
    grant = await reddit.redeem_code(target.query["code"])
    return reddit, grant.access_token


def listing_calls(mock: MockReddit) -> list[dict[str, str]]:
    return [call.query for call in mock.calls if call.path.startswith("/subreddits/")]


async def test_memberships_across_pages_against_mock_reddit(
    mock_server: tuple[MockReddit, TestServer],
    session: aiohttp.ClientSession,
    fake_time: FakeTime,
) -> None:
    mock, server = mock_server
    names = [f"Sub_{i}" for i in range(7)]
    mock.add_user("Mod_One", moderator_of=names)
    mock.page_size = 2
    reddit, token = await signed_in(server, session, fake_time)

    found = await reddit.fetch_memberships(token, "moderator")

    assert found == {name.casefold() for name in names}
    calls = listing_calls(mock)
    assert len(calls) == 4  # seven communities and the profile, two a page
    assert "after" not in calls[0]
    assert all(call["after"].startswith("t5_") for call in calls[1:])
    assert all(call["limit"] == "100" for call in calls)


async def test_early_stop_against_mock_reddit(
    mock_server: tuple[MockReddit, TestServer],
    session: aiohttp.ClientSession,
    fake_time: FakeTime,
) -> None:
    mock, server = mock_server
    mock.add_user("Mod_One", subscriber_of=[f"Sub_{i}" for i in range(9)])
    mock.page_size = 3
    reddit, token = await signed_in(server, session, fake_time)

    found = await reddit.fetch_memberships(token, "subscriber", frozenset({"sub_4"}))

    assert found == {"sub_0", "sub_1", "sub_2", "sub_3", "sub_4", "sub_5"}
    assert len(listing_calls(mock)) == 2


async def test_consent_page_details_reach_the_client(
    mock_server: tuple[MockReddit, TestServer],
    session: aiohttp.ClientSession,
    fake_time: FakeTime,
) -> None:
    _, server = mock_server
    reddit, token = await signed_in(
        server,
        session,
        fake_time,
        moderator_of="Example, r/Other",
        contributor_of="Approved_Here",
        account_age_days="45",
        karma="321",
        unverified_email="on",
    )

    identity = await reddit.fetch_identity(token)
    moderator = await reddit.fetch_memberships(token, "moderator")
    contributor = await reddit.fetch_memberships(token, "contributor")
    subscriber = await reddit.fetch_memberships(token, "subscriber")

    assert identity.created_utc == fake_time.now - 45 * 86400
    assert (identity.total_karma, identity.has_verified_email) == (321, False)
    assert moderator == {"example", "other"}  # u_Mod_One left out
    assert (contributor, subscriber) == ({"approved_here"}, set())


async def test_suspended_through_the_consent_page(
    mock_server: tuple[MockReddit, TestServer],
    session: aiohttp.ClientSession,
    fake_time: FakeTime,
) -> None:
    _, server = mock_server
    reddit, token = await signed_in(server, session, fake_time, suspended="on")

    identity = await reddit.fetch_identity(token)

    assert (identity.name, identity.is_suspended) == ("Mod_One", True)


async def test_without_mysubreddits_against_mock_reddit(
    mock_server: tuple[MockReddit, TestServer],
    session: aiohttp.ClientSession,
    fake_time: FakeTime,
) -> None:
    _, server = mock_server
    reddit, token = await signed_in(server, session, fake_time, scopes=("identity",))

    with pytest.raises(RedditIdentityError) as caught:
        await reddit.fetch_memberships(token, "moderator")

    assert caught.value.reason == "mysubreddits scope not granted"


async def test_429_honoured_against_mock_reddit(
    mock_server: tuple[MockReddit, TestServer],
    session: aiohttp.ClientSession,
    fake_time: FakeTime,
) -> None:
    mock, server = mock_server
    mock.add_user("Mod_One", moderator_of=["Example"])
    reddit, token = await signed_in(server, session, fake_time)
    mock.ratelimit_remaining = 0
    mock.ratelimit_reset = 4

    found = await reddit.fetch_memberships(token, "moderator")

    assert found == {"example"}
    assert fake_time.waits == [4.0]
    assert len(listing_calls(mock)) == 2  # the 429, then the retry
    assert reddit.ratelimit_remaining == mock.ratelimit_remaining == 999.0


async def test_spent_budget_is_waited_for_before_asking_mock_reddit(
    mock_server: tuple[MockReddit, TestServer],
    session: aiohttp.ClientSession,
    fake_time: FakeTime,
) -> None:
    mock, server = mock_server
    reddit, token = await signed_in(server, session, fake_time)
    mock.ratelimit_remaining = 1
    mock.ratelimit_reset = 3

    await reddit.fetch_identity(token)
    assert reddit.ratelimit_remaining == 0.0
    await reddit.fetch_identity(token)

    assert fake_time.waits == [3.0]
    assert [call.path for call in mock.calls].count("/api/v1/me") == 2  # no 429


async def test_rate_limited_against_mock_reddit(
    mock_server: tuple[MockReddit, TestServer],
    session: aiohttp.ClientSession,
    fake_time: FakeTime,
) -> None:
    mock, server = mock_server
    reddit, token = await signed_in(server, session, fake_time)
    mock.ratelimit_remaining = 0
    mock.ratelimit_reset = 300

    with pytest.raises(RedditUnavailable, match="rate limited"):
        await reddit.fetch_identity(token)

    assert fake_time.waits == []
    assert [call.path for call in mock.calls].count("/api/v1/me") == 1
