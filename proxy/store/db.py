"""The asyncpg pool, the store's errors, and what a lost database looks like.

``connect_pool`` turns every way a DATABASE_URL can fail into one error that says what to
do: the server does not answer (:class:`DatabaseUnavailableError`), the credentials are
wrong (:class:`DatabaseAuthError`), the database does not exist
(:class:`DatabaseNotFoundError`), or it has no tokenproxy schema, an old one or a newer one
(:class:`SchemaError`). Messages name ``host:port/database`` and the user, never the password.

Once running, a query that fails because the connection or the server went away raises
:class:`DatabaseUnavailableError` (see :func:`is_unavailable` and :func:`unavailable`); the
registry and the vault keep their pending rows and :mod:`proxy.store.durable` retries.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import asyncpg
import orjson

from proxy.errors import TokenProxyError

__all__ = [
    "DEFAULT_TIMEOUT",
    "DatabaseAuthError",
    "DatabaseNotFoundError",
    "DatabaseUnavailableError",
    "SchemaError",
    "StoreError",
    "connect_pool",
    "describe_dsn",
    "is_unavailable",
    "retrying",
    "storable_text",
    "unavailable",
]

DEFAULT_TIMEOUT = 10.0  # seconds: connecting, and any one statement of the store

T = TypeVar("T")


class StoreError(TokenProxyError):
    """The token store (PostgreSQL) cannot serve the request."""


class DatabaseUnavailableError(StoreError):
    """The database does not answer: refused, timed out, or the connection was lost.

    Tokenization goes on from the keys in memory; issued tokens queue until it returns;
    reveals are denied."""


class DatabaseAuthError(StoreError):
    """The server refused the credentials of DATABASE_URL."""


class DatabaseNotFoundError(StoreError):
    """The server answers but the database named in DATABASE_URL does not exist."""


class SchemaError(StoreError):
    """The database has no tokenproxy schema, an outdated one, a newer one, or an applied
    migration whose file has changed since."""


# Errors that mean "the database went away", as opposed to a bug or a constraint.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,  # asyncio.TimeoutError is this class since 3.11
    asyncpg.PostgresConnectionError,  # class 08: connection exceptions
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, cannot connect now, cancel
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, out of memory
    asyncpg.InterfaceError,  # "connection is closed", pool closing
    # A connection lost mid-query can be left "busy": resetting it on release then fails
    # with this (and asyncpg terminates it).
    asyncpg.exceptions.InternalClientError,
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is (for now) out of reach."""
    if isinstance(exc, asyncpg.exceptions.ClientConfigurationError):
        return False
    return isinstance(exc, (*_UNAVAILABLE, DatabaseUnavailableError))


def storable_text(text: str) -> bool:
    """Whether PostgreSQL text can hold ``text`` (no NUL, no lone surrogate): a string it
    cannot hold cannot be a stored token."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def describe_dsn(dsn: str | None) -> str:
    """``user@host:port/database`` of a DSN (or of the PG* environment), never the password."""
    host = os.environ.get("PGHOST", "localhost")
    port = os.environ.get("PGPORT", "5432")
    user = os.environ.get("PGUSER", "")
    database = os.environ.get("PGDATABASE", "")
    if dsn:
        try:
            parts = urlsplit(dsn)
            host = unquote(parts.hostname or "") or host
            port = str(parts.port or port)
            user = unquote(parts.username or "") or user
            database = unquote(parts.path.lstrip("/")) or database
        except ValueError:
            return "(an unparsable DATABASE_URL)"
    database = database or user or "postgres"
    who = f"{user}@" if user else ""
    return f"{who}{host}:{port}/{database}"


def _scrub(text: str, dsn: str | None) -> str:
    """Remove the DSN's password from a message, should a driver ever echo it."""
    if dsn:
        try:
            password = urlsplit(dsn).password
        except ValueError:
            password = None
        for secret in filter(None, {password, unquote(password or "")}):
            text = text.replace(secret, "***")
    return text


def unavailable(exc: BaseException, where: str, dsn: str | None = None) -> DatabaseUnavailableError:
    """A :class:`DatabaseUnavailableError` for ``exc`` (no value, no password in it)."""
    detail = _scrub(str(exc), dsn).strip() or type(exc).__name__
    return DatabaseUnavailableError(
        f"the database at {where} is unavailable ({type(exc).__name__}: {detail}); "
        "check that PostgreSQL is running and that DATABASE_URL names the right host and port"
    )


