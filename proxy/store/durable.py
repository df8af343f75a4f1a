"""Tokens that outlive the request: flush before sending, and keep going when PostgreSQL goes.

- :func:`tokenize_durably` is what front ends call: tokenize, settle the vault's races,
  record the tokens, and only then return them.
- :class:`StoreHealth` watches the database: while it is away tokenization goes on from the
  keys in memory and issued tokens queue in bounded memory; its ``run`` loop retries with
  backoff and writes the queue when the database returns. It reports ``healthy``, ``reason``
  and ``pending`` for /health, and logs transitions (counts, kinds and versions, never a
  value).
- :class:`Store` (from :func:`open_store`) holds the pool, the registry, the vault and the
  health loop; it is what the CLI's ``--database URL`` and the proxy start-up open.

Reveals are not decided here: with the database away the audit row cannot be committed, so
the reveal is denied (``StoreHealth.healthy`` says so in advance).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from proxy.crypto.engine import Resolution, TokenEngine
from proxy.crypto.keyring import DataKey, Keyring, KeyState
from proxy.errors import KeyringError, NotATokenError, VaultMissError
from proxy.store.db import (
    DEFAULT_TIMEOUT,
    DatabaseUnavailableError,
    connect_pool,
    describe_dsn,
    retrying,
)
from proxy.store.migrations import MigrationReport, check_schema, migrate
from proxy.store.registry import PgTokenRegistry
from proxy.store.vault import PgVault

__all__ = [
    "Store",
    "StoreHealth",
    "detokenize_many",
    "open_store",
    "prefetch_tokens",
    "resolve_many",
    "tokenize_durably",
]

MAX_SETTLE_ROUNDS = 8

_log = structlog.get_logger("tokenproxy.store")

LostHook = Callable[[set[tuple[str, str]]], None]


class StoreHealth:
    """Whether the database answers, what is queued, and the loop that drains the queue."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        registry: PgTokenRegistry,
        vault: PgVault,
        *,
        interval: float = 1.0,
        min_backoff: float = 0.1,
        max_backoff: float = 10.0,
        on_lost: LostHook | None = None,
        where: str = "the store's database",
    ) -> None:
        self.pool = pool
        self.registry = registry
        self.vault = vault
        self.interval = interval
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.on_lost = on_lost
        self.where = where
        self.healthy = True
        self.reason = "ok"
        self.outages = 0
        self._wake = asyncio.Event()

    @property
    def pending(self) -> int:
        """Registry and vault rows waiting for the database."""
        return self.registry.pending + self.vault.pending

    @property
    def dropped(self) -> int:
        """Registry rows dropped from a full queue (their tokens may not resolve elsewhere)."""
        return self.registry.dropped

    def snapshot(self) -> dict[str, Any]:
        """The store's part of /health."""
        return {
            "database": "ok" if self.healthy else "unavailable",
            "reason": self.reason,
            "pending": self.pending,
            "pending_registry": self.registry.pending,
            "pending_vault": self.vault.pending,
            "dropped": self.dropped,
            "unresolvable": self.vault.unresolvable,
            "outages": self.outages,
        }

    def report_failure(self, exc: BaseException) -> None:
        """Note that the database is away (called by whoever saw it fail)."""
        reason = str(exc) if isinstance(exc, DatabaseUnavailableError) else type(exc).__name__
        if self.healthy:
            self.outages += 1
            _log.warning(
                "store.database_unavailable",
                reason=reason,
                pending_registry=self.registry.pending,
                pending_vault=self.vault.pending,
                detail="tokenizing from keys in memory, queueing issued tokens, denying reveals",
            )
        self.healthy = False
        self.reason = reason
        self._wake.set()

    def report_success(self, flushed_registry: int = 0, flushed_vault: int = 0) -> None:
        """Note that the database answered."""
        if not self.healthy:
            _log.info(
                "store.database_back",
                flushed_registry=flushed_registry,
                flushed_vault=flushed_vault,
                pending=self.pending,
                dropped=self.dropped,
                unresolvable=self.vault.unresolvable,
            )
        self.healthy = True
        self.reason = "ok"

    async def check(self) -> bool:
        """One round: write what is queued (or ping); returns whether the database answered."""
        vault_rows = self.vault.pending
        try:
            lost = await self.vault.flush()
            if lost and self.on_lost is not None:
                self.on_lost(lost)
            flushed = await self.registry.flush()
            if not vault_rows and not flushed:
                await retrying(self.pool, _ping, where=self.where)
        except DatabaseUnavailableError as exc:
            self.report_failure(exc)
            return False
        except Exception as exc:  # the loop must survive anything: report it and retry
            _log.exception("store.health_check_failed", error=type(exc).__name__)
            self.report_failure(exc)
            return False
        self.report_success(flushed, vault_rows)
        return True

    async def run(self) -> None:
        """Check every ``interval`` seconds while healthy; retry with backoff while not."""
        backoff = self.min_backoff
        while True:
            ok = await self.check()
            self._wake.clear()
            if ok:  # sleep, but wake at once when a request sees the database fail
                backoff = self.min_backoff
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            else:
                await asyncio.sleep(backoff * (0.5 + random.random()))  # noqa: S311  (jitter)
                backoff = min(backoff * 2, self.max_backoff)


