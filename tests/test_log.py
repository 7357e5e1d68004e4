"""Log formats: JSON lines, auth events, and an access log that hides secrets."""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.log import (
    UPSTREAM_ROUTE,
    USER_KEY,
    AccessLogger,
    JsonFormatter,
    access_log,
    auth_event,
)


def _matched(route_name: str) -> web.UrlMappingMatchInfo:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    route = app.router.add_get("/{tail:.*}", handler, name=route_name)
    return web.UrlMappingMatchInfo({}, route)


def test_auth_events_have_a_fixed_vocabulary() -> None:
    with pytest.raises(AssertionError):
        auth_event("logged_in_somehow")


def test_auth_event_as_json(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.auth")

    auth_event("login_ok", user="alice", id="t2_abc")

    line = json.loads(JsonFormatter().format(caplog.records[-1]))
    assert line["event"] == "login_ok"
    assert line["user"] == "alice"
    assert line["logger"] == "gateway.auth"


def test_auth_event_text_quotes_odd_values(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.auth")

    auth_event("login_failed", reason="a b\nforged_line")

    assert caplog.records[-1].getMessage() == 'login_failed reason="a b\\nforged_line"'


@pytest.mark.parametrize(
    ("target", "route", "logged"),
    [
        (
            "/oauth2/callback?code=SECRETCODE&state=SECRETSTATE",
            "callback",
            "/oauth2/callback",
        ),
        ("/%6fauth2/callback?code=SECRETCODE", "callback", "/%6fauth2/callback"),
        ("/auth/cb?code=SECRETCODE", "callback", "/auth/cb"),
        ("/oauth2/start?rd=/x", "start", "/oauth2/start"),
        ("/app/page?q=1", UPSTREAM_ROUTE, "/app/page?q=1"),
    ],
)
def test_access_log_never_shows_the_query_of_gateway_endpoints(
    caplog: pytest.LogCaptureFixture, target: str, route: str, logged: str
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    request = make_mocked_request("GET", target)
    request._match_info = _matched(route)  # as aiohttp's router would set it
    request[USER_KEY] = "alice"
    response = web.Response(status=302)

    AccessLogger(access_log, "").log(request, response, 0.0123)

    record = caplog.records[-1]
    assert record.access["path"] == logged  # type: ignore[attr-defined]
    assert record.access["user"] == "alice"  # type: ignore[attr-defined]
    assert "SECRET" not in record.getMessage()
    assert "SECRET" not in JsonFormatter().format(record)


def test_bad_request_traceback_becomes_one_line_without_the_bytes() -> None:
    from aiohttp.http_exceptions import BadHttpMessage

    from gateway.log import BadRequestFilter

    try:
        raise BadHttpMessage("Cookie: _reddit_gateway=SECRETVALUE")
    except BadHttpMessage:
        import sys

        record = logging.LogRecord(
            "aiohttp.server",
            logging.ERROR,
            "x",
            1,
            "Error handling request",
            (),
            sys.exc_info(),
        )

    assert BadRequestFilter().filter(record)
    assert record.exc_info is None
    assert record.levelno == logging.INFO
    assert "SECRETVALUE" not in record.getMessage()
