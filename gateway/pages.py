"""The few HTML pages the gateway shows people, and the JSON errors for API clients."""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

# One stylesheet for every page, inline so that a page needs nothing else.
# Contrast on the card (WCAG 2.1 AA asks 4.5:1 for text), light / dark: text
# 17.4 / 12.1, muted text 5.3 / 7.1, accent text and buttons 4.6 / 6.6 (7.6 for
# the dark button's label), focus ring 6.4 / 8.1.
_STYLE = """
:root { color-scheme: light dark; --bg: #f6f7f8; --card: #fff; --text: #1a1a1b;
  --muted: #576f76; --accent: #d93a00; --on-accent: #fff; --line: #dfe3e6;
  --focus: #0061a8; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
body { margin: 0; min-height: 100vh; min-height: 100dvh; display: grid;
  place-items: center; padding: 1rem; background: var(--bg); color: var(--text);
  font: 1rem/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { width: 100%; max-width: 34rem; background: var(--card);
  border: 1px solid var(--line); border-radius: 12px; padding: 2rem;
  box-shadow: 0 1px 3px rgba(0, 0, 0, .08); overflow-wrap: anywhere; }
.status { margin: 0 0 .35rem; font-size: .8125rem; font-weight: 600;
  letter-spacing: .06em; text-transform: uppercase; color: var(--accent); }
h1 { font-size: 1.5rem; line-height: 1.25; margin: 0 0 1rem; }
p { margin: 0 0 .75rem; }
.note { margin: 1.5rem 0 0; padding-top: 1rem; border-top: 1px solid var(--line);
  font-size: .875rem; color: var(--muted); }
.actions { display: flex; flex-wrap: wrap; gap: .75rem; margin-top: 1.5rem; }
.actions form { margin: 0; }
.actions a, .actions button { display: inline-block; font: inherit;
  font-weight: 600; line-height: 1.25; text-decoration: none; cursor: pointer;
  padding: .7rem 1.25rem; min-height: 2.75rem; border-radius: 999px;
  border: 2px solid var(--accent); }
.actions .primary { background: var(--accent); color: var(--on-accent); }
.actions .secondary { background: transparent; color: var(--accent); }
.actions a:hover, .actions button:hover { text-decoration: underline; }
a:focus-visible, button:focus-visible { outline: 3px solid var(--focus);
  outline-offset: 3px; }
@media (max-width: 30rem) {
  body { place-items: start stretch; padding: 1.5rem .75rem; }
  main { padding: 1.5rem 1.25rem; }
  .actions { flex-direction: column; }
  .actions a, .actions button { width: 100%; text-align: center; }
}
@media (prefers-color-scheme: dark) {
  :root { --bg: #0b1416; --card: #1a282d; --text: #e3e6e8; --muted: #a8b3b8;
    --accent: #ff8b60; --on-accent: #1a1a1b; --line: #2f4148; --focus: #7cc4ff; }
  main { box-shadow: none; }
}
@media (forced-colors: active) {
  .actions a, .actions button { border-color: ButtonText; }
}
"""

_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

# SECURITY: clickjacking and injected content: gateway pages load nothing from
# anywhere, run no script, apply only their own stylesheet (by its hash), submit
# forms only to the gateway, and cannot be framed.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class Action:
    label: str
    href: str
    primary: bool = False
    post: bool = False  # a form button instead of a link


def page(
    status: int,
    title: str,
    message: str | Sequence[str],
    actions: Sequence[Action] = (),
    *,
    note: str = "",
) -> web.Response:
    """A small, self-contained page saying what happened and what to do next.

    `message` is one paragraph or several; `note` is set apart in smaller type,
    for whoever runs the gateway rather than for the visitor.
    """
    paragraphs = [message] if isinstance(message, str) else list(message)
    text = "".join(f"<p>{html.escape(line)}</p>" for line in paragraphs)
    status_line = f'<p class="status">Error {status}</p>' if status >= 400 else ""
    buttons = "".join(_action_html(action) for action in actions)
    footer = f'<p class="note">{html.escape(note)}</p>' if note else ""
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{status_line}<h1>{html.escape(title)}</h1>{text}"
        f'<div class="actions">{buttons}</div>{footer}</main></body></html>'
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
