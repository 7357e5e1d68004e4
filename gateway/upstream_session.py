"""The ClientSession to the upstream app: TCP, TLS or a Unix socket, and its pool."""

from __future__ import annotations

import logging
import ssl

import aiohttp

from gateway.config import UpstreamConfig
from gateway.errors import ConfigError

log = logging.getLogger("gateway.proxy")

# What the app may answer (else 502): long Content-Security-Policy and Link headers.
_ANSWER_FIELD_SIZE = 65536
_ANSWER_MAX_HEADERS = 256


def make_upstream_session(upstream: UpstreamConfig) -> aiohttp.ClientSession:
    """The ClientSession UpstreamProxy expects; create it inside the running loop.

    Keep-alive pool, bodies left encoded, no cookie jar (a jar would also rewrite the
    Cookie header), no session timeout: UpstreamProxy times the header wait itself.
    """
    connector = make_connector(upstream, upstream.max_connections)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
        max_field_size=_ANSWER_FIELD_SIZE,
        max_headers=_ANSWER_MAX_HEADERS,
    )


def make_connector(upstream: UpstreamConfig, limit: int) -> aiohttp.BaseConnector:
    """Connections to the app: its Unix socket, or TCP with its TLS settings."""
    if upstream.unix_socket:
        return aiohttp.UnixConnector(
            upstream.unix_socket,
            limit=limit,
            keepalive_timeout=upstream.keepalive_timeout,
        )
    return aiohttp.TCPConnector(
        limit=limit,
        keepalive_timeout=upstream.keepalive_timeout,
        ssl=_tls(upstream),
    )


def tls_context(upstream: UpstreamConfig) -> ssl.SSLContext:
    """The TLS settings for an https upstream: its CA file, the system's CAs, or
    (tls_verify = false) no verification at all."""
    verify = _tls(upstream)
    if isinstance(verify, ssl.SSLContext):
        return verify
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _tls(upstream: UpstreamConfig) -> ssl.SSLContext | bool:
    if not upstream.tls_verify:
        if upstream.url.scheme == "https":
            log.warning("upstream_tls_unverified: tls_verify = false")
        return False
    if not upstream.ca_file:
        return True  # the system's CAs
    try:
        return ssl.create_default_context(cafile=upstream.ca_file)
    except (ssl.SSLError, OSError) as exc:
        message = f"{upstream.ca_file!r} is not a PEM CA bundle: {exc}"
        raise ConfigError("upstream.ca_file", message) from None
