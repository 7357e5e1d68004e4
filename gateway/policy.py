"""Access rules: which route a path falls under, and whether a user may open it."""

from __future__ import annotations

import operator
import re
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from gateway.config import AccessConfig, AccessRules, recheck_rule_keys

DAY = 86400.0
LISTING_SCOPE = "mysubreddits"  # reddit's scope for /subreddits/mine/*
_DECODE_ROUNDS = 3  # an upstream that decodes more often than this is beyond help
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_AFTER_SEGMENT = re.compile(r"[;?#][^/]*")  # ";params", or what a decoded ? or # cut


@dataclass(frozen=True, slots=True)
class UserFacts:
    """What the rules judge: reddit's answers at sign-in or at the last re-check.

    The defaults are for a caller that knows only the name: unknown age, email
    and memberships fail the rules that ask about them.
    """

    name: str  # canonical reddit name
    created_utc: float | None = None
    karma: int = 0
    verified_email: bool | None = None
    suspended: bool = False
    moderator_of: frozenset[str] = frozenset()  # casefolded, without "r/"
    subscriber_of: frozenset[str] = frozenset()
    contributor_of: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()  # granted by reddit at sign-in


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str = ""  # the config key of the rule that refused, for logs
    reason: str = ""  # the refusal in words a moderator understands


ALLOWED = Decision(allowed=True)

Check = Callable[[UserFacts], Decision | None]  # None: passed; else the refusal


@dataclass(frozen=True, slots=True)
class Conditions:
    """Compiled rules, checked in order; the first that fails is the refusal."""

    checks: tuple[Check, ...] = ()


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str  # as configured; "" for the global rules
    public: bool  # served without sign-in
    conditions: Conditions  # everything a request here must pass, global rules too
    index: int | None = None  # position in access.routes; None: the global rules


class Policy:
    """Judges users against `[access]`; both hot-path methods are precomputed.

    Rules combine: every configured rule must hold, a list rule holds when any
    entry does, deny_users always wins, and a route's rules apply on top of the
    global ones. See gateway.toml.example's [access] for the operator's view.
    """

    def __init__(
        self, access: AccessConfig, clock: Callable[[], float] = time.time
    ) -> None:
        every = (access, *access.routes)
        self.needs_listings = frozenset(
            kind for kind, key, _ in _LISTINGS for rules in every if getattr(rules, key)
        )
        self.mentioned_subreddits = frozenset(
            name.casefold()
            for rules in every
            for _, key, _ in _LISTINGS
            for name in getattr(rules, key)
        )
        self.needs_facts_refresh = bool(recheck_rule_keys(access))
        # Seconds between re-checks of a session's facts (0: none is needed), and
        # how long a last decision outlives reddit's outage.
        self.recheck_interval = (
            access.recheck_interval if self.needs_facts_refresh else 0
        )
        self.recheck_grace = access.recheck_grace

        deny, rest = _compile(access, "access", "app", clock)
        if not access.allow_suspended:
            rest.insert(0, _refuse_suspended("access.allow_suspended", "app"))
        self._global = Route("", False, Conditions((*deny, *rest)))

        # Restrictive routes are matched leniently, public ones strictly; both
        # lists run deepest first, so the first match is the most specific one.
        self._restrictive: list[tuple[tuple[str, ...], Route]] = []
        self._public: list[tuple[str, str, tuple[str, ...], Route]] = []
        for index, entry in enumerate(access.routes):
            segments = _lenient_segments(entry.prefix)
            if entry.public:
                route = Route(entry.prefix, True, Conditions(), index)
                strict = entry.prefix.rstrip("/")  # "/" covers every "/..." path
                self._public.append((strict, strict + "/", segments, route))
                continue
            key = f"access.routes[{index}]"
            own_deny, own_rest = _compile(entry, key, "page", clock)
            if entry.allow_suspended is False:
                own_rest.insert(0, _refuse_suspended(f"{key}.allow_suspended", "page"))
            checks = (*deny, *own_deny, *rest, *own_rest)
            route = Route(entry.prefix, False, Conditions(checks), index)
            self._restrictive.append((segments, route))
        self._restrictive.sort(key=lambda item: -len(item[0]))
        self._public.sort(key=lambda item: -len(item[2]))

    def route_for(self, raw_path: str) -> Route:
        """The route for a request target exactly as the upstream receives it.

        A restrictive route matches the path as leniently as any server might read
        it (decoded, lowercased, "//" and ";params" and dot segments resolved); a
        public one only the raw path, case and all, and only when it is deeper
        than every restrictive match. So no encoding, case or separator trick
        reaches a protected prefix through a public one.
        """
        if not self._restrictive and not self._public:
            return self._global
        segments = _lenient_segments(raw_path)

        best, depth = self._global, -1
        for prefix, route in self._restrictive:
            if segments[: len(prefix)] == prefix:
                best, depth = route, len(prefix)
                break

        path = raw_path.partition("?")[0]
        for strict, under, prefix, route in self._public:
            if len(prefix) <= depth:
                break
            # SECURITY: path confusion: a public prefix matches only the raw,
            # case-exact path, and only when the lenient reading agrees.
            exact = path == strict or path.startswith(under)
            if exact and segments[: len(prefix)] == prefix:
                return route
        return best

    def decide(self, facts: UserFacts, route: Route | None = None) -> Decision:
        """ALLOWED, or the first rule the user fails on this route (default: the
        global rules). A public route allows everyone."""
        for check in (route or self._global).conditions.checks:
            refusal = check(facts)
            if refusal is not None:
                return refusal
        return ALLOWED


