"""An offline reddit for the demo and the tests, faithful to its OAuth2, listing and
rate-limit quirks."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import html
import json
import math
import re
import secrets
import string
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
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

RATELIMIT_WINDOW = 600.0  # seconds; reddit counts in ten-minute windows
RATELIMIT_BUDGET = 1000.0  # 100 requests a minute per client id, since July 2023
DEFAULT_PAGE_SIZE = 100
LISTING_KINDS = ("moderator", "subscriber", "contributor")
_SUBREDDIT_RE = re.compile(r"[A-Za-z0-9_]{2,21}")
_KARMA_RE = re.compile(r"-?[0-9]{1,9}")
_LIST_LABELS = ("Moderator of", "Subscriber of", "Approved user of")
_DAY = 86400.0


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
    memberships: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Subreddit:
    display_name: str
    id: str
    type: str = "public"  # "user" for a profile subreddit, u_<name>


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
        self.token_padding = 200  # random bytes that make tokens JWT-sized
        # Listing pages hold min(limit, page_size) subreddits: lower it for paging.
        self.page_size = DEFAULT_PAGE_SIZE
        # The API budget every oauth answer reports and spends; at zero: 429.
        self.ratelimit_budget = RATELIMIT_BUDGET
        self.ratelimit_remaining = RATELIMIT_BUDGET
        self._clock = clock
        self._window_ends = clock() + RATELIMIT_WINDOW
        self._clients: dict[str, _Client] = {}
        self._users: dict[str, _User] = {}
        self._subreddits: dict[str, _Subreddit] = {}
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._faults: dict[str, deque[_Fault]] = {}

    @property
    def ratelimit_reset(self) -> float:
        """Seconds until the budget's window ends and it is whole again."""
        return max(0.0, self._window_ends - self._clock())

    @ratelimit_reset.setter
    def ratelimit_reset(self, seconds: float) -> None:
        self._window_ends = self._clock() + seconds

    def add_client(self, client_id: str, client_secret: str, redirect_uri: str) -> None:
        self._clients[client_id] = _Client(client_secret, redirect_uri)

    def add_user(
        self,
        name: str,
        *,
        moderator_of: Iterable[str] | None = None,
        subscriber_of: Iterable[str] | None = None,
        contributor_of: Iterable[str] | None = None,
        **fields: Any,
    ) -> None:
        """Seed an account, or change one; fields override /me (created_utc,
        link_karma, comment_karma, has_verified_email, is_suspended, ...), and
        me_override replaces its whole body. The lists set the subreddits its
        listings hold ("example" or "r/example"); None leaves a list as it was."""
        user = self._users.get(name.casefold())
        if user is None:
            user_id = str(fields.get("id") or _random_id())
            user = self._users[name.casefold()] = _User(name, user_id, {})
        user.fields.update(fields)

        lists = zip(
            LISTING_KINDS, (moderator_of, subscriber_of, contributor_of), strict=True
        )
        for kind, names in lists:
            if names is not None:
                subreddits = (self._subreddit(name) for name in names)
                found = (sub.display_name for sub in subreddits)
                user.memberships[kind] = tuple(dict.fromkeys(found))

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
        kinds = "|".join(LISTING_KINDS)
        app.router.add_get(f"/subreddits/mine/{{kind:{kinds}}}", self._listing)
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

        if not _on_oauth_host(request.path):
            response: web.StreamResponse = await handler(request)
            return response
        spent = self._spend()
        budget = self._ratelimit_headers()
        if not spent:
            return _too_many_requests(budget)
        response = await handler(request)
        response.headers.update(budget)
        return response

    def _spend(self) -> bool:
        """Take one request from the window's budget; False when none is left."""
        now = self._clock()
        if now >= self._window_ends:
            self._window_ends = now + RATELIMIT_WINDOW
            self.ratelimit_remaining = self.ratelimit_budget
        if self.ratelimit_remaining < 1:
            return False
        self.ratelimit_remaining -= 1
        return True

    def _ratelimit_headers(self) -> dict[str, str]:
        used = max(0.0, self.ratelimit_budget - self.ratelimit_remaining)
        # Float strings on purpose: reddit sends X-Ratelimit-Remaining as "599.0".
        return {
            "X-Ratelimit-Used": str(int(used)),
            "X-Ratelimit-Remaining": f"{max(0.0, self.ratelimit_remaining):.1f}",
            "X-Ratelimit-Reset": str(math.ceil(self.ratelimit_reset)),
        }

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
        try:
            details = self._account_details(params)
        except ValueError as exc:
            return _consent(request.path, params, str(exc), 400)

        # The mock signs in whoever is typed, even an invalid name, so the gateway's
        # own name checks can be exercised end to end.
        self.add_user(typed, **details)
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

    def _account_details(self, params: Mapping[str, str]) -> dict[str, Any]:
        """What "More about this account" on the consent page says about the account.

        Only what was filled in or ticked is returned, so a form sent without these
        fields leaves a seeded account as it is. ValueError says what to correct.
        """
        details: dict[str, Any] = {}
        for kind, label in zip(LISTING_KINDS, _LIST_LABELS, strict=True):
            key = f"{kind}_of"
            typed = [part.strip() for part in params.get(key, "").split(",")]
            names = [part for part in typed if part]
            for name in names:
                if not _SUBREDDIT_RE.fullmatch(_bare_subreddit(name)):
                    raise ValueError(f"{label}: {name!r} is not a subreddit name.")
            if names:
                details[key] = names

        age = params.get("account_age_days", "").strip()
        if age:
            if not age.isdigit() or int(age) > 36500:
                raise ValueError("Account age: a whole number of days, like 30.")
            created = float(math.floor(self._clock() - int(age) * _DAY))
            details.update(created=created, created_utc=created)
        karma = params.get("karma", "").strip()
        if karma:
            if not _KARMA_RE.fullmatch(karma):
                raise ValueError("Karma: a whole number, like 100.")
            details.update(
                link_karma=int(karma), comment_karma=0, total_karma=int(karma)
            )
        if "unverified_email" in params:
            details["has_verified_email"] = False
        if "suspended" in params:
            details["is_suspended"] = True
        return details

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
            "scp": secrets.token_urlsafe(self.token_padding),
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
        access = self._authorized(request, "identity")
        if isinstance(access, web.Response):
            return access
        if access.user is None:
            return web.json_response(
                {"features": {"chat": False, "do_not_track": True}}
            )

        user = self._users[access.user]
        if "me_override" in user.fields:
            return web.json_response(user.fields["me_override"])
        raw = request.query.get("raw_json") == "1"
        return web.json_response(_me_body(user, raw=raw))

    async def _listing(self, request: web.Request) -> web.Response:
        access = self._authorized(request, "mysubreddits")
        if isinstance(access, web.Response):
            return access
        if access.user is None:
            # With no user behind the token reddit answers the string "{}".
            return web.json_response("{}")
        user = self._users[access.user]
        kind = request.match_info["kind"]
        query = request.query

        entries = [
            self._subreddits[name.casefold()] for name in user.memberships.get(kind, ())
        ]
        if kind == "moderator":  # everyone moderates their own profile subreddit
            entries.append(self._subreddit(f"u_{user.name}", "user"))
        fullnames = [f"t5_{sub.id}" for sub in entries]
        after = query.get("after")
        if not after:
            start = 0
        elif after in fullnames:
            start = fullnames.index(after) + 1
        else:
            start = len(entries)  # an unknown after: reddit answers an empty page
        size = min(_listing_limit(query.get("limit")), max(1, self.page_size))
        page = entries[start : start + size]
        more = start + size < len(entries)

        raw = query.get("raw_json") == "1"
        data = {
            "after": fullnames[start + size - 1] if more else None,
            "dist": len(page),
            "modhash": None,
            "geo_filter": "",
            "children": [
                {"kind": "t5", "data": _t5_data(sub, user, raw=raw)} for sub in page
            ],
            "before": fullnames[start] if start and page else None,
        }
        return web.json_response({"kind": "Listing", "data": data})

    def _authorized(self, request: web.Request, scope: str) -> _Access | web.Response:
        """The token behind an oauth.reddit.com request, or reddit's refusal."""
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
        if not {scope, "*"} & set(access.scopes):
            return _bearer_refusal(403, "insufficient_scope")
        return access

    def _subreddit(self, name: str, kind: str = "public") -> _Subreddit:
        """The subreddit of that name, made up on first mention with that casing."""
        bare = _bare_subreddit(name)
        known = self._subreddits.get(bare.casefold())
        if known is not None:
            return known
        if kind != "user" and not _SUBREDDIT_RE.fullmatch(bare):
            raise ValueError(f"{name!r} is not a subreddit name")
        made = self._subreddits[bare.casefold()] = _Subreddit(bare, _random_id(), kind)
        return made


