"""Sessions kept in redis, sealed with a key that only the browser's cookie holds."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import math
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.config import Secret, SessionConfig
from gateway.errors import SessionStoreUnavailable
from gateway.session import (
    Clock,
    SessionPayload,
    decode_payload,
    derive_key,
    encode_payload,
)

# A request waits at most this long for redis, then gets a 503. The redis URL's
# query (?socket_timeout=...) overrides it.
TIMEOUT = 2.0

_SID = re.compile(r"[A-Za-z0-9_-]{22}")  # 128 random bits
_HANDLE = re.compile(r"v1\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})")  # + 256 bits
_SESSION_PREFIX = "rg:s:"
_INDEX_PREFIX = "rg:u:"
_CLAIM_PREFIX = "rg:r:"
_RECORD_SALT = b"reddit-gateway redis session"
_INDEX_PURPOSE = "redis-user-index"
_RECORD_PURPOSE = "redis-session-record"

# Writes a session and lists it in its user's index, in one atomic step. An
# update ("XX") writes only a session that still exists, so a renewal that was
# under way when the session was revoked or signed out cannot bring it back.
_SAVE = """
if ARGV[4] == "XX" then
  if not redis.call("SET", KEYS[1], ARGV[1], "EX", ARGV[2], "XX") then
    return 0
  end
else
  redis.call("SET", KEYS[1], ARGV[1], "EX", ARGV[2])
end
redis.call("SADD", KEYS[2], ARGV[3])
if redis.call("TTL", KEYS[2]) < tonumber(ARGV[2]) then
  redis.call("EXPIRE", KEYS[2], ARGV[2])
end
return 1
"""

log = logging.getLogger("gateway.auth")
_REFUSED = "session cookie refused: %s"  # as the cookie store words it


@dataclass(frozen=True, slots=True)
class Handle:
    """The session cookie's value, "v1.<sid>.<key>", and its two parts."""

    sid: str
    key: bytes
    value: str

    @classmethod
    def mint(cls, sid: str) -> Handle:
        key = secrets.token_bytes(32)
        text = base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")
        return cls(sid, key, f"v1.{sid}.{text}")

    @classmethod
    def parse(cls, value: str) -> Handle | None:
        match = _HANDLE.fullmatch(value)
        if match is None:
            return None
        sid, text = match.groups()
        key = base64.urlsafe_b64decode(text + "=")
        if base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii") != text:
            return None  # a non-canonical spelling of some key
        return cls(sid, key, value)

    @property
    def record_name(self) -> str:
        return _record_name(self.sid)

    def fernet(self, gateway_key: bytes) -> Fernet:
        """The record's key: from the cookie's key AND the gateway's secret.

        The cookie's key alone keeps a copy of redis unreadable; the gateway's
        secret keeps someone who can write to redis from minting sessions.
        """
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=_RECORD_SALT,
            info=self.sid.encode("ascii"),
        )
        return Fernet(base64.urlsafe_b64encode(hkdf.derive(self.key + gateway_key)))


