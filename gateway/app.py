"""Builds the aiohttp Application: middlewares, routes, client sessions. Wiring only."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp_session import session_middleware

from gateway.assertion import AssertionSigner
from gateway.auth import (
    SESSION_KEY,
    Authenticator,
    LoginStarter,
    store_outage,
)
from gateway.config import Config
from gateway.endpoints import Endpoints
from gateway.headers import forwarded_facts, upstream_request_headers
from gateway.log import UPSTREAM_ROUTE, USER_KEY, access_log_options, auth_event
from gateway.login_state import LoginStates
from gateway.policy import Policy
from gateway.proxy import REQUEST_LIMITS, UpstreamProxy
from gateway.reddit import RedditClient
from gateway.redis_store import RedisStore
from gateway.renewal import SessionRenewal
from gateway.session import SessionCodec
from gateway.session_store import CookieStore, SessionStorage, SessionStore
from gateway.upstream_session import make_upstream_session
from gateway.websocket import (
    WEBSOCKETS,
    WebSocketRelay,
    is_websocket_upgrade,
    make_websocket_session,
)


async def build_app(
    config: Config,
    *,
    clock: Callable[[], float] = time.time,
    reddit_session: aiohttp.ClientSession | None = None,
    upstream_session: aiohttp.ClientSession | None = None,
) -> web.Application:
    """The gateway as an aiohttp Application; client sessions it makes it closes."""
    # aiohttp-session keeps its state under string request keys, which aiohttp
    # 3.14 warns about on every request; the keys are its own, not ours.
    warnings.filterwarnings(
        "ignore", category=web.NotAppKeyWarning, module="aiohttp_session"
    )
    owned: list[aiohttp.ClientSession] = []
    if reddit_session is None:
        reddit_session = make_reddit_session()
        owned.append(reddit_session)
    if upstream_session is None:
        upstream_session = make_upstream_session(config.upstream)
        owned.append(upstream_session)
    websocket_session = make_websocket_session(config.upstream)
    owned.append(websocket_session)
    # /oauth2/ready gets connections of its own: a busy pool must not make the
    # gateway look dead to its orchestrator.
    probe_session = make_upstream_session(replace(config.upstream, max_connections=2))
    owned.append(probe_session)

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
    policy = Policy(config.access, clock)
    signer = make_signer(config, clock)
    reddit = RedditClient(config.reddit, config.server.redirect_url, reddit_session)
    login = LoginStarter(states, reddit)
    renewal = SessionRenewal(
        store=store,
        reddit=reddit,
        refreshable=config.reddit.duration == "permanent",
        idle_timeout=config.session.idle_timeout,
        clock=clock,
        policy=policy,
        recheck_interval=config.access.recheck_interval,
        recheck_grace=config.access.recheck_grace,
    )
    authenticator = Authenticator(
        store=store,
        renewal=renewal,
        session_config=config.session,
        policy=policy,
        login=login,
        public_url=config.server.public_url,
        endpoint_mw=session_middleware(storage),
        clock=clock,
    )
    endpoints = Endpoints(
        config=config,
        reddit=reddit,
        states=states,
        login=login,
        authenticator=authenticator,
        policy=policy,
        store=store,
        upstream_session=lambda: probe_session,
        signer=signer,
        clock=clock,
    )

    def own_cookie(name: str) -> bool:
        return name == config.session.cookie_name or states.is_gateway_cookie(name)

    websockets = WebSocketRelay(
        config.upstream,
        websocket_session,
        public_url=config.server.public_url,
        is_own_cookie=own_cookie,
    )
    app = web.Application(middlewares=[store_outage, authenticator.middleware])
    app[WEBSOCKETS] = websockets
    app.on_shutdown.append(websockets.close_all)
    app.on_response_prepare.append(authenticator.send_pending_cookie)
    app.router.add_routes(endpoints.routes())
    app.router.add_route(
        "*",
        "/{tail:.*}",
        upstream_handler(
            config,
            UpstreamProxy(
                config.upstream,
                upstream_session,
                own_cookie,
                public_url=config.server.public_url,
            ),
            websockets,
            own_cookie,
            signer=signer,
        ),
        name=UPSTREAM_ROUTE,
    )

    async def close_sessions(app: web.Application) -> None:
        for session in owned:
            await session.close()
        for owned_store in owned_stores:
            await owned_store.close()

    app.on_cleanup.append(close_sessions)
    return app


def server_options() -> dict[str, Any]:
    """Arguments for aiohttp's runner: the access log and request size limits."""
    return {**access_log_options(), **REQUEST_LIMITS}


def make_store(config: Config, clock: Callable[[], float]) -> SessionStore:
    if config.session.store == "redis":
        return RedisStore.from_config(config.session, clock)
    codec = SessionCodec(config.session.secrets, config.session.max_age, clock)
    return CookieStore(codec, clock)


def make_signer(config: Config, clock: Callable[[], float]) -> AssertionSigner | None:
    if not config.assertion.enabled:
        return None
    return AssertionSigner(
        config.assertion,
        issuer=str(config.server.public_url),
        default_audience=str(config.upstream.url),
        clock=clock,
    )


def make_reddit_session() -> aiohttp.ClientSession:
    # SECURITY: cross-user cookie bleed: reddit calls for every user share this
    # client, so it must never keep cookies.
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())


def upstream_handler(
    config: Config,
    proxy: UpstreamProxy,
    websockets: WebSocketRelay,
    own_cookie: Callable[[str], bool],
    *,
    signer: AssertionSigner | None = None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    trusted = config.server.trusted_proxies
    pass_token = config.upstream.pass_access_token
    assertion_header = config.assertion.header

    async def forward(request: web.Request) -> web.StreamResponse:
        user = request.get(USER_KEY)  # None on a public route
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
        session = request.get(SESSION_KEY)
        if session is not None:
            if signer is not None:
                token = signer.token_for(session.user, session.user_id)
                headers[assertion_header] = token
            if pass_token and session.access_token is not None:
                headers["X-Reddit-Access-Token"] = session.access_token.reveal()
        if is_websocket_upgrade(request):
            return await websockets.relay(request, headers)
        return await proxy.forward(request, headers)

    return forward
