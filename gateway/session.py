"""The session payload and its encrypted cookie: keys, rotation, size limit."""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp_session import Session
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.config import Secret
from gateway.policy import UserFacts

Clock = Callable[[], float]

SESSION_PURPOSE = "session"
MAX_COOKIE_CHARS = 4096  # browsers keep at most ~4096 bytes per cookie
PAYLOAD_VERSION = 1

_KEY_SALT = b"reddit-gateway cookie keys"
_MIN_FERNET_BYTES = 1 + 8 + 16 + 16 + 32  # version, time, IV, one block, HMAC
_MAX_CLOCK_SKEW = 60  # what Fernet tolerates for a token from the future
PAYLOAD_KEY = "payload"  # where aiohttp-session data holds the SessionPayload

log = logging.getLogger("gateway.auth")


@dataclass(frozen=True, slots=True)
class SessionPayload:
    """Who is signed in, until when, and reddit's tokens (reprs redacted by Secret)."""

    user: str
    user_id: str
    created_at: float
    expires_at: float
    access_token: Secret | None
    access_expires_at: float
    refresh_token: Secret | None
    scopes: tuple[str, ...]
    sid: str = ""  # a random id for this sign-in, kept across renewals
    last_seen: float = 0.0  # when the session was last renewed for idle_timeout
    facts: UserFacts | None = None  # what the access rules judge
    checked_at: float = 0.0  # when the facts were last read from reddit