def translate_connect_error(exc: BaseException, dsn: str | None, timeout: float) -> StoreError:
    """The store error that explains why connecting to ``dsn`` failed."""
    where = describe_dsn(dsn)
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return DatabaseAuthError(
            f"the database at {where} refused the password: fix the credentials in DATABASE_URL"
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        detail = _scrub(str(exc), dsn)
        return DatabaseAuthError(
            f"the database at {where} refused the connection ({detail}): "
            "fix the user in DATABASE_URL or the server's pg_hba.conf"
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return DatabaseNotFoundError(
            f"the database at {where} does not exist: create it (createdb) "
            "or fix the database name in DATABASE_URL"
        )
    if isinstance(exc, TimeoutError):
        return DatabaseUnavailableError(
            f"the database at {where} did not answer within {timeout:g} s: check that "
            "PostgreSQL is running there and that no firewall drops the connection"
        )
    if isinstance(exc, asyncpg.exceptions.ClientConfigurationError | ValueError):
        return StoreError(f"DATABASE_URL is not a valid PostgreSQL URL: {_scrub(str(exc), dsn)}")
    if is_unavailable(exc):
        return unavailable(exc, where, dsn)
    return StoreError(
        f"cannot use the database at {where}: {type(exc).__name__}: {_scrub(str(exc), dsn)}"
    )


async def _init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection setup: json and jsonb as Python objects (orjson)."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name,
            encoder=lambda obj: orjson.dumps(obj).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection to the pool without asyncpg's reset query.

    asyncpg still rolls back an open transaction and drops the client-side listeners
    before this runs; its default would then send ``pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`` on every release: one more round trip for each of the dozen
    small queries a request with new tokens makes. The store leaves no session state to
    reset: settings are only ever ``SET LOCAL``, the migration lock is released by the code
    that takes it, the tickets listener removes its LISTEN before the release.
    """


async def connect_pool(
    dsn: str | None,
    *,
    min_size: int = 1,
    max_size: int = 10,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109  (asyncpg's per-connection timeout)
    command_timeout: float | None = DEFAULT_TIMEOUT,
    require_schema: bool = True,
) -> asyncpg.Pool:
    """An asyncpg pool on ``dsn``, tested with one query before it is returned.

    ``timeout`` bounds each connection attempt; ``command_timeout`` each statement (a server
    that stops answering mid-query must not hang a request). With ``require_schema`` the
    tokenproxy schema must be present and current (see :func:`proxy.store.migrations.check_schema`);
    ``tokenproxy db migrate`` connects with ``require_schema=False``.

    The json and jsonb types are encoded and decoded as Python objects.
    """
    pool: asyncpg.Pool | None = None
    try:
        pool = await asyncio.wait_for(
            asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
                command_timeout=command_timeout,
                init=_init_connection,
                reset=_keep_session,
            ),
            timeout=timeout * 2,
        )
        assert pool is not None
        async with pool.acquire(timeout=timeout) as conn:
            await conn.fetchval("SELECT 1", timeout=timeout)
        if require_schema:
            from proxy.store.migrations import check_schema  # (an import cycle otherwise)

            await check_schema(pool)
    except BaseException as exc:
        if pool is not None:
            pool.terminate()
        if isinstance(exc, Exception):
            raise translate_connect_error(exc, dsn, timeout) from None
        raise
    return pool


async def retrying(
    pool: asyncpg.Pool,
    operation: Callable[[asyncpg.Connection], Awaitable[T]],
    *,
    where: str = "the store's database",
    attempts: int = 2,
) -> T:
    """Run ``operation`` on a pooled connection; retry on a fresh one if it was lost.

    After a server restart every idle pooled connection is dead, and the first use of each
    fails: one retry on a new connection absorbs that. If the database is really gone, the
    last failure becomes a :class:`DatabaseUnavailableError`.
    """
    last: BaseException | None = None
    for _ in range(max(1, attempts)):
        try:
            # No acquire timeout (it costs a task per call): connecting is bounded by the
            # pool's connect timeout and every statement by its command timeout.
            async with pool.acquire() as conn:
                return await operation(conn)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            last = exc
    assert last is not None
    raise unavailable(last, where) from None
