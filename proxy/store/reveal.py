"""The reveal path: decide, charge the budget, and commit the audit rows before answering.

Front ends call :func:`authorize_reveals` once per response (or per statement result) with
every customer whose records would be shown in clear, and reveal exactly those it answers
``allowed`` for. The guarantees:

- **No reveal without its audit row committed.** The ``reveal`` rows (one per customer),
  the budget counts and any ``alert`` commit in one transaction before the function returns
  an ``allowed``, with ``synchronous_commit`` on for that transaction (a server running with
  it off would otherwise confirm a commit a crash can still lose; the soak test found it).
  If anything fails on the way (the database is down or hangs past ``timeout``, a
  constraint, a bug), every customer is denied ``store_unavailable``: fail closed. A
  commit whose outcome is unknown is a denial too (an audit row for a reveal that did not
  happen is harmless; the reverse is not).
- **Denied justifications are recorded.** A request that cites a ticket and is refused
  for some customers writes one ``deny`` row per reason, listing those customers.
  A request that cites no ticket is simply not a reveal request: ``no_ticket`` for all,
  no database work and no audit row (else every ordinary page view would be logged).
- **Budget.** Customers the ticket justifies are charged against the agent's budget
  (:mod:`proxy.store.budget`) in the same transaction; past it, ``budget_exceeded``.

Lock order, for the record: the agent's budget lock, then the audit chain head, then
commit. Nothing takes them the other way round, so they cannot deadlock.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar
from uuid import UUID

import structlog

from proxy.errors import InvalidInputError
from proxy.policy.tickets import Decision, Reason, customer_key
from proxy.store.audit import (
    AuditAction,
    AuditEntry,
    AuditLog,
    append_entries,
    note_committed,
)
from proxy.store.budget import BudgetLimits, charge
from proxy.store.db import is_unavailable
from proxy.store.tickets import TicketStore

__all__ = ["DEFAULT_LIMITS", "REVEAL_TIMEOUT", "authorize_reveals"]

log = structlog.get_logger("tokenproxy.store.reveal")

_T = TypeVar("_T")

REVEAL_TIMEOUT = 5.0  # seconds for the whole database part of one authorization
DEFAULT_LIMITS = BudgetLimits()


async def authorize_reveals(
    tickets: TicketStore,
    audit: AuditLog,
    *,
    agent: str,
    ticket_id: str | None,
    customer_ids: Iterable[str | int | UUID],
    fields: Iterable[str],
    route: str | None,
    request_id: str | None,
    limits: BudgetLimits = DEFAULT_LIMITS,
    timeout: float = REVEAL_TIMEOUT,  # noqa: ASYNC109  (a budget for the whole call)
) -> dict[str, Decision]:
    """Decide, count and record the reveal of each customer; never reveal unrecorded.

    ``customer_ids`` are normalised (:func:`proxy.policy.tickets.customer_key`: ``42`` and
    ``"42"`` are one customer) and the result is keyed by the normalised id. An id of
    another type (``None``, ``float``, ``bool``, ...) raises :class:`InvalidInputError`
    before anything is decided: the front end tokenizes records without a usable customer
    id and does not ask. ``fields`` are the protected field names to be revealed (names,
    never values); ``route`` the HTTP route or SQL statement fingerprint.

    Returns ``{customer id: Decision}``; reveal only where ``decision.allowed``.
    """
    wanted = sorted({customer_key(c) for c in _no_str(customer_ids)})
    if not isinstance(agent, str) or not agent:
        raise InvalidInputError("authorize_reveals needs the verified agent's name")
    if not wanted:
        return {}
    if not ticket_id:
        return dict.fromkeys(wanted, Decision.deny(Reason.NO_TICKET))
    field_names = sorted({_field_name(f) for f in _no_str(fields)})

    try:
        decisions = await _within(
            timeout,
            _decide_and_record(
                tickets, audit, wanted, agent, ticket_id, field_names, route, request_id, limits
            ),
        )
    except Exception as exc:
        log.warning(
            "reveal.store_unavailable",
            agent=agent,
            ticket=ticket_id,
            request_id=request_id,
            customers=len(wanted),
            error=type(exc).__name__,
            outage=is_unavailable(exc),
        )
        return dict.fromkeys(wanted, Decision.deny(Reason.STORE_UNAVAILABLE))

    allowed = sum(d.allowed for d in decisions.values())
    log.info(
        "reveal.authorized",
        agent=agent,
        ticket=ticket_id,
        request_id=request_id,
        allowed=allowed,
        denied=len(decisions) - allowed,
    )
    return decisions


class _StoreUnavailable(Exception):
    """The ticket lookup failed (``decide_many`` answered ``store_unavailable``)."""


_abandoned: set[asyncio.Task[Any]] = set()


def _forget(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.debug("reveal.abandoned_task_failed", error=type(task.exception()).__name__)


async def _within(seconds: float, work: Coroutine[Any, Any, _T]) -> _T:
    """Await ``work`` for at most ``seconds`` of *our* time.

    ``asyncio.timeout`` alone is not enough: cancelling a query on a database that hangs
    makes asyncpg's cleanup (rollback, connection reset) wait for that database too. Here
    the work runs as a task; past the deadline it is cancelled and left to finish its
    cleanup in the background, and the caller gets ``TimeoutError`` at once. Its
    transaction cannot have committed unseen with an ``allowed`` answer: the answer is
    already a denial.
    """
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    finally:
        if not task.done():
            task.cancel()
            _abandoned.add(task)
            task.add_done_callback(_forget)
    if not done:
        raise TimeoutError(f"the reveal's database work took over {seconds:g} s")
    return task.result()


async def _decide_and_record(
    tickets: TicketStore,
    audit: AuditLog,
    wanted: list[str],
    agent: str,
    ticket_id: str,
    fields: list[str],
    route: str | None,
    request_id: str | None,
    limits: BudgetLimits,
) -> dict[str, Decision]:
    decisions = dict(
        zip(wanted, await tickets.decide_many(agent, ticket_id, wanted), strict=True)
    )
    if any(d.reason is Reason.STORE_UNAVAILABLE for d in decisions.values()):
        raise _StoreUnavailable("the ticket could not be looked up")
    await _record(audit, decisions, agent, ticket_id, fields, route, request_id, limits)
    return decisions


async def _record(
    audit: AuditLog,
    decisions: dict[str, Decision],
    agent: str,
    ticket_id: str,
    fields: list[str],
    route: str | None,
    request_id: str | None,
    limits: BudgetLimits,
) -> None:
    """Charge the budget and append the rows in one transaction; updates ``decisions``
    with budget denials. Returns only after the commit."""
    justified = [c for c, d in decisions.items() if d.allowed]
    async with audit.pool.acquire() as conn, conn.transaction():
        # The commit must be durable before a reveal leaves, whatever the server's default:
        # with synchronous_commit off, a crash loses commits already confirmed.
        await conn.execute("SET LOCAL synchronous_commit = on")
        entries: list[AuditEntry] = []
        if justified:
            outcome = await charge(
                conn,
                agent,
                justified,
                limits,
                ticket=ticket_id,
                route=route,
                request_id=request_id,
            )
            for customer in outcome.exceeded:
                decisions[customer] = Decision.deny(Reason.BUDGET_EXCEEDED)
            entries.extend(outcome.alerts)

        def entry(action: AuditAction, customers: list[str], reason: Reason | None) -> AuditEntry:
            return AuditEntry(
                action,
                agent=agent,
                ticket=ticket_id,
                customer_ids=customers,
                fields=fields,
                route=route,
                request_id=request_id,
                detail=None if reason is None else {"reason": str(reason)},
            )

        denied: dict[Reason, list[str]] = defaultdict(list)
        for customer, decision in decisions.items():
            if decision.allowed:
                entries.append(entry(AuditAction.REVEAL, [customer], None))
            else:
                denied[decision.reason].append(customer)
        for reason, customers in sorted(denied.items()):
            entries.append(entry(AuditAction.DENY, customers, reason))
        records = await append_entries(conn, entries, audit.instance)
    note_committed(records)


def _field_name(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInputError("field names are non-empty strings")
    return value


def _no_str(values: Iterable[_T]) -> Iterable[_T]:
    if isinstance(values, str | bytes):
        raise InvalidInputError("pass a collection of ids or names, not a single string")
    return values
