"""proxy.store.tickets: tickets in PostgreSQL, the cached reveal question, invalidation."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from store_fixtures import close_pool, migrated_pool  # noqa: F401  (the pool fixture)

from proxy.errors import InvalidInputError
from proxy.policy.tickets import Decision, Reason, Ticket, TicketStatus
from proxy.store import admin_ops
from proxy.store.audit import AuditLog, verify
from proxy.store.db import connect_pool
from proxy.store.migrations import migrate
from proxy.store.tickets import TicketStore, UnknownTicketError, UpsertResult

pytestmark = pytest.mark.timeout(60)

# One database per module, a fresh schema per test (CREATE DATABASE costs ~0.5 s here).


@pytest.fixture
async def store(pool: asyncpg.Pool) -> AsyncIterator[TicketStore]:
    async with TicketStore(pool, cache_ttl=60.0, instance="test/1") as store:
        yield store


def now() -> datetime:
    return datetime.now(UTC)


def ticket(tid: str = "T-1", **changes: Any) -> Ticket:
    fields: dict[str, Any] = {
        "agent": "alice",
        "customer_ids": [42, "c-7"],
        "status": "open",
        "expires_at": now() + timedelta(hours=2),
        "updated_at": now(),
    }
    fields.update(changes)
    return Ticket(tid, **fields)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 3.0) -> float:
    """Seconds until ``check`` holds; fails after ``within`` seconds."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within:
            pytest.fail(f"not within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


# ---------------------------------------------------------------------- storage


async def test_upsert_creates_updates_and_ignores(store: TicketStore) -> None:
    t = ticket()
    assert await store.upsert(t) is UpsertResult.CREATED
    assert await store.get("T-1") == t
    assert await store.upsert(t) is UpsertResult.UNCHANGED
    newer = ticket(customer_ids=[42], updated_at=t.updated_at + timedelta(seconds=1))
    assert await store.upsert(newer) is UpsertResult.UPDATED
    assert await store.get("T-1") == newer
    stale = ticket(status="closed", updated_at=t.updated_at)
    assert await store.upsert(stale) is UpsertResult.STALE
    assert await store.get("T-1") == newer
    assert await store.get("T-404") is None


async def test_a_late_message_cannot_reopen_a_closed_ticket(store: TicketStore) -> None:
    t = ticket()
    await store.upsert(t)
    closed = await store.close("T-1")
    assert closed.status is TicketStatus.CLOSED
    assert closed.updated_at >= t.updated_at
    assert await store.upsert(t) is UpsertResult.STALE  # the helpdesk's older "open"
    assert (await store.get("T-1")).status is TicketStatus.CLOSED  # type: ignore[union-attr]
    reopened = ticket(updated_at=closed.updated_at + timedelta(seconds=1))
    assert await store.upsert(reopened) is UpsertResult.UPDATED
    assert (await store.may_reveal("alice", "T-1", "42")).allowed


async def test_close_is_idempotent_and_refuses_an_unknown_ticket(store: TicketStore) -> None:
    await store.upsert(ticket())
    first = await store.close("T-1", actor="admin:root")
    second = await store.close("T-1")
    assert first == second
    with pytest.raises(UnknownTicketError, match="no ticket 'T-404'"):
        await store.close("T-404")
    changes = await store.pool.fetch(
        "SELECT agent, detail::text FROM audit_log WHERE action = 'ticket_change' ORDER BY seq"
    )
    assert [r["agent"] for r in changes] == ["helpdesk", "admin:root"]  # one close entry


async def test_list_filters_by_status_and_agent(store: TicketStore) -> None:
    await store.upsert(ticket("T-1"))
    await store.upsert(ticket("T-2", agent="bob"))
    await store.upsert(ticket("T-3", status="pending"))
    await store.upsert(ticket("T-4", agent=None))
    await store.close("T-2")
    assert [t.id for t in await store.list()] == ["T-1", "T-2", "T-3", "T-4"]
    assert [t.id for t in await store.list(status="open")] == ["T-1", "T-4"]
    assert [t.id for t in await store.list(TicketStatus.CLOSED)] == ["T-2"]
    assert [t.id for t in await store.list(agent="alice")] == ["T-1", "T-3"]
    assert [t.id for t in await store.list(status="open", agent="bob")] == []
    with pytest.raises(ValueError, match="resolved"):
        await store.list(status="resolved")


async def test_every_change_is_audited_with_ids_only(store: TicketStore) -> None:
    t = ticket()
    await store.upsert(t, actor="helpdesk-sync")
    await store.upsert(t)  # unchanged: no entry
    await store.close("T-1", actor="admin:carol")
    rows = await store.pool.fetch(
        "SELECT agent, ticket, customer_ids, fields, detail::text AS detail FROM audit_log "
        "WHERE action = 'ticket_change' ORDER BY seq"
    )
    assert [(r["agent"], r["ticket"]) for r in rows] == [
        ("helpdesk-sync", "T-1"),
        ("admin:carol", "T-1"),
    ]
    assert rows[0]["customer_ids"] == ["42", "c-7"]
    assert rows[0]["fields"] == []
    assert '"change":"created"' in rows[0]["detail"].replace(" ", "")
    assert '"status":"closed"' in rows[1]["detail"].replace(" ", "")
    assert (await verify(store.pool, progress=False)).ok


# ------------------------------------------------------------------ the question


async def test_may_reveal_answers_with_reasons(store: TicketStore) -> None:
    await store.upsert(ticket("T-open"))
    await store.upsert(ticket("T-pending", status="pending"))
    await store.upsert(ticket("T-closed", status="closed"))
    await store.upsert(ticket("T-old", expires_at=now() - timedelta(seconds=1)))
    await store.upsert(ticket("T-nobody", agent=None))
    cases = [
        ("T-open", "42", Reason.ALLOWED),
        ("T-open", 42, Reason.ALLOWED),  # an int id and its string are one customer
        ("T-open", "c-7", Reason.ALLOWED),
        ("T-open", "43", Reason.CUSTOMER_NOT_ON_TICKET),
        ("T-open", None, Reason.NO_CUSTOMER_ID),
        ("T-open", 4.2, Reason.INVALID_CUSTOMER_ID),
        ("T-open", True, Reason.INVALID_CUSTOMER_ID),
        ("T-open", b"42", Reason.INVALID_CUSTOMER_ID),
        ("T-pending", "42", Reason.PENDING),
        ("T-closed", "42", Reason.CLOSED),
        ("T-old", "42", Reason.EXPIRED),
        ("T-nobody", "42", Reason.NOT_ASSIGNED),
        ("T-unknown", "42", Reason.UNKNOWN_TICKET),
        (None, "42", Reason.NO_TICKET),
        ("", "42", Reason.NO_TICKET),
    ]
    for tid, customer, reason in cases:
        decision = await store.may_reveal("alice", tid, customer)
        assert decision.reason is reason, (tid, customer)
        assert decision.allowed is (reason is Reason.ALLOWED)
    assert (await store.may_reveal("bob", "T-open", "42")).reason is Reason.NOT_ASSIGNED
    # The ticket-level reason wins over a mistyped id.
    assert (await store.may_reveal("alice", "T-closed", 4.2)).reason is Reason.CLOSED


async def test_decide_many_looks_the_ticket_up_once(pool: asyncpg.Pool) -> None:
    # Not started: the upsert's own NOTIFY, arriving late, would rightly empty the cache.
    store = TicketStore(pool, cache_ttl=60.0)
    await store.upsert(ticket())
    store.invalidate()
    calls = 0
    real_get = store.get

    async def counting_get(tid: str) -> Ticket | None:
        nonlocal calls
        calls += 1
        return await real_get(tid)

    store.get = counting_get  # type: ignore[method-assign]
    decisions = await store.decide_many("alice", "T-1", ["42", "c-7", "x"])
    assert [d.reason for d in decisions] == [
        Reason.ALLOWED,
        Reason.ALLOWED,
        Reason.CUSTOMER_NOT_ON_TICKET,
    ]
    await store.may_reveal("alice", "T-1", "42")
    assert calls == 1


# ------------------------------------------------------------ how fast a close counts


async def test_closing_takes_effect_at_once_in_this_process(pool: asyncpg.Pool) -> None:
    store = TicketStore(pool, cache_ttl=60.0)  # not listening: only close() can invalidate
    await store.upsert(ticket())
    assert (await store.may_reveal("alice", "T-1", "42")).allowed  # now cached for 60 s
    await store.close("T-1")
    assert (await store.may_reveal("alice", "T-1", "42")).reason is Reason.CLOSED


async def test_a_new_ticket_is_seen_at_once_despite_a_cached_miss(pool: asyncpg.Pool) -> None:
    store = TicketStore(pool, cache_ttl=60.0)  # not listening
    assert (await store.may_reveal("alice", "T-9", "42")).reason is Reason.UNKNOWN_TICKET
    await store.upsert(ticket("T-9"))
    assert (await store.may_reveal("alice", "T-9", "42")).allowed


async def test_another_process_sees_a_close_through_notify(
    schema_dsn: str, pool: asyncpg.Pool
) -> None:
    other_pool = await connect_pool(schema_dsn, max_size=4)
    try:
        async with (
            TicketStore(pool, cache_ttl=60.0) as proxy_a,
            TicketStore(other_pool, cache_ttl=60.0) as proxy_b,
        ):
            assert proxy_a.listening and proxy_b.listening
            await proxy_a.upsert(ticket())
            assert (await proxy_b.may_reveal("alice", "T-1", "42")).allowed  # cached in B

            await proxy_a.close("T-1")

            async def b_denies() -> bool:
                return (await proxy_b.may_reveal("alice", "T-1", "42")).reason is Reason.CLOSED

            assert await eventually(b_denies, within=3.0) < 1.5  # not the 60 s TTL

            # A change made by hand in SQL notifies too (the trigger sends it).
            await pool.execute(
                "UPDATE tickets SET status = 'open', updated_at = now() WHERE id = 'T-1'"
            )

            async def b_allows() -> bool:
                return (await proxy_b.may_reveal("alice", "T-1", "42")).allowed

            assert await eventually(b_allows, within=3.0) < 1.5
    finally:
        await close_pool(other_pool)


async def test_without_a_listener_the_ttl_bounds_staleness(pool: asyncpg.Pool) -> None:
    ttl = 0.5
    writer = TicketStore(pool)
    reader = TicketStore(pool, cache_ttl=ttl)  # not started: no LISTEN
    await writer.upsert(ticket())
    fetched = time.monotonic()
    assert (await reader.may_reveal("alice", "T-1", "42")).allowed
    await writer.close("T-1")
    stale = (await reader.may_reveal("alice", "T-1", "42")).allowed
    if time.monotonic() - fetched < ttl * 0.8:  # (a loaded machine may be past the TTL)
        assert stale  # within the TTL, without a listener, the cached "open" is served

    async def denies() -> bool:
        return not (await reader.may_reveal("alice", "T-1", "42")).allowed

    await eventually(denies, within=3.0)
    assert time.monotonic() - fetched < ttl + 1.0


async def test_a_lost_listener_empties_the_cache_and_comes_back(
    store: TicketStore, pool: asyncpg.Pool
) -> None:
    await store.upsert(ticket())
    assert (await store.may_reveal("alice", "T-1", "42")).allowed
    assert store._listener is not None
    pid = store._listener.get_server_pid()
    await pool.execute("SELECT pg_terminate_backend($1)", pid)

    async def lost() -> bool:
        return not store.listening

    await eventually(lost)
    # The close below happens while nobody listens: the emptied cache must not hide it.
    await pool.execute("UPDATE tickets SET status = 'closed', updated_at = now()")
    assert (await store.may_reveal("alice", "T-1", "42")).reason is Reason.CLOSED

    async def back() -> bool:
        await store.may_reveal("alice", "T-1", "42")
        return store.listening

    await eventually(back, within=5.0)
    assert store._listener is not None and store._listener.get_server_pid() != pid


async def test_a_fetch_overlapping_an_invalidation_is_not_cached(store: TicketStore) -> None:
    await store.upsert(ticket())
    store.invalidate()
    real_get = store.get
    gate = asyncio.Event()

    async def slow_get(tid: str) -> Ticket | None:
        found = await real_get(tid)  # read while open...
        await gate.wait()
        return found

    store.get = slow_get  # type: ignore[method-assign]
    pending = asyncio.create_task(store.may_reveal("alice", "T-1", "42"))
    await asyncio.sleep(0.05)
    await store.pool.execute("UPDATE tickets SET status = 'closed', updated_at = now()")
    store.invalidate("T-1")  # ...the close's notification arrives before the read returns
    gate.set()
    assert (await pending).allowed  # that request began before the close
    store.get = real_get  # type: ignore[method-assign]
    assert (await store.may_reveal("alice", "T-1", "42")).reason is Reason.CLOSED


async def test_a_database_error_is_store_unavailable_never_a_reveal(
    schema_dsn: str,
) -> None:
    pool = await connect_pool(schema_dsn, require_schema=False)
    await migrate(pool)
    store = TicketStore(pool, cache_ttl=0)
    await store.upsert(ticket())
    assert (await store.may_reveal("alice", "T-1", "42")).allowed
    pool.terminate()
    assert await store.may_reveal("alice", "T-1", "42") == Decision.deny(
        Reason.STORE_UNAVAILABLE
    )


# -------------------------------------------------------------------- bad input


async def test_bad_input_is_a_clear_error_or_a_reasoned_denial(store: TicketStore) -> None:
    with pytest.raises(InvalidInputError, match="names no customer"):
        ticket(customer_ids=[])
    with pytest.raises(InvalidInputError, match="not float"):
        ticket(customer_ids=[1.5])
    with pytest.raises(InvalidInputError, match="upsert takes a Ticket"):
        await store.upsert({"id": "T-1"})  # type: ignore[arg-type]
    # A ticket without customers that reaches the table by hand is refused there too.
    with pytest.raises(asyncpg.CheckViolationError):
        await store.pool.execute(
            "INSERT INTO tickets (id, agent, customer_ids, status, expires_at, updated_at) "
            "VALUES ('T-x', 'alice', '{}', 'open', now() + interval '1 hour', now())"
        )
    decision = await store.may_reveal("alice", "T-unknown", "42")
    assert decision == Decision.deny(Reason.UNKNOWN_TICKET)
    with pytest.raises(InvalidInputError):
        TicketStore(store.pool, cache_ttl=-1)


async def test_ticket_changes_share_the_audit_chain(store: TicketStore) -> None:
    audit = AuditLog(store.pool)
    await store.upsert(ticket())
    await audit.append_many([])
    await store.close("T-1")
    head = await audit.head()
    assert head.seq == 2
    assert (await verify(store.pool, progress=False)).ok


# ------------------------------------------------------- tokenproxy tickets add|close|list


async def test_admin_ops_add_close_list(pool: asyncpg.Pool) -> None:
    out = io.StringIO()
    result = await admin_ops.tickets_add(
        pool, ticket_id="T-7", agent="alice", customer_ids=[42, "c-9"], actor="admin:root",
        out=out,
    )
    assert result is UpsertResult.CREATED
    assert "ticket T-7: created" in out.getvalue()
    stored = await TicketStore(pool).get("T-7")
    assert stored is not None and stored.status is TicketStatus.OPEN
    assert timedelta(hours=7) < stored.expires_at - stored.updated_at <= timedelta(hours=8)

    await admin_ops.tickets_close(pool, "T-7", out=out)
    assert "ticket T-7: closed" in out.getvalue()
    # Reopening by hand right after the close works: the change is dated by the database.
    result = await admin_ops.tickets_add(
        pool, ticket_id="T-7", agent="alice", customer_ids=[42], expires_in=timedelta(hours=1),
        out=out,
    )
    assert result is UpsertResult.UPDATED

    listing = io.StringIO()
    found = await admin_ops.tickets_list(pool, status="open", out=listing)
    assert [t.id for t in found] == ["T-7"]
    assert listing.getvalue().startswith("T-7  open  agent=alice  expires=")
    assert "customers=42" in listing.getvalue()
    as_json = io.StringIO()
    await admin_ops.tickets_list(pool, agent="alice", as_json=True, out=as_json)
    assert json.loads(as_json.getvalue())["customer_ids"] == ["42"]
    empty = io.StringIO()
    await admin_ops.tickets_list(pool, status="pending", out=empty)
    assert empty.getvalue() == "no tickets\n"


async def test_admin_ops_refuse_bad_input(pool: asyncpg.Pool) -> None:
    with pytest.raises(InvalidInputError, match="at least one customer"):
        await admin_ops.tickets_add(pool, ticket_id="T-1", agent="alice", customer_ids=[])
    with pytest.raises(InvalidInputError, match="not float"):
        await admin_ops.tickets_add(pool, ticket_id="T-1", agent="alice", customer_ids=[1.5])  # type: ignore[list-item]
    with pytest.raises(UnknownTicketError, match="tickets list"):
        await admin_ops.tickets_close(pool, "T-404")
    with pytest.raises(InvalidInputError, match="unknown status"):
        await admin_ops.tickets_list(pool, status="resolved")
    assert await pool.fetchval("SELECT count(*) FROM tickets") == 0


def test_parse_time_and_span() -> None:
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert admin_ops.parse_time("24h", now=now) == now - timedelta(hours=24)
    assert admin_ops.parse_time("2024-05-01T00:00Z") == datetime(2024, 5, 1, tzinfo=UTC)
    assert admin_ops.parse_span("90s") == timedelta(seconds=90)
    assert admin_ops.parse_span("2w") == timedelta(weeks=2)
    for bad in ("yesterday", "2024-05-01T00:00", "0h", "-3h"):
        with pytest.raises(InvalidInputError):
            admin_ops.parse_time(bad)
