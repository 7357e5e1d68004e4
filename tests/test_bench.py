"""bench/compare.py's own parts: wrk's output read right, idle keep-alive clients
counted right, the issue's targets judged right. The benchmark itself runs by
hand (`python bench/compare.py --quick`)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import compare

WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:1/small
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.10ms    3.20ms  60.00ms   90.00%
  Latency Distribution
     50%   11.50ms
     75%   13.00ms
     90%   15.00ms
     99%  750.00us
  12000 requests in 3.00s, 2.93MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   4000.00
Transfer/sec:      1.00MB
"""


def test_wrk_output_is_read_with_units_and_errors() -> None:
    sample = compare.parse_wrk(WRK_OUTPUT)

    assert (sample.rps, sample.mib_s) == (4000.0, 1.0)
    assert (sample.p50_ms, sample.p99_ms) == (11.5, 0.75)
    assert sample.errors == 3


async def answer_from(data: bytes) -> tuple[int, dict[str, str], bytes]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await compare.read_answer(reader)


async def test_answers_are_read_by_length_and_by_chunks() -> None:
    plain = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"
    chunked = (
        b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n"
    )

    assert await answer_from(plain) == (
        200,
        {"content-length": "5", "x-a": "b"},
        b"hello",
    )
    assert (await answer_from(chunked))[::2] == (404, b"hello")


async def idle_run(handler: Any, count: int) -> compare.Sample:
    app = web.Application()
    app.router.add_get("/small", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        target = compare.Target("gateway", URL(str(server.make_url("/"))), os.getpid())
        return await compare.idle_clients(target, "a=b", count=count, settle=0.05)


async def test_idle_clients_stay_open_after_one_answer_each() -> None:
    seen: list[str] = []

    async def small(request: web.Request) -> web.Response:
        seen.append(request.headers["Cookie"])
        return web.Response(body=compare.SMALL_BODY)

    sample = await idle_run(small, 40)

    assert sample.errors == 0
    assert seen == ["a=b"] * 40
    assert sample.requests == 40 and sample.rps is None
    assert sample.rss and sample.rss_base


async def test_idle_clients_count_closed_and_wrong_answers() -> None:
    async def closing(request: web.Request) -> web.Response:
        return web.Response(body=compare.SMALL_BODY, headers={"Connection": "close"})

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/oauth2/start"})

    assert (await idle_run(closing, 10)).errors == 10
    assert (await idle_run(redirect, 10)).errors == 10


def row(load: str, target: str, **figures: float) -> dict[str, Any]:
    return {"load": load, "target": target, **figures}


def test_targets_are_judged_from_the_rows() -> None:
    rows = [
        row("small c50", "aiohttp", rps=5000),
        row("small c50", "nginx", rps=30000, rss_mib=20),
        row("small c50", "gateway", rps=6000, rss_mib=60),
        row("10MiB c1", "nginx", mib_s=1000),
        row("10MiB c1", "gateway", mib_s=700),
        row("10MiB c50", "nginx", mib_s=1000),
        row("10MiB c50", "gateway", mib_s=500, rss_mib=63),
        row("small c1", "direct", p50_ms=0.1),
        row("small c1", "gateway", p50_ms=0.4),
        row("idle 1000", "gateway", rss_mib=79, rss_base_mib=60),
        row("logins c10", "gateway", rps=199),
    ]

    checks = compare.target_checks(rows, workers=1, limit_raised=True)

    assert [met for _, _, met in checks] == [
        True,  # 1.2x aiohttp
        False,  # 0.2x nginx
        True,  # 0.7x nginx
        False,  # 0.5x nginx
        True,  # 0.3 ms added
        True,  # 79 MiB
        True,  # 1.05x
        False,  # 199/s
    ]
    assert checks[0][1] == "1.20x" and checks[-1][1] == "199/s"


def test_targets_not_measured_are_not_judged() -> None:
    checks = compare.target_checks([], workers=2, limit_raised=False)

    assert {met for _, _, met in checks} == {None}
    assert checks[0][1] == "n/a: run with --workers 1"
    assert "sign-in limit in force" in checks[-1][0]
