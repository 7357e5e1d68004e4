"""The /oauth2/* handlers: the only code that creates or destroys sessions."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from aiohttp_session import get_session, new_session

from gateway.auth import Authenticator, LoginStarter, refusal
from gateway.config import Config
from gateway.errors import (
    RedditClientRejected,
    RedditError,
    RedditGrantError,
    RedditIdentityError,
    RedditUnavailable,
)
from gateway.facts import gather_facts
from gateway.fair_share import TokenBucket
from gateway.log import USER_KEY, auth_event
from gateway.login_state import LoginState, LoginStates
from gateway.pages import Action, json_error, page
from gateway.policy import Policy
from gateway.reddit import RedditClient
from gateway.redirects import return_target
from gateway.reloadable import UpstreamClients
from gateway.session import SessionPayload, payload_from_session, store_payload
from gateway.session_store import SessionStore

if TYPE_CHECKING:  # jwt and its keys load only when assertions are on
    from gateway.assertion import AssertionSigner

log = logging.getLogger("gateway")

_STATE_PROBLEMS = {
    "missing": "This sign-in link is incomplete.",
    "unknown": "This sign-in link does not belong to this browser, or it has expired.",
    "expired": "This sign-in link has expired.",
    "mismatch": "This sign-in link does not belong to this browser.",
    "used": "This sign-in link has already been used.",
}


class Endpoints:
    def __init__(
        self,
        *,
        config: Config,
        reddit: RedditClient,
        states: LoginStates,
        login: LoginStarter,
        authenticator: Authenticator,
        policy: Callable[[], Policy],
        store: SessionStore,
        upstream: Callable[[], UpstreamClients],
        clock: Callable[[], float],
        signer: AssertionSigner | None = None,
    ) -> None:
        self._config = config
        self._reddit = reddit
        self._states = states
        self._login = login
        self._auth = authenticator
        self._store = store
        self._policy = policy
        # Code redemptions across all users (reddit.sign_ins_per_second and
        # reddit.sign_in_burst): every one costs calls on the client id's budget.
        self._sign_ins = TokenBucket(
            config.reddit.sign_ins_per_second, config.reddit.sign_in_burst, clock
        )
        self._upstream = upstream
        self._clock = clock
        self._jwks = signer.jwks() if signer is not None else None
        self._public_url = config.server.public_url

    def routes(self) -> list[web.RouteDef]:
        keys = [web.get("/oauth2/jwks.json", self.jwks)] if self._jwks else []
        return [
            *keys,
            web.get("/oauth2/start", self.start),
            web.get(self._config.server.callback_path, self.callback),
            web.get("/oauth2/sign_out", self.sign_out),
            web.post("/oauth2/sign_out", self.sign_out),
            web.get("/oauth2/auth", self.auth),
            web.get("/oauth2/userinfo", self.userinfo),
            web.get("/oauth2/ping", self.ping),
            web.get("/oauth2/ready", self.ready),
            web.route("*", "/oauth2/{tail:.*}", self.not_found),
        ]

    async def start(self, request: web.Request) -> web.Response:
        target = return_target(request.query.get("rd"), self._public_url)
        return self._login.redirect(target)

    async def callback(self, request: web.Request) -> web.Response:
        query = request.query
        outcome = self._states.finish(request.cookies, query.get("state"))

        # SECURITY: login CSRF and state replay: nothing reaches reddit unless
        # the state is this browser's, fresh and unused.
        if not isinstance(outcome, LoginState):
            auth_event("login_failed", reason=f"state_{outcome.reason}")
            response = await self._stale_state_page(request, outcome.reason)
        else:
            response = await self._finish_login(request, outcome)

        stale = self._states.crowding(request.cookies)
        if query.get("state"):
            stale.append(self._states.cookie_name_for(query["state"]))
        for name in dict.fromkeys(stale):
            self._states.clear_cookie(response, name)
        return response

    async def _finish_login(
        self, request: web.Request, login: LoginState
    ) -> web.Response:
        query = request.query
        retry = Action(
            "Try again",
            f"/oauth2/start?rd={quote(login.return_to, safe='')}",
            primary=True,
        )
        if "error" in query:
            error = query["error"][:64]
            auth_event("login_failed", reason=f"reddit_{error}")
            if error == "access_denied":
                message = [
                    "You declined to share your reddit identity with this app.",
                    "To use the app, try again and choose Allow on reddit.",
                ]
                return page(403, "Sign-in cancelled", message, [retry])
            message = [
                f"reddit could not sign you in (it answered {error!r}).",
                "Try again. If it keeps happening, tell whoever runs this app.",
            ]
            return page(403, "reddit refused the sign-in", message, [retry])
        code = query.get("code")
        if not code:
            auth_event("login_failed", reason="code_missing")
            no_code = "reddit sent you back without a sign-in code. Try again."
            return page(400, "Sign-in incomplete", no_code, [retry])

        # SECURITY: reddit call amplification: anyone can mint states and send
        # junk codes, each costing a token call on the operator's client id.
        if not self._sign_ins.take():
            auth_event("login_failed", reason="too_many_sign_ins")
            return page(
                429,
                "Too many sign-ins right now",
                "This app is handling a lot of sign-ins at the moment. Wait a few "
                "seconds and try again.",
                [retry],
            )
        try:
            grant = await self._reddit.redeem_code(code)
        except RedditError as exc:
            auth_event("login_failed", reason=exc.reason)
            return _reddit_failure_page(exc, retry)
        missing = sorted(set(self._config.reddit.scopes) - grant.scopes)
        if missing:
            auth_event("login_failed", reason="scopes_not_granted", missing=missing)
            return page(
                403,
                "reddit shared too little",
                "This app needs reddit to share more than it did (missing: "
                f"{', '.join(missing)}). Try again and allow everything reddit "
                "asks for.",
                [retry],
            )
        try:
            facts = await gather_facts(
                self._reddit, grant.access_token, self._policy(), grant.scopes
            )
        except RedditError as exc:
            auth_event("login_failed", reason=exc.reason)
            return _reddit_failure_page(exc, retry)

        now = self._clock()
        identity = facts.identity
        payload = SessionPayload(
            user=identity.name,
            user_id=identity.id,
            created_at=now,
            expires_at=now + self._config.session.max_age,
            access_token=grant.access_token,
            access_expires_at=now + grant.expires_in,
            refresh_token=grant.refresh_token,
            scopes=tuple(sorted(grant.scopes)),
            sid=secrets.token_urlsafe(16),
            last_seen=now,
            facts=facts.judged,
            checked_at=now,
        )
        if not self._store.fits(payload):
            log.error("the session of %s does not fit in a cookie", identity.name)
            return page(
                502,
                "Sign-in could not be saved",
                "reddit's tokens for this account are too large to keep in a cookie. "
                "Please tell whoever runs this app.",
                [retry],
                note='If you run this gateway: set session.store = "redis" (the '
                "cookie then holds only an id), or ask for fewer scopes, or set "
                'reddit.duration = "temporary".',
            )
        # SECURITY: session fixation: a signed-in session always starts anew.
        session = await new_session(request)
        store_payload(session, payload)
        auth_event("login_ok", user=identity.name, id=identity.id)

        decision = self._auth.decide(payload)
        if not decision.allowed:
            auth_event("denied", user=identity.name, rule=decision.rule, at="login")
            return refusal(request, identity.name, decision)
        # reddit ends its redirect to us with "#_"; a browser keeps that fragment
        # across our redirect unless the Location carries one of its own.
        target = return_target(login.return_to, self._public_url) + "#"
        return web.Response(
            status=302, headers={"Location": target, "Cache-Control": "no-store"}
        )

    async def _stale_state_page(
        self, request: web.Request, reason: str
    ) -> web.Response:
        problem = _STATE_PROBLEMS.get(reason, _STATE_PROBLEMS["unknown"])
        payload = await self._auth.current(request)
        if payload is not None:
            return page(
                400,
                "This sign-in link can't be used",
                f"{problem} You are already signed in as u/{payload.user}.",
                [Action("Continue to the app", "/", primary=True)],
            )
        return page(
            400,
            "This sign-in link can't be used",
            f"{problem} Start again to sign in with reddit.",
            [Action("Sign in with reddit", "/oauth2/start", primary=True)],
        )

    async def sign_out(self, request: web.Request) -> web.Response:
        session = await get_session(request)
        payload = payload_from_session(session)
        session.invalidate()

        revoked = True
        if payload is not None:
            auth_event("signed_out", user=payload.user)
            revoked = await self._revoke(payload)

        rd = request.query.get("rd")
        if rd is None and request.method == "POST":
            rd = await _form_field(request, "rd")
        if rd is not None:
            target = return_target(rd, self._public_url)
            return web.Response(
                status=302, headers={"Location": target, "Cache-Control": "no-store"}
            )
        message = "Your session with this app has ended"
        if revoked:
            message += " and its access to your reddit account was revoked."
        else:
            message += ". reddit could not be reached to revoke this app's access "
            message += "to your account; that access expires on its own."
        return page(
            200,
            "You are signed out",
            message,
            [Action("Sign in again", "/oauth2/start", primary=True)],
        )

    async def _revoke(self, payload: SessionPayload) -> bool:
        """Best effort: a reddit outage must not keep anyone signed in."""
        tokens = [
            (token, hint)
            for token, hint in (
                (payload.refresh_token, "refresh_token"),
                (payload.access_token, "access_token"),
            )
            if token is not None
        ]
        for token, hint in tokens:
            try:
                await self._reddit.revoke(token, hint)
            except RedditError as exc:
                log.warning("token revocation failed: %s", exc.reason)
                return False
        return True

    async def auth(self, request: web.Request) -> web.Response:
        payload = await self._auth.current(request)
        if payload is None:
            return json_error(401, "unauthorized", "Not signed in.")
        decision = self._auth.decide(payload)
        if not decision.allowed:
            auth_event("denied", user=payload.user, rule=decision.rule)
            return json_error(403, "forbidden", decision.reason)
        request[USER_KEY] = payload.user
        return web.Response(status=202, headers={"X-Reddit-User": payload.user})

    async def userinfo(self, request: web.Request) -> web.Response:
        payload = await self._auth.current(request)
        if payload is None:
            return json_error(401, "unauthorized", "Not signed in.")
        request[USER_KEY] = payload.user
        return web.json_response(
            {
                "user": payload.user,
                "id": payload.user_id,
                "scopes": list(payload.scopes),
                "signed_in_at": int(payload.created_at),
                "expires_at": int(payload.expires_at),
            },
            headers={"Cache-Control": "no-store"},
        )

    async def jwks(self, request: web.Request) -> web.Response:
        """The public keys that verify X-Reddit-Assertion."""
        return web.json_response(
            self._jwks, headers={"Cache-Control": "public, max-age=300"}
        )

    async def ping(self, request: web.Request) -> web.Response:
        if not _exact_path(request, "/oauth2/ping"):
            return await self.not_found(request)
        return web.Response(text="OK")

    async def ready(self, request: web.Request) -> web.Response:
        """Ready when the upstream answers HTTP at all, whatever its status, and
        the session store answers."""
        if not _exact_path(request, "/oauth2/ready"):
            return await self.not_found(request)
        clients = self._upstream()
        url = clients.config.url
        upstream = "unreachable"
        try:
            with clients:
                async with asyncio.timeout(min(5.0, clients.config.timeout)):
                    async with clients.probe.get(url, allow_redirects=False):
                        upstream = "ok"  # any HTTP answer; its status is the app's own
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("not ready: upstream %s: %s", url, type(exc).__name__)

        sessions = "ok" if await self._store.ping() else "unreachable"
        if sessions != "ok":
            log.warning("not ready: session store (%s) unreachable", self._store.kind)
        ready = upstream != "unreachable" and sessions == "ok"
        return web.json_response(
            {"ready": ready, "upstream": upstream, "sessions": sessions},
            status=200 if ready else 503,
        )

    async def not_found(self, request: web.Request) -> web.Response:
        return json_error(404, "not_found", "No such gateway endpoint.")


def _exact_path(request: web.Request, path: str) -> bool:
    """True when the request names path exactly, as sent: the router matches the
    decoded path, so /oauth2/%70ing would reach the ping too."""
    # SECURITY: health-check confusion: only the one spelling is a probe.
    return request.rel_url.raw_path == path


async def _form_field(request: web.Request, name: str) -> str | None:
    """A field of a posted form, or None when there is none or the body is broken."""
    try:
        form = await request.post()
    except (
        ValueError,
        LookupError,
        HttpProcessingError,
        RequestPayloadError,
        web.HTTPException,
    ):
        log.info("ignored an unreadable form body on %s", request.path)
        return None
    value = form.get(name)
    return value if isinstance(value, str) else None


def _reddit_failure_page(exc: RedditError, retry: Action) -> web.Response:
    if isinstance(exc, RedditGrantError) and exc.error == "invalid_grant":
        return page(
            400,
            "This sign-in expired",
            "reddit no longer accepts this sign-in (it may have been used "
            "already, or taken too long). Start again to sign in.",
            [retry],
        )
    if isinstance(exc, RedditIdentityError):
        if "scope" in exc.reason:
            message = "reddit did not share what this app's access rules need to "
            message += "see. Sign in again and allow everything it asks for."
        else:
            message = "reddit did not tell us which account you are, so you can't "
            message += "sign in with it. Try again, or sign in with another account."
        return page(403, "This account can't sign in", message, [retry])
    if isinstance(exc, RedditClientRejected):
        return page(
            502,
            "Sign-in is misconfigured",
            "reddit refused this app's credentials, so nobody can sign in right "
            "now. Please tell whoever runs this app.",
            [retry],
            note="If you run this gateway: check reddit.client_id and "
            "reddit.client_secret against your app at reddit.com/prefs/apps.",
        )
    if isinstance(exc, RedditUnavailable):
        return page(
            502,
            "reddit is not answering",
            "reddit is unavailable or busy right now. Wait a moment, then try again.",
            [retry],
        )
    return page(
        502,
        "reddit refused the sign-in",
        "reddit could not complete the sign-in. Try again in a moment.",
        [retry],
    )
