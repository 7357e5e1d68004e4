"""Configuration: TOML, environment and secret files, validated once into frozen
dataclasses that the rest of the gateway trusts."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import string
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from yarl import URL

from gateway.cpus import usable_cpus
from gateway.errors import ConfigError

MIN_SECRET_LENGTH = 32
USER_AGENT_FORMAT = "<platform>:<app id>:<version> (by /u/<reddit username>)"
_DEFAULT_AGENTS = ("python-requests", "aiohttp", "python-urllib", "curl/", "java")
_SCOPE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz*")
_LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret string whose repr and str never show the value."""

    value: str = dataclasses.field(repr=False)

    def reveal(self) -> str:
        return self.value

    def __str__(self) -> str:
        return "********" if self.value else ""

    def __repr__(self) -> str:
        return "Secret('********')" if self.value else "Secret('')"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen_host: str
    listen_port: int
    public_url: URL  # an origin: scheme, host and port only
    redirect_url: str  # byte for byte as registered at reddit
    callback_path: str
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    workers: int = 1
    shutdown_timeout: float = 30.0
    sign_in_page: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    url: URL  # for a Unix socket, http://localhost plus the socket URL's query
    timeout: float
    unix_socket: str = ""  # the socket's path when url was unix:///path
    idle_timeout: float = 0.0  # 0: a body may pause for any time
    client_idle_timeout: float = 60.0  # the client's pauses either way; 0: none
    pass_host_header: bool = True
    rewrite_redirects: bool = True
    websocket_origin: str = ""  # "": pass the browser's Origin through
    tls_verify: bool = True
    ca_file: str = ""
    max_connections: int = 100
    keepalive_timeout: float = 4.0
    pass_access_token: bool = False
    websocket_max_message: int = 4 * 1024 * 1024  # bytes, after decompression
    max_requests_per_user: int = 64  # open requests and websockets; 0: no limit


@dataclass(frozen=True, slots=True)
class RedditConfig:
    client_id: str
    client_secret: Secret
    user_agent: str
    scopes: tuple[str, ...]
    duration: str
    authorize_url: URL
    token_url: URL
    revoke_url: URL
    api_url: URL
    timeout: float
    # Code redemptions a second (and at once) across all users of one worker.
    sign_ins_per_second: float = 10.0
    sign_in_burst: int = 50


@dataclass(frozen=True, slots=True)
class SessionConfig:
    secrets: tuple[Secret, ...]
    cookie_name: str  # as sent: "__Host-" + the configured name when Secure, no domain
    cookie_secure: bool
    max_age: int
    idle_timeout: int = 0  # 0: off
    cookie_domain: str = ""
    store: str = "cookie"  # or "redis"
    redis_url: Secret = Secret("")


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessRules:
    """One set of access rules; an empty or zero rule is not checked."""

    users: frozenset[str] = frozenset()  # casefolded; empty: any reddit account
    deny_users: frozenset[str] = frozenset()  # casefolded
    moderators_of: tuple[str, ...] = ()  # subreddits as written, without "r/"
    subscribers_of: tuple[str, ...] = ()
    contributors_of: tuple[str, ...] = ()  # approved users
    min_account_age_days: int = 0
    min_karma: int | None = None  # karma can be negative: None is "no minimum"
    require_verified_email: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessRoute(AccessRules):
    """An [[access.routes]] entry: rules on top of the global ones, or public."""

    prefix: str  # starts with "/"; no trailing "/" unless it is "/"
    public: bool = False  # served without sign-in; then it has no rules
    allow_suspended: bool | None = None  # only false means anything: routes narrow


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessConfig(AccessRules):
    """[access]: the global rules, their re-checks, and the per-path routes."""

    allow_suspended: bool = False
    recheck_interval: int = 900  # seconds between re-checks of a session's facts
    recheck_grace: int = 1800  # seconds a last decision outlives reddit's outage
    routes: tuple[AccessRoute, ...] = ()


@dataclass(frozen=True, slots=True)
class AssertionConfig:
    enabled: bool = False
    header: str = "X-Reddit-Assertion"
    algorithm: str = "EdDSA"  # or "ES256"
    key_file: str = ""  # PEM private key; "": generated at start-up, in memory
    lifetime: int = 60  # seconds
    audience: str = ""  # "": the upstream URL


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str
    format: str


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = ""  # host:port of the Prometheus endpoint; "": off


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    upstream: UpstreamConfig
    reddit: RedditConfig
    session: SessionConfig
    access: AccessConfig
    log: LogConfig
    assertion: AssertionConfig = AssertionConfig()
    metrics: MetricsConfig = MetricsConfig()


