"""The gateway beside the upstream direct, nginx and a bare aiohttp proxy.

In one run on loopback: an upstream (nginx serving static files when Debian's
nginx is installed, else a small aiohttp app), nginx as a plain reverse proxy
with a keep-alive upstream (when installed), bench/passthrough.py (aiohttp's
floor) and the gateway (`python -m gateway serve`) on its signed-in path, with a
session cookie from a real sign-in through the mock reddit. Every target gets the
same requests, cookie included. Loads run interleaved (each repetition goes once
through every load and target) with wrk; the medians are reported, with every
figure also as a ratio to direct (d) and to nginx (n) from the same run.
Then each target's resident memory while 1,000 keep-alive clients sit idle, each
after one signed-in request (plain asyncio streams on the bench's side),
websocket echo round trips (one connection, a Python client) and sign-ins per
second through the mock reddit (concurrency 10, the gateway's sign-in limit
raised when its configuration has the keys for it). `--scaling` adds the gateway
with 1 and with os.cpu_count() workers under the small c50 load. Last, the
issue's targets, each with its figure and PASS or SHORT (reported, not asserted:
the exit status is about errors only). Linux only.

    python bench/compare.py [--quick] [--workers N] [--scaling] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from transfer import (
    CLIENT_ID,
    CLIENT_SECRET,
    REPO,
    free_port,
    gateway_env,
    sign_in,
)
from yarl import URL

MiB = 1024 * 1024
SMALL_BODY = b"hello from the upstream\n"
JSON_BODY = (
    json.dumps({"items": [{"id": i, "name": f"item-{i:04d}"} for i in range(36)]})
    .encode()
    .ljust(1024, b" ")[:1023]
    + b"\n"
)
BIG_BYTES = 10 * MiB
TARGETS = ("direct", "nginx", "aiohttp", "gateway")


@dataclass(frozen=True)
class Load:
    name: str
    path: str
    connections: int


LOADS = (
    Load("small c1", "/small", 1),
    Load("small c50", "/small", 50),
    Load("json1k c1", "/json", 1),
    Load("json1k c50", "/json", 50),
    Load("10MiB c1", "/big", 1),
    Load("10MiB c50", "/big", 50),
)
IDLE = "idle 1000"  # the load of 1,000 idle keep-alive clients
IDLE_CLIENTS = 1000
IDLE_OPENING = 32  # connections opened and served at once (the gateway allows
# 64 open requests per user: every idle client carries the same session)
LOGIN_LOAD = "logins c10"
# Sign-ins per second and in a burst for the benchmark's gateway, so that the
# run measures the gateway rather than its limit (when its config has the keys).
SIGN_IN_LIMITS = {"sign_ins_per_second": "100000", "sign_in_burst": "100000"}
DEFAULT_SIGN_IN_BURST = 50  # the gateway's burst when the limit stays as shipped


# --- processes --------------------------------------------------------------------


def proc_tree(pid: int) -> list[int]:
    """pid and its descendants (a gateway supervisor's workers, nginx's workers)."""
    found = [pid]
    for child_pid in found:
        for task in Path(f"/proc/{child_pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                children = (task / "children").read_text().split()
                found.extend(int(c) for c in children)
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(stat[11]) + int(stat[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


@dataclass
class Target:
    name: str
    url: URL
    pid: int | None  # whose process tree's CPU and memory count


def nginx_config(prefix: Path, body: str, workers: str) -> Path:
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    path = prefix / "nginx.conf"
    path.write_text(
        f"""worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    sendfile on;
    tcp_nopush on;
{body}
}}
"""
    )
    return path


def start_nginx(prefix: Path, body: str, workers: str) -> subprocess.Popen[bytes]:
    config = nginx_config(prefix, body, workers)
    return subprocess.Popen(
        ["nginx", "-p", str(prefix), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=(prefix / "logs" / "stderr.log").open("wb"),
    )


# --- the helper process: mock reddit, websocket echo, fallback upstream ------------


def helper_app(www: Path) -> web.Application:
    big = (www / "big").read_bytes()

    async def small(request: web.Request) -> web.Response:
        return web.Response(body=SMALL_BODY, content_type="text/plain")

    async def json_doc(request: web.Request) -> web.Response:
        return web.Response(body=JSON_BODY, content_type="application/json")

    async def big_file(request: web.Request) -> web.Response:
        return web.Response(body=big, content_type="application/octet-stream")

    async def echo(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            if message.type == aiohttp.WSMsgType.TEXT:
                await socket.send_str(message.data)
        return socket

    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_get("/json", json_doc)
    app.router.add_get("/big", big_file)
    app.router.add_get("/ws", echo)
    return app


async def serve_helpers(
    app_port: int, reddit_port: int, callback: str, www: Path
) -> None:
    sys.path.insert(0, str(REPO))
    from gateway.mock_reddit import MockReddit

    reddit = MockReddit()
    reddit.add_client(CLIENT_ID, CLIENT_SECRET, callback)
    # Sign-ins per second would drain reddit's API budget within the run.
    reddit.ratelimit_budget = reddit.ratelimit_remaining = 1e9
    runners = []
    for app, port in ((helper_app(www), app_port), (reddit.app(), reddit_port)):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


# --- wrk ----------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}
_BYTES = {"B": 1, "KB": 1024, "MB": MiB, "GB": 1024 * MiB}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


@dataclass
class Sample:
    rps: float | None
    mib_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    cpu_s: float | None = None
    rss: float | None = None
    seconds: float = 0.0
    rss_base: float | None = None  # before the load, where that tells something
    requests: int | None = None  # served, when not rps x seconds


def parse_wrk(output: str) -> Sample:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    amount, unit = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", output).groups()  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1)  # type: ignore[union-attr]
    errors = 0
    if found := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(found.group(1))
    if found := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors += sum(map(int, found.groups()))
    return Sample(rps, float(amount) * _BYTES[unit] / MiB, _ms(p50), _ms(p99), errors)


def run_wrk(target: Target, load: Load, seconds: float, cookie: str) -> Sample:
    pids = proc_tree(target.pid) if target.pid else []
    cpu_before = cpu_seconds(pids)
    command = [
        "wrk",
        "-t1",
        f"-c{load.connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "--latency",
        "-H",
        f"Cookie: {cookie}",
        str(target.url.with_path(load.path)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    sample = parse_wrk(done.stdout)
    if pids:
        sample.cpu_s = cpu_seconds(pids) - cpu_before
        sample.rss = rss_mib(proc_tree(target.pid))  # type: ignore[arg-type]
    return sample


# --- idle keep-alive clients (asyncio streams: cheap on the bench's side) -----------


def raise_open_files() -> int:
    """Lift this process's (and so its children's) open-files soft limit to the
    hard limit; the soft limit then in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        for limit in (hard, 65536):
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
                break
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def read_answer(
    reader: asyncio.StreamReader,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, lower-cased header fields, body."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    fields = {}
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    if "content-length" in fields:
        body = await reader.readexactly(int(fields["content-length"]))
    elif fields.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append((await reader.readexactly(size + 2))[:-2])
        await reader.readuntil(b"\r\n")  # no trailers expected
        body = b"".join(parts)
    else:
        raise ValueError("a keep-alive answer without a length")
    return status, fields, body


async def idle_clients(
    target: Target, cookie: str, count: int = IDLE_CLIENTS, settle: float = 1.0
) -> Sample:
    """`count` keep-alive connections, each after one signed-in GET /small that
    must answer 200 with the body and stay open, held idle for `settle` seconds;
    then the target's resident memory. Errors: failed requests, and connections
    the target closed while idle."""
    assert target.pid is not None and target.url.host and target.url.port
    host, port = target.url.host, target.url.port
    request = (
        f"GET /small HTTP/1.1\r\nHost: {host}:{port}\r\nCookie: {cookie}\r\n"
        "User-Agent: bench-idle\r\nAccept: */*\r\n\r\n"
    ).encode()
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failures = 0
    gate = asyncio.Semaphore(IDLE_OPENING)

    async def one() -> None:
        nonlocal failures
        async with gate:
            try:
                async with asyncio.timeout(10):
                    reader, writer = await asyncio.open_connection(host, port)
                    opened.append((reader, writer))
                    writer.write(request)
                    status, fields, body = await read_answer(reader)
                ok = status == 200 and body == SMALL_BODY
                ok = ok and fields.get("connection", "").lower() != "close"
            except (OSError, EOFError, TimeoutError, ValueError, IndexError) as exc:
                if not failures:
                    print(f"  first failed idle client: {exc!r}", file=sys.stderr)
                ok = False
            failures += not ok

    base = rss_mib(proc_tree(target.pid))
    cpu_before = cpu_seconds(proc_tree(target.pid))
    began = time.perf_counter()
    try:
        await asyncio.gather(*(one() for _ in range(count)))
        elapsed = time.perf_counter() - began
        await asyncio.sleep(settle)
        pids = proc_tree(target.pid)
        rss, cpu = rss_mib(pids), cpu_seconds(pids) - cpu_before
        # A connection the target closed has its reader at EOF by now.
        failures += sum(reader.at_eof() for reader, _ in opened)
    finally:
        for _, writer in opened:
            writer.close()
        await asyncio.gather(
            *(writer.wait_closed() for _, writer in opened), return_exceptions=True
        )
    return Sample(None, None, None, None, failures, cpu, rss, elapsed, base, count)


# --- websocket echo and sign-ins (Python clients) -----------------------------------


async def ws_echo(url: URL, cookie: str, seconds: float) -> Sample:
    """Round trips of a 32-byte text message on one websocket, for `seconds`."""
    times: list[float] = []
    headers = {"Cookie": cookie, "Origin": str(url.origin())}
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(url.with_path("/ws"), headers=headers) as socket,
    ):
        message = "x" * 32
        end = time.perf_counter() + seconds
        began = time.perf_counter()
        while (now := time.perf_counter()) < end:
            await socket.send_str(message)
            answer = await socket.receive_str()
            times.append(time.perf_counter() - now)
            assert answer == message
        elapsed = time.perf_counter() - began
    return latency_sample(times, elapsed)


