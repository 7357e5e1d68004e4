"""What the metrics add to each request, in microseconds: the access-log record a
Metrics counts, with and without it attached, at log.level info and warning, and
the upstream timing in the proxy. Prints medians of several timeit repeats.

    python bench/metrics_hooks.py
"""

from __future__ import annotations

import logging
import statistics
import time
import timeit
from collections.abc import Callable

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.log import (
    UPSTREAM_KEY,
    UPSTREAM_SECONDS,
    USER_KEY,
    AccessLogger,
    access_log,
)
from gateway.metrics import Metrics

NUMBER = 20_000


def per_call_us(action: Callable[[], object]) -> float:
    runs = timeit.repeat(action, number=NUMBER, repeat=7)
    return statistics.median(runs) / NUMBER * 1e6


def proxied_request() -> web.Request:
    request = make_mocked_request("GET", "/app/page?q=1")
    request[UPSTREAM_KEY] = True
    request[USER_KEY] = "alice"
    request[UPSTREAM_SECONDS] = 0.0042
    return request


def main() -> None:
    request, response = proxied_request(), web.Response(status=200, body=b"x" * 512)
    logger = AccessLogger(access_log, "")
    logging.getLogger().handlers[:] = [logging.NullHandler()]  # output not timed

    def log_once() -> None:
        if logger.enabled:  # as aiohttp asks (once per connection, in fact)
            logger.log(request, response, 0.0051)

    results: dict[str, float] = {}
    for level in ("info", "warning"):
        logging.getLogger("gateway").setLevel(level.upper())
        results[f"access record, log.level {level}, no metrics"] = per_call_us(log_once)
        metrics = Metrics()
        metrics.attach()
        results[f"access record, log.level {level}, metrics on"] = per_call_us(log_once)
        metrics.detach()

    metrics = Metrics()
    access = {"method": "GET", "status": 200, "upstream_ms": 4.2}
    results["Metrics.count_request alone"] = per_call_us(
        lambda: metrics.count_request(access)
    )

    def time_upstream() -> None:
        sent_at = time.monotonic()
        request[UPSTREAM_SECONDS] = time.monotonic() - sent_at

    results["proxy: upstream timing"] = per_call_us(time_upstream)

    for name, micros in results.items():
        print(f"{name:48} {micros:6.2f} µs")


if __name__ == "__main__":
    main()
