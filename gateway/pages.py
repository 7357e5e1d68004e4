"""The few HTML pages the gateway shows people, and the JSON errors for API clients."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

# SECURITY: clickjacking and injected content: gateway pages load nothing from
# anywhere, run no script and cannot be framed.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_STYLE = """
:root { color-scheme: light dark; --accent: #d93a00; }
* { box-sizing: border-box; }
body { margin: 0; min-height: 100vh; display: grid; place-items: center;
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  background: #f6f7f8; color: #1a1a1b; }
main { max-width: 32rem; width: calc(100% - 2rem); background: #fff;
  border-radius: 12px; padding: 2rem; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
h1 { font-size: 1.35rem; margin: 0 0 .75rem; }
p { margin: 0 0 1rem; }
.code { font-size: .8rem; text-transform: uppercase; letter-spacing: .08em;
  color: var(--accent); margin-bottom: .25rem; font-weight: 600; }
.actions { display: flex; flex-wrap: wrap; gap: .75rem; margin-top: 1.5rem; }
.actions a, .actions button { font: inherit; text-decoration: none; cursor: pointer;
  padding: .55rem 1.1rem; border-radius: 999px; border: 1px solid var(--accent); }
.actions .primary { background: var(--accent); color: #fff; }
.actions .secondary { background: transparent; color: var(--accent); }
.actions form { margin: 0; }
a:focus-visible, button:focus-visible { outline: 3px solid #0079d3;
  outline-offset: 2px; }
@media (prefers-color-scheme: dark) {
  body { background: #0b1416; color: #d7dadc; }
  main { background: #1a282d; box-shadow: none; }
  .actions .secondary { color: #ff8b60; border-color: #ff8b60; }
}
"""


@dataclass(frozen=True, slots=True)
class Action:
    label: str
    href: str
    primary: bool = False
    post: bool = False  # a form button instead of a link


def page(
    status: int, title: str, message: str, actions: Sequence[Action] = ()
) -> web.Response:
    """A small, self-contained page saying what happened and what to do next."""
    buttons = "".join(_action_html(action) for action in actions)
    label = f'<div class="code">Error {status}</div>' if status >= 400 else ""
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{label}"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>"
        f'<div class="actions">{buttons}</div></main></body></html>'
    )
    return web.Response(
        status=status,
        text=body,
        content_type="text/html",
        headers=PAGE_HEADERS,
    )


def _action_html(action: Action) -> str:
    kind = "primary" if action.primary else "secondary"
    label = html.escape(action.label)
    href = html.escape(action.href, quote=True)
    if action.post:
        return (
            f'<form method="post" action="{href}">'
            f'<button class="{kind}" type="submit">{label}</button></form>'
        )
    return f'<a class="{kind}" href="{href}">{label}</a>'


def json_error(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The answer API clients get: a small JSON body, never a redirect."""
    return web.json_response(
        {"error": error, "message": message},
        status=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )
