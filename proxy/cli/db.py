"""``tokenproxy db``: the state database's schema."""

from __future__ import annotations

import click

from proxy.cli.common import TokenProxyGroup, database_option, require_database, run_async
from proxy.store.db import connect_pool
from proxy.store.migrations import check_schema, latest_version, migrate


@click.group(cls=TokenProxyGroup)
def db() -> None:
    """The state database: registry, vault, tickets and audit log."""


@db.command("migrate")
@database_option
def db_migrate(database_url: str | None) -> None:
    """Apply the numbered migrations not yet applied (safe to run from several proxies)."""

    async def go() -> None:
        pool = await connect_pool(require_database(database_url), require_schema=False)
        try:
            report = await migrate(pool)
        finally:
            await pool.close()
        applied = ", ".join(f"{m.version} ({m.name})" for m in report.applied) or "none"
        click.echo(f"schema at version {report.version}; applied now: {applied}")

    run_async(go())


@db.command("check")
@database_option
def db_check(database_url: str | None) -> None:
    """Check that the schema is the one this tokenproxy knows (exit 2 with a fix if not)."""

    async def go() -> None:
        pool = await connect_pool(require_database(database_url), require_schema=False)
        try:
            version = await check_schema(pool)
        finally:
            await pool.close()
        click.echo(f"schema at version {version} (this tokenproxy knows {latest_version()})")

    run_async(go())
