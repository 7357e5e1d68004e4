"""Streams a request to the upstream app and its answer back, byte for byte."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.body_watch import (
    ClientGone,
    Deadlines,
    Upload,
    UpstreamIdle,
    client_left,
    next_chunk,
)
from gateway.config import UpstreamConfig
from gateway.headers import downstream_response_headers, is_plain_host
from gateway.log import BEFORE_ANSWER, UPSTREAM_SECONDS
from gateway.pages import json_error
from gateway.redirect_rewrite import RedirectRewriter
from gateway.upstream_answer import UpstreamAnswer, UpstreamError
from gateway.upstream_client import UpstreamPool, body_framing, request_head

log = logging.getLogger("gateway.proxy")

# What aiohttp's parser takes from a client; beyond it the client gets a 400. Give
# these to the server's runner (web.run_app, web.AppRunner). Lines of 8 KiB as nginx
# and Apache; header fields twice that, for an app's cookies beside our 4 KiB one.
# SECURITY: header flooding: a request's head is bounded before any handler runs
REQUEST_LIMITS = {"max_line_size": 8190, "max_field_size": 16384, "max_headers": 128}
# origin-form only: no control characters, spaces, non-ASCII, or fragment
_UNSAFE_TARGET = re.compile(r"[^\x21-\x7e]|#")


def refuse_target(request: web.BaseRequest) -> web.Response | None:
    """A 4xx for a request no upstream should see (websockets included), else None."""
    target = request.raw_path
    if not target.startswith("/") or _UNSAFE_TARGET.search(target):
        # SECURITY: request smuggling via the request target
        log.warning("bad_request_target method=%s", request.method)
        return json_error(400, "bad_request", "The request target is not a path.")
    host = request.headers.get("Host")
    if host is not None and not is_plain_host(host):
        # SECURITY: host header poisoning: an app building links from Host (or
        # from X-Forwarded-Host, which carries it) gets only a host and a port
        log.warning("bad_host method=%s", request.method)
        return json_error(400, "bad_request", "The Host header is not a host name.")
    if has_dot_segment(target):
        # SECURITY: path traversal out of the upstream's base path (and past
        # any rule made on the path): "..", also as %2e%2e or behind %2f.
        log.warning("dot_segment_target method=%s", request.method)
        return json_error(400, "bad_request", "The path has . or .. segments.")
    if request.method in ("TRACE", "TRACK"):
        # SECURITY: cross-site tracing: an echo of the request's headers.
        return json_error(405, "method_not_allowed", "TRACE is not served.")
    return None


def has_dot_segment(target: str) -> bool:
    """True if the path, decoded once, has a "." or ".." segment (/ or \\ apart),
    also one with ";params" ("/..;/", which servlet containers read as "..")."""
    path = target.partition("?")[0]
    if "." not in path and "%2" not in path:
        return False  # the common case, without decoding
    decoded = unquote(path).replace("\\", "/")
    return any(
        # Servers differ in what they strip before resolving: params, NULs,
        # trailing blanks. Judge the segment as the most lenient would.
        segment.partition(";")[0].partition("\x00")[0].rstrip(" \t") in (".", "..")
        for segment in decoded.split("/")
    )


class UpstreamProxy:
    """Forwards requests to one upstream app through its connection pool."""

    def __init__(
        self,
        upstream: UpstreamConfig,
        pool: UpstreamPool,
        is_own_cookie: Callable[[str], bool] = lambda _: False,
        *,
        public_url: URL | None = None,
    ) -> None:
        """``public_url``: where the app's links to itself are pointed (None: not)."""
        base = upstream.url.with_query(None).with_fragment(None)
        self._base_path = base.raw_path.rstrip("/")
        self._timeout = upstream.timeout
        self._idle = upstream.idle_timeout
        self._upload_idle = upload_idle(upstream)
        self._client_idle = upstream.client_idle_timeout
        self._host = None if upstream.pass_host_header else upstream.url.raw_authority
        self._pool = pool
        self._deadlines = Deadlines()
        self._is_own_cookie = is_own_cookie
        self._rewrite_link: Callable[[str, str], str] | None = None
        if upstream.rewrite_redirects and public_url is not None:
            self._rewrite_link = RedirectRewriter(base, public_url).rewrite

    async def forward(
        self, request: web.Request, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        """Send ``request`` upstream with ``headers`` and stream the answer back.

        ``upstream.timeout`` bounds the time spent waiting on the upstream for the
        response headers (connecting, taking the body, answering); never the time
        spent waiting on the client's upload, never the response body. Bodies both
        ways may pause for up to ``upstream.idle_timeout`` (0: forever). A client
        that leaves during any long wait has its upstream request ended too.
        """
        refused = refuse_target(request)
        if refused is not None:
            return refused
        method = request.method
        if self._host is not None:
            headers["Host"] = self._host
        has_body = request.body_exists
        chunked = body_framing(method, headers, has_body)
        try:
            target = self._base_path + request.raw_path
            head = request_head(method, target, headers, self._pool.authority)
        except ValueError as exc:  # a line break in a header, a bad encoding
            log.warning(  # the type only: the message may quote a header's value
                "bad_request_header method=%s error=%s", method, type(exc).__name__
            )
            return json_error(400, "bad_request", "The request has a malformed header.")
        upload = (
            Upload(request.content, self._timeout, self._upload_idle)
            if has_body
            else None
        )

        deadline = self._deadlines.start(request, self._timeout)
        if upload is not None:
            upload.deadline = deadline
        try:
            sent_at = time.monotonic()
            upstream = await self._pool.request(method, head, upload, chunked)
            request[UPSTREAM_SECONDS] = time.monotonic() - sent_at
        except asyncio.CancelledError:
            if not deadline.settle():
                raise
            if client_left(request):  # the deadline ended the wait: nobody to answer
                log.info("client_gone method=%s path=%s", method, log_path(request))
                return json_error(502, "bad_gateway", "The client left.")
            log.warning("upstream_timeout method=%s path=%s", method, log_path(request))
            return json_error(504, "gateway_timeout", "The app did not answer in time.")
        except UpstreamError as exc:
            if upload is not None and upload.went_idle:
                return _client_idle(request)
            return _unreachable(request, exc)
        finally:
            deadline.stop()
            if upload is not None:
                upload.deadline = None

        try:
            return await self.relay_answer(request, upstream)
        finally:
            upstream.release()

    async def relay_answer(
        self, request: web.Request, upstream: UpstreamAnswer | aiohttp.ClientResponse
    ) -> web.StreamResponse:
        """The upstream's answer to the client: status, headers, streamed body."""
        if upstream.status < 200:  # an unasked-for 101: there is nothing to switch
            return _unreachable(request, aiohttp.ClientError("informational answer"))
        content = upstream.content
        headers = downstream_response_headers(
            upstream.headers, self._is_own_cookie, self._rewrite_link
        )

        if content.is_eof():
            # The whole body came with the headers: answer with one write.
            try:
                body = content.read_nowait()
            except (UpstreamError, aiohttp.ClientError) as exc:
                return _unreachable(request, exc)
            response: web.StreamResponse = web.Response(
                status=upstream.status,
                reason=upstream.reason,
                headers=headers,
                body=body,
            )
        else:
            response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=headers
            )

        before = request.get(BEFORE_ANSWER)
        if before is not None:
            before(response)
        try:
            await response.prepare(request)
        except ValueError as exc:  # a header aiohttp cannot encode
            log.warning(
                "bad_upstream_header path=%s error=%s",
                log_path(request),
                type(exc).__name__,
            )
            return json_error(502, "bad_gateway", "The app sent a malformed header.")
        except ConnectionError:
            return response  # the client left; nothing to tell it
        if isinstance(response, web.Response):
            return response  # aiohttp writes the body when we return

        # SECURITY: pool exhaustion: a client that stops taking the answer would
        # hold the app's connection for ever; it gets client_idle_timeout (60 s,
        # as nginx's send_timeout), timed only while a write waits on it.
        taking = self._deadlines.start(request, self._client_idle or math.inf)
        taking.reschedule(None)
        loop = asyncio.get_running_loop()
        try:
            while chunk := await next_chunk(request, content, self._idle):
                if self._client_idle:
                    taking.reschedule(loop.time() + self._client_idle)
                try:
                    await response.write(chunk)
                except ConnectionError:
                    raise ClientGone from None
                taking.reschedule(None)
            if self._client_idle:
                taking.reschedule(loop.time() + self._client_idle)
            await response.write_eof()
        except asyncio.CancelledError:
            if not taking.settle():
                raise
            if client_left(request):
                log.info("client_gone path=%s", log_path(request))
            else:
                log.warning(
                    "client_idle path=%s seconds=%s",
                    log_path(request),
                    self._client_idle,
                )
            upstream.close()
            _abort(request, response)
            return response
        except ClientGone:
            log.info("client_gone path=%s", log_path(request))
            upstream.close()
            return response
        except UpstreamIdle:
            log.warning(
                "upstream_idle path=%s seconds=%s", log_path(request), self._idle
            )
            upstream.close()
            _abort(request, response)
            return response
        except (UpstreamError, aiohttp.ClientError, OSError) as exc:
            log.warning(
                "upstream_aborted path=%s error=%s",
                log_path(request),
                error_reason(exc),
            )
            upstream.close()
            _abort(request, response)
            return response
        finally:
            taking.stop()
        return response


