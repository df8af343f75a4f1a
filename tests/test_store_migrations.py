"""proxy.store.migrations and proxy.store.db.connect_pool, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from proxy.embedded_pg import EmbeddedPostgres
from proxy.errors import TokenProxyError
from proxy.store.db import (
    DatabaseAuthError,
    DatabaseNotFoundError,
    DatabaseUnavailableError,
    SchemaError,
    connect_pool,
    describe_dsn,
)
from proxy.store.migrations import (
    LOCK_KEY,
    Migration,
    check_schema,
    discover,
    latest_version,
    migrate,
    schema_version,
)

pytestmark = pytest.mark.timeout(60)


def _with(dsn: str, **parts: str) -> str:
    """The DSN with another user, password, port or database."""
    url = urlsplit(dsn)
    user = parts.get("user", url.username or "postgres")
    password = parts.get("password", url.password or "")
    port = parts.get("port", str(url.port or 5432))
    netloc = f"{user}:{password}@" if password else f"{user}@"
    netloc += f"{url.hostname}:{port}"
    path = "/" + parts.get("database", url.path.lstrip("/"))
    return urlunsplit(url._replace(netloc=netloc, path=path))


# ------------------------------------------------------------------------ discovery


def test_shipped_migrations_are_numbered_from_one() -> None:
    shipped = discover()
    assert shipped[0].version == 1
    assert shipped[0].name == "tokens"
    assert [m.version for m in shipped] == sorted({m.version for m in shipped})
    assert latest_version() == shipped[-1].version
    assert all(len(m.checksum) == 64 for m in shipped)


def test_checksum_ignores_line_endings() -> None:
    unix = Migration.from_text(1, "x", "SELECT 1;\nSELECT 2;\n")
    dos = Migration.from_text(1, "x", "SELECT 1;\r\nSELECT 2;\r\n")
    assert unix.checksum == dos.checksum


# ------------------------------------------------------------------------ migrate


async def test_migrate_applies_everything_once(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await schema_version(conn) is None
        first = await migrate(conn)
        assert [m.version for m in first.applied] == [m.version for m in discover()]
        assert first.version == latest_version()
        assert "applied" in str(first)
        second = await migrate(conn)
        assert second.applied == ()
        assert second.already_applied == tuple(m.version for m in discover())
        assert "up to date" in str(second)
        assert await check_schema(conn) == latest_version()
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        assert {(r["version"], r["name"], r["checksum"]) for r in rows} == {
            (m.version, m.name, m.checksum) for m in discover()
        }
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        assert {"schema_migrations", "token_registry", "token_vault"} <= tables
        # the lock is released
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
    finally:
        await conn.close()


async def test_eight_concurrent_migrations_apply_once(pg_dsn: str) -> None:
    pools = [await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1) for _ in range(8)]
    try:
        reports = await asyncio.gather(*(migrate(p) for p in pools))
    finally:
        await asyncio.gather(*(p.close() for p in pools))
    appliers = [r for r in reports if r.applied]
    assert len(appliers) == 1
    assert all(r.version == latest_version() for r in reports)
    conn = await asyncpg.connect(pg_dsn)
    try:
        count = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(discover())
    finally:
        await conn.close()


async def test_later_migrations_apply_in_order(pg_dsn: str) -> None:
    one = Migration.from_text(1, "one", "CREATE TABLE t1 (a int);")
    two = Migration.from_text(2, "two", "ALTER TABLE t1 ADD b int; CREATE TABLE t2 (c int);")
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert [m.version for m in (await migrate(conn, [one])).applied] == [1]
        report = await migrate(conn, [two, one])
        assert [m.version for m in report.applied] == [2]
        assert report.already_applied == (1,)
        await conn.execute("INSERT INTO t1 (a, b) VALUES (1, 2)")
    finally:
        await conn.close()


async def test_a_failing_migration_rolls_back(pg_dsn: str) -> None:
    good = Migration.from_text(1, "good", "CREATE TABLE ok (a int);")
    bad = Migration.from_text(2, "bad", "CREATE TABLE half (a int); SELECT no_such_function();")
    conn = await asyncpg.connect(pg_dsn)
    try:
        with pytest.raises(SchemaError, match="0002_bad failed and was rolled back"):
            await migrate(conn, [good, bad])
        assert await schema_version(conn) == 1
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
    finally:
        await conn.close()


async def test_a_changed_applied_file_is_refused(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await migrate(conn)
        await conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 1")
        with pytest.raises(SchemaError, match=r"0001_tokens was changed after it was applied"):
            await migrate(conn)
        with pytest.raises(SchemaError, match="checksum"):
            await check_schema(conn)
    finally:
        await conn.close()


async def test_a_newer_schema_is_refused(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await migrate(conn)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')"
        )
        with pytest.raises(SchemaError, match="upgrade tokenproxy"):
            await migrate(conn)
        with pytest.raises(SchemaError, match="upgrade tokenproxy"):
            await check_schema(conn)
    finally:
        await conn.close()


async def test_check_schema_missing_and_outdated(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        with pytest.raises(SchemaError, match="run `tokenproxy db migrate`"):
            await check_schema(conn)
        await migrate(conn, discover()[:1])
        newer = [*discover(), Migration.from_text(latest_version() + 1, "next", "SELECT 1;")]
        with pytest.raises(SchemaError, match="run `tokenproxy db migrate`"):
            await check_schema(conn, newer)
    finally:
        await conn.close()


async def test_migrate_waits_for_the_lock_holder(pg_dsn: str) -> None:
    holder = await asyncpg.connect(pg_dsn)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        with pytest.raises(TokenProxyError, match="migration lock"):
            await migrate(conn, lock_wait=0.3)
        task = asyncio.create_task(migrate(conn))
        await asyncio.sleep(0.2)
        assert not task.done()
        await holder.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
        assert (await asyncio.wait_for(task, 10)).version == latest_version()
    finally:
        await holder.close()
        await conn.close()


# ------------------------------------------------------------------- connect_pool


async def test_connect_pool_on_a_migrated_database(pg_dsn: str) -> None:
    pool = await connect_pool(pg_dsn, require_schema=False)
    try:
        await migrate(pool)
    finally:
        await pool.close()
    pool = await connect_pool(pg_dsn, min_size=0, max_size=2)
    try:
        assert await pool.fetchval("SELECT '{\"a\": [1]}'::jsonb") == {"a": [1]}
    finally:
        await pool.close()


async def test_connect_pool_without_schema(pg_dsn: str) -> None:
    with pytest.raises(SchemaError, match="run `tokenproxy db migrate`"):
        await connect_pool(pg_dsn)


async def test_connect_pool_refused(pg_dsn: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dsn = _with(pg_dsn, port=str(port), password="s3cret-pw")
    with pytest.raises(DatabaseUnavailableError) as info:
        await connect_pool(dsn, timeout=2)
    message = str(info.value)
    assert f"127.0.0.1:{port}/" in message
    assert "s3cret-pw" not in message
    assert "s3cret-pw" not in repr(info.value.__cause__)
    assert "PostgreSQL is running" in message


async def test_connect_pool_timeout(pg_dsn: str) -> None:
    with socket.socket() as sock:  # accepts TCP, never speaks PostgreSQL
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        dsn = _with(pg_dsn, port=str(port), password="s3cret-pw")
        with pytest.raises(DatabaseUnavailableError, match=r"did not answer within 0.5 s") as info:
            await connect_pool(dsn, timeout=0.5)
    assert f":{port}/" in str(info.value)
    assert "s3cret-pw" not in str(info.value)


async def test_connect_pool_unknown_database(pg_dsn: str) -> None:
    dsn = _with(pg_dsn, database="no_such_db_here", password="s3cret-pw")
    with pytest.raises(DatabaseNotFoundError, match="no_such_db_here does not exist") as info:
        await connect_pool(dsn)
    assert "s3cret-pw" not in str(info.value)


async def test_connect_pool_unknown_role(pg_dsn: str) -> None:
    dsn = _with(pg_dsn, user="nobody_here", password="s3cret-pw")
    with pytest.raises(DatabaseAuthError, match="nobody_here") as info:
        await connect_pool(dsn)
    assert "s3cret-pw" not in str(info.value)


@pytest.fixture
def password_user(pg_server: object, pg_dsn: str) -> Iterator[str]:
    """A role that must log in with a password (pg_hba edited on the embedded server)."""
    if not isinstance(pg_server, EmbeddedPostgres):
        pytest.skip("DATABASE_URL is set: cannot edit pg_hba.conf")
    hba = Path(pg_server.data_dir) / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text("host all tp_pw_user 127.0.0.1/32 scram-sha-256\n" + original)
    pg_server.psql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tp_pw_user') THEN "
        "CREATE ROLE tp_pw_user LOGIN PASSWORD 'right-pw'; END IF; END $$; "
        "SELECT pg_reload_conf()"
    )
    try:
        yield "tp_pw_user"
    finally:
        hba.write_text(original)
        pg_server.psql("SELECT pg_reload_conf()")


async def test_connect_pool_wrong_password(pg_dsn: str, password_user: str) -> None:
    good = _with(pg_dsn, user=password_user, password="right-pw")
    pool = await connect_pool(good, require_schema=False)
    await pool.close()
    bad = _with(pg_dsn, user=password_user, password="wrong-pw-123")
    with pytest.raises(DatabaseAuthError, match="refused the password") as info:
        await connect_pool(bad)
    assert "wrong-pw-123" not in str(info.value)
    assert f"{password_user}@" in str(info.value)


def test_describe_dsn_never_shows_the_password() -> None:
    described = describe_dsn("postgresql://bob:hunter2@db.example:6543/tokens")
    assert described == "bob@db.example:6543/tokens"
    assert describe_dsn("postgresql://db.example/x") == "db.example:5432/x"
    assert "hunter2" not in describe_dsn("postgresql://bob:hunter2@[::1]:5/d")