# The schema: every key, its type and its default. A default of None means
# "required"; secrets may instead come from a `<key>_file`.
_SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "server": {
        "listen": ("str", "0.0.0.0:4180"),
        "public_url": ("str", None),
        "redirect_url": ("str", ""),
        "trusted_proxies": ("list", []),
        "workers": ("int", 0),
        "shutdown_timeout": ("float", 30.0),
        "sign_in_page": ("bool", False),
    },
    "upstream": {
        "url": ("str", "http://127.0.0.1:8080"),
        "timeout": ("float", 60.0),
        "idle_timeout": ("float", 0.0),
        "client_idle_timeout": ("float", 60.0),
        "pass_host_header": ("bool", True),
        "rewrite_redirects": ("bool", True),
        "websocket_origin": ("str", ""),
        "tls_verify": ("bool", True),
        "ca_file": ("str", ""),
        "max_connections": ("int", 100),
        "keepalive_timeout": ("float", 4.0),
        "pass_access_token": ("bool", False),
        "websocket_max_message": ("int", 4 * 1024 * 1024),
        "max_requests_per_user": ("int", 64),
    },
    "reddit": {
        "client_id": ("str", None),
        "client_secret": ("secret", None),
        "client_secret_file": ("str", ""),
        "user_agent": ("str", None),
        "scopes": ("list", ["identity"]),
        "duration": ("str", "temporary"),
        "authorize_url": ("str", "https://www.reddit.com/api/v1/authorize"),
        "token_url": ("str", "https://www.reddit.com/api/v1/access_token"),
        "revoke_url": ("str", "https://www.reddit.com/api/v1/revoke_token"),
        "api_url": ("str", "https://oauth.reddit.com"),
        "timeout": ("float", 10.0),
        "sign_ins_per_second": ("float", 10.0),
        "sign_in_burst": ("int", 50),
    },
    "session": {
        "secret": ("secret", ""),
        "secret_file": ("str", ""),
        "secrets": ("list", []),
        "cookie_name": ("str", "_reddit_gateway"),
        "cookie_secure": ("bool", True),
        "cookie_domain": ("str", ""),
        "max_age": ("int", 604800),
        "idle_timeout": ("int", 0),
        "store": ("str", "cookie"),
        "redis_url": ("secret", ""),
        "redis_url_file": ("str", ""),
    },
    "access": {
        "users": ("list", []),
        "deny_users": ("list", []),
        "moderators_of": ("list", []),
        "subscribers_of": ("list", []),
        "contributors_of": ("list", []),
        "min_account_age_days": ("int", 0),
        "min_karma": ("int", ""),  # "": no minimum
        "require_verified_email": ("bool", False),
        "allow_suspended": ("bool", False),
        "recheck_interval": ("int", 900),
        "recheck_grace": ("int", 1800),
        "routes": ("routes", []),
    },
    "assertion": {
        "enabled": ("bool", False),
        "header": ("str", "X-Reddit-Assertion"),
        "algorithm": ("str", "EdDSA"),
        "key_file": ("str", ""),
        "lifetime": ("int", 60),
        "audience": ("str", ""),
    },
    "log": {
        "level": ("str", "info"),
        "format": ("str", "text"),
    },
    "metrics": {
        "listen": ("str", ""),
    },
}

_SCOPE_LIST = """
    account creddits edit flair history identity livemanage modconfig modcontributors
    modflair modlog modmail modothers modposts modself modtraffic modwiki mysubreddits
    privatemessages read report save structuredstyles submit subscribe vote wikiedit
    wikiread
"""
REDDIT_SCOPES = frozenset(_SCOPE_LIST.split())
_USERNAME_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
)
_COOKIE_NAME_CHARS = _USERNAME_CHARS | frozenset("!#$%&'*+.^`|~")
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def load_config(
    path: str | None,
    environ: Mapping[str, str] | None = None,
    *,
    document: Mapping[str, Any] | None = None,
) -> Config:
    """Read the TOML file (or an already parsed `document`), apply GATEWAY_*
    overrides, validate everything.

    Raises ConfigError naming the first key that is wrong.
    """
    environ = os.environ if environ is None else environ
    raw: Mapping[str, Any] = document or {}
    if path:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as exc:
            message = f"cannot read {path}: {exc.strerror}"
            raise ConfigError("--config", message) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc

    values = _merge(raw, environ)
    return _build(values)