def _lenient_segments(raw_path: str) -> tuple[str, ...]:
    """The path's segments as the most forgiving server could read them."""
    path = raw_path.partition("?")[0].partition("#")[0]
    for _ in range(_DECODE_ROUNDS):
        if "%" not in path or not _ESCAPE.search(path):
            break
        path = unquote(path)
    path = path.replace("\\", "/")
    if not path.isascii():
        path = unicodedata.normalize("NFKC", path)  # fullwidth letters and the like
    path = _AFTER_SEGMENT.sub("", path.lower())
    if "." not in path:
        return tuple(filter(None, path.split("/")))

    resolved: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if resolved:
                resolved.pop()
        elif segment and segment != ".":
            resolved.append(segment)
    return tuple(resolved)


_LISTINGS = (
    # (the listing, as in needs_listings and UserFacts' <kind>_of; its rule key;
    #  who its members are in words)
    ("moderator", "moderators_of", "moderators"),
    ("subscriber", "subscribers_of", "subscribers"),
    ("contributor", "contributors_of", "approved users"),
)


def _compile(
    rules: AccessRules, key: str, where: str, clock: Callable[[], float]
) -> tuple[list[Check], list[Check]]:
    """The checks for one set of rules: the deny list apart, as it goes first."""
    deny: list[Check] = []
    if rules.deny_users:
        deny.append(_refuse_denied(rules.deny_users, f"{key}.deny_users", where))

    checks: list[Check] = []
    if rules.users:
        checks.append(_refuse_unlisted(rules.users, f"{key}.users", where))
    for kind, name, people in _LISTINGS:
        subreddits: tuple[str, ...] = getattr(rules, name)
        if subreddits:
            reason = f"This {where} is for {people} of {_either(subreddits)}."
            listing = operator.attrgetter(f"{kind}_of")
            checks.append(
                _refuse_outsider(subreddits, listing, f"{key}.{name}", reason)
            )
    if rules.min_account_age_days:
        rule = f"{key}.min_account_age_days"
        checks.append(_refuse_young(rules.min_account_age_days, rule, clock))
    if rules.min_karma is not None:
        checks.append(_refuse_low_karma(rules.min_karma, f"{key}.min_karma"))
    if rules.require_verified_email:
        checks.append(_refuse_unverified(f"{key}.require_verified_email"))
    return deny, checks


def _refuse_denied(names: frozenset[str], rule: str, where: str) -> Check:
    refusal = Decision(False, rule, f"This reddit account may not use this {where}.")

    def check(facts: UserFacts) -> Decision | None:
        return refusal if facts.name.casefold() in names else None

    return check


def _refuse_unlisted(names: frozenset[str], rule: str, where: str) -> Check:
    reason = f"This {where} is open only to the reddit accounts on its list."
    refusal = Decision(False, rule, reason)

    def check(facts: UserFacts) -> Decision | None:
        return None if facts.name.casefold() in names else refusal

    return check


def _refuse_suspended(rule: str, where: str) -> Check:
    refusal = Decision(
        False, rule, f"Suspended reddit accounts cannot use this {where}."
    )

    def check(facts: UserFacts) -> Decision | None:
        return refusal if facts.suspended else None

    return check


def _refuse_outsider(
    names: tuple[str, ...],
    listing: Callable[[UserFacts], frozenset[str]],
    rule: str,
    reason: str,
) -> Check:
    wanted = frozenset(name.casefold() for name in names)
    refusal = Decision(False, rule, reason)
    # reddit granted fewer scopes than asked: say so, not "not a moderator".
    unknown = Decision(
        False,
        rule,
        f"{reason} To check this, the app needs to see your subreddits (reddit's "
        f'"{LISTING_SCOPE}" permission), which was not granted; sign in again and '
        "allow it.",
    )

    def check(facts: UserFacts) -> Decision | None:
        if LISTING_SCOPE not in facts.scopes:
            return unknown
        return None if not wanted.isdisjoint(listing(facts)) else refusal

    return check


def _refuse_young(days: int, rule: str, clock: Callable[[], float]) -> Check:
    needed = days * DAY
    wanted = f"Your reddit account must be at least {_days(days)} old"

    def check(facts: UserFacts) -> Decision | None:
        created = facts.created_utc
        if created is None:
            return Decision(False, rule, f"{wanted}; reddit did not say how old it is.")
        age = clock() - created
        if age >= needed:
            return None
        actual = int(max(age, 0.0) // DAY)
        told = f"{_days(actual)} old" if actual else "less than a day old"
        return Decision(False, rule, f"{wanted}; it is {told}.")

    return check


def _refuse_low_karma(minimum: int, rule: str) -> Check:
    def check(facts: UserFacts) -> Decision | None:
        if facts.karma >= minimum:
            return None
        reason = (
            f"Your reddit account needs at least {minimum} karma; it has {facts.karma}."
        )
        return Decision(False, rule, reason)

    return check


def _refuse_unverified(rule: str) -> Check:
    refusal = Decision(
        False, rule, "Your reddit account needs a verified email address."
    )

    def check(facts: UserFacts) -> Decision | None:
        return None if facts.verified_email else refusal

    return check


def _days(count: int) -> str:
    return f"{count} day" if count == 1 else f"{count} days"


def _either(names: tuple[str, ...]) -> str:
    """("a", "b", "c") -> "r/a, r/b or r/c"."""
    shown = [f"r/{name}" for name in names]
    if len(shown) == 1:
        return shown[0]
    return ", ".join(shown[:-1]) + " or " + shown[-1]
