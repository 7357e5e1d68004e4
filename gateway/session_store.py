"""Where sessions live: the SessionStore contract, the cookie store, and the
aiohttp-session storage that the /oauth2/* endpoints use on top of any store."""

from __future__ import annotations

import math
from typing import Protocol

from aiohttp import web
from aiohttp_session import AbstractStorage, Session, SessionData

from gateway.config import SessionConfig
from gateway.session import (
    PAYLOAD_KEY,
    Clock,
    SessionCodec,
    SessionPayload,
    payload_from_session,
    write_cookie,
)


class SessionStore(Protocol):
    """A session is found by its handle, the value of the session cookie.

    `save` returns the handle to put in the cookie, which is `previous` itself
    when the store keeps the payload on the server.
    """

    kind: str

    async def load(self, handle: str) -> SessionPayload | None: ...

    async def save(
        self, payload: SessionPayload, previous: str | None = None
    ) -> str: ...

    async def delete(self, handle: str) -> None: ...

    async def revoke_user(self, user: str) -> int: ...

    async def claim_refresh(self, sid: str, seconds: float) -> bool:
        """True if this replica should refresh the session's token now."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...

    def needs_reissue(self, handle: str) -> bool: ...

    def fits(self, payload: SessionPayload) -> bool:
        """False if this payload cannot be stored (a cookie has a size limit)."""
        ...


class CookieStore:
    """The whole payload, encrypted, in the cookie; nothing shared between replicas.

    A sign-out ends the session in that browser, and this process remembers the
    ended session until it would have expired, so a copied cookie is refused
    here too. Another replica, or this one after a restart, would still accept
    the copy until it expires: the redis store ends sessions everywhere.
    """

    kind = "cookie"

    def __init__(self, codec: SessionCodec, clock: Clock) -> None:
        self._codec = codec
        self._clock = clock
        self._ended: dict[str, float] = {}  # sid -> when its cookie expires anyway
        # cookie value -> (its payload, until when that may be reused): a browser
        # sends the same cookie on every request, and opening it is most of the
        # gateway's own cost per request.
        self._verified: dict[str, tuple[SessionPayload, float]] = {}

    async def load(self, handle: str) -> SessionPayload | None:
        now = self._clock()
        cached = self._verified.get(handle)
        if cached is not None and now < cached[1]:
            payload: SessionPayload | None = cached[0]
        else:
            payload = self._codec.load(handle)
            if payload is not None:
                self._remember(handle, payload, now)
        if payload is not None and payload.sid in self._ended:
            return None
        return payload

    def _remember(self, handle: str, payload: SessionPayload, now: float) -> None:
        if len(self._verified) >= VERIFIED_CACHE_CAP:
            self._verified = {h: e for h, e in self._verified.items() if e[1] > now}
            if len(self._verified) >= VERIFIED_CACHE_CAP:
                self._verified.clear()
        # Never past the session's expiry: the cache only saves the decryption.
        until = min(now + VERIFIED_CACHE_SECONDS, payload.expires_at)
        self._verified[handle] = (payload, until)

    async def save(self, payload: SessionPayload, previous: str | None = None) -> str:
        return self._codec.dump(payload)

    async def delete(self, handle: str) -> None:
        self._verified.pop(handle, None)
        payload = self._codec.load(handle)
        if payload is None or not payload.sid:
            return
        now = self._clock()
        if len(self._ended) >= ENDED_SESSIONS_CAP:
            self._ended = {s: t for s, t in self._ended.items() if t > now}
        if len(self._ended) < ENDED_SESSIONS_CAP:
            self._ended[payload.sid] = payload.expires_at

    async def revoke_user(self, user: str) -> int:
        raise NotImplementedError(
            'revoking sessions needs session.store = "redis"; with cookie sessions, '
            "rotate session.secret to end everyone's sessions"
        )

    async def claim_refresh(self, sid: str, seconds: float) -> bool:
        return True  # cookie sessions cannot be coordinated across replicas

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    def needs_reissue(self, handle: str) -> bool:
        return self._codec.needs_rotation(handle)

    def fits(self, payload: SessionPayload) -> bool:
        try:
            self._codec.dump(payload)
        except ValueError:
            return False
        return True


ENDED_SESSIONS_CAP = 100_000  # signed-out cookie sessions remembered per process
VERIFIED_CACHE_SECONDS = 2.0  # how long an opened cookie is trusted without opening
VERIFIED_CACHE_CAP = 10_000  # opened cookies remembered per process


def cookie_lifetime(payload: SessionPayload, max_age: int, now: float) -> int:
    """Seconds the cookie should live (its Max-Age): until payload.expires_at."""
    return max(0, min(max_age, math.ceil(payload.expires_at - now)))


class SessionStorage(AbstractStorage):
    """aiohttp_session storage for the /oauth2/* endpoints, over any SessionStore.

    Use payload_from_session() and store_payload() on the session; invalidate()
    signs out (and deletes the session from the store). A missing or refused
    cookie gives a new, empty session.

    The trap: aiohttp_session's middleware saves the session only into a
    web.Response (returned or raised) that is not prepared yet. A
    StreamResponse goes out without the cookie, and a prepared Response makes
    it raise. A handler that changes the session returns a plain Response;
    one that must stream calls save_session() itself before prepare().
    """

    def __init__(
        self, store: SessionStore, config: SessionConfig, clock: Clock
    ) -> None:
        super().__init__(
            cookie_name=config.cookie_name,
            max_age=config.max_age,
            secure=config.cookie_secure,
            httponly=True,
            samesite="Lax",
        )
        self._store = store
        self._config = config
        self._clock = clock

    async def load_session(self, request: web.Request) -> Session:
        handle = self.load_cookie(request)
        payload = None if handle is None else await self._store.load(handle)
        if payload is None:
            return Session(None, data=None, new=True)

        # max_age stays None: the store has checked expiry by the injected clock,
        # and Session would check it again by time.time().
        data: SessionData = {
            "created": int(payload.created_at),
            "session": {PAYLOAD_KEY: payload},
        }
        return Session(None, data=data, new=False)

    async def save_session(
        self, request: web.Request, response: web.StreamResponse, session: Session
    ) -> None:
        previous = self.load_cookie(request)
        payload = payload_from_session(session)
        if payload is None:
            if previous:
                await self._store.delete(previous)
            self.write(response, "", 0)
            return

        if session.new and previous:
            # SECURITY: session fixation: a new sign-in never reuses a handle.
            await self._store.delete(previous)
            previous = None
        handle = await self._store.save(payload, previous)
        lifetime = cookie_lifetime(payload, self._config.max_age, self._clock())
        self.write(response, handle, lifetime)

    def write(self, response: web.StreamResponse, value: str, max_age: int) -> None:
        write_session_cookie(response, self._config, value, max_age)


def write_session_cookie(
    response: web.StreamResponse, config: SessionConfig, value: str, max_age: int
) -> None:
    """The session cookie as configured; an empty value with max_age 0 clears it."""
    write_cookie(
        response,
        config.cookie_name,
        value,
        path="/",
        max_age=max_age,
        secure=config.cookie_secure,
        domain=config.cookie_domain or None,
    )
