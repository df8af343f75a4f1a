"""The ``tokenproxy`` command: the root group ``main``; each command group is a module here.

Groups are imported when they are invoked (or listed by ``--help``), not at start-up: the
proxy's modules pull in aiohttp, asyncpg and the tokenizers, and ``tokenproxy keys list``
need not wait for them.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from proxy import __version__
from proxy.cli.common import LOG_LEVELS, TokenProxyGroup, configure_logging

# command name -> "module:attribute" under proxy.cli
COMMANDS = {
    "keys": "keys:keys",
    "tokenize": "tokens:tokenize",
    "detokenize": "tokens:detokenize",
    "db": "db:db",
    "tickets": "tickets:tickets",
    "audit": "audit:audit",
    "serve": "serve:serve",
    "config": "config:config",
    "admin": "admin:admin",
    "demo": "demo:demo",
}


class LazyGroup(TokenProxyGroup):
    """The root group: subcommands resolved from :data:`COMMANDS` on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attribute = target.split(":")
        command: Any = getattr(importlib.import_module(f"proxy.cli.{module}"), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


__all__ = ["COMMANDS", "main"]
