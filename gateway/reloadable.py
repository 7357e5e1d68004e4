"""What a reload (SIGHUP) may change, the access rules and the upstream: held where
each request reads them, and swapped whole. Everything else takes a restart."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import replace

from aiohttp import web
from yarl import URL

from gateway.config import Config, UpstreamConfig, listing_rule_keys
from gateway.errors import ConfigError
from gateway.policy import LISTING_SCOPE, Policy
from gateway.proxy import UpstreamProxy
from gateway.upstream_client import UpstreamPool
from gateway.upstream_session import make_upstream_session
from gateway.websocket import WebSocketRelay, make_websocket_session

RELOADED_SECTIONS = frozenset({"access", "upstream"})
# Keys of those sections that are still read once, at start-up.
_START_ONLY = frozenset({"upstream.max_requests_per_user"})
# Config fields whose key in the TOML file has another name.
_KEY_NAMES = {
    "server.listen_host": "server.listen",
    "server.listen_port": "server.listen",
    "server.callback_path": "server.redirect_url",
    "session.secrets": "session.secret",
}


class UpstreamClients:
    """The clients of one upstream: the HTTP proxy, the websocket relay and the
    /oauth2/ready probe.

    A request holds it (`with clients:`) for as long as it uses it; one that a
    reload replaced closes its connections when the last such request ends.
    """

    def __init__(
        self,
        upstream: UpstreamConfig,
        public_url: URL,
        own_cookie: Callable[[str], bool],
        pool: UpstreamPool | None = None,
    ) -> None:
        """``pool``: the proxy's connections, made here (and closed) when None."""
        self.config = upstream
        self._pool = pool or UpstreamPool(upstream)  # ConfigError: a bad CA file
        self._owns_pool = pool is None
        websocket_session = make_websocket_session(upstream)
        # /oauth2/ready gets connections of its own: a busy pool must not make the
        # gateway look dead to its orchestrator.
        self.probe = make_upstream_session(replace(upstream, max_connections=2))
        self._owned = (websocket_session, self.probe)

        self.proxy = UpstreamProxy(
            upstream, self._pool, own_cookie, public_url=public_url
        )
        self.websockets = WebSocketRelay(
            upstream,
            websocket_session,
            public_url=public_url,
            relay_answer=self.proxy.relay_answer,
            is_own_cookie=own_cookie,
        )
        self._users = 0
        self._retired = False
        self._closing: asyncio.Task[None] | None = None

    def __enter__(self) -> UpstreamClients:
        self._users += 1
        return self

    def __exit__(self, *_: object) -> None:
        self._users -= 1
        if self._retired and not self._users:
            self._close_soon()

    def retire(self) -> None:
        """Replaced by a reload: close once no request uses it any more."""
        self._retired = True
        if not self._users:
            self._close_soon()

    @property
    def closed(self) -> bool:
        return self._closing is not None and self._closing.done()

    async def close(self) -> None:
        if self._owns_pool:
            await self._pool.close()
        for session in self._owned:
            await session.close()

    def _close_soon(self) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.close())


class Reloadable:
    """The access rules and the upstream in force. A request reads `policy` and
    `upstream` when it needs them; `reload` replaces both in one step, so each
    request sees either the old pair or the new one."""

    def __init__(
        self,
        config: Config,
        clock: Callable[[], float],
        own_cookie: Callable[[str], bool],
        upstream_pool: UpstreamPool | None = None,
    ) -> None:
        self._running = config
        self._clock = clock
        self._own_cookie = own_cookie
        self.policy = Policy(config.access, clock)
        self.upstream = UpstreamClients(
            config.upstream, config.server.public_url, own_cookie, upstream_pool
        )
        self._retired: list[UpstreamClients] = []

    def reload(self, loaded: Config) -> list[str]:
        """Put the access rules and upstream of `loaded` in force.

        Returns the keys that changed but take a restart. Raises ConfigError,
        having changed nothing, when `loaded` cannot be put in force.
        """
        check_reloadable(self._running, loaded)
        policy = Policy(loaded.access, self._clock)
        upstream = self.upstream
        if loaded.upstream != self._running.upstream:
            upstream = UpstreamClients(
                loaded.upstream,
                self._running.server.public_url,
                self._own_cookie,
            )

        previous = self.upstream
        self.policy, self.upstream = policy, upstream
        if upstream is not previous:
            previous.retire()
            self._retired = [u for u in self._retired if not u.closed] + [previous]
        needs_restart = restart_keys(self._running, loaded)
        self._running = replace(
            self._running, access=loaded.access, upstream=loaded.upstream
        )
        return needs_restart

    @property
    def open_websockets(self) -> int:
        """Websockets open to the upstream right now, old upstreams' included."""
        return sum(u.websockets.open_count for u in self._every_upstream())

    async def close_websockets(self, app: web.Application) -> None:
        """For on_shutdown: every relayed websocket goes away with 1001."""
        for upstream in self._every_upstream():
            await upstream.websockets.close_all(app)

    async def close(self) -> None:
        """For on_cleanup, once no request runs any more."""
        for upstream in self._every_upstream():
            await upstream.close()

    def _every_upstream(self) -> list[UpstreamClients]:
        return [*self._retired, self.upstream]


def check_reloadable(running: Config, loaded: Config) -> None:
    """ConfigError if `loaded`'s access rules cannot work in the running gateway."""
    listing = listing_rule_keys(loaded.access)
    if listing and LISTING_SCOPE not in running.reddit.scopes:
        raise ConfigError(
            listing[0],
            f"needs reddit's {LISTING_SCOPE} scope, which the running gateway does "
            "not ask for; restart it to apply this rule",
        )


def restart_keys(running: Config, loaded: Config) -> list[str]:
    """The keys whose new values only a restart puts in force (never values)."""
    keys: list[str] = []
    for section in dataclasses.fields(running):
        old, new = getattr(running, section.name), getattr(loaded, section.name)
        for field in dataclasses.fields(old):
            name = f"{section.name}.{field.name}"
            reloaded = section.name in RELOADED_SECTIONS and name not in _START_ONLY
            if not reloaded and getattr(old, field.name) != getattr(new, field.name):
                keys.append(_KEY_NAMES.get(name, name))
    follows_upstream = running.assertion.enabled and not running.assertion.audience
    if follows_upstream and running.upstream.url != loaded.upstream.url:
        keys.append("assertion.audience")  # its default is the upstream's URL
    return list(dict.fromkeys(keys))


RELOADABLE = web.AppKey("reloadable", Reloadable)
