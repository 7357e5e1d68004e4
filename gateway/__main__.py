"""Command line: parse arguments, load the configuration, run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import secrets
import sys
import time

from gateway import __version__
from gateway.config import Config, config_warnings, describe, load_config
from gateway.errors import ConfigError, SessionStoreUnavailable
from gateway.log import setup_logging
from gateway.server import event_loop, serve

log = logging.getLogger("gateway")
_USERNAME = re.compile(r"[A-Za-z0-9_-]{3,20}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="reddit-gateway",
        description="An identity-aware reverse proxy that signs people in with reddit.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    check = commands.add_parser("check", help="validate the config and print it")
    sessions = commands.add_parser(
        "sessions", help="manage signed-in sessions (needs the redis store)"
    )
    revoke = sessions.add_subparsers(dest="action", required=True).add_parser(
        "revoke", help="end every session of one user, on every replica"
    )
    revoke.add_argument("--user", required=True, help="the reddit username")
    for command in (serve, check, revoke):
        command.add_argument(
            "--config",
            default=os.environ.get("GATEWAY_CONFIG"),
            help="the TOML file (default: $GATEWAY_CONFIG; without one, the "
            "environment alone configures the gateway)",
        )
    demo = commands.add_parser(
        "demo", help="gateway + mock reddit + a demo app on localhost, no setup"
    )
    demo.add_argument(
        "--port",
        type=_demo_port,
        default=65010,
        help="the gateway's port; the mock reddit and the demo app take the next two",
    )
    commands.add_parser("secret", help="print a new random session secret")

    args = parser.parse_args(argv)
    if args.command == "secret":
        print(secrets.token_urlsafe(32))
        return 0
    if args.command == "demo":
        from gateway.demo import run_demo

        setup_logging("info", "text")
        try:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(run_demo(args.port))
        except OSError as exc:
            print(f"reddit-gateway: cannot serve the demo: {exc}", file=sys.stderr)
            return 1
        return 0

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"reddit-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(describe(config), end="")
        for warning in config_warnings(config):
            print(f"# warning: {warning}", file=sys.stderr)
        print("# configuration OK", file=sys.stderr)
        return 0
    if args.command == "sessions":
        return revoke_sessions(config, args.user)
    return run_gateway(config, args.config)


def revoke_sessions(config: Config, user: str) -> int:
    """`sessions revoke --user NAME`: end every session of that user everywhere."""
    if config.session.store != "redis":
        print(
            'reddit-gateway: sessions revoke needs session.store = "redis"; with '
            "cookie sessions, rotate session.secret to end everyone's sessions",
            file=sys.stderr,
        )
        return 2
    if not _USERNAME.fullmatch(user):
        print(f"reddit-gateway: {user!r} is not a reddit username", file=sys.stderr)
        return 2

    try:
        ended = asyncio.run(_revoke_user(config, user))
    except SessionStoreUnavailable as exc:
        print(
            f"reddit-gateway: the session store did not answer ({exc.reason})",
            file=sys.stderr,
        )
        return 1
    print(f"ended {ended} session{'' if ended == 1 else 's'} of u/{user}")
    return 0


async def _revoke_user(config: Config, user: str) -> int:
    from gateway.redis_store import RedisStore  # redis loads only when used

    store = RedisStore.from_config(config.session, time.time)
    try:
        return await store.revoke_user(user)
    finally:
        await store.close()


def run_gateway(config: Config, config_path: str | None = None) -> int:
    """`serve`: run until SIGTERM; SIGHUP reloads `config_path` (see server.py)."""
    setup_logging(config.log.level, config.log.format)
    log.info(
        "reddit-gateway %s starting on %s:%s for %s, upstream %s, %s worker%s, "
        "%s event loop",
        __version__,
        config.server.listen_host,
        config.server.listen_port,
        config.server.public_url,
        config.upstream.url,
        config.server.workers,
        "" if config.server.workers == 1 else "s",
        event_loop()[0],
    )
    return serve(config, config_path)


def _demo_port(text: str) -> int:
    port = int(text)
    if not 1024 <= port <= 65533:
        raise argparse.ArgumentTypeError("choose a port from 1024 to 65533")
    return port


if __name__ == "__main__":
    sys.exit(main())
