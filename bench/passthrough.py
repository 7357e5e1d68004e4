"""A bare aiohttp pass-through proxy: the framework's floor for bench/compare.py.

No sessions, no rules, no header scrubbing beyond hop-by-hop: what any proxy on
aiohttp's client and server must do at the least. Bodies in one write when they
came whole with the headers, else streamed with iter_any().

    python bench/passthrough.py PORT UPSTREAM_URL
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
CLIENT = web.AppKey("client", aiohttp.ClientSession)


def passthrough_app(upstream: str) -> web.Application:
    prefix = upstream.rstrip("/")

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        client = request.app[CLIENT]
        async with client.request(
            request.method,
            URL(prefix + request.raw_path, encoded=True),
            headers=headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False,
        ) as answer:
            out = CIMultiDict(
                (k, v) for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP
            )
            if answer.content.is_eof():
                return web.Response(
                    status=answer.status,
                    headers=out,
                    body=answer.content.read_nowait(),
                )
            response = web.StreamResponse(status=answer.status, headers=out)
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def client_context(app: web.Application):  # type: ignore[no-untyped-def]
        app[CLIENT] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )
        yield
        await app[CLIENT].close()

    app = web.Application()
    app.cleanup_ctx.append(client_context)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> int:
    port, upstream = int(sys.argv[1]), sys.argv[2]
    web.run_app(
        passthrough_app(upstream),
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        loop=asyncio.new_event_loop(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