def upload_idle(upstream: UpstreamConfig) -> float:
    """How long an upload may pause: the shorter of the two settings that are on
    (0: forever)."""
    # SECURITY: pool exhaustion: an upload that sends a byte and stalls would hold
    # an app connection (and a pool slot) for ever; client_idle_timeout bounds it
    # by default (60 s, as nginx's client_body_timeout)
    return min(
        (t for t in (upstream.idle_timeout, upstream.client_idle_timeout) if t),
        default=0.0,
    )


def _abort(request: web.Request, response: web.StreamResponse) -> None:
    # Never let a cut-off body look complete: no final chunk, and close the
    # connection so a Content-Length body ends short.
    response.force_close()
    transport = request.transport
    if transport is not None:
        transport.close()


def _client_idle(request: web.Request) -> web.Response:
    log.warning("client_idle method=%s path=%s", request.method, log_path(request))
    response = json_error(408, "request_timeout", "The request body stopped arriving.")
    response.force_close()  # Connection: close; aiohttp drains for lingering_time
    return response


def _unreachable(request: web.Request, exc: BaseException) -> web.Response:
    if client_left(request):
        log.info("client_gone method=%s path=%s", request.method, log_path(request))
    else:
        log.warning(
            "upstream_unreachable method=%s path=%s error=%s",
            request.method,
            log_path(request),
            error_reason(exc),
        )
    return json_error(502, "bad_gateway", "The app could not be reached.")


def error_reason(exc: BaseException) -> str:
    # Never aiohttp's own text: ClientResponseError quotes the URL with its query and
    # every request header, Cookie included.
    if isinstance(exc, UpstreamError):
        return exc.reason
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"{type(exc).__name__}: {exc.os_error}"
    return type(exc).__name__


def log_path(request: web.BaseRequest) -> str:
    # Still percent-encoded (no line breaks to forge log lines) and without the query
    # (where tokens travel).
    return request.raw_path.partition("?")[0]