def derive_key(secret: Secret, purpose: str) -> bytes:
    """A Fernet key for one purpose, derived from a configured secret (HKDF-SHA256)."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=_KEY_SALT, info=purpose.encode()
    )
    return base64.urlsafe_b64encode(hkdf.derive(secret.reveal().encode()))


class CookieCodec:
    """Seals cookie values for one purpose: the first secret seals, any secret opens."""

    def __init__(self, secrets: Sequence[Secret], purpose: str, clock: Clock) -> None:
        # SECURITY: cookie type confusion: each purpose has its own keys, so a
        # cookie sealed for one purpose never opens as another.
        fernets = [Fernet(derive_key(secret, purpose)) for secret in secrets]
        self._fernet = MultiFernet(fernets)
        self._primary = fernets[0]
        self._rotating = len(fernets) > 1
        self._clock = clock

    def seal(self, data: bytes) -> str:
        return self._fernet.encrypt_at_time(data, int(self._clock())).decode("ascii")

    def open(self, token: str, ttl: int) -> bytes | None:
        """The sealed bytes, or None if token is forged, damaged or older than ttl."""
        if len(token) > MAX_COOKIE_CHARS or not token.isascii():
            return None

        try:
            return self._fernet.decrypt_at_time(token, ttl, int(self._clock()))
        except InvalidToken:
            return None

    def refusal_reason(self, token: str, ttl: int) -> str:
        """Why open() refused token, for a log line; slower than open()."""
        if len(token) > MAX_COOKIE_CHARS:
            return "too long"
        try:
            raw = base64.urlsafe_b64decode(token)
        except ValueError:
            return "malformed"
        if len(raw) < _MIN_FERNET_BYTES or raw[0] != 0x80:
            return "malformed"

        try:
            issued_at = self._fernet.extract_timestamp(token)
        except InvalidToken:
            return "tampered or other key"

        now = int(self._clock())
        if issued_at + ttl < now:
            return "expired"
        if issued_at > now + _MAX_CLOCK_SKEW:
            return "issued in the future"
        return "tampered or other key"

    def needs_rotation(self, token: str) -> bool:
        """True when an opened token was sealed by an older secret: seal it again."""
        if not self._rotating:
            return False

        try:
            self._primary.extract_timestamp(token)
        except InvalidToken:
            return True
        return False


class SessionCodec:
    """SessionPayload <-> session cookie value; load() is on every proxied request."""

    def __init__(self, secrets: Sequence[Secret], max_age: int, clock: Clock) -> None:
        self._cookies = CookieCodec(secrets, SESSION_PURPOSE, clock)
        self._clock = clock
        self.max_age = max_age

    def dump(self, payload: SessionPayload) -> str:
        """The cookie value; ValueError if it would be too long for a browser."""
        value = self._cookies.seal(encode_payload(payload))
        if len(value) > MAX_COOKIE_CHARS:
            raise ValueError(
                f"a session cookie of {len(value)} characters exceeds"
                f" {MAX_COOKIE_CHARS}; keep fewer or shorter tokens in it"
            )
        return value

    def load(self, cookie_value: str) -> SessionPayload | None:
        """The payload, or None and one warning naming why (never the value)."""
        data = self._cookies.open(cookie_value, self.max_age)
        if data is None:
            reason = self._cookies.refusal_reason(cookie_value, self.max_age)
            log.warning("session cookie refused: %s", reason)
            return None

        try:
            payload = decode_payload(data)
        except ValueError as exc:
            log.warning("session cookie refused: %s", exc)
            return None

        if payload.expires_at <= self._clock():
            log.warning("session cookie refused: %s", "expired")
            return None
        return payload

    def needs_rotation(self, cookie_value: str) -> bool:
        return self._cookies.needs_rotation(cookie_value)

    def lifetime_left(self, payload: SessionPayload) -> int:
        """Seconds the cookie should live (its Max-Age): until payload.expires_at."""
        return max(0, min(self.max_age, math.ceil(payload.expires_at - self._clock())))


def encode_payload(payload: SessionPayload) -> bytes:
    fields: dict[str, Any] = {
        "v": PAYLOAD_VERSION,
        "u": payload.user,
        "c": payload.created_at,
        "e": payload.expires_at,
    }
    if payload.user_id:
        fields["i"] = payload.user_id
    if payload.access_token is not None:
        fields["a"] = payload.access_token.reveal()
        fields["ae"] = payload.access_expires_at
    if payload.refresh_token is not None:
        fields["r"] = payload.refresh_token.reveal()
    if payload.scopes:
        fields["s"] = " ".join(payload.scopes)
    if payload.sid:
        fields["id"] = payload.sid
    if payload.last_seen:
        fields["l"] = payload.last_seen
    if payload.facts is not None:
        fields["f"] = _encode_facts(payload.facts)
        fields["fc"] = payload.checked_at
    return json.dumps(fields, separators=(",", ":"), allow_nan=False).encode()


def decode_payload(data: bytes) -> SessionPayload:
    """The payload made by encode_payload; ValueError naming the reason otherwise."""
    try:
        fields = json.loads(data)
        version = fields.get("v")
    except (ValueError, AttributeError):
        raise ValueError("malformed") from None
    if version != PAYLOAD_VERSION:
        raise ValueError("unsupported version")

    try:
        return SessionPayload(
            user=_text(fields["u"], empty=False),
            user_id=_text(fields.get("i", "")),
            created_at=_number(fields["c"]),
            expires_at=_number(fields["e"]),
            access_token=_secret(fields.get("a")),
            access_expires_at=_number(fields.get("ae", 0)),
            refresh_token=_secret(fields.get("r")),
            scopes=tuple(_text(fields.get("s", "")).split()),
            sid=_text(fields.get("id", "")),
            last_seen=_number(fields.get("l", 0)),
            facts=_decode_facts(fields) if "f" in fields else None,
            checked_at=_number(fields.get("fc", 0)),
        )
    except (KeyError, TypeError, OverflowError, AttributeError):
        raise ValueError("malformed") from None


def _encode_facts(facts: UserFacts) -> dict[str, Any]:
    # The user's name and scopes are in the payload already.
    fields: dict[str, Any] = {"k": facts.karma, "su": facts.suspended}
    if facts.created_utc is not None:
        fields["c"] = facts.created_utc
    if facts.verified_email is not None:
        fields["ve"] = facts.verified_email
    for key, names in (
        ("m", facts.moderator_of),
        ("sb", facts.subscriber_of),
        ("ct", facts.contributor_of),
    ):
        if names:
            fields[key] = sorted(names)
    return fields


def _decode_facts(payload: Any) -> UserFacts:
    fields = payload["f"]
    created = fields.get("c")
    verified = fields.get("ve")
    if verified is not None and not isinstance(verified, bool):
        raise TypeError
    if not isinstance(fields.get("su", False), bool):
        raise TypeError
    return UserFacts(
        name=_text(payload["u"], empty=False),
        created_utc=None if created is None else _number(created),
        karma=int(_number(fields.get("k", 0))),
        verified_email=verified,
        suspended=fields.get("su", False),
        moderator_of=_names(fields.get("m", [])),
        subscriber_of=_names(fields.get("sb", [])),
        contributor_of=_names(fields.get("ct", [])),
        scopes=frozenset(_text(payload.get("s", "")).split()),
    )


def _names(value: object) -> frozenset[str]:
    if not isinstance(value, list):
        raise TypeError
    return frozenset(_text(name) for name in value)


def _text(value: object, *, empty: bool = True) -> str:
    if not isinstance(value, str) or not (empty or value):
        raise TypeError
    return value


def _secret(value: object) -> Secret | None:
    return None if value is None else Secret(_text(value))


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError
    number = float(value)
    if not math.isfinite(number):
        raise TypeError
    return number


def write_cookie(
    response: web.StreamResponse,
    name: str,
    value: str,
    *,
    path: str,
    max_age: int,
    secure: bool,
    domain: str | None = None,
) -> None:
    """Set one of the gateway's cookies (HttpOnly, SameSite=Lax, always a Max-Age).

    An empty value with max_age=0 deletes it, with the attributes it was set
    with (a "__Host-" or "__Secure-" cookie is only deleted by a Secure one).
    """
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        secure=secure,
        domain=domain,
        httponly=True,
        samesite="Lax",
    )


def payload_from_session(session: Session) -> SessionPayload | None:
    payload = session.get(PAYLOAD_KEY)
    return payload if isinstance(payload, SessionPayload) else None


def store_payload(session: Session, payload: SessionPayload) -> None:
    """Sign in: the middleware seals payload into the cookie on the response."""
    session[PAYLOAD_KEY] = payload
