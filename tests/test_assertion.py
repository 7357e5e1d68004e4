"""The identity assertion: verified as the README tells an upstream to, forgeries
refused, expiry, the per-user cache, keys from files."""

from __future__ import annotations

import base64
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.assertion import AssertionSigner
from gateway.config import AssertionConfig
from gateway.errors import ConfigError

ISSUER = "https://app.example.com"
UPSTREAM = "http://127.0.0.1:8080"
USER = "spez"
USER_ID = "t2_1w72"
LIFETIME = 60
ALGORITHMS = ("EdDSA", "ES256")

Verifier = Callable[[Mapping[str, str]], str]


def readme_verifier(jwks_url: str) -> Verifier:
    """The README's "Verify who the user is" snippet, with only the URL changed."""
    jwks = jwt.PyJWKClient(jwks_url)

    def reddit_user(request_headers: Mapping[str, str]) -> str:
        token = request_headers["X-Reddit-Assertion"]
        claims = jwt.decode(
            token,
            jwks.get_signing_key_from_jwt(token),
            algorithms=["EdDSA", "ES256"],
            issuer="https://app.example.com",  # the gateway's server.public_url
            audience="http://127.0.0.1:8080",  # assertion.audience, or upstream.url
            leeway=5,  # seconds of clock difference between the two machines
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
        return str(claims["name"])  # claims["sub"] is the account id, t2_...

    return reddit_user


class JwksServer:
    """A real HTTP server on loopback serving one JWKS, as the gateway would."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(server.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_port}/oauth2/jwks.json"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.01,), daemon=True
        )
        self._thread.start()

    def verifier_for(self, signer: AssertionSigner) -> Verifier:
        self.jwks = signer.jwks()
        return readme_verifier(self.url)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def signer_for(
    algorithm: str = "EdDSA",
    *,
    clock: Callable[[], float] = time.time,
    key_file: str = "",
    audience: str = "",
    max_cached: int = 10_000,
) -> AssertionSigner:
    config = AssertionConfig(
        enabled=True,
        algorithm=algorithm,
        key_file=key_file,
        lifetime=LIFETIME,
        audience=audience,
    )
    return AssertionSigner(
        config,
        issuer=ISSUER,
        default_audience=UPSTREAM,
        clock=clock,
        max_cached=max_cached,
    )


def new_key(algorithm: str) -> ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def private_pem(key: Any, fmt: str = "PKCS8", password: bytes = b"") -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            getattr(serialization.PrivateFormat, fmt),
            encryption,
        )
    )


def write_pem(path: Path, key: Any, fmt: str = "PKCS8") -> str:
    path.write_bytes(private_pem(key, fmt))
    return str(path)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    signing_input = ".".join(
        b64(json.dumps(part).encode()) for part in (header, claims)
    )
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def genuine_claims(now: float, **changes: Any) -> dict[str, Any]:
    issued_at = int(now)
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": UPSTREAM,
        "sub": USER_ID,
        "name": USER,
        "iat": issued_at,
        "nbf": issued_at,
        "exp": issued_at + LIFETIME,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


# Verification, as an upstream does it


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_readme_snippet_verifies_the_user(
    algorithm: str, jwks_server: JwksServer
) -> None:
    signer = signer_for(algorithm)
    reddit_user = jwks_server.verifier_for(signer)

    token = signer.token_for(USER, USER_ID)

    assert reddit_user({"X-Reddit-Assertion": token}) == USER


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_claims_and_header(algorithm: str) -> None:
    clock = FakeClock(1_800_000_000.7)
    signer = signer_for(algorithm, clock=clock)

    token = signer.token_for(USER, USER_ID)

    assert jwt.get_unverified_header(token) == {
        "alg": algorithm,
        "kid": signer.kid,
        "typ": "JWT",
    }
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims == {
        "iss": ISSUER,
        "aud": UPSTREAM,
        "sub": USER_ID,
        "name": USER,
        "iat": 1_800_000_000,
        "nbf": 1_800_000_000,
        "exp": 1_800_000_000 + LIFETIME,
    }


def test_sub_names_the_user_when_the_account_id_is_unknown() -> None:
    # A username may itself look like "t2_abc"; "u/" keeps sub unambiguous.
    token = signer_for().token_for(USER, "")

    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["sub"], claims["name"]) == (f"u/{USER}", USER)


def test_a_configured_audience_replaces_the_upstream_url() -> None:
    token = signer_for(audience="wiki").token_for(USER, USER_ID)

    assert jwt.decode(token, options={"verify_signature": False})["aud"] == "wiki"


@pytest.mark.parametrize(
    ("algorithm", "kty", "crv", "members"),
    [
        ("EdDSA", "OKP", "Ed25519", {"x"}),
        ("ES256", "EC", "P-256", {"x", "y"}),
    ],
)
def test_jwks_publishes_only_the_public_key(
    algorithm: str, kty: str, crv: str, members: set[str]
) -> None:
    signer = signer_for(algorithm)

    jwks = signer.jwks()

    [key] = jwks["keys"]
    assert set(key) == {"kty", "crv", "kid", "alg", "use"} | members
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == (
        kty,
        crv,
        algorithm,
        "sig",
    )
    assert key["kid"] == signer.kid
    jwks["keys"][0]["kid"] = "changed by a caller"
    assert signer.jwks()["keys"][0]["kid"] == signer.kid


def test_kid_is_the_rfc7638_thumbprint(tmp_path: Path) -> None:
    # RFC 8037 appendix A.1 (the key) and A.3 (its thumbprint).
    d = base64.urlsafe_b64decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=")
    key = ed25519.Ed25519PrivateKey.from_private_bytes(d)

    signer = signer_for(key_file=write_pem(tmp_path / "rfc8037.pem", key))

    assert signer.kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    assert signer.jwks()["keys"][0]["x"] == (
        "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    )


# Expiry, by the injected clock


@pytest.mark.parametrize(
    ("issued_ago", "accepted"),
    [
        (0, True),
        (LIFETIME - 10, True),
        (LIFETIME + 6, False),  # expired, beyond the snippet's 5 s leeway
        (-60, False),  # issued in the upstream's future: a clock far ahead
    ],
)
def test_expiry(issued_ago: int, accepted: bool, jwks_server: JwksServer) -> None:
    signer = signer_for(clock=lambda: time.time() - issued_ago)
    reddit_user = jwks_server.verifier_for(signer)

    token = signer.token_for(USER, USER_ID)

    if accepted:
        assert reddit_user({"X-Reddit-Assertion": token}) == USER
    else:
        with pytest.raises((jwt.ExpiredSignatureError, jwt.ImmatureSignatureError)):
            reddit_user({"X-Reddit-Assertion": token})


# The cache on the hot path


@pytest.fixture
def signings(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The claims of every token actually signed (not served from the cache)."""
    signed: list[dict[str, Any]] = []
    encode = jwt.encode

    def counting_encode(payload: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        signed.append(payload)
        return encode(payload, *args, **kwargs)

    monkeypatch.setattr(jwt, "encode", counting_encode)
    return signed


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_token_is_reused_until_half_its_lifetime_is_gone(
    algorithm: str, signings: list[dict[str, Any]]
) -> None:
    clock = FakeClock(1_800_000_000.0)
    signer = signer_for(algorithm, clock=clock)

    first = signer.token_for(USER, USER_ID)
    clock.now += LIFETIME / 2 - 0.001
    assert signer.token_for(USER, USER_ID) == first
    assert len(signings) == 1

    clock.now += 0.001
    second = signer.token_for(USER, USER_ID)
    assert second != first
    assert signings[-1]["iat"] == 1_800_000_000 + LIFETIME // 2

    clock.now += 1
    assert signer.token_for(USER, USER_ID) == second
    assert len(signings) == 2


def test_each_user_and_account_id_has_its_own_token(
    signings: list[dict[str, Any]],
) -> None:
    signer = signer_for(clock=FakeClock(1_800_000_000.0))

    tokens = {
        signer.token_for(user, user_id)
        for user, user_id in [("alice", "t2_a"), ("bob", "t2_b"), ("alice", "")]
    }

    assert len(tokens) == 3
    assert [claims["sub"] for claims in signings] == ["t2_a", "t2_b", "u/alice"]


def test_a_clock_that_went_back_gets_a_new_token(
    signings: list[dict[str, Any]],
) -> None:
    clock = FakeClock(1_800_000_000.0)
    signer = signer_for(clock=clock)
    signer.token_for(USER, USER_ID)

    clock.now -= 10
    signer.token_for(USER, USER_ID)

    assert [claims["iat"] for claims in signings] == [1_800_000_000, 1_799_999_990]


def test_the_cache_is_bounded_and_forgets_the_oldest(
    signings: list[dict[str, Any]],
) -> None:
    signer = signer_for(clock=FakeClock(1_800_000_000.0), max_cached=2)

    for user in ["alice", "bob", "carol", "bob", "alice"]:
        signer.token_for(user, "")

    assert [claims["name"] for claims in signings] == ["alice", "bob", "carol", "alice"]


# Keys from files


@pytest.mark.parametrize(
    ("algorithm", "fmt"),
    [
        ("EdDSA", "PKCS8"),
        ("ES256", "PKCS8"),
        ("ES256", "TraditionalOpenSSL"),  # openssl ecparam -genkey writes this
    ],
)
def test_the_key_file_signs(algorithm: str, fmt: str, tmp_path: Path) -> None:
    key = new_key(algorithm)
    signer = signer_for(algorithm, key_file=write_pem(tmp_path / "key.pem", key, fmt))

    token = signer.token_for(USER, USER_ID)

    claims = jwt.decode(
        token, key.public_key(), algorithms=[algorithm], audience=UPSTREAM
    )
    assert claims["name"] == USER
    same_key = signer_for(algorithm, key_file=str(tmp_path / "key.pem"))
    assert same_key.jwks() == signer.jwks()


def test_without_a_key_file_each_start_has_a_new_key() -> None:
    assert signer_for().kid != signer_for().kid


def _public_pem() -> bytes:
    return (
        new_key("EdDSA")
        .public_key()
        .public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(
    ("algorithm", "contents", "reason"),
    [
        ("ES256", private_pem(new_key("EdDSA")), "does not hold a P-256 key"),
        ("EdDSA", private_pem(new_key("ES256")), "does not hold an Ed25519 key"),
        (
            "ES256",
            private_pem(ec.generate_private_key(ec.SECP384R1())),
            "does not hold a P-256 key",
        ),
        ("EdDSA", private_pem(_RSA), "does not hold an Ed25519 key"),
        ("EdDSA", private_pem(new_key("EdDSA"), password=b"pw"), "is encrypted"),
        ("EdDSA", _public_pem(), "is not a PEM private key"),
        ("EdDSA", b"not a key", "is not a PEM private key"),
        ("EdDSA", None, "cannot read"),
    ],
)
def test_an_unusable_key_file_stops_start_up(
    algorithm: str, contents: bytes | None, reason: str, tmp_path: Path
) -> None:
    path = tmp_path / "key.pem"
    if contents is not None:
        path.write_bytes(contents)

    with pytest.raises(ConfigError, match=reason) as caught:
        signer_for(algorithm, key_file=str(path))

    assert caught.value.key == "assertion.key_file"
    assert str(path) in caught.value.message


# Forgeries, refused by the README's snippet


Forger = Callable[[AssertionSigner, Any, dict[str, Any]], str]


def _signed_by_the_gateway_key(claims: dict[str, Any], kid: str, key: Any) -> str:
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


def _hs256_keyed_with(secret: bytes, kid: str, claims: dict[str, Any]) -> str:
    header = {"alg": "HS256", "kid": kid, "typ": "JWT"}
    return forge(header, claims, lambda data: hmac.new(secret, data, "sha256").digest())


def _jwk_header_injection(
    signer: AssertionSigner, key: Any, claims: dict[str, Any]
) -> str:
    attacker = ed25519.Ed25519PrivateKey.generate()
    jwk = jwt.algorithms.OKPAlgorithm.to_jwk(attacker.public_key(), as_dict=True)
    headers = {"kid": "attacker", "jwk": jwk}
    return jwt.encode(claims, attacker, algorithm="EdDSA", headers=headers)


def _name_changed_after_signing(
    signer: AssertionSigner, key: Any, claims: dict[str, Any]
) -> str:
    header, _, signature = signer.token_for(USER, USER_ID).split(".")
    payload = b64(json.dumps(claims | {"name": "admin"}).encode())
    return f"{header}.{payload}.{signature}"


def _public_key_pem(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _jwk_x(signer: AssertionSigner) -> bytes:
    return base64.urlsafe_b64decode(signer.jwks()["keys"][0]["x"] + "=")


def _another_key(signer: AssertionSigner, key: Any, claims: dict[str, Any]) -> str:
    return _signed_by_the_gateway_key(claims, signer.kid, new_key("EdDSA"))


def _another_algorithm(
    signer: AssertionSigner, key: Any, claims: dict[str, Any]
) -> str:
    headers = {"kid": signer.kid}
    return jwt.encode(claims, new_key("ES256"), algorithm="ES256", headers=headers)


def _alg_none(signer: AssertionSigner, key: Any, claims: dict[str, Any]) -> str:
    return forge({"alg": "none", "kid": signer.kid}, claims, lambda _: b"")


FORGERIES: list[tuple[str, Forger, type[jwt.PyJWTError]]] = [
    # SECURITY: forged identity: a token signed by any key but the gateway's.
    ("another key, the gateway's kid", _another_key, jwt.InvalidSignatureError),
    (
        "another key and algorithm, the gateway's kid",
        _another_algorithm,
        jwt.InvalidAlgorithmError,
    ),
    (
        "a name changed after signing",
        _name_changed_after_signing,
        jwt.InvalidSignatureError,
    ),
    # SECURITY: alg=none: an unsigned token.
    ("alg none", _alg_none, jwt.InvalidAlgorithmError),
    # SECURITY: algorithm confusion: HMAC keyed with the published public key.
    (
        "HS256 keyed with the public key's PEM",
        lambda signer, key, claims: _hs256_keyed_with(
            _public_key_pem(key), signer.kid, claims
        ),
        jwt.InvalidAlgorithmError,
    ),
    (
        "HS256 keyed with the JWK's x",
        lambda signer, _, claims: _hs256_keyed_with(_jwk_x(signer), signer.kid, claims),
        jwt.InvalidAlgorithmError,
    ),
    # SECURITY: key injection: the attacker's own key embedded in the header.
    ("attacker's key in a jwk header", _jwk_header_injection, jwt.PyJWKClientError),
    (
        "no kid",
        lambda signer, key, claims: jwt.encode(claims, key, algorithm="EdDSA"),
        jwt.PyJWKClientError,
    ),
    (
        "the gateway's key, another audience",
        lambda signer, key, claims: _signed_by_the_gateway_key(
            claims | {"aud": "https://other.example.com"}, signer.kid, key
        ),
        jwt.InvalidAudienceError,
    ),
    (
        "the gateway's key, another issuer",
        lambda signer, key, claims: _signed_by_the_gateway_key(
            claims | {"iss": "https://evil.example.com"}, signer.kid, key
        ),
        jwt.InvalidIssuerError,
    ),
    (
        "the gateway's key, no expiry",
        lambda signer, key, claims: _signed_by_the_gateway_key(
            genuine_claims(time.time(), exp=None), signer.kid, key
        ),
        jwt.MissingRequiredClaimError,
    ),
]


@pytest.mark.parametrize(
    ("forger", "error"),
    [pytest.param(forger, error, id=name) for name, forger, error in FORGERIES],
)
def test_the_readme_snippet_refuses_forgeries(
    forger: Forger,
    error: type[jwt.PyJWTError],
    tmp_path: Path,
    jwks_server: JwksServer,
) -> None:
    key = new_key("EdDSA")
    signer = signer_for(key_file=write_pem(tmp_path / "key.pem", key))
    reddit_user = jwks_server.verifier_for(signer)
    claims = genuine_claims(time.time())
    genuine = _signed_by_the_gateway_key(claims, signer.kid, key)
    assert reddit_user({"X-Reddit-Assertion": genuine}) == USER

    token = forger(signer, key, claims)

    with pytest.raises(error):
        reddit_user({"X-Reddit-Assertion": token})


def test_a_missing_header_is_not_a_user(jwks_server: JwksServer) -> None:
    reddit_user = jwks_server.verifier_for(signer_for())

    with pytest.raises(KeyError):
        reddit_user({"X-Reddit-User": USER})
