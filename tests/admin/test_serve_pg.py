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
