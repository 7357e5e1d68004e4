"""Named loggers, the JSON formatter, auth events and the access-log line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from time import time as _wall_clock
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

access_log = logging.getLogger("gateway.access")
auth_log = logging.getLogger("gateway.auth")
proxy_log = logging.getLogger("gateway.proxy")

# The fixed vocabulary of auth events; dashboards and alerts key on these.
AUTH_EVENTS = frozenset(
    {
        "login_started",
        "login_ok",
        "login_failed",
        "denied",
        "signed_out",
        "spoofed_header",
        "refresh_ok",
        "refresh_failed",
        "recheck_ok",
        "recheck_failed",
    }
)

USER_KEY = web.RequestKey("gateway_user", str)
# Seconds from sending a request upstream to the upstream's response headers.
UPSTREAM_SECONDS = web.RequestKey("gateway_upstream_seconds", float)
UPSTREAM_ROUTE = "upstream"  # the name of the catch-all route to the app
UPSTREAM_KEY = web.RequestKey("gateway_upstream", bool)  # routed to the app
# On the upstream route: what to add to the answer before it goes out (a renewed
# session cookie). Whoever prepares a response there calls it first.
AnswerHook = Callable[[web.StreamResponse], None]
BEFORE_ANSWER: web.RequestKey[AnswerHook | None] = web.RequestKey(
    "gateway_before_answer"
)
# For a long-lived request (a websocket): is its session still good to go on?
STILL_ALLOWED: web.RequestKey[Callable[[], Awaitable[bool]]] = web.RequestKey(
    "gateway_still_allowed"
)


def auth_event(event: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one auth event; fields must never hold tokens, codes or cookies."""
    assert event in AUTH_EVENTS, event
    if not auth_log.isEnabledFor(level):
        return
    details = " ".join(f"{key}={_quote(value)}" for key, value in fields.items())
    auth_log.log(
        level,
        "%s %s",
        event,
        details,
        extra={"event": event, "fields": fields},
    )


