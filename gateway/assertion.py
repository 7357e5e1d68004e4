"""The signed identity assertion: a short-lived JWT for the upstream, and its JWKS."""

from __future__ import annotations

import hashlib
import json
import math
from base64 import urlsafe_b64encode
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from gateway.config import AssertionConfig
from gateway.errors import ConfigError

Clock = Callable[[], float]
SigningKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

MAX_CACHED_TOKENS = 10_000

_KEY_HELP = {
    "EdDSA": "an Ed25519 key (openssl genpkey -algorithm ed25519 -out key.pem)",
    "ES256": "a P-256 key (openssl genpkey -algorithm EC"
    " -pkeyopt ec_paramgen_curve:P-256 -out key.pem)",
}
# RFC 7638 section 3.2 (RFC 8037 section 2 for OKP): the members a thumbprint hashes.
_THUMBPRINT_MEMBERS = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y")}


class AssertionSigner:
    """Signs who the user is for the upstream, and publishes the key that verifies it.

    token_for() runs on every proxied request: a token is reused for the same
    user until less than half its lifetime is left, so most calls are a dict
    lookup. There is no "jti": the same token is meant to be sent many times,
    so a per-token id would prove nothing, and one per request would defeat
    the cache.
    """

    def __init__(
        self,
        config: AssertionConfig,
        *,
        issuer: str,
        default_audience: str,
        clock: Clock,
        max_cached: int = MAX_CACHED_TOKENS,
    ) -> None:
        self._algorithm = config.algorithm
        self._lifetime = config.lifetime
        self._issuer = issuer
        self._audience = config.audience or default_audience
        self._clock = clock
        self._max_cached = max_cached
        # (user, user_id) -> (token, issued_at, re-sign from); oldest first.
        self._cache: dict[tuple[str, str], tuple[str, int, float]] = {}

        if config.key_file:
            self._key = _load_key(config.key_file, config.algorithm)
        else:
            self._key = _generate_key(config.algorithm)
        self._jwk = _public_jwk(self._key)
        self.kid = _thumbprint(self._jwk)
        self._jwk.update(kid=self.kid, alg=self._algorithm, use="sig")
        self._headers = {"kid": self.kid, "typ": "JWT"}

    def token_for(self, user: str, user_id: str) -> str:
        """The assertion for this user: cached, re-signed at half its lifetime."""
        now = self._clock()
        cached = self._cache.get((user, user_id))
        if cached is not None and cached[1] <= now < cached[2]:
            return cached[0]

        return self._sign(user, user_id, now)

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set that verifies token_for(), for /oauth2/jwks.json."""
        return {"keys": [dict(self._jwk)]}

    def _sign(self, user: str, user_id: str, now: float) -> str:
        # Whole seconds, rounded down, so that an upstream whose clock agrees
        # never sees an "iat" or "nbf" in its future.
        issued_at = math.floor(now)
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": user_id or f"u/{user}",  # never mistakable for a t2_ id
            "name": user,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + self._lifetime,
        }
        token = jwt.encode(
            claims, self._key, algorithm=self._algorithm, headers=self._headers
        )

        key = (user, user_id)
        self._cache.pop(key, None)
        if len(self._cache) >= self._max_cached:
            del self._cache[next(iter(self._cache))]
        self._cache[key] = (token, issued_at, issued_at + self._lifetime / 2)
        return token


def _generate_key(algorithm: str) -> SigningKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def _load_key(path: str, algorithm: str) -> SigningKey:
    """The PEM private key in path, or ConfigError naming assertion.key_file."""
    wanted = _KEY_HELP[algorithm]
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as exc:
        message = f"cannot read {path!r}: {exc.strerror}"
        raise ConfigError("assertion.key_file", message) from None

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        message = f"{path!r} is encrypted; give {wanted} without a passphrase"
        raise ConfigError("assertion.key_file", message) from None
    except (ValueError, UnsupportedAlgorithm):
        message = f"{path!r} is not a PEM private key; give {wanted}"
        raise ConfigError("assertion.key_file", message) from None

    if algorithm == "EdDSA" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if (
        algorithm == "ES256"
        and isinstance(key, ec.EllipticCurvePrivateKey)
        and isinstance(key.curve, ec.SECP256R1)
    ):
        return key
    message = f"{path!r} does not hold {wanted}, which algorithm = {algorithm!r} needs"
    raise ConfigError("assertion.key_file", message)


def _public_jwk(key: SigningKey) -> dict[str, Any]:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return dict(OKPAlgorithm.to_jwk(key.public_key(), as_dict=True))
    return dict(ECAlgorithm.to_jwk(key.public_key(), as_dict=True))


def _thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url without padding)."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
