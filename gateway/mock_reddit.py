"""An offline reddit for the demo and the tests, faithful to reddit's OAuth2 quirks."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import html
import json
import secrets
import string
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

CODE_TTL = 600.0  # reddit's authorization codes live ten minutes
_SCOPE_CATALOGUE = """account creddits edit flair history identity livemanage modconfig
modcontributors modflair modlog modmail modothers modposts modself modtraffic modwiki
mysubreddits privatemessages read report save structuredstyles submit subscribe vote
wikiedit wikiread *"""
KNOWN_SCOPES = frozenset(_SCOPE_CATALOGUE.split())
DEFAULT_AGENT_PREFIXES = (
    "python-requests/",
    "aiohttp/",
    "python/",
    "python-urllib",
    "curl/",
)
_SCOPE_TEXT = {
    "identity": "Know your username, account age and karma.",
    "mysubreddits": "See the communities you subscribe to, contribute to and moderate.",
    "read": "Read posts and comments as you.",
}
_BASE36 = string.digits + string.ascii_lowercase
_FORM_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One request the mock received; codes and tokens are kept (tests only)."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    query: dict[str, str]
    form: dict[str, str]


@dataclass(slots=True)
class _Client:
    secret: str
    redirect_uri: str


@dataclass(slots=True)
class _User:
    name: str
    id: str
    fields: dict[str, Any]


@dataclass(slots=True)
class _Code:
    client_id: str
    redirect_uri: str
    user: str
    scopes: tuple[str, ...]
    duration: str
    issued_at: float
    used: bool = False
    minted: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Access:
    client_id: str
    user: str | None  # None for an app-only (client_credentials) token
    scopes: tuple[str, ...]
    expires_at: float


@dataclass(slots=True)
class _Refresh:
    client_id: str
    user: str
    scopes: tuple[str, ...]
    minted: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Fault:
    status: int | None
    body: bytes
    content_type: str
    delay: float
    headers: Mapping[str, str]


class MockReddit:
    """www.reddit.com and oauth.reddit.com in one aiohttp application."""

    def __init__(
        self, *, clock: Callable[[], float] = time.time, expires_in: int = 86400
    ) -> None:
        self.calls: list[RecordedCall] = []
        self.expires_in = expires_in
        self._clock = clock
        self._clients: dict[str, _Client] = {}
        self._users: dict[str, _User] = {}
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._faults: dict[str, deque[_Fault]] = {}

    def add_client(self, client_id: str, client_secret: str, redirect_uri: str) -> None:
        self._clients[client_id] = _Client(client_secret, redirect_uri)

    def add_user(self, name: str, **fields: Any) -> None:
        """Seed an account; fields override /me, me_override replaces its whole body."""
        known = self._users.get(name.casefold())
        if known is not None:
            known.fields.update(fields)
            return
        user_id = str(fields.get("id") or _random_id())
        self._users[name.casefold()] = _User(name, user_id, dict(fields))

    def fail_next(
        self,
        path: str,
        *,
        status: int | None = 500,
        body: str | bytes | Mapping[str, Any] = "",
        content_type: str | None = None,
        delay: float = 0.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next request to path with this; status None only delays it."""
        if isinstance(body, Mapping):
            raw, default_type = json.dumps(body).encode(), "application/json"
        else:
            raw = body.encode() if isinstance(body, str) else body
            default_type = "text/html; charset=utf-8"
        fault = _Fault(status, raw, content_type or default_type, delay, headers or {})
        self._faults.setdefault(path, deque()).append(fault)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record_and_inject])
        for path in ("/api/v1/authorize", "/api/v1/authorize.compact"):
            app.router.add_get(path, self._consent_page)
            app.router.add_post(path, self._consent_answer)
        app.router.add_post("/api/v1/access_token", self._token)
        app.router.add_post("/api/v1/revoke_token", self._revoke)
        app.router.add_get("/api/v1/me", self._me)
        return app

    @web.middleware
    async def _record_and_inject(
        self, request: web.Request, handler: Callable[..., Any]
    ) -> web.StreamResponse:
        form: dict[str, str] = {}
        if request.method == "POST" and request.content_type == _FORM_TYPE:
            form = _first_values(await request.post())
        self.calls.append(
            RecordedCall(
                request.method,
                request.path,
                CIMultiDictProxy(CIMultiDict(request.headers)),
                _first_values(request.query),
                form,
            )
        )

        queue = self._faults.get(request.path)
        fault = queue.popleft() if queue else None
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.status is not None:
            headers = CIMultiDict(fault.headers)
            headers.setdefault("Content-Type", fault.content_type)
            return web.Response(status=fault.status, body=fault.body, headers=headers)

        response: web.StreamResponse = await handler(request)
        return response

    # --- www.reddit.com: the consent page -----------------------------------------

    async def _consent_page(self, request: web.Request) -> web.Response:
        params = _first_values(request.query)
        problem = self._authorize_problem(params)
        if problem:
            return _refusal_page(problem)
        return _consent(request.path, params, "", 200)

    async def _consent_answer(self, request: web.Request) -> web.Response:
        params = _first_values(await request.post())
        problem = self._authorize_problem(params)
        if problem:
            return _refusal_page(problem)

        state, redirect_uri = params["state"], params["redirect_uri"]
        if params.get("authorize") != "Allow":
            raise _redirect(redirect_uri, state=state, error="access_denied")
        typed = params.get("username", "")
        if not typed:
            return _consent(request.path, params, "Type a username first.", 400)

        # The mock signs in whoever is typed, even an invalid name, so the gateway's
        # own name checks can be exercised end to end.
        if typed.casefold() not in self._users:
            self.add_user(typed)
        code = secrets.token_urlsafe(22)
        self._codes[code] = _Code(
            client_id=params["client_id"],
            redirect_uri=redirect_uri,
            user=typed.casefold(),
            scopes=_parse_scope(params["scope"]),
            duration=params.get("duration") or "temporary",
            issued_at=self._clock(),
        )
        raise _redirect(redirect_uri, state=state, code=code)

    def _authorize_problem(self, params: Mapping[str, str]) -> str | None:
        client = self._clients.get(params.get("client_id", ""))
        scopes = _parse_scope(params.get("scope", ""))
        if client is None:
            return "invalid client id"
        if params.get("redirect_uri") != client.redirect_uri:
            return "invalid redirect_uri parameter"
        if params.get("response_type") != "code":
            return "invalid response type"
        if not scopes or not KNOWN_SCOPES.issuperset(scopes):
            return "invalid scope requested"
        if not params.get("state"):
            return "state parameter is required"
        if params.get("duration", "temporary") not in ("temporary", "permanent"):
            return "invalid duration"
        return None

    # --- www.reddit.com: tokens -------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        client_id = self._authenticate(request)
        if isinstance(client_id, web.Response):
            return client_id
        form = _first_values(await request.post())

        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._grant_code(client_id, form)
        if grant_type == "refresh_token":
            return self._grant_refresh(client_id, form)
        if grant_type == "client_credentials":
            token = self._mint(client_id, None, ("*",))
            return web.json_response(self._token_body(token, ("*",)))
        if grant_type == "password":
            detail = "Only script apps may use password auth"
            return _error_200("unauthorized_client", error_description=detail)
        return _error_200("unsupported_grant_type")

    def _grant_code(self, client_id: str, form: Mapping[str, str]) -> web.Response:
        if not form.get("code") or not form.get("redirect_uri"):
            return _error_200("invalid_request")
        code = self._codes.get(form["code"])
        if code is None:
            return _error_200("invalid_grant")
        if code.used:
            # SECURITY: authorization code replay: a second use kills the first tokens.
            for token in code.minted:
                self._revoke_token(token)
            return _error_200("invalid_grant")
        if self._clock() - code.issued_at >= CODE_TTL:
            return _error_200("invalid_grant")
        if code.client_id != client_id or code.redirect_uri != form["redirect_uri"]:
            return _error_200("invalid_grant")

        code.used = True
        token = self._mint(client_id, code.user, code.scopes)
        code.minted.add(token)
        body = self._token_body(token, code.scopes)
        if code.duration == "permanent":
            refresh = f"{secrets.randbelow(10**12):012d}-{secrets.token_urlsafe(22)}"
            self._refresh[refresh] = _Refresh(
                client_id, code.user, code.scopes, {token}
            )
            code.minted.add(refresh)
            body["refresh_token"] = refresh
        return web.json_response(body)

    def _grant_refresh(self, client_id: str, form: Mapping[str, str]) -> web.Response:
        value = form.get("refresh_token", "")
        refresh = self._refresh.get(value)
        if refresh is None or refresh.client_id != client_id:
            return web.json_response({"error": "invalid_request"}, status=400)

        token = self._mint(client_id, refresh.user, refresh.scopes)
        refresh.minted.add(token)
        return web.json_response(
            {**self._token_body(token, refresh.scopes), "refresh_token": value}
        )

    async def _revoke(self, request: web.Request) -> web.Response:
        client_id = self._authenticate(request)
        if isinstance(client_id, web.Response):
            return client_id
        token = _first_values(await request.post()).get("token", "")

        owner = self._access.get(token) or self._refresh.get(token)
        if owner is not None and owner.client_id != client_id:
            return web.json_response({"error": "unauthorized_client"}, status=400)
        self._revoke_token(token)
        return web.Response(status=200)

    def _authenticate(self, request: web.Request) -> str | web.Response:
        """The client id from HTTP Basic auth, or the answer reddit gives instead."""
        if _default_agent(request):
            return _too_many_requests()
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            pair = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            pair = ""
        client_id, _, secret = pair.partition(":")

        client = self._clients.get(client_id)
        expected = client.secret.encode() if client else b""
        # SECURITY: timing attack on the client secret: constant-time comparison.
        matches = hmac.compare_digest(secret.encode(), expected)
        if scheme.lower() == "basic" and client is not None and matches:
            return client_id
        return web.json_response(
            {"message": "Unauthorized", "error": 401},
            status=401,
            headers={"WWW-Authenticate": 'Basic realm="reddit"'},
        )

    def _mint(self, client_id: str, user: str | None, scopes: tuple[str, ...]) -> str:
        now = self._clock()
        account = self._users[user] if user is not None else None
        claims = {
            "sub": "user" if account else "loid",
            "exp": int(now + self.expires_in),
            "iat": int(now),
            "jti": secrets.token_urlsafe(24),
            "cid": client_id,
            "lid": f"t2_{account.id}" if account else "",
            "aid": f"t2_{account.id}" if account else "",
            "scp": secrets.token_urlsafe(200),
            "flo": 9,
        }
        header = {"alg": "RS256", "kid": "SHA256:mock-reddit", "typ": "JWT"}
        token = ".".join(
            (_b64url(json.dumps(header)), _b64url(json.dumps(claims)), _b64url(256))
        )
        self._access[token] = _Access(client_id, user, scopes, now + self.expires_in)
        return token

    def _token_body(self, token: str, scopes: tuple[str, ...]) -> dict[str, Any]:
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "scope": " ".join(sorted(scopes)),
        }

    def _revoke_token(self, token: str) -> None:
        refresh = self._refresh.pop(token, None)
        for minted in refresh.minted if refresh else ():
            self._access.pop(minted, None)
        self._access.pop(token, None)

    # --- oauth.reddit.com ---------------------------------------------------------

    async def _me(self, request: web.Request) -> web.Response:
        if _default_agent(request):
            return _too_many_requests()
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            status, error = (400, "invalid_request") if header else (401, "")
            return _bearer_refusal(status, error)

        access = self._access.get(token.strip())
        if access is None or self._clock() >= access.expires_at:
            return _bearer_refusal(401, "invalid_token")
        if not {"identity", "*"} & set(access.scopes):
            return _bearer_refusal(403, "insufficient_scope")
        if access.user is None:
            return _json_answer({"features": {"chat": False, "do_not_track": True}})

        user = self._users[access.user]
        if "me_override" in user.fields:
            return _json_answer(user.fields["me_override"])
        return _json_answer(_me_body(user, raw=request.query.get("raw_json") == "1"))


