"""Builds the aiohttp Application: routes, their guards, clients. Wiring only."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from aiohttp_session import session_middleware

from gateway.auth import (
    SESSION_KEY,
    Authenticator,
    LoginStarter,
    guard_endpoint,
)
from gateway.config import Config
from gateway.endpoints import Endpoints
from gateway.fair_share import OpenRequests
from gateway.headers import forwarded_facts, upstream_request_headers
from gateway.log import UPSTREAM_ROUTE, USER_KEY, access_log_options, auth_event
from gateway.login_state import LoginStates
from gateway.metrics import Metrics
from gateway.pages import json_error
from gateway.proxy import REQUEST_LIMITS
from gateway.reddit import RedditClient
from gateway.reloadable import RELOADABLE, Reloadable, UpstreamClients
from gateway.renewal import SessionRenewal
from gateway.session import SessionCodec
from gateway.session_store import CookieStore, SessionStorage, SessionStore
from gateway.upstream_client import UpstreamPool
from gateway.websocket import is_websocket_upgrade

if TYPE_CHECKING:
    from gateway.assertion import AssertionSigner

log = logging.getLogger("gateway.proxy")


async def build_app(
    config: Config,
    *,
    clock: Callable[[], float] = time.time,
    reddit_session: aiohttp.ClientSession | None = None,
    upstream_pool: UpstreamPool | None = None,
    metrics_listen: str = "",
) -> web.Application:
    """The gateway as an aiohttp Application; client sessions it makes it closes.

    ``metrics_listen``, if given, serves metrics there instead of at
    metrics.listen (a supervisor's worker: its private socket)."""
    # aiohttp-session keeps its state under string request keys, which aiohttp
    # 3.14 warns about on every request; the keys are its own, not ours.
    warnings.filterwarnings(
        "ignore", category=web.NotAppKeyWarning, module="aiohttp_session"
    )
    owned: list[aiohttp.ClientSession] = []
    if reddit_session is None:
        reddit_session = make_reddit_session()
        owned.append(reddit_session)

    secrets = config.session.secrets
    store = make_store(config, clock)
    owned_stores = [store]
    states = LoginStates(
        secrets,
        # Login cookies live on the callback path only, which __Host- forbids.
        config.session.cookie_name.replace("__Host-", "__Secure-", 1),
        config.server.callback_path,
        config.session.cookie_secure,
        clock,
    )
    storage = SessionStorage(store, config.session, clock)

    def own_cookie(name: str) -> bool:
        return name == config.session.cookie_name or states.is_gateway_cookie(name)

    # What a SIGHUP may change: read per request, never kept.
    reloadable = Reloadable(config, clock, own_cookie, upstream_pool)
    signer = make_signer(config, clock)
    metrics_listen = metrics_listen or config.metrics.listen
    metrics = Metrics() if metrics_listen else None
    reddit = RedditClient(
        config.reddit,
        config.server.redirect_url,
        reddit_session,
        on_call=None if metrics is None else metrics.count_reddit_call,
    )
    login = LoginStarter(states, reddit)
    renewal = SessionRenewal(
        store=store,
        reddit=reddit,
        refreshable=config.reddit.duration == "permanent",
        idle_timeout=config.session.idle_timeout,
        clock=clock,
        policy=lambda: reloadable.policy,
    )
    authenticator = Authenticator(
        upstream=upstream_handler(
            config, lambda: reloadable.upstream, own_cookie, signer=signer
        ),
        store=store,
        renewal=renewal,
        session_config=config.session,
        policy=lambda: reloadable.policy,
        login=login,
        public_url=config.server.public_url,
        clock=clock,
        sign_in_page=config.server.sign_in_page,
    )
    endpoints = Endpoints(
        config=config,
        reddit=reddit,
        states=states,
        login=login,
        authenticator=authenticator,
        policy=lambda: reloadable.policy,
        store=store,
        upstream=lambda: reloadable.upstream,
        signer=signer,
        clock=clock,
    )
    # No middlewares: each would be a layer of calls on every proxied request.
    app = web.Application()
    app[RELOADABLE] = reloadable
    app.on_shutdown.append(reloadable.close_websockets)
    session_mw = session_middleware(storage)
    app.router.add_routes(
        web.RouteDef(
            route.method, route.path, guard_endpoint(route.handler, session_mw), {}
        )
        for route in endpoints.routes()
    )
    app.router.add_route("*", "/{tail:.*}", authenticator.admit, name=UPSTREAM_ROUTE)

    async def close_sessions(app: web.Application) -> None:
        for session in owned:
            await session.close()
        for owned_store in owned_stores:
            await owned_store.close()
        await reloadable.close()

    app.on_cleanup.append(close_sessions)
    if metrics is not None:
        metrics.install(
            app,
            metrics_listen,
            ratelimit_remaining=lambda: reddit.ratelimit_remaining,
            open_websockets=lambda: reloadable.open_websockets,
        )
    return app


def server_options() -> dict[str, Any]:
    """Arguments for aiohttp's runner: the access log and request size limits."""
    return {**access_log_options(), **REQUEST_LIMITS}


def make_store(config: Config, clock: Callable[[], float]) -> SessionStore:
    if config.session.store == "redis":
        from gateway.redis_store import RedisStore  # redis loads only when used

        return RedisStore.from_config(config.session, clock)
    codec = SessionCodec(config.session.secrets, config.session.max_age, clock)
    return CookieStore(codec, clock)


def default_audience(config: Config) -> str:
    """The app's address as configured: upstream.url without a trailing slash."""
    upstream = config.upstream
    if upstream.unix_socket:
        return f"unix://{upstream.unix_socket}"
    return str(upstream.url).rstrip("/")


def make_signer(config: Config, clock: Callable[[], float]) -> AssertionSigner | None:
    if not config.assertion.enabled:
        return None
    from gateway.assertion import AssertionSigner  # jwt loads only when used

    return AssertionSigner(
        config.assertion,
        issuer=str(config.server.public_url),
        default_audience=default_audience(config),
        clock=clock,
    )


def make_reddit_session() -> aiohttp.ClientSession:
    # SECURITY: cross-user cookie bleed: reddit calls for every user share this
    # client, so it must never keep cookies.
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())