async def _ping(conn: asyncpg.Connection) -> None:
    await conn.fetchval("SELECT 1")


async def tokenize_durably(
    engine: TokenEngine,
    registry: PgTokenRegistry,
    vault: PgVault,
    kind: str,
    values: Sequence[str],
    *,
    health: StoreHealth | None = None,
    prefetch: bool = True,
) -> list[str]:
    """The tokens of ``values``, recorded before they are returned (or queued if the
    database is away). Front ends call this before any token leaves the proxy.

    1. (``prefetch``) load the vault tokens of the values, so that known short values are
       not drawn again, and (with more than one key version) the registry rows of the
       tokens the values would get (`TokenEngine.candidates`), so that a token another
       version issued is seen and the value takes its alternate; skipped while the
       database is away.
    2. tokenize; 3. write the vault's new rows: if any race was lost meanwhile (here or by a
       concurrent request whose cached token we reused), forget this call's values and
       tokenize again; 4. write the registry rows.

    With the database away, steps 3 and 4 keep their rows queued (health is told) and the
    optimistic tokens are returned: tokenization never waits for the database. A full vault
    queue raises :class:`VaultMissError` from step 2: fail closed.
    """
    if prefetch and (health is None or health.healthy):
        try:
            await vault.prefetch_values(kind, values, engine.keyring.active)
            candidates = engine.candidates(kind, values)
            if candidates:
                await registry.prefetch(kind, candidates)
        except DatabaseUnavailableError as exc:
            if health is not None:
                health.report_failure(exc)
    # While the database is known to be away, queue without trying: the health loop
    # retries, and a request must not wait out a connection timeout.
    away = health is not None and not health.healthy
    for _ in range(MAX_SETTLE_ROUNDS):
        losses = vault.losses
        tokens = engine.tokenize_many(kind, values)
        if away:
            break
        try:
            lost = await vault.flush()
        except DatabaseUnavailableError as exc:
            away = True
            if health is not None:
                health.report_failure(exc)
            break
        for lost_kind, value in lost:
            engine.forget(lost_kind, value)
        if vault.losses == losses:
            break
        for value in values:  # a token of ours may have been a loser: tokenize again
            engine.forget(kind, value)
    else:
        raise VaultMissError(
            f"could not settle {kind} vault tokens after {MAX_SETTLE_ROUNDS} rounds of races; "
            "the request should be retried"
        )
    if away:
        vault.mark_escaped()  # these tokens leave unconfirmed: keep them resolvable
    else:
        try:
            await registry.flush()
        except DatabaseUnavailableError as exc:
            if health is not None:
                health.report_failure(exc)
    return tokens


