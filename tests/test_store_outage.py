"""The database goes away under a running store, and comes back (real server stop/start)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import structlog
from store_fixtures import *  # noqa: F403
from store_fixtures import KIND, make_engine

from proxy.embedded_pg import EmbeddedPostgres
from proxy.store.db import DatabaseUnavailableError, connect_pool
from proxy.store.durable import Store, StoreHealth, open_store, tokenize_durably
from proxy.store.migrations import migrate
from proxy.store.registry import PgTokenRegistry
from proxy.store.vault import PgVault

pytestmark = pytest.mark.timeout(60)

BEFORE = ["6281234567", "12"]
DURING = ["6289999999", "34", "6281234567"]


async def _eventually(check: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[Store]:
    store = await open_store(pg_dsn, run_migrations=True, start=False, timeout=2)
    store.health.interval = 0.1
    store.health.max_backoff = 0.3
    store.start()
    try:
        yield store
    finally:
        await store.close(timeout=2)


async def test_open_store_migrates_and_reports(store: Store) -> None:
    assert store.migration is not None
    assert store.health.healthy
    assert store.health.snapshot()["database"] == "ok"
    assert "/test_" in store.where


async def test_purge_only_a_retired_version(store: Store) -> None:
    from store_fixtures import make_keyring

    from proxy.crypto.keyring import Keyring, KeyState
    from proxy.errors import KeyringError

    live = make_keyring(1, 2, active=2)
    engine = make_engine(store.registry, store.vault, make_keyring(1))
    await store.tokenize(engine, KIND, ["6281234567", "12"])
    with pytest.raises(KeyringError, match="not retired"):
        await store.purge_version(1, live)
    retired = Keyring(
        tuple(k.with_state(KeyState.RETIRED) if k.version == 1 else k for k in live.keys)
    )
    assert await store.purge_version(1, retired) == (2, 1)


async def test_tokenization_goes_on_while_the_database_is_away(
    restartable_pg: EmbeddedPostgres, pg_dsn: str, store: Store
) -> None:
    engine = make_engine(store.registry, store.vault)
    with structlog.testing.capture_logs() as logs:
        before = await store.tokenize(engine, KIND, BEFORE)
        assert store.health.pending == 0

        restartable_pg.stop_server()
        started = time.monotonic()
        during = await store.tokenize(engine, KIND, DURING)
        assert time.monotonic() - started < 5
        assert during[2] == before[0]  # known value: the same token
        assert not store.health.healthy
        assert f"127.0.0.1:{restartable_pg.port}/" in store.health.reason
        assert store.registry.pending == 2  # the new FF1 token and the new vault token
        assert store.vault.pending == 1
        assert store.health.snapshot()["database"] == "unavailable"

        # more requests while away: no waiting, the queue grows
        more = await store.tokenize(engine, KIND, ["6280000001"])
        assert store.registry.pending == 3

        # tokens cached here still resolve; an unknown value cannot be resolved: fail closed
        values = await store.detokenize(engine, KIND, [*before, *during, *more])
        assert values == [*BEFORE, *DURING, "6280000001"]
        with pytest.raises(DatabaseUnavailableError):
            await store.resolve(engine, KIND, ["5551234567"])

        restartable_pg.start_server()
        await _eventually(lambda: store.health.healthy and store.health.pending == 0)

    # the queued rows are in the table: another proxy resolves them
    other_pool = await connect_pool(pg_dsn)
    try:
        registry, vault = PgTokenRegistry(other_pool), PgVault(other_pool)
        other = make_engine(registry, vault)
        await registry.prefetch(KIND, [*during, *more])
        await vault.prefetch_tokens(KIND, during)
        assert [other.detokenize(KIND, t) for t in [*during, *more]] == [*DURING, "6280000001"]
        assert await other_pool.fetchval("SELECT count(*) FROM token_registry") == 5
    finally:
        await other_pool.close()

    events = [e["event"] for e in logs]
    assert "store.database_unavailable" in events
    assert "store.database_back" in events
    text = repr(logs)
    for value in {*BEFORE, *DURING}:
        assert f"'{value}'" not in text  # no value is ever logged


async def test_health_loop_notices_without_traffic(
    restartable_pg: EmbeddedPostgres, store: Store
) -> None:
    restartable_pg.stop_server()
    await _eventually(lambda: not store.health.healthy)
    assert store.health.outages == 1
    restartable_pg.start_server()
    await _eventually(lambda: store.health.healthy)


async def test_vault_races_settle_when_two_proxies_return(
    restartable_pg: EmbeddedPostgres, pg_dsn: str
) -> None:
    """Two proxies draw tokens for the same short value during an outage: both tokens went
    out, so after the return one is canonical and the other an alias; both resolve."""
    pool_a = await connect_pool(pg_dsn, require_schema=False, timeout=2)
    await migrate(pool_a)
    pool_b = await connect_pool(pg_dsn, timeout=2)
    lost: list[set[tuple[str, str]]] = []
    try:
        proxies = []
        for pool in (pool_a, pool_b):
            registry, vault = PgTokenRegistry(pool), PgVault(pool)
            health = StoreHealth(pool, registry, vault, on_lost=lost.append)
            proxies.append((make_engine(registry, vault), registry, vault, health))
        restartable_pg.stop_server()
        tokens = []
        for engine, registry, vault, health in proxies:
            out = await tokenize_durably(engine, registry, vault, KIND, ["56"], health=health)
            tokens.append(out[0])
        assert all(not h.healthy for *_, h in proxies)
        restartable_pg.start_server()
        for *_, health in proxies:
            deadline = time.monotonic() + 15
            while not await health.check():
                assert time.monotonic() < deadline, health.reason
                await asyncio.sleep(0.1)
        rows = await pool_a.fetch("SELECT token, canonical FROM token_vault WHERE kind = $1", KIND)
        by_token = {r["token"]: r["canonical"] for r in rows}
        if tokens[0] != tokens[1]:
            assert sorted(by_token[t] for t in tokens) == [False, True]
            assert lost and lost[0] == {(KIND, "56")}
        for engine, registry, vault, _ in proxies:
            await registry.prefetch(KIND, tokens)
            await vault.prefetch_tokens(KIND, tokens)
            assert {engine.detokenize(KIND, t) for t in tokens} == {"56"}
    finally:
        pool_a.terminate()
        pool_b.terminate()
