"""Streams a request to the upstream app and its answer back, byte for byte."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.config import UpstreamConfig
from gateway.headers import downstream_response_headers

log = logging.getLogger("gateway.proxy")

CONNECTION_LIMIT = 100
# Below the idle timeouts of common app servers (uvicorn 5 s, nginx/aiohttp 75 s), so
# we rarely reuse a connection the upstream is closing at that very moment.
KEEPALIVE_TIMEOUT = 4.0
# aiohttp adds these unless told not to; the upstream gets only what the client sent.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")


def make_upstream_session(upstream: UpstreamConfig) -> aiohttp.ClientSession:
    """The ClientSession UpstreamProxy expects; create it inside the running loop.

    Keep-alive pool, bodies left encoded, no cookie jar (a jar would also rewrite the
    Cookie header), no session timeout: UpstreamProxy times the header wait itself.
    """
    connector = aiohttp.TCPConnector(
        limit=CONNECTION_LIMIT, keepalive_timeout=KEEPALIVE_TIMEOUT
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )


class UpstreamProxy:
    """Forwards requests to one upstream app through a shared ClientSession."""

    def __init__(
        self,
        upstream: UpstreamConfig,
        session: aiohttp.ClientSession,
        is_own_cookie: Callable[[str], bool] = lambda _: False,
    ) -> None:
        base = upstream.url.with_query(None).with_fragment(None)
        self._prefix = str(base).rstrip("/")
        self._timeout = upstream.timeout
        self._session = session
        self._is_own_cookie = is_own_cookie

    async def forward(
        self, request: web.Request, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        """Send ``request`` upstream with ``headers`` and stream the answer back.

        ``upstream.timeout`` bounds the time spent waiting on the upstream for the
        response headers (connecting, taking the body, answering); never the time
        spent waiting on the client's upload, never the response body.
        """
        target = request.raw_path
        if not target.startswith("/") or _UNSAFE_TARGET.search(target):
            # SECURITY: request smuggling via the request target
            log.warning("bad_request_target method=%s", request.method)
            return _error(400, "bad_request", "The request target is not a path.")
        url = URL(self._prefix + target, encoded=True)
        upload = (
            _Upload(request.content, self._timeout) if request.body_exists else None
        )

        try:
            async with asyncio.timeout(self._timeout) as deadline:
                if upload is not None:
                    upload.deadline = deadline
                try:
                    upstream = await self._session.request(
                        request.method,
                        url,
                        headers=headers,
                        data=upload,
                        skip_auto_headers=_SKIP_AUTO_HEADERS,
                        allow_redirects=False,
                    )
                finally:
                    if upload is not None:
                        upload.deadline = None
        except TimeoutError:
            log.warning(
                "upstream_timeout method=%s path=%s", request.method, _path(request)
            )
            return _error(504, "gateway_timeout", "The app did not answer in time.")
        except aiohttp.ClientError as exc:
            return _unreachable(request, exc)
        except ValueError as exc:  # a header aiohttp cannot encode, a bad length
            log.warning(  # the type only: the message may quote a header's value
                "bad_request_header method=%s error=%s",
                request.method,
                type(exc).__name__,
            )
            return _error(400, "bad_request", "The request has a malformed header.")

        try:
            return await self._relay(request, upstream)
        finally:
            upstream.release()

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        if upstream.status < 200:  # an unasked-for 101: there is nothing to switch
            return _unreachable(request, aiohttp.ClientError("informational answer"))
        content = upstream.content
        headers = downstream_response_headers(upstream.headers, self._is_own_cookie)

        if content.is_eof():
            # The whole body came with the headers: answer with one write.
            try:
                body = content.read_nowait()
            except aiohttp.ClientError as exc:
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

        try:
            await response.prepare(request)
        except ValueError as exc:  # a header aiohttp cannot encode
            log.warning(
                "bad_upstream_header path=%s error=%s",
                _path(request),
                type(exc).__name__,
            )
            return _error(502, "bad_gateway", "The app sent a malformed header.")
        except ConnectionError:
            return response  # the client left; nothing to tell it
        if isinstance(response, web.Response):
            return response  # aiohttp writes the body when we return

        try:
            async for chunk in content.iter_any():
                try:
                    await response.write(chunk)
                except ConnectionError:
                    log.info("client_gone path=%s", _path(request))
                    upstream.close()
                    return response
        except (aiohttp.ClientError, OSError) as exc:
            log.warning(
                "upstream_aborted path=%s error=%s", _path(request), _reason(exc)
            )
            upstream.close()
            _abort(request, response)
            return response

        await response.write_eof()
        return response


class _Upload:
    """The client's request body, pausing the upstream deadline while we read it."""

    __slots__ = ("_content", "_loop", "_timeout", "deadline")

    def __init__(self, content: aiohttp.StreamReader, timeout: float) -> None:
        self._content = content
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self.deadline: asyncio.Timeout | None = None

    def __aiter__(self) -> _Upload:
        return self

    async def __anext__(self) -> bytes:
        self._reschedule(None)  # the client's pace is not the upstream's fault

        chunk = await self._content.readany()

        self._reschedule(self._loop.time() + self._timeout)
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def _reschedule(self, when: float | None) -> None:
        deadline = self.deadline
        if deadline is not None and not deadline.expired():
            deadline.reschedule(when)


def _abort(request: web.Request, response: web.StreamResponse) -> None:
    # Never let a cut-off body look complete: no final chunk, and close the
    # connection so a Content-Length body ends short.
    response.force_close()
    transport = request.transport
    if transport is not None:
        transport.close()


def _unreachable(request: web.Request, exc: BaseException) -> web.Response:
    transport = request.transport
    if transport is None or transport.is_closing():
        log.info("client_gone method=%s path=%s", request.method, _path(request))
    else:
        log.warning(
            "upstream_unreachable method=%s path=%s error=%s",
            request.method,
            _path(request),
            _reason(exc),
        )
    return _error(502, "bad_gateway", "The app could not be reached.")


def _reason(exc: BaseException) -> str:
    # Never aiohttp's own text: ClientResponseError quotes the URL with its query and
    # every request header, Cookie included.
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"{type(exc).__name__}: {exc.os_error}"
    return type(exc).__name__


def _path(request: web.Request) -> str:
    # Still percent-encoded (no line breaks to forge log lines) and without the query
    # (where tokens travel).
    return request.raw_path.partition("?")[0]


def _error(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)
