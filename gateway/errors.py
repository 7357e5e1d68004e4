"""The gateway's exception tree; each class maps to one kind of answer.

    GatewayError
    ├── ConfigError            bad configuration: refuse to start (names the key)
    ├── RedditError            a call to reddit did not give what the login needs
    │   ├── RedditUnavailable      unreachable, slow, throttled, blocked, 5xx,
    │   │                          or an answer that is not the JSON we expect
    │   ├── RedditClientRejected   401 from the token endpoint: the operator's
    │   │                          client id or secret is wrong
    │   ├── RedditGrantError       a token answer carrying ``error`` (often in a
    │   │                          200); ``.error`` holds reddit's code
    │   └── RedditIdentityError    ``/api/v1/me`` names no acceptable account
    │                              (no name, bad name, a scope not granted)
    └── SessionStoreUnavailable  the session store (redis) did not answer: 503,
                                 and no request goes through

Messages never contain tokens, codes, secrets or cookie values.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError, ValueError):
    """The configuration cannot be used; ``key`` names the offending setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class RedditError(GatewayError):
    """A call to reddit failed; ``reason`` is a short, loggable description."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RedditUnavailable(RedditError):
    """Reddit could not be reached or answered with something unusable."""


class RedditClientRejected(RedditError):
    """Reddit refused our client credentials: a configuration problem."""


class RedditGrantError(RedditError):
    """Reddit refused the grant; ``error`` is reddit's error code."""

    def __init__(self, error: str, reason: str | None = None) -> None:
        super().__init__(reason or f"reddit answered error={error}")
        self.error = error


class RedditIdentityError(RedditError):
    """``/api/v1/me`` did not describe an account that may sign in."""


class SessionStoreUnavailable(GatewayError):
    """The session store could not be asked; ``reason`` is short and loggable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
