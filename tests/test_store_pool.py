"""The store's pool releases connections without asyncpg's reset query (one round trip per
release saved), and still never hands out a connection inside a transaction."""

from __future__ import annotations

import pytest

from proxy.store.db import connect_pool

pytestmark = pytest.mark.timeout(60)


async def test_release_skips_the_reset_query_but_not_the_rollback(pg_dsn: str) -> None:
    pool = await connect_pool(pg_dsn, min_size=1, max_size=1, require_schema=False)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET application_name = 'kept across a release'")
        async with pool.acquire() as conn:
            # No RESET ALL on release: what a session sets stays (the store sets nothing
            # but SET LOCAL, so nothing of one request leaks into the next).
            assert await conn.fetchval("SHOW application_name") == "kept across a release"
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE left_open (x int)")
        async with pool.acquire() as conn:
            # A transaction left open is still rolled back before the next acquire.
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
    finally:
        await pool.close()