def _me_body(user: _User, *, raw: bool) -> dict[str, Any]:
    fields = {k: v for k, v in user.fields.items() if k != "me_override"}
    if fields.get("is_suspended") and not fields.get("suspension_expiration_utc"):
        # A permanently suspended account's /me carries almost nothing.
        return {"name": user.name, "is_suspended": True, "is_blocked": False}

    body: dict[str, Any] = json.loads(_ME_DEFAULTS)
    body.update(name=user.name, id=user.id)
    body["subreddit"].update(
        display_name=f"u_{user.name}",
        display_name_prefixed=f"u/{user.name}",
        url=f"/user/{user.name}/",
    )
    if not raw:  # reddit HTML-escapes strings in JSON unless raw_json=1
        body["icon_img"] = html.escape(body["icon_img"])
    body.update(fields)
    body.setdefault("total_karma", body["link_karma"] + body["comment_karma"])
    return body


def _json_answer(body: object) -> web.Response:
    # Float strings on purpose: reddit sends X-Ratelimit-Remaining as "599.0".
    headers = {"X-Ratelimit-Used": "1", "X-Ratelimit-Remaining": "599.0"}
    return web.json_response(body, headers={**headers, "X-Ratelimit-Reset": "600"})


def _bearer_refusal(status: int, error: str) -> web.Response:
    challenge = 'Bearer realm="reddit"' + (f', error="{error}"' if error else "")
    message = {401: "Unauthorized", 403: "Forbidden"}.get(status, "Bad Request")
    body: dict[str, Any] = {"message": message, "error": status}
    return web.json_response(
        body if status != 403 else {"error": 403},
        status=status,
        headers={"WWW-Authenticate": challenge},
    )


