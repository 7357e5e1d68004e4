"""Gathers from reddit what the access rules judge about a user, at sign-in and at
each re-check: the account itself and, when a rule needs them, its memberships."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import Secret
from gateway.policy import Policy, UserFacts
from gateway.reddit import Identity, RedditClient


@dataclass(frozen=True, slots=True)
class Gathered:
    identity: Identity  # the account, as /api/v1/me gave it
    judged: UserFacts  # what the rules look at, small enough for the session


async def gather_facts(
    reddit: RedditClient,
    access_token: Secret,
    policy: Policy,
    scopes: frozenset[str],
) -> Gathered:
    """What reddit says of the token's account; RedditError when it cannot say.

    Listings are read only for the kinds some rule uses, and only as far as the
    subreddits the rules name (reddit-api.md: one shared 100 QPM budget).
    """
    identity = await reddit.fetch_identity(access_token)

    memberships: dict[str, frozenset[str]] = {}
    for kind in sorted(policy.needs_listings):
        names = await reddit.fetch_memberships(
            access_token, kind, wanted=policy.mentioned_subreddits
        )
        # Keep only what a rule can ask about: the session stays small.
        memberships[kind] = names & policy.mentioned_subreddits

    karma = identity.total_karma
    if karma is None:
        karma = identity.link_karma + identity.comment_karma
    return Gathered(
        identity,
        UserFacts(
            name=identity.name,
            created_utc=identity.created_utc,
            karma=karma,
            verified_email=identity.has_verified_email,
            suspended=identity.is_suspended,
            moderator_of=memberships.get("moderator", frozenset()),
            subscriber_of=memberships.get("subscriber", frozenset()),
            contributor_of=memberships.get("contributor", frozenset()),
            scopes=scopes,
        ),
    )
