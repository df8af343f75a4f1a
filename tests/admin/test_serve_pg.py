"""`tokenproxy serve` with `[pg] enabled`: the PostgreSQL listener runs beside the HTTP one,
on the same keys, store, tickets and audit log."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from admin_env import AdminEnv, running_upstream, start_env

from proxy import keystore
from proxy.pg.cancels import CancelRegistry
from proxy.pg.messages import CancelRequest
from proxy.pg.server import PgFrontEnd
from proxy.store.cancel_keys import CancelKeyTable

NAME, PHONE = "Wulan Sekar Arum", "+62 812-4455-9901"


def pg_section(dsn: str) -> str:
    parts = urlsplit(dsn)
    return f"""
[pg]
enabled = true
listen = "127.0.0.1:16432"  # replaced by pg_listen in the tests
upstream = "{parts.hostname}:{parts.port}"
catalog_user = "{parts.username}"

[[pg.tables]]
table = "public.people"
customer_id = "id"
columns = {{ full_name = "name", phone = "phone" }}
"""


@pytest.fixture
async def env(pg_dsn: str, tmp_path: Path) -> AsyncIterator[AdminEnv]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(
            "CREATE TABLE people (id int PRIMARY KEY, full_name text, phone text);"
            f"INSERT INTO people VALUES (7, '{NAME}', '{PHONE}'), (8, 'Another Person', NULL)"
        )
    finally:
        await conn.close()
    async with contextlib.AsyncExitStack() as stack:
        upstream = await stack.enter_async_context(running_upstream())
        yield await start_env(stack, pg_dsn, tmp_path, upstream, extra=pg_section(pg_dsn))


def proxied(env: AdminEnv) -> str:
    host, port = env.runtime.addresses["pg"][0]
    parts = urlsplit(env.dsn)
    return parts._replace(netloc=f"{parts.username}@{host}:{port}").geturl()


async def test_serve_listens_for_postgresql_clients(env: AdminEnv) -> None:
    conn = await asyncpg.connect(proxied(env))
    try:
        rows = await conn.fetch("SELECT id, full_name, phone FROM people ORDER BY id")
        assert rows[0]["full_name"] != NAME and len(rows[0]["full_name"]) == len(NAME)
        assert rows[0]["phone"] != PHONE and rows[1]["phone"] is None
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT lower(full_name) FROM people")
        agent = await conn.fetchval("SELECT current_user")
    finally:
        await conn.close()
    status, _ = await env.ticket("SUP-PG-1", [7], agent=agent)
    assert status in (200, 201)
    conn = await asyncpg.connect(proxied(env))
    try:
        row = await conn.fetchrow(
            "SELECT id, full_name, phone FROM people WHERE id = 7 /*ticket='SUP-PG-1'*/"
        )
    finally:
        await conn.close()
    assert row is not None and (row["full_name"], row["phone"]) == (NAME, PHONE)


async def test_keyring_reload_reaches_the_postgresql_listener(env: AdminEnv) -> None:
    conn = await asyncpg.connect(proxied(env))
    try:
        before = await conn.fetchval("SELECT full_name FROM people WHERE id = 7")
        await asyncio.to_thread(keystore.rotate_keys, env.keys_dir, env.kek)
        status, body, _ = await env.admin("POST", "/keyring/reload")
        assert status == 200, body
        after = await conn.fetchval("SELECT full_name FROM people WHERE id = 7")
        # An old token still finds the customer after the rotation.
        assert await conn.fetchval("SELECT id FROM people WHERE full_name = $1", before) == 7
    finally:
        await conn.close()
    assert after != before


async def test_a_cancel_that_reaches_another_proxy_cancels_the_query(env: AdminEnv) -> None:
    """Another proxy on the same state database (as behind a load balancer) finds the
    session's key in it and passes the cancel on."""
    assert env.runtime.pg is not None
    async with asyncpg.create_pool(env.dsn, min_size=1, max_size=2) as pool:
        other = PgFrontEnd(env.runtime.pg.settings,
                           cancels=CancelRegistry(shared=CancelKeyTable(pool)))
        [(host, port)] = await other.start("127.0.0.1", 0)
        conn = await asyncpg.connect(proxied(env))
        try:
            pid = conn.get_server_pid()
            stored = await pool.fetchval(_UPSTREAM_PID, pid)
            assert stored == pid  # the real pid, free here: the key's own
            secret = env.runtime.pg.front_end.cancels._entries[pid][0]
            slow = asyncio.create_task(conn.fetchval("SELECT pg_sleep(30)"))
            await asyncio.sleep(0.3)
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(CancelRequest(pid, secret).encode())
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed once passed on
            writer.close()
            with pytest.raises(asyncpg.QueryCanceledError):
                await asyncio.wait_for(slow, 10)
        finally:
            await conn.close()
            await other.close(2)
        for _ in range(100):  # the session's row goes when it ends
            if await pool.fetchval(_UPSTREAM_PID, pid) is None:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the ended session's cancel key is still in the table")


_UPSTREAM_PID = "SELECT upstream_pid FROM pg_cancel_keys WHERE pid = $1"
