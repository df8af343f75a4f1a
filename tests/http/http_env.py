"""The HTTP front end tests' environment: a real upstream over the test PostgreSQL, a real
store, and tokenproxy in front, all on the session's event loop (fixtures: conftest.py).

``http_env`` (per test, on a fresh database from ``pg_dsn``):

    upstream   the customer API of ``customer_api.py`` on a free port, over table
               ``customers`` of the test database
    store      the tokenproxy store (registry, vault, health) on the same database
    tickets    TicketStore; ``env.add_ticket(...)`` creates one
    proxy      tokenproxy on a free port, forwarding to the upstream
    session    an aiohttp client for the proxy (``env.get``/``env.put``/``env.request``)

Identity in these tests: HS256 JWTs signed with ``JWT_SECRET`` (``env.jwt("alice")``), and
``X-Authenticated-User`` trusted from 127.0.0.1 (``trusted_peers`` is switchable per test
through ``http_env_factory``).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import jwt
from aiohttp import web
from customer_api import create_and_seed, make_app

from proxy.crypto.engine import TokenEngine
from proxy.crypto.keyring import Keyring
from proxy.crypto.names import NameTokenizer
from proxy.crypto.phones import PhoneTokenizer
from proxy.crypto.text import TextTokenizer
from proxy.crypto.tokens import Tokenizer
from proxy.http.app import HttpContext, HttpOptions, HttpSettings, build_app
from proxy.http.identity import IdentityVerifier
from proxy.http.justify import CookieSigner
from proxy.policy.routes import Route, RouteTable
from proxy.policy.tickets import Ticket
from proxy.store.audit import AuditLog
from proxy.store.durable import Store, open_store
from proxy.store.tickets import TicketStore

JWT_SECRET = "test-secret-" + "x" * 32
AUDIENCE = "support-api"
ISSUER = "https://sso.example.com/"
COOKIE_SECRET = b"cookie-secret-for-tests-0123456789"


# The key of every env: fixed, so that every run issues the same tokens. Under a random
# key, about one run in sixty made a token that happens to spell another customer's
# value (a phone token equal to a generated customer's number, a name token holding a
# generated name word), which the leak checks, scanning whole bodies, cannot tell from a
# raw value passed. The tokenizers' properties are tested under random keys elsewhere.
KEY = bytes(range(7, 39))


def make_engine(keyring: Keyring, store: Store) -> TokenEngine:
    names, phones = NameTokenizer(), PhoneTokenizer("ID")
    tokenizers: dict[str, Tokenizer] = {
        "name": names,
        "phone": phones,
        "text": TextTokenizer(names, phones),
    }
    return TokenEngine(keyring, tokenizers, store.vault, store.registry)


def routes() -> RouteTable:
    """The routes of tokenproxy.example.toml, plus the by-phone lookup."""
    single = [("$.full_name", "name"), ("$.phone", "phone"), ("$.notes", "text")]
    listed = [
        ("$.customers[*].full_name", "name"),
        ("$.customers[*].phone", "phone"),
        ("$.customers[*].notes", "text"),
    ]
    return RouteTable(
        [
            Route.parse("GET", "/customers/{id}", "$.id", single),
            Route.parse("GET", "/customers", "$.customers[*].id", listed),
            Route.parse("GET", "/customers/by-phone/{phone}", "$.id", single),
            Route.parse("GET", "/snapshot/customers/{id}", "$.id", single),
            Route.parse("GET", "/health", on_unparseable="pass"),
        ]
    )


def settings(upstream: str, **overrides: Any) -> HttpSettings:
    options = HttpOptions(
        listen="127.0.0.1:0",
        upstream=upstream,
        connect_timeout=2.0,
        read_timeout=overrides.pop("read_timeout", 1.0),
        max_body_bytes=overrides.pop("max_body_bytes", 8 * 1024 * 1024),
    )
    identity = IdentityVerifier(
        algorithms=["HS256"],
        secret=JWT_SECRET.encode(),
        audience=AUDIENCE,
        issuer=ISSUER,
        leeway=5,
        trusted_header="X-Authenticated-User",
        trusted_peers=overrides.pop("trusted_peers", ["127.0.0.1/32", "::1/128"]),
    )
    return HttpSettings(
        options=options,
        routes=routes(),
        identity=identity,
        signer=CookieSigner(COOKIE_SECRET),
        cookie_ttl=overrides.pop("cookie_ttl", 900),
        **overrides,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Env:
    upstream_url: str
    proxy_url: str
    pool: asyncpg.Pool
    store: Store
    tickets: TicketStore
    audit: AuditLog
    ctx: HttpContext
    session: aiohttp.ClientSession
    upstream_app: web.Application
    _cleanup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def jwt(self, agent: str, *, secret: str = JWT_SECRET, **claims: Any) -> str:
        """An HS256 JWT for ``agent``; a claim given as None is left out."""
        now = int(time.time())
        payload = {"sub": agent, "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 300}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, secret, algorithm="HS256")

    def auth(self, agent: str, ticket: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.jwt(agent)}"}
        if ticket is not None:
            headers["X-Ticket-Id"] = ticket
        return headers

    async def add_ticket(
        self,
        ticket_id: str,
        agent: str | None,
        customers: list[int],
        status: str = "open",
        expires_in: float = 3600,
    ) -> Ticket:
        now = datetime.now(UTC)
        ticket = Ticket(
            ticket_id,
            agent,
            customers,
            status,
            now + timedelta(seconds=expires_in),
            now,
        )
        await self.tickets.upsert(ticket)
        return ticket

    async def request(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        async with self.session.request(method, self.proxy_url + path, **kwargs) as resp:
            body = await resp.read()
            return resp, body

    async def get(self, path: str, **kwargs: Any) -> tuple[aiohttp.ClientResponse, bytes]:
        return await self.request("GET", path, **kwargs)

    async def customer_row(self, cid: int) -> dict[str, Any]:
        row = await self.pool.fetchrow("SELECT * FROM customers WHERE id = $1", cid)
        assert row is not None
        return dict(row)

    async def all_customers(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch("SELECT * FROM customers ORDER BY id")]

    async def start_proxy(self, **overrides: Any) -> str:
        """Another proxy on this env's store and upstream, with other settings."""
        ctx = HttpContext.create(
            settings(self.upstream_url, **overrides),
            self.ctx.engines.current,
            store=self.store,
            tickets=self.tickets,
            audit=self.audit,
        )
        runner = web.AppRunner(build_app(ctx), access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self._cleanup.append(runner.cleanup)
        return f"http://127.0.0.1:{port}"


EnvFactory = Callable[..., Awaitable[Env]]


async def build_env(
    dsn: str,
    stack: contextlib.AsyncExitStack,
    *,
    extra_customers: int = 0,
    upstream_url: str | None = None,
    **overrides: Any,
) -> Env:
    """Store, seeded customers, upstream and proxy on database ``dsn``; torn down by
    ``stack``."""
    store = await open_store(dsn, run_migrations=True, min_size=1, max_size=5)
    stack.push_async_callback(store.close)
    pool = store.pool
    await create_and_seed(pool, extra=extra_customers)
    tickets = TicketStore(pool, cache_ttl=0.0)
    audit = AuditLog(pool)

    upstream_app = make_app(pool)
    up_runner = web.AppRunner(upstream_app, access_log=None, shutdown_timeout=0.1)
    await up_runner.setup()
    up_port = free_port()
    await web.TCPSite(up_runner, "127.0.0.1", up_port).start()
    stack.push_async_callback(up_runner.cleanup)
    real_upstream = f"http://127.0.0.1:{up_port}"

    keyring = Keyring.single(KEY)
    engine = make_engine(keyring, store)
    ctx = HttpContext.create(
        settings(upstream_url or real_upstream, **overrides),
        engine,
        store=store,
        tickets=tickets,
        audit=audit,
    )
    store.health.on_lost = ctx.on_vault_lost
    runner = web.AppRunner(build_app(ctx), access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stack.push_async_callback(runner.cleanup)

    session = aiohttp.ClientSession(auto_decompress=True)
    stack.push_async_callback(session.close)
    env = Env(
        upstream_url=real_upstream,
        proxy_url=f"http://127.0.0.1:{port}",
        pool=pool,
        store=store,
        tickets=tickets,
        audit=audit,
        ctx=ctx,
        session=session,
        upstream_app=upstream_app,
    )

    async def cleanup_extra() -> None:
        for step in reversed(env._cleanup):
            await step()

    stack.push_async_callback(cleanup_extra)
    return env


__all__ = [
    "AUDIENCE",
    "COOKIE_SECRET",
    "ISSUER",
    "JWT_SECRET",
    "Env",
    "EnvFactory",
    "build_env",
    "free_port",
    "replace",
    "settings",
]
