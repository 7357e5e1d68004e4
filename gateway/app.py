"""Builds the aiohttp Application: middlewares, routes, client sessions. Wiring only."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp_session import session_middleware

from gateway.auth import UPSTREAM_ROUTE, Authenticator, LoginStarter
from gateway.config import Config
from gateway.endpoints import Endpoints
from gateway.headers import forwarded_facts, upstream_request_headers
from gateway.log import USER_KEY, auth_event
from gateway.login_state import LoginStates
from gateway.policy import Policy
from gateway.proxy import UpstreamProxy, make_upstream_session
from gateway.reddit import RedditClient
from gateway.renewal import SessionRenewal
from gateway.session import SessionCodec
from gateway.session_store import CookieStore, SessionStorage, SessionStore


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
    reddit = RedditClient(config.reddit, config.server.redirect_url, reddit_session)
    login = LoginStarter(states, reddit)
    renewal = SessionRenewal(
        store=store,
        reddit=reddit,
        refreshable=config.reddit.duration == "permanent",
        idle_timeout=config.session.idle_timeout,
        clock=clock,
    )
    authenticator = Authenticator(
        store=store,
        renewal=renewal,
        session_config=config.session,
        policy=Policy(config.access),
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
        store=store,
        upstream_session=lambda: upstream_session,
        clock=clock,
    )

    def own_cookie(name: str) -> bool:
        return name == config.session.cookie_name or states.is_gateway_cookie(name)

    app = web.Application(middlewares=[authenticator.middleware])
    app.on_response_prepare.append(authenticator.send_pending_cookie)
    app.router.add_routes(endpoints.routes())
    app.router.add_route(
        "*",
        "/{tail:.*}",
        upstream_handler(
            config,
            UpstreamProxy(config.upstream, upstream_session, own_cookie),
            own_cookie,
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


def make_store(config: Config, clock: Callable[[], float]) -> SessionStore:
    codec = SessionCodec(config.session.secrets, config.session.max_age, clock)
    return CookieStore(codec)


def make_reddit_session() -> aiohttp.ClientSession:
    # SECURITY: cross-user cookie bleed: reddit calls for every user share this
    # client, so it must never keep cookies.
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())


def upstream_handler(
    config: Config, proxy: UpstreamProxy, own_cookie: Callable[[str], bool]
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    trusted = config.server.trusted_proxies

    async def forward(request: web.Request) -> web.StreamResponse:
        user = request[USER_KEY]
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
                user=user,
                client=request.remote or "-",
                headers=",".join(spoofed),
            )
        return await proxy.forward(request, headers)

    return forward
