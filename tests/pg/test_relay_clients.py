"""Real clients through the proxy's connection layer and plain relay (proxy.pg.server,
startup, relay) against the suite's PostgreSQL: psql, asyncpg, psycopg 3, SQLAlchemy."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import psycopg
import pytest
from pg_env import ProxyEnv, eventually, proxy_env
from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from proxy.pg.messages import CancelRequest

pytestmark = pytest.mark.timeout(60)

PSQL = "/usr/bin/psql"
T = 20.0  # an upper bound for any single step


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "orm_customer"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


@pytest.fixture(scope="module")
async def env(module_dsn: str) -> AsyncIterator[ProxyEnv]:
    async with proxy_env(module_dsn) as env:
        yield env


async def psql(
    dsn: str, *args: str, stdin: bytes = b"", extra_env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGCONNECT_TIMEOUT": "10"}
    environ |= extra_env or {}
    proc = await asyncio.create_subprocess_exec(
        PSQL,
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        dsn,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), T)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_psql_queries_and_copies_through_the_proxy(env: ProxyEnv) -> None:
    code, out, err = await psql(env.dsn, "-c", "CREATE TABLE ps_t (id int, name text)")
    assert code == 0, err
    rows = b"1\tAda\n2\tGrace\n"
    code, _, err = await psql(env.dsn, "-c", r"\copy ps_t from stdin", stdin=rows)
    assert code == 0, err
    code, out, err = await psql(env.dsn, "-c", r"\copy (select * from ps_t order by id) to stdout")
    assert code == 0, err
    assert out == rows.decode()
    code, out, err = await psql(env.dsn, "-c", "select count(*), current_user from ps_t")
    assert (code, out.strip()) == (0, "2|postgres"), err


async def test_psql_with_gssencmode_prefer_and_sslmode_prefer(env: ProxyEnv) -> None:
    modes = {"PGGSSENCMODE": "prefer", "PGSSLMODE": "prefer"}
    code, out, err = await psql(env.dsn, "-c", "select 7", extra_env=modes)
    assert (code, out.strip()) == (0, "7"), err


async def test_asyncpg_features(env: ProxyEnv) -> None:
    conn = await asyncpg.connect(env.dsn, timeout=T)
    other = await asyncpg.connect(env.dsn, timeout=T)
    try:
        await conn.execute("CREATE TABLE ap_t (id int PRIMARY KEY, name text)")
        # prepared statements
        insert = await conn.prepare("INSERT INTO ap_t VALUES ($1, $2)")
        for i in range(3):
            await insert.fetch(i, f"n{i}")
        assert await conn.fetchval("SELECT name FROM ap_t WHERE id = $1", 2) == "n2"
        # a transaction rolled back
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute("INSERT INTO ap_t VALUES (10, 'gone')")
                raise RuntimeError
        assert await conn.fetchval("SELECT count(*) FROM ap_t") == 3
        # COPY
        await conn.copy_records_to_table(
            "ap_t", records=[(100 + i, f"c{i}") for i in range(500)], columns=["id", "name"]
        )
        assert await conn.fetchval("SELECT count(*) FROM ap_t") == 503
        # a cursor
        async with conn.transaction():
            seen = [r["id"] async for r in conn.cursor("SELECT id FROM ap_t ORDER BY id")]
        assert len(seen) == 503 and seen[:3] == [0, 1, 2]
        # large objects through the lo_* functions
        async with conn.transaction():
            oid = await conn.fetchval("SELECT lo_from_bytea(0, $1)", b"\x00big\xff" * 1000)
            assert await conn.fetchval("SELECT lo_get($1)", oid) == b"\x00big\xff" * 1000
            await conn.execute("SELECT lo_unlink($1)", oid)
        # LISTEN / NOTIFY across two proxied sessions
        got: asyncio.Queue[str] = asyncio.Queue()
        await conn.add_listener("ap_chan", lambda *args: got.put_nowait(args[3]))
        await other.execute("NOTIFY ap_chan, 'hello'")
        assert await asyncio.wait_for(got.get(), T) == "hello"
    finally:
        await conn.close()
        await other.close()


async def test_psycopg_text_binary_and_pipeline(env: ProxyEnv) -> None:
    async with await psycopg.AsyncConnection.connect(env.dsn, connect_timeout=10) as conn:
        await conn.execute("CREATE TABLE pc_t (id int, name text, data bytea)")
        async with conn.cursor(binary=True) as cur:
            await cur.execute("INSERT INTO pc_t VALUES (%s, %s, %s)", (1, "bin", b"\x00\x01"))
            await cur.execute("SELECT id, name, data FROM pc_t")
            assert await cur.fetchall() == [(1, "bin", b"\x00\x01")]
        cur = await conn.execute("SELECT id::text, name FROM pc_t")
        assert await cur.fetchall() == [("1", "bin")]
        async with conn.pipeline():
            curs = [
                await conn.execute("INSERT INTO pc_t (id, name) VALUES (%s, %s)", (i, f"p{i}"))
                for i in range(2, 12)
            ]
            last = await conn.execute("SELECT count(*) FROM pc_t")
        assert len(curs) == 10
        assert await last.fetchone() == (11,)
        await conn.commit()


async def test_sqlalchemy_orm_round_trip(env: ProxyEnv) -> None:
    url = env.dsn.replace("postgresql://", "postgresql+psycopg://", 1)

    def round_trip() -> list[tuple[int, str]]:  # in a thread: the proxy runs in this loop
        engine = create_engine(url, connect_args={"connect_timeout": 10})
        try:
            Base.metadata.create_all(engine)
            with Session(engine) as session:
                session.add_all([Customer(id=1, name="Ada"), Customer(id=2, name="Alan")])
                session.commit()
            with Session(engine) as session:
                ada = session.get(Customer, 1)
                assert ada is not None
                ada.name = "Ada L."
                session.commit()
                rows = session.execute(select(Customer).order_by(Customer.id)).scalars()
                return [(c.id, c.name) for c in rows]
        finally:
            engine.dispose()

    result = await asyncio.wait_for(asyncio.to_thread(round_trip), T)
    assert result == [(1, "Ada L."), (2, "Alan")]


async def test_parameter_status_reaches_the_client(env: ProxyEnv) -> None:
    async with await psycopg.AsyncConnection.connect(
        env.dsn, application_name="before", connect_timeout=10
    ) as conn:
        assert conn.info.parameter_status("application_name") == "before"
        await conn.execute("SET application_name = 'via-proxy'")
        assert conn.info.parameter_status("application_name") == "via-proxy"
    conn2 = await asyncpg.connect(env.dsn, timeout=T)
    try:
        await conn2.execute("SET application_name = 'apg'")
        assert conn2.get_settings().application_name == "apg"
    finally:
        await conn2.close()


async def test_asyncpg_timeout_cancels_only_its_backend(env: ProxyEnv) -> None:
    victim = await asyncpg.connect(env.dsn, timeout=T)
    bystander = await asyncpg.connect(env.dsn, timeout=T)
    try:
        slow = asyncio.create_task(bystander.fetchval("SELECT 1 FROM pg_sleep(1.5)"))
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await victim.fetchval("SELECT pg_sleep(30)", timeout=0.5)
        assert await victim.fetchval("SELECT 1") == 1  # usable: the query was cancelled
        assert asyncio.get_running_loop().time() - started < 10
        assert await asyncio.wait_for(slow, T) == 1  # not cancelled
    finally:
        await victim.close()
        await bystander.close()


@pytest.mark.parametrize("protocol", ["3.0", "3.2"])
async def test_psycopg_cancel_reaches_its_backend(env: ProxyEnv, protocol: str) -> None:
    conn = await psycopg.AsyncConnection.connect(
        env.dsn, autocommit=True, connect_timeout=10, max_protocol_version=protocol
    )
    bystander = await psycopg.AsyncConnection.connect(env.dsn, autocommit=True)
    try:
        # the client holds the proxy's key: the real pid (free here), a secret as long
        key, target = env.frontend.cancels._entries[conn.info.backend_pid]
        assert target.pid == conn.info.backend_pid
        assert len(key) == len(target.secret_key) == (32 if protocol == "3.2" else 4)
        assert key != target.secret_key
        query = asyncio.create_task(conn.execute("SELECT pg_sleep(30)"))
        other = asyncio.create_task(bystander.execute("SELECT pg_sleep(1)"))
        await asyncio.sleep(0.3)
        # (conn.cancel() would block this loop, which the proxy shares: libpq's
        # PQcancel keeps the GIL; cancel_safe is libpq 17's non-blocking cancel)
        await asyncio.wait_for(conn.cancel_safe(timeout=10), T)
        with pytest.raises(psycopg.errors.QueryCanceled):
            await asyncio.wait_for(query, T)
        await asyncio.wait_for(other, T)  # no error: the other session ran to the end
    finally:
        await conn.close()
        await bystander.close()


async def test_a_cancel_with_an_unknown_key_is_dropped(env: ProxyEnv) -> None:
    conn = await asyncpg.connect(env.dsn, timeout=T)
    try:
        pid = conn.get_server_pid()
        slow = asyncio.create_task(conn.fetchval("SELECT 1 FROM pg_sleep(1)"))
        await asyncio.sleep(0.2)
        for key in (secrets.token_bytes(4), secrets.token_bytes(32)):
            reader, writer = await asyncio.open_connection(env.host, env.port)
            writer.write(CancelRequest(pid, key).encode())
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), T) == b""  # closed, no answer
            writer.close()
        assert await asyncio.wait_for(slow, T) == 1  # ran to the end
    finally:
        await conn.close()


async def test_sessions_and_keys_are_released(env: ProxyEnv) -> None:
    conns = [await asyncpg.connect(env.dsn, timeout=T) for _ in range(3)]
    assert env.frontend.connections >= 3
    assert len(env.frontend.cancels) >= 3
    for conn in conns:
        await conn.close()
    await eventually(lambda: not env.frontend.connections and not len(env.frontend.cancels))


async def test_pipelined_bytes_after_startup_are_relayed(env: ProxyEnv) -> None:
    """A raw client that sends its Query right behind the StartupMessage (trust auth)."""
    from proxy.pg.codec import BackendDecoder
    from proxy.pg.messages import DataRow, Query, ReadyForQuery, StartupMessage, Terminate

    user, database = "postgres", env.dsn.rsplit("/", 1)[1]
    reader, writer = await asyncio.open_connection(env.host, env.port)
    startup = StartupMessage({"user": user, "database": database})
    writer.write(startup.encode() + Query("SELECT 40 + 2").encode())
    await writer.drain()
    decoder = BackendDecoder()
    rows: list[DataRow] = []
    ready = 0
    async with asyncio.timeout(T):
        while ready < 2:
            data = await reader.read(65536)
            assert data, "the proxy closed"
            decoder.feed(data)
            for message in decoder.messages():
                if isinstance(message, ReadyForQuery):
                    ready += 1
                elif isinstance(message, DataRow):
                    rows.append(message)
    assert [r.columns for r in rows] == [(b"42",)]
    writer.write(Terminate().encode())
    writer.close()
