"""What reddit's JSON answers mean: token grants, /api/v1/me, listing pages.

Each reader takes what reddit sent and returns our own frozen value, or raises
RedditUnavailable (an answer we cannot use) or RedditIdentityError (no account we
can name). None of them trusts a field's type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import Secret
from gateway.errors import RedditIdentityError, RedditUnavailable

# SECURITY: header injection: an explicit ASCII class, so no Unicode letter, space,
# CR or LF can reach X-Reddit-User.
USERNAME_RE = re.compile(r"^[A-Za-z0-9_-]{3,20}$")

# Reddit has always sent expires_in; if it ever goes missing we assume the one hour
# that every recorded answer before 2023 carried: shorter than today's 24 h, so the
# gateway re-checks too early rather than trusting a dead token too long.
DEFAULT_EXPIRES_IN = 3600.0

_ERROR_CODE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_USER_ID_RE = re.compile(r"[0-9a-z]{1,20}")
_SUBREDDIT_RE = re.compile(r"[A-Za-z0-9_]{2,21}")
_FULLNAME_RE = re.compile(r"t5_[0-9a-z]{1,20}")


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
    total_karma: int | None = None  # newer than link and comment karma; may be absent


def error_code(value: object) -> str:
    code = str(value)
    return code if _ERROR_CODE_RE.fullmatch(code) else "unrecognised_error"


def read_grant(data: Mapping[str, Any]) -> TokenGrant:
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


def read_identity(data: Mapping[str, Any]) -> Identity:
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise RedditIdentityError("me: no account name (an app-only token?)")
    if not USERNAME_RE.fullmatch(name):
        raise RedditIdentityError(f"me: unacceptable account name {name[:40]!r}")
    # SECURITY: fail closed: any odd is_suspended value (even 0) counts as suspended.
    flag = data.get("is_suspended")
    suspended = flag is not None and flag is not False

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
        is_suspended=suspended,
        created_utc=created if isinstance(created, float) else None,
        has_verified_email=verified if isinstance(verified, bool) else None,
        link_karma=_karma(data.get("link_karma")) or 0,
        comment_karma=_karma(data.get("comment_karma")) or 0,
        total_karma=_karma(data.get("total_karma")),
    )


def _karma(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return None


def read_listing_page(data: object, call: str) -> tuple[set[str], str | None]:
    """One listing page: its community names, casefolded, and the next ``after``."""
    page = data.get("data") if isinstance(data, dict) else None
    children = page.get("children") if isinstance(page, dict) else None
    after = page.get("after") if isinstance(page, dict) else None
    if not isinstance(children, list):
        raise RedditUnavailable(f"{call}: answer is not a listing")
    if after is not None and not (
        isinstance(after, str) and _FULLNAME_RE.fullmatch(after)
    ):
        raise RedditUnavailable(f"{call}: listing has an unusable after")

    names: set[str] = set()
    for child in children:
        about = child.get("data") if isinstance(child, dict) else None
        if not isinstance(about, dict) or child.get("kind") != "t5":
            continue
        name = about.get("display_name")
        if not isinstance(name, str) or not _SUBREDDIT_RE.fullmatch(name):
            continue  # skipping only ever refuses someone
        if name.casefold().startswith("u_") or about.get("subreddit_type") == "user":
            continue  # a profile, not a community: r/ rules never mean it
        names.add(name.casefold())
    return names, after
