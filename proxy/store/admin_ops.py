"""What ``tokenproxy tickets add|close|list`` and ``tokenproxy audit verify|tail|export`` do.

Plain async functions over an asyncpg pool, writing to the text streams they are given, so
that ``proxy/cli.py`` only parses options and wires them in::

    tickets add ID --agent A --customer C [--customer C ...] [--status open]
                [--expires-in 8h | --expires-at 2024-05-01T18:00Z]  -> tickets_add
    tickets close ID                                                -> tickets_close
    tickets list [--status S] [--agent A] [--json]                  -> tickets_list
    audit verify [--anchor SEQ:HASH ...] [--progress/--no-progress] -> audit_verify
                 (exit status: the returned int; 0 intact, 1 tampered)
    audit tail [-n 20] [--follow]                                   -> audit_tail
    audit export --since 24h|2024-05-01T00:00Z [--until ...]        -> audit_export

Times on the command line go through :func:`parse_time` (ISO 8601 with a zone, or a span
back from now like ``30m``, ``24h``, ``7d``). Errors are :class:`InvalidInputError` /
:class:`UnknownTicketError` with a message that says what to do; the CLI prints them.
Nothing here prints a customer's value: the tables hold none.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import asyncpg

from proxy.errors import InvalidInputError
from proxy.policy.tickets import Ticket, TicketStatus
from proxy.store.audit import Anchor, AuditLog, VerifyReport
from proxy.store.audit import verify as verify_log
from proxy.store.tickets import TicketStore, UpsertResult

__all__ = [
    "DEFAULT_TICKET_TTL",
    "audit_export",
    "audit_tail",
    "audit_verify",
    "format_ticket",
    "parse_span",
    "parse_time",
    "tickets_add",
    "tickets_close",
    "tickets_list",
]

DEFAULT_TICKET_TTL = timedelta(hours=8)  # one working day, when `tickets add` is given none
DEFAULT_ACTOR = "admin"
_SPAN = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_span(text: str) -> timedelta:
    """``"90s"``, ``"30m"``, ``"8h"``, ``"7d"``, ``"2w"`` as a timedelta."""
    match = _SPAN.fullmatch(text.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise InvalidInputError(
            f"{text!r} is not a time span: use a positive number and a unit, like 30m, 8h, 7d"
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An instant: ISO 8601 with a zone (``2024-05-01T00:00Z``, ``...+07:00``), or a span
    back from now (``24h`` = 24 hours ago)."""
    text = text.strip()
    if _SPAN.fullmatch(text.lower()):
        return (now or datetime.now(UTC)) - parse_span(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"{text!r} is not a time: use ISO 8601 with a zone (2024-05-01T00:00Z) "
            "or a span back from now (24h, 7d)"
        ) from None
    if when.tzinfo is None:
        raise InvalidInputError(
            f"{text!r} has no time zone: add one (Z for UTC, or +07:00), so that the "
            "instant is not guessed"
        )
    return when


# ------------------------------------------------------------------------- tickets


async def tickets_add(
    pool: asyncpg.Pool,
    *,
    ticket_id: str,
    agent: str | None,
    customer_ids: Sequence[str | int],
    status: TicketStatus | str = TicketStatus.OPEN,
    expires_at: datetime | None = None,
    expires_in: timedelta = DEFAULT_TICKET_TTL,
    actor: str = DEFAULT_ACTOR,
    out: TextIO | None = None,
) -> UpsertResult:
    """Create or update a ticket by hand. Its change time is the database's clock, so that
    it is newer than a close done moments ago. Prints what happened."""
    if not customer_ids:
        raise InvalidInputError(
            f"ticket {ticket_id} needs at least one customer id (--customer); a ticket for "
            "nobody justifies no reveal"
        )
    now: datetime = await pool.fetchval("SELECT clock_timestamp()")
    ticket = Ticket(
        ticket_id, agent, customer_ids, status, expires_at or now + expires_in, now
    )
    result = await TicketStore(pool).upsert(ticket, actor=actor)
    _print(out, f"ticket {ticket.id}: {result}  ({format_ticket(ticket)})")
    if result is UpsertResult.STALE:
        _print(out, "  the stored ticket changed later; nothing was written")
    return result


