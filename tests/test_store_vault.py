"""proxy.store.vault.PgVault against a real PostgreSQL, with proxies racing on new values."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import pytest
from store_fixtures import *  # noqa: F403
from store_fixtures import KIND, make_engine, make_keyring

from proxy.crypto.keyring import KeyState
from proxy.crypto.vault import vault_index
from proxy.errors import NotATokenError, VaultMissError
from proxy.store.db import DatabaseUnavailableError
from proxy.store.durable import tokenize_durably
from proxy.store.registry import PgTokenRegistry
from proxy.store.vault import PgVault

pytestmark = pytest.mark.timeout(60)

KEYRING = make_keyring(1)
KEY = KEYRING.active


def _draws(*tokens: str) -> Callable[[], str]:
    """A draw that returns the given tokens, then counts upwards from 100."""
    queue: Iterator[str] = iter(tokens)
    counter = iter(range(100, 1000))

    def draw() -> str:
        return next(queue, None) or str(next(counter))

    return draw


def _random3() -> str:
    import secrets

    return f"{secrets.randbelow(1000):03d}"


@pytest.fixture
async def pools(pg_dsn: str, store_pool: asyncpg.Pool) -> AsyncIterator[list[asyncpg.Pool]]:
    """Three pools on one migrated database: three proxies."""
    extra = [await asyncpg.create_pool(pg_dsn, min_size=1, max_size=3) for _ in range(2)]
    try:
        yield [store_pool, *extra]
    finally:
        for pool in extra:
            pool.terminate()


async def _dead_pool(dsn: str) -> asyncpg.Pool:
    """A real pool that was closed: every use fails like a lost database."""
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=1)
    pool.terminate()
    return pool


async def test_draw_store_and_read_back(pools: list[asyncpg.Pool]) -> None:
    a, b = PgVault(pools[0]), PgVault(pools[1])
    token = a.token_for(KIND, "42", KEY, _random3)
    assert a.pending == 1
    assert a.token_for(KIND, "42", KEY, _random3) == token  # queued: same token
    assert a.value_for(KIND, token, KEYRING) == "42"  # resolvable here at once
    assert await a.flush() == set()
    assert a.pending == 0
    row = await pools[0].fetchrow("SELECT * FROM token_vault")
    assert row["token"] == token
    assert row["version"] == 1
    assert bytes(row["mac"]) == vault_index(KIND, "42", KEY)
    assert b"42" not in bytes(row["sealed"])
    assert row["canonical"]
    # another proxy finds it by value (HMAC) and by token
    assert await b.prefetch_values(KIND, ["42", "43"], KEY) == 1
    assert b.token_for(KIND, "42", KEY, _random3) == token
    assert b.pending == 0
    with pytest.raises(NotATokenError):
        b.value_for(KIND, "999", KEYRING)
    assert await b.prefetch_tokens(KIND, ["999", token]) == 0  # already known: no query
    c = PgVault(pools[2])
    assert await c.prefetch_tokens(KIND, ["999", token]) == 1
    assert c.value_for(KIND, token, KEYRING) == "42"
    retired = type(KEYRING)(
        (KEY.with_state(KeyState.DECRYPT_ONLY).with_state(KeyState.RETIRED), make_keyring(2).active)
    )
    with pytest.raises(NotATokenError, match="retired"):
        c.value_for(KIND, token, retired)


async def test_prefetched_absent_values_are_not_asked_again(store_pool: asyncpg.Pool) -> None:
    vault = PgVault(store_pool)
    assert await vault.prefetch_values(KIND, ["1", "2"], KEY) == 0
    queries = vault.queries
    assert await vault.prefetch_values(KIND, ["1", "2"], KEY) == 0
    assert vault.queries == queries


async def test_two_proxies_racing_agree_on_one_token(pools: list[asyncpg.Pool]) -> None:
    a, b = PgVault(pools[0]), PgVault(pools[1])
    values = [f"{i:03d}" for i in range(200)]
    tokens_a = [a.token_for(KIND, v, KEY, _random3) for v in values]
    tokens_b = [b.token_for(KIND, v, KEY, _random3) for v in values]
    lost_a, lost_b = await asyncio.gather(a.flush(), b.flush())
    # each value has one winner; the other proxy lost it (or drew the same token)
    for value, ta, tb in zip(values, tokens_a, tokens_b, strict=True):
        final_a = a.token_for(KIND, value, KEY, _random3)
        final_b = b.token_for(KIND, value, KEY, _random3)
        assert final_a == final_b
        if ta != tb:
            assert ((KIND, value) in lost_a) != ((KIND, value) in lost_b)
    assert a.pending == b.pending == 0
    rows = await pools[0].fetch("SELECT token FROM token_vault")
    assert len(rows) == 200  # one row per value, tokens unique (constraint)
    assert len({r["token"] for r in rows}) == 200


async def test_engines_racing_through_tokenize_durably_agree(pools: list[asyncpg.Pool]) -> None:
    proxies = []
    for pool in pools:
        registry, vault = PgTokenRegistry(pool), PgVault(pool)
        proxies.append((make_engine(registry, vault), registry, vault))
    values = [f"{i:04d}" for i in range(300)]
    results = await asyncio.gather(
        *(tokenize_durably(e, r, v, KIND, values, prefetch=False) for e, r, v in proxies)
    )
    assert results[0] == results[1] == results[2]
    assert sum(v.losses for _, _, v in proxies) > 0  # they did race
    # every proxy resolves every token to its value
    for engine, registry, vault in proxies:
        await registry.prefetch(KIND, results[0])
        await vault.prefetch_tokens(KIND, results[0])
        assert [engine.detokenize(KIND, t) for t in results[0]] == values
    assert await pools[0].fetchval("SELECT count(*) FROM token_vault") == 300


async def test_concurrent_requests_reusing_a_losing_token(pools: list[asyncpg.Pool]) -> None:
    """Request 2 reuses request 1's optimistic token from the engine cache before request 1
    learns it lost: both must end with the winner."""
    winner_vault = PgVault(pools[1])
    winner = winner_vault.token_for(KIND, "77", KEY, _draws("111"))
    await winner_vault.flush()
    registry, vault = PgTokenRegistry(pools[0]), PgVault(pools[0])
    engine = make_engine(registry, vault)
    original = vault.token_for  # make this proxy draw "222" for the value

    def token_for(kind: str, value: str, key: object, draw: Callable[[], str]) -> str:
        return original(kind, value, key, _draws("222"))  # type: ignore[arg-type]

    vault.token_for = token_for  # type: ignore[method-assign]
    one, two = await asyncio.gather(
        tokenize_durably(engine, registry, vault, KIND, ["77"], prefetch=False),
        tokenize_durably(engine, registry, vault, KIND, ["77", "78"], prefetch=False),
    )
    assert one == [winner]
    assert two[0] == winner
    assert vault.losses == 1
    tokens = {r["token"] for r in await pools[0].fetch("SELECT token FROM token_registry")}
    assert winner in tokens


async def test_a_drawn_token_taken_by_another_value_is_redrawn(
    pools: list[asyncpg.Pool],
) -> None:
    a, b = PgVault(pools[0]), PgVault(pools[1])
    a.token_for(KIND, "11", KEY, _draws("555"))
    await a.flush()
    optimistic = b.token_for(KIND, "22", KEY, _draws("555", "556"))
    assert optimistic == "555"  # b does not know 555 is taken
    assert await b.flush() == {(KIND, "22")}
    assert b.token_for(KIND, "22", KEY, _random3) == "556"
    await b.prefetch_tokens(KIND, ["555"])
    assert b.value_for(KIND, "555", KEYRING) == "11"
    assert b.value_for(KIND, "556", KEYRING) == "22"


async def test_full_queue_refuses_to_draw(pg_dsn: str, store_pool: asyncpg.Pool) -> None:
    vault = PgVault(await _dead_pool(pg_dsn), max_pending=3)
    for value in ("1", "2", "3"):
        vault.token_for(KIND, value, KEY, _random3)
    with pytest.raises(VaultMissError, match="queue is full"):
        vault.token_for(KIND, "4", KEY, _random3)
    assert vault.token_for(KIND, "1", KEY, _random3)  # queued values still answer
    with pytest.raises(DatabaseUnavailableError):
        await vault.flush()
    assert vault.pending == 3
    vault.pool = store_pool  # the database is back
    assert await vault.flush() == set()
    assert vault.pending == 0
    assert vault.token_for(KIND, "4", KEY, _random3)


async def test_escaped_tokens_that_lose_become_aliases(
    pg_dsn: str, pools: list[asyncpg.Pool]
) -> None:
    """A token that left the proxy during an outage keeps resolving after it loses."""
    a = PgVault(await _dead_pool(pg_dsn))
    escaped = a.token_for(KIND, "33", KEY, _draws("301"))
    collided = a.token_for(KIND, "34", KEY, _draws("401"))
    with pytest.raises(DatabaseUnavailableError):
        await a.flush()  # the caller goes on and sends 301 and 401
    b = PgVault(pools[1])  # meanwhile another proxy stores 33 -> 302, and 99 -> 401
    b.token_for(KIND, "33", KEY, _draws("302"))
    b.token_for(KIND, "99", KEY, _draws("401"))
    await b.flush()
    a.pool = pools[0]  # the database is back
    assert await a.flush() == {(KIND, "33"), (KIND, "34")}
    assert a.token_for(KIND, "33", KEY, _random3) == "302"  # new requests get the winner
    assert a.value_for(KIND, escaped, KEYRING) == "33"  # the escaped token still resolves
    assert a.unresolvable == 1  # 401 is 99's now: cannot be kept for 34
    assert collided == "401"
    c = PgVault(pools[2])
    await c.prefetch_tokens(KIND, ["301", "302", "401"])
    assert c.value_for(KIND, "301", KEYRING) == "33"
    assert c.value_for(KIND, "302", KEYRING) == "33"
    assert c.value_for(KIND, "401", KEYRING) == "99"
    await c.prefetch_values(KIND, ["33"], KEY)
    assert c.token_for(KIND, "33", KEY, _random3) == "302"  # aliases are never handed out
    rows = await pools[0].fetch("SELECT token, canonical FROM token_vault")
    assert {(r["token"], r["canonical"]) for r in rows} == {
        ("301", False),
        ("302", True),
        ("401", True),
        (a.token_for(KIND, "34", KEY, _random3), True),
    }


async def test_flush_after_a_commit_whose_answer_was_lost(
    pg_dsn: str, store_pool: asyncpg.Pool
) -> None:
    """A row already in the table with our own token is ours, not a lost race."""
    vault = PgVault(store_pool)
    token = vault.token_for(KIND, "55", KEY, _random3)
    copy = PgVault(store_pool)
    copy._pending = dict(vault._pending)  # the same rows, written "before the answer was lost"
    await copy.flush()
    assert await vault.flush() == set()
    assert vault.token_for(KIND, "55", KEY, _random3) == token


async def test_purge_version(store_pool: asyncpg.Pool) -> None:
    vault = PgVault(store_pool)
    v2 = make_keyring(1, 2, active=2).active
    vault.token_for(KIND, "1", KEY, _random3)
    vault.token_for(KIND, "1", v2, _random3)
    await vault.flush()
    assert await vault.purge_version(1) == 1
    assert await store_pool.fetchval("SELECT count(*) FROM token_vault") == 1


async def test_real_tokenizers_across_two_proxies(pools: list[asyncpg.Pool]) -> None:
    """Names and phones (vault rows under the tokenizers' own namespaces, like a phone
    extension's ``ext:`` row) issued by one proxy resolve on another, and a second proxy
    tokenizing the same values agrees."""
    from proxy.crypto.engine import TokenEngine
    from proxy.crypto.names import NameTokenizer
    from proxy.crypto.phones import PhoneTokenizer
    from proxy.store.durable import resolve_many

    tokenizers = {"name": NameTokenizer(), "phone": PhoneTokenizer("ID")}
    samples = {
        "name": ["Li", "Budi", "Alexander", "Siti Nurhaliza"],
        "phone": ["+62 812-3456-7890", "+62 812-3456-7890 ext. 12", "1234", "0812 3456 7890 x123"],
    }
    proxies = []
    for pool in pools[:2]:
        registry, vault = PgTokenRegistry(pool), PgVault(pool)
        proxies.append((TokenEngine(KEYRING, tokenizers, vault, registry), registry, vault))
    (engine_a, reg_a, vault_a), (engine_b, reg_b, vault_b) = proxies
    for kind, values in samples.items():
        tokens = await tokenize_durably(engine_a, reg_a, vault_a, kind, values)
        resolved = await resolve_many(engine_b, reg_b, vault_b, kind, [*tokens, "typed"])
        assert [r.value for r in resolved] == [*values, "typed"]
        assert [r.was_token for r in resolved] == [True] * len(values) + [False]
        again = await tokenize_durably(engine_b, reg_b, vault_b, kind, values)
        assert again == tokens
