"""Tickets in PostgreSQL: upsert and close (audited), list, and the cached reveal question.

The helpdesk feeds tickets (:meth:`TicketStore.upsert`); an admin closes or adds them
(``tokenproxy tickets add|close|list``, see :mod:`proxy.store.admin_ops`). The proxy asks
one question per record: :meth:`TicketStore.may_reveal` ("may agent A see customer C now,
under ticket T, and if not, why"), answered by :func:`proxy.policy.tickets.decide` over a
cached ticket.

**How fast a close takes effect.**

- In this process: at once. ``upsert`` and ``close`` drop the cached entry after commit.
- In other processes: within milliseconds. A trigger on ``tickets`` sends
  ``NOTIFY tokenproxy_tickets, '<ticket id>'`` in the transaction of every change (so a
  change made by hand in SQL counts too); each started store LISTENs on a connection of its
  own and drops that entry when the notification arrives (after the commit).
- Always, even with the listener down (connection lost, not started): within ``cache_ttl``
  (2 s by default), the lifetime of any cached entry. A lost listener also empties the
  cache (notifications may have been missed) and is re-established on next use.

A fetch that overlaps an invalidation is not cached (a generation counter), so a reply from
before the close cannot be cached after it.

**Upserts keep the newest.** ``updated_at`` is the helpdesk's time of the change; an upsert
older than the stored row is ignored (``STALE``), so a late, reordered message cannot reopen
a closed ticket. ``close`` stamps ``max(now, updated_at)``: reopening needs a change dated
after the close. An identical upsert is a no-op (``UNCHANGED``). Every applied change
writes a ``ticket_change`` audit entry (ids only) in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import asyncpg
import structlog

from proxy.errors import InvalidInputError, TokenProxyError
from proxy.policy.tickets import (
    Decision,
    Reason,
    Ticket,
    TicketStatus,
    customer_key,
    decide,
)
from proxy.store.audit import (
    AuditAction,
    AuditEntry,
    append_entries,
    default_instance,
    note_committed,
)

__all__ = ["CHANNEL", "TicketStore", "UnknownTicketError", "UpsertResult"]

log = structlog.get_logger("tokenproxy.store.tickets")

CHANNEL = "tokenproxy_tickets"
CACHE_TTL = 2.0
CACHE_SIZE = 10_000
RELISTEN_INTERVAL = 1.0  # seconds between attempts to bring a lost listener back
DEFAULT_ACTOR = "helpdesk"

TicketList = list[Ticket]


class UnknownTicketError(TokenProxyError, LookupError):
    """No ticket has this id."""


class UpsertResult(StrEnum):
    """What an upsert did."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"  # the same ticket was already stored
    STALE = "stale"  # the stored ticket changed later than this update: ignored


_SELECT = (
    "SELECT id, agent, customer_ids, status, expires_at, updated_at FROM tickets"
)

_UPSERT = """
INSERT INTO tickets AS t (id, agent, customer_ids, status, expires_at, updated_at)
VALUES ($1, $2, $3::text[], $4, $5, $6)
ON CONFLICT (id) DO UPDATE
    SET agent = EXCLUDED.agent, customer_ids = EXCLUDED.customer_ids,
        status = EXCLUDED.status, expires_at = EXCLUDED.expires_at,
        updated_at = EXCLUDED.updated_at, recorded_at = now()
    WHERE EXCLUDED.updated_at >= t.updated_at
      AND (t.agent, t.customer_ids, t.status, t.expires_at)
          IS DISTINCT FROM (EXCLUDED.agent, EXCLUDED.customer_ids, EXCLUDED.status,
                            EXCLUDED.expires_at)
RETURNING (xmax = 0) AS created
"""

_CLOSE = """
UPDATE tickets SET status = 'closed', updated_at = greatest(now(), updated_at),
                   recorded_at = now()
WHERE id = $1 AND status <> 'closed'
RETURNING id, agent, customer_ids, status, expires_at, updated_at
"""


def _ticket(row: Mapping[str, Any]) -> Ticket:
    return Ticket(
        row["id"],
        row["agent"],
        row["customer_ids"],
        row["status"],
        row["expires_at"],
        row["updated_at"],
    )


def _change_entry(ticket: Ticket, change: str, actor: str) -> AuditEntry:
    return AuditEntry(
        AuditAction.TICKET_CHANGE,
        agent=actor,
        ticket=ticket.id,
        customer_ids=ticket.customer_ids,
        detail={
            "change": change,
            "status": str(ticket.status),
            "assigned_agent": ticket.agent,
            "expires_at": ticket.expires_at.astimezone(UTC).isoformat(),
            "updated_at": ticket.updated_at.astimezone(UTC).isoformat(),
        },
    )


