"""Points the app's absolute links to its own address (Location, Content-Location,
Refresh) at public_url instead, as nginx's `proxy_redirect default` does."""

from __future__ import annotations

import re

from yarl import URL

REWRITTEN_HEADERS = frozenset({"location", "content-location", "refresh"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# scheme://authority, then the rest: it starts with "/", "?", "#", "\" or is empty,
# so whatever follows the new origin can never extend its authority.
_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#\\]*)(.*)", re.DOTALL)
_AUTHORITY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:@\[\]]*)(?::([0-9]{0,5}))?")
# "5; url=https://...", "0;URL='...'", "3, url=...": the delay, then the URL
_REFRESH = re.compile(
    r"([ \t]*[0-9.]+[ \t]*[;,][ \t]*(?:url[ \t]*=[ \t]*)?)(['\"]?)(.*?)(\2[ \t]*)",
    re.IGNORECASE | re.DOTALL,
)
_AFTER_BASE = frozenset({"", "/", "?", "#"})


class RedirectRewriter:
    """Rewrites a URL on the upstream's origin (under its base path) to public_url.

    Relative URLs and other origins pass untouched: a browser resolves the former
    against public_url already, and the latter are the app's business.
    """

    __slots__ = ("_base", "_host", "_port", "_public", "_scheme")

    def __init__(self, upstream: URL, public_url: URL) -> None:
        self._scheme = upstream.scheme
        self._host = (upstream.raw_host or "").lower()
        self._port = upstream.port
        self._base = upstream.raw_path.rstrip("/")
        self._public = str(public_url.origin())

    def rewrite(self, name: str, value: str) -> str:
        """The value of header ``name`` (lowercase), pointed at public_url if due."""
        if name != "refresh":
            return self._location(value)
        match = _REFRESH.fullmatch(value)
        if match is None:
            return value
        before, quote, url, after = match.groups()
        new = self._location(url)
        return value if new is url else f"{before}{quote}{new}{after}"

    def _location(self, value: str) -> str:
        absolute = _ABSOLUTE.fullmatch(value)
        if absolute is None:
            return value
        scheme, authority, rest = absolute.groups()
        scheme = scheme.lower()
        parts = _AUTHORITY.fullmatch(authority)
        # SECURITY: open redirect: a user@host authority is never taken for ours
        if parts is None or scheme != self._scheme:
            return value
        host = parts[1].removeprefix("[").removesuffix("]").lower()
        port = int(parts[2]) if parts[2] else _DEFAULT_PORTS.get(scheme)
        if host != self._host or port != self._port:
            return value

        base = self._base
        if base:
            if not rest.startswith(base) or rest[len(base) : len(base) + 1] not in (
                _AFTER_BASE
            ):
                return value  # outside the part of the app the gateway serves
            rest = rest[len(base) :]
            if not rest.startswith("/"):
                rest = "/" + rest
        return self._public + rest
