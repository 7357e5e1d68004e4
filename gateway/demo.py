"""The demo: gateway, mock reddit and a small upstream app, all on localhost."""

from __future__ import annotations

import asyncio
import html
import secrets

from aiohttp import web

from gateway.app import build_app, server_options
from gateway.config import Config, load_config
from gateway.mock_reddit import MockReddit

DEMO_CLIENT_ID = "demo-client-id"
DEMO_CLIENT_SECRET = "demo-client-secret-not-a-real-secret"


def demo_config(port: int, reddit_url: str, upstream_url: str) -> Config:
    """A complete configuration for the demo, validated like any other."""
    public_url = f"http://localhost:{port}"
    # A moderators-only corner, so that the demo can show a refusal too.
    routes = {"access": {"routes": [{"prefix": "/mods", "moderators_of": ["demo"]}]}}
    return load_config(
        None,
        {
            "GATEWAY_SERVER_LISTEN": f"127.0.0.1:{port}",
            "GATEWAY_SERVER_PUBLIC_URL": public_url,
            "GATEWAY_UPSTREAM_URL": upstream_url,
            "GATEWAY_REDDIT_CLIENT_ID": DEMO_CLIENT_ID,
            "GATEWAY_REDDIT_CLIENT_SECRET": DEMO_CLIENT_SECRET,
            "GATEWAY_REDDIT_USER_AGENT": "demo:reddit-gateway-demo:v1 (by /u/demo)",
            "GATEWAY_REDDIT_AUTHORIZE_URL": f"{reddit_url}/api/v1/authorize",
            "GATEWAY_REDDIT_TOKEN_URL": f"{reddit_url}/api/v1/access_token",
            "GATEWAY_REDDIT_REVOKE_URL": f"{reddit_url}/api/v1/revoke_token",
            "GATEWAY_REDDIT_API_URL": reddit_url,
            "GATEWAY_SESSION_SECRET": secrets.token_urlsafe(32),
            "GATEWAY_SESSION_COOKIE_SECURE": "false",
        },
        document=routes,
    )


def demo_upstream() -> web.Application:
    """An app that shows who is signed in and every header it received."""

    async def show(request: web.Request) -> web.Response:
        user = request.headers.get("X-Reddit-User", "")
        rows = "".join(
            f'<tr class="{_row_class(name)}"><th>{html.escape(name)}</th>'
            f"<td>{html.escape(value)}</td></tr>"
            for name, value in request.headers.items()
        )
        body = _UPSTREAM_PAGE.format(
            user=html.escape(user) or "(nobody)",
            path=html.escape(request.raw_path),
            rows=rows,
        )
        return web.Response(text=body, content_type="text/html")

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"user": request.headers.get("X-Reddit-User")})

    app = web.Application()
    app.router.add_get("/api/whoami", whoami)
    app.router.add_route("*", "/{tail:.*}", show)
    return app


def _row_class(name: str) -> str:
    return "identity" if name.lower() == "x-reddit-user" else ""


async def run_demo(port: int) -> None:
    mock = MockReddit()
    reddit_url = f"http://localhost:{port + 1}"
    mock.add_client(
        DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, f"http://localhost:{port}/oauth2/callback"
    )
    upstream_url = f"http://127.0.0.1:{port + 2}"
    config = demo_config(port, reddit_url, upstream_url)

    runners: list[web.AppRunner] = []
    try:

        async def serve(app: web.Application, host: str, app_port: int) -> None:
            runner = web.AppRunner(app, **server_options())
            runners.append(runner)
            await runner.setup()
            await web.TCPSite(runner, host, app_port).start()

        await serve(mock.app(), "localhost", port + 1)
        await serve(demo_upstream(), "127.0.0.1", port + 2)
        await serve(await build_app(config), "localhost", port)

        print(
            f"reddit-gateway demo: open http://localhost:{port}/ in a browser.\n"
            f"  mock reddit: {reddit_url}  (type any username on its consent page)\n"
            f"  demo app:    {upstream_url}  (reached only through the gateway)\n"
            "Press Ctrl+C to stop.",
            flush=True,
        )
        await asyncio.Event().wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


_UPSTREAM_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Demo app</title><style>
body {{ font: 16px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 48rem;
  padding: 0 1rem; color: #1a1a1b; }}
h1 {{ font-size: 1.5rem; }} .user {{ color: #d93a00; }}
table {{ border-collapse: collapse; width: 100%; font-size: .9rem; }}
th, td {{ text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #ddd;
  vertical-align: top; overflow-wrap: anywhere; }}
tr.identity {{ background: #fff4ef; font-weight: 600; }}
th {{ white-space: nowrap; width: 1%; }}
button {{ font: inherit; padding: .4rem 1rem; border-radius: 999px;
  border: 1px solid #d93a00; background: #d93a00; color: #fff; cursor: pointer; }}
</style></head><body>
<h1>Hello, <span class="user" id="user">{user}</span></h1>
<p>This page is the demo <em>upstream app</em>. It never saw an OAuth token: the
gateway told it who you are in the <code>X-Reddit-User</code> header.
You asked for <code>{path}</code>.</p>
<p>Try <a href="/mods/">the moderators' corner</a>: the gateway lets in only
moderators of r/demo (say so under "More about this account" on the consent
page), and shows everyone else why not.</p>
<form method="post" action="/oauth2/sign_out"><button type="submit">Sign out</button>
</form>
<h2>Headers the app received</h2><table>{rows}</table></body></html>
"""
