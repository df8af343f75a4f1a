"""``tokenproxy tickets``: the tickets that justify reveals, by hand (the helpdesk feeds them
through the admin API)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import click

from proxy.cli.common import TokenProxyGroup, database_option, require_database, run_async
from proxy.policy.tickets import TicketStatus
from proxy.store import admin_ops
from proxy.store.db import connect_pool

T = TypeVar("T")


def with_pool(url: str | None, work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Run ``work`` on a pool to the state database, closed afterwards."""

    async def go() -> T:
        pool = await connect_pool(require_database(url), min_size=1, max_size=2)
        try:
            return await work(pool)
        finally:
            await pool.close()

    return run_async(go())


@click.group(cls=TokenProxyGroup)
def tickets() -> None:
    """Tickets: who may see which customers, until when."""


@tickets.command("add")
@click.argument("ticket_id")
@click.option("--agent", required=True, help="The agent the ticket is assigned to.")
@click.option(
    "--customer", "customers", multiple=True, required=True, help="A customer id (repeatable)."
)
@click.option(
    "--status",
    type=click.Choice([s.value for s in TicketStatus]),
    default=TicketStatus.OPEN.value,
    show_default=True,
)
@click.option("--expires-in", default="8h", show_default=True, help="Like 30m, 8h, 2d.")
@click.option("--expires-at", help="An ISO 8601 time with a zone (instead of --expires-in).")
@database_option
def tickets_add(
    ticket_id: str,
    agent: str,
    customers: tuple[str, ...],
    status: str,
    expires_in: str,
    expires_at: str | None,
    database_url: str | None,
) -> None:
    """Create or update TICKET_ID."""
    when = admin_ops.parse_time(expires_at) if expires_at else None
    span = admin_ops.parse_span(expires_in)
    with_pool(
        database_url,
        lambda pool: admin_ops.tickets_add(
            pool,
            ticket_id=ticket_id,
            agent=agent,
            customer_ids=list(customers),
            status=status,
            expires_at=when,
            expires_in=span,
        ),
    )


@tickets.command("close")
@click.argument("ticket_id")
@database_option
def tickets_close(ticket_id: str, database_url: str | None) -> None:
    """Close TICKET_ID: every proxy stops revealing under it at once."""
    with_pool(database_url, lambda pool: admin_ops.tickets_close(pool, ticket_id))


@tickets.command("list")
@click.option("--status", type=click.Choice([s.value for s in TicketStatus]))
@click.option("--agent")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@database_option
def tickets_list(
    status: str | None, agent: str | None, as_json: bool, database_url: str | None
) -> None:
    """List tickets."""
    with_pool(
        database_url,
        lambda pool: admin_ops.tickets_list(pool, status=status, agent=agent, as_json=as_json),
    )
