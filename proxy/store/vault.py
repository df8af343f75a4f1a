"""The short-value vault in PostgreSQL, shared by every proxy, with a cache in front.

The :class:`~proxy.crypto.vault.Vault` protocol is synchronous, so a value the cache does not
know gets a token *optimistically*: ``token_for`` draws a random token of the format, queues
the row and returns the token at once. ``flush()`` then writes the queued rows before the
response leaves, and settles every race in the table's favour:

- ``UNIQUE (kind, version, mac) WHERE canonical``: one token per value. If another proxy
  stored a token for the same value first, that token wins; the cache takes it, and the
  value is returned in ``flush``'s set of lost races. The caller forgets the value's token
  and tokenizes again (see :func:`proxy.store.durable.tokenize_durably`).
- ``UNIQUE (kind, token)``: a token stands for one value. A drawn token that is already some
  other value's is redrawn (the table decides, so two proxies cannot both take it) and the
  value is reported as lost too.

``prefetch_values`` loads the tokens of values about to be tokenized, so that most requests
never draw optimistically; ``prefetch_tokens`` loads the rows of tokens coming back in a
request, for ``value_for``.

When the database is away
-------------------------
Optimistic tokens leave the proxy unconfirmed: a failed ``flush`` marks its rows *escaped*,
keeps them queued, and raises :class:`~proxy.store.db.DatabaseUnavailableError`. When they are
finally written, an escaped token that lost its race is stored as an *alias* (a
non-canonical row: it resolves, it is never handed out again), because an agent may hold it.
An escaped token that collided with another value's token cannot be stored; it is counted in
``unresolvable`` and logged (the only case where a token that left the proxy stops
resolving; it needs two proxies drawing the same token for different values during an
outage).

The queue is bounded (``max_pending`` rows, 10,000 by default). When it is full ``token_for``
refuses to draw and raises :class:`~proxy.errors.VaultMissError`: the caller fails closed for
that value. A vault token that could never be stored would be worse than a dropped registry
row: it could be drawn again by another proxy for another value.

Only HMACs, sealed values, tokens, kinds and versions reach the database and the logs; a
value is held in memory only while its row is queued (to report a lost race).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from proxy.crypto.keyring import DataKey, Keyring
from proxy.crypto.vault import fresh_token, seal, unseal, vault_index
from proxy.errors import KeyringError, NotATokenError, VaultMissError
from proxy.store.db import DatabaseUnavailableError, retrying, storable_text

__all__ = ["PgVault"]

CACHE_SIZE = 200_000
MAX_PENDING = 10_000
ABSENT_TTL = 30.0  # seconds a prefetched miss spares the next prefetch its query
ABSENT_SIZE = 100_000
CHUNK = 5_000  # rows per statement when a long queue drains
MAX_ROUNDS = 16  # insert rounds of redraws on token collisions before giving up on a row

_log = structlog.get_logger("tokenproxy.store.vault")

# Rows go in (kind, version, mac) order, the same in every proxy, so that two proxies settling
# the same new values take their locks in the same order and cannot deadlock.
_INSERT = """
INSERT INTO token_vault (kind, mac, version, token, sealed, canonical)
SELECT k, m, v, t, s, $6 FROM unnest($1::text[], $2::bytea[], $3::int[], $4::text[], $5::bytea[])
    AS u(k, m, v, t, s)
