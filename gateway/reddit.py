"""Reddit's OAuth2 and API client: authorize URL, tokens, revocation, /api/v1/me."""

from __future__ import annotations

import base64
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from gateway.config import RedditConfig, Secret
from gateway.errors import (
    RedditClientRejected,
    RedditGrantError,
    RedditIdentityError,
    RedditUnavailable,
)

log = logging.getLogger("gateway.auth")

# SECURITY: header injection: an explicit ASCII class, so no Unicode letter, space,
# CR or LF can reach X-Reddit-User.
USERNAME_RE = re.compile(r"^[A-Za-z0-9_-]{3,20}$")

# Reddit has always sent expires_in; if it ever goes missing we assume the one hour
# that every recorded answer before 2023 carried: shorter than today's 24 h, so the
# gateway re-checks too early rather than trusting a dead token too long.
DEFAULT_EXPIRES_IN = 3600.0

_PREVIEW_CHARS = 200
_MAX_BODY = 1 << 20
_ERROR_CODE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_USER_ID_RE = re.compile(r"[0-9a-z]{1,20}")
_WWW_AUTH_ERROR_RE = re.compile(r'error="([A-Za-z_]{1,40})"')
_UNAVAILABLE_STATUSES = frozenset({403, 429})


@dataclass(frozen=True, slots=True)
class TokenGrant:
    access_token: Secret
    token_type: str
    expires_in: float
    scopes: frozenset[str]
    refresh_token: Secret | None


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    id: str  # "t2_..." fullname, or "" when reddit did not send one
    is_suspended: bool
    created_utc: float | None
    has_verified_email: bool | None
    link_karma: int
    comment_karma: int


@dataclass(frozen=True, slots=True)
class _Answer:
    call: str  # "token", "revoke" or "me", for logs and error reasons
    status: int
    content_type: str
    www_authenticate: str
    body: bytes
    sent_secrets: tuple[str, ...]  # what must never be echoed into a log line


