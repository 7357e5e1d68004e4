"""Decides whether a return target is safe: same origin as public_url, or "/"."""

from __future__ import annotations

import re

from yarl import URL

MAX_TARGET_LENGTH = 2048
SAFE_DEFAULT = "/"

_C0_AND_SPACE = "".join(map(chr, range(0x21)))
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# Percent-escapes of control characters and of a backslash, and a first path
# segment that starts with an escaped slash: harmless to a browser, but one
# careless decode away from "/\t/evil.com", "/\evil.com" or "//evil.com".
_ENCODED_DANGER = re.compile(r"%(?:[01][0-9a-f]|7f|5c)|^/%(?:2f|5c)", re.IGNORECASE)
# What a browser percent-encodes itself in both path and query: doing it here
# keeps the meaning and makes the value inert in a header or an HTML attribute.
_ENCODE = str.maketrans({" ": "%20", '"': "%22", "<": "%3C", ">": "%3E", "`": "%60"})
_SINGLE_DOT = frozenset((".", "%2e"))
_DOUBLE_DOT = frozenset(("..", ".%2e", "%2e.", "%2e%2e"))


def return_target(raw: str | None, public_url: URL) -> str:
    """Return `raw` as a same-origin path[?query] for a Location header, else "/".

    `raw` is judged the way a browser resolves it against `public_url` (WHATWG
    URL): a path-absolute reference, or an absolute URL with public_url's
    scheme, host and port, is kept as its path and query (dot segments
    resolved, fragment dropped); anything else becomes "/".
    """
    if not raw or len(raw) > MAX_TARGET_LENGTH:
        return SAFE_DEFAULT

    # SECURITY: open redirect via " //evil.com": browsers strip these first.
    target = raw.strip(_C0_AND_SPACE)
    if not _is_plain_ascii(target):
        return SAFE_DEFAULT
    target = target.partition("#")[0]

    if target.startswith("/") and not target.startswith("//"):
        path_and_query: str | None = target
    elif _SCHEME.match(target):
        path_and_query = _same_origin_rest(target, public_url)
    else:
        # "evil.com", "?x", "./x": relative to a page we cannot know; and
        # "//evil.com" is a network-path reference to another host.
        path_and_query = None
    if path_and_query is None:
        return SAFE_DEFAULT

    path, mark, query = path_and_query.partition("?")
    path = _resolve_dot_segments(path)
    # SECURITY: open redirect via dot segments: "/.//evil.com" resolves to
    # the path "//evil.com", which a second resolution reads as a host.
    if path.startswith("//") or _ENCODED_DANGER.search(path):
        return SAFE_DEFAULT

    return (path + mark + query).translate(_ENCODE)


def _is_plain_ascii(text: str) -> bool:
    # SECURITY: open redirect via "/\evil.com", "/\t/evil.com" and
    # look-alike hosts: browsers read "\" as "/" and drop tabs and newlines.
    return text.isascii() and text.isprintable() and "\\" not in text


def _same_origin_rest(target: str, public_url: URL) -> str | None:
    """Path and query of an absolute URL on public_url's origin, else None."""
    scheme, _, rest = target.partition(":")
    # SECURITY: open redirect via another scheme ("javascript:", "data:") or
    # a downgrade from https to http.
    if scheme.lower() != public_url.scheme or not rest.startswith("//"):
        return None

    authority_end = len(rest)
    for delimiter in "/?":
        found = rest.find(delimiter, 2)
        if found != -1:
            authority_end = min(authority_end, found)
    authority = rest[2:authority_end].lower()
    # SECURITY: open redirect via "https://app.example.com@evil.com/",
    # "https://app.example.com.evil.com/" or another port.
    if authority not in _origin_authorities(public_url):
        return None

    path_and_query = rest[authority_end:]
    return path_and_query if path_and_query.startswith("/") else "/" + path_and_query


def _origin_authorities(public_url: URL) -> tuple[str, ...]:
    host = (public_url.raw_host or "").lower()
    if ":" in host:
        host = f"[{host}]"
    with_port = f"{host}:{public_url.port}"
    return (host, with_port) if public_url.is_default_port() else (with_port,)


def _resolve_dot_segments(path: str) -> str:
    """Resolve "." and ".." (also spelt %2e) in a path from "/", as WHATWG does."""
    if "." not in path and "%" not in path:
        return path

    segments = path[1:].split("/")
    last = len(segments) - 1
    resolved: list[str] = []
    for index, segment in enumerate(segments):
        lowered = segment.lower()
        if lowered in _DOUBLE_DOT:
            if resolved:
                resolved.pop()
            if index == last:
                resolved.append("")
        elif lowered in _SINGLE_DOT:
            if index == last:
                resolved.append("")
        else:
            resolved.append(segment)
    return "/" + "/".join(resolved)
