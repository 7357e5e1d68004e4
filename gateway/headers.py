"""Which headers cross the gateway: hop-by-hop, identity scrubbing, X-Forwarded-*."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from multidict import CIMultiDict, MultiMapping

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
)
IDENTITY_PREFIX = "x-reddit-"

_GATEWAY_SET = frozenset(GATEWAY_SET)
# Claims about the client's address or the original URL that apps and frameworks
# tend to believe. The gateway is where trust starts, so none comes from outside.
CLIENT_CLAIMS = frozenset(
    {
        "forwarded",
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

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ForwardedFor:
    """What the upstream is told about where a request came from."""

    client_chain: str  # X-Forwarded-For: "1.2.3.4, 5.6.7.8"; "" when unknown
    proto: str
    host: str


def forwarded_facts(
    request_headers: MultiMapping[str],
    peer_ip: str | None,
    scheme: str,
    host: str,
    trusted: Sequence[Network],
) -> ForwardedFor:
    """X-Forwarded-For/Proto/Host; the client's claims count only via a trusted peer."""
    peer = peer_ip or ""
    if not trusted or not _is_trusted(peer, trusted):
        # SECURITY: X-Forwarded-For spoofing: an untrusted peer's claims are ignored
        return ForwardedFor(peer, scheme, host)

    chain = ", ".join(
        part
        for v in request_headers.getall("X-Forwarded-For", ())
        if (part := v.strip())
    )
    proto = _last_item(request_headers.getall("X-Forwarded-Proto", ())).lower()
    claimed_host = _last_item(request_headers.getall("X-Forwarded-Host", ()))

    return ForwardedFor(
        f"{chain}, {peer}" if chain else peer,
        proto if proto in _PROTOS else scheme,
        claimed_host if _HOST_RE.fullmatch(claimed_host) else host,
    )


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
    out: CIMultiDict[str] = CIMultiDict()
    spoofed: list[str] = []

    for name, value in incoming.items():
        lname = name.lower()
        key = lname.replace("_", "-")
        if key.startswith(IDENTITY_PREFIX):
            # SECURITY: identity header spoofing (any case, "_" read as "-")
            spoofed.append(name)
            continue
        if key in _NOT_PASSED:
            # SECURITY: X-Forwarded-For spoofing (and X-Real-IP, Forwarded,
            # X-Original-URL): replaced below or dropped, never passed on
            continue
        # SECURITY: hop-by-hop header abuse: Connection cannot remove what we set below
        if key in _REQUEST_DROP or lname in listed:
            continue
        if key == "content-length" and key != lname:
            # SECURITY: request smuggling: CGI-style apps read Content_Length as length
            continue
        if key == "cookie":
            # SECURITY: session cookie leak to upstream
            value = strip_cookies(value, is_own)
            if not value:
                continue
        out.add(name, value)

    if user:
        out["X-Reddit-User"] = user
    if forwarded.client_chain:
        out["X-Forwarded-For"] = forwarded.client_chain
    out["X-Forwarded-Proto"] = forwarded.proto
    if forwarded.host:
        out["X-Forwarded-Host"] = forwarded.host
    return out, spoofed


def downstream_response_headers(
    upstream: MultiMapping[str], is_own_cookie: Callable[[str], bool] = lambda _: False
) -> CIMultiDict[str]:
    """The upstream's headers minus hop-by-hop; repeats (Set-Cookie) kept, in order.

    A Set-Cookie for one of the gateway's own cookies is dropped.
    """
    listed = _connection_tokens(upstream)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in listed:
            continue
        # SECURITY: session overwrite by the upstream: the app may not set, clear
        # or fixate the gateway's own cookies.
        if lname == "set-cookie" and is_own_cookie(value.partition("=")[0].strip()):
            continue
        out.add(name, value)
    return out


def strip_cookies(header: str, is_own: Callable[[str], bool]) -> str:
    """Drop the gateway's cookies from a Cookie header; other pairs byte for byte."""
    pairs = header.split(";")
    kept = [pair for pair in pairs if not is_own(pair.partition("=")[0].strip())]
    if len(kept) == len(pairs):
        return header
    value = ";".join(kept).lstrip(" \t")
    return value if value.strip(" \t;") else ""


def _connection_tokens(headers: MultiMapping[str]) -> frozenset[str]:
    values = headers.getall("Connection", ())
    if not values or (len(values) == 1 and values[0].lower() in _PLAIN_CONNECTION):
        return _NOTHING_LISTED
    tokens = {t.strip().lower() for v in values for t in v.split(",")}
    tokens.discard("host")  # a request without Host would be routed by our URL's
    return frozenset(tokens)


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