def upstream_handler(
    config: Config,
    upstream: Callable[[], UpstreamClients],
    own_cookie: Callable[[str], bool],
    *,
    signer: AssertionSigner | None = None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    trusted = config.server.trusted_proxies
    assertion_header = config.assertion.header
    open_requests = OpenRequests(config.upstream.max_requests_per_user)

    async def forward(request: web.Request) -> web.StreamResponse:
        user = request.get(USER_KEY)  # None on a public route
        if user is None:
            return await relay(request, None)
        if not open_requests.enter(user):
            log.warning("too_many_open_requests user=%s", user)
            return json_error(
                429,
                "too_many_requests",
                "Your account has too many requests open at once; close some tabs.",
                headers={"Retry-After": "5"},
            )
        try:
            return await relay(request, user)
        finally:
            open_requests.leave(user)

    async def relay(request: web.Request, user: str | None) -> web.StreamResponse:
        facts = forwarded_facts(
            request.headers, request.remote, request.scheme, request.host, trusted
        )
        headers, spoofed = upstream_request_headers(
            request.headers, user=user, forwarded=facts, own_cookie_names=own_cookie
        )
        if spoofed:
            auth_event(
                "spoofed_header",
                logging.WARNING,
                user=user or "-",
                client=request.remote or "-",
                headers=",".join(spoofed),
            )
        clients = upstream()  # this request's upstream, even if a reload comes
        session = request.get(SESSION_KEY)
        if session is not None:
            if signer is not None:
                token = signer.token_for(session.user, session.user_id)
                headers[assertion_header] = token
            pass_token = clients.config.pass_access_token
            if pass_token and session.access_token is not None:
                headers["X-Reddit-Access-Token"] = session.access_token.reveal()
        with clients:
            if is_websocket_upgrade(request):
                return await clients.websockets.relay(request, headers)
            return await clients.proxy.forward(request, headers)

    return forward
