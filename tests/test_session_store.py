"""One conformance suite for every session store (cookie, redis), then what only
the redis store promises: revocation that sticks, key rotation, outages."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import pytest
import redis

from gateway.config import Secret, SessionConfig
from gateway.errors import SessionStoreUnavailable
from gateway.redis_store import Handle, RedisStore
from gateway.session import SessionCodec, SessionPayload
from gateway.session_store import VERIFIED_CACHE_SECONDS, CookieStore, SessionStore
from tests.conftest import FakeClock, free_port

SECRET = Secret("s" * 40)
OTHER_SECRET = Secret("o" * 40)
MAX_AGE = 3600
USER = "Spez_Fan-1"
ACCESS = "eyJhbGciOiJSUzI1NiJ9.access-token-value"
REFRESH = "123456789012-refresh-token-value"


@dataclass
class StoreCase:
    store: SessionStore
    clock: FakeClock
    # The capability that sets the stores apart: the session lives on the
    # server, so ending it there ends every copy of its cookie, and replicas
    # can agree on who refreshes it.
    server_side: bool
    # A handle for the same session that this store must refuse: made with a
    # key that is not the one the session was sealed with.
    other_key: Callable[[SessionPayload, str], Awaitable[str]]
    # Everything the store keeps on its server, as bytes.
    dump: Callable[[], bytes]


def make_payload(clock: FakeClock, user: str = USER) -> SessionPayload:
    now = clock()
    return SessionPayload(
        user=user,
        user_id="t2_abc123",
        created_at=now,
        expires_at=now + MAX_AGE,
        access_token=Secret(ACCESS),
        access_expires_at=now + 3600,
        refresh_token=Secret(REFRESH),
        scopes=("identity",),
        sid=secrets.token_urlsafe(16),
        last_seen=now,
    )


def redis_config(url: str, *secrets: Secret) -> SessionConfig:
    return SessionConfig(
        secrets=secrets or (SECRET,),
        cookie_name="_gw",
        cookie_secure=False,
        max_age=MAX_AGE,
        store="redis",
        redis_url=Secret(url),
    )


def redis_dump(url: str) -> bytes:
    """What `KEYS *` and a GET (or SMEMBERS) of each key show an intruder."""
    parts: list[bytes] = []
    with redis.Redis.from_url(url) as client:
        for key in client.keys("*"):
            parts.append(key)
            if client.type(key) == b"set":
                parts.extend(client.smembers(key))
            else:
                parts.append(client.get(key))
    return b"\n".join(parts)


@pytest.fixture(params=["cookie", "redis"])
async def case(request: pytest.FixtureRequest) -> AsyncIterator[StoreCase]:
    clock = FakeClock()
    if request.param == "cookie":
        other = CookieStore(SessionCodec([OTHER_SECRET], MAX_AGE, clock), clock)

        async def other_cookie(payload: SessionPayload, handle: str) -> str:
            return await other.save(payload)

        store = CookieStore(SessionCodec([SECRET], MAX_AGE, clock), clock)
        yield StoreCase(store, clock, False, other_cookie, lambda: b"")
        return

    url: str = request.getfixturevalue("redis_url")

    async def other_redis_key(payload: SessionPayload, handle: str) -> str:
        parsed = Handle.parse(handle)
        assert parsed is not None
        return Handle.mint(parsed.sid).value

    redis_store = RedisStore.from_config(redis_config(url), clock)
    try:
        yield StoreCase(
            redis_store, clock, True, other_redis_key, lambda: redis_dump(url)
        )
    finally:
        await redis_store.close()


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_config(redis_config(redis_url), FakeClock())
    yield store
    await store.close()


def auth_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.auth"]


# --- the contract, for every store -------------------------------------------


async def test_a_saved_session_loads_back(case: StoreCase) -> None:
    payload = make_payload(case.clock)

    handle = await case.store.save(payload)

    assert await case.store.load(handle) == payload
    assert await case.store.ping()
    assert not case.store.needs_reissue(handle)


def _flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


MANGLED: dict[str, Callable[[str], str]] = {
    "empty": lambda handle: "",
    "garbage": lambda handle: "not-a-session-cookie",
    "truncated": lambda handle: handle[:-5],
    "extended": lambda handle: handle + "AAAA",
    "flipped in the middle": lambda handle: _flip(handle, len(handle) // 2),
    "flipped near the end": lambda handle: _flip(handle, len(handle) - 8),
    "not ascii": lambda handle: handle[:-1] + "é",
    "too long": lambda handle: handle + "A" * 5000,
}


@pytest.mark.parametrize("mangle", MANGLED.values(), ids=MANGLED.keys())
async def test_a_damaged_handle_is_refused_with_one_warning(
    case: StoreCase, mangle: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    handle = await case.store.save(make_payload(case.clock))
    damaged = mangle(handle)
    caplog.set_level(logging.WARNING, "gateway.auth")

    assert await case.store.load(damaged) is None

    messages = auth_messages(caplog)
    assert len(messages) == 1
    assert messages[0].startswith("session cookie refused: ")
    assert not damaged or damaged not in messages[0]


async def test_a_handle_with_another_key_is_refused(
    case: StoreCase, caplog: pytest.LogCaptureFixture
) -> None:
    payload = make_payload(case.clock)
    handle = await case.store.save(payload)
    forged = await case.other_key(payload, handle)
    caplog.set_level(logging.WARNING, "gateway.auth")

    assert await case.store.load(forged) is None

    assert auth_messages(caplog) == ["session cookie refused: tampered or other key"]
    assert await case.store.load(handle) == payload


async def test_a_session_past_its_expiry_is_refused(
    case: StoreCase, caplog: pytest.LogCaptureFixture
) -> None:
    payload = make_payload(case.clock)
    handle = await case.store.save(payload)
    caplog.set_level(logging.WARNING, "gateway.auth")

    case.clock.now = payload.expires_at

    assert await case.store.load(handle) is None
    assert auth_messages(caplog) == ["session cookie refused: expired"]


async def test_delete_ends_the_session_only_where_it_lives(case: StoreCase) -> None:
    payload = make_payload(case.clock)
    handle = await case.store.save(payload)

    await case.store.delete(handle)

    # Both refuse the handle afterwards: the cookie store remembers the ended
    # session in this process only (another replica would still accept a copy,
    # see tests/test_replicas_functional.py); the redis store deleted it.
    assert await case.store.load(handle) is None


async def test_a_cookie_opened_moments_ago_is_not_opened_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    codec = SessionCodec([SECRET], MAX_AGE, clock)
    store = CookieStore(codec, clock)
    payload = make_payload(clock)
    handle = await store.save(payload)
    opened: list[str] = []
    real_load = codec.load
    monkeypatch.setattr(codec, "load", lambda v: opened.append(v) or real_load(v))

    assert await store.load(handle) == payload
    assert await store.load(handle) == payload
    assert len(opened) == 1

    clock.advance(VERIFIED_CACHE_SECONDS)
    assert await store.load(handle) == payload
    assert len(opened) == 2


async def test_a_remembered_cookie_never_outlives_its_session() -> None:
    clock = FakeClock()
    store = CookieStore(SessionCodec([SECRET], MAX_AGE, clock), clock)
    payload = replace(make_payload(clock), expires_at=clock() + 0.5)
    handle = await store.save(payload)
    assert await store.load(handle) == payload

    clock.advance(0.5)

    assert await store.load(handle) is None


async def test_a_remembered_cookie_is_refused_after_its_session_signed_out() -> None:
    clock = FakeClock()
    store = CookieStore(SessionCodec([SECRET], MAX_AGE, clock), clock)
    payload = make_payload(clock)
    handle = await store.save(payload)
    renewed = await store.save(replace(payload, last_seen=clock() + 1))
    assert await store.load(handle) == payload
    assert await store.load(renewed) is not None

    await store.delete(renewed)

    # The copy of the older cookie, though opened moments ago, is of the same
    # session: refused too.
    assert await store.load(renewed) is None
    assert await store.load(handle) is None


async def test_revoke_user_ends_every_session_of_that_user(case: StoreCase) -> None:
    first = await case.store.save(make_payload(case.clock))
    second = await case.store.save(make_payload(case.clock))
    other = make_payload(case.clock, user="someone_else")
    other_handle = await case.store.save(other)

    if not case.server_side:
        with pytest.raises(NotImplementedError, match='store = "redis"'):
            await case.store.revoke_user(USER)
        return

    assert await case.store.revoke_user(USER.upper()) == 2

    assert await case.store.load(first) is None
    assert await case.store.load(second) is None
    assert await case.store.load(other_handle) == other
    assert await case.store.revoke_user(USER) == 0


async def test_saving_a_renewal_keeps_a_server_side_handle(case: StoreCase) -> None:
    payload = make_payload(case.clock)
    handle = await case.store.save(payload)
    renewed = replace(payload, access_expires_at=payload.access_expires_at + 60)

    again = await case.store.save(renewed, handle)

    # Server-side: the same cookie, so no Set-Cookie; cookie: a new value.
    assert (again == handle) is case.server_side
    assert await case.store.load(again) == renewed


async def test_saving_another_session_over_a_handle_mints_a_new_one(
    case: StoreCase,
) -> None:
    old = make_payload(case.clock)
    old_handle = await case.store.save(old)
    new = make_payload(case.clock)

    new_handle = await case.store.save(new, old_handle)

    assert new_handle != old_handle
    assert await case.store.load(new_handle) == new
    assert await case.store.load(old_handle) == old


async def test_one_refresh_claim_at_a_time(case: StoreCase) -> None:
    sid = secrets.token_urlsafe(16)

    assert await case.store.claim_refresh(sid, 0.3)
    # A cookie store cannot coordinate replicas: every claim succeeds.
    assert await case.store.claim_refresh(sid, 0.3) is not case.server_side
    assert await case.store.claim_refresh(secrets.token_urlsafe(16), 0.3)

    await asyncio.sleep(0.4)
    assert await case.store.claim_refresh(sid, 0.3)


async def test_a_session_too_big_for_a_cookie_fits_only_on_the_server(
    case: StoreCase,
) -> None:
    payload = replace(make_payload(case.clock), access_token=Secret("a" * 5000))

    assert case.store.fits(payload) is case.server_side


async def test_a_dump_of_the_store_reveals_no_user_token_or_handle(
    case: StoreCase,
) -> None:
    # SECURITY: session hijack from a copy of redis.
    payload = make_payload(case.clock)
    handle = await case.store.save(payload)
    await case.store.save(replace(payload, last_seen=case.clock() + 60), handle)
    await case.store.claim_refresh(payload.sid, 5)

    dump = case.dump()

    assert bool(dump) is case.server_side
    assert USER.lower().encode() not in dump.lower()
    for secret in (ACCESS, REFRESH, handle, payload.sid, *handle.split(".")[1:]):
        assert secret.encode() not in dump


# --- what only the redis store promises --------------------------------------


async def test_redis_records_live_as_long_as_the_session(
    redis_store: RedisStore, redis_url: str
) -> None:
    payload = replace(make_payload(FakeClock()), expires_at=FakeClock()() + 100)
    await redis_store.save(payload)

    with redis.Redis.from_url(redis_url) as client:
        ttls = {key[:5]: client.ttl(key) for key in client.keys("*")}

    assert set(ttls) == {b"rg:s:", b"rg:u:"}
    assert 95 <= ttls[b"rg:s:"] <= 100
    assert ttls[b"rg:u:"] >= ttls[b"rg:s:"]


async def test_a_renewal_under_way_cannot_bring_back_a_revoked_session(
    redis_store: RedisStore,
) -> None:
    payload = make_payload(FakeClock())
    handle = await redis_store.save(payload)

    assert await redis_store.revoke_user(USER) == 1
    await redis_store.save(replace(payload, last_seen=payload.last_seen + 60), handle)

    assert await redis_store.load(handle) is None


async def test_a_made_up_key_cannot_sign_a_session_out(
    redis_store: RedisStore,
) -> None:
    # SECURITY: forced sign-out: the session id alone must not end a session.
    payload = make_payload(FakeClock())
    handle = await redis_store.save(payload)
    forged = Handle.mint(payload.sid).value

    await redis_store.delete(forged)

    assert await redis_store.load(handle) == payload


async def test_revoke_finds_sessions_listed_before_a_key_rotation(
    redis_url: str,
) -> None:
    clock = FakeClock()
    before = RedisStore.from_config(redis_config(redis_url, OTHER_SECRET), clock)
    after = RedisStore.from_config(redis_config(redis_url, SECRET, OTHER_SECRET), clock)
    try:
        handle = await before.save(make_payload(clock))

        assert await after.revoke_user(USER) == 1
        assert await after.load(handle) is None
    finally:
        await before.close()
        await after.close()


async def test_a_redis_outage_fails_closed() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    store = RedisStore.from_config(redis_config(url), FakeClock())
    handle = Handle.mint(secrets.token_urlsafe(16)).value
    try:
        assert not await store.ping()
        with pytest.raises(SessionStoreUnavailable, match="redis: ConnectionError"):
            await store.load(handle)
        with pytest.raises(SessionStoreUnavailable):
            await store.save(make_payload(FakeClock()))
        with pytest.raises(SessionStoreUnavailable):
            await store.claim_refresh("sid", 5)
        with pytest.raises(SessionStoreUnavailable):
            await store.revoke_user(USER)
    finally:
        await store.close()


async def test_session_forgery_by_redis_write_access_is_refused(
    redis_store: RedisStore, redis_url: str
) -> None:
    # Someone who can write to redis but lacks the gateway's secret runs their
    # own store against it and mints a session for any name they like.
    intruder = RedisStore.from_config(
        redis_config(redis_url, Secret("i" * 40)), FakeClock()
    )
    try:
        forged = await intruder.save(make_payload(FakeClock(), user="spez"))
    finally:
        await intruder.close()

    assert await redis_store.load(forged) is None
