"""Access rules: decide whether a signed-in reddit user may reach the upstream."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import AccessConfig


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str = ""  # the config key of the rule that refused, for logs
    reason: str = ""  # the refusal in words a moderator understands


ALLOWED = Decision(allowed=True)


class Policy:
    """Judges users against `[access]`; cheap enough to run on every request."""

    def __init__(self, access: AccessConfig) -> None:
        self._users = access.users

    def decide(self, user: str) -> Decision:
        if self._users and user.casefold() not in self._users:
            return Decision(
                allowed=False,
                rule="access.users",
                reason="This app is open only to the reddit accounts on its list.",
            )
        return ALLOWED
