"""Log formats: JSON lines, auth events, and an access log that hides secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
from collections.abc import Iterator

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
    LogOutput,
    TextFormatter,
    access_log,
    auth_event,
    flush_logs_now_and_then,
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


def test_text_time_is_the_standard_formatters() -> None:
    record = logging.LogRecord("gateway", logging.INFO, "x", 1, "hello", (), None)
    standard = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")

    assert TextFormatter().format(record) == standard.format(record)
    record.created += 1.5  # the next second: formatted anew, not from the cache
    record.msecs = 500.0
    assert TextFormatter().format(record) == standard.format(record)


@pytest.fixture
def stderr_file(tmp_path: pathlib.Path) -> Iterator[tuple[pathlib.Path, LogOutput]]:
    """A file standing in for stderr, and a LogOutput writing to it."""
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        output = LogOutput(stream)
        output.setFormatter(logging.Formatter("%(message)s"))
        yield path, output


def record(name: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(name, level, "x", 1, f"{name} line", (), None)


def test_log_lines_are_written_one_by_one_outside_a_worker(
    stderr_file: tuple[pathlib.Path, LogOutput],
) -> None:
    path, output = stderr_file

    output.emit(record("gateway.access"))

    assert path.read_text() == "gateway.access line\n"


async def test_a_worker_batches_access_lines_but_writes_others_at_once(
    stderr_file: tuple[pathlib.Path, LogOutput], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, output = stderr_file
    monkeypatch.setattr(logging.getLogger(), "handlers", [output])
    flusher = asyncio.create_task(flush_logs_now_and_then())
    await asyncio.sleep(0)

    output.emit(record("gateway.access"))
    assert path.read_text() == ""  # waits for the batch

    output.emit(record("gateway.auth"))  # an event: written now, in order
    assert path.read_text() == "gateway.access line\ngateway.auth line\n"

    output.emit(record("gateway.access"))
    await asyncio.sleep(0.4)  # FLUSH_EVERY is 0.25 s
    assert path.read_text().count("gateway.access line") == 2

    output.emit(record("gateway.access"))
    flusher.cancel()
    await asyncio.gather(flusher, return_exceptions=True)
    assert path.read_text().count("gateway.access line") == 3  # at stop
    assert not output.batched


@pytest.fixture
def access_at_info() -> Iterator[None]:
    """The access log at INFO, then back; by setLevel both ways, since loggers
    cache what they let through and a bare attribute leaves that cache stale."""
    before = access_log.level
    access_log.setLevel(logging.INFO)
    yield
    access_log.setLevel(before)


@pytest.mark.parametrize("formatter", [TextFormatter, JsonFormatter])
def test_an_access_line_is_the_same_by_the_short_way_and_the_long(
    stderr_file: tuple[pathlib.Path, LogOutput],
    monkeypatch: pytest.MonkeyPatch,
    access_at_info: None,
    formatter: type[logging.Formatter],
) -> None:
    # Written straight to the gateway's own output when nothing else listens,
    # through logging's whole machinery when something does: the same line.
    path, output = stderr_file
    output.setFormatter(formatter())
    monkeypatch.setattr(logging.getLogger(), "handlers", [output])
    request = make_mocked_request("GET", "/app?q=1", headers={"Host": "h"})
    request[UPSTREAM_KEY] = True
    request[USER_KEY] = "alice"
    request[UPSTREAM_SECONDS] = 0.0042
    response = web.Response(body=b"hello")
    logger = AccessLogger(access_log, "")

    long_way: list[object] = []
    info = access_log.info
    monkeypatch.setattr(
        access_log, "info", lambda *a, **k: long_way.append(info(*a, **k))
    )
    logger.log(request, response, 0.0123)  # nothing else listens: the short way
    assert long_way == []
    listener = logging.NullHandler()
    access_log.addHandler(listener)
    try:
        logger.log(request, response, 0.0123)
    finally:
        access_log.removeHandler(listener)
    assert len(long_way) == 1

    short, long = path.read_text().splitlines()
    if formatter is JsonFormatter:
        short_line, long_line = json.loads(short), json.loads(long)
        assert short_line.pop("time") and long_line.pop("time")
        assert short_line == long_line
        assert short_line["user"] == "alice"
        assert short_line["upstream_ms"] == 4.2
    else:
        # "YYYY-MM-DD HH:MM:SS,mmm INFO gateway.access ..." from the level on
        assert short.split(" ", 2)[2] == long.split(" ", 2)[2]
        assert short.split(" ", 2)[2] == (
            'INFO gateway.access - alice "GET /app?q=1" 200 0 12.30ms upstream=4.20ms'
        )
