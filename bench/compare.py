"""The gateway beside the upstream direct, nginx and a bare aiohttp proxy.

In one run on loopback: an upstream (nginx serving static files when Debian's
nginx is installed, else a small aiohttp app), nginx as a plain reverse proxy
with a keep-alive upstream (when installed), bench/passthrough.py (aiohttp's
floor) and the gateway (`python -m gateway serve`) on its signed-in path, with a
session cookie from a real sign-in through the mock reddit. Every target gets the
same requests, cookie included. Loads run interleaved (each repetition goes once
through every load and target) with wrk; the medians are reported, with every
figure also as a ratio to direct (d) and to nginx (n) from the same run.
Then websocket echo round trips (one connection, a Python client) and sign-ins
per second through the mock reddit (concurrency 10). Linux only.

    python bench/compare.py [--quick] [--workers N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
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
    Load("10MiB c8", "/big", 8),
)


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
    rps: float
    mib_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_s: float | None = None
    rss: float | None = None
    seconds: float = 0.0


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
        0.0,
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
        async with client.get(gateway / "small", headers={"Cookie": header}) as probe:
            body = await probe.read()
    if body != SMALL_BODY:
        raise SystemExit(f"the gateway did not pass the signed-in request: {body!r}")
    return header


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
        cpu = [s.cpu_s / (s.rps * s.seconds) for s in runs if s.cpu_s and s.rps]
        return {
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
        f"{'load':11} {'target':8} {'req/s':>9} {'(x d, n)':>12} {'MiB/s':>8}"
        f" {'p50 ms':>7} {'(x d, n)':>12} {'p99 ms':>7} {'(x d, n)':>12}"
        f" {'CPU us/req':>10} {'RSS MiB':>8} {'err':>4}"
    )
    print(columns)
    print("-" * len(columns))
    last = None
    for row in rows:
        if last is not None and row["load"] != last:
            print()
        last = row["load"]
        print(
            f"{row['load']:11} {row['target']:8} {fmt(row['rps']):>9}"
            f" {pair(row, 'rps'):>12} {fmt(row['mib_s'], 1):>8}"
            f" {fmt(row['p50_ms'], 2):>7} {pair(row, 'p50_ms'):>12}"
            f" {fmt(row['p99_ms'], 2):>7} {pair(row, 'p99_ms'):>12}"
            f" {fmt(row.get('cpu_us_per_req')):>10} {fmt(row['rss_mib'], 1):>8}"
            f" {row['errors']:>4}"
        )


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
                async with client.get(url) as answer:
                    if answer.status < 500:
                        return
            await asyncio.sleep(0.05)
    raise SystemExit(f"{url} did not start within 10 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s each")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1, help="gateway workers")
    parser.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    parser.add_argument(
        "--logins",
        type=int,
        default=48,
        help="sign-ins to time; the gateway takes bursts of 50, then 10 a second",
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
        args.runs, args.seconds = 1, 3.0
    if shutil.which("wrk") is None:
        raise SystemExit("compare.py needs wrk: apt-get install wrk")
    return run(args)


def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="gateway-compare-"))
    work.chmod(0o755)  # nginx's workers may run as another user
    www = work / "www"
    www.mkdir()
    (www / "small").write_bytes(SMALL_BODY)
    (www / "json").write_bytes(JSON_BODY)
    (www / "big").write_bytes(os.urandom(BIG_BYTES))
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
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(
            GATEWAY_SERVER_LISTEN=f"127.0.0.1:{ports['gw']}",
            GATEWAY_SERVER_PUBLIC_URL=str(gateway),
            GATEWAY_SERVER_WORKERS=str(args.workers),
            GATEWAY_UPSTREAM_URL=str(upstream),
            GATEWAY_REDDIT_CLIENT_ID=CLIENT_ID,
            GATEWAY_REDDIT_CLIENT_SECRET=CLIENT_SECRET,
            GATEWAY_REDDIT_USER_AGENT="bench:reddit-gateway-bench:v1 (by /u/bench)",
            GATEWAY_REDDIT_AUTHORIZE_URL=f"{reddit}/api/v1/authorize",
            GATEWAY_REDDIT_TOKEN_URL=f"{reddit}/api/v1/access_token",
            GATEWAY_REDDIT_REVOKE_URL=f"{reddit}/api/v1/revoke_token",
            GATEWAY_REDDIT_API_URL=reddit,
            GATEWAY_SESSION_SECRET=secrets.token_urlsafe(32),
            GATEWAY_SESSION_COOKIE_SECURE="false",
            GATEWAY_LOG_LEVEL="warning",
            PYTHONPATH=str(REPO),
        )
        gw_log = (work / "gateway.log").open("wb")
        started.append(
            subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve"],
                env=env,
                cwd=REPO,
                stdout=gw_log,
                stderr=gw_log,
            )
        )
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
        return asyncio.run(measure(args, targets, helper_url, gateway, work))


async def measure(
    args: argparse.Namespace,
    targets: list[Target],
    helper_url: URL,
    gateway: URL,
    work: Path,
) -> int:
    await wait_ready(helper_url / "small")
    for target in targets:
        await wait_ready(target.url / "small")
    cookie = await session_cookie(gateway)
    results = Results()

    for target in targets:  # warm up: pools filled, code paths compiled
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
    for repetition in range(args.runs):
        for load in LOADS:
            for target in targets:
                sample = run_wrk(target, load, args.seconds, cookie)
                sample.seconds = args.seconds
                results.add(load.name, target.name, sample)
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
                await ws_echo(target.url, cookie, args.seconds),
            )

    gateway_target = targets[-1]
    pids = proc_tree(gateway_target.pid)  # type: ignore[arg-type]
    cpu = cpu_seconds(pids)
    login = await logins(gateway, args.logins, 10)
    login.cpu_s = cpu_seconds(pids) - cpu
    login.rss = rss_mib(pids)
    results.add("logins c10", "gateway", login)

    rows = []
    for load in [*(each.name for each in LOADS), "ws echo c1", "logins c10"]:
        base = {t: results.median(load, t) for t in TARGETS}
        for name in TARGETS:
            row = base[name]
            if row is None:
                continue
            ratios(row, base["direct"], "direct")
            ratios(row, base["nginx"], "nginx")
            rows.append(row)
    header = (
        f"gateway workers={args.workers}, nginx proxy workers={args.workers}, "
        f"{args.runs} x {args.seconds:g} s per load and target, wrk -t1, medians; "
        f"(x d, n) = ratio to direct, to nginx. CPU and RSS: the target's processes"
    )
    print_table(rows, header)
    print(f"logs in {work}")
    if args.json:
        write_json(Path(args.json), rows)
    return 1 if any(row["errors"] for row in rows) else 0


def write_json(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
