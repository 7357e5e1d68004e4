"""Relays a signed-in websocket to the upstream app and back, message by message.

The gateway completes the upstream's handshake first, then the client's, then
copies messages both ways. It never tunnels raw bytes: an upstream that refuses
the upgrade is answered as plain HTTP (status, headers, body) and nothing else
crosses. What passes, and what each hop decides for itself:

- text and binary messages, unchanged (text is not decoded: the ends judge
  UTF-8); a fragmented message crosses as one frame; permessage-deflate is per
  hop, asked of the app only if the client offered it, given to the client only
  if the app accepted it;
- pings and pongs with their payloads; the gateway answers none itself, so a
  client's ping gets the app's pong and the other way round;
- subprotocols: the app is offered exactly the client's list, the client gets
  the app's choice;
- a Close's code and reason, and the other end's reply code (not its reason:
  aiohttp keeps only the code). A Close without a code goes on as 1000. An end
  that vanishes without a Close is told to the other as 1001 (going away) to the
  app, 1014 (bad gateway) to the client;
- messages up to upstream.websocket_max_message once decompressed (a bigger one
  closes the websocket with 1009), each held whole while it crosses;
- no heartbeat and no receive timeout: an idle websocket lives until an end
  closes it (upstream.timeout bounds the handshake only); apps' own pings cross.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.client_middlewares import ClientHandlerType
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config import UpstreamConfig
from gateway.headers import downstream_response_headers
from gateway.log import BEFORE_ANSWER, STILL_ALLOWED, UPSTREAM_SECONDS
from gateway.pages import json_error
from gateway.proxy import error_reason, log_path, refuse_target
from gateway.redirect_rewrite import RedirectRewriter
from gateway.upstream_session import make_connector

log = logging.getLogger("gateway.proxy")

# Seconds to wait for the other end's reply to a Close before dropping the line.
CLOSE_TIMEOUT = 10.0
# How often an open websocket's session is checked again (sign-out, revocation,
# expiry, the access rules); one that has ended closes the websocket with 1008.
SESSION_CHECK_EVERY = 30.0
_NO_IDLE_LIMIT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT)
# Each hop has its own handshake: ws_connect makes a fresh key, version 13, and
# offers the protocols and extensions we pass it; the upstream's answers to them
# are for the gateway, and the client gets its own from aiohttp's server.
_HANDSHAKE_HEADERS = (
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Accept",
)
_NOT_ANSWERED_ON = frozenset(h.lower() for h in _HANDSHAKE_HEADERS) | {"content-length"}
_FORWARDED = frozenset(
    {WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING, WSMsgType.PONG}
)
# aiohttp adds these unless told not to; the upstream gets only what the client sent.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding")
# origin-form only, as for plain HTTP: no control characters, spaces, non-ASCII,
# or fragment


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    """True for a GET asking to switch to the websocket protocol."""
    if request.method != "GET" or "Upgrade" not in request.headers:
        return False
    upgrade = _tokens(request.headers.getall("Upgrade", ()))
    connection = _tokens(request.headers.getall("Connection", ()))
    return "websocket" in upgrade and "upgrade" in connection


def make_websocket_session(upstream: UpstreamConfig) -> aiohttp.ClientSession:
    """The ClientSession WebSocketRelay expects; create it inside the running loop.

    Its own pool, without a limit: an open websocket holds its connection for as
    long as it lives, and must not take a place in the HTTP pool. No cookie jar, no
    timeouts of its own, and an upstream answer other than 101 is handed to the
    relay whole instead of being followed or dropped.
    """
    return aiohttp.ClientSession(
        connector=make_connector(upstream, limit=0),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        trust_env=False,
        middlewares=(_stop_at_refusal,),
    )


class WebSocketRelay:
    """Connects upgrade requests to the upstream app and relays until either closes."""

    def __init__(
        self,
        upstream: UpstreamConfig,
        session: aiohttp.ClientSession,
        *,
        public_url: URL,
        relay_answer: AnswerRelay,
        is_own_cookie: Callable[[str], bool] = lambda _: False,
    ) -> None:
        """``relay_answer`` passes on an upstream answer that is not an upgrade
        (the HTTP proxy's own, so refusals stream as any answer does)."""
        base = upstream.url.with_query(None).with_fragment(None)
        self._prefix = str(base).rstrip("/")
        self._timeout = upstream.timeout
        self._host = None if upstream.pass_host_header else upstream.url.raw_authority
        self._origin = upstream.websocket_origin
        self._max_message = upstream.websocket_max_message
        self._public_url = public_url
        self._session = session
        self._relay_answer = relay_answer
        self._is_own_cookie = is_own_cookie
        self._rewrite_link: Callable[[str, str], str] | None = None
        if upstream.rewrite_redirects:
            self._rewrite_link = RedirectRewriter(base, public_url).rewrite
        self._open = 0
        self._clients: set[_ClientSocket] = set()

    @property
    def open_count(self) -> int:
        """Websockets connected to the upstream right now."""
        return self._open

    async def close_all(self, _app: web.Application) -> None:
        """For on_shutdown: close every client's websocket with 1001 (going away).

        Each relay then closes its upstream side the same way, so shutdown need not
        wait out its timeout for websockets that would never end by themselves.
        """
        closing = [c.close(code=WSCloseCode.GOING_AWAY) for c in self._clients]
        await asyncio.gather(*closing, return_exceptions=True)

    async def relay(
        self, request: web.Request, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        """Open the upstream websocket, then the client's, and relay until one closes.

        ``headers`` are the upstream request headers built for plain HTTP (identity
        set, spoofs and gateway cookies removed); they are adjusted here in place.
        """
        refused = refuse_target(request)
        if refused is not None:
            return refused
        offered = _offered_protocols(request)
        if not web.WebSocketResponse(protocols=offered).can_prepare(request).ok:
            return json_error(
                400, "bad_request", "The request is not a valid websocket handshake."
            )
        if not self._upstream_headers(request, headers):
            log.warning("websocket_foreign_origin path=%s", log_path(request))
            return json_error(
                403, "forbidden", "Websockets are only accepted from this site's pages."
            )

        app_or_answer = await self._connect(request, headers, offered)
        if isinstance(app_or_answer, web.StreamResponse):
            return app_or_answer
        app, answer_headers = app_or_answer

        self._open += 1
        try:
            return await self._relay(request, app, answer_headers)
        finally:
            self._open -= 1
            await app.close(code=WSCloseCode.GOING_AWAY)  # a no-op once closed

    def _upstream_headers(
        self, request: web.Request, headers: CIMultiDict[str]
    ) -> bool:
        for name in _HANDSHAKE_HEADERS:
            headers.popall(name, None)
        if self._host is not None:
            headers["Host"] = self._host
        elif "Host" in request.headers:
            headers["Host"] = request.headers["Host"]

        origin = request.headers.get("Origin")
        if origin is not None and not _same_origin(origin, self._public_url):
            # SECURITY: cross-site websocket hijacking: a page of another origin
            # (a sibling subdomain included) may not use the user's session.
            # Clients that send no Origin are not browsers, and pass.
            return False
        if self._origin:
            headers["Origin"] = self._origin
        return True

    async def _connect(
        self, request: web.Request, headers: CIMultiDict[str], offered: tuple[str, ...]
    ) -> tuple[_AppSocket, CIMultiDict[str]] | web.StreamResponse:
        extensions = ",".join(request.headers.getall("Sec-WebSocket-Extensions", ()))
        compress = 15 if "permessage-deflate" in extensions.lower() else 0
        url = URL(self._prefix + request.raw_path, encoded=True)
        answer = _Answer()
        token = _ANSWER.set(answer)
        sent_at = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                app = await self._session.ws_connect(
                    url,
                    headers=headers,
                    protocols=offered,
                    compress=compress,
                    autoclose=False,
                    autoping=False,
                    max_msg_size=self._max_message,
                    decode_text=False,
                    timeout=_NO_IDLE_LIMIT,
                )
            request[UPSTREAM_SECONDS] = time.monotonic() - sent_at
        except _Refused as refused:
            request[UPSTREAM_SECONDS] = time.monotonic() - sent_at
            return await self._pass_refusal(request, refused.answer)
        except TimeoutError:
            log.warning("upstream_timeout method=GET path=%s", log_path(request))
            return json_error(504, "gateway_timeout", "The app did not answer in time.")
        except aiohttp.WSServerHandshakeError as exc:  # a 101 that is not websocket
            log.warning(
                "websocket_bad_handshake path=%s error=%s",
                log_path(request),
                exc.message,
            )
            return _bad_gateway()
        except aiohttp.ClientError as exc:
            log.warning(
                "upstream_unreachable method=GET path=%s error=%s",
                log_path(request),
                error_reason(exc),
            )
            return _bad_gateway()
        except ValueError as exc:  # a header aiohttp cannot encode
            log.warning("bad_request_header method=GET error=%s", type(exc).__name__)
            return json_error(400, "bad_request", "The request has a malformed header.")
        finally:
            _ANSWER.reset(token)

        passed: CIMultiDict[str] = CIMultiDict()
        if answer.headers is not None:
            for name, value in downstream_response_headers(
                answer.headers, self._is_own_cookie
            ).items():
                if name.lower() not in _NOT_ANSWERED_ON:
                    passed.add(name, value)
        return app, passed

    async def _relay(
        self,
        request: web.Request,
        app: _AppSocket,
        answer_headers: CIMultiDict[str],
    ) -> web.StreamResponse:
        client: _ClientSocket = web.WebSocketResponse(
            protocols=(app.protocol,) if app.protocol else (),
            compress=bool(app.compress),
            autoclose=False,
            autoping=False,
            max_msg_size=self._max_message,
            decode_text=False,
            timeout=CLOSE_TIMEOUT,
        )
        client.headers.extend(answer_headers)
        before = request.get(BEFORE_ANSWER)
        if before is not None:
            before(client)
        try:
            await client.prepare(request)
        except ConnectionError:  # the client left while the app answered
            return client
        except ValueError as exc:  # a header from the app that aiohttp cannot encode
            log.warning(
                "bad_upstream_header path=%s error=%s",
                log_path(request),
                type(exc).__name__,
            )
            return _bad_gateway()

        self._clients.add(client)
        to_app = asyncio.create_task(_pump(client, app, "client", "app"))
        to_client = asyncio.create_task(_pump(app, client, "app", "client"))
        still_allowed = request.get(STILL_ALLOWED)
        watch = asyncio.create_task(_watch_session(client, still_allowed))
        try:
            await asyncio.wait((to_app, to_client), return_when=asyncio.FIRST_COMPLETED)
            if to_app.done():
                await _client_ended(client, app, to_app.result(), to_client)
            else:
                await _app_ended(client, app, to_client.result(), to_app)
        finally:
            # Both are closed by now, unless this handler itself was cancelled.
            self._clients.discard(client)
            to_app.cancel()
            to_client.cancel()
            watch.cancel()
            await asyncio.gather(to_app, to_client, watch, return_exceptions=True)
            await client.close(code=WSCloseCode.GOING_AWAY)
        return client

    async def _pass_refusal(
        self, request: web.Request, answer: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        """The upstream's non-101 answer, as plain HTTP: status, headers, body."""
        log.info(
            "websocket_refused status=%s path=%s", answer.status, log_path(request)
        )
        try:
            return await self._relay_answer(request, answer)
        finally:
            answer.release()


AnswerRelay: TypeAlias = Callable[
    [web.Request, aiohttp.ClientResponse], Awaitable[web.StreamResponse]
]
_AppSocket: TypeAlias = "aiohttp.ClientWebSocketResponse[Literal[False]]"
_ClientSocket: TypeAlias = "web.WebSocketResponse[Literal[False]]"
_Side = Literal["client", "app"]


@dataclass(frozen=True, slots=True)
class _Ending:
    """Why one direction of a relay stopped."""

    lost: _Side | None  # the end that vanished; None when the source sent a Close
    code: int = 0  # the Close's code, 0 when it carried none
    reason: str = ""


async def _watch_session(
    client: _ClientSocket, still_allowed: Callable[[], Awaitable[bool]] | None
) -> None:
    """Close the client's side once its session has ended; the relay follows."""
    if still_allowed is None:
        return
    while True:
        await asyncio.sleep(SESSION_CHECK_EVERY)
        if not await still_allowed():
            # SECURITY: a websocket outliving sign-out, revocation or a refusal.
            log.info("websocket_session_ended")
            await client.close(
                code=WSCloseCode.POLICY_VIOLATION, message=b"session ended"
            )
            return


async def _pump(
    source: _ClientSocket | _AppSocket,
    sink: _ClientSocket | _AppSocket,
    source_side: _Side,
    sink_side: _Side,
) -> _Ending:
    """Copy messages from source to sink until the source closes or an end is lost."""
    while True:
        message = await source.receive()
        kind = message.type
        if kind is WSMsgType.CLOSE:
            return _Ending(None, message.data, message.extra or "")
        if kind not in _FORWARDED:  # CLOSED or ERROR: gone without a Close
            return _Ending(source_side)
        try:
            await sink.send_frame(message.data, kind)
        except ConnectionError:
            return _Ending(sink_side)


async def _client_ended(
    client: _ClientSocket,
    app: _AppSocket,
    ending: _Ending,
    to_client: asyncio.Task[_Ending],
) -> None:
    if ending.lost is None:
        # The client sent a Close: the app gets it, and the client gets the app's
        # reply. close() stops to_client's receive and reads the reply itself.
        await app.close(code=_sendable(ending.code), message=ending.reason.encode())
        await _stop(to_client)
        await client.close(code=_reply(app.close_code, ending.code))
        return

    await _stop(to_client)
    if ending.lost == "client":
        await app.close(code=WSCloseCode.GOING_AWAY)
    else:
        await client.close(code=WSCloseCode.BAD_GATEWAY)


async def _app_ended(
    client: _ClientSocket,
    app: _AppSocket,
    ending: _Ending,
    to_app: asyncio.Task[_Ending],
) -> None:
    await _stop(to_app)  # so client.close() reads the client's reply itself
    if ending.lost is None:
        # The app sent a Close: the client gets it, and the app the client's reply.
        await client.close(code=_sendable(ending.code), message=ending.reason.encode())
        await app.close(code=_reply(client.close_code, ending.code))
    elif ending.lost == "app":
        await client.close(code=WSCloseCode.BAD_GATEWAY)
    else:
        await app.close(code=WSCloseCode.GOING_AWAY)


async def _stop(task: asyncio.Task[_Ending]) -> None:
    task.cancel()
    await asyncio.wait((task,))


def _sendable(code: int) -> int:
    # A Close without a code (aiohttp reads it as 0) cannot be sent as such.
    return code or WSCloseCode.OK


def _reply(code: int | None, sent: int) -> int:
    # The other end's reply, unless it sent none (a timeout or a lost line: 1006).
    if code and code != WSCloseCode.ABNORMAL_CLOSURE:
        return code
    return _sendable(sent)


@dataclass(slots=True)
class _Answer:
    """The upstream's 101 headers, caught on their way to ws_connect."""

    headers: CIMultiDictProxy[str] | None = None


_ANSWER: contextvars.ContextVar[_Answer] = contextvars.ContextVar("websocket_answer")


class _Refused(Exception):
    """The upstream answered an upgrade with something other than 101."""

    def __init__(self, answer: aiohttp.ClientResponse) -> None:
        super().__init__(answer.status)
        self.answer = answer


async def _stop_at_refusal(
    request: aiohttp.ClientRequest, handler: ClientHandlerType
) -> aiohttp.ClientResponse:
    """Client middleware: hand a refusal to the relay unread, keep a 101's headers.

    ws_connect would close a refusal unread (its body lost) and follow a redirect;
    raised from here, the answer reaches the relay open, its body still to stream.
    """
    answer = await handler(request)
    if answer.status != 101:
        # SECURITY: identity header leak via upstream redirect: a 3xx is passed
        # to the client, never followed with X-Reddit-User to where it points.
        raise _Refused(answer)
    slot = _ANSWER.get(None)
    if slot is not None:
        slot.headers = answer.headers
    return answer


def _offered_protocols(request: web.BaseRequest) -> tuple[str, ...]:
    values = request.headers.getall("Sec-WebSocket-Protocol", ())
    return tuple(dict.fromkeys(p for v in values for p in _split(v)))


def _tokens(values: list[str] | tuple[()]) -> frozenset[str]:
    return frozenset(token.lower() for value in values for token in _split(value))


def _split(value: str) -> list[str]:
    return [part for item in value.split(",") if (part := item.strip())]


def _same_origin(origin: str, public_url: URL) -> bool:
    try:
        url = URL(origin)
        return (url.scheme, url.host, url.port) == (
            public_url.scheme,
            public_url.host,
            public_url.port,
        ) and url.raw_path in ("", "/")
    except (ValueError, TypeError):
        return False


def _bad_gateway() -> web.Response:
    return json_error(502, "bad_gateway", "The app could not be reached.")