def _error_200(error: str, **extra: str) -> web.Response:
    return web.json_response({"error": error, **extra})


def _too_many_requests() -> web.Response:
    return web.json_response({"message": "Too Many Requests", "error": 429}, status=429)


def _default_agent(request: web.Request) -> bool:
    agent = request.headers.get("User-Agent", "").strip().lower()
    return not agent or agent.startswith(DEFAULT_AGENT_PREFIXES)


def _redirect(redirect_uri: str, **params: str) -> web.HTTPFound:
    separator = "&" if "?" in redirect_uri else "?"
    # Since 2021 reddit appends "#_" so no fragment can leak through the redirect.
    return web.HTTPFound(f"{redirect_uri}{separator}{urlencode(params)}#_")


def _parse_scope(raw: str) -> tuple[str, ...]:
    return tuple(sorted(set(raw.replace(",", " ").split())))


def _first_values(values: MultiMapping[Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, str):
            found.setdefault(key, value)
    return found


def _random_id() -> str:
    return "".join(secrets.choice(_BASE36) for _ in range(8))


def _b64url(data: str | int) -> str:
    raw = secrets.token_bytes(data) if isinstance(data, int) else data.encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


_ME_DEFAULTS = """{
  "is_employee": false, "has_verified_email": true, "verified": true,
  "is_mod": false, "is_gold": false, "is_suspended": false,
  "suspension_expiration_utc": null, "hide_from_robots": false,
  "created": 1514764800.0, "created_utc": 1514764800.0,
  "link_karma": 1, "comment_karma": 0, "awardee_karma": 0, "awarder_karma": 0,
  "icon_img":
    "https://www.redditstatic.com/avatars/avatar_default_03.png?width=256&height=256",
  "snoovatar_img": "", "inbox_count": 0, "over_18": false, "coins": 0,
  "features": {"chat": true},
  "subreddit": {"subreddit_type": "user", "title": "", "public_description": ""}
}"""

_PAGE = string.Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title · mock reddit</title>
<style>
body { font: 16px/1.5 system-ui, sans-serif; background: #dae0e6; color: #1c1c1c;
       margin: 0; }
main { max-width: 30rem; margin: 3rem auto; background: #fff; border-radius: 8px;
       padding: 1.5rem 2rem; box-shadow: 0 1px 3px #0003; }
h1 { font-size: 1.25rem; margin: .25rem 0 1rem; }
.brand { color: #ff4500; font-weight: 700; margin: 0; }
code { background: #f6f7f8; padding: 0 .25rem; border-radius: 3px;
       overflow-wrap: anywhere; }
label { display: block; font-weight: 600; margin: 1rem 0 .25rem; }
input[type=text] { width: 100%; box-sizing: border-box; padding: .5rem; font: inherit;
                   border: 1px solid #ccc; border-radius: 4px; }
.buttons { display: flex; gap: .75rem; margin-top: 1.25rem; }
button { flex: 1; padding: .6rem; font: inherit; font-weight: 600; cursor: pointer;
         border-radius: 999px; border: 1px solid #0079d3; background: #fff;
         color: #0079d3; }
button.allow { background: #0079d3; color: #fff; }
.error { color: #b00020; font-weight: 600; }
.note { font-size: .85rem; color: #576f76; }
</style>
</head>
<body>
<main>
<p class="brand">reddit <small>(offline mock)</small></p>
$content
</main>
</body>
</html>
""")

_CONSENT = string.Template("""<h1>An app wants to connect to your account</h1>
<p>The app <code>$client_id</code> asks for $duration access to:</p>
<ul>
$scopes
</ul>
<form method="post" action="$action">
$hidden
<label for="username">Username</label>
<input type="text" id="username" name="username" value="$username"
       autocomplete="username" required autofocus>
$error
<div class="buttons">
<button type="submit" class="allow" name="authorize" value="Allow">Allow</button>
<button type="submit" name="authorize" value="Decline" formnovalidate>Decline</button>
</div>
</form>
<p class="note">Your answer will be sent to <code>$redirect_uri</code>.</p>
""")
_HIDDEN_FIELDS = (
    "client_id",
    "response_type",
    "state",
    "redirect_uri",
    "duration",
    "scope",
)


def _page(title: str, content: str, status: int) -> web.Response:
    document = _PAGE.substitute(title=html.escape(title), content=content)
    # The page loads nothing from anywhere, and may not be framed.
    headers = {
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        "X-Frame-Options": "DENY",
    }
    return web.Response(
        text=document, status=status, content_type="text/html", headers=headers
    )


def _refusal_page(problem: str) -> web.Response:
    return _page(
        "Bad request", f"<h1>Bad request</h1>\n<p>{html.escape(problem)}</p>", 400
    )


def _consent(
    action: str, params: Mapping[str, str], error: str, status: int
) -> web.Response:
    # SECURITY: reflected XSS: every value taken from the request is escaped.
    esc = html.escape
    hidden = "\n".join(
        f'<input type="hidden" name="{key}" value="{esc(params.get(key, ""))}">'
        for key in _HIDDEN_FIELDS
    )
    scopes = "\n".join(
        f"<li><code>{esc(scope)}</code> {esc(_SCOPE_TEXT.get(scope, ''))}</li>"
        for scope in _parse_scope(params.get("scope", ""))
    )
    content = _CONSENT.substitute(
        client_id=esc(params.get("client_id", "")),
        duration="permanent" if params.get("duration") == "permanent" else "temporary",
        scopes=scopes,
        action=esc(action),
        hidden=hidden,
        username=esc(params.get("username", "")),
        error=f'<p class="error" role="alert">{esc(error)}</p>' if error else "",
        redirect_uri=esc(params.get("redirect_uri", "")),
    )
    return _page("Authorize application", content, status)