class TicketStore:
    """Tickets on an asyncpg pool, with a short cache kept fresh by LISTEN/NOTIFY.

    Use ``async with TicketStore(pool) as store`` (or ``await store.start()`` /
    ``await store.stop()``) to listen for other processes' changes; without it the cache is
    bounded by ``cache_ttl`` only. The listener holds one pooled connection until stopped:
    stop the store before closing the pool.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        cache_ttl: float = CACHE_TTL,
        cache_size: int = CACHE_SIZE,
        instance: str | None = None,
    ) -> None:
        if cache_ttl < 0:
            raise InvalidInputError("cache_ttl must be >= 0 seconds")
        self.pool = pool
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self.instance = instance or default_instance()
        self._cache: OrderedDict[str, tuple[float, Ticket | None]] = OrderedDict()
        self._generation = 0
        self._listener: asyncpg.Connection | None = None
        self._listening = False
        self._started = False
        self._next_listen_attempt = 0.0
        self._listen_lock = asyncio.Lock()
        self._relisten: asyncio.Task[None] | None = None

    # ---- lifecycle

    async def __aenter__(self) -> TicketStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen for ticket changes made by other processes."""
        self._started = True
        await self._ensure_listener()

    async def stop(self) -> None:
        """Stop listening and give the listener's connection back to the pool."""
        self._started = False
        task, self._relisten = self._relisten, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        async with self._listen_lock:
            await self._drop_listener()

    @property
    def listening(self) -> bool:
        """Whether changes by other processes reach this cache at once."""
        return self._listening

    async def _ensure_listener(self) -> None:
        if self._listening or not self._started:
            return
        if time.monotonic() < self._next_listen_attempt:
            return
        async with self._listen_lock:
            if self._listening or not self._started:
                return
            self._next_listen_attempt = time.monotonic() + RELISTEN_INTERVAL
            await self._drop_listener()
            try:
                conn = await self.pool.acquire()
            except Exception as exc:
                log.warning("tickets.listen_failed", error=type(exc).__name__)
                return
            try:
                await conn.add_listener(CHANNEL, self._on_notify)
                conn.add_termination_listener(self._on_listener_lost)
            except Exception as exc:
                log.warning("tickets.listen_failed", error=type(exc).__name__)
                await self._release(conn)
                return
            self._listener = conn
            self._listening = True
            self.invalidate()  # changes made while not listening were not seen
            log.debug("tickets.listening", channel=CHANNEL)

    def _relisten_soon(self) -> None:
        """Bring a lost listener back in the background (never delays a request)."""
        if self._relisten is not None and not self._relisten.done():
            return
        if time.monotonic() < self._next_listen_attempt:
            return
        self._relisten = asyncio.get_running_loop().create_task(self._ensure_listener())

    async def _drop_listener(self) -> None:
        conn, self._listener = self._listener, None
        self._listening = False
        if conn is None:
            return
        try:
            if conn.is_closed():
                return  # the pool took a closed connection back by itself
            conn.remove_termination_listener(self._on_listener_lost)
            await conn.remove_listener(CHANNEL, self._on_notify)
        except asyncpg.InterfaceError:
            return  # already released back to the pool when it closed
        except Exception as exc:  # a dying connection: give it back all the same
            log.debug("tickets.unlisten_failed", error=type(exc).__name__)
        await self._release(conn)

    async def _release(self, conn: asyncpg.Connection) -> None:
        try:
            await self.pool.release(conn)
        except Exception as exc:
            log.debug("tickets.release_failed", error=type(exc).__name__)

    def _on_notify(
        self, conn: object, pid: int, channel: str, payload: object
    ) -> None:
        self.invalidate(str(payload))

    def _on_listener_lost(self, conn: object) -> None:
        # The pool reclaims a closed connection on its own: forget it, do not release it.
        self._listener = None
        self._listening = False
        self.invalidate()
        log.warning("tickets.listener_lost", channel=CHANNEL)

    # ---- cache

    def invalidate(self, ticket_id: str | None = None) -> None:
        """Forget a cached ticket (all of them with ``None``)."""
        self._generation += 1
        if ticket_id is None:
            self._cache.clear()
        else:
            self._cache.pop(ticket_id, None)

    async def cached(self, ticket_id: str) -> Ticket | None:
        """The ticket, from the cache if fetched within ``cache_ttl``; ``None`` if unknown.

        Raises what the database raises (the caller decides; ``may_reveal`` denies).
        """
        if self._started and not self._listening:
            self._relisten_soon()
        now = time.monotonic()
        hit = self._cache.get(ticket_id)
        if hit is not None and now - hit[0] < self.cache_ttl:
            self._cache.move_to_end(ticket_id)
            return hit[1]
        generation = self._generation
        ticket = await self.get(ticket_id)
        if generation == self._generation and self.cache_ttl > 0:
            self._cache[ticket_id] = (now, ticket)
            self._cache.move_to_end(ticket_id)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return ticket

    # ---- the question

    async def may_reveal(
        self, agent: str, ticket_id: str | None, customer_id: object
    ) -> Decision:
        """May ``agent`` see ``customer_id`` now under ``ticket_id``? Never raises.

        ``customer_id`` may be a str, an int or a UUID (normalised, see
        :func:`proxy.policy.tickets.customer_key`); ``None`` is ``no_customer_id``, another
        type ``invalid_customer_id``. A database error is ``store_unavailable``.
        """
        return (await self.decide_many(agent, ticket_id, [customer_id]))[0]

    async def decide_many(
        self, agent: str, ticket_id: str | None, customer_ids: Iterable[object]
    ) -> list[Decision]:
        """:meth:`may_reveal` for several customers under one ticket (one lookup)."""
        ids = list(customer_ids)
        if not ticket_id:
            return [Decision.deny(Reason.NO_TICKET)] * len(ids)
        if not isinstance(ticket_id, str):
            return [Decision.deny(Reason.UNKNOWN_TICKET)] * len(ids)
        try:
            ticket = await self.cached(ticket_id)
        except Exception as exc:
            log.warning(
                "tickets.store_unavailable",
                agent=agent,
                ticket=ticket_id,
                error=type(exc).__name__,
            )
            return [Decision.deny(Reason.STORE_UNAVAILABLE)] * len(ids)
        now = datetime.now(UTC)
        out: list[Decision] = []
        for raw in ids:
            if raw is None:
                out.append(decide(ticket, agent, None, now))
                continue
            try:
                key = customer_key(raw)
            except InvalidInputError:
                decision = decide(ticket, agent, None, now)
                # The ticket-level reason wins; else the id's type is the reason.
                out.append(
                    decision
                    if decision.reason is not Reason.NO_CUSTOMER_ID
                    else Decision.deny(Reason.INVALID_CUSTOMER_ID)
                )
                continue
            out.append(decide(ticket, agent, key, now))
        return out

    # ---- reads

    async def get(self, ticket_id: str) -> Ticket | None:
        """The stored ticket (never cached), or ``None``."""
        row = await self.pool.fetchrow(f"{_SELECT} WHERE id = $1", ticket_id)
        return None if row is None else _ticket(row)

    async def list(
        self, status: TicketStatus | str | None = None, agent: str | None = None
    ) -> TicketList:
        """Tickets, optionally of one status and/or one assigned agent, by id."""
        wanted = None if status is None else str(TicketStatus(status))
        rows = await self.pool.fetch(
            f"{_SELECT} WHERE ($1::text IS NULL OR status = $1) "
            "AND ($2::text IS NULL OR agent = $2) ORDER BY id",
            wanted,
            agent,
        )
        return [_ticket(r) for r in rows]

    # ---- writes

    async def upsert(self, ticket: Ticket, *, actor: str = DEFAULT_ACTOR) -> UpsertResult:
        """Create or update a ticket, unless the stored one changed later (module docstring).

        Writes a ``ticket_change`` audit entry (by ``actor``) with the change, in the same
        transaction; other proxies drop their cached copy on commit.
        """
        if not isinstance(ticket, Ticket):
            raise InvalidInputError("upsert takes a Ticket")
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                _UPSERT,
                ticket.id,
                ticket.agent,
                list(ticket.sorted_customer_ids),
                str(ticket.status),
                ticket.expires_at,
                ticket.updated_at,
            )
            if row is None:
                stored = await conn.fetchval(
                    "SELECT updated_at FROM tickets WHERE id = $1", ticket.id
                )
                result = (
                    UpsertResult.STALE
                    if stored is not None and stored > ticket.updated_at
                    else UpsertResult.UNCHANGED
                )
            else:
                result = UpsertResult.CREATED if row["created"] else UpsertResult.UPDATED
                records = await append_entries(
                    conn, [_change_entry(ticket, str(result), actor)], self.instance
                )
        if row is not None:
            note_committed(records)
        self.invalidate(ticket.id)
        log.info(
            "tickets.upsert",
            ticket=ticket.id,
            result=str(result),
            status=str(ticket.status),
            assigned_agent=ticket.agent,
            customers=len(ticket.customer_ids),
            actor=actor,
        )
        return result

    async def close(self, ticket_id: str, *, actor: str = DEFAULT_ACTOR) -> Ticket:
        """Close a ticket: from the commit on, it justifies no reveal anywhere.

        Idempotent (closing a closed ticket changes nothing and writes no entry). Raises
        :class:`UnknownTicketError` for an unknown id.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_CLOSE, ticket_id)
            if row is None:
                existing = await conn.fetchrow(
                    f"{_SELECT} WHERE id = $1", ticket_id
                )
                if existing is None:
                    raise UnknownTicketError(
                        f"no ticket {ticket_id!r}: check the id (`tokenproxy tickets list`)"
                    )
                ticket = _ticket(existing)
            else:
                ticket = _ticket(row)
                entry = _change_entry(ticket, "closed", actor)
                closed_records = await append_entries(conn, [entry], self.instance)
        if row is not None:
            note_committed(closed_records)
        self.invalidate(ticket_id)
        log.info("tickets.close", ticket=ticket_id, changed=row is not None, actor=actor)
        return ticket
