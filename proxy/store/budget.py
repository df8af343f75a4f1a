"""The reveal budget: how many distinct customers each agent may see in clear per hour and day.

The control that stops an insider's slow harvest: a valid ticket per customer is not enough
if an agent works through a hundred tickets an hour. Per agent, the distinct customers
revealed in the sliding last hour and last day are counted; a reveal that would take either
count past its limit is denied (``budget_exceeded``) and an ``alert`` audit entry is written,
at most once per agent per window length (one alert per hour for the hourly limit, one per
day for the daily one), however many reveals are refused meanwhile.

Defaults (:class:`BudgetLimits`): 20 customers per hour, 100 per day. A support agent
rarely works more than a handful of tickets an hour, each usually about one customer; the
limits are meant to be generous for honest work and tight against bulk collection. Tune them
per deployment.

Counting: one row per (agent, customer) holding when the agent last saw that customer. A
customer counts in a window if that time lies in it; seeing the same customer again moves the
time and never counts twice. Customers already counted in a window do not need budget
there: an agent at the limit may still see the customers already seen in that window.

Race safety: :func:`charge` runs in the caller's transaction (the same one that appends the
``reveal`` audit rows), after ``pg_advisory_xact_lock`` on the agent. Two proxies charging
the same agent serialise on that lock, and the counts only grow if the audit rows commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
import structlog

from proxy.errors import InvalidInputError
from proxy.store.audit import AuditAction, AuditEntry

__all__ = ["BudgetLimits", "BudgetOutcome", "BudgetUsage", "charge", "usage"]

log = structlog.get_logger(__name__)

LOCK_NAMESPACE = 0x7470_6276  # "tpbv": first key of pg_advisory_xact_lock(int, int)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """Distinct customers an agent may see in clear in the sliding last hour and day."""

    per_hour: int = 20
    per_day: int = 100

    def __post_init__(self) -> None:
        for name in ("per_hour", "per_day"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInputError(f"budget {name} must be an int >= 0")


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """Distinct customers seen in clear by one agent in the last hour and day."""

    last_hour: int
    last_day: int


@dataclass(frozen=True, slots=True)
class BudgetOutcome:
    """What :func:`charge` decided. ``alerts`` are to be appended in the same transaction."""

    allowed: frozenset[str]
    exceeded: dict[str, str] = field(default_factory=dict)  # customer id -> "hour" | "day"
    alerts: tuple[AuditEntry, ...] = ()
    usage: BudgetUsage = BudgetUsage(0, 0)


_LOCK = "SELECT pg_advisory_xact_lock($1::int, hashtext($2::text))"

_SEEN = """
SELECT statement_timestamp() AS now,
       coalesce(array_agg(customer_id) FILTER (WHERE last_revealed_at > statement_timestamp() - interval '1 day'), '{}') AS day,
       coalesce(array_agg(customer_id) FILTER (WHERE last_revealed_at > statement_timestamp() - interval '1 hour'), '{}') AS hour,
       count(*) FILTER (WHERE last_revealed_at <= statement_timestamp() - interval '1 day') AS stale
FROM reveal_budget WHERE agent = $1
"""  # noqa: E501

_PRUNE = "DELETE FROM reveal_budget WHERE agent = $1 AND last_revealed_at <= $2::timestamptz"

_COUNT = """
INSERT INTO reveal_budget (agent, customer_id, last_revealed_at)
SELECT $1, c, $3::timestamptz FROM unnest($2::text[]) AS c
ON CONFLICT (agent, customer_id) DO UPDATE SET last_revealed_at = EXCLUDED.last_revealed_at
"""

# A returned row means: no alert for this agent and window within the window's length.
_ALERT_DUE = """
INSERT INTO reveal_budget_alerts AS a (agent, period, alerted_at) VALUES ($1, $2, $3)
ON CONFLICT (agent, period) DO UPDATE SET alerted_at = EXCLUDED.alerted_at
WHERE a.alerted_at <= $3::timestamptz - $4::interval
RETURNING 1
"""


async def charge(
    conn: asyncpg.Connection,
    agent: str,
    customer_ids: Iterable[str],
    limits: BudgetLimits,
    *,
    ticket: str | None = None,
    route: str | None = None,
    request_id: str | None = None,
) -> BudgetOutcome:
    """Count the reveals of ``customer_ids`` to ``agent`` against ``limits``.

    Must run inside a transaction on ``conn``: it locks the agent until that transaction
    ends, and the counts it writes commit (or roll back) with the caller's audit rows.
    Customers are considered in sorted order; each is allowed if it fits both windows.
    """
    if not conn.is_in_transaction():
        raise InvalidInputError("budget.charge must run inside the reveal's transaction")
    wanted = sorted(set(customer_ids))
    if not wanted:
        return BudgetOutcome(frozenset())
    await conn.execute(_LOCK, LOCK_NAMESPACE, agent)
    seen = await conn.fetchrow(_SEEN, agent)
    now: datetime = seen["now"]
    day: set[str] = set(seen["day"])
    hour: set[str] = set(seen["hour"])
    if seen["stale"]:
        await conn.execute(_PRUNE, agent, now - DAY)

    allowed: list[str] = []
    exceeded: dict[str, str] = {}
    for customer in wanted:
        if customer not in hour and len(hour) >= limits.per_hour:
            exceeded[customer] = "hour"
        elif customer not in day and len(day) >= limits.per_day:
            exceeded[customer] = "day"
        else:
            allowed.append(customer)
            hour.add(customer)
            day.add(customer)
    if allowed:
        await conn.execute(_COUNT, agent, allowed, now)

    alerts: list[AuditEntry] = []
    for period, window, limit, count in (
        ("hour", HOUR, limits.per_hour, len(hour)),
        ("day", DAY, limits.per_day, len(day)),
    ):
        refused = sorted(c for c, p in exceeded.items() if p == period)
        if not refused:
            continue
        log.warning(
            "budget.exceeded", agent=agent, period=period, limit=limit, refused=len(refused)
        )
        if await conn.fetchval(_ALERT_DUE, agent, period, now, window) is None:
            continue
        alerts.append(
            AuditEntry(
                AuditAction.ALERT,
                agent=agent,
                ticket=ticket,
                customer_ids=refused,
                route=route,
                request_id=request_id,
                detail={
                    "kind": "reveal_budget_exceeded",
                    "period": period,
                    "limit": limit,
                    "count": count,
                },
            )
        )
    usage_now = BudgetUsage(len(hour), len(day))
    return BudgetOutcome(frozenset(allowed), exceeded, tuple(alerts), usage_now)


async def usage(pool: asyncpg.Pool, agent: str) -> BudgetUsage:
    """How many distinct customers ``agent`` saw in clear in the last hour and day."""
    row = await pool.fetchrow(
        """
        SELECT count(*) FILTER (WHERE last_revealed_at > now() - interval '1 hour') AS hour,
               count(*) FILTER (WHERE last_revealed_at > now() - interval '1 day') AS day
        FROM reveal_budget WHERE agent = $1
        """,
        agent,
    )
    return BudgetUsage(row["hour"], row["day"])
