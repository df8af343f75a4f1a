"""Helpers for PostgreSQL front-end tests: a proxy in the test's loop, certificates.

    async with proxied(upstream_dsn) as dsn:            # the same user, database, password
        conn = await asyncpg.connect(dsn)

    async with proxy_env(upstream_dsn, session=my_session) as env:
        env.dsn, env.frontend.connections, env.frontend.cancels ...

The proxy runs in the running loop: clients in the same test must not block it (use
asyncpg, psycopg's AsyncConnection, ``asyncio.to_thread`` or a subprocess).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from proxy.pg.cancels import CancelRegistry
from proxy.pg.relay import relay_plain
from proxy.pg.server import PgFrontEnd, SessionHook
from proxy.pg.startup import PgSettings


@dataclass(frozen=True)
class ProxyEnv:
    dsn: str  # the upstream DSN with the proxy's host and port
    frontend: PgFrontEnd
    host: str
    port: int


def with_address(dsn: str, host: str, port: int) -> str:
    """``dsn`` (a postgresql:// URL) pointed at ``host:port``, all else kept."""
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def upstream_of(dsn: str) -> tuple[str, int]:
    parts = urlsplit(dsn)
    return parts.hostname or "127.0.0.1", parts.port or 5432


@asynccontextmanager
async def proxy_env(
    upstream_dsn: str,
    *,
    session: SessionHook = relay_plain,
    client_tls: ssl.SSLContext | None = None,
    upstream_tls: bool = False,
    upstream_ca_file: str = "",
    connect_timeout: float = 5.0,
    startup_timeout: float = 10.0,
    close_timeout: float = 2.0,
    cancels: CancelRegistry | None = None,
) -> AsyncIterator[ProxyEnv]:
    """A `PgFrontEnd` on 127.0.0.1 (a free port) in front of ``upstream_dsn``'s server."""
    host, port = upstream_of(upstream_dsn)
    settings = PgSettings(
        upstream_host=host,
        upstream_port=port,
        upstream_tls=upstream_tls,
        upstream_ca_file=upstream_ca_file,
        client_tls=client_tls,
        connect_timeout=connect_timeout,
        startup_timeout=startup_timeout,
    )
    frontend = PgFrontEnd(settings, session=session, cancels=cancels)
    [(bound_host, bound_port)] = await frontend.start("127.0.0.1", 0)
    try:
        yield ProxyEnv(
            with_address(upstream_dsn, bound_host, bound_port), frontend, bound_host, bound_port
        )
    finally:
        await frontend.close(close_timeout)


@asynccontextmanager
async def proxied(
    upstream_dsn: str, *, session: SessionHook = relay_plain, **options: Any
) -> AsyncIterator[str]:
    """The proxied DSN of ``upstream_dsn`` (options: those of `proxy_env`)."""
    async with proxy_env(upstream_dsn, session=session, **options) as env:
        yield env.dsn


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until ``check()`` holds (polling); AssertionError after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError("the condition did not come true in time")
        await asyncio.sleep(0.02)


def self_signed(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate (CN ``name``, SAN name and 127.0.0.1) and its key, as PEM
    files in ``directory``; the key is 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
