"""Prometheus metrics, counted from the gateway's own log records and reddit calls,
served on a listener of their own (metrics.listen).

With several workers, each serves its own counts on a private Unix socket and the
supervisor serves their sum at metrics.listen (see `serve_summed`).
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder, start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families

from gateway.log import access_log, auth_log

log = logging.getLogger("gateway")

# Methods with a label of their own; any other is counted as "OTHER".
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)
_EVENT_LOGGERS = (access_log, auth_log)
UNIX_PREFIX = "unix:"  # a listen address of a worker's private socket
_RATELIMIT = "reddit_gateway_reddit_ratelimit_remaining"
_WORKER_TIMEOUT = 5.0  # seconds a scrape waits for one worker's counts


class Metrics:
    """The gateway's metrics in a registry of their own, so that apps never share.

    Requests and auth events are counted from the records of the access and auth
    loggers (see `attach`), so the code that answers requests knows nothing of
    metrics. Those loggers are the process's: run one gateway with metrics per
    process, or each counts the others' records too.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._requests = Counter(
            "reddit_gateway_requests",
            "Requests answered, by method and status class (2xx, 4xx, ...).",
            ["method", "status"],
            registry=registry,
        )
        self._upstream = Histogram(
            "reddit_gateway_upstream_response_seconds",
            "Time from sending a request to the upstream to its response headers.",
            registry=registry,
        )
        self._refreshes = Counter(
            "reddit_gateway_token_refreshes",
            "Renewals of a session's reddit token, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self._rechecks = Counter(
            "reddit_gateway_rechecks",
            "Re-reads of what the access rules judge, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self._refusals = Counter(
            "reddit_gateway_refusals",
            "Signed-in people refused, by the config key of the rule that refused.",
            ["rule"],
            registry=registry,
        )
        self._spoofed = Counter(
            "reddit_gateway_spoofed_headers",
            "Identity headers that clients sent and the gateway removed.",
            registry=registry,
        )
        self._reddit_calls = Counter(
            "reddit_gateway_reddit_calls",
            "Calls to reddit by endpoint and status (error: no answer).",
            ["endpoint", "status"],
            registry=registry,
        )
        # Children looked up once: labels() takes a lock and builds tuples.
        self._request_counts: dict[tuple[str, int], Counter] = {}
        self._signed_in = 0
        self._failed_logins = 0
        self._denied_logins = 0
        self._ratelimit_remaining: Callable[[], float | None] = lambda: None
        self._open_websockets: Callable[[], int] = lambda: 0
        self._counter = _RecordCounter(self)
        self._lowered: list[tuple[logging.Logger, int]] = []
        registry.register(self)  # for collect(): what is read at scrape time

    def install(
        self,
        app: web.Application,
        listen: str,
        *,
        ratelimit_remaining: Callable[[], float | None],
        open_websockets: Callable[[], int],
    ) -> None:
        """Count the app's records and serve /metrics at ``listen`` (host:port,
        or unix:PATH for a worker's private socket) while it runs; the two gauges
        are read from the callables at each scrape."""
        self._ratelimit_remaining = ratelimit_remaining
        self._open_websockets = open_websockets
        runner = web.AppRunner(self._metrics_app(), access_log=None)

        async def start(_app: web.Application) -> None:
            self.attach()
            await runner.setup()
            site: web.BaseSite
            if listen.startswith(UNIX_PREFIX):
                site = web.UnixSite(runner, listen.removeprefix(UNIX_PREFIX))
            else:
                host, port = _host_port(listen)
                site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as exc:
                await stop(_app)
                message = f"metrics.listen {listen}: {exc.strerror}"
                raise OSError(exc.errno, message) from exc
            if not listen.startswith(UNIX_PREFIX):
                log.info("metrics on http://%s/metrics", listen)

        async def stop(_app: web.Application) -> None:
            await runner.cleanup()
            self.detach()

        app[METRICS] = self
        app.on_startup.append(start)
        app.on_cleanup.append(stop)

    def attach(self) -> None:
        """Count the access and auth loggers' records from now on.

        Metrics must not depend on log.level: a logger that would drop an event
        is lowered to INFO, and the gateway's own output filters by its handler's
        level (setup_logging), so what it prints stays the same.
        """
        for logger in _EVENT_LOGGERS:
            logger.addHandler(self._counter)
            if not logger.isEnabledFor(logging.INFO):
                self._lowered.append((logger, logger.level))
                logger.setLevel(logging.INFO)

    def detach(self) -> None:
        for logger in _EVENT_LOGGERS:
            logger.removeHandler(self._counter)
        for logger, level in self._lowered:
            logger.setLevel(level)
        self._lowered.clear()

    def count_request(self, access: Mapping[str, Any]) -> None:
        """One access-log record: its method, status and upstream time."""
        method = access["method"]
        # SECURITY: memory exhaustion through label cardinality: the client
        # chooses the method, so only well-known ones get a label of their own.
        if method not in _METHODS:
            method = "OTHER"
        key = (method, access["status"] // 100)
        count = self._request_counts.get(key)
        if count is None:
            count = self._requests.labels(method, f"{key[1]}xx")
            self._request_counts[key] = count
        count.inc()

        upstream_ms = access["upstream_ms"]
        if upstream_ms is not None:
            self._upstream.observe(upstream_ms / 1000)

    def count_auth_event(self, event: str, fields: Mapping[str, Any]) -> None:
        match event:
            case "login_ok":
                self._signed_in += 1
            case "login_failed":
                self._failed_logins += 1
            case "denied":
                self._refusals.labels(str(fields.get("rule", ""))).inc()
                if fields.get("at") == "login":
                    self._denied_logins += 1
            case "refresh_ok" | "refresh_failed":
                self._refreshes.labels(event.removeprefix("refresh_")).inc()
            case "recheck_ok" | "recheck_failed":
                self._rechecks.labels(event.removeprefix("recheck_")).inc()
            case "spoofed_header":
                self._spoofed.inc(len(str(fields.get("headers", "")).split(",")))

    def count_reddit_call(self, call: str, status: int | None) -> None:
        """For RedditClient's on_call."""
        endpoint = "listings" if call.startswith("mine/") else call
        answer = "error" if status is None else str(status)
        self._reddit_calls.labels(endpoint, answer).inc()

    def collect(self) -> Iterator[Metric]:
        """What is read when scraped: sign-ins, reddit's budget, open websockets."""
        logins = CounterMetricFamily(
            "reddit_gateway_logins",
            "Sign-ins by outcome: ok, failed (no identity came of it), or denied "
            "(reddit named the account, the access rules refused it).",
            labels=["outcome"],
        )
        # A refused sign-in logs login_ok, then at once (no await between) a
        # denied at login: count it once, as denied.
        logins.add_metric(["ok"], self._signed_in - self._denied_logins)
        logins.add_metric(["failed"], self._failed_logins)
        logins.add_metric(["denied"], self._denied_logins)
        yield logins

        remaining = self._ratelimit_remaining()
        if remaining is not None:  # absent until reddit has said
            yield GaugeMetricFamily(
                "reddit_gateway_reddit_ratelimit_remaining",
                "API requests left in reddit's rate-limit window, as it last said.",
                value=remaining,
            )
        yield GaugeMetricFamily(
            "reddit_gateway_websockets_open",
            "Websockets relayed to the upstream right now.",
            value=self._open_websockets(),
        )

    def _metrics_app(self) -> web.Application:
        async def metrics(request: web.Request) -> web.Response:
            encode, content_type = choose_encoder(request.headers.get("Accept", ""))
            body = encode(self.registry)
            return web.Response(body=body, headers={"Content-Type": content_type})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app


class _RecordCounter(logging.Handler):
    """Hands the access and auth loggers' records to a Metrics."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        extra = record.__dict__
        access = extra.get("access")
        if access is not None:
            self._metrics.count_request(access)
            return
        event = extra.get("event")
        if event is not None:
            self._metrics.count_auth_event(event, extra.get("fields", {}))


METRICS = web.AppKey("metrics", Metrics)


def serve_summed(listen: str, directory: str) -> Callable[[], None]:
    """In the supervisor: serve at ``listen`` (host:port), from a thread of its
    own, the sum of the counts that the workers serve on the sockets in
    ``directory``; the function returned stops it. Raises OSError if ``listen``
    cannot be bound."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SummedWorkers(directory))
    host, port = _host_port(listen)
    try:
        server, thread = start_http_server(port, host, registry)
    except OSError as exc:
        message = f"metrics.listen {listen}: {exc.strerror}"
        raise OSError(exc.errno, message) from exc
    log.info("metrics on http://%s/metrics, summed over the workers", listen)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop


class _SummedWorkers:
    """A collector: the workers' counts, read from their sockets at each scrape."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Metric]:
        texts = []
        for name in sorted(os.listdir(self._directory)):
            text = _worker_exposition(os.path.join(self._directory, name))
            if text is not None:  # else a worker that is starting or gone
                texts.append(text)
        return iter(sum_expositions(texts))


def sum_expositions(texts: Iterable[str]) -> list[Metric]:
    """Metric families in the text format, summed sample by sample (name and
    labels); a counter's _created and reddit's rate-limit budget take the least."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            summed = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in summed:
                    summed[key] = sample.value
                elif sample.name.endswith("_created") or sample.name == _RATELIMIT:
                    summed[key] = min(summed[key], sample.value)
                else:
                    summed[key] += sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(families.values())


def _worker_exposition(path: str) -> str | None:
    """One worker's counts in the text format; None if it does not answer."""
    connection = _UnixConnection(path, _WORKER_TIMEOUT)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    return body.decode() if response.status == 200 else None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.removeprefix("[").removesuffix("]") or "0.0.0.0", int(port)  # noqa: S104
