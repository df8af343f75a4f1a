"""The ``tokenproxy`` command: the root group ``main``; each command group is a module here."""

from __future__ import annotations

import click

from proxy import __version__
from proxy.cli.audit import audit
from proxy.cli.common import LOG_LEVELS, TokenProxyGroup, configure_logging
from proxy.cli.db import db
from proxy.cli.demo import demo
from proxy.cli.keys import keys
from proxy.cli.tickets import tickets
from proxy.cli.tokens import detokenize, tokenize


@click.group(cls=TokenProxyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="tokenproxy")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="warning",
    envvar="TOKENPROXY_LOG_LEVEL",
    show_default=True,
    show_envvar=True,
    help="How much to log (to stderr).",
)
def main(log_level: str) -> None:
    """tokenproxy: a reverse proxy that replaces customer names and phone numbers with tokens."""
    configure_logging(log_level)


main.add_command(keys)
main.add_command(db)
main.add_command(tickets)
main.add_command(audit)
main.add_command(tokenize)
main.add_command(detokenize)
main.add_command(demo)

__all__ = ["main"]
