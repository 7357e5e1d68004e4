"""Reddit's OAuth2 and API client: authorize URL, tokens, revocation, /api/v1/me,
and the subreddit listings the access rules read."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import Callable
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
from gateway.reddit_payloads import (
    DEFAULT_EXPIRES_IN,
    USERNAME_RE,
    Identity,
    TokenGrant,
    error_code,
    read_grant,
    read_identity,
    read_listing_page,
)
from gateway.reddit_ratelimit import RateLimit, Sleep

__all__ = [
    "DEFAULT_EXPIRES_IN",
    "LISTING_KINDS",
    "USERNAME_RE",
    "Identity",
    "RedditClient",
    "TokenGrant",
]

log = logging.getLogger("gateway.auth")

_PREVIEW_CHARS = 200
_MAX_BODY = 1 << 20
_WWW_AUTH_ERROR_RE = re.compile(r'error="([A-Za-z_]{1,40})"')
_UNAVAILABLE_STATUSES = frozenset({403, 429})

LISTING_KINDS = frozenset({"moderator", "subscriber", "contributor"})
LISTING_LIMIT = 100  # reddit's largest page

# Told of every call to reddit: its name ("token", "revoke", "me", "mine/<kind>")
# and the answer's status, None when none came (a timeout, a broken connection).
CallObserver = Callable[[str, int | None], None]


@dataclass(frozen=True, slots=True)
class _Answer:
    call: str  # "token", "revoke", "me" or "mine/<kind>", for logs and reasons
    status: int
    content_type: str
    www_authenticate: str
    body: bytes
    sent_secrets: tuple[str, ...]  # what must never be echoed into a log line
    ratelimit_remaining: str | None = None
    ratelimit_reset: str | None = None


class RedditClient:
    """Talks to reddit for one configured web app, within its shared API budget.

    Only an API read refused with 429 is tried again, once; a token call never is.
    """

    def __init__(
        self,
        config: RedditConfig,
        redirect_uri: str,
        session: aiohttp.ClientSession,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        on_call: CallObserver | None = None,
    ) -> None:
        self._config = config
        self._redirect_uri = redirect_uri
        self._session = session
        pair = f"{config.client_id}:{config.client_secret.reveal()}".encode()
        self._basic_auth = "Basic " + base64.b64encode(pair).decode("ascii")
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)
        self._ratelimit = RateLimit(config.timeout, clock=clock, sleep=sleep)
        self._on_call = on_call

    @property
    def ratelimit_remaining(self) -> float | None:
        """API requests left in reddit's window as it last said; None until it has."""
        return self._ratelimit.remaining

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
            raise RedditGrantError(error_code(data["error"]))
        raise RedditUnavailable(f"revoke: unexpected status {answer.status}")

    async def fetch_identity(self, access_token: Secret) -> Identity:
        """Read /api/v1/me and insist it names an acceptable account.

        A suspended account comes back with ``is_suspended``: whether it may in is
        for the access rules to say (access.allow_suspended), not for this client.
        """
        url = (self._config.api_url / "api/v1/me").with_query(raw_json="1")
        answer = await self._api_get("me", url, access_token)

        if answer.status in (401, 403):
            raise RedditUnavailable(f"me: {answer.status} ({_bearer_error(answer)})")
        if answer.status != 200:
            self._warn_body(answer)
            raise RedditUnavailable(f"me: unexpected status {answer.status}")
        data = self._json(answer)

        return read_identity(data)

    async def fetch_memberships(
        self,
        access_token: Secret,
        kind: str,
        wanted: frozenset[str] | None = None,
        max_pages: int = 10,
    ) -> frozenset[str]:
        """The casefolded subreddits the account is a moderator, subscriber or
        contributor (approved user) of, from /subreddits/mine/<kind>.

        Pages are read until reddit says there are no more, until every name in
        ``wanted`` has been seen, or for ``max_pages`` pages (100 subreddits each).
        At that bound what was read is returned and a warning logged: callers use
        these sets to ALLOW, and a missing name can only refuse someone, never let
        anyone in. Do not build a rule that denies on membership from them.

        Profile subreddits (u_<name>) are left out. RedditIdentityError when the
        token lacks the mysubreddits scope; RedditUnavailable for anything else.
        """
        if kind not in LISTING_KINDS:
            raise ValueError(f"unknown listing {kind!r}")
        if max_pages < 1:
            raise ValueError("max_pages must be at least 1")
        looking_for = None if wanted is None else {name.casefold() for name in wanted}
        if looking_for is not None and not looking_for:
            return frozenset()  # nothing to look for: spend none of the budget

        call = f"mine/{kind}"
        listing = self._config.api_url / "subreddits/mine" / kind
        found: set[str] = set()
        after: str | None = None
        for _ in range(max_pages):
            query = {"limit": str(LISTING_LIMIT), "raw_json": "1"}
            if after is not None:
                query["after"] = after
            answer = await self._api_get(call, listing.with_query(query), access_token)
            names, after = self._listing_page(answer)
            found |= names
            if after is None or (looking_for is not None and looking_for <= found):
                return frozenset(found)

        log.warning("reddit_listing_truncated kind=%s pages=%d", kind, max_pages)
        return frozenset(found)

    async def _token_call(self, form: dict[str, str], secret: str) -> TokenGrant:
        answer = await self._call(
            "token", "POST", self._config.token_url, secret, data=form
        )

        self._refuse_failures(answer)
        data = self._json(answer)

        # Reddit reports most grant errors in a 200 answer: read the body.
        if "error" in data:
            raise RedditGrantError(error_code(data["error"]))
        if answer.status != 200:
            raise RedditUnavailable(f"token: unexpected status {answer.status}")
        return read_grant(data)

    async def _api_get(self, call: str, url: URL, access_token: Secret) -> _Answer:
        """A GET on oauth.reddit.com inside the shared budget; a 429 gets one retry,
        once reddit's window has reset."""
        token = access_token.reveal()
        bearer = {"Authorization": f"bearer {token}"}
        for _attempt in range(2):
            await self._ratelimit.wait_turn()
            answer = await self._call(call, "GET", url, token, headers=bearer)
            throttled = answer.status == 429
            self._ratelimit.record(
                answer.ratelimit_remaining, answer.ratelimit_reset, throttled=throttled
            )
            if not throttled:
                return answer

        self._warn_body(answer)
        raise RedditUnavailable("rate limited")

    def _listing_page(self, answer: _Answer) -> tuple[set[str], str | None]:
        if answer.status == 403 and _bearer_error(answer) == "insufficient_scope":
            raise RedditIdentityError("mysubreddits scope not granted")
        if answer.status in (401, 403):
            status = f"{answer.status} ({_bearer_error(answer)})"
            raise RedditUnavailable(f"{answer.call}: {status}")
        if answer.status != 200:
            self._warn_body(answer)
            raise RedditUnavailable(f"{answer.call}: unexpected status {answer.status}")
        data = self._parsed(answer)

        # With no user behind the token reddit answers the string "{}".
        if data == "{}" or data == {}:
            return set(), None
        return read_listing_page(data, answer.call)

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

        status: int | None = None
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
                status = response.status
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
                    ratelimit_remaining=response.headers.get("X-Ratelimit-Remaining"),
                    ratelimit_reset=response.headers.get("X-Ratelimit-Reset"),
                )
        except TimeoutError:
            raise RedditUnavailable(f"{call}: timed out") from None
        except aiohttp.ClientError as exc:
            name = type(exc).__name__
            raise RedditUnavailable(f"{call}: connection failed ({name})") from None
        finally:
            if self._on_call is not None:
                self._on_call(call, status)

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
        data = self._parsed(answer)
        if not isinstance(data, dict):
            raise RedditUnavailable(f"{answer.call}: answer is not a JSON object")
        return data

    def _parsed(self, answer: _Answer) -> object:
        if answer.content_type != "application/json":
            self._warn_body(answer)
            raise RedditUnavailable(f"{answer.call}: answer is not JSON")
        try:
            data: object = json.loads(answer.body)
        except ValueError:
            self._warn_body(answer)
            raise RedditUnavailable(f"{answer.call}: answer is broken JSON") from None
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


def _bearer_error(answer: _Answer) -> str:
    found = _WWW_AUTH_ERROR_RE.search(answer.www_authenticate)
    return found.group(1) if found else "no error given"
