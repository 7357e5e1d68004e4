"""Access rules: each alone and combined, the refusal's rule and its words."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gateway.config import AccessConfig, AccessRoute
from gateway.policy import ALLOWED, DAY, Decision, Policy, UserFacts

NOW = 1_800_000_000.0
BOTH_SCOPES = frozenset({"identity", "mysubreddits"})
# A user every rule below would let in, unless the case says otherwise.
GOOD = UserFacts(
    name="Alice",
    created_utc=NOW - 365 * DAY,
    karma=500,
    verified_email=True,
    suspended=False,
    moderator_of=frozenset({"example"}),
    subscriber_of=frozenset({"example", "news"}),
    contributor_of=frozenset({"private_sub"}),
    scopes=BOTH_SCOPES,
)


def access(**rules: Any) -> AccessConfig:
    for name in ("users", "deny_users"):
        if name in rules:
            rules[name] = frozenset(user.casefold() for user in rules[name])
    return AccessConfig(**rules)


def decide(rules: dict[str, Any], facts: dict[str, Any]) -> Decision:
    policy = Policy(access(**rules), clock=lambda: NOW)
    return policy.decide(dataclasses.replace(GOOD, **facts))


@pytest.mark.parametrize(
    ("rules", "facts", "refused_by"),
    [
        # no rules: any account that is not suspended
        ({}, {}, ""),
        ({}, {"name": "someone_else", "karma": -50, "created_utc": None}, ""),
        # users
        ({"users": ["alice"]}, {}, ""),
        ({"users": ["ALICE", "bob"]}, {"name": "alice"}, ""),
        ({"users": ["bob"]}, {}, "access.users"),
        # deny_users
        ({"deny_users": ["bob"]}, {}, ""),
        ({"deny_users": ["alice"]}, {}, "access.deny_users"),
        ({"deny_users": ["ALICE"]}, {"name": "aLiCe"}, "access.deny_users"),
        # moderators_of: any entry holds; names compared case-insensitively
        ({"moderators_of": ("Example",)}, {}, ""),
        ({"moderators_of": ("EXAMPLE",)}, {}, ""),
        ({"moderators_of": ("other", "example")}, {}, ""),
        ({"moderators_of": ("other",)}, {}, "access.moderators_of"),
        ({"moderators_of": ("news",)}, {}, "access.moderators_of"),  # subscriber
        (
            {"moderators_of": ("example",)},
            {"scopes": frozenset({"identity"})},
            "access.moderators_of",
        ),
        # subscribers_of
        ({"subscribers_of": ("News",)}, {}, ""),
        ({"subscribers_of": ("other",)}, {}, "access.subscribers_of"),
        (
            {"subscribers_of": ("news",)},
            {"subscriber_of": frozenset()},
            "access.subscribers_of",
        ),
        # contributors_of (approved users)
        ({"contributors_of": ("Private_Sub",)}, {}, ""),
        ({"contributors_of": ("example",)}, {}, "access.contributors_of"),
        # min_account_age_days
        ({"min_account_age_days": 30}, {}, ""),
        ({"min_account_age_days": 30}, {"created_utc": NOW - 30 * DAY}, ""),
        (
            {"min_account_age_days": 30},
            {"created_utc": NOW - 30 * DAY + 1},
            "access.min_account_age_days",
        ),
        (
            {"min_account_age_days": 30},
            {"created_utc": None},
            "access.min_account_age_days",
        ),
        ({"min_account_age_days": 0}, {"created_utc": None}, ""),
        # min_karma: may be negative; 0 is a rule, not "unset"
        ({"min_karma": 100}, {"karma": 100}, ""),
        ({"min_karma": 100}, {"karma": 99}, "access.min_karma"),
        ({"min_karma": 0}, {"karma": -3}, "access.min_karma"),
        ({"min_karma": -10}, {"karma": -3}, ""),
        # require_verified_email: unknown is not verified
        ({"require_verified_email": True}, {}, ""),
        (
            {"require_verified_email": True},
            {"verified_email": False},
            "access.require_verified_email",
        ),
        (
            {"require_verified_email": True},
            {"verified_email": None},
            "access.require_verified_email",
        ),
        ({"require_verified_email": False}, {"verified_email": None}, ""),
        # allow_suspended: false by default
        ({}, {"suspended": True}, "access.allow_suspended"),
        ({"allow_suspended": True}, {"suspended": True}, ""),
        # combined: every configured rule must hold
        ({"users": ["alice"], "moderators_of": ("example",)}, {}, ""),
        ({"users": ["alice"], "moderators_of": ("other",)}, {}, "access.moderators_of"),
        ({"users": ["bob"], "moderators_of": ("example",)}, {}, "access.users"),
        (
            {"moderators_of": ("example",), "subscribers_of": ("other",)},
            {},
            "access.subscribers_of",
        ),
        ({"moderators_of": ("example",), "contributors_of": ("private_sub",)}, {}, ""),
        ({"min_account_age_days": 30, "min_karma": 100}, {}, ""),
        (
            {"min_account_age_days": 30, "min_karma": 100},
            {"karma": 5},
            "access.min_karma",
        ),
        (
            {"min_account_age_days": 30, "min_karma": 100},
            {"karma": 5, "created_utc": NOW - DAY},
            "access.min_account_age_days",
        ),
        (
            {"min_karma": 100, "require_verified_email": True},
            {"verified_email": False},
            "access.require_verified_email",
        ),
        (
            {
                "users": ["alice"],
                "moderators_of": ("example",),
                "min_account_age_days": 30,
                "min_karma": 100,
                "require_verified_email": True,
            },
            {},
            "",
        ),
        # deny_users always wins: over users, and is reported before any other
        ({"users": ["alice"], "deny_users": ["alice"]}, {}, "access.deny_users"),
        (
            {"moderators_of": ("example",), "deny_users": ["alice"]},
            {},
            "access.deny_users",
        ),
        ({"deny_users": ["alice"]}, {"suspended": True}, "access.deny_users"),
        (
            {"deny_users": ["alice"], "allow_suspended": True, "min_karma": 10**6},
            {},
            "access.deny_users",
        ),
        # a suspended account is refused before the other rules are read
        ({"users": ["bob"]}, {"suspended": True}, "access.allow_suspended"),
    ],
)
def test_every_rule_alone_and_combined(
    rules: dict[str, Any], facts: dict[str, Any], refused_by: str
) -> None:
    decision = decide(rules, facts)

    assert decision.allowed is (refused_by == "")
    assert decision.rule == refused_by
    assert bool(decision.reason) is (refused_by != "")


@pytest.mark.parametrize(
    ("rules", "facts", "reason"),
    [
        (
            {"users": ["bob"]},
            {},
            "This app is open only to the reddit accounts on its list.",
        ),
        ({"deny_users": ["alice"]}, {}, "This reddit account may not use this app."),
        (
            {"moderators_of": ("example",)},
            {"moderator_of": frozenset()},
            "This app is for moderators of r/example.",
        ),
        (
            {"moderators_of": ("Example", "Other", "AskHistorians")},
            {"moderator_of": frozenset()},
            "This app is for moderators of r/Example, r/Other or r/AskHistorians.",
        ),
        (
            {"subscribers_of": ("example", "other")},
            {"subscriber_of": frozenset()},
            "This app is for subscribers of r/example or r/other.",
        ),
        (
            {"contributors_of": ("example",)},
            {},
            "This app is for approved users of r/example.",
        ),
        (
            {"moderators_of": ("example",)},
            {"moderator_of": frozenset(), "scopes": frozenset({"identity"})},
            "This app is for moderators of r/example. To check this, the app needs "
            'to see your subreddits (reddit\'s "mysubreddits" permission), which '
            "was not granted; sign in again and allow it.",
        ),
        (
            {"min_account_age_days": 30},
            {"created_utc": NOW - 12.5 * DAY},
            "Your reddit account must be at least 30 days old; it is 12 days old.",
        ),
        (
            {"min_account_age_days": 2},
            {"created_utc": NOW - 1.5 * DAY},
            "Your reddit account must be at least 2 days old; it is 1 day old.",
        ),
        (
            {"min_account_age_days": 1},
            {"created_utc": NOW - 60},
            "Your reddit account must be at least 1 day old; it is less than a day "
            "old.",
        ),
        (
            {"min_account_age_days": 30},
            {"created_utc": None},
            "Your reddit account must be at least 30 days old; reddit did not say "
            "how old it is.",
        ),
        (
            {"min_karma": 100},
            {"karma": 42},
            "Your reddit account needs at least 100 karma; it has 42.",
        ),
        (
            {"require_verified_email": True},
            {"verified_email": False},
            "Your reddit account needs a verified email address.",
        ),
        ({}, {"suspended": True}, "Suspended reddit accounts cannot use this app."),
    ],
)
def test_refusals_name_the_rule_in_a_moderators_words(
    rules: dict[str, Any], facts: dict[str, Any], reason: str
) -> None:
    assert decide(rules, facts).reason == reason


def test_account_age_is_judged_on_the_clock_of_each_decision() -> None:
    now = [NOW]
    policy = Policy(access(min_account_age_days=30), clock=lambda: now[0])
    young = dataclasses.replace(GOOD, created_utc=NOW - 29 * DAY)

    refused = policy.decide(young)
    now[0] += DAY

    assert refused.rule == "access.min_account_age_days"
    assert policy.decide(young) is ALLOWED


def test_a_name_alone_fails_the_rules_that_need_more() -> None:
    policy = Policy(access(users=["alice"]))

    assert policy.decide(UserFacts(name="ALICE")) is ALLOWED
    assert policy.decide(UserFacts(name="bob")).rule == "access.users"
    # A name alone says nothing about memberships: such rules fail closed.
    only_name = UserFacts(name="alice")
    assert Policy(access(moderators_of=("example",))).decide(only_name).allowed is False


@pytest.mark.parametrize(
    ("rules", "listings", "subreddits", "refresh"),
    [
        ({}, set(), set(), False),
        ({"users": ["alice"], "deny_users": ["bob"]}, set(), set(), False),
        ({"min_account_age_days": 30}, set(), set(), False),  # age only grows
        ({"allow_suspended": False}, set(), set(), False),  # checked at sign-in
        ({"min_karma": 0}, set(), set(), True),
        ({"require_verified_email": True}, set(), set(), True),
        ({"moderators_of": ("Example", "r2")}, {"moderator"}, {"example", "r2"}, True),
        (
            {"subscribers_of": ("a1",), "contributors_of": ("B2",)},
            {"subscriber", "contributor"},
            {"a1", "b2"},
            True,
        ),
        (
            {"routes": (AccessRoute(prefix="/admin", moderators_of=("Mods",)),)},
            {"moderator"},
            {"mods"},
            True,
        ),
        (
            {"routes": (AccessRoute(prefix="/x", min_karma=5),)},
            set(),
            set(),
            True,
        ),
    ],
)
def test_what_the_rules_need_from_reddit(
    rules: dict[str, Any], listings: set[str], subreddits: set[str], refresh: bool
) -> None:
    policy = Policy(access(**rules))

    assert policy.needs_listings == listings
    assert policy.mentioned_subreddits == subreddits
    assert policy.needs_facts_refresh is refresh
