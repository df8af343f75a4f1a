"""Benchmark of the PostgreSQL store: registry resolves and writes against plain SQL.

    python loadtest/bench_store.py               # starts a throwaway EmbeddedPostgres
    DATABASE_URL=postgresql://... python loadtest/bench_store.py   # or uses that server
    python loadtest/bench_store.py --seconds 1   # shorter runs

Each scenario is a function ``async def bench_x(ctx) -> list[Result]`` registered in
``SCENARIOS``; ``main()`` runs them in order against one fresh database and prints one
table. Each result is measured against a baseline made in the same run, on the same rows:

- resolve, warm cache: ``PgTokenRegistry.lookup`` of cached tokens, against a plain
  ``SELECT`` per token on the registry's primary key (what resolving costs without the cache);
- resolve, cold cache: ``prefetch`` of a request's candidates then ``lookup`` of each, against
  the plain ``SELECT ... WHERE token = ANY($2)`` of the same candidates;
- writes: ``record`` then ``flush`` of a batch, against a plain ``INSERT ... SELECT FROM
  unnest`` of the same rows into an unindexed, unconstrained table (and, for reference, the
  same rows through ``executemany``).

The numbers are per process, one asyncio loop, one connection at a time.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from report import Result, main_on_database

from proxy.crypto.tokens import IssuedToken, Method
from proxy.store.db import connect_pool
from proxy.store.migrations import migrate
from proxy.store.registry import PgTokenRegistry

KIND = "phone"
PRELOAD = 50_000  # registry rows present before the read scenarios


@dataclass
class Context:
    """What every scenario gets: the pool, preloaded tokens, the time budget."""

    pool: asyncpg.Pool
    tokens: list[str]
    seconds: float
    rng: random.Random
    serial: int = 0

    def fresh_rows(self, n: int) -> list[IssuedToken]:
        """``n`` registry rows never written before."""
        start, self.serial = self.serial, self.serial + n
        return [IssuedToken(KIND, f"9{i:014d}", 1, Method.FF1) for i in range(start, start + n)]

    def sample(self, n: int) -> list[str]:
        return self.rng.sample(self.tokens, n)


Step = Callable[[], Awaitable[int]]

SLICE = 0.1  # seconds per turn when two measurements are interleaved


async def _paired(seconds: float, ours: Step, *baselines: Step) -> list[float]:
    """Items per second of each step, interleaved in short turns so that both see the same
    background load (this machine may be busy with other work). A step returns how many
    items it did."""
    steps = (ours, *baselines)
    done = [0] * len(steps)
    spent = [0.0] * len(steps)
    for step in steps:  # warm up: statements prepared, caches filled
        await step()
    while min(spent) < seconds:
        for i, step in enumerate(steps):
            start = time.perf_counter()
            while True:
                done[i] += await step()
                elapsed = time.perf_counter() - start
                if elapsed >= SLICE:
                    break
            spent[i] += elapsed
    return [d / t for d, t in zip(done, spent, strict=True)]


def _sync_rate(seconds: float, step: Callable[[], int]) -> float:
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += step()
    return done / (time.perf_counter() - start)


# ------------------------------------------------------------------------- scenarios


async def bench_resolve_warm(ctx: Context) -> list[Result]:
    """lookup() of cached tokens against one plain SELECT per token."""
    registry = PgTokenRegistry(ctx.pool)
    hot = ctx.sample(10_000)
    await registry.prefetch(KIND, hot)
    assert all(registry.lookup(KIND, t) for t in hot)

    def lookups() -> int:
        for token in hot:
            registry.lookup(KIND, token)
        return len(hot)

    cached = _sync_rate(ctx.seconds, lookups)

    sql = "SELECT token, version, method FROM token_registry WHERE kind = $1 AND token = $2"
    async with ctx.pool.acquire() as conn:
        stmt = await conn.prepare(sql)
        i = 0

        async def select_one() -> int:
            nonlocal i
            i = (i + 1) % len(hot)
            await stmt.fetch(KIND, hot[i])
            return 1

        (plain,) = await _paired(ctx.seconds / 2, select_one)
    return [Result("resolve, warm cache (lookup)", cached, "SELECT per token", plain)]


async def bench_resolve_cold(ctx: Context) -> list[Result]:
    """prefetch() + lookup() on an empty cache against the plain ANY($2) SELECT."""
    results = []
    sql = "SELECT token, version, method FROM token_registry WHERE kind = $1 AND token = ANY($2)"
    for batch in (1, 100):
        half_known = batch // 2 or 1  # a request: some tokens, some values typed by the agent

        def candidates(n: int = batch, known: int = half_known) -> list[str]:
            typed = [f"8{ctx.rng.randrange(10**14):014d}" for _ in range(n - known)]
            return ctx.sample(known) + typed

        async def via_registry(make: Callable[[], list[str]] = candidates) -> int:
            registry = PgTokenRegistry(ctx.pool)  # cold: nothing cached
            tokens = make()
            await registry.prefetch(KIND, tokens)
            for token in tokens:
                registry.lookup(KIND, token)
            return len(tokens)

        async def plain(make: Callable[[], list[str]] = candidates) -> int:
            tokens = make()
            await ctx.pool.fetch(sql, KIND, tokens)
            return len(tokens)

        ours, baseline = await _paired(ctx.seconds, via_registry, plain)
        name = f"resolve, cold cache, {batch}/request"
        results.append(Result(name, ours, "SELECT ... ANY($2)", baseline))
    return results


async def bench_writes(ctx: Context) -> list[Result]:
    """record() + flush() of a batch against plain INSERTs of the same rows."""
    await ctx.pool.execute(
        "CREATE TABLE IF NOT EXISTS bench_heap (kind text, token text, version int, method text)"
    )
    await ctx.pool.execute(
        "CREATE TABLE IF NOT EXISTS bench_pk (kind text, token text, version int, method text, "
        "issued_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (kind, token, version))"
    )
    unnest = "SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[])"
    results = []
    registry = PgTokenRegistry(ctx.pool)
    for batch in (100, 1_000):

        async def via_registry(n: int = batch) -> int:
            registry.record(ctx.fresh_rows(n))
            return await registry.flush()

        def plain(table: str, n: int = batch) -> Step:
            sql = f"INSERT INTO {table} (kind, token, version, method) {unnest}"

            async def step() -> int:
                rows = ctx.fresh_rows(n)
                await ctx.pool.execute(
                    sql,
                    [r.kind for r in rows],
                    [r.token for r in rows],
                    [r.version for r in rows],
                    [str(r.method) for r in rows],
                )
                return n

            return step

        async def executemany(n: int = batch) -> int:
            rows = ctx.fresh_rows(n)
            await ctx.pool.executemany(
                "INSERT INTO bench_heap (kind, token, version, method) VALUES ($1, $2, $3, $4)",
                [(r.kind, r.token, r.version, str(r.method)) for r in rows],
            )
            return n

        ours, heap, keyed, many = await _paired(
            ctx.seconds, via_registry, plain("bench_heap"), plain("bench_pk"), executemany
        )
        name = f"write, batches of {batch}"
        results.append(Result(name, ours, "INSERT, no index", heap))
        results.append(Result(name, ours, "INSERT, same PK", keyed))
        results.append(Result(f"  (executemany, {batch})", many, "INSERT, no index", heap))
    return results


SCENARIOS: list[Callable[[Context], Awaitable[list[Result]]]] = [
    bench_resolve_warm,
    bench_resolve_cold,
    bench_writes,
]


# ------------------------------------------------------------------------------ main


async def _prepare(dsn: str, seconds: float) -> Context:
    pool = await connect_pool(dsn, min_size=2, max_size=4, require_schema=False)
    await migrate(pool)
    rng = random.Random(7)
    tokens = [f"{rng.randrange(10**10):010d}" for _ in range(PRELOAD)]
    registry = PgTokenRegistry(pool)
    registry.record(IssuedToken(KIND, t, 1, Method.FF1) for t in tokens)
    await registry.flush()
    await pool.execute("ANALYZE token_registry")
    return Context(pool, sorted(set(tokens)), seconds, rng)


async def run(dsn: str, seconds: float) -> list[Result]:
    """Every scenario, in order, on the database at ``dsn``."""
    ctx = await _prepare(dsn, seconds)
    results: list[Result] = []
    try:
        for scenario in SCENARIOS:
            results.extend(await scenario(ctx))
    finally:
        await ctx.pool.close()
    return results


async def run_all(dsn: str, seconds: float) -> list[Result]:
    """The registry scenarios, then the audit scenarios of bench_audit.py."""
    from bench_audit import bench_audit

    return await run(dsn, seconds) + await bench_audit(dsn, seconds)


def main(argv: list[str] | None = None) -> int:
    description = (__doc__ or "").split("\n", 1)[0]
    return main_on_database(description, "store", run_all, seconds=1.5, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
