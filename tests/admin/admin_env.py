"""Helpers of the admin tests: an upstream customer API, a config file, keys, and a running
:class:`~proxy.admin.runtime.Runtime` with real HTTP clients.

Everything real: the embedded PostgreSQL (``pg_dsn``), ``keys/`` on disk under a KEK, the
config file on disk, the upstream and the proxy listening on TCP ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import orjson
from aiohttp import web

from proxy import keystore
from proxy.admin.runtime import Runtime, RuntimeOptions

ADMIN_TOKEN = "admin-token-for-tests-0123456789abcdef"
OTHER_TOKEN = "another-admin-token-0123456789abcdef"
TOKEN_NAME = "helpdesk-webhook"

# The customers of the upstream; none of these may ever appear in /metrics or a log label.
SEED: list[tuple[int, str, str]] = [
    (1001, "Budi Santoso", "+62 812-3456-789"),
    (1002, "Siti Nurhaliza Rahmawati", "+62 813-9876-5432"),
    (1003, "Zoë O'Brien-Łukasz", "+44 20 7946 0958"),
    (1004, "Иван Петрович Сидоров", "+7 912 345-67-89"),
    (1005, "Sukarno", "+62 811-1010-1945"),
]


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------- upstream


def record(cid: int) -> dict[str, Any] | None:
    for i, name, phone in SEED:
        if i == cid:
            return {
                "id": i,
                "full_name": name,
                "phone": phone,
                "notes": f"Called {name} back on {phone} about the router.",
                "tier": "gold",
            }
    return None


def upstream_app() -> web.Application:
    async def one(request: web.Request) -> web.Response:
        found = record(int(request.match_info["id"]))
        return web.json_response(found) if found else web.json_response({}, status=404)

    async def listing(request: web.Request) -> web.Response:
        customers = [record(i) for i, _, _ in SEED]
        return web.json_response({"customers": customers, "count": len(customers)})

    async def by_phone(request: web.Request) -> web.Response:
        phone = request.match_info["phone"]
        for i, _, p in SEED:
            if p == phone:
                return web.json_response(record(i))
        return web.json_response({"error": "not found"}, status=404)

    async def malformed(request: web.Request) -> web.Response:
        return web.Response(body=b'{"full_name": "Budi Sant', content_type="application/json")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "1.5")))
        return web.json_response(record(1001))

    app = web.Application()
    app.router.add_get("/customers", listing)
    app.router.add_get("/customers/by-phone/{phone}", by_phone)
    app.router.add_get("/customers/{id:\\d+}", one)
    app.router.add_get("/malformed", malformed)
    app.router.add_get("/slow", slow)
    return app


@contextlib.asynccontextmanager
async def running_upstream() -> AsyncIterator[str]:
    runner = web.AppRunner(upstream_app(), access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------- keys, config

ROUTES = """
[[http.routes]]
method = "GET"
path = "/customers/{id}"
customer_id = "$.id"
fields = [
  { path = "$.full_name", kind = "name" },
  { path = "$.phone", kind = "phone" },
  { path = "$.notes", kind = "text" },
]

[[http.routes]]
method = "GET"
path = "/customers"
customer_id = "$.customers[*].id"
fields = [
  { path = "$.customers[*].full_name", kind = "name" },
  { path = "$.customers[*].phone", kind = "phone" },
  { path = "$.customers[*].notes", kind = "text" },
]

[[http.routes]]
method = "GET"
path = "/customers/by-phone/{phone}"
customer_id = "$.id"
fields = [
  { path = "$.full_name", kind = "name" },
  { path = "$.phone", kind = "phone" },
  { path = "$.notes", kind = "text" },
]
"""


def make_keys(directory: Path) -> bytes:
    """A keys directory with its first data key; returns the KEK."""
    kek = keystore.generate_kek()
    keystore.init_keyring(directory, kek)
    return kek


def split_password(dsn: str) -> tuple[str, str | None]:
    """The DSN without its password (the config refuses one), and the password."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn, None
    host = parts.netloc.rpartition("@")[2]
    user = quote(parts.username or "", safe="")
    return urlunsplit(parts._replace(netloc=f"{user}@{host}")), parts.password


