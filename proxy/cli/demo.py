"""``tokenproxy demo``: the whole story on a real database, with nothing installed.

Starts an embedded PostgreSQL, seeds a support database of realistic customers, generates
a KEK and keyring for the demo only, runs a sample support API over the database and
tokenproxy in front of it, then walks through the story (see :mod:`proxy.demo.story`),
each step checked. Without ``--once`` it then stays up (URLs, psql, curl examples) until
Ctrl-C; with ``--once`` it exits, non-zero if a step did not hold. Everything lives in one
temporary directory, removed at exit, and nothing is left running.
"""

from __future__ import annotations

import asyncio

import click


@click.command()
@click.option("--once", is_flag=True, help="Run the story and exit (non-zero if a step failed).")
@click.option("--http-port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="tokenproxy's HTTP port (stay-up mode; 0: any free port).")
@click.option("--admin-port", type=click.IntRange(0, 65535), default=8081, show_default=True,
              help="The admin API's port (stay-up mode).")
@click.option("--api-port", type=click.IntRange(0, 65535), default=9000, show_default=True,
              help="The sample support API's port (stay-up mode).")
@click.option("--pg-port", type=click.IntRange(0, 65535), default=6432, show_default=True,
              help="tokenproxy's PostgreSQL port (stay-up mode).")
@click.option("--customers", type=click.IntRange(5, 1_000_000), default=10_000, hidden=True)
def demo(
    once: bool, http_port: int, admin_port: int, api_port: int, pg_port: int, customers: int
) -> None:
    """Run tokenproxy in front of a sample support database and show what agents see."""
    from proxy.demo.story import DemoError, Ports, run_demo
    from proxy.embedded_pg import EmbeddedPostgresError

    try:
        status = asyncio.run(
            run_demo(once=once, ports=Ports(http_port, admin_port, api_port, pg_port),
                     customers=customers)
        )
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    except EmbeddedPostgresError as exc:
        raise click.ClickException(f"cannot start the embedded PostgreSQL: {exc}") from None
    except KeyboardInterrupt:
        status = 130
    if status:
        raise SystemExit(status)