def _quote(value: object) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "_-./:@" for c in text):
        return text
    return json.dumps(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and event fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        event = getattr(record, "event", None)
        if event is not None:
            entry["event"] = event
            fields = getattr(record, "fields", {})
            entry.update({k: v if _is_plain(v) else str(v) for k, v in fields.items()})
        else:
            entry["message"] = record.getMessage()
        access = getattr(record, "access", None)
        if access is not None:
            entry.update(access)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def _is_plain(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


class TextFormatter(logging.Formatter):
    """ "time LEVEL logger message", the time's seconds formatted once a second."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"


class LogOutput(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, a line at a time; or, while a worker's loop flushes it every
    FLUSH_EVERY seconds (``batched``), access-log lines in batches: one write for
    many requests instead of one each. Any other line is written at once, with
    the access lines before it."""

    def __init__(self, file: Any = None) -> None:
        """``file``: where the lines go, sys.stderr when None."""
        stream = sys.stderr if file is None else file
        self._own: io.TextIOWrapper | None = None
        try:
            raw = io.FileIO(stream.fileno(), "w", closefd=False)
        except (AttributeError, OSError, ValueError):
            pass  # stderr is no file (replaced by a test harness): write to it
        else:
            stream = self._own = io.TextIOWrapper(
                io.BufferedWriter(raw, 65536),
                encoding="utf-8",
                errors="backslashreplace",
                write_through=False,
            )
        super().__init__(stream)
        self.batched = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            if not self.batched or record.name != "gateway.access":
                self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


FLUSH_EVERY = 0.25  # seconds an access-log line may wait in a worker's batch


def flush_logs() -> None:
    """Write out every line a handler still holds."""
    for handler in logging.getLogger().handlers:
        handler.flush()


async def flush_logs_now_and_then() -> None:
    """A worker's task: batch its log lines, written every FLUSH_EVERY seconds."""
    outputs = [h for h in logging.getLogger().handlers if isinstance(h, LogOutput)]
    for output in outputs:
        output.batched = True
    try:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            for output in outputs:
                output.flush()
    finally:
        for output in outputs:
            output.batched = False
            output.flush()


def setup_logging(level: str, fmt: str) -> None:
    """Send every gateway log line to stderr in the chosen format."""
    # Fields no format here uses, each costly on every record (the caller's frame,
    # the thread, the process): the documented way to skip them.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = LogOutput()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    # The level is the handler's too: metrics lower a logger's level to count
    # events that this output must still leave out.
    handler.setLevel(level.upper())
    handler.addFilter(BadRequestFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("gateway").setLevel(level.upper())


class AccessLogger(AbstractAccessLogger):
    """One line per request: client, user, method, path, status, bytes, time, and
    the time the upstream took to answer with its headers ("-": not asked).

    The query string of the gateway's own endpoints is never logged: it carries
    codes and state. Which endpoint it was is judged by the route aiohttp chose,
    never by the raw path (which /%6fauth2/callback would fool).
    """

    def log(
        self, request: web.BaseRequest, response: web.StreamResponse, time: float
    ) -> None:
        path = request.raw_path
        if not _is_upstream(request):
            path = path.partition("?")[0]
        user, upstream = "-", None
        if isinstance(request, web.Request):
            user = request.get(USER_KEY, "-")
            upstream = request.get(UPSTREAM_SECONDS)
        upstream_ms = None if upstream is None else round(upstream * 1000, 2)
        fields = {
            "client": request.remote or "-",
            "user": user,
            "method": request.method,
            "path": path,
            "status": response.status,
            "bytes": response.body_length,
            "duration_ms": round(time * 1000, 2),
            "upstream_ms": upstream_ms,
        }
        args = (
            fields["client"],
            user,
            request.method,
            path,
            response.status,
            response.body_length,
            time * 1000,
            "-" if upstream_ms is None else f"{upstream_ms:.2f}ms",
        )
        output = _sole_output(self.logger)
        if output is None:
            self.logger.info(_ACCESS_LINE, *args, extra={"access": fields})
            return
        output.handle(_access_record(self.logger.name, args, fields))

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


_ACCESS_LINE = '%s %s "%s %s" %s %s %.2fms upstream=%s'


def _sole_output(logger: logging.Logger) -> LogOutput | None:
    """The gateway's own output, if the access log goes there and nowhere else (no
    test harness, no metrics, no handler of the operator's): its lines can then
    skip most of logging's machinery, a tenth of a request's cost."""
    if logger.filters or logger.manager.disable >= logging.INFO:
        return None
    node = logger
    while node.parent is not None:  # every logger up to the root passes it on
        if node.handlers or not node.propagate:
            return None
        node = node.parent
    handlers = node.handlers
    if len(handlers) != 1 or type(handlers[0]) is not LogOutput:
        return None
    output = handlers[0]
    return output if output.level <= logging.INFO else None


def _access_record(
    name: str, args: tuple[object, ...], fields: dict[str, object]
) -> logging.LogRecord:
    """What logger.info would make of an access line, without the fields no
    formatter here reads (the caller's frame, thread, process)."""
    created = _wall_clock()
    record = logging.LogRecord.__new__(logging.LogRecord)
    record.__dict__.update(
        name=name,
        msg=_ACCESS_LINE,
        args=args,
        levelname="INFO",
        levelno=logging.INFO,
        created=created,
        msecs=int((created - int(created)) * 1000) + 0.0,
        exc_info=None,
        exc_text=None,
        stack_info=None,
        access=fields,
    )
    return record


def _is_upstream(request: web.BaseRequest) -> bool:
    # Set by the auth middleware; a request that never got that far (a
    # malformed one, say) counts as the gateway's own.
    return request.get(UPSTREAM_KEY) is True


class BadRequestFilter(logging.Filter):
    """aiohttp logs a malformed request as an error with a traceback that quotes
    the offending bytes (cookie values included); make it one short line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            # SECURITY: secret leak into logs through aiohttp's parse errors.
            record.msg = "bad_request error=%s status=%s"
            record.args = (type(error).__name__, error.code)
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.INFO
            record.levelname = "INFO"
        return True


def access_log_options() -> dict[str, Any]:
    """What an aiohttp runner needs to write the gateway's access log."""
    return {"access_log": access_log, "access_log_class": AccessLogger}