def config_text(
    *,
    dsn: str,
    keys_dir: Path,
    upstream: str,
    http_port: int = 18080,
    admin_port: int = 18081,
    tokens: tuple[tuple[str, str], ...] = ((TOKEN_NAME, ADMIN_TOKEN),),
    metrics_public: bool = True,
    routes: str = ROUTES,
    extra: str = "",
) -> str:
    token_lines = ",\n".join(
        f'  {{ name = "{name}", sha256 = "{sha256(token)}" }}' for name, token in tokens
    )
    return f"""
[keys]
dir = "{keys_dir}"

[database]
url = "{dsn}"
pool_min = 1
pool_max = 4
connect_timeout = 2.0
migrate_on_start = true

[identity]
jwt_secret_env = "TOKENPROXY_TEST_UNSET_JWT_SECRET"
trusted_header = "X-Authenticated-User"
trusted_peers = ["127.0.0.1/32", "::1/128"]

[http]
listen = "127.0.0.1:{http_port}"
upstream = "{upstream}"
connect_timeout = 2.0
read_timeout = 5.0
{routes}

[admin]
listen = "127.0.0.1:{admin_port}"
metrics_public = {str(metrics_public).lower()}
tokens = [
{token_lines}
]

[logging]
level = "info"
{extra}
"""


# ------------------------------------------------------------------------ the env


@dataclass
class AdminEnv:
    runtime: Runtime
    proxy_url: str
    admin_url: str
    session: aiohttp.ClientSession
    config_path: Path
    keys_dir: Path
    kek: bytes
    dsn: str
    upstream: str
    config_kwargs: dict[str, Any] = field(default_factory=dict)

    def auth(self, token: str = ADMIN_TOKEN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def admin(
        self, method: str, path: str, *, token: str | None = ADMIN_TOKEN, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers.update(self.auth(token))
        async with self.session.request(
            method, self.admin_url + path, headers=headers, **kwargs
        ) as resp:
            raw = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
            body = orjson.loads(raw) if ctype.startswith("application/json") else raw.decode()
            return resp.status, body, resp

    async def get(
        self, path: str, *, agent: str | None = None, ticket: str | None = None
    ) -> tuple[aiohttp.ClientResponse, Any]:
        headers = {}
        if agent is not None:
            headers["X-Authenticated-User"] = agent
        if ticket is not None:
            headers["X-Ticket-Id"] = ticket
        async with self.session.get(self.proxy_url + path, headers=headers) as resp:
            raw = await resp.read()
            try:
                return resp, orjson.loads(raw)
            except orjson.JSONDecodeError:
                return resp, raw.decode()

    def write_config(self, **overrides: Any) -> None:
        kwargs = {**self.config_kwargs, **overrides}
        self.config_path.write_text(
            config_text(dsn=self.dsn, keys_dir=self.keys_dir, upstream=self.upstream, **kwargs)
        )

    async def ticket(
        self, ticket_id: str, customers: list[Any], *, agent: str | None = "alice",
        status: str = "open", expires_in: float = 3600, **extra: Any,
    ) -> tuple[int, Any]:
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + expires_in))
        body = {"agent": agent, "customer_ids": customers, "status": status,
                "expires_at": expires, **extra}
        status_code, answer, _ = await self.admin("PUT", f"/tickets/{ticket_id}", json=body)
        return status_code, answer


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, within: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + within
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def start_env(
    stack: contextlib.AsyncExitStack,
    dsn: str,
    tmp_path: Path,
    upstream: str,
    **config_kwargs: Any,
) -> AdminEnv:
    """Keys, a config file and a running runtime on ``dsn``; torn down by ``stack``."""
    keys_dir = tmp_path / "keys"
    kek = make_keys(keys_dir)
    bare, password = split_password(dsn)
    env = {keystore.KEK_ENV: keystore.encode_kek(kek)}
    if password:
        env["TOKENPROXY_DATABASE_PASSWORD"] = password
    config_path = tmp_path / "tokenproxy.toml"
    config_path.write_text(
        config_text(dsn=bare, keys_dir=keys_dir, upstream=upstream, **config_kwargs)
    )
    runtime = await Runtime.open(
        RuntimeOptions(
            config_path=config_path,
            env=env,
            drain_timeout=2.0,
            health_interval=0.2,
            health_min_backoff=0.05,
            health_max_backoff=0.5,
            http_listen=("127.0.0.1", 0),
            admin_listen=("127.0.0.1", 0),
            pg_listen=("127.0.0.1", 0),
            handle_signals=False,
        )
    )
    stack.push_async_callback(runtime.shutdown)
    addresses = await runtime.start()
    session = aiohttp.ClientSession()
    stack.push_async_callback(session.close)
    (http_host, http_port), (admin_host, admin_port) = addresses["http"][0], addresses["admin"][0]
    return AdminEnv(
        runtime=runtime,
        proxy_url=f"http://{http_host}:{http_port}",
        admin_url=f"http://{admin_host}:{admin_port}",
        session=session,
        config_path=config_path,
        keys_dir=keys_dir,
        kek=kek,
        dsn=bare,
        upstream=upstream,
        config_kwargs=config_kwargs,
    )
