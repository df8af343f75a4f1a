"""Benchmark of the audit log: chained appends against a plain INSERT of the same rows.

    python loadtest/bench_audit.py                 # starts a throwaway EmbeddedPostgres
    DATABASE_URL=postgresql://... python loadtest/bench_audit.py
    python loadtest/bench_audit.py --seconds 1

From ``loadtest/bench_store.py``: ``results += await bench_audit(dsn, seconds)``; the
results have the attributes its ``table()`` reads (scenario, ops, baseline, baseline_ops,
ratio, unit).

Scenarios, each with 1 and 8 concurrent writers (one connection each), each against a
baseline measured in the same run with the same writers:

- ``append``: ``AuditLog.append`` of one entry (its own transaction: lock the chain head,
  chain, insert, move the head, commit), against a plain ``INSERT`` of the same row into a
  table with the same columns and no chain, no trigger, no index;
- ``append_many(3)``: a response revealing three customers, three rows in one call, against
  a plain three-row ``INSERT``;
- ``authorize_reveals``: the whole reveal path for one customer (cached ticket, budget
  check-and-count under the agent's lock, the reveal row, commit); one agent per writer.

Appends are serialised by the chain head (one row lock): with 8 writers the rate cannot
grow much past one writer's, by design; the plain INSERT scales with the writers.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from report import Result, main_on_database

from proxy.policy.tickets import Ticket
from proxy.store.audit import AuditAction, AuditEntry, AuditLog
from proxy.store.budget import BudgetLimits
from proxy.store.db import connect_pool
from proxy.store.migrations import migrate
from proxy.store.reveal import authorize_reveals
from proxy.store.tickets import TicketStore

WRITERS = (1, 8)


def _entry(n: int) -> AuditEntry:
    return AuditEntry(
        AuditAction.REVEAL,
        agent=f"agent-{n % 8}",
        ticket=f"T-{n % 100}",
        customer_ids=[str(n % 5000)],
        fields=["customers.full_name", "customers.phone"],
        route="GET /api/customers/{id}",
        request_id=f"req-{n}",
        detail={},
    )


async def _plain_insert(conn: asyncpg.Connection, entries: list[AuditEntry]) -> None:
    """The same rows through one plain INSERT statement: no lock, no chain, no trigger."""
    await conn.execute(
        "INSERT INTO bench_audit_plain (seq, at, agent, ticket, action, customer_ids, fields, "
        "route, request_id, instance, detail, prev_hash, hash) "
        "SELECT nextval('bench_audit_seq'), clock_timestamp(), u.a, u.t, u.x, ARRAY[u.c], "
        "$6::text[], u.r, u.q, $7, '{}'::jsonb, $8, $8 "
        "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $9::text[]) "
        "AS u(a, t, x, c, r, q)",
        [e.agent for e in entries],
        [e.ticket for e in entries],
        [e.action for e in entries],
        [e.customer_ids[0] for e in entries],
        [e.route for e in entries],
        list(entries[0].fields),
        "bench/1",
        bytes(32),
        [e.request_id for e in entries],
    )


async def _concurrently(
    pool: asyncpg.Pool,
    writers: int,
    seconds: float,
    step: Callable[[asyncpg.Connection, int], Awaitable[int]],
) -> float:
    """Rows per second of ``writers`` tasks, each on its own connection, for ``seconds``."""
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def writer() -> int:
        done = 0
        async with pool.acquire() as conn:
            while time.perf_counter() < deadline:
                done += await step(conn, next(counter))
        return done

    start = time.perf_counter()
    total = sum(await asyncio.gather(*(writer() for _ in range(writers))))
    return total / (time.perf_counter() - start)


async def bench_audit(dsn: str, seconds: float = 2.0) -> list[Result]:
    """Every audit scenario on the (migrated or empty) database at ``dsn``."""
    pool = await connect_pool(dsn, min_size=2, max_size=max(WRITERS) + 2, require_schema=False)
    await migrate(pool)
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS bench_audit_plain (LIKE audit_log INCLUDING DEFAULTS);"
        "CREATE SEQUENCE IF NOT EXISTS bench_audit_seq"
    )
    log = AuditLog(pool, instance="bench/1")
    tickets = TicketStore(pool, cache_ttl=3600)
    now = datetime.now(UTC)
    for a in range(max(WRITERS)):
        await tickets.upsert(
            Ticket(f"B-{a}", f"agent-{a}", [str(c) for c in range(200)], "open",
                   now + timedelta(hours=2), now)
        )
    limits = BudgetLimits(per_hour=10**6, per_day=10**6)
    results: list[Result] = []
    try:
        for writers in WRITERS:

            async def append(conn: asyncpg.Connection, n: int) -> int:
                await log.append(_entry(n), conn=conn)
                return 1

            async def plain(conn: asyncpg.Connection, n: int) -> int:
                await _plain_insert(conn, [_entry(n)])
                return 1

            async def append3(conn: asyncpg.Connection, n: int) -> int:
                await log.append_many([_entry(3 * n + i) for i in range(3)], conn=conn)
                return 3

            async def plain3(conn: asyncpg.Connection, n: int) -> int:
                await _plain_insert(conn, [_entry(3 * n + i) for i in range(3)])
                return 3

            base1 = await _concurrently(pool, writers, seconds, plain)
            results.append(
                Result(
                    f"audit append, {writers} writer(s)",
                    await _concurrently(pool, writers, seconds, append),
                    "plain INSERT, 1 row",
                    base1,
                )
            )
            results.append(
                Result(
                    f"audit append_many(3), {writers} writer(s)",
                    await _concurrently(pool, writers, seconds, append3),
                    "plain INSERT, 3 rows",
                    await _concurrently(pool, writers, seconds, plain3),
                )
            )
            async def reveal(
                conn: asyncpg.Connection, n: int, agent_of: dict[int, int] = {}  # noqa: B006
            ) -> int:
                # One agent per writer task (the budget lock is per agent).
                task = id(asyncio.current_task())
                a = agent_of.setdefault(task, len(agent_of))
                decisions = await authorize_reveals(
                    tickets,
                    log,
                    agent=f"agent-{a}",
                    ticket_id=f"B-{a}",
                    customer_ids=[str(n % 200)],
                    fields=["customers.full_name"],
                    route="GET /api/customers/{id}",
                    request_id=f"req-{n}",
                    limits=limits,
                )
                assert all(d.allowed for d in decisions.values()), decisions
                return 1

            results.append(
                Result(
                    f"authorize_reveals, {writers} writer(s)",
                    await _concurrently(pool, writers, seconds, reveal),
                    "plain INSERT, 1 row",
                    base1,
                    "reveals/s",
                )
            )
        report = await log.verify(progress=False)
        assert report.ok, report.message
    finally:
        await pool.close()
    return results


def main(argv: list[str] | None = None) -> int:
    description = (__doc__ or "").split("\n", 1)[0]
    return main_on_database(description, "audit", bench_audit, seconds=2.0, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