class _VaultProbe:
    """A vault that answers from the store vault's cache and records the tokens it lacks.

    Which vault rows a token needs is the tokenizer's business: a phone token with an
    extension needs the row ``ext:<digits>``, a whole-vault phone ``raw:<token>``. Running
    the tokenizer's ``detokenize`` against this probe finds them without knowing the format.
    """

    def __init__(self, vault: PgVault) -> None:
        self.vault = vault
        self.missing: dict[str, set[str]] = {}

    def token_for(self, kind: str, value: str, key: DataKey, draw: Callable[[], str]) -> str:
        raise VaultMissError("the probe never issues tokens")

    def value_for(self, kind: str, token: str, keyring: Keyring) -> str:
        try:
            return self.vault.value_for(kind, token, keyring)
        except NotATokenError:
            self.missing.setdefault(kind, set()).add(token)
            raise


async def prefetch_tokens(
    engine: TokenEngine,
    registry: PgTokenRegistry,
    vault: PgVault,
    kind: str,
    tokens: Iterable[str],
    *,
    offline: bool = False,
) -> None:
    """Load what ``engine.detokenize``/``resolve`` need for values coming back in a request.

    One registry query; then, for registered tokens made (partly) by the vault, one vault
    query per vault kind for the rows their tokenizer asks for. Raises
    :class:`DatabaseUnavailableError` when the database is away and something needed is not
    cached here (write-back must then fail closed: an unknown value may be a token).
    ``offline``: the database is known to be away; do not query for what the cache knows.
    """
    candidates = list(dict.fromkeys(tokens))
    await registry.prefetch(kind, candidates, offline=offline)
    probe = _VaultProbe(vault)
    tokenizer = engine.tokenizer(kind)
    for token in candidates:
        for row in registry.lookup(kind, token):
            if row.method.ciphered:
                continue
            try:
                key = engine.keyring.get(row.version)
            except KeyringError:
                continue  # retired: will not resolve anyway
            with contextlib.suppress(Exception):  # only collecting what is missing
                tokenizer.detokenize(token, key, probe)
    for vault_kind, missing in probe.missing.items():
        await vault.prefetch_tokens(vault_kind, missing)


async def detokenize_many(
    engine: TokenEngine,
    registry: PgTokenRegistry,
    vault: PgVault,
    kind: str,
    tokens: Sequence[str],
    *,
    offline: bool = False,
) -> list[str]:
    """The values behind tokens this proxy issued; anything else raises NotATokenError."""
    await prefetch_tokens(engine, registry, vault, kind, tokens, offline=offline)
    return [engine.detokenize(kind, token) for token in tokens]


async def resolve_many(
    engine: TokenEngine,
    registry: PgTokenRegistry,
    vault: PgVault,
    kind: str,
    values: Sequence[str],
    *,
    offline: bool = False,
) -> list[Resolution]:
    """Write-back: registered tokens become their values, anything else passes as typed."""
    await prefetch_tokens(engine, registry, vault, kind, values, offline=offline)
    return [engine.resolve(kind, value) for value in values]


