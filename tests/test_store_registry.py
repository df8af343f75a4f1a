"""proxy.store.registry.PgTokenRegistry against a real PostgreSQL."""

from __future__ import annotations

import random

import asyncpg
import pytest
from store_fixtures import *  # noqa: F403
from store_fixtures import KIND, make_engine, make_keyring

from proxy.crypto.engine import AmbiguousTokenError, StaleTokenError
from proxy.crypto.tokens import IssuedToken, Method
from proxy.errors import NotATokenError
from proxy.store.durable import resolve_many, tokenize_durably
from proxy.store.registry import PgTokenRegistry
from proxy.store.vault import PgVault

pytestmark = pytest.mark.timeout(60)


def _rows(n: int, version: int = 1, prefix: str = "T") -> list[IssuedToken]:
    return [IssuedToken(KIND, f"{prefix}{i:07d}", version, Method.FF1) for i in range(n)]


async def _count(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM token_registry")
    return count


async def test_record_is_visible_at_once_and_flushes_in_one_statement(
    store_pool: asyncpg.Pool,
) -> None:
    registry = PgTokenRegistry(store_pool)
    rows = _rows(250)
    registry.record(rows)
    assert registry.pending == 250
    assert registry.lookup(KIND, "T0000007") == (rows[7],)
    assert await registry.flush() == 250
    assert registry.queries == 1
    assert registry.pending == 0
    assert await _count(store_pool) == 250
    assert await registry.flush() == 0  # nothing queued: no round trip
    assert registry.queries == 1
    registry.record(rows[:10])  # known to be stored: nothing to write
    assert registry.pending == 0
    other = PgTokenRegistry(store_pool)
    other.record(rows[:10])  # another proxy: written again, ON CONFLICT DO NOTHING
    assert await other.flush() == 10
    assert await _count(store_pool) == 250
    stored = await store_pool.fetchrow(
        "SELECT kind, token, version, method FROM token_registry WHERE token = 'T0000007'"
    )
    assert tuple(stored) == (KIND, "T0000007", 1, "ff1")


async def test_prefetch_makes_another_proxys_tokens_resolve(store_pool: asyncpg.Pool) -> None:
    a = PgTokenRegistry(store_pool)
    b = PgTokenRegistry(store_pool)
    rows = _rows(20)
    a.record(rows)
    await a.flush()
    assert b.lookup(KIND, "T0000003") == ()
    await b.prefetch(KIND, ["T0000003", "T0000004", "typed by an agent"])
    assert b.queries == 1
    assert b.lookup(KIND, "T0000003") == (rows[3],)
    assert b.lookup(KIND, "typed by an agent") == ()
    # complete entries and fresh negatives need no query
    await b.prefetch(KIND, ["T0000003", "typed by an agent"])
    assert b.queries == 1
    # strings PostgreSQL text cannot hold are not tokens, and not sent
    await b.prefetch(KIND, ["nul\x00byte", "lone\ud800surrogate"])
    assert b.queries == 1


async def test_negative_entries_expire(store_pool: asyncpg.Pool) -> None:
    now = [0.0]
    a = PgTokenRegistry(store_pool)
    b = PgTokenRegistry(store_pool, negative_ttl=1.0, clock=lambda: now[0])
    await b.prefetch(KIND, ["T0000001"])
    assert b.lookup(KIND, "T0000001") == ()
    a.record(_rows(2))
    await a.flush()  # another proxy issues it a moment later
    now[0] = 0.5
    await b.prefetch(KIND, ["T0000001"])
    assert b.queries == 1  # negative still fresh
    now[0] = 1.5
    await b.prefetch(KIND, ["T0000001"])
    assert b.queries == 2
    assert len(b.lookup(KIND, "T0000001")) == 1


async def test_locally_recorded_entries_are_completed_by_prefetch(
    store_pool: asyncpg.Pool,
) -> None:
    a = PgTokenRegistry(store_pool)
    b = PgTokenRegistry(store_pool)
    a.record([IssuedToken(KIND, "SAME000", 1, Method.FF1)])
    await a.flush()
    b.record([IssuedToken(KIND, "SAME000", 2, Method.FF1)])  # same token under v2
    assert [r.version for r in b.lookup(KIND, "SAME000")] == [2]  # partial
    await b.prefetch(KIND, ["SAME000"])
    assert sorted(r.version for r in b.lookup(KIND, "SAME000")) == [1, 2]
    queries = b.queries
    await b.prefetch(KIND, ["SAME000"])
    assert b.queries == queries  # complete now


async def test_cache_is_bounded(store_pool: asyncpg.Pool) -> None:
    registry = PgTokenRegistry(store_pool, cache_size=100)
    registry.record(_rows(300))
    assert registry.cached == 100
    assert registry.lookup(KIND, "T0000000") == ()  # evicted: prefetch brings it back
    await registry.flush()
    await registry.prefetch(KIND, ["T0000000"])
    assert len(registry.lookup(KIND, "T0000000")) == 1


async def test_full_queue_drops_the_oldest_rows(store_pool: asyncpg.Pool) -> None:
    registry = PgTokenRegistry(store_pool, max_pending=100)
    registry.record(_rows(150))
    assert registry.pending == 100
    assert registry.dropped == 50
    assert registry.lookup(KIND, "T0000000")  # still resolves here, from the cache
    await registry.flush()
    stored = await store_pool.fetchval("SELECT min(token) FROM token_registry")
    assert stored == "T0000050"


async def test_purging_a_version_forgets_its_tokens(store_pool: asyncpg.Pool) -> None:
    # Before the purge a retired version's rows are still looked up, so that the engine
    # refuses its tokens (StaleTokenError) instead of passing them on as typed values.
    registry = PgTokenRegistry(store_pool)
    registry.record(_rows(5, version=1, prefix="A") + _rows(5, version=2, prefix="B"))
    await registry.flush()
    assert registry.lookup(KIND, "A0000001")
    assert await registry.purge_version(1) == 5
    assert registry.lookup(KIND, "A0000001") == ()
    assert registry.lookup(KIND, "B0000001")
    assert await _count(store_pool) == 5
    other = PgTokenRegistry(store_pool)
    await other.prefetch(KIND, ["A0000001", "B0000001"])
    assert other.lookup(KIND, "A0000001") == ()
    assert other.lookup(KIND, "B0000001")


async def test_engine_round_trip_across_two_proxies(store_pool: asyncpg.Pool) -> None:
    """Tokens issued by proxy A resolve on proxy B; typed values pass as typed."""
    reg_a, vault_a = PgTokenRegistry(store_pool), PgVault(store_pool)
    reg_b, vault_b = PgTokenRegistry(store_pool), PgVault(store_pool)
    engine_a = make_engine(reg_a, vault_a)
    engine_b = make_engine(reg_b, vault_b)
    values = ["6281234567", "0811223344", "42", "1234"]
    tokens = await tokenize_durably(engine_a, reg_a, vault_a, KIND, values)
    assert [len(t) for t in tokens] == [len(v) for v in values]
    assert reg_a.pending == 0 and vault_a.pending == 0
    typed = "5550001111"
    resolved = await resolve_many(engine_b, reg_b, vault_b, KIND, [*tokens, typed])
    assert [r.value for r in resolved] == [*values, typed]
    assert [r.was_token for r in resolved] == [True] * 4 + [False]
    with pytest.raises(NotATokenError):
        engine_b.detokenize(KIND, typed)


async def test_old_tokens_resolve_until_retired_then_are_refused(store_pool: asyncpg.Pool) -> None:
    registry, vault = PgTokenRegistry(store_pool), PgVault(store_pool)
    v1 = make_engine(registry, vault, make_keyring(1))
    old = await tokenize_durably(v1, registry, vault, KIND, ["6281234567", "77"])
    v2 = make_engine(registry, vault, make_keyring(1, 2, active=2))
    new = await tokenize_durably(v2, registry, vault, KIND, ["6281234567", "77"])
    assert new != old
    fresh_reg, fresh_vault = PgTokenRegistry(store_pool), PgVault(store_pool)
    reader = make_engine(fresh_reg, fresh_vault, make_keyring(1, 2, active=2))
    resolved = await resolve_many(reader, fresh_reg, fresh_vault, KIND, [*old, *new])
    assert [r.value for r in resolved] == ["6281234567", "77"] * 2
    retired = make_keyring(1, 2, active=2)
    retired = type(retired)(
        tuple(k.with_state(k.state.RETIRED) if k.version == 1 else k for k in retired.keys)
    )
    reader = reader.with_keyring(retired)
    resolved = await resolve_many(reader, fresh_reg, fresh_vault, KIND, new)
    assert [r.value for r in resolved] == ["6281234567", "77"]
    for token in old:  # refused, never passed on as a typed value (it would be stored as data)
        with pytest.raises(StaleTokenError):
            await resolve_many(reader, fresh_reg, fresh_vault, KIND, [token])


async def test_ambiguous_token_is_refused(store_pool: asyncpg.Pool) -> None:
    """A token string registered under two versions that decrypt differently: refuse."""
    registry, vault = PgTokenRegistry(store_pool), PgVault(store_pool)
    registry.record(
        [
            IssuedToken(KIND, "9998887776", 1, Method.FF1),
            IssuedToken(KIND, "9998887776", 2, Method.FF1),
        ]
    )
    await registry.flush()
    other = PgTokenRegistry(store_pool)
    engine = make_engine(other, vault, make_keyring(1, 2, active=2))
    with pytest.raises(AmbiguousTokenError):
        await resolve_many(engine, other, vault, KIND, ["9998887776"])


async def test_a_new_version_never_issues_a_token_an_old_one_did(
    store_pool: asyncpg.Pool,
) -> None:
    """Six-digit values (a domain of 10^6): 4,000 tokenized under version 1 by one proxy,
    4,000 others under version 2 by another that caches nothing of the first's: about
    sixteen of the second's FF1 tokens are tokens the first issued. Each of those values
    takes its version's alternate token instead ('ff1-alt'), so every token of both
    versions resolves, on a third proxy, to its own value: none is ambiguous."""
    rng = random.Random(7)
    values = [f"{n:06d}" for n in rng.sample(range(10**6), 8000)]
    old_values, new_values = values[:4000], values[4000:]
    reg_a, vault_a = PgTokenRegistry(store_pool), PgVault(store_pool)
    v1 = make_engine(reg_a, vault_a, make_keyring(1))
    old = await tokenize_durably(v1, reg_a, vault_a, KIND, old_values)
    reg_b, vault_b = PgTokenRegistry(store_pool), PgVault(store_pool)
    v2 = make_engine(reg_b, vault_b, make_keyring(1, 2, active=2))
    new = await tokenize_durably(v2, reg_b, vault_b, KIND, new_values)
    alternates = await store_pool.fetchval(
        "SELECT count(*) FROM token_registry WHERE version = 2 AND method = 'ff1-alt'")
    assert alternates >= 1  # (about 16; none at all has a chance of e^-16)
    assert not set(old) & set(new)
    reg_c, vault_c = PgTokenRegistry(store_pool), PgVault(store_pool)
    reader = make_engine(reg_c, vault_c, make_keyring(1, 2, active=2))
    resolved = await resolve_many(reader, reg_c, vault_c, KIND, [*old, *new])
    assert [r.value for r in resolved] == old_values + new_values
    # The same values again under version 2 (cache gone): the same tokens.
    reg_d, vault_d = PgTokenRegistry(store_pool), PgVault(store_pool)
    again = make_engine(reg_d, vault_d, make_keyring(1, 2, active=2))
    assert await tokenize_durably(again, reg_d, vault_d, KIND, new_values) == new
