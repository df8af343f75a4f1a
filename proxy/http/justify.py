"""Which ticket a request cites: the ticket header, or the agent page's signed cookie.

The header (``X-Ticket-Id``) wins when both are present. The cookie is what browser tools
use (they cannot add headers): the agent page (:mod:`proxy.http.agent_page`) sets it after
the agent picked one of their open tickets. It is only a *citation*: whether the ticket
justifies a reveal is decided per record, live, by the store (a ticket closed a second
after the cookie was set stops revealing within the ticket cache's TTL).

Cookie format: ``v1.<payload>.<mac>``, the payload base64url of compact JSON
``{"a": agent, "t": ticket, "e": expiry (unix seconds)}`` and the MAC
HMAC-SHA256(secret, "tokenproxy/ticket-cookie/v1" NUL payload), base64url. A cookie counts
only if its MAC verifies, it has not expired, and its agent is the request's verified agent
(a cookie copied to another identity justifies nothing). It holds ids only, never a value.

The same secret signs the agent page's CSRF tokens (:func:`csrf_token`), under another
label, so neither can be replayed as the other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Literal

import orjson

from proxy.http.identity import valid_agent

__all__ = ["Citation", "CookieSigner", "cite"]

_COOKIE_LABEL = b"tokenproxy/ticket-cookie/v1\x00"
_CSRF_LABEL = b"tokenproxy/csrf/v1\x00"
CSRF_TTL = 3600.0
MAX_TICKET_LENGTH = 200


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def valid_ticket(value: object) -> str | None:
    """``value`` if it can be a ticket id: 1..200 printable characters, else ``None``."""
    if isinstance(value, str):
        value = value.strip()
        if 0 < len(value) <= MAX_TICKET_LENGTH and value.isprintable():
            return value
    return None


@dataclass(frozen=True, slots=True)
class CookieTicket:
    agent: str
    ticket: str
    expires: float


class CookieSigner:
    """Signs and checks the ticket cookie and the agent page's CSRF tokens."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the cookie secret must be at least 16 bytes")
        self._secret = secret

    def _mac(self, label: bytes, data: bytes) -> bytes:
        return hmac.new(self._secret, label + data, hashlib.sha256).digest()

    def sign(self, agent: str, ticket: str, ttl: float, *, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + ttl)
        payload = _b64(orjson.dumps({"a": agent, "t": ticket, "e": expires}))
        return f"v1.{payload}.{_b64(self._mac(_COOKIE_LABEL, payload.encode()))}"

    def verify(self, value: str, *, now: float | None = None) -> CookieTicket | None:
        """The cookie's content if it is genuine and unexpired, else ``None``."""
        try:
            version, payload, mac = value.split(".")
            if version != "v1":
                return None
            expected = self._mac(_COOKIE_LABEL, payload.encode("ascii"))
            if not hmac.compare_digest(expected, _unb64(mac)):
                return None
            data = orjson.loads(_unb64(payload))
        except (ValueError, UnicodeError, orjson.JSONDecodeError):
            return None
        if not isinstance(data, dict):
            return None
        agent, ticket, expires = (
            valid_agent(data.get("a")),
            valid_ticket(data.get("t")),
            data.get("e"),
        )
        if agent is None or ticket is None or not isinstance(expires, int):
            return None
        if (time.time() if now is None else now) >= expires:
            return None
        return CookieTicket(agent, ticket, float(expires))

    def csrf_token(self, agent: str, *, now: float | None = None) -> str:
        issued = str(int(time.time() if now is None else now))
        mac = self._mac(_CSRF_LABEL, f"{agent}\x00{issued}".encode())
        return f"{issued}.{_b64(mac)}"

    def csrf_ok(self, agent: str, token: str, *, now: float | None = None) -> bool:
        issued, _, mac = token.partition(".")
        if not issued.isdigit():
            return False
        age = (time.time() if now is None else now) - int(issued)
        if not 0 <= age <= CSRF_TTL:
            return False
        expected = self._mac(_CSRF_LABEL, f"{agent}\x00{issued}".encode())
        try:
            return hmac.compare_digest(expected, _unb64(mac))
        except (ValueError, UnicodeError):
            return False


CitationSource = Literal["header", "cookie", "none"]


@dataclass(frozen=True, slots=True)
class Citation:
    """The ticket a request cites (``None``: none) and where it came from. ``problem`` says
    why a cited ticket was not taken (a bad header value, a forged or foreign cookie)."""

    ticket: str | None
    source: CitationSource
    problem: str | None = None


NO_CITATION = Citation(None, "none")


def cookie_value(cookie_header: str | None, name: str) -> str | None:
    if not cookie_header or name not in cookie_header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header)
    except Exception:  # a malformed Cookie header: no citation from it
        return None
    morsel = jar.get(name)
    return None if morsel is None else morsel.value


def cite(
    *,
    header_value: str | None,
    cookie_header: str | None,
    cookie_name: str,
    signer: CookieSigner | None,
    agent: str | None,
) -> Citation:
    """The request's citation (module docstring)."""
    if header_value is not None:
        ticket = valid_ticket(header_value)
        if ticket is None:
            return Citation(None, "header", "bad-ticket-header")
        return Citation(ticket, "header")
    raw = cookie_value(cookie_header, cookie_name)
    if raw is None:
        return NO_CITATION
    if signer is None:
        return Citation(None, "cookie", "cookie-not-configured")
    content = signer.verify(raw)
    if content is None:
        return Citation(None, "cookie", "bad-ticket-cookie")
    if agent is None or content.agent != agent:
        return Citation(None, "cookie", "cookie-agent-mismatch")
    return Citation(content.ticket, "cookie")