ORDER BY k COLLATE "C", v, m
ON CONFLICT DO NOTHING
RETURNING kind, version, mac, token
"""

_CANONICAL = """
SELECT tv.kind, tv.version, tv.mac, tv.token, tv.sealed
FROM unnest($1::text[], $2::int[], $3::bytea[]) AS u(k, v, m)
JOIN token_vault tv ON tv.kind = u.k AND tv.version = u.v AND tv.mac = u.m AND tv.canonical
"""

_OWNERS = """
SELECT tv.kind, tv.token, tv.version, tv.mac, tv.sealed
FROM unnest($1::text[], $2::text[]) AS u(k, t)
JOIN token_vault tv ON tv.kind = u.k AND tv.token = u.t
"""

_PREFETCH_VALUES = """
SELECT mac, token, sealed FROM token_vault
WHERE kind = $1 AND version = $2 AND canonical AND mac = ANY($3::bytea[])
"""

_PREFETCH_TOKENS = """
SELECT token, version, sealed FROM token_vault WHERE kind = $1 AND token = ANY($2::text[])
"""

_Index = tuple[str, int, bytes]  # (kind, version, mac)
_TokenKey = tuple[str, str]  # (kind, token)
_Operation = Callable[[asyncpg.Connection], Awaitable[Any]]


@dataclass(eq=False)
class _Pending:
    """A row drawn here and not yet confirmed by the table."""

    kind: str
    value: str
    version: int
    mac: bytes
    token: str  # the token handed out (the one an agent may hold)
    sealed: bytes
    draw: Callable[[], str] = field(repr=False)
    escaped: bool = False  # a flush failed: the token may have left the proxy
    candidate: str = ""  # the token to insert this round (a redraw after a collision)

    @property
    def index(self) -> _Index:
        return (self.kind, self.version, self.mac)


def _query(sql: str, *args: Any) -> _Operation:
    async def run(conn: asyncpg.Connection) -> Any:
        return await conn.fetch(sql, *args)

    return run


class PgVault:
    """:class:`~proxy.crypto.vault.Vault` on PostgreSQL: optimistic draws, settled by flush."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        cache_size: int = CACHE_SIZE,
        max_pending: int = MAX_PENDING,
        absent_ttl: float = ABSENT_TTL,
        where: str = "the store's database",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.where = where
        self._by_index: OrderedDict[_Index, str] = OrderedDict()  # canonical tokens
        self._by_token: OrderedDict[_TokenKey, tuple[int, bytes]] = OrderedDict()
        self._absent: OrderedDict[_Index, float] = OrderedDict()
        self._pending: dict[_Index, _Pending] = {}
        self._pending_tokens: dict[_TokenKey, _Pending] = {}
        self._cache_size = cache_size
        self._max_pending = max_pending
        self._absent_ttl = absent_ttl
        self._clock = clock
        self._lock = asyncio.Lock()
        self.losses = 0  # races lost since start (tokenize_durably watches it)
        self.unresolvable = 0  # escaped tokens that could not be stored
        self.drawn = 0  # optimistic draws
        self.queries = 0

    # -- the Vault protocol (sync, memory only) ---------------------------------------------

    def token_for(self, kind: str, value: str, key: DataKey, draw: Callable[[], str]) -> str:
        """The value's token: cached, queued, or drawn now and queued for ``flush``."""
        index = (kind, key.version, vault_index(kind, value, key))
        pending = self._pending.get(index)
        if pending is not None:
            return pending.token
        token = self._by_index.get(index)
        if token is not None:
            self._by_index.move_to_end(index)
            return token
        if len(self._pending) >= self._max_pending:
            raise VaultMissError(
                f"the vault queue is full ({self._max_pending} new short values not yet "
                "stored: the database is unavailable); the value cannot be tokenized"
            )
        token = self._fresh_token(kind, value, draw)
        row = _Pending(kind, value, key.version, index[2], token, seal(value, kind, key), draw)
        row.candidate = token
        self._pending[index] = row
        self._pending_tokens[(kind, token)] = row
        self.drawn += 1
        return token

    def value_for(self, kind: str, token: str, keyring: Keyring) -> str:
        """The value behind a cached or queued vault token (``prefetch_tokens`` first)."""
        cached = self._by_token.get((kind, token))
        if cached is not None:
            self._by_token.move_to_end((kind, token))
            version, sealed = cached
        else:
            pending = self._pending_tokens.get((kind, token))
            if pending is None:
                raise NotATokenError(f"{kind} token is not in the vault")
            version, sealed = pending.version, pending.sealed
        try:
            key = keyring.get(version)
        except KeyringError as exc:
            raise NotATokenError(str(exc)) from None
        return unseal(sealed, kind, key)

    # -- I/O --------------------------------------------------------------------------------

    async def flush(self) -> set[tuple[str, str]]:
        """Store queued rows; returns the (kind, value) pairs whose optimistic token lost.

        Waits for a flush in progress first, so that on return every row queued before the
        call is settled (or :class:`DatabaseUnavailableError` is raised, the rows kept).
        The cache then holds each value's winning token.
        """
        async with self._lock:
            if not self._pending:
                return set()
            # (kind, version, mac) order across chunks too (see _INSERT)
            batch = sorted(self._pending.values(), key=lambda r: (r.kind, r.version, r.mac))
            lost: set[tuple[str, str]] = set()
            done = 0
            try:
                for start in range(0, len(batch), CHUNK):
                    chunk = batch[start : start + CHUNK]
                    lost |= await self._settle(chunk)
                    done += len(chunk)
            except DatabaseUnavailableError:
                for row in batch[done:]:
                    row.escaped = True
                raise
            return lost

    def mark_escaped(self) -> None:
        """Every queued token is about to leave unconfirmed (the database is away): if it
        later loses its race it is kept as an alias, so that it still resolves."""
        for row in self._pending.values():
            row.escaped = True

    async def prefetch_values(self, kind: str, values: Iterable[str], key: DataKey) -> int:
        """Load the tokens of values about to be tokenized under ``key`` (one query).

        Any value may be passed (only its HMAC is computed and sent). A value found absent
        is not asked again for ``absent_ttl`` seconds; that is safe, since a token drawn for
        it meanwhile is settled by ``flush``. Returns the number of tokens loaded.
        """
        now = self._clock()
        need: dict[bytes, None] = {}
        for value in values:
            index = (kind, key.version, vault_index(kind, value, key))
            if index in self._pending or index in self._by_index:
                continue
            seen = self._absent.get(index)
            if seen is not None and now - seen < self._absent_ttl:
                continue
            need[index[2]] = None
        if not need:
            return 0
        macs = list(need)
        records = await self._run(_query(_PREFETCH_VALUES, kind, key.version, macs))
        found = {bytes(r["mac"]): r for r in records}
        now = self._clock()
        for mac in macs:
            index = (kind, key.version, mac)
            rec = found.get(mac)
            if rec is None:
                self._absent[index] = now
                self._absent.move_to_end(index)
            else:
                self._absent.pop(index, None)
                self._cache(index, rec["token"], key.version, rec["sealed"])
        while len(self._absent) > ABSENT_SIZE:
            self._absent.popitem(last=False)
        return len(found)

    async def prefetch_tokens(self, kind: str, tokens: Iterable[str]) -> int:
        """Load the rows of vault tokens coming back in a request (one query).

        Raises :class:`DatabaseUnavailableError` if the database is away and some token is
        not already known here. Returns the number of rows loaded.
        """
        need = sorted(
            {
                t
                for t in tokens
                if (kind, t) not in self._by_token
                and (kind, t) not in self._pending_tokens
                and storable_text(t)
            }
        )
        if not need:
            return 0
        records = await self._run(_query(_PREFETCH_TOKENS, kind, need))
        for rec in records:
            self._remember_token((kind, rec["token"]), rec["version"], bytes(rec["sealed"]))
        self._trim()
        return len(records)

    async def purge_version(self, version: int) -> int:
        """Delete a retired version's rows from the table and the cache; returns rows deleted."""
        for index in [i for i in self._by_index if i[1] == version]:
            del self._by_index[index]
        for tkey in [k for k, (v, _) in self._by_token.items() if v == version]:
            del self._by_token[tkey]

        async def delete(conn: asyncpg.Connection) -> str:
            status: str = await conn.execute("DELETE FROM token_vault WHERE version = $1", version)
            return status

        status = await self._run(delete)
        deleted = int(status.rsplit(" ", 1)[-1])
        _log.info("vault.purged", version=version, rows=deleted)
        return deleted

    # -- observability ------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Rows drawn and not yet stored."""
        return len(self._pending)

    def stats(self) -> dict[str, int]:
        """Counters for health and metrics."""
        return {
            "pending": self.pending,
            "drawn": self.drawn,
            "losses": self.losses,
            "unresolvable": self.unresolvable,
            "cached": len(self._by_index),
            "queries": self.queries,
        }

    # -- settling a batch ---------------------------------------------------------------------

    async def _settle(self, rows: Sequence[_Pending]) -> set[tuple[str, str]]:
        """Insert rows, redrawing collided tokens; confirm each row's winning token."""
        winners: dict[_Pending, tuple[str, bytes]] = {}
        todo = list(rows)
        for _ in range(MAX_ROUNDS):
            if not todo:
                break
            inserted = await self._insert(todo, canonical=True)
            rest = [r for r in todo if (r.index, r.candidate) not in inserted]
            for row in todo:
                if (row.index, row.candidate) in inserted:
                    winners[row] = (row.candidate, row.sealed)
            if not rest:
                todo = []
                break
            existing = await self._canonical(rest)
            todo = []
            for row in rest:
                if row.index in existing:
                    winners[row] = existing[row.index]
                else:  # the candidate token is another value's: redraw
                    try:
                        row.candidate = self._fresh_token(row.kind, row.value, row.draw)
                    except VaultMissError:
                        continue  # no winner: reported lost, the next draw tries again
                    todo.append(row)
        aliases = [r for r in rows if r.escaped and r in winners and winners[r][0] != r.token]
        stored_aliases = await self._store_aliases(aliases) if aliases else set()

        lost: set[tuple[str, str]] = set()
        for row in rows:
            self._unqueue(row)
            winner = winners.get(row)
            if winner is None:  # no free token after MAX_ROUNDS: the next draw tries again
                lost.add((row.kind, row.value))
                self.unresolvable += row.escaped
                _log.error("vault.no_free_token", kind=row.kind, version=row.version)
                continue
            token, sealed = winner
            self._cache(row.index, token, row.version, sealed)
            if token != row.token:
                lost.add((row.kind, row.value))
                if row in stored_aliases:
                    self._remember_token((row.kind, row.token), row.version, row.sealed)
        self.losses += len(lost)
        if lost:
            _log.info(
                "vault.races_lost",
                lost=len(lost),
                aliases=len(stored_aliases),
                kinds=sorted({k for k, _ in lost}),
            )
        self._trim()
        return lost

    async def _insert(
        self, rows: Sequence[_Pending], *, canonical: bool
    ) -> set[tuple[_Index, str]]:
        tokens = [r.candidate if canonical else r.token for r in rows]
        records = await self._run(
            _query(
                _INSERT,
                [r.kind for r in rows],
                [r.mac for r in rows],
                [r.version for r in rows],
                tokens,
                [r.sealed for r in rows],
                canonical,
            )
        )
        return {((r["kind"], r["version"], bytes(r["mac"])), r["token"]) for r in records}

    async def _canonical(self, rows: Sequence[_Pending]) -> dict[_Index, tuple[str, bytes]]:
        records = await self._run(
            _query(
                _CANONICAL,
                [r.kind for r in rows],
                [r.version for r in rows],
                [r.mac for r in rows],
            )
        )
        return {
            (r["kind"], r["version"], bytes(r["mac"])): (r["token"], bytes(r["sealed"]))
            for r in records
        }

    async def _store_aliases(self, rows: Sequence[_Pending]) -> set[_Pending]:
        """Store escaped tokens that lost as aliases; returns the rows whose alias is stored."""
        inserted = await self._insert(rows, canonical=False)
        stored = {r for r in rows if (r.index, r.token) in inserted}
        rest = [r for r in rows if r not in stored]
        if rest:  # already stored by an earlier attempt, or the token is another value's
            records = await self._run(
                _query(_OWNERS, [r.kind for r in rest], [r.token for r in rest])
            )
            owners = {(r["kind"], r["token"]): (r["version"], bytes(r["mac"])) for r in records}
            for row in rest:
                if owners.get((row.kind, row.token)) == (row.version, row.mac):
                    stored.add(row)
                else:
                    self.unresolvable += 1
                    _log.error(
                        "vault.escaped_token_unresolvable",
                        kind=row.kind,
                        token=row.token,
                        version=row.version,
                        detail="a token issued while the database was away was taken by "
                        "another value meanwhile; it no longer resolves",
                    )
        return stored

    # -- cache --------------------------------------------------------------------------------

    def _fresh_token(self, kind: str, value: str, draw: Callable[[], str]) -> str:
        def taken(token: str) -> bool:
            return (kind, token) in self._by_token or (kind, token) in self._pending_tokens

        return fresh_token(kind, value, draw, taken)

    def _unqueue(self, row: _Pending) -> None:
        if self._pending.get(row.index) is row:
            del self._pending[row.index]
        if self._pending_tokens.get((row.kind, row.token)) is row:
            del self._pending_tokens[(row.kind, row.token)]

    def _cache(self, index: _Index, token: str, version: int, sealed: bytes) -> None:
        self._by_index[index] = token
        self._by_index.move_to_end(index)
        self._remember_token((index[0], token), version, bytes(sealed))

    def _remember_token(self, key: _TokenKey, version: int, sealed: bytes) -> None:
        self._by_token[key] = (version, sealed)
        self._by_token.move_to_end(key)

    def _trim(self) -> None:
        while len(self._by_index) > self._cache_size:
            self._by_index.popitem(last=False)
        while len(self._by_token) > self._cache_size:
            self._by_token.popitem(last=False)

    async def _run(self, operation: _Operation) -> Any:
        self.queries += 1
        return await retrying(self.pool, operation, where=self.where)
