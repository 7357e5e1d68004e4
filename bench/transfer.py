"""How much memory the gateway holds while a huge upload and download pass through.

Starts a small upstream app and the mock reddit in one process and the gateway
(`python -m gateway serve`, configured by GATEWAY_* variables) in another, signs
in through the mock reddit for a real session cookie, then streams SIZE MiB up and
SIZE MiB down, generated on the fly and checked by length and sha256 on the far
side. Reports the gateway's resident memory (VmRSS from /proc/PID/status) before,
at its peak and after, and the throughput. Linux only.

    python bench/transfer.py --size-mib 2048
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import secrets
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from yarl import URL

MiB = 1024 * 1024
BLOCK = random.Random(7).randbytes(MiB)  # the generated bodies repeat this block
CLIENT_ID = "bench-client-id"
CLIENT_SECRET = "bench-client-secret-not-real"
REPO = Path(__file__).resolve().parent.parent


# --- the upstream app and mock reddit, in a process of their own -------------------


def upstream_app() -> web.Application:
    """PUT /upload digests what arrives; GET /download?mib=N sends N MiB."""
    sent: dict[str, object] = {}

    async def upload(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        length = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            length += len(chunk)
        return web.json_response({"length": length, "sha256": digest.hexdigest()})

    async def download(request: web.Request) -> web.StreamResponse:
        blocks = int(request.query["mib"])
        response = web.StreamResponse(headers={"Content-Type": "application/x-bench"})
        response.content_length = blocks * MiB
        await response.prepare(request)
        digest = hashlib.sha256()
        for _ in range(blocks):
            await response.write(BLOCK)
            digest.update(BLOCK)
        await response.write_eof()
        sent.update(length=blocks * MiB, sha256=digest.hexdigest())
        return response

    async def last_download(request: web.Request) -> web.Response:
        return web.json_response(sent)

    app = web.Application()
    app.router.add_put("/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_get("/last-download", last_download)
    return app


async def serve_helpers(upstream_port: int, reddit_port: int, callback: str) -> None:
    sys.path.insert(0, str(REPO))
    from gateway.mock_reddit import MockReddit

    reddit = MockReddit()
    reddit.add_client(CLIENT_ID, CLIENT_SECRET, callback)
    runners = []
    for app, port in ((upstream_app(), upstream_port), (reddit.app(), reddit_port)):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


# --- measuring the gateway --------------------------------------------------------


def rss_mib(pid: int) -> tuple[float, float]:
    """The process's resident memory now and at its highest (VmRSS, VmHWM), in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024  # kB
    return fields["VmRSS"], fields["VmHWM"]


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class RssSampler:
    """Samples the gateway's VmRSS every few milliseconds in a thread."""

    pid: int
    peak: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.peak = rss_mib(self.pid)[0]
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        return self.peak

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mib(self.pid)[0])


@dataclass
class Leg:
    name: str
    seconds: float
    rss_peak: float
    cpu: float
    verified: bool


# --- the client side ----------------------------------------------------------------


async def sign_in(client: aiohttp.ClientSession, gateway: URL) -> None:
    """The browser's way: start, consent at the mock reddit, callback."""
    async with client.get(
        gateway / "oauth2/start", params={"rd": "/"}, allow_redirects=False
    ) as start:
        authorize = URL(start.headers["Location"])
    form = {**authorize.query, "username": "bench_user", "authorize": "Allow"}
    async with client.post(
        authorize.with_query(None), data=form, allow_redirects=False
    ) as consent:
        callback = URL(consent.headers["Location"])
    async with client.get(callback, allow_redirects=False) as done:
        if done.status != 302:
            raise SystemExit(f"sign-in failed: {done.status} {await done.text()}")


async def generated(blocks: int, digest: hashlib._Hash) -> AsyncIterator[bytes]:
    for _ in range(blocks):
        digest.update(BLOCK)
        yield BLOCK


async def upload(client: aiohttp.ClientSession, gateway: URL, blocks: int) -> bool:
    sent = hashlib.sha256()
    async with client.put(
        gateway / "upload",
        data=generated(blocks, sent),
        headers={"Content-Length": str(blocks * MiB)},
    ) as answer:
        got = await answer.json()
    return bool(got == {"length": blocks * MiB, "sha256": sent.hexdigest()})


async def download(
    client: aiohttp.ClientSession, gateway: URL, upstream: URL, blocks: int
) -> bool:
    digest = hashlib.sha256()
    length = 0
    async with client.get(gateway / "download", params={"mib": blocks}) as answer:
        async for chunk in answer.content.iter_any():
            digest.update(chunk)
            length += len(chunk)
    async with client.get(upstream / "last-download") as told:
        sent = await told.json()
    return bool(sent == {"length": length, "sha256": digest.hexdigest()})


