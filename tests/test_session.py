"""Session payload and cookie: round trip, key rotation, refusals, cookie attributes."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from http.cookies import SimpleCookie
from typing import Any

import pytest
from aiohttp import web
from aiohttp_session import get_session, new_session, session_middleware
from cryptography.fernet import Fernet

from gateway.config import Secret, SessionConfig
from gateway.login_state import LoginStates
from gateway.session import (
    MAX_COOKIE_CHARS,
    SESSION_PURPOSE,
    CookieCodec,
    SessionCodec,
    SessionPayload,
    derive_key,
    payload_from_session,
    store_payload,
)
from gateway.session_store import CookieStore, SessionStorage

NEW = Secret("n" * 40)
OLD = Secret("o" * 40)
OTHER = Secret("x" * 40)
NOW = 1_700_000_000.0
MAX_AGE = 604_800
COOKIE = "_gw"
ACCESS = "eyJhbGciOiJSUzI1NiJ9.access-token-value"
REFRESH = "12345-refresh-token-value"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_payload(
    now: float = NOW, access: str = ACCESS, refresh: str | None = REFRESH
) -> SessionPayload:
    return SessionPayload(
        user="Spez_Fan-1",
        user_id="t2_abc123",
        created_at=now,
        expires_at=now + MAX_AGE,
        access_token=Secret(access),
        access_expires_at=now + 86_400,
        refresh_token=None if refresh is None else Secret(refresh),
        scopes=("identity", "mysubreddits"),
    )


def auth_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gateway.auth"]


def test_derive_key_differs_per_secret_and_purpose() -> None:
    key = derive_key(NEW, "session")

    Fernet(key)
    assert derive_key(NEW, "session") == key
    assert derive_key(NEW, "login-state") != key
    assert derive_key(OLD, "session") != key


def test_payload_round_trips() -> None:
    codec = SessionCodec([NEW], MAX_AGE, Clock())
    payload = make_payload()

    assert codec.load(codec.dump(payload)) == payload


def test_payload_without_optional_fields_round_trips() -> None:
    codec = SessionCodec([NEW], MAX_AGE, Clock())
    payload = replace(
        make_payload(), user_id="", access_token=None, refresh_token=None, scopes=()
    )

    assert codec.load(codec.dump(payload)) == replace(payload, access_expires_at=0.0)


def test_payload_is_small_versioned_json() -> None:
    clock = Clock()
    value = SessionCodec([NEW], MAX_AGE, clock).dump(make_payload())

    sealed = CookieCodec([NEW], SESSION_PURPOSE, clock).open(value, MAX_AGE)

    assert sealed is not None
    fields = json.loads(sealed)
    assert fields["v"] == 1
    assert max(map(len, fields)) <= 2
    assert b" " not in sealed.replace(b"identity mysubreddits", b"")


def test_repr_redacts_tokens() -> None:
    text = repr(make_payload())

    assert ACCESS not in text
    assert REFRESH not in text
    assert "Spez_Fan-1" in text


def test_key_rotation_old_cookie_opens_with_new_and_old(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    old_cookie = SessionCodec([OLD], MAX_AGE, clock).dump(make_payload())

    rotating = SessionCodec([NEW, OLD], MAX_AGE, clock)

    assert rotating.load(old_cookie) == make_payload()
    assert rotating.needs_rotation(old_cookie)
    assert SessionCodec([NEW], MAX_AGE, clock).load(old_cookie) is None
    assert "tampered or other key" in caplog.text


def test_key_rotation_new_secret_seals() -> None:
    clock = Clock()
    rotating = SessionCodec([NEW, OLD], MAX_AGE, clock)

    new_cookie = rotating.dump(make_payload())

    assert not rotating.needs_rotation(new_cookie)
    assert SessionCodec([NEW], MAX_AGE, clock).load(new_cookie) == make_payload()
    assert SessionCodec([OLD], MAX_AGE, clock).load(new_cookie) is None


def sealed(data: bytes) -> Callable[[Clock], str]:
    """A cookie sealed with the session key that holds data as its payload."""
    return lambda clock: CookieCodec([NEW], SESSION_PURPOSE, clock).seal(data)


def payload_json(**overrides: Any) -> Callable[[Clock], str]:
    fields = {"v": 1, "u": "Spez_Fan-1", "c": NOW, "e": NOW + MAX_AGE}
    fields.update(overrides)
    text = json.dumps({k: v for k, v in fields.items() if v is not ...})
    return sealed(text.replace("Infinity", "1e400").encode())


def good_cookie(clock: Clock) -> str:
    return SessionCodec([NEW], MAX_AGE, clock).dump(make_payload(clock.now))


def flip_char(clock: Clock) -> str:
    value = good_cookie(clock)
    middle = len(value) // 2
    return value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1 :]


def flip_bit(clock: Clock) -> str:
    raw = bytearray(base64.urlsafe_b64decode(good_cookie(clock)))
    raw[40] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).decode()


def other_key(clock: Clock) -> str:
    return SessionCodec([OTHER], MAX_AGE, clock).dump(make_payload(clock.now))


def expired_by_payload(clock: Clock) -> str:
    payload = replace(make_payload(clock.now), expires_at=clock.now + 10)
    value = SessionCodec([NEW], MAX_AGE, clock).dump(payload)
    clock.now += 10
    return value


def expired_by_ttl(clock: Clock) -> str:
    payload = replace(make_payload(clock.now), expires_at=clock.now + 10 * MAX_AGE)
    value = SessionCodec([NEW], MAX_AGE, clock).dump(payload)
    clock.now += MAX_AGE + 2
    return value


def from_the_future(clock: Clock) -> str:
    clock.now += 3600
    value = good_cookie(clock)
    clock.now -= 3600
    return value


@pytest.mark.parametrize(
    ("make_cookie", "reason"),
    [
        pytest.param(flip_char, "tampered or other key", id="tampered"),
        pytest.param(flip_bit, "tampered or other key", id="bit-flipped"),
        pytest.param(lambda c: good_cookie(c)[:-10], "malformed", id="truncated"),
        pytest.param(
            lambda c: good_cookie(c)[:-12], "tampered or other key", id="truncated-4"
        ),
        pytest.param(other_key, "tampered or other key", id="other-key"),
        pytest.param(expired_by_payload, "expired", id="expired-payload"),
        pytest.param(expired_by_ttl, "expired", id="expired-fernet-ttl"),
        pytest.param(from_the_future, "issued in the future", id="future"),
        pytest.param(lambda c: "not-a-cookie", "malformed", id="garbage"),
        pytest.param(lambda c: "", "malformed", id="empty"),
        pytest.param(lambda c: "gAAAAAé" * 20, "malformed", id="non-ascii"),
        pytest.param(lambda c: "A" * (MAX_COOKIE_CHARS + 1), "too long", id="huge"),
        pytest.param(payload_json(v=2), "unsupported version", id="version-2"),
        pytest.param(payload_json(v=...), "unsupported version", id="no-version"),
        pytest.param(sealed(b"{not json"), "malformed", id="bad-json"),
        pytest.param(sealed(b"\xff\xfe"), "malformed", id="not-utf8"),
        pytest.param(sealed(b"[1, 2]"), "malformed", id="json-list"),
        pytest.param(payload_json(u=5), "malformed", id="user-number"),
        pytest.param(payload_json(u=""), "malformed", id="user-empty"),
        pytest.param(payload_json(u=...), "malformed", id="user-missing"),
        pytest.param(payload_json(e="soon"), "malformed", id="expiry-text"),
        pytest.param(payload_json(e=True), "malformed", id="expiry-bool"),
        pytest.param(payload_json(e=float("inf")), "malformed", id="expiry-inf"),
        pytest.param(payload_json(a=123), "malformed", id="token-number"),
        pytest.param(payload_json(s=["identity"]), "malformed", id="scopes-list"),
    ],
)
def test_broken_cookie_is_refused_with_one_warning(
    caplog: pytest.LogCaptureFixture, make_cookie: Callable[[Clock], str], reason: str
) -> None:
    clock = Clock()
    value = make_cookie(clock)
    caplog.set_level(logging.WARNING, logger="gateway.auth")

    assert SessionCodec([NEW], MAX_AGE, clock).load(value) is None

    [record] = auth_warnings(caplog)
    assert record.levelno == logging.WARNING
    assert record.getMessage() == f"session cookie refused: {reason}"
    assert not value or value[:40] not in caplog.text


def test_cookie_type_confusion_login_state_cookie_is_not_a_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    states = LoginStates([NEW], COOKIE, "/oauth2/callback", True, clock)
    _, _, login_cookie = states.begin("/dashboard")

    assert SessionCodec([NEW], MAX_AGE, clock).load(login_cookie) is None
    [record] = auth_warnings(caplog)
    assert record.getMessage() == "session cookie refused: tampered or other key"


def test_dump_refuses_a_cookie_too_long_for_browsers() -> None:
    codec = SessionCodec([NEW], MAX_AGE, Clock())

    with pytest.raises(ValueError, match="exceeds 4096"):
        codec.dump(make_payload(access="a" * 2000, refresh="r" * 2000))


# aiohttp_session keeps its state on the request under str keys, which aiohttp
# 3.14 warns about once per process.
aiohttp_session_str_keys = pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session"
)


def make_app(clock: Clock, *, secure: bool = False) -> web.Application:
    config = SessionConfig(
        secrets=(NEW,), cookie_name=COOKIE, cookie_secure=secure, max_age=MAX_AGE
    )
    storage = SessionStorage(
        CookieStore(SessionCodec(config.secrets, MAX_AGE, clock), clock), config, clock
    )
    access = "a" * 1200

    async def sign_in(request: web.Request) -> web.Response:
        session = await new_session(request)
        store_payload(session, make_payload(clock.now, access=access, refresh=None))
        return web.Response(text="signed in")

    async def whoami(request: web.Request) -> web.Response:
        payload = payload_from_session(await get_session(request))
        return web.json_response({"user": payload.user if payload else None})

    async def touch(request: web.Request) -> web.Response:
        session = await get_session(request)
        payload = payload_from_session(session)
        assert payload is not None
        store_payload(session, payload)
        return web.Response(text="touched")

    async def sign_out(request: web.Request) -> web.Response:
        (await get_session(request)).invalidate()
        return web.Response(text="signed out")

    async def stream(request: web.Request) -> web.StreamResponse:
        session = await new_session(request)
        store_payload(session, make_payload(clock.now))
        response = web.StreamResponse()
        await response.prepare(request)
        return response

    app = web.Application(middlewares=[session_middleware(storage)])
    app.router.add_get("/oauth2/sign_in", sign_in)
    app.router.add_get("/oauth2/whoami", whoami)
    app.router.add_get("/oauth2/touch", touch)
    app.router.add_get("/oauth2/sign_out", sign_out)
    app.router.add_get("/oauth2/stream", stream)
    return app


def the_cookie(set_cookie: str) -> Any:
    jar: SimpleCookie = SimpleCookie()
    jar.load(set_cookie)
    return jar[COOKIE]


@aiohttp_session_str_keys
@pytest.mark.parametrize("secure", [True, False])
async def test_session_cookie_attributes(aiohttp_client: Any, secure: bool) -> None:
    client = await aiohttp_client(make_app(Clock(), secure=secure))

    response = await client.get("/oauth2/sign_in")

    [line] = response.headers.getall("Set-Cookie")
    cookie = the_cookie(line)
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == str(MAX_AGE)
    assert bool(cookie["secure"]) is secure
    assert not cookie["domain"]


@aiohttp_session_str_keys
async def test_session_cookie_stays_well_under_4096_bytes(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_app(Clock(), secure=True))

    response = await client.get("/oauth2/sign_in")

    [line] = response.headers.getall("Set-Cookie")
    assert len(f"Set-Cookie: {line}".encode()) < 2300


@aiohttp_session_str_keys
async def test_session_round_trips_through_the_middleware(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_app(Clock()))

    await client.get("/oauth2/sign_in")
    response = await client.get("/oauth2/whoami")

    assert await response.json() == {"user": "Spez_Fan-1"}
    assert "Set-Cookie" not in response.headers


@aiohttp_session_str_keys
async def test_saved_session_max_age_is_the_remaining_lifetime(
    aiohttp_client: Any,
) -> None:
    clock = Clock()
    client = await aiohttp_client(make_app(clock))
    await client.get("/oauth2/sign_in")

    clock.now += 1000
    response = await client.get("/oauth2/touch")

    cookie = the_cookie(response.headers["Set-Cookie"])
    assert cookie["max-age"] == str(MAX_AGE - 1000)


@aiohttp_session_str_keys
async def test_broken_session_cookie_gives_a_new_empty_session(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = await aiohttp_client(make_app(Clock()))

    response = await client.get("/oauth2/whoami", cookies={COOKIE: "forged-value"})

    assert await response.json() == {"user": None}
    [record] = auth_warnings(caplog)
    assert record.getMessage() == "session cookie refused: malformed"
    assert "forged-value" not in caplog.text


@aiohttp_session_str_keys
async def test_sign_out_deletes_the_cookie_with_its_attributes(
    aiohttp_client: Any,
) -> None:
    client = await aiohttp_client(make_app(Clock(), secure=True))
    signed_in = await client.get("/oauth2/sign_in")
    value = the_cookie(signed_in.headers["Set-Cookie"]).value

    response = await client.get("/oauth2/sign_out", cookies={COOKIE: value})

    cookie = the_cookie(response.headers["Set-Cookie"])
    assert cookie.value == ""
    assert cookie["max-age"] == "0"
    assert cookie["secure"] is True
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"


@aiohttp_session_str_keys
async def test_middleware_does_not_save_into_a_stream_response(
    aiohttp_client: Any,
) -> None:
    # Pins the aiohttp_session trap documented on SessionStorage.
    client = await aiohttp_client(make_app(Clock()))

    response = await client.get("/oauth2/stream")

    assert "Set-Cookie" not in response.headers
