"""The container's HEALTHCHECK: asks the running gateway's /oauth2/ping.

`python -m gateway.healthcheck` reads the configuration exactly as `serve` does
(GATEWAY_CONFIG and GATEWAY_* variables), so the probe follows `server.listen`
wherever it was set, and exits 0 when the gateway answers, 1 otherwise.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from gateway.config import ServerConfig, load_config
from gateway.errors import ConfigError

TIMEOUT = 2.0  # seconds; the Dockerfile gives the whole check 3


def ping_url(server: ServerConfig) -> str:
    """Where to reach the gateway from inside its own container."""
    host = server.listen_host
    if host == "0.0.0.0":  # noqa: S104 (every IPv4 address: loopback is one)
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{server.listen_port}/oauth2/ping"


def main() -> int:
    try:
        config = load_config(os.environ.get("GATEWAY_CONFIG"))
    except ConfigError as exc:
        print(f"reddit-gateway healthcheck: {exc}", file=sys.stderr)
        return 1

    url = ping_url(config.server)
    # A container's HTTP_PROXY must not carry a probe of its own loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT) as answer:
            healthy = answer.status == 200 and answer.read(16) == b"OK"
    except (urllib.error.URLError, OSError) as exc:
        print(f"reddit-gateway healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
