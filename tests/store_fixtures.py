"""Fixtures and helpers of the store tests.

Import with ``from store_fixtures import *`` (tests/ is on sys.path: it has no __init__.py).

The PostgreSQL server itself comes from conftest (``pg_server``, ``pg_dsn``,
``restartable_pg``); here: a migrated pool, keyrings, and a small digits tokenizer (FF1 for
six digits or more, the vault below) so that the store is tested without the real name and
phone tokenizers.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Sequence

import asyncpg
import pytest

from proxy.crypto.engine import TokenEngine
from proxy.crypto.keyring import DataKey, Keyring, KeyState
from proxy.crypto.tokens import Kind, Method, Tokenized
from proxy.crypto.vault import Vault
from proxy.store.db import connect_pool
from proxy.store.migrations import migrate
from proxy.store.registry import PgTokenRegistry
from proxy.store.vault import PgVault

__all__ = [
    "KIND",
    "DigitsTokenizer",
    "keyring",
    "make_engine",
    "make_keyring",
    "store_pool",
]

KIND = "phone"
FF1_MIN_DIGITS = 6  # 10^6: FF1's minimum domain


class DigitsTokenizer:
    """Digit strings: FF1 (radix 10) from six digits, a random vault token below."""

    kind = Kind.PHONE

    def __init__(self, kind: str = KIND) -> None:
        self.kind_name = kind

    def _tweak(self, key: DataKey) -> bytes:
        return f"{self.kind_name}/{key.version}".encode()

    def tokenize(self, value: str, key: DataKey, vault: Vault) -> Tokenized:
        if len(value) >= FF1_MIN_DIGITS:
            out = key.ff1(10).encrypt_int(int(value), len(value), self._tweak(key))
            return Tokenized(str(out).zfill(len(value)), Method.FF1)
        draw = _digits_drawer(len(value))
        return Tokenized(vault.token_for(self.kind_name, value, key, draw), Method.VAULT)

    def tokenize_many(self, values: Sequence[str], key: DataKey, vault: Vault) -> list[Tokenized]:
        return [self.tokenize(v, key, vault) for v in values]

    def detokenize(self, token: str, key: DataKey, vault: Vault) -> str:
        if len(token) >= FF1_MIN_DIGITS:
            out = key.ff1(10).decrypt_int(int(token), len(token), self._tweak(key))
            return str(out).zfill(len(token))
        raise NotImplementedError("vault tokens go through engine.vault.value_for")


class _VaultAwareDigits(DigitsTokenizer):
    """The engine gives the tokenizer a vault and no keyring: resolve short tokens through
    the vault with a one-key keyring view of the key it is given."""

    def detokenize(self, token: str, key: DataKey, vault: Vault) -> str:
        if len(token) >= FF1_MIN_DIGITS:
            return super().detokenize(token, key, vault)
        return vault.value_for(self.kind_name, token, Keyring((key.with_state(KeyState.ACTIVE),)))


def _digits_drawer(length: int) -> Callable[[], str]:
    def draw() -> str:
        return "".join(secrets.choice("0123456789") for _ in range(length))

    return draw


def make_keyring(*versions: int, active: int | None = None) -> Keyring:
    """A keyring of fixed test keys (material derived from the version)."""
    versions = versions or (1,)
    active = active if active is not None else max(versions)
    keys = tuple(
        DataKey(v, bytes([v]) * 32, KeyState.ACTIVE if v == active else KeyState.DECRYPT_ONLY)
        for v in versions
    )
    return Keyring(keys)


def make_engine(
    registry: PgTokenRegistry, vault: PgVault, keyring: Keyring | None = None
) -> TokenEngine:
    """An engine with the digits tokenizer over a store registry and vault."""
    return TokenEngine(keyring or make_keyring(1), {KIND: _VaultAwareDigits()}, vault, registry)


@pytest.fixture
def keyring() -> Keyring:
    return make_keyring(1)


@pytest.fixture
async def store_pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh, migrated database."""
    pool = await connect_pool(pg_dsn, min_size=1, max_size=5, require_schema=False)
    await migrate(pool)
    try:
        yield pool
    finally:
        pool.terminate()


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close a pool, terminating it if a stopped server keeps it waiting."""
    try:
        await asyncio.wait_for(pool.close(), 5)
    except TimeoutError:
        pool.terminate()


@pytest.fixture(name="pool")
async def migrated_pool(schema_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool (the project's connect_pool) on a fresh, migrated schema."""
    pool = await connect_pool(schema_dsn, require_schema=False, max_size=12)
    await migrate(pool)
    yield pool
    await close_pool(pool)
