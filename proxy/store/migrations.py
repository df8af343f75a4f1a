"""Numbered SQL migrations: discovered in the package, applied once, in order, under a lock.

The files are ``proxy/store/migrations/NNNN_name.sql`` (package data). ``migrate`` applies
those not yet recorded in ``schema_migrations``, each in its own transaction, holding a
PostgreSQL advisory lock so that several proxies starting at once apply each file once (the
others wait, then find nothing to do). It refuses to run

- against a schema newer than this code knows (a newer tokenproxy migrated it: upgrade);
- when an applied file's checksum differs from the file shipped now (someone edited a
  released migration: add a new file instead).

``check_schema`` is the read-only start-up check of a proxy that does not migrate.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files

import asyncpg

from proxy.store.db import SchemaError, StoreError, is_unavailable, unavailable

__all__ = [
    "LOCK_KEY",
    "Migration",
    "MigrationReport",
    "check_schema",
    "discover",
    "latest_version",
    "migrate",
    "schema_version",
]

# pg_advisory_lock key of migrations: b"tokenprx" as a signed 64-bit integer.
LOCK_KEY = int.from_bytes(b"tokenprx", "big", signed=True)
LOCK_WAIT = 120.0  # seconds to wait for another proxy's migration to finish
STATEMENT_TIMEOUT = 600.0  # a migration may rewrite a big table

_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str
    checksum: str  # sha256 hex of the file, line endings normalised

    @classmethod
    def from_text(cls, version: int, name: str, sql: str) -> Migration:
        """A migration from its text (checksum computed)."""
        normalised = sql.replace("\r\n", "\n")
        return cls(version, name, normalised, hashlib.sha256(normalised.encode()).hexdigest())


@dataclass(frozen=True)
class MigrationReport:
    """What ``migrate`` did."""

    applied: tuple[Migration, ...]
    already_applied: tuple[int, ...]
    version: int  # the schema version afterwards

    def __str__(self) -> str:
        if not self.applied:
            return f"schema is up to date at version {self.version}"
        done = ", ".join(f"{m.version:04d}_{m.name}" for m in self.applied)
        return f"applied {len(self.applied)} migration(s): {done}; schema version {self.version}"


def discover(package: str = "proxy.store", directory: str = "migrations") -> tuple[Migration, ...]:
    """Every migration file shipped in the package, in version order."""
    found: dict[int, Migration] = {}
    for entry in files(package).joinpath(directory).iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE.fullmatch(entry.name)
        if match is None:
            raise SchemaError(
                f"migration file {entry.name!r} is not named NNNN_name.sql (lower case)"
            )
        version = int(match.group(1))
        if version in found or version < 1:
            raise SchemaError(f"two migration files, or a zero, carry number {version:04d}")
        found[version] = Migration.from_text(version, match.group(2), entry.read_text("utf-8"))
    return tuple(found[v] for v in sorted(found))


_SHIPPED: tuple[Migration, ...] | None = None


def _shipped() -> tuple[Migration, ...]:
    global _SHIPPED
    if _SHIPPED is None:
        _SHIPPED = discover()
    return _SHIPPED


def latest_version(migrations: Sequence[Migration] | None = None) -> int:
    """The schema version this code expects (0 when there are no migrations)."""
    known = _shipped() if migrations is None else migrations
    return max((m.version for m in known), default=0)


async def _applied(conn: asyncpg.Connection) -> dict[int, tuple[str, str]] | None:
    """version -> (name, checksum) of applied migrations; None without the table."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return None
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    return {r["version"]: (r["name"], r["checksum"]) for r in rows}


def _verify(applied: dict[int, tuple[str, str]], known: Iterable[Migration]) -> None:
    by_version = {m.version: m for m in known}
    newest = max(by_version, default=0)
    unknown = sorted(v for v in applied if v not in by_version)
    if unknown and max(unknown) > newest:
        raise SchemaError(
            f"the database schema is at version {max(applied)}, newer than this tokenproxy "
            f"knows (version {newest}): upgrade tokenproxy"
        )
    if unknown:
        raise SchemaError(
            f"the database records migration(s) {unknown} that this tokenproxy does not ship: "
            "it was migrated by another build; use that build or restore the database"
        )
    for version, (name, checksum) in sorted(applied.items()):
        if by_version[version].checksum != checksum:
            raise SchemaError(
                f"migration {version:04d}_{name} was changed after it was applied (checksum "
                "differs): restore the released file and put the change in a new migration"
            )