async def until_serving(url: URL, process: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as client:
        for _ in range(200):
            if process.returncode is not None:
                raise SystemExit(f"{url} exited during start-up")
            with contextlib.suppress(aiohttp.ClientError):
                async with client.get(url) as answer:
                    if answer.status < 500:
                        return
            await asyncio.sleep(0.05)
    raise SystemExit(f"{url} did not start within 10 s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def gateway_env(
    port: int,
    upstream: URL,
    reddit: str,
    session_secret: str,
    workers: int,
    log_level: str = "info",  # the default: an access-log line per request
) -> dict[str, str]:
    """The environment of a benchmark's gateway on 127.0.0.1:port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    public = f"http://127.0.0.1:{port}"
    env.update(
        GATEWAY_SERVER_LISTEN=f"127.0.0.1:{port}",
        GATEWAY_SERVER_PUBLIC_URL=public,
        GATEWAY_SERVER_WORKERS=str(workers),
        GATEWAY_UPSTREAM_URL=str(upstream),
        GATEWAY_REDDIT_CLIENT_ID=CLIENT_ID,
        GATEWAY_REDDIT_CLIENT_SECRET=CLIENT_SECRET,
        GATEWAY_REDDIT_USER_AGENT="bench:reddit-gateway-bench:v1 (by /u/bench)",
        GATEWAY_REDDIT_AUTHORIZE_URL=f"{reddit}/api/v1/authorize",
        GATEWAY_REDDIT_TOKEN_URL=f"{reddit}/api/v1/access_token",
        GATEWAY_REDDIT_REVOKE_URL=f"{reddit}/api/v1/revoke_token",
        GATEWAY_REDDIT_API_URL=reddit,
        GATEWAY_SESSION_SECRET=session_secret,
        GATEWAY_SESSION_COOKIE_SECURE="false",
        GATEWAY_LOG_LEVEL=log_level,
        PYTHONPATH=str(REPO),
    )
    return env


async def run(size_mib: int) -> int:
    gateway_port, upstream_port, reddit_port = free_port(), free_port(), free_port()
    gateway = URL(f"http://127.0.0.1:{gateway_port}")
    upstream = URL(f"http://127.0.0.1:{upstream_port}")
    reddit = f"http://127.0.0.1:{reddit_port}"
    callback = str(gateway / "oauth2/callback")
    # One worker: the process whose memory is read.
    env = gateway_env(
        gateway_port,
        upstream,
        reddit,
        secrets.token_urlsafe(32),
        workers=1,
        log_level="warning",
    )
    logs = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    helper_log = (logs / "helpers.log").open("wb")
    gateway_log = (logs / "gateway.log").open("wb")
    helpers = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--helpers",
        str(upstream_port),
        str(reddit_port),
        callback,
        stdout=helper_log,
        stderr=helper_log,
    )
    proxy = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        env=env,
        cwd=REPO,
        stdout=gateway_log,
        stderr=gateway_log,
    )
    try:
        await until_serving(upstream / "last-download", helpers)
        await until_serving(gateway / "oauth2/ping", proxy)
        return await measure(proxy.pid, gateway, upstream, size_mib, logs)
    finally:
        for process in (proxy, helpers):
            if process.returncode is None:
                process.terminate()
                await process.wait()
        helper_log.close()
        gateway_log.close()


async def measure(
    pid: int, gateway: URL, upstream: URL, size_mib: int, logs: Path
) -> int:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(timeout=timeout, cookie_jar=jar) as client:
        started_rss = rss_mib(pid)[0]
        await sign_in(client, gateway)
        for _ in range(3):  # warm up: the first requests allocate for good
            await upload(client, gateway, 8)
            await download(client, gateway, upstream, 8)
        before = rss_mib(pid)[0]

        legs = []
        sampler = RssSampler(pid)
        for name, transfer in (
            ("upload", lambda: upload(client, gateway, size_mib)),
            ("download", lambda: download(client, gateway, upstream, size_mib)),
        ):
            cpu = cpu_seconds(pid)
            sampler.start()
            began = time.perf_counter()
            verified = await transfer()
            seconds = time.perf_counter() - began
            legs.append(
                Leg(name, seconds, sampler.stop(), cpu_seconds(pid) - cpu, verified)
            )
        after, high_water = rss_mib(pid)

    print(f"gateway pid {pid}; logs in {logs}")
    print(
        f"gateway RSS: at start {started_rss:.1f} MiB, after warm-up {before:.1f} MiB"
    )
    for leg in legs:
        print(
            f"{leg.name:8} {size_mib} MiB in {leg.seconds:6.2f} s = "
            f"{size_mib / leg.seconds:7.1f} MiB/s; gateway RSS peak "
            f"{leg.rss_peak:.1f} MiB ({leg.rss_peak - before:+.1f}); gateway CPU "
            f"{leg.cpu:.2f} s; length and sha256 "
            f"{'match' if leg.verified else 'DIFFER'}"
        )
    print(
        f"gateway RSS after: {after:.1f} MiB ({after - before:+.1f}); "
        f"VmHWM {high_water:.1f} MiB"
    )
    growth = max(leg.rss_peak for leg in legs) - before
    ok = all(leg.verified for leg in legs) and growth < 50
    print(f"peak growth {growth:.1f} MiB: {'PASS' if ok else 'FAIL'} (limit 50 MiB)")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="each way")
    parser.add_argument("--helpers", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.helpers:
        upstream_port, reddit_port, callback = args.helpers
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_helpers(int(upstream_port), int(reddit_port), callback))
        return 0
    return asyncio.run(run(args.size_mib))


if __name__ == "__main__":
    sys.exit(main())
