"""Runs the gateway: one process, or a supervisor and `server.workers` processes
that share the port. SIGTERM (or SIGINT) drains and stops; SIGHUP reloads the
access rules and the upstream.

Each worker keeps its own memory of used login states, of cookie sessions signed
out, and of token refreshes under way. A login may start on one worker and finish
on another (its state travels in its cookie). A callback replayed to another
worker passes its state check there but fails at reddit, whose codes are
single-use; a copy of a signed-out cookie session is refused only by the worker
that served the sign-out; and two workers may each refresh one session's token.
The redis session store shares the last two across workers, as across replicas.

With metrics.listen set, each worker serves its own counts on a Unix socket in a
directory (0700) that the supervisor makes, and the supervisor serves their sum
at metrics.listen. A worker that dies takes its counts with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace

from aiohttp import web

from gateway.app import build_app, server_options
from gateway.config import Config, load_config
from gateway.errors import ConfigError
from gateway.log import flush_logs, flush_logs_now_and_then
from gateway.metrics import UNIX_PREFIX, serve_summed
from gateway.reloadable import RELOADABLE, check_reloadable

log = logging.getLogger("gateway")

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# What the supervisor waits for; its workers start with these blocked, too.
_SUPERVISOR_SIGNALS = STOP_SIGNALS | {signal.SIGHUP, signal.SIGCHLD}
_PARENT_CHECK = 1.0  # seconds between a worker's checks that its supervisor lives


def event_loop() -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """uvloop's event loop when it is installed, else asyncio's own."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return "asyncio", asyncio.new_event_loop
    return "uvloop", uvloop.new_event_loop


def serve(config: Config, config_path: str | None) -> int:
    """Serve until SIGTERM or SIGINT; the exit status."""
    if config.server.workers == 1:
        return Worker(config, config_path).run()
    return Supervisor(config, config_path).run()


class Worker:
    """One process serving the port until told to stop.

    A stop closes the listening socket, lets requests in flight finish for up to
    `server.shutdown_timeout` and closes websockets with 1001 (going away).
    """

    def __init__(
        self,
        config: Config,
        config_path: str | None,
        *,
        supervisor: int | None = None,
        ready: Callable[[], None] = lambda: None,
        metrics_socket: str = "",
    ) -> None:
        """``supervisor``: the pid whose end stops this worker too; ``ready``
        is called once the port is served; ``metrics_socket``: where to serve
        metrics instead of metrics.listen."""
        self._config = config
        self._metrics_socket = metrics_socket
        self._path = config_path
        self._supervisor = supervisor
        self._ready = ready
        self._app: web.Application | None = None
        self._reload_pending = False
        self._stop = asyncio.Event()

    def run(self) -> int:
        _, new_loop = event_loop()
        with asyncio.Runner(loop_factory=new_loop) as runner:
            return runner.run(self._serve())

    async def _serve(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._hangup)
        # Forked by a supervisor, these came blocked; pending ones arrive now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SUPERVISOR_SIGNALS)

        server = self._config.server
        try:
            app = await build_app(
                self._config,
                metrics_listen=self._metrics_socket
                and UNIX_PREFIX + self._metrics_socket,
            )
        except ConfigError as exc:
            log.error("configuration error: %s", exc)
            return 2
        runner = web.AppRunner(
            app,
            handle_signals=False,
            shutdown_timeout=server.shutdown_timeout,
            **server_options(),
        )
        try:
            try:
                await runner.setup()
                site = web.TCPSite(
                    runner,
                    server.listen_host,
                    server.listen_port,
                    reuse_port=True if self._supervisor is not None else None,
                )
                await site.start()
            except OSError as exc:
                log.error("cannot listen on %s: %s", server.listen_port, exc.strerror)
                return 1
            self._app = app
            log.info(
                "worker %s serving on %s:%s",
                os.getpid(),
                server.listen_host,
                server.listen_port,
            )
            self._ready()
            if self._reload_pending:
                self._reload()
            async with asyncio.TaskGroup() as tasks:
                watch = tasks.create_task(self._watch_supervisor())
                flush = tasks.create_task(flush_logs_now_and_then())
                await self._stop.wait()
                watch.cancel()
                flush.cancel()
            log.info(
                "worker %s stopping: requests in flight have %s s to finish",
                os.getpid(),
                server.shutdown_timeout,
            )
        finally:
            await runner.cleanup()
        return 0

    def _hangup(self) -> None:
        if self._app is None:
            self._reload_pending = True  # once serving
            return
        self._reload()

    def _reload(self) -> None:
        assert self._app is not None
        try:
            loaded = load_config(self._path)
            needs_restart = self._app[RELOADABLE].reload(loaded)
        except ConfigError as exc:
            log.error("config_reload_refused %s; the running configuration stays", exc)
            return
        log.info("config_reloaded access and upstream from %s", self._path or "env")
        if needs_restart:
            log.warning(
                "config_needs_restart %s changed; a restart puts that in force",
                ", ".join(needs_restart),
            )

    async def _watch_supervisor(self) -> None:
        """A worker whose supervisor is gone (killed outright) stops too."""
        if self._supervisor is None:
            return
        # No event tells a process that its parent died: look now and then.
        while os.getppid() == self._supervisor:  # noqa: ASYNC110
            await asyncio.sleep(_PARENT_CHECK)
        log.error("worker %s: its supervisor is gone; stopping", os.getpid())
        self._stop.set()


