"""``tokenproxy config``: check a configuration file."""

from __future__ import annotations

from pathlib import Path

import click

from proxy.cli.common import TokenProxyGroup
from proxy.config import check_exit_code, check_file, format_problems


@click.group(cls=TokenProxyGroup)
def config() -> None:
    """The configuration file (see tokenproxy.example.toml)."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def config_check(ctx: click.Context, file: Path) -> None:
    """Check FILE: every problem with its line and a fix. Exit status 0 clean, 1 problems.

    Environment overrides (DATABASE_URL, TOKENPROXY_KEYS) are not applied: the file is
    checked as written.
    """
    problems = check_file(file)
    if problems:
        click.echo(format_problems(problems))
        click.echo(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in {file}",
                   err=True)
    else:
        click.echo(f"{file}: ok")
    ctx.exit(check_exit_code(problems))
