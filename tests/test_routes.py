"""Per-route rules, and the paths that try to reach a protected route through a
public one (decisions are made on the path exactly as the upstream gets it)."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.config import AccessConfig, AccessRoute
from gateway.policy import ALLOWED, Policy, Route, UserFacts
from gateway.proxy import has_dot_segment

SCOPES = frozenset({"identity", "mysubreddits"})
MODERATOR = UserFacts(name="mod_1", moderator_of=frozenset({"example"}), scopes=SCOPES)
MEMBER = UserFacts(name="member_1", scopes=SCOPES)

# public "/public", "/admin" for moderators of r/example, the rest: signed in
SITE = Policy(
    AccessConfig(
        routes=(
            AccessRoute(prefix="/public", public=True),
            AccessRoute(prefix="/admin", moderators_of=("example",)),
        )
    )
)


def kind(route: Route) -> str:
    if route.public:
        return "public"
    return "global" if route.index is None else route.prefix.lstrip("/")


@pytest.mark.parametrize(
    ("target", "expected", "dotted"),
    [
        # dot segments: the proxy refuses them first (400); were one to slip
        # through, the lenient reading still lands on /admin
        ("/public/../admin", "admin", True),
        ("/public/..;/admin", "admin", True),
        ("/public%2F..%2Fadmin", "admin", True),
        ("/public/%2e%2e/admin", "admin", True),
        ("/public/x/../../admin", "admin", True),
        ("/public\\..\\admin", "admin", True),
        # an encoded slash is not a segment boundary for a public prefix
        ("/public%2fadmin", "global", False),
        ("/public%2Fx", "global", False),
        # public prefixes are case-exact; protected ones are not
        ("/Public", "global", False),
        ("/PUBLIC/x", "global", False),
        ("/admin", "admin", False),
        ("/admin/", "admin", False),
        ("/admin/users/7", "admin", False),
        ("/Admin", "admin", False),
        ("/ADMIN/x", "admin", False),
        # encodings, double slashes, path parameters
        ("/%61dmin", "admin", False),
        ("/%41DMIN", "admin", False),
        ("/%2561dmin", "admin", False),  # for an upstream that decodes twice
        ("/%EF%BD%81dmin", "admin", False),  # fullwidth "a", NFKC-folded
        ("//admin", "admin", False),
        ("///admin//x", "admin", False),
        ("/admin;x", "admin", False),
        ("/admin;x/y", "admin", False),
        ("/;x/admin", "admin", False),
        ("/admin%3B", "admin", False),
        ("/admin%3Bx/y", "admin", False),
        ("/admin%23x", "admin", False),
        ("/admin%3Fx", "admin", False),
        ("/admin\\x", "admin", False),
        # the query string and fragment are not the path
        ("/admin?x", "admin", False),
        ("/admin?", "admin", False),
        ("/public?/admin", "public", False),
        ("/public?x=/../admin", "public", False),
        ("/public#/admin", "global", False),  # a raw target never has "#"
        ("/public;/x", "global", False),
        ("//public", "global", False),
        # segment boundaries
        ("/administrator", "global", False),
        ("/admin-x", "global", False),
        ("/public/x", "public", False),
        ("/public/", "public", False),
        ("/public", "public", False),
        ("/publicity", "global", False),
        ("/", "global", False),
        ("", "global", False),
    ],
)
def test_path_confusion(target: str, expected: str, dotted: bool) -> None:
    route = SITE.route_for(target)

    assert kind(route) == expected
    assert has_dot_segment(target) is dotted
    assert SITE.decide(MODERATOR, route) is ALLOWED
    refused_by = "access.routes[1].moderators_of" if expected == "admin" else ""
    assert SITE.decide(MEMBER, route).rule == refused_by


def test_a_route_adds_to_the_global_rules() -> None:
    policy = Policy(
        AccessConfig(
            min_karma=100,
            deny_users=frozenset({"banned_mod"}),
            routes=(AccessRoute(prefix="/admin", moderators_of=("example",)),),
        )
    )
    admin, home = policy.route_for("/admin/x"), policy.route_for("/home")
    rich_member = dataclasses.replace(MEMBER, karma=1000)
    poor_mod = dataclasses.replace(MODERATOR, karma=10)
    banned = dataclasses.replace(MODERATOR, name="Banned_Mod", karma=1000)

    assert policy.decide(rich_member, home) is ALLOWED
    assert policy.decide(rich_member, admin).rule == "access.routes[0].moderators_of"
    assert policy.decide(poor_mod, admin).rule == "access.min_karma"
    assert policy.decide(poor_mod, home).rule == "access.min_karma"
    assert policy.decide(dataclasses.replace(poor_mod, karma=100), admin) is ALLOWED
    assert policy.decide(banned, admin).rule == "access.deny_users"
    assert policy.decide(banned, home).rule == "access.deny_users"


def test_deny_users_wins_whichever_list_it_is_on() -> None:
    policy = Policy(
        AccessConfig(
            users=frozenset({"mod_1"}),
            routes=(
                AccessRoute(
                    prefix="/admin",
                    moderators_of=("example",),
                    deny_users=frozenset({"mod_1"}),
                ),
            ),
        )
    )

    assert policy.decide(MODERATOR, policy.route_for("/")) is ALLOWED
    refused = policy.decide(MODERATOR, policy.route_for("/admin"))
    assert refused.rule == "access.routes[0].deny_users"
    assert refused.reason == "This reddit account may not use this page."


def test_the_longest_prefix_wins_and_does_not_inherit_a_shorter_ones_rules() -> None:
    policy = Policy(
        AccessConfig(
            routes=(
                AccessRoute(prefix="/a", users=frozenset({"alice"})),
                AccessRoute(prefix="/a/b/c", users=frozenset({"carol"})),
                AccessRoute(prefix="/a/b", users=frozenset({"bob"})),
            )
        )
    )

    assert policy.route_for("/a/x").index == 0
    assert policy.route_for("/a/b").index == 2
    assert policy.route_for("/a/b/x").index == 2
    assert policy.route_for("/a/b/c/d").index == 1
    assert policy.route_for("/a/bc").index == 0
    assert policy.route_for("/ab").index is None
    assert policy.decide(UserFacts("bob"), policy.route_for("/a/b")) is ALLOWED
    refused = policy.decide(UserFacts("alice"), policy.route_for("/a/b"))
    assert refused.rule == "access.routes[2].users"
    assert (
        refused.reason == "This page is open only to the reddit accounts on its list."
    )


def test_a_route_can_refuse_suspended_accounts_that_the_app_lets_in() -> None:
    policy = Policy(
        AccessConfig(
            allow_suspended=True,
            routes=(AccessRoute(prefix="/post", allow_suspended=False),),
        )
    )
    suspended = UserFacts("someone", suspended=True)

    assert policy.decide(suspended, policy.route_for("/read")) is ALLOWED
    refused = policy.decide(suspended, policy.route_for("/post/new"))
    assert refused.rule == "access.routes[0].allow_suspended"
    assert refused.reason == "Suspended reddit accounts cannot use this page."


def test_a_public_route_lets_everyone_in() -> None:
    policy = Policy(
        AccessConfig(
            users=frozenset({"alice"}),
            deny_users=frozenset({"bob"}),
            routes=(AccessRoute(prefix="/health", public=True),),
        )
    )
    health = policy.route_for("/health")

    assert health.public and health.index == 0
    # No sign-in is needed there, so refusing a signed-in user would mean nothing.
    assert policy.decide(UserFacts("bob", suspended=True), health) is ALLOWED
    assert policy.decide(UserFacts("bob"), policy.route_for("/")).rule == (
        "access.deny_users"
    )


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/api", "api"),
        ("/api/x", "api"),
        ("/api/health", "public"),
        ("/api/health/deep", "public"),
        ("/api/Health", "api"),
        ("/API/health", "api"),
        ("/api//health", "api"),
        ("/api/health;x", "api"),
        ("/api/%68ealth", "api"),
        ("/api/healthz", "api"),
        ("/api/health/../x", "api"),
        ("/api/health/..;/x", "api"),
        ("/docs", "public"),
        ("/docs/intro", "public"),
        ("/docs/internal", "docs/internal"),
        ("/docs/Internal/x", "docs/internal"),
        ("/docs//internal", "docs/internal"),
        ("/docs/%69nternal", "docs/internal"),
        ("/docs/internal%2Fx", "docs/internal"),
        ("/docs/x/../internal", "docs/internal"),
        ("/other", "global"),
    ],
)
def test_routes_nest_both_ways(target: str, expected: str) -> None:
    policy = Policy(
        AccessConfig(
            routes=(
                AccessRoute(prefix="/api", min_karma=1),
                AccessRoute(prefix="/api/health", public=True),
                AccessRoute(prefix="/docs", public=True),
                AccessRoute(prefix="/docs/internal", contributors_of=("team",)),
            )
        )
    )

    assert kind(policy.route_for(target)) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/", "public"),
        ("/anything/at/all", "public"),
        ("/admin", "admin"),
        ("//admin", "admin"),
        ("/x/../admin", "admin"),
        ("/%61dmin/x", "admin"),
    ],
)
def test_a_public_site_with_a_protected_corner(target: str, expected: str) -> None:
    policy = Policy(
        AccessConfig(
            routes=(
                AccessRoute(prefix="/", public=True),
                AccessRoute(prefix="/admin", moderators_of=("example",)),
            )
        )
    )

    assert kind(policy.route_for(target)) == expected


def test_without_routes_every_path_gets_the_global_rules() -> None:
    policy = Policy(AccessConfig(users=frozenset({"alice"})))

    for target in ("/", "/admin", "/%2e%2e/x", "//x;y?z"):
        route = policy.route_for(target)
        assert (route.index, route.public) == (None, False)
        assert policy.decide(UserFacts("bob"), route).rule == "access.users"