def _me_body(user: _User, *, raw: bool) -> dict[str, Any]:
    fields = {k: v for k, v in user.fields.items() if k != "me_override"}
    if fields.get("is_suspended") and not fields.get("suspension_expiration_utc"):
        # A permanently suspended account's /me carries almost nothing.
        return {"name": user.name, "is_suspended": True, "is_blocked": False}

    body: dict[str, Any] = json.loads(_ME_DEFAULTS)
    body.update(name=user.name, id=user.id)
    body["is_mod"] = bool(user.memberships.get("moderator"))
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


def _t5_data(sub: _Subreddit, user: _User, *, raw: bool) -> dict[str, Any]:
    profile = sub.type == "user"
    prefixed = f"u/{user.name}" if profile else f"r/{sub.display_name}"
    icon = f"https://styles.redditmedia.com/t5_{sub.id}/communityIcon.png?width=256&s=0"
    member = {
        kind: sub.display_name in user.memberships.get(kind, ())
        for kind in LISTING_KINDS
    }
    return {
        "display_name": sub.display_name,
        "display_name_prefixed": prefixed,
        "name": f"t5_{sub.id}",
        "id": sub.id,
        "title": "" if profile else sub.display_name,
        "url": f"/user/{user.name}/" if profile else f"/r/{sub.display_name}/",
        "subscribers": 0 if profile else 1000,
        "subreddit_type": sub.type,
        "over18": False,
        "quarantine": False,
        "user_is_moderator": profile or member["moderator"],
        "user_is_subscriber": member["subscriber"],
        "user_is_contributor": member["contributor"],
        "user_is_banned": False,
        "created_utc": 1325376000.0,
        "icon_img": "",
        # reddit HTML-escapes strings in JSON unless raw_json=1
        "community_icon": "" if profile else (icon if raw else html.escape(icon)),
    }


