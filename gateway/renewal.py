"""Keeps signed-in sessions usable and honest: refreshes reddit's token ahead of
its expiry, re-reads what the access rules judge every recheck_interval, ends idle
sessions, and re-seals cookies made under an older key."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.errors import (
    RedditError,
    RedditGrantError,
    RedditIdentityError,
    RedditUnavailable,
)
from gateway.facts import gather_facts
from gateway.log import auth_event
from gateway.policy import Policy
from gateway.reddit import RedditClient
from gateway.session import SessionPayload
from gateway.session_store import SessionStore

# Refresh this long before reddit's expires_in runs out (reddit-api.md: 30-60 s).
REFRESH_MARGIN = 60.0
# After a refresh failed because reddit was unavailable, wait before trying again
# rather than calling reddit on every request.
RETRY_AFTER = 30.0
# A session's last-seen time is written at most this often (for idle_timeout).
TOUCH_EVERY = 60.0
_REMEMBERED_REFRESHES = 10_000
# How long a replica waits for another replica's refresh of the same session.
_PEER_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class Renewed:
    payload: SessionPayload | None  # None: the session has ended
    handle: str | None  # a new cookie value to send, or None to leave it


class SessionRenewal:
    """Decides per request whether a session needs work; does it once per session.

    `due()` is cheap and runs on every proxied request; `renew()` runs only when
    it says so, and concurrent requests for one session share a single renewal.
    """

    def __init__(
        self,
        *,
        store: SessionStore,
        reddit: RedditClient,
        refreshable: bool,
        idle_timeout: int,
        clock: Callable[[], float],
        policy: Callable[[], Policy] | None = None,
    ) -> None:
        """``policy``: the access rules in force, asked at each use (a reload may
        replace them); None: what they judge is never re-checked."""
        self._store = store
        self._reddit = reddit
        self._refreshable = refreshable
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._policy = policy
        self._running: dict[str, asyncio.Task[Renewed]] = {}
        # sid -> (the old token's expiry, the refresh's result, when): requests
        # that still carry the pre-refresh cookie get that result, not a refresh.
        self._refreshed: dict[str, tuple[float, Renewed, float]] = {}
        self._retry_at: dict[str, float] = {}

    def is_idle(self, payload: SessionPayload) -> bool:
        if not self._idle_timeout:
            return False
        last = payload.last_seen or payload.created_at
        return last + self._idle_timeout <= self._clock()

    def due(self, payload: SessionPayload, handle: str) -> bool:
        now = self._clock()
        if self._refresh_due(payload, now) or self._recheck_due(payload, now):
            return True
        if self._idle_timeout and now - (payload.last_seen or 0) >= TOUCH_EVERY:
            return True
        return self._store.needs_reissue(handle)

    async def renew(self, payload: SessionPayload, handle: str) -> Renewed:
        recent = self._refreshed.get(payload.sid)
        if recent is not None and recent[0] == payload.access_expires_at:
            # SECURITY: refresh amplification: a stale cookie replays the answer.
            return recent[1]
        key = payload.sid or handle
        task = self._running.get(key)
        if task is None:
            task = asyncio.create_task(self._renew(payload, handle))
            self._running[key] = task
            task.add_done_callback(lambda _: self._running.pop(key, None))
        # Several requests may wait on one renewal; shield it from their cancels.
        return await asyncio.shield(task)

    def _refresh_due(self, payload: SessionPayload, now: float) -> bool:
        if not self._refreshable or payload.refresh_token is None:
            return False
        if payload.access_expires_at - REFRESH_MARGIN > now:
            return False
        return self._retry_at.get(payload.sid, 0.0) <= now

    def _recheck_due(self, payload: SessionPayload, now: float) -> bool:
        interval = self._policy().recheck_interval if self._policy else 0
        if not interval:
            return False
        if now - payload.checked_at < interval:
            return False
        return self._retry_at.get(payload.sid, 0.0) <= now

    async def _renew(self, payload: SessionPayload, handle: str) -> Renewed:
        now = self._clock()
        if self._refresh_due(payload, now):
            refreshed = await self._refresh(payload, handle)
            if refreshed is not None:
                if refreshed.payload is None or not self._recheck_due(
                    refreshed.payload, now
                ):
                    return refreshed
                payload, handle = refreshed.payload, refreshed.handle or handle
        if self._recheck_due(payload, now):
            rechecked = await self._recheck(payload)
            if rechecked is None:
                await self._store.delete(handle)
                return Renewed(None, None)
            payload = rechecked
        touched = replace(payload, last_seen=now) if self._idle_timeout else payload
        new_handle = await self._store.save(touched, handle)
        return Renewed(touched, new_handle if new_handle != handle else None)

    async def _refresh(self, payload: SessionPayload, handle: str) -> Renewed | None:
        """A Renewed after a refresh or a refused one; None to carry on as before."""
        assert payload.refresh_token is not None
        if not await self._store.claim_refresh(payload.sid, _PEER_WAIT):
            return await self._await_peer(payload, handle)

        try:
            grant = await self._reddit.refresh(payload.refresh_token)
        except RedditGrantError as exc:
            # The refresh token is dead (revoked app, deleted account): sign out.
            auth_event("refresh_failed", user=payload.user, reason=exc.reason)
            await self._store.delete(handle)
            return Renewed(None, None)
        except RedditError as exc:
            auth_event(
                "refresh_failed", logging.WARNING, user=payload.user, reason=exc.reason
            )
            self._retry_at[payload.sid] = self._clock() + RETRY_AFTER
            return None

        now = self._clock()
        self._retry_at.pop(payload.sid, None)
        renewed = replace(
            payload,
            access_token=grant.access_token,
            access_expires_at=now + grant.expires_in,
            # reddit may or may not rotate it; keep whichever it last gave.
            refresh_token=grant.refresh_token or payload.refresh_token,
            scopes=tuple(sorted(grant.scopes)) or payload.scopes,
            last_seen=now if self._idle_timeout else payload.last_seen,
        )
        new_handle = await self._store.save(renewed, handle)
        auth_event("refresh_ok", user=payload.user)
        result = Renewed(renewed, new_handle if new_handle != handle else None)
        self._remember(payload, result, now)
        return result

    def _remember(self, old: SessionPayload, result: Renewed, now: float) -> None:
        if len(self._refreshed) >= _REMEMBERED_REFRESHES:
            self._refreshed = {
                sid: entry
                for sid, entry in self._refreshed.items()
                if entry[2] > now - REFRESH_MARGIN
            }
        if old.sid and len(self._refreshed) < _REMEMBERED_REFRESHES:
            self._refreshed[old.sid] = (old.access_expires_at, result, now)

    async def _recheck(self, payload: SessionPayload) -> SessionPayload | None:
        """The payload with fresh facts; the old ones within the grace period if
        reddit cannot answer; None when the session must end (fail closed)."""
        assert self._policy is not None
        policy = self._policy()
        now = self._clock()
        try:
            if payload.access_token is None:
                raise RedditUnavailable("no token kept to re-check with")
            gathered = await gather_facts(
                self._reddit,
                payload.access_token,
                policy,
                frozenset(payload.scopes),
            )
        except (RedditGrantError, RedditIdentityError) as exc:
            auth_event("recheck_failed", user=payload.user, reason=exc.reason)
            return None
        except RedditError as exc:
            stale_for = now - payload.checked_at
            if stale_for >= policy.recheck_interval + policy.recheck_grace:
                auth_event("recheck_failed", user=payload.user, reason=exc.reason)
                return None
            auth_event(
                "recheck_failed",
                logging.WARNING,
                user=payload.user,
                reason=exc.reason,
                kept_for=round(stale_for),
            )
            self._retry_at[payload.sid] = now + RETRY_AFTER
            return payload

        auth_event("recheck_ok", user=payload.user)
        return replace(payload, facts=gathered.judged, checked_at=now)

    async def _await_peer(self, payload: SessionPayload, handle: str) -> Renewed | None:
        """Another replica is refreshing this session: wait for its result."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _PEER_WAIT
        while loop.time() < deadline:
            await asyncio.sleep(0.1)
            current = await self._store.load(handle)
            if current is None:
                return Renewed(None, None)
            if current.access_expires_at != payload.access_expires_at:
                return Renewed(current, None)
        return None