async def tickets_close(
    pool: asyncpg.Pool, ticket_id: str, *, actor: str = DEFAULT_ACTOR, out: TextIO | None = None
) -> Ticket:
    """Close a ticket; every proxy stops revealing under it at once."""
    ticket = await TicketStore(pool).close(ticket_id, actor=actor)
    _print(out, f"ticket {ticket.id}: closed")
    return ticket


def format_ticket(ticket: Ticket) -> str:
    """One line: id, status, agent, expiry, customer ids."""
    customers = ",".join(ticket.sorted_customer_ids)
    expires = ticket.expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")
    return (
        f"{ticket.id}  {ticket.status}  agent={ticket.agent or '-'}  expires={expires}  "
        f"customers={customers}"
    )


def _ticket_json(ticket: Ticket) -> dict[str, Any]:
    return {
        "id": ticket.id,
        "agent": ticket.agent,
        "customer_ids": list(ticket.sorted_customer_ids),
        "status": str(ticket.status),
        "expires_at": ticket.expires_at.astimezone(UTC).isoformat(),
        "updated_at": ticket.updated_at.astimezone(UTC).isoformat(),
    }


async def tickets_list(
    pool: asyncpg.Pool,
    *,
    status: TicketStatus | str | None = None,
    agent: str | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
) -> list[Ticket]:
    """Print the tickets (one line each, or JSON lines); return them."""
    try:
        found = await TicketStore(pool).list(status=status, agent=agent)
    except ValueError:
        raise InvalidInputError(
            f"unknown status {status!r}: use one of {', '.join(TicketStatus)}"
        ) from None
    for ticket in found:
        _print(out, json.dumps(_ticket_json(ticket)) if as_json else format_ticket(ticket))
    if not found and not as_json:
        _print(out, "no tickets")
    return found


# --------------------------------------------------------------------------- audit


async def audit_verify(
    pool: asyncpg.Pool,
    *,
    anchors: Sequence[str | Anchor] = (),
    progress: bool | None = None,
    out: TextIO | None = None,
) -> int:
    """Verify the whole chain; print the verdict. Returns the exit status (0 intact,
    1 tampered). ``anchors``: ``SEQ:HASH`` points kept outside the database."""
    parsed = [a if isinstance(a, Anchor) else Anchor.parse(a) for a in anchors]
    report: VerifyReport = await verify_log(pool, progress=progress, anchors=parsed)
    _print(out, report.message)
    if report.ok and not parsed:
        _print(
            out,
            "  (a chain recomputed by someone with write access also verifies: "
            "check it against an anchor kept elsewhere with --anchor SEQ:HASH)",
        )
    return 0 if report.ok else 1


async def audit_tail(
    pool: asyncpg.Pool,
    *,
    n: int = 20,
    follow: bool = False,
    poll_interval: float = 1.0,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> None:
    """Print the last ``n`` entries as JSON lines, then the chain head as an anchor (on
    ``err``, so that ``out`` stays JSON lines); with ``follow``, keep printing new entries
    until cancelled (Ctrl-C)."""
    log = AuditLog(pool)
    head = await log.head()

    def anchor(at: Anchor) -> None:
        _print(err or sys.stderr, f"anchor {at}  (keep it elsewhere: audit verify --anchor)")

    printed_anchor = n == 0 or head.seq == 0
    if printed_anchor:
        anchor(head)
    async for record in log.tail(n, follow=follow, poll_interval=poll_interval):
        _print(out, json.dumps(record.to_json(), ensure_ascii=False))
        if not printed_anchor and record.seq >= head.seq:
            anchor(record.anchor)
            printed_anchor = True
    if not printed_anchor:
        anchor(head)


async def audit_export(
    pool: asyncpg.Pool,
    *,
    since: datetime | str,
    until: datetime | str | None = None,
    out: TextIO | None = None,
) -> int:
    """Write the entries with ``since <= at < until`` as JSON lines; return how many."""
    start = parse_time(since) if isinstance(since, str) else since
    end = parse_time(until) if isinstance(until, str) else until
    count = 0
    async for row in AuditLog(pool).export(start, end):
        _print(out, json.dumps(row, ensure_ascii=False))
        count += 1
    return count


def _print(stream: TextIO | None, line: str) -> None:
    target = stream or sys.stdout
    target.write(line + "\n")
    target.flush()