def _merge(raw: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Check the file's keys and types, then lay environment overrides on top."""
    values: dict[str, Any] = {}
    for section, content in raw.items():
        if section not in _SCHEMA:
            raise ConfigError(section, f"unknown section [{section}]")
        if not isinstance(content, dict):
            raise ConfigError(section, f"[{section}] must be a table")
        for key, value in content.items():
            name = f"{section}.{key}"
            if key not in _SCHEMA[section]:
                raise ConfigError(name, "unknown key")
            values[name] = _check_type(name, _SCHEMA[section][key][0], value)
    chosen = {key for key, value in raw.get("session", {}).items() if value}
    if "secrets" in chosen and chosen & {"secret", "secret_file"}:
        message = "set either secret (or secret_file) or secrets"
        raise ConfigError("session.secrets", message)

    sections = tuple(f"GATEWAY_{section.upper()}_" for section in _SCHEMA)
    for env_name, text in environ.items():
        if not env_name.startswith(sections):
            continue
        env_key = _env_key(env_name)
        if env_key is None:
            raise ConfigError(env_name, "unknown setting (no such config key)")
        section, key = env_key.split(".")
        values[env_key] = _parse_env(env_name, _SCHEMA[section][key][0], text)
        # A secret from the environment wins over the file's secret or secret file.
        twin = (
            env_key[: -len("_file")] if env_key.endswith("_file") else env_key + "_file"
        )
        values.pop(twin, None)

    # An empty string or list means "not set": the default applies.
    return {k: v for k, v in values.items() if v not in ("", [])}


def _twin(name: str) -> str:
    """session.secret <-> session.secret_file (and likewise for any key)."""
    return name[: -len("_file")] if name.endswith("_file") else name + "_file"


def _env_key(env_name: str) -> str | None:
    for section, keys in _SCHEMA.items():
        prefix = f"GATEWAY_{section.upper()}_"
        if env_name.startswith(prefix):
            key = env_name[len(prefix) :].lower()
            if key in keys:
                return f"{section}.{key}"
    return None


def _check_type(name: str, kind: str, value: Any) -> Any:
    expected: dict[str, tuple[type, ...]] = {
        "str": (str,),
        "secret": (str,),
        "int": (int,),
        "float": (int, float),
        "bool": (bool,),
        "list": (list,),
        "routes": (list,),
    }
    if isinstance(value, bool) and kind != "bool":
        raise ConfigError(name, f"expected {_TYPE_WORDS[kind]}, got a boolean")
    if not isinstance(value, expected[kind]):
        got = type(value).__name__
        raise ConfigError(name, f"expected {_TYPE_WORDS[kind]}, got {got} {value!r}")
    items = value if isinstance(value, list) else []
    if kind == "list" and not all(isinstance(item, str) for item in items):
        raise ConfigError(name, "expected a list of strings")
    if kind == "routes" and not all(isinstance(item, dict) for item in items):
        raise ConfigError(name, "expected [[access.routes]] tables")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(name, "expected a finite number")
    return value


_TYPE_WORDS = {
    "str": "a string",
    "secret": "a string",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "list": "a list of strings",
    "routes": "[[access.routes]] tables",
}


def _parse_env(env_name: str, kind: str, text: str) -> Any:
    text = text.strip()
    if kind in ("str", "secret") or text == "":
        return text
    if kind == "list":
        return [item.strip() for item in text.split(",") if item.strip()]
    if kind == "routes":
        raise ConfigError(env_name, "routes can be set only in the TOML file")
    if kind == "bool":
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(env_name, f"expected true or false, got {text!r}")
    try:
        number = int(text) if kind == "int" else float(text)
    except ValueError:
        message = f"expected {_TYPE_WORDS[kind]}, got {text!r}"
        raise ConfigError(env_name, message) from None
    if not math.isfinite(number):
        raise ConfigError(env_name, "expected a finite number")
    return number


def _build(values: Mapping[str, Any]) -> Config:
    def get(name: str) -> Any:
        if name in values:
            return values[name]
        section, key = name.split(".")
        default = _SCHEMA[section][key][1]
        if default is None:
            raise ConfigError(name, "required but not set")
        return default

    server = _build_server(get)
    reddit = _build_reddit(get)
    session = _build_session(get, server)
    access = _build_access(get)
    if listing_rule_keys(access) and "mysubreddits" not in reddit.scopes:
        reddit = dataclasses.replace(reddit, scopes=(*reddit.scopes, "mysubreddits"))
    return Config(
        server=server,
        upstream=_build_upstream(get),
        reddit=reddit,
        session=session,
        access=access,
        assertion=_build_assertion(get),
        metrics=_build_metrics(get),
        log=LogConfig(
            level=_one_of("log.level", get("log.level").lower(), _LOG_LEVELS),
            format=_one_of("log.format", get("log.format").lower(), ("text", "json")),
        ),
    )


def _build_server(get: Any) -> ServerConfig:
    public_url = _http_url("server.public_url", get("server.public_url"))
    if public_url.raw_path not in ("", "/") or public_url.raw_query_string:
        raise ConfigError(
            "server.public_url",
            "must be an origin such as https://app.example.com (no path or query)",
        )
    public_url = public_url.origin()

    redirect_url = get("server.redirect_url") or str(public_url / "oauth2" / "callback")
    redirect = _http_url("server.redirect_url", redirect_url)
    if _origin(redirect) != _origin(public_url):
        raise ConfigError(
            "server.redirect_url",
            f"{redirect_url!r} must be on public_url's origin {str(public_url)!r}",
        )
    if "#" in redirect_url or redirect.raw_query_string or redirect.raw_path == "/":
        raise ConfigError(
            "server.redirect_url", "needs a path of its own, and no query or fragment"
        )

    host, port = _listen_address(get("server.listen"))
    proxies = []
    for cidr in get("server.trusted_proxies"):
        try:
            proxies.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ConfigError(
                "server.trusted_proxies", f"{cidr!r} is not an IP address or CIDR"
            ) from None

    return ServerConfig(
        listen_host=host,
        listen_port=port,
        public_url=public_url,
        redirect_url=redirect_url,
        callback_path=redirect.raw_path,
        trusted_proxies=tuple(proxies),
        workers=_workers(get("server.workers")),
        shutdown_timeout=_positive(
            "server.shutdown_timeout", get("server.shutdown_timeout")
        ),
        sign_in_page=get("server.sign_in_page"),
    )


def _workers(count: int) -> int:
    """0 means one worker per CPU this process may use: its CPU quota, else its
    CPU affinity."""
    if count < 0 or count > 64:
        raise ConfigError("server.workers", "must be 0 (one per CPU) to 64")
    if count:
        return count
    return min(64, usable_cpus())


def _build_upstream(get: Any) -> UpstreamConfig:
    text = get("upstream.url")
    unix_socket = ""
    if text.startswith("unix://"):
        unix_socket = URL(text).path
        if not unix_socket.startswith("/") or unix_socket == "/":
            raise ConfigError(
                "upstream.url", "a socket URL looks like unix:///run/app.sock"
            )
        url = URL("http://localhost")
    else:
        url = _http_url("upstream.url", text)
        if url.raw_query_string or url.raw_fragment:
            raise ConfigError("upstream.url", "must not carry a query or fragment")

    origin = get("upstream.websocket_origin")
    if origin and _http_url("upstream.websocket_origin", origin).raw_path not in (
        "",
        "/",
    ):
        raise ConfigError("upstream.websocket_origin", "must be an origin, no path")
    ca_file = get("upstream.ca_file")
    if ca_file and not os.path.isfile(ca_file):
        raise ConfigError("upstream.ca_file", f"{ca_file!r} is not a readable file")
    connections = get("upstream.max_connections")
    if connections < 1:
        raise ConfigError("upstream.max_connections", "must be at least 1")
    idle = get("upstream.idle_timeout")
    if idle < 0:
        raise ConfigError("upstream.idle_timeout", "must be 0 (off) or more")
    client_idle = get("upstream.client_idle_timeout")
    if client_idle < 0:
        raise ConfigError("upstream.client_idle_timeout", "must be 0 (off) or more")

    return UpstreamConfig(
        url=url,
        timeout=_positive("upstream.timeout", get("upstream.timeout")),
        unix_socket=unix_socket,
        idle_timeout=float(idle),
        client_idle_timeout=float(client_idle),
        pass_host_header=get("upstream.pass_host_header"),
        rewrite_redirects=get("upstream.rewrite_redirects"),
        websocket_origin=origin.rstrip("/"),
        tls_verify=get("upstream.tls_verify"),
        ca_file=ca_file,
        max_connections=connections,
        keepalive_timeout=_positive(
            "upstream.keepalive_timeout", get("upstream.keepalive_timeout")
        ),
        pass_access_token=get("upstream.pass_access_token"),
        websocket_max_message=_at_least(
            "upstream.websocket_max_message", get("upstream.websocket_max_message"), 0
        ),
        max_requests_per_user=_at_least(
            "upstream.max_requests_per_user", get("upstream.max_requests_per_user"), 0
        ),
    )


def _at_least(key: str, value: int, minimum: int) -> int:
    if value < minimum:
        raise ConfigError(key, f"must be {minimum} or more")
    return value


def _build_metrics(get: Any) -> MetricsConfig:
    listen = get("metrics.listen")
    if listen:
        _listen_address(listen, key="metrics.listen")
    return MetricsConfig(listen=listen)


def _build_assertion(get: Any) -> AssertionConfig:
    header = get("assertion.header")
    if not header.lower().startswith("x-reddit-") or not set(header) <= _USERNAME_CHARS:
        raise ConfigError(
            "assertion.header",
            "must be a header name starting with X-Reddit- (so that the gateway "
            "scrubs any client-sent copy)",
        )
    key_file = get("assertion.key_file")
    if key_file and not os.path.isfile(key_file):
        raise ConfigError("assertion.key_file", f"{key_file!r} is not a readable file")
    lifetime = get("assertion.lifetime")
    if not 10 <= lifetime <= 3600:
        raise ConfigError("assertion.lifetime", "must be between 10 and 3600 seconds")
    return AssertionConfig(
        enabled=get("assertion.enabled"),
        header=header,
        algorithm=_one_of(
            "assertion.algorithm", get("assertion.algorithm"), ("EdDSA", "ES256")
        ),
        key_file=key_file,
        lifetime=lifetime,
        audience=get("assertion.audience"),
    )


def _build_reddit(get: Any) -> RedditConfig:
    client_id = get("reddit.client_id").strip()
    secret = _secret_value(get, "reddit.client_secret", "reddit.client_secret_file")
    if secret is None:
        raise ConfigError(
            "reddit.client_secret",
            "required but not set (or set reddit.client_secret_file)",
        )

    user_agent = get("reddit.user_agent").strip()
    if user_agent.lower().startswith(_DEFAULT_AGENTS) or ":" not in user_agent:
        raise ConfigError(
            "reddit.user_agent",
            f"reddit throttles generic agents; use the form {USER_AGENT_FORMAT}",
        )

    scopes = tuple(dict.fromkeys(s.strip() for s in get("reddit.scopes")))
    for scope in scopes:
        if scope not in REDDIT_SCOPES:
            raise ConfigError("reddit.scopes", f"{scope!r} is not a reddit scope")
    if "identity" not in scopes:
        raise ConfigError(
            "reddit.scopes", "must include 'identity' (needed to read the username)"
        )

    return RedditConfig(
        client_id=client_id,
        client_secret=secret,
        user_agent=user_agent,
        scopes=scopes,
        duration=_one_of(
            "reddit.duration", get("reddit.duration"), ("temporary", "permanent")
        ),
        authorize_url=_http_url("reddit.authorize_url", get("reddit.authorize_url")),
        token_url=_http_url("reddit.token_url", get("reddit.token_url")),
        revoke_url=_http_url("reddit.revoke_url", get("reddit.revoke_url")),
        api_url=_http_url("reddit.api_url", get("reddit.api_url")),
        timeout=_positive("reddit.timeout", get("reddit.timeout")),
        sign_ins_per_second=_positive(
            "reddit.sign_ins_per_second", get("reddit.sign_ins_per_second")
        ),
        sign_in_burst=_at_least("reddit.sign_in_burst", get("reddit.sign_in_burst"), 1),
    )


def _build_session(get: Any, server: ServerConfig) -> SessionConfig:
    secrets = [Secret(s) for s in get("session.secrets")]
    single = _secret_value(get, "session.secret", "session.secret_file")
    if single is not None:
        secrets[:1] = [single]  # GATEWAY_SESSION_SECRET replaces the newest key
    if not secrets:
        raise ConfigError(
            "session.secret",
            "required but not set; `reddit-gateway secret` prints a new one",
        )
    for index, secret in enumerate(secrets):
        if len(secret.reveal()) < MIN_SECRET_LENGTH:
            key = "session.secrets" if len(secrets) > 1 else "session.secret"
            raise ConfigError(
                key,
                f"secret #{index + 1} is shorter than {MIN_SECRET_LENGTH} characters; "
                "`reddit-gateway secret` prints a strong one",
            )

    cookie_name = get("session.cookie_name")
    if not set(cookie_name) <= _COOKIE_NAME_CHARS:
        message = f"{cookie_name!r} is not a cookie name"
        raise ConfigError("session.cookie_name", message)
    secure = get("session.cookie_secure")
    plain_http = server.public_url.scheme == "http"
    if secure and plain_http and server.public_url.host not in _LOOPBACK_HOSTS:
        raise ConfigError(
            "session.cookie_secure",
            "browsers drop Secure cookies on plain http; serve public_url over "
            "https, or set cookie_secure = false for a trusted test network",
        )
    max_age = get("session.max_age")
    if max_age < 60:
        raise ConfigError("session.max_age", "must be at least 60 seconds")

    idle_timeout = get("session.idle_timeout")
    if idle_timeout < 0 or 0 < idle_timeout < 60:
        raise ConfigError("session.idle_timeout", "must be 0 (off) or at least 60")

    domain = get("session.cookie_domain").strip().lstrip(".").lower()
    host = (server.public_url.host or "").lower()
    if domain and host != domain and not host.endswith("." + domain):
        raise ConfigError(
            "session.cookie_domain",
            f"{domain!r} does not cover public_url's host {host!r}, so browsers "
            "would refuse the cookie",
        )
    if secure and not domain and not cookie_name.startswith("__Host-"):
        # SECURITY: cookie tossing from a sibling subdomain: a __Host- cookie can
        # only be set by this very origin, over https, for the whole site.
        cookie_name = "__Host-" + cookie_name

    store = _one_of("session.store", get("session.store"), ("cookie", "redis"))
    redis_url = _secret_value(get, "session.redis_url", "session.redis_url_file")
    if store == "redis" and redis_url is None:
        raise ConfigError("session.redis_url", 'required with store = "redis"')
    if redis_url is not None and not redis_url.reveal().startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise ConfigError(
            "session.redis_url", "must start with redis://, rediss:// or unix://"
        )

    return SessionConfig(
        secrets=tuple(secrets),
        cookie_name=cookie_name,
        cookie_secure=secure,
        max_age=max_age,
        idle_timeout=idle_timeout,
        cookie_domain=domain,
        store=store,
        redis_url=redis_url or Secret(""),
    )


_RULE_KEYS = (
    "users",
    "deny_users",
    "moderators_of",
    "subscribers_of",
    "contributors_of",
    "min_account_age_days",
    "min_karma",
    "require_verified_email",
)
_LISTING_KEYS = ("moderators_of", "subscribers_of", "contributors_of")
_ROUTE_SCHEMA: dict[str, tuple[str, Any]] = {
    "prefix": ("str", None),
    "public": ("bool", False),
    "allow_suspended": ("bool", None),
    **{key: _SCHEMA["access"][key] for key in _RULE_KEYS},
}
# A subreddit's name, with or without "r/" or "/r/" in front and "/" behind.
_SUBREDDIT = re.compile(r"(?:/?r/)?([A-Za-z0-9_]{2,21})/?", re.IGNORECASE)
# RFC 3986 path characters, less "%" and ";": a prefix is matched on the raw path.
_PREFIX_CHARS = frozenset(string.ascii_letters + string.digits + "/-._~!$&'()*+,=:@")


def _build_access(get: Any) -> AccessConfig:
    rules = _access_rules("access", lambda key: get(f"access.{key}"))
    allow_suspended = get("access.allow_suspended")
    interval = get("access.recheck_interval")
    if interval < 60:
        raise ConfigError("access.recheck_interval", "must be at least 60 seconds")
    grace = get("access.recheck_grace")
    if grace < 0:
        raise ConfigError("access.recheck_grace", "must be 0 seconds or more")

    routes: list[AccessRoute] = []
    for index, table in enumerate(get("access.routes")):
        key = f"access.routes[{index}]"
        route = _access_route(key, table, allow_suspended)
        for other_index, other in enumerate(routes):
            if other.prefix.casefold() == route.prefix.casefold():
                raise ConfigError(
                    f"{key}.prefix",
                    f"{route.prefix!r} is also access.routes[{other_index}]'s prefix "
                    "(prefixes are compared case-insensitively)",
                )
        routes.append(route)

    return AccessConfig(
        **rules,
        allow_suspended=allow_suspended,
        recheck_interval=interval,
        recheck_grace=grace,
        routes=tuple(routes),
    )


def _access_rules(key: str, get: Callable[[str], Any]) -> dict[str, Any]:
    """The rule keys that [access] and its routes share, validated."""
    age = get("min_account_age_days")
    if age < 0:
        raise ConfigError(f"{key}.min_account_age_days", "must be 0 (any age) or more")
    karma = get("min_karma")
    return {
        "users": _usernames(f"{key}.users", get("users")),
        "deny_users": _usernames(f"{key}.deny_users", get("deny_users")),
        **{name: _subreddits(f"{key}.{name}", get(name)) for name in _LISTING_KEYS},
        "min_account_age_days": age,
        "min_karma": None if karma == "" else karma,
        "require_verified_email": get("require_verified_email"),
    }


def _access_route(
    key: str, table: Mapping[str, Any], allow_suspended: bool
) -> AccessRoute:
    for name, value in table.items():
        if name not in _ROUTE_SCHEMA:
            raise ConfigError(f"{key}.{name}", "unknown key")
        _check_type(f"{key}.{name}", _ROUTE_SCHEMA[name][0], value)
    if "prefix" not in table:
        message = 'required: the path the route covers, e.g. "/admin"'
        raise ConfigError(f"{key}.prefix", message)

    route = AccessRoute(
        prefix=_route_prefix(f"{key}.prefix", table["prefix"]),
        public=table.get("public", False),
        allow_suspended=table.get("allow_suspended"),
        **_access_rules(key, lambda name: table.get(name, _ROUTE_SCHEMA[name][1])),
    )
    unset = AccessRoute(prefix=route.prefix, public=route.public)
    rules = [
        name for name in _ROUTE_SCHEMA if getattr(route, name) != getattr(unset, name)
    ]
    if route.public and rules:
        raise ConfigError(
            f"{key}.{rules[0]}",
            "a public route is served without sign-in, so it cannot have rules",
        )
    if not route.public and not rules:
        raise ConfigError(key, "needs public = true or at least one rule")
    if route.allow_suspended and not allow_suspended:
        raise ConfigError(
            f"{key}.allow_suspended",
            "a route can only add rules to the global ones; set "
            "access.allow_suspended = true, and allow_suspended = false on the "
            "routes that should refuse suspended accounts",
        )
    return route


def _route_prefix(key: str, text: str) -> str:
    if not text.startswith("/"):
        raise ConfigError(key, f"{text!r} must start with /")
    unusual = "".join(sorted(set(text) - _PREFIX_CHARS))
    if unusual:
        raise ConfigError(
            key,
            f"{text!r} has {unusual!r}; write the path in plain ASCII, without "
            "%-escapes, ?, # or ; (it is compared with the path as sent)",
        )
    if "//" in text or {".", ".."} & set(text.split("/")):
        raise ConfigError(key, f"{text!r} must not have // or . or .. segments")
    return text.rstrip("/") or "/"


def _subreddits(key: str, names: list[str]) -> tuple[str, ...]:
    """Names as written, without "r/", once each (compared case-insensitively)."""
    kept: dict[str, str] = {}
    for text in names:
        match = _SUBREDDIT.fullmatch(text.strip())
        if match is None:
            raise ConfigError(
                key,
                f"{text!r} is not a subreddit name (2 to 21 letters, digits or _, "
                "with or without r/)",
            )
        name = match.group(1)
        if name.casefold().startswith("u_"):
            raise ConfigError(key, f"{text!r} is a user's profile, not a subreddit")
        kept.setdefault(name.casefold(), name)
    return tuple(kept.values())


def _rule_sets(access: AccessConfig) -> list[tuple[str, AccessRules]]:
    """Each set of rules with its config key: the global ones, then each route."""
    routes = [(f"access.routes[{i}]", route) for i, route in enumerate(access.routes)]
    return [("access", access), *routes]


def listing_rule_keys(access: AccessConfig) -> list[str]:
    """The rules that read subreddit listings: they need the mysubreddits scope."""
    return [
        f"{key}.{name}"
        for key, rules in _rule_sets(access)
        for name in _LISTING_KEYS
        if getattr(rules, name)
    ]


def recheck_rule_keys(access: AccessConfig) -> list[str]:
    """The rules on reddit data that can change after sign-in.

    Not the account's age (it only grows, and decide() reads the clock), nor the
    refusal of suspended accounts (checked at sign-in, and at any re-check that
    other rules cause): alone, neither is worth a call to reddit per session.
    """
    keys: list[str] = []
    for key, rules in _rule_sets(access):
        keys += [f"{key}.{name}" for name in _LISTING_KEYS if getattr(rules, name)]
        if rules.min_karma is not None:
            keys.append(f"{key}.min_karma")
        if rules.require_verified_email:
            keys.append(f"{key}.require_verified_email")
    return keys


def config_warnings(config: Config) -> list[str]:
    """What `check` points out in a configuration the gateway would still run."""
    warnings: list[str] = []
    rechecked = recheck_rule_keys(config.access)
    if rechecked and config.reddit.duration == "temporary":
        warnings.append(
            f"{', '.join(rechecked)} {'is' if len(rechecked) == 1 else 'are'} "
            f"re-checked every {config.access.recheck_interval} s with the user's "
            'reddit token, but with reddit.duration = "temporary" that token cannot '
            "be renewed, so re-checks work only while it lasts (reddit gives an hour "
            'or a day); set reddit.duration = "permanent"'
        )
    return warnings


def _secret_value(get: Any, key: str, file_key: str) -> Secret | None:
    value = get(key) if _has_value(get, key) else ""
    path = get(file_key)
    if value and path:
        raise ConfigError(key, f"set either {key} or {file_key}, not both")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as exc:
            raise ConfigError(file_key, f"cannot read {path}: {exc.strerror}") from exc
        if not value:
            raise ConfigError(file_key, f"{path} is empty")
    return Secret(value) if value else None


def _has_value(get: Any, key: str) -> bool:
    try:
        return bool(get(key))
    except ConfigError:
        return False


def _http_url(key: str, text: str) -> URL:
    try:
        url = URL(text)
    except (ValueError, TypeError):
        raise ConfigError(key, f"{text!r} is not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(key, f"{text!r} must be an absolute http:// or https:// URL")
    if url.user or url.password:
        raise ConfigError(key, "must not carry a user name or password")
    return url


def _origin(url: URL) -> tuple[str, str, int | None]:
    """Scheme, host and port, with a default port written or not alike."""
    return url.scheme, (url.host or "").lower(), url.port


def _listen_address(text: str, key: str = "server.listen") -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(key, f"{text!r} is not host:port")
    host = host.removeprefix("[").removesuffix("]")
    return host or "0.0.0.0", int(port_text)  # noqa: S104 (a sidecar listens on all)


def _positive(key: str, value: float) -> float:
    if value <= 0:
        raise ConfigError(key, "must be greater than 0")
    return float(value)


def _one_of(key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(key, f"{value!r} is not one of {', '.join(choices)}")
    return value


def _usernames(key: str, names: list[str]) -> frozenset[str]:
    for name in names:
        if not (3 <= len(name) <= 20 and set(name) <= _USERNAME_CHARS):
            raise ConfigError(key, f"{name!r} is not a reddit username")
    return frozenset(name.casefold() for name in names)


def describe(config: Config) -> str:
    """The effective configuration as TOML, secrets masked."""
    lines: list[str] = []
    for section in _SCHEMA:
        lines.append(f"[{section}]")
        for key, value in _effective(config, section).items():
            if value is None:
                lines.append(f"# {key} is not set")
                continue
            lines.append(f"{key} = {_toml_value(value)}")
            if (section, key) == ("reddit", "scopes"):
                lines.extend(_scope_reasons(config))
        if section == "access":
            lines.extend(_route_tables(config.access))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _scope_reasons(config: Config) -> list[str]:
    listing = listing_rule_keys(config.access)
    lines = []
    for scope in config.reddit.scopes:
        if scope == "identity":
            why = "reads the username (always needed)"
        elif scope == "mysubreddits" and listing:
            why = "needed by " + ", ".join(listing)
        else:
            why = "listed in reddit.scopes"
        lines.append(f"# {scope}: {why}")
    return lines


def _route_tables(access: AccessConfig) -> list[str]:
    lines = []
    for route in access.routes:
        lines += ["", "[[access.routes]]", f"prefix = {_toml_value(route.prefix)}"]
        unset = AccessRoute(prefix=route.prefix)
        for field in dataclasses.fields(route):
            value = getattr(route, field.name)
            if value != getattr(unset, field.name):
                lines.append(f"{field.name} = {_toml_value(_shown(value))}")
    return lines


def _effective(config: Config, section: str) -> dict[str, Any]:
    if section == "server":
        s = config.server
        return {
            "listen": f"{s.listen_host}:{s.listen_port}",
            "public_url": str(s.public_url),
            "redirect_url": s.redirect_url,
            "trusted_proxies": [str(n) for n in s.trusted_proxies],
            "workers": s.workers,  # 0 shows as the count it chose
            "shutdown_timeout": s.shutdown_timeout,
            "sign_in_page": s.sign_in_page,
        }
    part = getattr(config, section)
    values = {f.name: getattr(part, f.name) for f in dataclasses.fields(part)}
    if section == "access":
        del values["routes"]  # as [[access.routes]] tables, after the section
    return {key: _shown(value) for key, value in values.items()}


def _shown(value: Any) -> Any:
    if isinstance(value, URL | Secret):
        return str(value)  # a Secret shows as ********
    if isinstance(value, frozenset):
        return sorted(_shown(item) for item in value)
    if isinstance(value, tuple | list):
        return [_shown(item) for item in value]
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
