"""Log formats: JSON lines, auth events, and an access log that hides secrets."""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.log import (
    UPSTREAM_KEY,
    UPSTREAM_ROUTE,
    UPSTREAM_SECONDS,
    USER_KEY,
    AccessLogger,
    JsonFormatter,
    access_log,
    auth_event,
)


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
    if route == UPSTREAM_ROUTE:
        request[UPSTREAM_KEY] = True  # as the auth middleware marks it
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


@pytest.mark.parametrize(
    ("upstream", "text", "field"),
    [(0.01234, "upstream=12.34ms", 12.34), (None, "upstream=-", None)],
    ids=["proxied", "not-proxied"],
)
def test_access_line_has_the_time_to_the_upstream_headers(
    caplog: pytest.LogCaptureFixture,
    upstream: float | None,
    text: str,
    field: float | None,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    request = make_mocked_request("GET", "/app/page")
    request[UPSTREAM_KEY] = True
    if upstream is not None:
        request[UPSTREAM_SECONDS] = upstream

    AccessLogger(access_log, "").log(request, web.Response(), 0.02)

    record = caplog.records[-1]
    assert record.getMessage().endswith(f" 20.00ms {text}")
    assert json.loads(JsonFormatter().format(record))["upstream_ms"] == field
