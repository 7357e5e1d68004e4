"""The middleware that lets a request through, sends it to sign in, or refuses it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web
from yarl import URL

from gateway.config import SessionConfig
from gateway.errors import SessionStoreUnavailable
from gateway.headers import cookie_value
from gateway.log import (
    BEFORE_ANSWER,
    STILL_ALLOWED,
    UPSTREAM_KEY,
    USER_KEY,
    AnswerHook,
    auth_event,
)
from gateway.login_state import LoginStates
from gateway.pages import Action, json_error, page
from gateway.policy import Decision, Policy, Route, UserFacts
from gateway.reddit import RedditClient
from gateway.redirects import return_target
from gateway.renewal import SessionRenewal
from gateway.session import SessionPayload
from gateway.session_store import SessionStore, cookie_lifetime, write_session_cookie

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_RETURN_CHARS = 1024
SESSION_KEY = web.RequestKey("gateway_session", SessionPayload)
STORE_RETRY_AFTER = "5"  # seconds, in the Retry-After of a store outage's 503

log = logging.getLogger("gateway.auth")


def is_navigation(request: web.BaseRequest) -> bool:
    """True for a top-level browser page load, which may be sent to reddit.

    Everything else (fetch, XHR, curl's */*, any method but GET and HEAD) gets a
    401 body instead: a redirect to reddit would be useless to it.
    """
    if request.method not in ("GET", "HEAD"):
        return False
    headers = request.headers
    if "X-Requested-With" in headers or "Upgrade" in headers:
        return False
    mode = headers.get("Sec-Fetch-Mode")
    if mode is not None:
        return mode == "navigate"
    return "text/html" in headers.get("Accept", "")


class LoginStarter:
    """Begins a login: a fresh state cookie and a 302 to reddit's consent page."""

    def __init__(self, states: LoginStates, reddit: RedditClient) -> None:
        self._states = states
        self._reddit = reddit

    def redirect(self, return_to: str) -> web.Response:
        if len(return_to) > MAX_RETURN_CHARS:
            return_to = "/"  # it travels in a cookie: keep that small
        state, cookie_name, cookie_value = self._states.begin(return_to)
        response = web.Response(
            status=302,
            headers={
                "Location": self._reddit.authorize_url(state.state),
                "Cache-Control": "no-store",
            },
        )
        self._states.set_cookie(response, cookie_name, cookie_value)
        auth_event("login_started", return_to=return_to)
        return response


class Authenticator:
    """Guards the upstream route: a signed-in, allowed session, or no way through.

    This runs on every proxied request, so it reads the session cookie directly
    instead of through aiohttp-session, whose middleware costs far more, and it
    wraps the route's handler instead of being a middleware (each of which is
    another layer of calls on every request).
    """

    def __init__(
        self,
        *,
        store: SessionStore,
        renewal: SessionRenewal,
        session_config: SessionConfig,
        policy: Callable[[], Policy],
        login: LoginStarter,
        public_url: URL,
        clock: Callable[[], float],
        upstream: Handler,
        sign_in_page: bool = False,
    ) -> None:
        """``upstream``: what an admitted request is handed to (the proxy)."""
        self._store = store
        self._renewal = renewal
        self._config = session_config
        self._cookie_name = session_config.cookie_name
        self._policy = policy
        self._login = login
        self._public_url = public_url
        self._clock = clock
        self._sign_in_page = sign_in_page
        self._upstream = upstream

    async def current(self, request: web.BaseRequest) -> SessionPayload | None:
        """The signed-in session, if any; never calls reddit."""
        handle = cookie_value(request.headers.get("Cookie"), self._cookie_name)
        if not handle:
            return None
        payload = await self._store.load(handle)
        if payload is None or self._renewal.is_idle(payload):
            return None
        return payload

    def decide(self, payload: SessionPayload, route: Route | None = None) -> Decision:
        facts = payload.facts or UserFacts(name=payload.user)
        return self._policy().decide(facts, route)

    async def admit(self, request: web.Request) -> web.StreamResponse:
        """The upstream route's handler: ``upstream`` behind the session check and
        the access rules."""
        handler = self._upstream
        try:
            request[UPSTREAM_KEY] = True
            route = self._policy().route_for(request.raw_path)
            if route.public:
                return await handler(request)  # no identity; spoofs still scrubbed

            handle = cookie_value(request.headers.get("Cookie"), self._cookie_name)
            payload = await self._store.load(handle) if handle else None
            if payload is None or handle is None:
                return self.challenge(request)
            if self._renewal.is_idle(payload):
                auth_event("signed_out", user=payload.user, reason="idle")
                await self._store.delete(handle)
                return self._ended(request)

            before: AnswerHook | None = None
            if self._renewal.due(payload, handle):
                renewed = await self._renewal.renew(payload, handle)
                if renewed.payload is None:
                    return self._ended(request)
                payload = renewed.payload
                if renewed.handle is not None:
                    # The renewed session reaches the browser on any answer,
                    # streamed and websocket ones included.
                    lifetime = cookie_lifetime(
                        payload, self._config.max_age, self._clock()
                    )
                    new_handle = renewed.handle

                    def renewed_cookie(response: web.StreamResponse) -> None:
                        self.write_cookie(response, new_handle, lifetime)

                    before = renewed_cookie

            # Set even when None: a key that is missing costs a KeyError to look up.
            request[BEFORE_ANSWER] = before
            decision = self.decide(payload, route)
            if not decision.allowed:
                auth_event("denied", user=payload.user, rule=decision.rule)
                refused = refusal(request, payload.user, decision)
                if before is not None:
                    before(refused)
                return refused

            request[USER_KEY] = payload.user
            request[SESSION_KEY] = payload
            if "Upgrade" in request.headers:

                async def still_allowed() -> bool:
                    return await self._still_allowed(handle, route)

                request[STILL_ALLOWED] = still_allowed
            response = await handler(request)
            if before is not None and not response.prepared:
                before(response)  # an answer of the gateway's own (429, 502)
            return response
        except SessionStoreUnavailable as exc:
            return store_outage(request, exc)

    async def _still_allowed(self, handle: str, route: Route) -> bool:
        """For a websocket: is the session it opened with still signed in and
        allowed? A store that cannot answer counts as no (fail closed)."""
        try:
            payload = await self._store.load(handle)
        except SessionStoreUnavailable:
            return False
        if payload is None or self._renewal.is_idle(payload):
            return False
        return self.decide(payload, route).allowed

    def _ended(self, request: web.Request) -> web.Response:
        """The session is over: forget its cookie, then as if there were none."""
        response = self.challenge(request, ended=True)
        self.write_cookie(response, "", 0)
        return response

    def write_cookie(
        self, response: web.StreamResponse, value: str, max_age: int
    ) -> None:
        write_session_cookie(response, self._config, value, max_age)

    def challenge(self, request: web.Request, *, ended: bool = False) -> web.Response:
        """No valid session: a browser goes to reddit (or to the sign-in page),
        anything else gets 401."""
        if not is_navigation(request):
            return json_error(
                401,
                "unauthorized",
                "Sign in with reddit first: open /oauth2/start in a browser.",
                headers={"WWW-Authenticate": 'Cookie realm="reddit-gateway"'},
            )

        target = return_target(request.raw_path, self._public_url)
        if not self._sign_in_page:
            return self._login.redirect(target)
        if len(target) > MAX_RETURN_CHARS:
            target = "/"
        lead = "Your sign-in has ended. " if ended else ""
        return page(
            200,
            "Sign in with reddit",
            [
                f"{lead}To continue to {self._public_url.host}, sign in with your "
                "reddit account.",
                "reddit will ask whether to share your account with this site, "
                "then bring you back to this page.",
            ],
            [
                Action(
                    "Sign in with reddit",
                    f"/oauth2/start?rd={quote(target, safe='')}",
                    primary=True,
                )
            ],
        )


def refusal(request: web.BaseRequest, user: str, decision: Decision) -> web.Response:
    """403 for a signed-in user whom the access rules refuse."""
    if not is_navigation(request):
        return json_error(403, "forbidden", decision.reason)
    return page(
        403,
        "You can't open this page",
        [
            f"You are signed in as u/{user}. {decision.reason}",
            "If another of your reddit accounts is allowed, sign out of reddit.com "
            "first, then choose Switch account and sign in with that one.",
        ],
        [
            Action("Sign out", "/oauth2/sign_out", primary=True, post=True),
            # A link: a form could not follow the redirect on to reddit (CSP
            # form-action), a plain navigation can.
            Action("Switch account", "/oauth2/sign_out?rd=%2Foauth2%2Fstart"),
        ],
    )


def guard_endpoint(
    handler: Handler,
    session_mw: Callable[[web.Request, Handler], Awaitable[web.StreamResponse]],
) -> Handler:
    """One of the gateway's own endpoints, with its aiohttp-session and the answer
    to a session store outage."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await session_mw(request, handler)
        except SessionStoreUnavailable as exc:
            return store_outage(request, exc)

    return guarded


def store_outage(request: web.Request, exc: SessionStoreUnavailable) -> web.Response:
    """A session that could not be checked is a 503.

    Neither a pass (the store's outage must never let a request through) nor a
    401 (a trip to reddit would end at the same outage, a login loop).
    """
    log.error("session store unavailable: %s", exc.reason)
    headers = {"Retry-After": STORE_RETRY_AFTER}
    if not is_navigation(request):
        return json_error(
            503,
            "session_store_unavailable",
            "The gateway cannot check sessions right now; try again in a moment.",
            headers=headers,
        )
    response = page(
        503,
        "Sign-in is unavailable right now",
        [
            "This app cannot check who you are because its session store is not "
            "answering. Nothing was sent to the app.",
            "Try again in a moment.",
        ],
        [Action("Try again", "", primary=True)],  # "": this same address
    )
    response.headers.update(headers)
    return response