def _listing_limit(value: str | None) -> int:
    """Reddit's limit parameter: 25 unless given, clamped to 1..100."""
    if value is None or not value.isdigit():
        return 25
    return min(max(int(value), 1), 100)


def _bare_subreddit(name: str) -> str:
    bare = name.strip()
    for prefix in ("/r/", "r/"):
        if bare.lower().startswith(prefix):
            bare = bare[len(prefix) :]
    return bare.rstrip("/")


def _on_oauth_host(path: str) -> bool:
    return path == "/api/v1/me" or path.startswith("/subreddits/")


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


def _too_many_requests(headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"message": "Too Many Requests", "error": 429}, status=429, headers=headers
    )


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
input[type=text], input[type=number] { width: 100%; box-sizing: border-box;
    padding: .5rem; font: inherit; border: 1px solid #ccc; border-radius: 4px; }
details { margin-top: 1rem; border-top: 1px solid #edeff1; padding-top: .75rem; }
summary { cursor: pointer; color: #0079d3; font-weight: 600; }
details label { margin-top: .75rem; }
.pair { display: flex; flex-wrap: wrap; gap: 0 .75rem; }
.pair > div { flex: 1 1 10rem; }
label.check { display: flex; align-items: center; gap: .5rem; font-weight: 400;
              margin: .6rem 0 0; }
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
<details$open>
<summary>More about this account</summary>
<p class="note">Optional. What reddit will say about this account; blank means an
ordinary one. Lists are comma-separated subreddit names.</p>
$lists
<div class="pair">
<div><label for="account_age_days">Account age (days)</label>
<input type="number" id="account_age_days"
       name="account_age_days" value="$account_age_days" min="0" step="1"></div>
<div><label for="karma">Karma</label>
<input type="number" id="karma" name="karma" value="$karma" step="1"></div>
</div>
<label class="check"><input type="checkbox" name="unverified_email"$unverified_email>
Email address not verified</label>
<label class="check"><input type="checkbox" name="suspended"$suspended>
Suspended</label>
</details>
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
_DETAIL_FIELDS = (
    "moderator_of",
    "subscriber_of",
    "contributor_of",
    "account_age_days",
    "karma",
)
_CHECKBOXES = ("unverified_email", "suspended")


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
    lists = "\n".join(
        f'<label for="{kind}_of">{label}</label>\n<input type="text" id="{kind}_of" '
        f'name="{kind}_of" value="{esc(params.get(f"{kind}_of", ""))}" '
        f'placeholder="example, r/another">'
        for kind, label in zip(LISTING_KINDS, _LIST_LABELS, strict=True)
    )
    # Checkboxes carry no value attribute: a ticked one is sent as "on".
    ticked = {key: " checked" if key in params else "" for key in _CHECKBOXES}
    told = any(params.get(key) for key in _DETAIL_FIELDS) or any(ticked.values())
    content = _CONSENT.substitute(
        open=" open" if told else "",
        lists=lists,
        account_age_days=esc(params.get("account_age_days", "")),
        karma=esc(params.get("karma", "")),
        **ticked,
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