class Supervisor:
    """Starts `server.workers` workers on one port (SO_REUSEPORT) and tends them.

    It passes SIGTERM, SIGINT and (after checking the new config) SIGHUP on to
    every worker, replaces a worker that dies once serving, and exits when all
    have exited: non-zero if one failed to start, which stops the others.
    """

    def __init__(self, config: Config, config_path: str | None) -> None:
        self._config = config
        self._path = config_path
        self._workers: dict[int, bool] = {}  # pid -> serving yet
        # Each worker writes its pid here once it serves.
        self._ready_read, self._ready_write = os.pipe()
        os.set_blocking(self._ready_read, False)
        self._pid = os.getpid()
        self._metrics_dir = ""  # the workers' metrics sockets, if metrics are on

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
        stop_metrics: Callable[[], None] | None = None
        if self._config.metrics.listen:
            self._metrics_dir = tempfile.mkdtemp(prefix="reddit-gateway-metrics-")
            try:
                stop_metrics = serve_summed(
                    self._config.metrics.listen, self._metrics_dir
                )
            except OSError as exc:
                log.error("cannot serve metrics: %s", exc)
                shutil.rmtree(self._metrics_dir, ignore_errors=True)
                return 1
        try:
            return self._tend()
        finally:
            if stop_metrics is not None:
                stop_metrics()
            if self._metrics_dir:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _tend(self) -> int:
        for _ in range(self._config.server.workers):
            self._start_worker()

        status = 0
        stopping = False
        while self._workers:
            signum = signal.sigwaitinfo(_SUPERVISOR_SIGNALS).si_signo
            if signum in STOP_SIGNALS and not stopping:
                log.info("stopping %s workers", len(self._workers))
                stopping = True
                self._signal_all(signal.SIGTERM)
            elif signum == signal.SIGHUP and not stopping:
                self._reload()
            elif signum == signal.SIGCHLD:
                for pid, code, served in self._reap():
                    if stopping:
                        status = status or (1 if code else 0)
                    elif not served:
                        log.error("worker %s failed to start (exit %s)", pid, code)
                        status, stopping = 1, True
                        self._signal_all(signal.SIGTERM)
                    else:
                        log.error("worker %s exited (%s); starting another", pid, code)
                        self._start_worker()
        return status

    def _start_worker(self) -> None:
        pid = os.fork()
        if pid:
            self._workers[pid] = False
            return

        code = 1
        try:
            os.close(self._ready_read)
            worker = Worker(
                self._config,
                self._path,
                supervisor=self._pid,
                ready=self._tell_ready,
                metrics_socket=self._metrics_socket(os.getpid()),
            )
            code = worker.run()
        except BaseException:
            log.exception("worker %s failed", os.getpid())
        finally:
            flush_logs()  # os._exit skips logging's own flush at exit
            sys.stderr.flush()
            os._exit(code)

    def _metrics_socket(self, pid: int) -> str:
        if not self._metrics_dir:
            return ""
        return os.path.join(self._metrics_dir, f"{pid}.sock")

    def _tell_ready(self) -> None:
        """In a worker: tell the supervisor that it serves."""
        os.write(self._ready_write, b"%d\n" % os.getpid())

    def _reap(self) -> list[tuple[int, int, bool]]:
        """The workers that exited: pid, exit status, whether they had served."""
        self._note_ready()
        ended: list[tuple[int, int, bool]] = []
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in self._workers:  # else an orphan adopted as PID 1: reaped
                served = self._workers.pop(pid)
                if self._metrics_dir:  # left behind by a worker killed outright
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._metrics_socket(pid))
                ended.append((pid, os.waitstatus_to_exitcode(wait_status), served))
        return ended

    def _note_ready(self) -> None:
        written = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._ready_read, 4096):
                written += chunk
        for pid in map(int, written.split()):
            if pid in self._workers:
                self._workers[pid] = True

    def _reload(self) -> None:
        """Check the new config once here, so a bad one is reported once."""
        try:
            loaded = load_config(self._path)
            check_reloadable(self._config, loaded)
        except ConfigError as exc:
            log.error("config_reload_refused %s; the running configuration stays", exc)
            return
        # What a worker started from now on begins with.
        self._config = replace(
            self._config, access=loaded.access, upstream=loaded.upstream
        )
        self._signal_all(signal.SIGHUP)

    def _signal_all(self, signum: signal.Signals) -> None:
        for pid in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
