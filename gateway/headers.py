"""Which headers cross the gateway: hop-by-hop, identity scrubbing, X-Forwarded-*
and Forwarded, the app's links to itself."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from multidict import CIMultiDict, MultiMapping

from gateway.redirect_rewrite import REWRITTEN_HEADERS

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
GATEWAY_SET = (
    "x-reddit-user",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
)
IDENTITY_PREFIX = "x-reddit-"
# oauth2-proxy's whole family of X-Auth-Request-* headers (user, email, groups,
# roles, tokens): an app moved from behind it may believe any of them.
OTHER_PROXY_PREFIXES = ("x-auth-request-",)

_GATEWAY_SET = frozenset(GATEWAY_SET)
# Identity headers of other auth proxies (oauth2-proxy, Authelia, Apache's
# REMOTE_USER); an app moved behind this gateway may still believe them.
IDENTITY_CLAIMS = frozenset(
    {
        "remote-user",
        "x-remote-user",
        "x-user",
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-groups",
        "x-forwarded-preferred-username",
        "x-forwarded-access-token",
        "x-auth-request-user",
        "x-auth-request-email",
        "x-auth-request-groups",
        "x-auth-request-preferred-username",
        "x-auth-request-access-token",
        "x-webauth-user",
        "x-authenticated-user",
        "x-auth-user",
        "x-username",
        "x-email",
        "x-remote-email",
        # Kong, Google IAP, Cloudflare Access, Azure App Service, AWS ALB
        "x-authenticated-userid",
        "x-authenticated-scope",
        "x-consumer-username",
        "x-consumer-id",
        "x-consumer-custom-id",
        "x-goog-authenticated-user-email",
        "x-goog-authenticated-user-id",
        "x-goog-iap-jwt-assertion",
        "cf-access-authenticated-user-email",
        "cf-access-jwt-assertion",
        "x-ms-client-principal",
        "x-ms-client-principal-name",
        "x-ms-client-principal-id",
        "x-ms-client-principal-idp",
        "x-amzn-oidc-identity",
        "x-amzn-oidc-data",
        "x-amzn-oidc-accesstoken",
    }
)
# Claims about the client's address or the original URL that apps and frameworks
# tend to believe. The gateway is where trust starts, so none comes from outside.
CLIENT_CLAIMS = frozenset(
    {
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-forwarded-uri",
        "x-original-url",
        "x-original-uri",
        "x-rewrite-url",
        "x-forwarded-path",
        "x-envoy-original-path",
        "x-forwarded",
        "x-original-forwarded-for",
        "client-ip",
        "cf-connecting-ip",
        "x-cluster-client-ip",
        "fastly-client-ip",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        "x-url-scheme",
        "front-end-https",
        "x-original-host",
        "x-host",
    }
)
_NOT_PASSED = _GATEWAY_SET | CLIENT_CLAIMS
# The gateway's own server already answered "100-continue" to the client; passing
# Expect on would make the client library wait for a second 100 from the upstream.
_REQUEST_DROP = HOP_BY_HOP | {"expect"}
_PROTOS = frozenset({"http", "https"})
_PLAIN_CONNECTION = frozenset({"keep-alive", "close"})
_NOTHING_LISTED: frozenset[str] = frozenset()
_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
)
# RFC 7239: a list of elements, each of pairs name=token or name="quoted"
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PAIR = rf'{_TOKEN}=(?:{_TOKEN}|"(?:[\t !#-\[\]-~]|\\[\t -~])*")'
_ELEMENT = rf"{_PAIR}(?:[ \t]*;[ \t]*{_PAIR})*"
_FORWARDED_RE = re.compile(rf"{_ELEMENT}(?:[ \t]*,[ \t]*{_ELEMENT})*")
_TOKEN_RE = re.compile(_TOKEN)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ForwardedFor:
    """What the upstream is told about where a request came from."""

    client_chain: str  # X-Forwarded-For: "1.2.3.4, 5.6.7.8"; "" when unknown
    proto: str
    host: str
    forwarded: str = ""  # Forwarded: a trusted proxy's list, then our element


def forwarded_facts(
    request_headers: MultiMapping[str],
    peer_ip: str | None,
    scheme: str,
    host: str,
    trusted: Sequence[Network],
) -> ForwardedFor:
    """X-Forwarded-For/Proto/Host and Forwarded (RFC 7239).

    The client's claims count only via a trusted peer. Our Forwarded element says
    what this hop saw (the peer, our scheme, the Host we got), as RFC 7239 asks;
    X-Forwarded-Proto/Host carry what a trusted proxy says the client used.
    """
    peer = peer_ip or ""
    if not trusted or not _is_trusted(peer, trusted):
        # SECURITY: X-Forwarded-For spoofing: an untrusted peer's claims are ignored
        return _direct_facts(peer, scheme, host)
    hop = _forwarded_element(peer, scheme, host)

    chain = _joined(request_headers.getall("X-Forwarded-For", ()))
    proto = _last_item(request_headers.getall("X-Forwarded-Proto", ())).lower()
    claimed_host = _last_item(request_headers.getall("X-Forwarded-Host", ()))
    earlier = _joined(request_headers.getall("Forwarded", ()))
    if not _FORWARDED_RE.fullmatch(earlier):
        # SECURITY: Forwarded injection: a list we cannot parse is replaced, since
        # the app's parser might read it differently from ours
        earlier = ""

    return ForwardedFor(
        f"{chain}, {peer}" if chain else peer,
        proto if proto in _PROTOS else scheme,
        claimed_host if _HOST_RE.fullmatch(claimed_host) else host,
        f"{earlier}, {hop}" if earlier else hop,
    )


def is_plain_host(host: str) -> bool:
    """True for a Host that is a name or address and an optional port, nothing else."""
    return _HOST_RE.fullmatch(host) is not None


def upstream_request_headers(
    incoming: MultiMapping[str],
    *,
    user: str | None,
    forwarded: ForwardedFor,
    own_cookie_names: Callable[[str], bool] | frozenset[str],
) -> tuple[CIMultiDict[str], list[str]]:
    """Headers to send upstream, and the client-sent identity headers scrubbed.

    The second item names (as the client spelled them) every header that claimed a
    gateway identity (``x-reddit-*`` in any case, ``_`` for ``-``) so the caller can
    log ``spoofed_header``. X-Forwarded-* from the client are dropped without being
    named: a trusted proxy sends them on every request.
    """
    is_own = (
        own_cookie_names.__contains__
        if isinstance(own_cookie_names, frozenset)
        else own_cookie_names
    )
    listed = _connection_tokens(incoming)
    kept: list[tuple[str, str]] = []
    spoofed: list[str] = []

    for name, value in incoming.items():
        verdict = _REQUEST_VERDICTS.get(name)
        if verdict is None:
            verdict = _remember(_REQUEST_VERDICTS, name, _request_verdict(name))
        if verdict == _SPOOF:
            spoofed.append(name)
            continue
        # SECURITY: hop-by-hop header abuse: what Connection lists goes no further
        if verdict == _DROP or (listed and name.lower() in listed):
            continue
        if verdict == _COOKIE:
            # SECURITY: session cookie leak to upstream
            value = strip_cookies(value, is_own)
            if not value:
                continue
        kept.append((name, value))

    # Every client-sent header of these names was dropped above.
    if user:
        kept.append(("X-Reddit-User", user))
    if forwarded.client_chain:
        kept.append(("X-Forwarded-For", forwarded.client_chain))
    kept.append(("X-Forwarded-Proto", forwarded.proto))
    if forwarded.host:
        kept.append(("X-Forwarded-Host", forwarded.host))
    if forwarded.forwarded:
        kept.append(("Forwarded", forwarded.forwarded))
    return CIMultiDict(kept), spoofed


_PASS, _SPOOF, _DROP, _COOKIE, _REWRITE = "pass", "spoof", "drop", "cookie", "link"
# What to do with a header, by its name as sent: few names recur, so each is judged
# once. Bounded, so a client inventing names cannot grow it for ever.
_REQUEST_VERDICTS: dict[str, str] = {}
_RESPONSE_VERDICTS: dict[str, str] = {}
_VERDICTS_KEPT = 2048


def _remember(verdicts: dict[str, str], name: str, verdict: str) -> str:
    if len(verdicts) < _VERDICTS_KEPT:
        verdicts[name] = verdict
    return verdict


def _request_verdict(name: str) -> str:
    lname = name.lower()
    key = lname.replace("_", "-").replace(".", "-")
    if (
        key.startswith(IDENTITY_PREFIX)
        or key in IDENTITY_CLAIMS
        or key.startswith(OTHER_PROXY_PREFIXES)
    ):
        # SECURITY: identity header spoofing (any case, "_" or "." for "-")
        return _SPOOF
    if key in _NOT_PASSED:
        # SECURITY: X-Forwarded-For spoofing (and X-Real-IP, Forwarded,
        # X-Original-URL): replaced by the gateway's own or dropped, never passed on
        return _DROP
    # SECURITY: hop-by-hop header abuse: Connection cannot remove what the gateway
    # sets (names it lists are dropped too, by the caller)
    if key in _REQUEST_DROP:
        return _DROP
    if key == "content-length" and key != lname:
        # SECURITY: request smuggling: CGI-style apps read Content_Length as length
        return _DROP
    if key == "cookie":
        return _COOKIE
    return _PASS


def downstream_response_headers(
    upstream: MultiMapping[str],
    is_own_cookie: Callable[[str], bool] = lambda _: False,
    rewrite_link: Callable[[str, str], str] | None = None,
) -> CIMultiDict[str]:
    """The upstream's headers minus hop-by-hop; repeats (Set-Cookie) kept, in order.

    A Set-Cookie for one of the gateway's own cookies is dropped. ``rewrite_link``
    (lowercase name, value) -> value, if given, gets Location, Content-Location and
    Refresh.
    """
    listed = _connection_tokens(upstream)
    kept: list[tuple[str, str]] = []
    for name, value in upstream.items():
        verdict = _RESPONSE_VERDICTS.get(name)
        if verdict is None:
            verdict = _remember(_RESPONSE_VERDICTS, name, _response_verdict(name))
        if verdict == _DROP or (listed and name.lower() in listed):
            continue
        if verdict == _COOKIE:
            # SECURITY: session overwrite by the upstream: the app may not set,
            # clear or fixate the gateway's own cookies.
            if is_own_cookie(value.partition("=")[0].strip()):
                continue
        elif verdict == _REWRITE and rewrite_link is not None:
            value = rewrite_link(name.lower(), value)
        kept.append((name, value))
    return CIMultiDict(kept)


def _response_verdict(name: str) -> str:
    lname = name.lower()
    if lname in HOP_BY_HOP:
        return _DROP
    if lname == "set-cookie":
        return _COOKIE
    if lname in REWRITTEN_HEADERS:
        return _REWRITE
    return _PASS


def cookie_value(header: str | None, name: str) -> str | None:
    """The value of cookie ``name`` in a Cookie header (the last, if repeated, as
    aiohttp's parser does), without parsing the others."""
    if not header or name not in header:
        return None
    found = None
    for pair in header.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip(" \t") == name:
            found = value.strip(" \t")
    if found is not None and len(found) > 1 and found[0] == found[-1] == '"':
        found = found[1:-1]
    return found


def strip_cookies(header: str, is_own: Callable[[str], bool]) -> str:
    """Drop the gateway's cookies from a Cookie header; other pairs byte for byte."""
    pairs = header.split(";")
    if header.isascii() and "," not in header:
        kept = [pair for pair in pairs if not is_own(pair.partition("=")[0].strip())]
    else:
        # SECURITY: session cookie leak to upstream: a cookie parser may split on
        # "," too, and bytes it drops may join a name back together.
        kept = [pair for pair in pairs if not any(map(is_own, _loose_names(pair)))]
    if len(kept) == len(pairs):
        return header
    value = ";".join(kept).lstrip(" \t")
    return value if value.strip(" \t;") else ""


def _loose_names(pair: str) -> list[str]:
    """Every name a lenient parser could read in one ';'-separated pair."""
    names = []
    for part in pair.split(","):
        name = part.partition("=")[0]
        names.append("".join(c for c in name if "!" <= c <= "~"))
    return names


def _connection_tokens(headers: MultiMapping[str]) -> frozenset[str]:
    values = headers.getall("Connection", ())
    if not values or (len(values) == 1 and values[0].lower() in _PLAIN_CONNECTION):
        return _NOTHING_LISTED
    tokens = {t.strip().lower() for v in values for t in v.split(",")}
    tokens.discard("host")  # a request without Host would be routed by our URL's
    return frozenset(tokens)


@functools.lru_cache(maxsize=4096)
def _direct_facts(peer: str, scheme: str, host: str) -> ForwardedFor:
    """What the app is told of a request from an untrusted peer: only what this
    hop saw. Cached: a client sends many requests from one address to one host."""
    return ForwardedFor(peer, scheme, host, _forwarded_element(peer, scheme, host))


def _forwarded_element(peer: str, scheme: str, host: str) -> str:
    element = f"for={_forwarded_node(peer)};proto={scheme}"
    if _HOST_RE.fullmatch(host):
        # SECURITY: Forwarded injection: only a plain host[:port] goes in, quoted
        # when it is not a token, so a Host header cannot add pairs or elements
        element += f";host={host}" if _TOKEN_RE.fullmatch(host) else f';host="{host}"'
    return element


@functools.lru_cache(maxsize=4096)
def _forwarded_node(peer: str) -> str:
    """The peer as a Forwarded node; cached, since parsing an address is costly
    and a client sends many requests from one."""
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return "unknown"  # RFC 7239's word for a peer without an IP (a Unix socket)
    return f'"[{peer}]"' if ip.version == 6 else peer


def _joined(values: list[str] | tuple[()]) -> str:
    return ", ".join(part for v in values if (part := v.strip()))


def _last_item(values: list[str] | tuple[()]) -> str:
    return values[-1].rsplit(",", 1)[-1].strip() if values else ""


def _is_trusted(peer: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in trusted)
