"""The HTTP front end's settings: one immutable snapshot, built from the config.

:func:`settings_from_config` turns a :class:`proxy.config.Config` (and the environment, for
secrets named by ``*_env`` keys) into :class:`HttpSettings`. A reload builds a new snapshot
and swaps it in (``HttpContext.apply_settings``); requests already running keep theirs.

Secrets: the JWT secret (``identity.jwt_secret_env``) and the cookie secret
(``justification.cookie_secret_env``) are read from the environment here, the RS256 public
key from ``identity.jwt_public_key_file``. Without a cookie secret the proxy makes a random
one and says so in the log: cookies then do not survive a restart and are not shared by
several proxies behind one address.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from proxy.config import Config, secret
from proxy.http.identity import IdentityVerifier
from proxy.http.justify import CookieSigner
from proxy.policy.fields import DEFAULT_FIELDS, DefaultFields
from proxy.policy.routes import RouteTable
from proxy.store.budget import BudgetLimits
from proxy.store.reveal import DEFAULT_LIMITS

__all__ = ["HttpOptions", "HttpSettings", "settings_from_config"]

log = structlog.get_logger("tokenproxy.http.settings")

_PROCESS_SECRET = secrets.token_bytes(32)  # without a configured secret: one per process


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """``[http]`` scalars. ``listen``, ``upstream``, the timeouts and TLS are read at
    start-up; ``max_body_bytes`` and ``reserved_prefix`` follow reloads."""

    listen: str = "127.0.0.1:8080"
    upstream: str = "http://127.0.0.1:9000"
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_body_bytes: int = 64 * 1024 * 1024
    reserved_prefix: str = "/_tokenproxy/"
    tls_cert_file: str = ""
    tls_key_file: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file and self.tls_key_file)

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True)
class HttpSettings:
    """The reloadable policy of the front end: one immutable snapshot per request."""

    options: HttpOptions = field(default_factory=HttpOptions)
    routes: RouteTable = field(default_factory=RouteTable)
    defaults: DefaultFields = DEFAULT_FIELDS
    identity: IdentityVerifier = field(default_factory=IdentityVerifier)
    ticket_header: str = "X-Ticket-Id"
    cookie_name: str = "tokenproxy_ticket"
    cookie_ttl: float = 900.0
    signer: CookieSigner | None = None
    budget: BudgetLimits = DEFAULT_LIMITS

    @property
    def vary(self) -> tuple[str, ...]:
        """Request headers that change what a protected response holds."""
        return (*self.identity.header_names(), self.ticket_header, "Cookie")


def settings_from_config(config: Config, env: Mapping[str, str] | None = None) -> HttpSettings:
    """The HTTP settings of ``config``; secrets from ``env`` (default: the process's)."""
    env = os.environ if env is None else env
    http, ident, just = config.http, config.identity, config.justification
    options = HttpOptions(
        listen=http.listen,
        upstream=http.upstream,
        connect_timeout=http.connect_timeout,
        read_timeout=http.read_timeout,
        max_body_bytes=http.max_body_bytes,
        reserved_prefix=http.reserved_prefix,
        tls_cert_file=http.tls_cert_file,
        tls_key_file=http.tls_key_file,
    )
    jwt_secret = secret(ident.jwt_secret_env, env)
    public_key = Path(ident.jwt_public_key_file).read_bytes() if ident.jwt_public_key_file else None
    identity = IdentityVerifier(
        algorithms=ident.jwt_algorithms,
        secret=jwt_secret.encode() if jwt_secret else None,
        public_key=public_key,
        audience=ident.jwt_audience or None,
        issuer=ident.jwt_issuer or None,
        agent_claim=ident.agent_claim,
        leeway=ident.leeway,
        trusted_header=ident.trusted_header or None,
        trusted_peers=ident.trusted_peers,
    )
    if not identity.jwt_enabled:
        log.info("http.jwt_disabled", detail="no JWT secret or public key: header identity only")
    cookie_secret = secret(just.cookie_secret_env, env)
    if cookie_secret is None or len(cookie_secret.encode()) < 16:
        log.warning(
            "http.cookie_secret_missing",
            env=just.cookie_secret_env,
            detail="using a random secret: ticket cookies end with this process",
        )
        signing_key = _PROCESS_SECRET
    else:
        signing_key = cookie_secret.encode()
    return HttpSettings(
        options=options,
        routes=http.route_table,
        defaults=config.defaults.rule,
        identity=identity,
        ticket_header=just.ticket_header,
        cookie_name=just.cookie_name,
        cookie_ttl=float(just.cookie_ttl),
        signer=CookieSigner(signing_key),
        budget=BudgetLimits(config.budget.per_hour, config.budget.per_day),
    )
