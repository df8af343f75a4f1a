"""The PostgreSQL front end's cancel keys, shared by every proxy (table ``pg_cancel_keys``).

A client cancels a running query by opening a *new* connection and sending the key its
session was given. Behind a load balancer, or with several proxies on one address, that
connection reaches any proxy, most often not the session's. So each proxy writes here the
key it gives a client, with the upstream's real key, and a proxy that does not know a key
looks it up here before passing the cancel on to the upstream::

    keys = CancelKeyTable(store.pool, where=store.where)
    if await keys.put(pid, secret, SharedCancelKey(host, port, real_pid, real_secret, tls)):
        ...                                  # the pid is this session's, on every proxy
    target = await keys.find(pid, secret)    # on any proxy: None unless both match
    await keys.drop(pid, secret)             # the session ended

A pid is taken by one live session at a time: `put` replaces a row left by a proxy that
died only when the upstream reuses the row's backend pid (that backend has ended), and
otherwise returns False (the caller picks another pid). A proxy that stops drops its rows
(`drop_instance`). Every call is bounded by ``timeout`` and raises
:class:`~proxy.store.db.DatabaseUnavailableError` when the database does not answer (a
:class:`~proxy.store.db.StoreError` on any other failure): the caller goes on without it (a
cancel then works through the session's own proxy only).

What a row holds is what any client of the session could send (no customer data); whoever
reads this table can cancel the upstream's queries, as whoever reads the rest of it can do
worse: grant it to the proxies only.
"""

from __future__ import annotations

import asyncio
import hmac
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from proxy.store.db import StoreError, retrying, unavailable

__all__ = ["CancelKeyTable", "SharedCancelKey"]

T = TypeVar("T")

TIMEOUT = 2.0  # seconds for one call, connecting included: a session's start waits on `put`

_PUT = """
INSERT INTO pg_cancel_keys AS k
    (pid, secret, upstream_host, upstream_port, upstream_pid, upstream_secret, upstream_tls,
     instance)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (pid) DO UPDATE
    SET secret = EXCLUDED.secret, upstream_secret = EXCLUDED.upstream_secret,
        upstream_tls = EXCLUDED.upstream_tls, instance = EXCLUDED.instance, created_at = now()
    WHERE (k.upstream_host, k.upstream_port, k.upstream_pid)
        = (EXCLUDED.upstream_host, EXCLUDED.upstream_port, EXCLUDED.upstream_pid)
RETURNING pid
"""
_FIND = """
SELECT secret, upstream_host, upstream_port, upstream_pid, upstream_secret, upstream_tls
FROM pg_cancel_keys WHERE pid = $1
"""
_DROP = "DELETE FROM pg_cancel_keys WHERE pid = $1 AND secret = $2"
_DROP_INSTANCE = "DELETE FROM pg_cancel_keys WHERE instance = $1"


@dataclass(frozen=True, slots=True)
class SharedCancelKey:
    """The upstream's real key of a session: where to send its cancel, and over TLS or not."""

    host: str
    port: int
    pid: int
    secret_key: bytes = field(repr=False)
    tls: bool = False


class CancelKeyTable:
    """One proxy's view of ``pg_cancel_keys`` (its rows carry `instance`)."""

    def __init__(self, pool: asyncpg.Pool, *, where: str = "the store's database",
                 timeout: float = TIMEOUT) -> None:
        self.pool = pool
        self.where = where
        self.timeout = timeout
        self.instance = uuid.uuid4()  # this process's rows

    async def put(self, pid: int, secret: bytes, target: SharedCancelKey) -> bool:
        """Record the key ``(pid, secret)`` given to a client for ``target``; False when
        another live session holds ``pid``."""
        row = await self._run(lambda c: c.fetchrow(
            _PUT, pid, secret, target.host, target.port, target.pid, target.secret_key,
            target.tls, self.instance))
        return row is not None

    async def find(self, pid: int, secret: bytes) -> SharedCancelKey | None:
        """The target of the key ``(pid, secret)``, recorded by any proxy; None unless the
        secret matches (compared in constant time)."""
        row = await self._run(lambda c: c.fetchrow(_FIND, pid))
        if row is None or not hmac.compare_digest(bytes(row["secret"]), secret):
            return None
        return SharedCancelKey(row["upstream_host"], row["upstream_port"], row["upstream_pid"],
                               bytes(row["upstream_secret"]), row["upstream_tls"])

    async def drop(self, pid: int, secret: bytes) -> None:
        """Forget the key (its session ended)."""
        await self._run(lambda c: c.execute(_DROP, pid, secret))

    async def drop_instance(self) -> int:
        """Forget every key this proxy recorded (it stops); how many there were."""
        status: str = await self._run(lambda c: c.execute(_DROP_INSTANCE, self.instance))
        return int(status.rsplit(" ", 1)[-1])

    async def _run(self, operation: Callable[[Any], Awaitable[T]]) -> T:
        """``operation`` on a pooled connection (`retrying`, once), connecting included
        within ``timeout``."""
        try:
            async with asyncio.timeout(self.timeout):
                return await retrying(self.pool, operation, where=self.where, attempts=1)
        except TimeoutError as exc:
            raise unavailable(exc, self.where) from None
        except asyncpg.PostgresError as exc:  # (the SQLSTATE only: no value here)
            raise StoreError(f"pg_cancel_keys at {self.where}: SQLSTATE {exc.sqlstate}") from None
