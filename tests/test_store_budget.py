"""proxy.store.budget and proxy.store.reveal: the reveal budget and the reveal path."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from store_fixtures import close_pool, migrated_pool  # noqa: F401  (the pool fixture)

from proxy.embedded_pg import EmbeddedPostgres
from proxy.errors import InvalidInputError
from proxy.policy.tickets import Decision, Reason, Ticket
from proxy.store import reveal as reveal_module
from proxy.store.audit import AuditLog, verify
from proxy.store.budget import BudgetLimits, BudgetUsage, charge, usage
from proxy.store.db import connect_pool
from proxy.store.reveal import authorize_reveals
from proxy.store.tickets import TicketStore

pytestmark = pytest.mark.timeout(60)

CUSTOMERS = [str(n) for n in range(1, 31)]

# One database per module, a fresh schema per test (CREATE DATABASE costs ~0.5 s here).


@pytest.fixture
async def tickets(pool: asyncpg.Pool) -> AsyncIterator[TicketStore]:
    async with TicketStore(pool, instance="test/1") as store:
        now = datetime.now(UTC)
        await store.upsert(Ticket("T-1", "alice", CUSTOMERS, "open", now + timedelta(hours=1), now))
        await store.upsert(Ticket("T-2", "bob", ["1"], "open", now + timedelta(hours=1), now))
        yield store


@pytest.fixture
def audit(pool: asyncpg.Pool) -> AuditLog:
    return AuditLog(pool, instance="test/1")


async def ask(
    tickets: TicketStore,
    audit: AuditLog,
    customers: Any,
    *,
    agent: str = "alice",
    ticket_id: str | None = "T-1",
    limits: BudgetLimits | None = None,
    within: float = 5.0,
) -> dict[str, Decision]:
    return await authorize_reveals(
        tickets,
        audit,
        agent=agent,
        ticket_id=ticket_id,
        customer_ids=customers,
        fields=["customers.full_name", "customers.phone"],
        route="GET /customers",
        request_id=f"req-{secrets.token_hex(3)}",
        limits=limits or BudgetLimits(),
        timeout=within,
    )


async def rows(pool: asyncpg.Pool, action: str | None = None) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT seq, action, agent, ticket, customer_ids, fields, route, request_id, "
        "detail::text AS detail FROM audit_log WHERE ($1::text IS NULL OR action = $1) "
        "AND action <> 'ticket_change' ORDER BY seq",
        action,
    )


def reasons(decisions: dict[str, Decision]) -> dict[str, str]:
    return {c: str(d.reason) for c, d in decisions.items()}


# ----------------------------------------------------------------- the reveal path


async def test_reveals_are_committed_before_the_answer(
    tickets: TicketStore, audit: AuditLog, schema_dsn: str
) -> None:
    decisions = await ask(tickets, audit, {"1", 2, "99"})
    assert reasons(decisions) == {
        "1": "allowed",
        "2": "allowed",
        "99": "customer_not_on_ticket",
    }
    # Read from another connection, right after the answer: the rows are committed.
    other = await asyncpg.connect(schema_dsn)
    try:
        found = await other.fetch(
            "SELECT action, customer_ids, fields, route, detail::text AS detail "
            "FROM audit_log WHERE action IN ('reveal', 'deny') ORDER BY seq"
        )
    finally:
        await other.close()
    assert [(r["action"], r["customer_ids"]) for r in found] == [
        ("reveal", ["1"]),
        ("reveal", ["2"]),
        ("deny", ["99"]),
    ]
    assert found[0]["fields"] == ["customers.full_name", "customers.phone"]
    assert found[0]["route"] == "GET /customers"
    assert "customer_not_on_ticket" in found[2]["detail"]
    assert (await verify(audit.pool, progress=False)).ok


async def test_reveal_commits_are_synchronous_whatever_the_server_default(
    tickets: TicketStore, audit: AuditLog, pool: asyncpg.Pool
) -> None:
    """The test server runs with synchronous_commit off (a crash may lose confirmed
    commits); the reveal transaction turns it on for itself."""
    assert await pool.fetchval("SHOW synchronous_commit") == "off"
    await pool.execute(
        "CREATE TABLE commit_mode (mode text);"
        "CREATE FUNCTION note_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN INSERT INTO commit_mode VALUES (current_setting('synchronous_commit'));"
        " RETURN NEW; END $$;"
        "CREATE TRIGGER note_commit_mode AFTER INSERT ON audit_log"
        " FOR EACH ROW EXECUTE FUNCTION note_commit_mode()"
    )
    decisions = await ask(tickets, audit, {"1"})
    assert decisions["1"].allowed
    assert {r["mode"] for r in await pool.fetch("SELECT mode FROM commit_mode")} == {"on"}


async def test_denials_are_grouped_by_reason(tickets: TicketStore, audit: AuditLog) -> None:
    decisions = await ask(tickets, audit, ["1", "2", "98", "99"], agent="bob", ticket_id="T-2")
    assert reasons(decisions) == {
        "1": "allowed",
        "2": "customer_not_on_ticket",
        "98": "customer_not_on_ticket",
        "99": "customer_not_on_ticket",
    }
    denies = await rows(audit.pool, "deny")
    assert [r["customer_ids"] for r in denies] == [["2", "98", "99"]]


@pytest.mark.parametrize(
    ("agent", "ticket_id", "reason"),
    [
        ("alice", "T-404", "unknown_ticket"),
        ("bob", "T-1", "not_assigned"),
    ],
)
async def test_refused_justifications_write_a_deny_row(
    tickets: TicketStore, audit: AuditLog, agent: str, ticket_id: str, reason: str
) -> None:
    decisions = await ask(tickets, audit, ["1"], agent=agent, ticket_id=ticket_id)
    assert reasons(decisions) == {"1": reason}
    denies = await rows(audit.pool, "deny")
    assert len(denies) == 1
    assert (denies[0]["agent"], denies[0]["ticket"]) == (agent, ticket_id)
    assert reason in denies[0]["detail"]
    assert await rows(audit.pool, "reveal") == []


async def test_no_ticket_means_no_reveal_and_no_database_work(
    tickets: TicketStore, audit: AuditLog, schema_dsn: str
) -> None:
    dead = await connect_pool(schema_dsn)
    dead.terminate()  # any database use would fail
    decisions = await ask(tickets, AuditLog(dead), ["1", 2], ticket_id=None)
    assert decisions == dict.fromkeys(["1", "2"], Decision.deny(Reason.NO_TICKET))
    assert await ask(tickets, audit, []) == {}
    assert await rows(audit.pool) == []


@pytest.mark.parametrize(
    ("customers", "message"),
    [
        ([4.2], "not float"),
        ([None], "not NoneType"),
        ([True], "bool"),
        ("42", "not a single string"),
        ([""], "1..200 characters"),
    ],
)
async def test_bad_customer_ids_are_a_clear_error_never_a_reveal(
    tickets: TicketStore, audit: AuditLog, customers: Any, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        await ask(tickets, audit, customers)
    assert await rows(audit.pool) == []


async def test_other_bad_input(tickets: TicketStore, audit: AuditLog) -> None:
    with pytest.raises(InvalidInputError, match="agent"):
        await ask(tickets, audit, ["1"], agent="")
    with pytest.raises(InvalidInputError, match="field names"):
        await authorize_reveals(
            tickets, audit, agent="alice", ticket_id="T-1", customer_ids=["1"],
            fields=[3], route=None, request_id=None,  # type: ignore[list-item]
        )
    with pytest.raises(InvalidInputError, match="per_hour"):
        BudgetLimits(per_hour=-1)


async def test_int_and_str_ids_are_one_customer(tickets: TicketStore, audit: AuditLog) -> None:
    decisions = await ask(tickets, audit, [7, "7"])
    assert list(decisions) == ["7"]
    assert len(await rows(audit.pool, "reveal")) == 1


# ---------------------------------------------------------------------- the budget


async def test_past_the_hourly_limit_reveals_are_denied_and_alerted_once(
    tickets: TicketStore, audit: AuditLog
) -> None:
    limits = BudgetLimits(per_hour=2, per_day=10)
    first = await ask(tickets, audit, ["1", "2", "3"], limits=limits)
    assert reasons(first) == {"1": "allowed", "2": "allowed", "3": "budget_exceeded"}
    alerts = await rows(audit.pool, "alert")
    assert len(alerts) == 1
    assert alerts[0]["customer_ids"] == ["3"]
    assert '"period": "hour"' in alerts[0]["detail"]

    second = await ask(tickets, audit, ["4"], limits=limits)
    assert reasons(second) == {"4": "budget_exceeded"}
    assert len(await rows(audit.pool, "alert")) == 1  # not one per request

    again = await ask(tickets, audit, ["1", "2"], limits=limits)  # already seen this hour
    assert reasons(again) == {"1": "allowed", "2": "allowed"}
    assert await usage(audit.pool, "alice") == BudgetUsage(2, 2)
    assert await usage(audit.pool, "bob") == BudgetUsage(0, 0)
    deny_reasons = [r["detail"] for r in await rows(audit.pool, "deny")]
    assert all("budget_exceeded" in d for d in deny_reasons) and len(deny_reasons) == 2
    assert (await verify(audit.pool, progress=False)).ok


async def test_the_windows_slide(tickets: TicketStore, audit: AuditLog) -> None:
    limits = BudgetLimits(per_hour=2, per_day=3)
    await ask(tickets, audit, ["1", "2"], limits=limits)
    assert reasons(await ask(tickets, audit, ["3"], limits=limits)) == {"3": "budget_exceeded"}
    await audit.pool.execute(
        "UPDATE reveal_budget SET last_revealed_at = last_revealed_at - interval '2 hours'"
    )
    # The hour is free again; the day still holds 1 and 2.
    assert reasons(await ask(tickets, audit, ["3"], limits=limits)) == {"3": "allowed"}
    assert await usage(audit.pool, "alice") == BudgetUsage(1, 3)
    decisions = await ask(tickets, audit, ["4"], limits=limits)
    assert reasons(decisions) == {"4": "budget_exceeded"}  # the hour has room, the day not
    decisions = await ask(tickets, audit, ["1"], limits=limits)
    assert reasons(decisions) == {"1": "allowed"}  # seen today: needs no day budget
    day_alerts = [r for r in await rows(audit.pool, "alert") if '"day"' in r["detail"]]
    assert [r["customer_ids"] for r in day_alerts] == [["4"]]
    await audit.pool.execute(
        "UPDATE reveal_budget SET last_revealed_at = last_revealed_at - interval '25 hours'"
    )
    assert reasons(await ask(tickets, audit, ["4"], limits=limits)) == {"4": "allowed"}
    # Day-old rows are pruned as the agent's budget is read.
    assert await audit.pool.fetchval("SELECT count(*) FROM reveal_budget") == 1


async def test_a_new_alert_after_the_window(tickets: TicketStore, audit: AuditLog) -> None:
    limits = BudgetLimits(per_hour=1, per_day=100)
    await ask(tickets, audit, ["1", "2"], limits=limits)
    await ask(tickets, audit, ["3"], limits=limits)
    assert len(await rows(audit.pool, "alert")) == 1
    await audit.pool.execute(
        "UPDATE reveal_budget_alerts SET alerted_at = alerted_at - interval '61 minutes'"
    )
    await ask(tickets, audit, ["4"], limits=limits)
    assert len(await rows(audit.pool, "alert")) == 2


async def test_a_zero_budget_reveals_nothing(tickets: TicketStore, audit: AuditLog) -> None:
    decisions = await ask(tickets, audit, ["1"], limits=BudgetLimits(per_hour=0, per_day=0))
    assert reasons(decisions) == {"1": "budget_exceeded"}


async def test_concurrent_proxies_cannot_overspend(
    tickets: TicketStore, audit: AuditLog, schema_dsn: str
) -> None:
    other_pool = await connect_pool(schema_dsn, max_size=8)
    try:
        other_tickets = TicketStore(other_pool)
        other_audit = AuditLog(other_pool, instance="test/2")
        limits = BudgetLimits(per_hour=5, per_day=100)
        results = await asyncio.gather(
            *(
                ask(
                    tickets if n % 2 else other_tickets,
                    audit if n % 2 else other_audit,
                    [CUSTOMERS[n]],
                    limits=limits,
                )
                for n in range(16)
            )
        )
    finally:
        await close_pool(other_pool)
    allowed = [c for r in results for c, d in r.items() if d.allowed]
    assert len(allowed) == 5
    assert len(await rows(audit.pool, "reveal")) == 5
    assert await audit.pool.fetchval("SELECT count(*) FROM reveal_budget") == 5
    assert len(await rows(audit.pool, "alert")) == 1
    assert (await verify(audit.pool, progress=False)).ok


async def test_charge_needs_a_transaction(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(InvalidInputError, match="inside the reveal's transaction"):
            await charge(conn, "alice", ["1"], BudgetLimits())


# ------------------------------------------------------------------ failing closed


async def test_a_failed_audit_write_denies_and_counts_nothing(
    tickets: TicketStore, audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise asyncpg.exceptions.DiskFullError("no space left on device")

    monkeypatch.setattr(reveal_module, "append_entries", broken)
    decisions = await ask(tickets, audit, ["1", "2"])
    assert decisions == dict.fromkeys(["1", "2"], Decision.deny(Reason.STORE_UNAVAILABLE))
    assert await audit.pool.fetchval("SELECT count(*) FROM reveal_budget") == 0


async def test_a_stopped_database_denies_every_reveal(
    restartable_pg: EmbeddedPostgres, tickets: TicketStore, audit: AuditLog
) -> None:
    assert reasons(await ask(tickets, audit, ["1"])) == {"1": "allowed"}  # ticket now cached
    restartable_pg.stop_server()
    try:
        started = time.monotonic()
        decisions = await ask(tickets, audit, ["1", "2", "99"])
        assert decisions == dict.fromkeys(
            ["1", "2", "99"], Decision.deny(Reason.STORE_UNAVAILABLE)
        )
        assert time.monotonic() - started < 5
        tickets.invalidate()  # and with the ticket not cached: the lookup fails
        decisions = await ask(tickets, audit, ["1"])
        assert decisions == {"1": Decision.deny(Reason.STORE_UNAVAILABLE)}
    finally:
        restartable_pg.start_server()
    # Back up: the pool reconnects and reveals resume, with their rows.
    for _ in range(20):  # each dead pooled connection may fail once
        decisions = await ask(tickets, audit, ["1"])
        if decisions["1"].allowed:
            break
        await asyncio.sleep(0.1)
    assert reasons(decisions) == {"1": "allowed"}
    assert len(await rows(audit.pool, "reveal")) == 2
    assert (await verify(audit.pool, progress=False)).ok


async def test_a_hanging_database_denies_within_the_timeout(
    restartable_pg: EmbeddedPostgres, tickets: TicketStore, audit: AuditLog
) -> None:
    assert reasons(await ask(tickets, audit, ["1"])) == {"1": "allowed"}
    restartable_pg.pause_server()
    try:
        started = time.monotonic()
        decisions = await ask(tickets, audit, ["1", "2"], within=1.0)
        elapsed = time.monotonic() - started
    finally:
        restartable_pg.resume_server()
    assert decisions == dict.fromkeys(["1", "2"], Decision.deny(Reason.STORE_UNAVAILABLE))
    assert elapsed < 3