class RedditClient:
    """Talks to reddit for one configured web app; never retries a call."""

    def __init__(
        self, config: RedditConfig, redirect_uri: str, session: aiohttp.ClientSession
    ) -> None:
        self._config = config
        self._redirect_uri = redirect_uri
        self._session = session
        pair = f"{config.client_id}:{config.client_secret.reveal()}".encode()
        self._basic_auth = "Basic " + base64.b64encode(pair).decode("ascii")
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)

    def authorize_url(self, state: str) -> str:
        """The URL that sends the browser to reddit's consent page."""
        params = {
            "client_id": self._config.client_id,
            "response_type": "code",
            "state": state,
            "redirect_uri": self._redirect_uri,
            "duration": self._config.duration,
            "scope": " ".join(self._config.scopes),
        }
        query = urlencode(params, quote_via=quote, safe="")

        base = str(self._config.authorize_url)
        return f"{base}{'&' if '?' in base else '?'}{query}"

    async def redeem_code(self, code: str) -> TokenGrant:
        """Exchange an authorization code; reddit burns it, so this never retries."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self._redirect_uri,
        }
        return await self._token_call(form, code)

    async def refresh(self, refresh_token: Secret) -> TokenGrant:
        """Get a new access token; store any refresh_token the answer carries."""
        token = refresh_token.reveal()
        form = {"grant_type": "refresh_token", "refresh_token": token}
        return await self._token_call(form, token)

    async def revoke(self, token: Secret, hint: str = "access_token") -> None:
        """Revoke a token at reddit; 200 (today) and 204 (older) both mean done."""
        form = {"token": token.reveal(), "token_type_hint": hint}
        answer = await self._call(
            "revoke", "POST", self._config.revoke_url, token.reveal(), data=form
        )

        if answer.status in (200, 204):
            return
        self._refuse_failures(answer)
        data = self._json(answer)
        if "error" in data:
            raise RedditGrantError(_error_code(data["error"]))
        raise RedditUnavailable(f"revoke: unexpected status {answer.status}")

    async def fetch_identity(self, access_token: Secret) -> Identity:
        """Read /api/v1/me and insist it names an acceptable, unsuspended account."""
        url = (self._config.api_url / "api/v1/me").with_query(raw_json="1")
        bearer = {"Authorization": f"bearer {access_token.reveal()}"}
        answer = await self._call(
            "me", "GET", url, access_token.reveal(), headers=bearer
        )

        if answer.status in (401, 403):
            found = _WWW_AUTH_ERROR_RE.search(answer.www_authenticate)
            why = found.group(1) if found else "no error given"
            raise RedditUnavailable(f"me: {answer.status} ({why})")
        if answer.status != 200:
            self._warn_body(answer)
            raise RedditUnavailable(f"me: unexpected status {answer.status}")
        data = self._json(answer)

        return _identity_from(data)

    async def _token_call(self, form: dict[str, str], secret: str) -> TokenGrant:
        answer = await self._call(
            "token", "POST", self._config.token_url, secret, data=form
        )

        self._refuse_failures(answer)
        data = self._json(answer)

        # Reddit reports most grant errors in a 200 answer: read the body.
        if "error" in data:
            raise RedditGrantError(_error_code(data["error"]))
        if answer.status != 200:
            raise RedditUnavailable(f"token: unexpected status {answer.status}")
        return _grant_from(data)

    async def _call(
        self,
        call: str,
        method: str,
        url: URL,
        secret: str,
        *,
        headers: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
    ) -> _Answer:
        sent = {"User-Agent": self._config.user_agent, **(headers or {})}
        if data is not None:  # token and revoke: client authentication is Basic only
            sent["Authorization"] = self._basic_auth

        try:
            # SECURITY: credential leak via redirect: never follow one with our auth.
            async with self._session.request(
                method,
                url,
                headers=sent,
                data=data,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > _MAX_BODY:
                        raise RedditUnavailable(f"{call}: answer too large")
                return _Answer(
                    call=call,
                    status=response.status,
                    content_type=response.content_type,
                    www_authenticate=response.headers.get("WWW-Authenticate", ""),
                    body=bytes(body),
                    sent_secrets=(secret, self._config.client_secret.reveal()),
                )
        except TimeoutError:
            raise RedditUnavailable(f"{call}: timed out") from None
        except aiohttp.ClientError as exc:
            name = type(exc).__name__
            raise RedditUnavailable(f"{call}: connection failed ({name})") from None

    def _refuse_failures(self, answer: _Answer) -> None:
        if answer.status == 401:
            raise RedditClientRejected(
                f"{answer.call}: reddit refused the client credentials (401);"
                " check the client id and secret"
            )
        if answer.status in _UNAVAILABLE_STATUSES or answer.status >= 500:
            self._warn_body(answer)
            raise RedditUnavailable(f"{answer.call}: status {answer.status}")

    def _json(self, answer: _Answer) -> dict[str, Any]:
        if answer.content_type != "application/json":
            self._warn_body(answer)
            raise RedditUnavailable(f"{answer.call}: answer is not JSON")
        try:
            data = json.loads(answer.body)
        except ValueError:
            self._warn_body(answer)
            raise RedditUnavailable(f"{answer.call}: answer is broken JSON") from None
        if not isinstance(data, dict):
            raise RedditUnavailable(f"{answer.call}: answer is not a JSON object")
        return data

    def _warn_body(self, answer: _Answer) -> None:
        text = answer.body.decode("utf-8", "replace")
        # SECURITY: token leak into logs: blank out anything we sent that is echoed,
        # and never show a successful token answer: it may hold tokens we can't know.
        for secret in answer.sent_secrets:
            if secret:
                text = text.replace(secret, "[redacted]")
        if answer.call == "token" and answer.status < 300:
            text = f"[{len(answer.body)} bytes withheld]"
        # SECURITY: log injection: %r escapes CR, LF and other control characters.
        log.warning(
            "reddit_unexpected_answer call=%s status=%s content_type=%s body=%r",
            answer.call,
            answer.status,
            answer.content_type or "-",
            text[:_PREVIEW_CHARS],
        )


def _error_code(value: object) -> str:
    code = str(value)
    return code if _ERROR_CODE_RE.fullmatch(code) else "unrecognised_error"


def _grant_from(data: Mapping[str, Any]) -> TokenGrant:
    access = data.get("access_token")
    if not isinstance(access, str) or not access:
        raise RedditUnavailable("token: answer has no access_token")

    token_type = data.get("token_type", "bearer")
    scope = data.get("scope", "")
    refresh = data.get("refresh_token")
    if not isinstance(token_type, str) or not isinstance(scope, str):
        raise RedditUnavailable("token: token_type or scope is not a string")
    if refresh is not None and not isinstance(refresh, str):
        raise RedditUnavailable("token: refresh_token is not a string")

    return TokenGrant(
        access_token=Secret(access),
        token_type=token_type,
        expires_in=_expires_in(data.get("expires_in")),
        scopes=frozenset(scope.split()),
        refresh_token=Secret(refresh) if refresh else None,
    )


def _expires_in(value: object) -> float:
    if value is None:
        return DEFAULT_EXPIRES_IN
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RedditUnavailable("token: expires_in is not a number")
    try:
        seconds = float(value)
    except ValueError:
        raise RedditUnavailable("token: expires_in is not a number") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise RedditUnavailable("token: expires_in is out of range")
    return seconds


def _identity_from(data: Mapping[str, Any]) -> Identity:
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise RedditIdentityError("me: no account name (an app-only token?)")
    if not USERNAME_RE.fullmatch(name):
        raise RedditIdentityError(f"me: unacceptable account name {name[:40]!r}")
    if data.get("is_suspended") not in (None, False):  # odd values fail closed
        raise RedditIdentityError("suspended")

    raw_id = data.get("id")
    user_id = (
        raw_id if isinstance(raw_id, str) and _USER_ID_RE.fullmatch(raw_id) else ""
    )
    created = data.get("created_utc")
    if isinstance(created, int) and not isinstance(created, bool):
        created = float(created)
    verified = data.get("has_verified_email")

    return Identity(
        name=name,
        id=f"t2_{user_id}" if user_id else "",
        is_suspended=False,
        created_utc=created if isinstance(created, float) else None,
        has_verified_email=verified if isinstance(verified, bool) else None,
        link_karma=_karma(data.get("link_karma")),
        comment_karma=_karma(data.get("comment_karma")),
    )


def _karma(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return 0
