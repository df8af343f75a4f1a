"""``tokenproxy audit``: the hash-chained audit log, for the security team."""

from __future__ import annotations

import contextlib

import click

from proxy.cli.common import TokenProxyGroup, database_option
from proxy.cli.tickets import with_pool
from proxy.store import admin_ops


@click.group(cls=TokenProxyGroup)
def audit() -> None:
    """Read and verify the audit log."""


@audit.command("verify")
@click.option(
    "--anchor",
    "anchors",
    multiple=True,
    metavar="SEQ:HASH",
    help="A chain head kept outside the database (printed by `audit tail`); repeatable.",
)
@click.option("--progress/--no-progress", default=None, help="A progress bar (default: on a tty).")
@database_option
def audit_verify(anchors: tuple[str, ...], progress: bool | None, database_url: str | None) -> None:
    """Check the whole chain; report the first row modified, deleted, inserted or reordered.

    Exit status 0 when the chain holds, 1 when it does not.
    """
    status = with_pool(
        database_url,
        lambda pool: admin_ops.audit_verify(pool, anchors=anchors, progress=progress),
    )
    raise SystemExit(status)


@audit.command("tail")
@click.option("-n", "count", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new entries until Ctrl-C.")
@database_option
def audit_tail(count: int, follow: bool, database_url: str | None) -> None:
    """The newest entries as JSON lines, and the chain head as an anchor (on stderr)."""
    with contextlib.suppress(KeyboardInterrupt):
        with_pool(
            database_url, lambda pool: admin_ops.audit_tail(pool, n=count, follow=follow)
        )


@audit.command("export")
@click.option("--since", required=True, help="ISO 8601 time with a zone, or a span like 24h.")
@click.option("--until", help="ISO 8601 time with a zone, or a span like 1h (default: now).")
@database_option
def audit_export(since: str, until: str | None, database_url: str | None) -> None:
    """Entries from --since (to --until) as JSON lines."""
    with_pool(
        database_url, lambda pool: admin_ops.audit_export(pool, since=since, until=until)
    )