class RedisStore:
    """Each session sealed in redis; the cookie holds only its id and its key.

    A record's name is a SHA-256 of the session id and its value is the payload
    sealed with a key derived from the cookie's key, so a copy of redis reveals
    no user or token and cannot be turned into a working cookie. The index that
    finds a user's sessions is named by an HMAC of the username under the
    session secret, for the same reason. Sign-out and revoke delete the record,
    which ends the session on every replica.

    Every redis failure raises SessionStoreUnavailable: a session that cannot be
    checked is neither let in nor signed out.
    """

    kind = "redis"

    def __init__(
        self, client: Redis, index_secrets: Sequence[Secret], clock: Clock
    ) -> None:
        self._redis = client
        # Every configured secret names an index, so revoke_user finds sessions
        # listed before a key rotation; the first secret names the one written.
        self._index_keys = [derive_key(s, _INDEX_PURPOSE) for s in index_secrets]
        # SECURITY: session forgery by redis write access: records are sealed
        # under the gateway's secret too; the first seals, any opens.
        self._record_keys = [derive_key(s, _RECORD_PURPOSE) for s in index_secrets]
        self._clock = clock
        self._save_script = client.register_script(_SAVE)

    @classmethod
    def from_config(cls, config: SessionConfig, clock: Clock) -> RedisStore:
        client = Redis.from_url(
            config.redis_url.reveal(),
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
            # One retry replaces a pooled connection that redis closed (say, on
            # a restart); an outage is reported at once, not after ten backoffs.
            retry=Retry(NoBackoff(), 1),
        )
        return cls(client, config.secrets, clock)

    async def load(self, handle: str) -> SessionPayload | None:
        """The payload, or None and one warning naming why (never the value)."""
        parsed = Handle.parse(handle)
        if parsed is None:
            log.warning(_REFUSED, "malformed")
            return None

        with _unavailable_on_error():
            record = await self._redis.get(parsed.record_name)
        if record is None:
            log.warning(_REFUSED, "unknown or ended")
            return None

        opened = _open(parsed, record, self._record_keys)
        if isinstance(opened, str):
            log.warning(_REFUSED, opened)
            return None
        if opened.expires_at <= self._clock():
            log.warning(_REFUSED, "expired")
            return None
        return opened

    async def save(self, payload: SessionPayload, previous: str | None = None) -> str:
        handle = Handle.parse(previous) if previous else None
        update = handle is not None and handle.sid == payload.sid
        if handle is None or not update:
            sid = payload.sid if _SID.fullmatch(payload.sid) else _new_sid()
            payload = replace(payload, sid=sid)
            handle = Handle.mint(sid)

        now = self._clock()
        fernet = handle.fernet(self._record_keys[0])
        sealed = fernet.encrypt_at_time(encode_payload(payload), int(now))
        lifetime = max(1, math.ceil(payload.expires_at - now))
        with _unavailable_on_error():
            await self._save_script(
                keys=[handle.record_name, self._index_names(payload.user)[0]],
                args=[sealed, lifetime, _digest(handle.sid), "XX" if update else ""],
            )
        return handle.value

    async def delete(self, handle: str) -> None:
        parsed = Handle.parse(handle)
        if parsed is None:
            return

        with _unavailable_on_error():
            record = await self._redis.get(parsed.record_name)
            if record is None:
                return
            opened = _open(parsed, record, self._record_keys)
            # SECURITY: forced sign-out: a cookie that cannot open the session
            # (its id with a made-up key) must not be able to end it.
            if isinstance(opened, str):
                return
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(parsed.record_name)
                for index in self._index_names(opened.user):
                    pipe.srem(index, _digest(parsed.sid))
                await pipe.execute()

    async def revoke_user(self, user: str) -> int:
        """Ends every session of user (any spelling); returns how many there were."""
        indexes = self._index_names(user)
        with _unavailable_on_error():
            members: set[str] = set()
            for index in indexes:
                members |= {_text(m) for m in await self._redis.smembers(index)}
            if not members:
                return 0

            async with self._redis.pipeline(transaction=True) as pipe:
                for member in members:
                    pipe.delete(_SESSION_PREFIX + member)
                for index in indexes:
                    pipe.srem(index, *members)
                ended = await pipe.execute()
        return sum(ended[: len(members)])

    async def claim_refresh(self, sid: str, seconds: float) -> bool:
        with _unavailable_on_error():
            claimed = await self._redis.set(
                _CLAIM_PREFIX + _digest(sid),
                b"1",
                nx=True,
                px=max(1, math.ceil(seconds * 1000)),
            )
        return bool(claimed)

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(TIMEOUT):
                return bool(await self._redis.ping())
        except (RedisError, OSError):  # TimeoutError is an OSError
            return False

    async def close(self) -> None:
        await self._redis.aclose()

    def needs_reissue(self, handle: str) -> bool:
        return False  # the cookie holds no key of ours that could rotate

    def fits(self, payload: SessionPayload) -> bool:
        return True

    def _index_names(self, user: str) -> list[str]:
        name = user.casefold().encode()
        return [
            _INDEX_PREFIX + hmac.new(key, name, hashlib.sha256).hexdigest()
            for key in self._index_keys
        ]


def _open(
    handle: Handle, record: bytes | str, gateway_keys: Sequence[bytes]
) -> SessionPayload | str:
    """The payload sealed in record, or why it cannot be opened with handle."""
    fernet = MultiFernet([handle.fernet(key) for key in gateway_keys])
    try:
        payload = decode_payload(fernet.decrypt(record))
    except InvalidToken:
        return "tampered or other key"
    except ValueError as exc:
        return str(exc)
    if payload.sid != handle.sid:
        return "tampered or other key"
    return payload


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode("ascii")


def _new_sid() -> str:
    return secrets.token_urlsafe(16)


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def _record_name(sid: str) -> str:
    # SECURITY: session hijack from a copy of redis: records are named by a
    # hash of the id, so a dump lists no id that a cookie could be built from.
    return _SESSION_PREFIX + _digest(sid)


@contextlib.contextmanager
def _unavailable_on_error() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise SessionStoreUnavailable(f"redis: {type(exc).__name__}") from exc