def latency_sample(times: list[float], elapsed: float) -> Sample:
    ordered = sorted(times)
    return Sample(
        len(times) / elapsed,
        None,
        ordered[len(ordered) // 2] * 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        0,
        seconds=elapsed,
    )


async def logins(gateway: URL, count: int, concurrency: int) -> Sample:
    """`count` complete sign-ins (start, consent, callback), `concurrency` at once."""
    times: list[float] = []
    failures = 0
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        nonlocal failures
        async with gate:
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as client:
                began = time.perf_counter()
                try:
                    await sign_in(client, gateway)
                except (SystemExit, aiohttp.ClientError, KeyError) as exc:
                    if not failures:
                        print(f"  first failed sign-in: {exc!r}", file=sys.stderr)
                    failures += 1
                    return
                times.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    sample = latency_sample(times, time.perf_counter() - began)
    sample.errors = failures
    return sample


async def session_cookie(gateway: URL) -> str:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as client:
        await sign_in(client, gateway)
        cookies = jar.filter_cookies(gateway)
        header = "; ".join(f"{m.key}={m.value}" for m in cookies.values())
    await probe(gateway, header)
    return header


async def probe(url: URL, cookie: str) -> None:
    """One signed-in GET /small must come back whole: a gateway that does not take
    the cookie answers with a redirect, which wrk would not count as an error."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(
            url / "small", headers={"Cookie": cookie}, allow_redirects=False
        ) as answer,
    ):
        body = await answer.read()
    if answer.status != 200 or body != SMALL_BODY:
        raise SystemExit(f"{url} did not pass the signed-in request: {body[:200]!r}")


# --- the run -----------------------------------------------------------------------


@dataclass
class Results:
    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)

    def add(self, load: str, target: str, sample: Sample) -> None:
        self.samples.setdefault((load, target), []).append(sample)

    def median(self, load: str, target: str) -> dict[str, Any] | None:
        runs = self.samples.get((load, target))
        if not runs:
            return None

        def mid(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return statistics.median(known) if known else None

        rps = mid([s.rps for s in runs])
        cpu = [
            s.cpu_s / served
            for s in runs
            if s.cpu_s and (served := s.requests or (s.rps or 0) * s.seconds)
        ]
        row = {
            "load": load,
            "target": target,
            "rps": rps,
            "mib_s": mid([s.mib_s for s in runs]),
            "p50_ms": mid([s.p50_ms for s in runs]),
            "p99_ms": mid([s.p99_ms for s in runs]),
            "rss_mib": mid([s.rss for s in runs]),
            "cpu_us_per_req": statistics.median(cpu) * 1e6 if cpu else None,
            "errors": sum(s.errors for s in runs),
            "runs": len(runs),
        }
        if (base := mid([s.rss_base for s in runs])) is not None:
            row["rss_base_mib"] = base
        return row


def ratios(row: dict[str, Any], base: dict[str, Any] | None, tag: str) -> None:
    for key in ("rps", "mib_s", "p50_ms", "p99_ms", "rss_mib", "cpu_us_per_req"):
        if base is None or not base.get(key) or row.get(key) is None:
            continue
        row[f"{key}_x_{tag}"] = round(row[key] / base[key], 3)


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def pair(row: dict[str, Any], key: str) -> str:
    parts = [
        f"{row[f'{key}_x_{tag}']:.2f}{tag[0]}"
        for tag in ("direct", "nginx")
        if f"{key}_x_{tag}" in row
    ]
    return " ".join(parts)


def print_table(rows: list[dict[str, Any]], header: str) -> None:
    print(header)
    columns = (
        f"{'load':12} {'target':8} {'req/s':>9} {'(x d, n)':>12} {'MiB/s':>8}"
        f" {'p50 ms':>7} {'(x d, n)':>12} {'p99 ms':>7} {'(x d, n)':>12}"
        f" {'CPU us/req':>10} {'RSS MiB':>8} {'(x d, n)':>12} {'err':>4}"
    )
    print(columns)
    print("-" * len(columns))
    last = None
    for row in rows:
        if last is not None and row["load"] != last:
            print()
        last = row["load"]
        print(
            f"{row['load']:12} {row['target']:8} {fmt(row['rps']):>9}"
            f" {pair(row, 'rps'):>12} {fmt(row['mib_s'], 1):>8}"
            f" {fmt(row['p50_ms'], 2):>7} {pair(row, 'p50_ms'):>12}"
            f" {fmt(row['p99_ms'], 2):>7} {pair(row, 'p99_ms'):>12}"
            f" {fmt(row.get('cpu_us_per_req')):>10} {fmt(row['rss_mib'], 1):>8}"
            f" {pair(row, 'rss_mib'):>12} {row['errors']:>4}"
        )


# --- the targets ----------------------------------------------------------


def target_checks(
    rows: list[dict[str, Any]], workers: int, limit_raised: bool
) -> list[tuple[str, str, bool | None]]:
    """(what, the measured figure, met or not or None when not measured) for each
    target the issue sets."""
    by = {(row["load"], row["target"]): row for row in rows}

    def get(load: str, target: str, key: str) -> float | None:
        value = by.get((load, target), {}).get(key)
        return None if value is None else float(value)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    checks: list[tuple[str, str, bool | None]] = []

    def versus(what: str, value: float | None, floor: float, why: str = "") -> None:
        figure = "-" if value is None else f"{value:.2f}x"
        checks.append((what, why or figure, None if value is None else value >= floor))

    one_worker = "" if workers == 1 else "n/a: run with --workers 1"
    gw_small = get("small c50", "gateway", "rps")
    for other, floor, shown in (("aiohttp", 1.0, "1.0"), ("nginx", 0.25, "0.25")):
        value = ratio(gw_small, get("small c50", other, "rps"))
        versus(
            f"gateway small c50 req/s (1 worker) >= {shown}x {other}",
            None if one_worker else value,
            floor,
            one_worker,
        )
    for load in ("10MiB c1", "10MiB c50"):
        value = ratio(get(load, "gateway", "mib_s"), get(load, "nginx", "mib_s"))
        versus(f"gateway {load} MiB/s >= 0.6x nginx", value, 0.6)

    gw_p50, direct_p50 = (
        get("small c1", "gateway", "p50_ms"),
        get("small c1", "direct", "p50_ms"),
    )
    added = None if gw_p50 is None or direct_p50 is None else gw_p50 - direct_p50
    checks.append(
        (
            "gateway small c1 p50 - direct p50 < 0.5 ms",
            fmt(added, 2) + " ms",
            None if added is None else added < 0.5,
        )
    )

    idle, before = get(IDLE, "gateway", "rss_mib"), get(IDLE, "gateway", "rss_base_mib")
    checks.append(
        (
            f"gateway RSS with {IDLE_CLIENTS:,} idle clients < 80 MiB",
            f"{fmt(idle, 1)} MiB ({fmt(before, 1)} before)",
            None if idle is None else idle < 80,
        )
    )
    big = ratio(
        get("10MiB c50", "gateway", "rss_mib"), get("small c50", "gateway", "rss_mib")
    )
    checks.append(
        (
            "gateway RSS after 10MiB c50 / after small c50 within 10%",
            "-" if big is None else f"{big:.2f}x",
            None if big is None else abs(big - 1) <= 0.10,
        )
    )

    rate = get(LOGIN_LOAD, "gateway", "rps")
    note = "" if limit_raised else " (gateway's sign-in limit in force)"
    checks.append(
        (
            f"sign-ins per second >= 200{note}",
            fmt(rate) + "/s",
            None if rate is None else rate >= 200,
        )
    )
    return checks


def print_targets(checks: list[tuple[str, str, bool | None]]) -> None:
    print("targets (reported, not asserted):")
    for what, figure, met in checks:
        verdict = "n/a" if met is None else "PASS" if met else "SHORT"
        print(f"  {what:64} {figure:>22}  {verdict}")


# --- processes and the run --------------------------------------------------------


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


async def wait_ready(url: URL) -> None:
    async with aiohttp.ClientSession() as client:
        for _ in range(200):
            with contextlib.suppress(aiohttp.ClientError):
                async with client.get(url, allow_redirects=False) as answer:
                    if answer.status < 500:
                        return
            await asyncio.sleep(0.05)
    raise SystemExit(f"{url} did not start within 10 s")


def gateway_config_keys(section: str) -> set[str]:
    """The keys the gateway's configuration knows in [section]; empty when its
    schema cannot be read. The gateway refuses unknown GATEWAY_* variables, so
    the bench sets only the ones it has."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        from gateway import config
    except Exception as exc:  # a gateway mid-edit: it will say so when started
        print(f"  cannot read gateway.config: {exc!r}", file=sys.stderr)
        return set()
    schema = getattr(config, "_SCHEMA", {})
    return set(schema.get(section, {})) if isinstance(schema, dict) else set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s each")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--seconds", type=int, default=3, help="per load and target (wrk: whole s)"
    )
    parser.add_argument("--workers", type=int, default=1, help="gateway workers")
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="also the gateway with 1 and with os.cpu_count() workers, small c50",
    )
    parser.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    parser.add_argument(
        "--logins",
        type=int,
        default=400,
        help="sign-ins to time, 10 at once (at most a burst of the gateway's own "
        "sign-in limit when its configuration cannot raise it)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="py-spy the gateway during a small c50 run into FILE (collapsed stacks)",
    )
    parser.add_argument("--no-nginx", action="store_true", help="even if installed")
    parser.add_argument("--helpers", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.helpers:
        app_port, reddit_port, callback, www = args.helpers
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                serve_helpers(int(app_port), int(reddit_port), callback, Path(www))
            )
        return 0
    if args.quick:
        args.runs, args.seconds = 1, 3
    if shutil.which("wrk") is None:
        raise SystemExit("compare.py needs wrk: apt-get install wrk")
    return run(args)