async def schema_version(conn_or_pool: asyncpg.Connection | asyncpg.Pool) -> int | None:
    """The highest applied migration, 0 for an empty table, None without the table."""
    async with _connection(conn_or_pool) as conn:
        applied = await _applied(conn)
    if applied is None:
        return None
    return max(applied, default=0)


async def check_schema(
    conn_or_pool: asyncpg.Connection | asyncpg.Pool,
    migrations: Sequence[Migration] | None = None,
) -> int:
    """Raise :class:`SchemaError` unless the schema is exactly what this code expects.

    Returns the schema version.
    """
    known = _shipped() if migrations is None else tuple(migrations)
    async with _connection(conn_or_pool) as conn:
        applied = await _applied(conn)
    if not applied:
        raise SchemaError("the database has no tokenproxy schema: run `tokenproxy db migrate`")
    _verify(applied, known)
    missing = [m.version for m in known if m.version not in applied]
    if missing:
        raise SchemaError(
            f"the database schema is at version {max(applied)}, this tokenproxy needs "
            f"{latest_version(known)}: run `tokenproxy db migrate`"
        )
    return max(applied)


async def migrate(
    conn_or_pool: asyncpg.Connection | asyncpg.Pool,
    migrations: Sequence[Migration] | None = None,
    *,
    lock_wait: float = LOCK_WAIT,
) -> MigrationReport:
    """Apply every migration not yet applied, in order, each in its own transaction.

    Safe to run from several processes at once (advisory lock), and idempotent.
    """
    known = _shipped() if migrations is None else tuple(sorted(migrations, key=lambda m: m.version))
    try:
        return await _migrate(conn_or_pool, known, lock_wait)
    except Exception as exc:
        if is_unavailable(exc):
            raise unavailable(exc, "the database being migrated") from None
        raise


async def _migrate(
    conn_or_pool: asyncpg.Connection | asyncpg.Pool, known: Sequence[Migration], lock_wait: float
) -> MigrationReport:
    async with _connection(conn_or_pool) as conn:
        await _lock(conn, lock_wait)
        try:
            await conn.execute(_CREATE_TABLE, timeout=STATEMENT_TIMEOUT)
            applied = await _applied(conn) or {}
            _verify(applied, known)
            done: list[Migration] = []
            for migration in known:
                if migration.version in applied:
                    continue
                try:
                    async with conn.transaction():
                        await conn.execute(migration.sql, timeout=STATEMENT_TIMEOUT)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) "
                            "VALUES ($1, $2, $3)",
                            migration.version,
                            migration.name,
                            migration.checksum,
                        )
                except asyncpg.PostgresError as exc:
                    if is_unavailable(exc):
                        raise
                    raise SchemaError(
                        f"migration {migration.version:04d}_{migration.name} failed and was "
                        f"rolled back: {type(exc).__name__}: {exc}"
                    ) from None
                done.append(migration)
        finally:
            if not conn.is_closed():
                await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    version = max([*applied, *(m.version for m in done)], default=0)
    return MigrationReport(tuple(done), tuple(sorted(applied)), version)


async def _lock(conn: asyncpg.Connection, wait: float) -> None:
    """Take the migration lock, waiting at most ``wait`` seconds for another migrator."""
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY, timeout=wait)
    except TimeoutError:
        raise StoreError(
            f"another tokenproxy has held the migration lock for over {wait:g} s; "
            "wait for it to finish, or look for a stuck `tokenproxy db migrate` "
            f"(pg_locks: locktype advisory, objid {LOCK_KEY & 0xFFFFFFFF})"
        ) from None


class _connection:
    """``async with _connection(pool_or_conn) as conn``: acquire from a pool, or use as is."""

    def __init__(self, target: asyncpg.Connection | asyncpg.Pool) -> None:
        self._target = target
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        if isinstance(self._target, asyncpg.Pool):
            self._conn = await self._target.acquire()
            return self._conn
        return self._target

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._target.release(self._conn)
