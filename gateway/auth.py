"""The middleware that lets a request through, sends it to sign in, or refuses it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from yarl import URL

from gateway.log import USER_KEY, auth_event
from gateway.login_state import LoginStates
from gateway.pages import Action, json_error, page
from gateway.policy import Decision, Policy
from gateway.reddit import RedditClient
from gateway.redirects import return_target
from gateway.session import SessionCodec, SessionPayload

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UPSTREAM_ROUTE = "upstream"


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
    """Guards every upstream route; the gateway's own endpoints pass to `endpoint_mw`.

    This runs on every proxied request, so it reads the session cookie directly
    instead of through aiohttp-session (see PERFORMANCE.md).
    """

    def __init__(
        self,
        *,
        sessions: SessionCodec,
        cookie_name: str,
        policy: Policy,
        login: LoginStarter,
        public_url: URL,
        endpoint_mw: Callable[[web.Request, Handler], Awaitable[web.StreamResponse]],
    ) -> None:
        self._sessions = sessions
        self._cookie_name = cookie_name
        self._policy = policy
        self._login = login
        self._public_url = public_url
        self._endpoint_mw = endpoint_mw

    def current(self, request: web.BaseRequest) -> SessionPayload | None:
        value = request.cookies.get(self._cookie_name)
        if not value:
            return None
        return self._sessions.load(value)

    def decide(self, payload: SessionPayload) -> Decision:
        return self._policy.decide(payload.user)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        if request.match_info.route.name != UPSTREAM_ROUTE:
            return await self._endpoint_mw(request, handler)

        payload = self.current(request)
        if payload is None:
            return self.challenge(request)

        decision = self.decide(payload)
        if not decision.allowed:
            auth_event("denied", user=payload.user, rule=decision.rule)
            return refusal(request, payload.user, decision)

        request[USER_KEY] = payload.user
        return await handler(request)

    def challenge(self, request: web.Request) -> web.Response:
        """No valid session: a browser goes to reddit, anything else gets 401."""
        if is_navigation(request):
            return self._login.redirect(
                return_target(request.raw_path, self._public_url)
            )
        return json_error(
            401,
            "unauthorized",
            "Sign in with reddit first: open /oauth2/start in a browser.",
            headers={"WWW-Authenticate": 'Cookie realm="reddit-gateway"'},
        )


def refusal(request: web.BaseRequest, user: str, decision: Decision) -> web.Response:
    """403 for a signed-in user whom the access rules refuse."""
    if not is_navigation(request):
        return json_error(403, "forbidden", decision.reason)
    return page(
        403,
        "You can't open this app",
        f"You are signed in as u/{user}. {decision.reason} "
        "If you have another reddit account that is allowed, sign out and "
        "sign in with that one.",
        [Action("Sign out", "/oauth2/sign_out", primary=True, post=True)],
    )
