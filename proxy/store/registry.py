"""The token registry in PostgreSQL, with an in-process cache in front.

The engine is synchronous: ``record`` and ``lookup`` (the :class:`TokenRegistry` protocol)
touch memory only. The I/O is in two async calls the caller makes around them:

- ``flush()`` writes the rows recorded since the last flush, in one round trip per batch
  (``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING``). A response's tokens are
  flushed before the response leaves.
- ``prefetch(kind, candidates)`` loads, in one query, the rows of the values of a request that
  may be tokens, so that the following ``lookup`` calls are exact.

The cache
---------
A bounded LRU of positive entries ``(kind, token) -> {version: IssuedToken}``. An entry loaded
from the database is *complete* (it holds every version's row); an entry made by ``record``
alone is *partial* (another version's row may exist in the table) and is completed by the
next ``prefetch`` that asks for it.

Negative results are cached too, briefly (``negative_ttl``, 1 s by default) and in a separate,
smaller LRU, so that a flood of typed values cannot evict tokens. A fresh negative entry
spares a ``prefetch`` its query; an older one is asked again. One second is safe: another
proxy's token reaches this proxy only after that proxy flushed it, went back to the agent and
the agent sent it here, and a negative entry for that exact string is possible only if the
same string was looked up here within the second before it was issued. ``lookup`` treats a
miss and a negative entry alike: not a token.

When the database is away
-------------------------
``flush`` keeps the rows it could not write and raises
:class:`~proxy.store.db.DatabaseUnavailableError`; the caller goes on (tokenization never
waits for the database) and :class:`~proxy.store.durable.StoreHealth` retries. The queue is
bounded (``max_pending`` rows, 100,000 by default); beyond it the *oldest* rows are dropped
and counted in ``dropped``: this proxy still resolves those tokens from its cache, but other
proxies (and this one after a restart) will not, and a write-back of such a token then passes
it as typed. An FF1 token's row comes back as soon as its value is tokenized again.

``prefetch`` with the database away raises only if some candidate is unknown to the cache:
tokens already cached keep resolving.

Retired key versions: ``retire(version)`` hides a version's rows from ``lookup`` at once (the
engine also skips versions its keyring has retired); ``purge_version`` deletes them.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg
import structlog

from proxy.crypto.tokens import IssuedToken, Method
from proxy.store.db import DatabaseUnavailableError, retrying, storable_text

__all__ = ["PgTokenRegistry"]

CACHE_SIZE = 200_000
NEGATIVE_CACHE_SIZE = 50_000
NEGATIVE_TTL = 1.0
MAX_PENDING = 100_000
CHUNK = 10_000  # rows per INSERT statement when a long queue drains

_log = structlog.get_logger("tokenproxy.store.registry")

# Rows go in key order, the same in every proxy: two proxies flushing overlapping rows then
# take their row locks in the same order and cannot deadlock.
_INSERT = """
INSERT INTO token_registry (kind, token, version, method)
SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[]) AS u(k, t, v, m)
ORDER BY k COLLATE "C", t COLLATE "C", v
ON CONFLICT DO NOTHING
"""

_SELECT = """
SELECT token, version, method FROM token_registry
WHERE kind = $1 AND token = ANY($2::text[])
"""

_Key = tuple[str, str]  # (kind, token)
_Row = tuple[str, str, int]  # (kind, token, version)
_Operation = Callable[[asyncpg.Connection], Awaitable[Any]]


def _insert(args: tuple[list[str], list[str], list[int], list[str]]) -> _Operation:
    async def run(conn: asyncpg.Connection) -> None:
        await conn.execute(_INSERT, *args)

    return run


class _Entry:
    """The cached rows of one (kind, token): complete when read from the table; ``stored``
    lists the versions known to be in the table (recording those again writes nothing)."""

    __slots__ = ("complete", "rows", "stored")

    def __init__(self, complete: bool) -> None:
        self.rows: dict[int, IssuedToken] = {}
        self.stored: set[int] = set()
        self.complete = complete


class PgTokenRegistry:
    """:class:`~proxy.crypto.registry.TokenRegistry` on PostgreSQL, cached and batched."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        cache_size: int = CACHE_SIZE,
        negative_cache_size: int = NEGATIVE_CACHE_SIZE,
        negative_ttl: float = NEGATIVE_TTL,
        max_pending: int = MAX_PENDING,
        where: str = "the store's database",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.where = where
        self._cache: OrderedDict[_Key, _Entry] = OrderedDict()
        self._negative: OrderedDict[_Key, float] = OrderedDict()
        self._pending: OrderedDict[_Row, Method] = OrderedDict()
        self._cache_size = cache_size
        self._negative_size = negative_cache_size
        self._negative_ttl = negative_ttl
        self._max_pending = max_pending
        self._clock = clock
        self._lock = asyncio.Lock()
        self.dropped = 0  # rows dropped from a full queue: those tokens may not resolve
        self.flushed = 0  # rows written (including rows already present)
        self.queries = 0  # round trips made (flush statements and prefetch queries)

    # -- the TokenRegistry protocol (sync, memory only) ------------------------------------

    def record(self, issued: Iterable[IssuedToken]) -> None:
        """Queue rows for the next ``flush`` and make them resolvable here at once."""
        for row in issued:
            key = (row.kind, row.token)
            entry = self._cache.get(key)
            if entry is None:
                entry = self._cache[key] = _Entry(complete=False)
                self._negative.pop(key, None)
            else:
                self._cache.move_to_end(key)
                if row.version in entry.stored:
                    continue  # already in the table
            entry.rows[row.version] = row
            self._pending[(row.kind, row.token, row.version)] = row.method
        self._trim_cache()
        if len(self._pending) > self._max_pending:
            self._drop_oldest()

    def lookup(self, kind: str, token: str) -> tuple[IssuedToken, ...]:
        """The cached rows of ``token``, retired versions included (the engine refuses
        those rather than pass the token on as a typed value); () if not known here."""
        entry = self._cache.get((kind, token))
        if entry is None:
            return ()
        self._cache.move_to_end((kind, token))
        return tuple(entry.rows.values())

    # -- I/O --------------------------------------------------------------------------------

    async def flush(self) -> int:
        """Write every queued row (one statement per batch of up to 10,000 rows).

        Returns the number of rows written. On a lost database the rows stay queued and
        :class:`DatabaseUnavailableError` is raised.
        """
        async with self._lock:
            if not self._pending:
                return 0
            batch, self._pending = self._pending, OrderedDict()
            rows = sorted(batch.items())  # key order across chunks too (see _INSERT)
            written = 0
            try:
                for start in range(0, len(rows), CHUNK):
                    chunk = rows[start : start + CHUNK]
                    args = (
                        [k for (k, _, _), _ in chunk],
                        [t for (_, t, _), _ in chunk],
                        [v for (_, _, v), _ in chunk],
                        [str(m) for _, m in chunk],
                    )
                    await self._run(_insert(args))
                    written += len(chunk)
                    for (kind, token, version), _ in chunk:
                        entry = self._cache.get((kind, token))
                        if entry is not None:
                            entry.stored.add(version)
            except DatabaseUnavailableError:
                # Requeue what was not written, ahead of rows recorded meanwhile.
                requeued = OrderedDict(rows[written:])
                requeued.update(self._pending)
                self._pending = requeued
                if len(self._pending) > self._max_pending:
                    self._drop_oldest()
                raise
            finally:
                self.flushed += written
            return written

    async def prefetch(self, kind: str, tokens: Iterable[str], *, offline: bool = False) -> None:
        """Load the rows of candidate tokens into the cache, in one query.

        After it returns, ``lookup`` of each candidate is exact. Raises
        :class:`DatabaseUnavailableError` if the database is away and some candidate is not
        already known to the cache. ``offline`` (the database is known to be away) skips the
        query when every candidate is at least partially known here.
        """
        now = self._clock()
        need: list[str] = []
        for token in set(tokens):
            key = (kind, token)
            entry = self._cache.get(key)
            if entry is not None and entry.complete:
                continue
            if entry is None:
                seen = self._negative.get(key)
                if seen is not None and now - seen < self._negative_ttl:
                    continue
                if not storable_text(token):
                    continue  # cannot be in the table: not a token
            need.append(token)
        if offline and all((kind, t) in self._cache for t in need):
            return
        if not need:
            return
        try:
            records = await self._run(lambda conn: conn.fetch(_SELECT, kind, need))
        except DatabaseUnavailableError:
            if any((kind, t) not in self._cache for t in need):
                raise
            return  # every candidate is known here (partially): good enough while away
        found: dict[str, list[Any]] = {}
        for rec in records:
            found.setdefault(rec["token"], []).append(rec)
        now = self._clock()
        for token in need:
            key = (kind, token)
            entry = self._cache.get(key)
            recs = found.get(token)
            if recs:
                if entry is None:
                    entry = self._cache[key] = _Entry(complete=True)
                else:
                    self._cache.move_to_end(key)
                    entry.complete = True
                for rec in recs:
                    version = rec["version"]
                    entry.rows[version] = IssuedToken(kind, token, version, Method(rec["method"]))
                    entry.stored.add(version)
                self._negative.pop(key, None)
            elif entry is None:
                self._negative[key] = now
                self._negative.move_to_end(key)
            # else: recorded here and not yet in the table (queued): stays partial
        self._trim_cache()
        while len(self._negative) > self._negative_size:
            self._negative.popitem(last=False)

    async def purge_version(self, version: int) -> int:
        """Delete a retired version's rows from the table and the cache; returns rows deleted.

        Only for versions already retired in the keyring: their tokens no longer resolve.
        """
        self._pending = OrderedDict((k, m) for k, m in self._pending.items() if k[2] != version)
        for key in list(self._cache):
            entry = self._cache[key]
            entry.stored.discard(version)
            if entry.rows.pop(version, None) is not None and not entry.rows:
                del self._cache[key]
        status: str = await self._run(
            lambda conn: conn.execute("DELETE FROM token_registry WHERE version = $1", version)
        )
        deleted = int(status.rsplit(" ", 1)[-1])
        _log.info("registry.purged", version=version, rows=deleted)
        return deleted

    # -- observability ------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Rows recorded and not yet written."""
        return len(self._pending)

    @property
    def cached(self) -> int:
        """Tokens in the positive cache."""
        return len(self._cache)

    def stats(self) -> dict[str, int]:
        """Counters for health and metrics."""
        return {
            "pending": self.pending,
            "dropped": self.dropped,
            "flushed": self.flushed,
            "cached": self.cached,
            "negative_cached": len(self._negative),
            "queries": self.queries,
        }

    # -- internals ----------------------------------------------------------------------------

    async def _run(self, operation: _Operation) -> Any:
        self.queries += 1
        return await retrying(self.pool, operation, where=self.where)

    def _trim_cache(self) -> None:
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _drop_oldest(self) -> None:
        excess = len(self._pending) - self._max_pending
        if excess <= 0:
            return
        first_drop = self.dropped == 0
        for _ in range(excess):
            self._pending.popitem(last=False)
        self.dropped += excess
        if first_drop or self.dropped % 10_000 < excess:
            _log.error(
                "registry.queue_full",
                dropped=self.dropped,
                max_pending=self._max_pending,
                detail="the oldest queued token rows were dropped: other proxies will not "
                "resolve those tokens",
            )
