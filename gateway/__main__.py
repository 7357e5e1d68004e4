"""Command line: parse arguments, load the configuration, run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import sys

from aiohttp import web

from gateway import __version__
from gateway.app import build_app
from gateway.config import Config, describe, load_config
from gateway.errors import ConfigError
from gateway.log import access_log_options, setup_logging

log = logging.getLogger("gateway")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="reddit-gateway",
        description="An identity-aware reverse proxy that signs people in with reddit.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    check = commands.add_parser("check", help="validate the config and print it")
    for command in (serve, check):
        command.add_argument(
            "--config",
            default=os.environ.get("GATEWAY_CONFIG"),
            help="the TOML file (default: $GATEWAY_CONFIG; without one, the "
            "environment alone configures the gateway)",
        )
    demo = commands.add_parser(
        "demo", help="gateway + mock reddit + a demo app on localhost, no setup"
    )
    demo.add_argument("--port", type=int, default=65010)
    commands.add_parser("secret", help="print a new random session secret")

    args = parser.parse_args(argv)
    if args.command == "secret":
        print(secrets.token_urlsafe(32))
        return 0
    if args.command == "demo":
        from gateway.demo import run_demo

        setup_logging("info", "text")
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_demo(args.port))
        return 0

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"reddit-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(describe(config), end="")
        print("# configuration OK", file=sys.stderr)
        return 0
    return run_gateway(config)


def run_gateway(config: Config) -> int:
    setup_logging(config.log.level, config.log.format)
    log.info(
        "reddit-gateway %s listening on %s:%s for %s, upstream %s",
        __version__,
        config.server.listen_host,
        config.server.listen_port,
        config.server.public_url,
        config.upstream.url,
    )
    web.run_app(
        build_app(config),
        host=config.server.listen_host,
        port=config.server.listen_port,
        print=None,
        **access_log_options(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