def start_gateway(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"],
        env=env,
        cwd=REPO,
        stdout=out,
        stderr=out,
    )


def run(args: argparse.Namespace) -> int:
    open_files = raise_open_files()  # before the targets start: they inherit it
    if open_files < IDLE_CLIENTS + 200:
        print(
            f"  open files limited to {open_files}: the {IDLE} load will fail",
            file=sys.stderr,
        )
    work = Path(tempfile.mkdtemp(prefix="gateway-compare-"))
    work.chmod(0o755)  # nginx's workers may run as another user
    www = work / "www"
    www.mkdir()
    (www / "small").write_bytes(SMALL_BODY)
    (www / "json").write_bytes(JSON_BODY)
    (www / "big").write_bytes(os.urandom(BIG_BYTES))
    atexit.register(shutil.rmtree, www, True)  # the logs stay, the 10 MiB goes
    use_nginx = shutil.which("nginx") is not None and not args.no_nginx
    ports = {name: free_port() for name in ("app", "reddit", "up", "ngx", "aio", "gw")}
    helper_url = URL(f"http://127.0.0.1:{ports['app']}")
    gateway = URL(f"http://127.0.0.1:{ports['gw']}")
    reddit = f"http://127.0.0.1:{ports['reddit']}"
    callback = str(gateway / "oauth2/callback")

    with processes() as started:
        log = (work / "helpers.log").open("wb")
        started.append(
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--helpers",
                    str(ports["app"]),
                    str(ports["reddit"]),
                    callback,
                    str(www),
                ],
                stdout=log,
                stderr=log,
            )
        )
        upstream_pid: int | None = started[-1].pid
        helper_pid = started[-1].pid  # the mock reddit's process
        upstream = helper_url
        if use_nginx:
            started.append(
                start_nginx(
                    work / "upstream",
                    f"""    server {{
        listen 127.0.0.1:{ports["up"]} reuseport;
        location / {{ root {www}; default_type application/octet-stream; }}
        location = /json {{ root {www}; default_type application/json; }}
        location = /ws {{
            proxy_pass http://127.0.0.1:{ports["app"]};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
        }}
    }}""",
                    "auto",
                )
            )
            upstream_pid = started[-1].pid
            upstream = URL(f"http://127.0.0.1:{ports['up']}")
            started.append(
                start_nginx(
                    work / "proxy",
                    f"""    upstream app {{
        server {upstream.host}:{upstream.port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{ports["ngx"]};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;  # stream big bodies, never spool to disk
            # nginx's 4-8 KiB default buffers cost it a third of its 10 MiB
            # throughput on loopback; 256 KiB ones are what one would tune to.
            proxy_buffer_size 256k;
            proxy_buffers 8 256k;
            proxy_busy_buffers_size 512k;
        }}
        location = /ws {{
            proxy_pass http://{upstream.host}:{upstream.port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
        }}
    }}""",
                    str(args.workers),
                )
            )
        nginx_pid = started[-1].pid if use_nginx else None
        aio_log = (work / "aiohttp.log").open("wb")
        started.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).with_name("passthrough.py")),
                    str(ports["aio"]),
                    str(upstream),
                ],
                stdout=aio_log,
                stderr=aio_log,
            )
        )
        aio_pid = started[-1].pid

        session_secret = secrets.token_urlsafe(32)
        env = gateway_env(ports["gw"], upstream, reddit, session_secret, args.workers)
        known = gateway_config_keys("reddit")
        limit_raised = set(SIGN_IN_LIMITS) <= known
        if limit_raised:
            env.update(
                {f"GATEWAY_REDDIT_{k.upper()}": v for k, v in SIGN_IN_LIMITS.items()}
            )
        started.append(start_gateway(env, work / "gateway.log"))
        gateway_pid = started[-1].pid

        targets = [Target("direct", upstream, upstream_pid)]
        if use_nginx:
            targets.append(
                Target("nginx", URL(f"http://127.0.0.1:{ports['ngx']}"), nginx_pid)
            )
        targets.append(
            Target("aiohttp", URL(f"http://127.0.0.1:{ports['aio']}"), aio_pid)
        )
        targets.append(Target("gateway", gateway, gateway_pid))

        # --scaling: the gateway with 1 and with os.cpu_count() workers, the same
        # session secret (so the same cookie), no sign-ins of its own.
        scaling: list[tuple[int, Target]] = []
        if args.scaling:
            for workers in sorted({1, os.cpu_count() or 1}):
                if workers == args.workers:
                    scaling.append((workers, targets[-1]))
                    continue
                port = free_port()
                extra = gateway_env(port, upstream, reddit, session_secret, workers)
                started.append(start_gateway(extra, work / f"gateway-w{workers}.log"))
                url = URL(f"http://127.0.0.1:{port}")
                scaling.append((workers, Target("gateway", url, started[-1].pid)))
        return asyncio.run(
            measure(
                args,
                targets,
                scaling,
                helper_url,
                gateway,
                work,
                limit_raised,
                helper_pid,
            )
        )


