"""Access rules."""

from __future__ import annotations

import pytest

from gateway.config import AccessConfig
from gateway.policy import Policy


@pytest.mark.parametrize(
    ("users", "user", "allowed"),
    [
        ((), "anyone", True),
        (("alice",), "alice", True),
        (("alice",), "ALICE", True),
        (("alice",), "Alice", True),
        (("alice",), "alice2", False),
        (("alice", "bob"), "bob", True),
        (("alice",), "", False),
    ],
)
def test_users_allow_list_is_case_insensitive(
    users: tuple[str, ...], user: str, allowed: bool
) -> None:
    policy = Policy(AccessConfig(users=frozenset(u.casefold() for u in users)))

    decision = policy.decide(user)

    assert decision.allowed is allowed
    if not allowed:
        assert decision.rule == "access.users"
        assert decision.reason
