"""Identity: verified JWTs (HS256, RS256), a header trusted only from configured peers, and
401 for every refused credential (before anything reaches the upstream)."""

from __future__ import annotations

import hmac
import time

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from customer_api import RECEIVED
from http_env import AUDIENCE, ISSUER, JWT_SECRET, Env

from proxy.http.identity import IdentityError, IdentityVerifier


def _verifier(**kw: object) -> IdentityVerifier:
    base: dict[str, object] = {
        "algorithms": ["HS256"],
        "secret": JWT_SECRET.encode(),
        "audience": AUDIENCE,
        "issuer": ISSUER,
        "leeway": 0,
        "trusted_peers": ["10.0.0.0/8"],
    }
    base.update(kw)
    return IdentityVerifier(**base)  # type: ignore[arg-type]


def _token(key: object = JWT_SECRET, alg: str = "HS256", **claims: object) -> str:
    now = int(time.time())
    payload = {"sub": "alice", "aud": AUDIENCE, "iss": ISSUER, "exp": now + 60}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm=alg)  # type: ignore[arg-type]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (lambda: _token(key="not-the-secret-but-long-enough-xx"), "invalid-jwt"),
        (lambda: _token(exp=int(time.time()) - 10), "jwt-expired"),
        (lambda: _token(nbf=int(time.time()) + 600), "jwt-not-yet-valid"),
        (lambda: _token(aud="billing-api"), "jwt-wrong-audience"),
        (lambda: _token(iss="https://evil.example/"), "jwt-wrong-issuer"),
        (lambda: _token(exp=None), "invalid-jwt"),
        (lambda: _token(sub=None), "invalid-jwt"),
        (lambda: "not.a.jwt", "invalid-jwt"),
        (lambda: jwt.encode({"sub": "alice"}, None, algorithm="none"), "invalid-jwt"),
    ],
    ids=["forged", "expired", "nbf", "audience", "issuer", "no-exp", "no-sub", "garbage", "none"],
)
def test_refused_jwts(token: object, code: str) -> None:
    with pytest.raises(IdentityError) as err:
        _verifier().identify(_bearer(token()), "127.0.0.1")  # type: ignore[operator]
    assert err.value.code == code


def test_valid_jwt_and_cache() -> None:
    verifier = _verifier()
    token = _token()
    assert verifier.identify(_bearer(token), None).agent == "alice"
    assert verifier.identify(_bearer(token), None).source == "jwt"  # from the cache
    assert verifier.identify({"Authorization": "Basic YWxpY2U6eA=="}, None).anonymous


def test_rs256_and_no_key_confusion() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verifier = _verifier(algorithms=["RS256", "HS256"], secret=None, public_key=public_pem)
    assert verifier.identify(_bearer(_token(key=private, alg="RS256")), None).agent == "alice"
    # an HS256 token "signed" with the public key must not verify against it
    header = {"alg": "HS256", "typ": "JWT"}
    segments = [
        jwt.utils.base64url_encode(orjson.dumps(header)),
        jwt.utils.base64url_encode(
            orjson.dumps({"sub": "mallory", "aud": AUDIENCE, "iss": ISSUER, "exp": 2**31})
        ),
    ]
    signing_input = b".".join(segments)
    signature = hmac.new(public_pem, signing_input, "sha256").digest()
    token = (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()
    with pytest.raises(IdentityError):
        verifier.identify(_bearer(token), None)


def test_trusted_header_only_from_trusted_peers() -> None:
    verifier = _verifier()
    headers = {"X-Authenticated-User": "bob"}
    assert verifier.identify(headers, "10.1.2.3").agent == "bob"
    assert verifier.identify(headers, "::ffff:10.1.2.3").agent == "bob"
    for peer in ("127.0.0.1", "192.168.1.1", None, "garbage"):
        with pytest.raises(IdentityError) as err:
            verifier.identify(headers, peer)
        assert err.value.code == "untrusted-identity-header"
    with pytest.raises(IdentityError) as err:
        verifier.identify({**headers, **_bearer(_token())}, "10.1.2.3")
    assert err.value.code == "identity-conflict"


async def test_bad_jwts_get_401_and_never_reach_the_upstream(http_env: Env) -> None:
    before = len(http_env.upstream_app[RECEIVED])
    for token in (
        http_env.jwt("alice", secret="forged-secret-forged-secret-forged"),
        http_env.jwt("alice", exp=int(time.time()) - 100),
        http_env.jwt("alice", aud="another-api"),
    ):
        resp, body = await http_env.request("GET", "/echo/x", headers=_bearer(token))
        assert resp.status == 401
        assert resp.headers["X-Tokenproxy-Denied"] in (
            "invalid-jwt",
            "jwt-expired",
            "jwt-wrong-audience",
        )
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert orjson.loads(body)["error"] == resp.headers["X-Tokenproxy-Denied"]
    assert len(http_env.upstream_app[RECEIVED]) == before


async def test_spoofed_identity_header_from_an_untrusted_peer(http_env: Env) -> None:
    await http_env.add_ticket("T-SPOOF-1", "mallory", [1001])
    proxy = await http_env.start_proxy(trusted_peers=["10.0.0.0/8"])
    async with http_env.session.get(
        proxy + "/customers/1001",
        headers={"X-Authenticated-User": "mallory", "X-Ticket-Id": "T-SPOOF-1"},
    ) as resp:
        body = await resp.read()
        assert resp.status == 401
        assert resp.headers["X-Tokenproxy-Denied"] == "untrusted-identity-header"
    row = await http_env.customer_row(1001)
    assert row["full_name"].encode() not in body


async def test_trusted_header_from_a_trusted_peer_identifies_the_agent(http_env: Env) -> None:
    await http_env.add_ticket("T-TRUST-1", "trudy", [1003])
    resp, body = await http_env.get(
        "/customers/1003", headers={"X-Authenticated-User": "trudy", "X-Ticket-Id": "T-TRUST-1"}
    )
    assert resp.status == 200
    assert resp.headers["X-Tokenproxy-Reveal"] == "allowed; customers=1"
    assert orjson.loads(body)["full_name"] == (await http_env.customer_row(1003))["full_name"]