async def measure(
    args: argparse.Namespace,
    targets: list[Target],
    scaling: list[tuple[int, Target]],
    helper_url: URL,
    gateway: URL,
    work: Path,
    limit_raised: bool,
    helper_pid: int,
) -> int:
    await wait_ready(helper_url / "small")
    everyone = [*targets, *(t for _, t in scaling if t not in targets)]
    for target in everyone:
        await wait_ready(target.url / "small")
    cookie = await session_cookie(gateway)
    for target in everyone:
        await probe(target.url, cookie)
    results = Results()

    for target in everyone:  # warm up: pools filled, code paths compiled
        run_wrk(target, Load("warm", "/small", 50), 1, cookie)
    if args.profile:
        spy = subprocess.Popen(  # noqa: ASYNC220 (the bench's loop is idle)
            [
                "py-spy",
                "record",
                "-p",
                str(targets[-1].pid),
                "-f",
                "raw",
                "-r",
                "500",
                "-d",
                f"{args.seconds:g}",
                "-o",
                args.profile,
            ],
        )
        run_wrk(targets[-1], LOADS[1], args.seconds, cookie)
        spy.wait()
    # Memory with idle keep-alive clients: once, after the warm-up and before the
    # other loads, so that it is not what the 10 MiB bodies left behind (the
    # table's RSS after each load shows that).
    for target in targets:
        results.add(IDLE, target.name, await idle_clients(target, cookie))
    for repetition in range(args.runs):
        for load in LOADS:
            for target in targets:
                sample = run_wrk(target, load, args.seconds, cookie)
                sample.seconds = args.seconds
                results.add(load.name, target.name, sample)
        for workers, target in scaling:
            sample = run_wrk(target, LOADS[1], args.seconds, cookie)
            sample.seconds = args.seconds
            results.add(f"{LOADS[1].name} w{workers}", "gateway", sample)
        print(f"  repetition {repetition + 1}/{args.runs} done", file=sys.stderr)

    # Websockets: the upstream (an nginx in front of the echo app when nginx is
    # installed) direct, through nginx, through the gateway.
    ws_targets = [Target("direct", targets[0].url, None)]
    ws_targets += [t for t in targets if t.name in ("nginx", "gateway")]
    for _ in range(args.runs):
        for target in ws_targets:
            results.add(
                "ws echo c1",
                target.name,
                await ws_echo(target.url, cookie, 1),
            )

    count = args.logins
    if not limit_raised and count > DEFAULT_SIGN_IN_BURST - 5:
        count = DEFAULT_SIGN_IN_BURST - 5
        print(
            f"  the gateway's configuration has no {', '.join(SIGN_IN_LIMITS)}: "
            f"timing {count} sign-ins (one burst of its own limit)",
            file=sys.stderr,
        )
    gateway_target = targets[-1]
    pids = proc_tree(gateway_target.pid)  # type: ignore[arg-type]
    cpu, reddit_cpu, client_cpu = (
        cpu_seconds(pids),
        cpu_seconds([helper_pid]),
        time.process_time(),
    )
    login = await logins(gateway, count, 10)
    login.cpu_s = cpu_seconds(pids) - cpu
    login.rss = rss_mib(pids)
    results.add(LOGIN_LOAD, "gateway", login)
    # The mock reddit and the bench's client share the machine's CPUs with the
    # gateway: what they spent tells whether the gateway was what limited the rate.
    done = max(1, round((login.rps or 0) * login.seconds))
    spent_elsewhere = {
        "reddit_cpu_us_per_login": (cpu_seconds([helper_pid]) - reddit_cpu) / done,
        "client_cpu_us_per_login": (time.process_time() - client_cpu) / done,
    }

    rows = []
    for load_name in [*(each.name for each in LOADS), IDLE, "ws echo c1", LOGIN_LOAD]:
        base = {t: results.median(load_name, t) for t in TARGETS}
        for name in TARGETS:
            row = base[name]
            if row is None:
                continue
            ratios(row, base["direct"], "direct")
            ratios(row, base["nginx"], "nginx")
            if name == "gateway":
                row["workers"] = args.workers
            if load_name == LOGIN_LOAD:
                row.update({k: v * 1e6 for k, v in spent_elsewhere.items()})
            rows.append(row)
    one_worker = None
    for workers, _ in scaling:
        row = results.median(f"{LOADS[1].name} w{workers}", "gateway")
        assert row is not None
        row["workers"] = workers
        one_worker = one_worker or row
        if row["rps"] and one_worker["rps"]:
            row["rps_x_1_worker"] = round(row["rps"] / one_worker["rps"], 3)
        rows.append(row)
    header = (
        f"gateway workers={args.workers}, nginx proxy workers={args.workers}, "
        f"{args.runs} x {args.seconds:g} s per load and target, wrk -t1, medians; "
        f"(x d, n) = ratio to direct, to nginx. CPU and RSS: the target's processes"
    )
    print_table(rows, header)
    print(f"logs in {work}")
    print()
    login_row = next((row for row in rows if row["load"] == LOGIN_LOAD), {})
    print(
        f"sign-ins: CPU per sign-in {fmt(login_row.get('cpu_us_per_req'))} us in"
        f" the gateway, {fmt(login_row.get('reddit_cpu_us_per_login'))} us in the"
        f" mock reddit, {fmt(login_row.get('client_cpu_us_per_login'))} us in the"
        f" bench's client, on {os.cpu_count()} CPUs"
    )
    if len(scaling) > 1:
        first, *_, last = (
            r for r in rows if r["load"].startswith(LOADS[1].name + " w")
        )

        def busy(row: dict[str, Any]) -> str:
            """CPUs the gateway kept busy: with CPU per request unchanged, a
            smaller gain than the workers' count is the machine's CPUs running
            out (wrk shares them), not the workers getting in each other's way."""
            cpu = row.get("cpu_us_per_req")
            return "-" if cpu is None else f"{row['rps'] * cpu / 1e6:.2f}"

        print(
            f"scaling, gateway {LOADS[1].name}: {first['workers']} worker "
            f"{fmt(first['rps'])} req/s on {busy(first)} CPUs, {last['workers']} "
            f"workers {fmt(last['rps'])} req/s on {busy(last)} CPUs = "
            f"{fmt(last.get('rps_x_1_worker'), 2)}x"
        )
    elif args.scaling:
        print("scaling: one CPU here, nothing to compare")
    print_targets(target_checks(rows, args.workers, limit_raised))
    if args.json:
        write_json(Path(args.json), rows)
    return 1 if any(row["errors"] for row in rows) else 0


def write_json(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
