"""The PostgreSQL front end while tokenproxy's state database is away: tokenization goes on
from the keys in memory, reveals are denied, and a write whose tokens cannot be checked is
refused (it might store a token as data). The state lives on a second PostgreSQL here,
stopped and started by the test; the customers stay on the suite's server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from session_env import SEED, PgEnv, pg_env

from proxy.embedded_pg import EmbeddedPostgres

pytestmark = pytest.mark.timeout(180)

BY_ID = {c.id: c for c in SEED}


@pytest.fixture(scope="module")
def state_server() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres() as server:
        yield server


@pytest.fixture(scope="module")
async def env(module_dsn: str, state_server: EmbeddedPostgres) -> AsyncIterator[PgEnv]:
    state = state_server.create_database("state")
    async with pg_env(module_dsn, state_dsn=state) as e:
        e.store.health.interval = 0.2
        e.store.start()
        yield e


async def test_state_database_outage(env: PgEnv, state_server: EmbeddedPostgres) -> None:
    ticket = env.new_ticket_id()
    await env.add_ticket(ticket, [2])
    conn = await env.connect()
    try:
        known = await conn.fetchrow("SELECT id, full_name, phone FROM customers WHERE id = 1")
        assert known is not None
        state_server.stop_server()
        try:
            mark = env.mark()
            # Tokens keep coming, from the keys in memory; the ticket reveals nothing.
            rows = await conn.fetch(
                f"SELECT id, full_name, phone FROM customers ORDER BY id /*ticket='{ticket}'*/"
            )
            assert len(rows) == len(SEED)
            assert {r["id"]: r["full_name"] for r in rows}[1] == known["full_name"]
            env.assert_no_leak(mark)
            # A ticket cannot be checked: derived values stay refused.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(
                    f"SELECT id, upper(full_name) FROM customers WHERE id = 2 "
                    f"/*ticket='{ticket}'*/"
                )
            # A write with a token this proxy has not cached cannot be checked: refused.
            stranger = "Qwerty Uiopas Dfghjk"
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.execute(
                    "UPDATE customers SET full_name = $1 WHERE id = 3", stranger
                )
            assert info.value.sqlstate == "57P03"
            # A cached token resolves from memory: the save stores the real value.
            await conn.execute(
                "UPDATE customers SET full_name = $1 WHERE id = 1", known["full_name"]
            )
        finally:
            state_server.start_server()
    finally:
        await conn.close()
    direct = await env.direct()
    try:
        assert await direct.fetchval("SELECT full_name FROM customers WHERE id = 1") == (
            BY_ID[1].full_name
        )
        assert await direct.fetchval("SELECT full_name FROM customers WHERE id = 3") == (
            BY_ID[3].full_name
        )
    finally:
        await direct.close()