@dataclass
class Store:
    """The pool, registry, vault and health loop of one proxy (or one CLI command)."""

    pool: asyncpg.Pool
    registry: PgTokenRegistry
    vault: PgVault
    health: StoreHealth
    where: str
    migration: MigrationReport | None = None
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    def over(
        cls,
        pool: asyncpg.Pool,
        where: str,
        *,
        on_lost: LostHook | None = None,
        migration: MigrationReport | None = None,
        registry_options: dict[str, Any] | None = None,
        vault_options: dict[str, Any] | None = None,
    ) -> Store:
        """The registry, vault and health of a pool (the health loop not started)."""
        registry = PgTokenRegistry(pool, where=where, **(registry_options or {}))
        vault = PgVault(pool, where=where, **(vault_options or {}))
        health = StoreHealth(pool, registry, vault, on_lost=on_lost, where=where)
        return cls(pool, registry, vault, health, where, migration)

    def start(self) -> None:
        """Start the health loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.health.run(), name="tokenproxy-store-health")

    async def tokenize(self, engine: TokenEngine, kind: str, values: Sequence[str]) -> list[str]:
        """See :func:`tokenize_durably`."""
        return await tokenize_durably(
            engine, self.registry, self.vault, kind, values, health=self.health
        )

    async def detokenize(self, engine: TokenEngine, kind: str, tokens: Sequence[str]) -> list[str]:
        """See :func:`detokenize_many`."""
        try:
            return await detokenize_many(
                engine, self.registry, self.vault, kind, tokens, offline=not self.health.healthy
            )
        except DatabaseUnavailableError as exc:
            self.health.report_failure(exc)
            raise

    async def resolve(
        self, engine: TokenEngine, kind: str, values: Sequence[str]
    ) -> list[Resolution]:
        """See :func:`resolve_many`."""
        try:
            return await resolve_many(
                engine, self.registry, self.vault, kind, values, offline=not self.health.healthy
            )
        except DatabaseUnavailableError as exc:
            self.health.report_failure(exc)
            raise

    async def flush(self) -> None:
        """Write everything queued now; raises DatabaseUnavailableError if it cannot."""
        lost = await self.vault.flush()
        if lost and self.health.on_lost is not None:
            self.health.on_lost(lost)
        await self.registry.flush()

    async def purge_version(self, version: int, keyring: Keyring) -> tuple[int, int]:
        """Delete a retired version's registry and vault rows: (registry rows, vault rows).

        Refused unless ``keyring`` has the version retired: purging a live version would
        turn its tokens, still held by agents, into values typed by them.
        """
        states = {k.version: k.state for k in keyring.keys}
        if states.get(version) is not KeyState.RETIRED:
            raise KeyringError(
                f"key version {version} is not retired in the keyring: retire it first "
                "(`tokenproxy keys retire`), then purge"
            )
        return await self.registry.purge_version(version), await self.vault.purge_version(version)

    async def close(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:  # noqa: ASYNC109
        """Stop the loop, write what is queued (best effort), close the pool."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:  # it cannot, but a crash must not stop the close
                _log.exception("store.health_loop_crashed")
            self._task = None
        try:
            await asyncio.wait_for(self.flush(), timeout=timeout)
        except (DatabaseUnavailableError, TimeoutError, VaultMissError) as exc:
            _log.error(
                "store.closed_with_pending_rows",
                reason=type(exc).__name__,
                pending_registry=self.registry.pending,
                pending_vault=self.vault.pending,
            )
        try:
            await asyncio.wait_for(self.pool.close(), timeout=timeout)
        except TimeoutError:
            self.pool.terminate()


async def open_store(
    dsn: str | None,
    *,
    run_migrations: bool = False,
    min_size: int = 1,
    max_size: int = 10,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109  (per connection attempt)
    start: bool = True,
    on_lost: LostHook | None = None,
    registry_options: dict[str, Any] | None = None,
    vault_options: dict[str, Any] | None = None,
) -> Store:
    """Connect, check (or apply) the schema, and build the store.

    ``run_migrations`` applies pending migrations first (start-up of a proxy configured to
    migrate); otherwise a missing or outdated schema is a :class:`SchemaError`. ``start``
    starts the health loop (a one-shot CLI command passes False and closes when done).
    """
    pool = await connect_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        require_schema=not run_migrations,
    )
    where = describe_dsn(dsn)
    report: MigrationReport | None = None
    try:
        if run_migrations:
            report = await migrate(pool)
            await check_schema(pool)
    except BaseException:
        pool.terminate()
        raise
    store = Store.over(
        pool,
        where,
        on_lost=on_lost,
        migration=report,
        registry_options=registry_options,
        vault_options=vault_options,
    )
    if start:
        store.start()
    return store
