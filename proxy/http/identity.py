"""Who is asking: a verified JWT, or a header set by an authenticating proxy we trust.

Sources, in this order:

1. ``Authorization: Bearer <jwt>``, when JWT verification is configured (an HS256 secret or
   an RS256 public key). Signature, ``exp`` (required), ``nbf``, ``aud`` and ``iss`` are
   checked with ``leeway`` seconds of clock skew; the algorithm must be one of the
   configured ones *and* match the key it is checked with (an HS256 token is never checked
   against the RS256 public key: no key confusion). The agent is the ``agent_claim``.
2. The trusted header (``X-Authenticated-User``), only from a peer address inside
   ``trusted_peers`` (the transport's peer, never ``X-Forwarded-For``).

**Decision: bad credentials are a 401, not a quiet downgrade.** A forged, expired,
not-yet-valid, wrong-audience or wrong-issuer JWT, and an identity header from an untrusted
peer, are refused with ``401`` and a short reason in ``X-Tokenproxy-Denied`` (no request goes
upstream). Serving such a request tokenized would also be safe for customer data, but the
upstream may trust the identity it is forwarded, a presented-but-invalid credential is an
attack or a misconfiguration worth failing loudly on, and a client that gets 401 knows to
sign in again instead of working silently on tokens. A request with *no* credentials is
anonymous: forwarded, and every record tokenized. When both a JWT and a trusted header are
present they must name the same agent (else 401 ``identity-conflict``).

Verified tokens are cached (by the token string, until their ``exp``): an agent's tool sends
the same JWT with every request, and verifying RS256 each time costs more than the rest of
a small response.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jwt

__all__ = ["ANONYMOUS", "Identity", "IdentityError", "IdentityVerifier"]

MAX_AGENT_LENGTH = 200
CACHE_SIZE = 10_000

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Source = Literal["jwt", "header", "anonymous"]

_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_PUBLIC_KEY_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class IdentityError(Exception):
    """Credentials were presented and refused: answer 401 with ``code`` (no PII)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    """The verified agent (``None`` when anonymous) and where the name came from."""

    agent: str | None
    source: Source

    @property
    def anonymous(self) -> bool:
        return self.agent is None


ANONYMOUS = Identity(None, "anonymous")


def valid_agent(value: object) -> str | None:
    """``value`` if it can name an agent: 1..200 printable characters, else ``None``."""
    if isinstance(value, str) and 0 < len(value) <= MAX_AGENT_LENGTH and value.isprintable():
        return value
    return None


def parse_networks(values: Iterable[str]) -> tuple[IpNetwork, ...]:
    """CIDR strings (or bare addresses) as networks; a bad one raises ValueError."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values)


class IdentityVerifier:
    """Turns a request's headers and peer address into an :class:`Identity`."""

    def __init__(
        self,
        *,
        algorithms: Iterable[str] = ("HS256",),
        secret: bytes | None = None,
        public_key: str | bytes | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        agent_claim: str = "sub",
        leeway: float = 30.0,
        trusted_header: str | None = "X-Authenticated-User",
        trusted_peers: Iterable[str] = (),
        cache_size: int = CACHE_SIZE,
    ) -> None:
        algorithms = tuple(algorithms)
        self._hmac_algs = [a for a in algorithms if a in _HMAC_ALGORITHMS] if secret else []
        self._pk_algs = [a for a in algorithms if a in _PUBLIC_KEY_ALGORITHMS] if public_key else []
        unknown = set(algorithms) - _HMAC_ALGORITHMS - _PUBLIC_KEY_ALGORITHMS
        if unknown or "none" in {a.lower() for a in algorithms}:
            raise ValueError(f"unsupported JWT algorithms: {', '.join(sorted(unknown))}")
        self.secret = secret
        self.public_key = public_key
        self.audience = audience or None
        self.issuer = issuer or None
        self.agent_claim = agent_claim
        self.leeway = leeway
        self.trusted_header = trusted_header or None
        self.trusted_peers = parse_networks(trusted_peers)
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._cache_size = cache_size

    @property
    def jwt_enabled(self) -> bool:
        return bool(self._hmac_algs or self._pk_algs)

    def header_names(self) -> tuple[str, ...]:
        """Request headers that carry identity (for ``Vary``)."""
        names = ["Authorization"]
        if self.trusted_header:
            names.append(self.trusted_header)
        return tuple(names)

    def peer_trusted(self, peer: str | None) -> bool:
        if not peer or not self.trusted_peers:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address.version == net.version and address in net for net in self.trusted_peers)

    # -- the one entry point ----------------------------------------------------------

    def identify(self, headers: Mapping[str, str], peer: str | None) -> Identity:
        """The request's identity; raises :class:`IdentityError` for refused credentials."""
        from_jwt = self._from_jwt(headers.get("Authorization"))
        from_header = self._from_header(headers, peer)
        if from_jwt is not None and from_header is not None and from_jwt != from_header:
            raise IdentityError("identity-conflict", "the JWT and the identity header disagree")
        if from_jwt is not None:
            return Identity(from_jwt, "jwt")
        if from_header is not None:
            return Identity(from_header, "header")
        return ANONYMOUS

    def _from_header(self, headers: Mapping[str, str], peer: str | None) -> str | None:
        if not self.trusted_header:
            return None
        value = headers.get(self.trusted_header)
        if value is None:
            return None
        if not self.peer_trusted(peer):
            raise IdentityError(
                "untrusted-identity-header", "the identity header is not accepted from this peer"
            )
        agent = valid_agent(value.strip())
        if agent is None:
            raise IdentityError("bad-identity-header", "the identity header is not a valid name")
        return agent

    def _from_jwt(self, authorization: str | None) -> str | None:
        if not authorization or not self.jwt_enabled:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None  # Basic and other schemes are for the upstream
        token = token.strip()
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None:
            agent, good_until = hit
            if now < good_until:
                self._cache.move_to_end(token)
                return agent
            del self._cache[token]
        claims = self._verify(token)
        named = valid_agent(claims.get(self.agent_claim))
        if named is None:
            raise IdentityError("invalid-jwt", "the JWT names no agent")
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            self._cache[token] = (named, float(exp) + self.leeway)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return named

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise IdentityError("invalid-jwt", "the bearer token is not a JWT") from None
        alg = header.get("alg")
        key: str | bytes
        if alg in self._hmac_algs and self.secret is not None:
            key, algorithms = self.secret, [alg]
        elif alg in self._pk_algs and self.public_key is not None:
            key, algorithms = self.public_key, [alg]
        else:
            raise IdentityError("invalid-jwt", "the JWT's algorithm is not accepted")
        required = ["exp"]
        if self.audience:
            required.append("aud")
        if self.issuer:
            required.append("iss")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "require": required,
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise IdentityError("jwt-expired", "the JWT has expired") from None
        except jwt.ImmatureSignatureError:
            raise IdentityError("jwt-not-yet-valid", "the JWT is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise IdentityError("jwt-wrong-audience", "the JWT is for another audience") from None
        except jwt.InvalidIssuerError:
            raise IdentityError("jwt-wrong-issuer", "the JWT is from another issuer") from None
        except jwt.MissingRequiredClaimError:
            raise IdentityError("invalid-jwt", "the JWT lacks a required claim") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise IdentityError("invalid-jwt", "the JWT's signature is invalid") from None
        if not self.audience and "aud" in claims:
            # PyJWT refuses an aud claim it was not told to expect; mirror that explicitly.
            raise IdentityError("jwt-wrong-audience", "the JWT is for another audience")
        return claims
