"""``tokenproxy admin``: what the admin API needs from the command line."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sys

import click

from proxy.cli.common import CommandError, TokenProxyGroup

MIN_TOKEN_LENGTH = 16
# RFC 6750 b64token: what an Authorization: Bearer header can carry as is.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*\Z")


@click.group(cls=TokenProxyGroup)
def admin() -> None:
    """The admin API (admin.listen): bearer tokens."""


@admin.command("hash-token")
@click.option(
    "--name",
    default="helpdesk-webhook",
    show_default=True,
    help="The token's name: the actor the audit log records for its changes.",
)
@click.option(
    "--generate",
    is_flag=True,
    help="Make a new random token (printed on the first line) instead of reading one.",
)
def hash_token(name: str, generate: bool) -> None:
    """Print the [admin] tokens entry of a bearer token: its name and SHA-256.

    The token is read from stdin (one line; on a terminal, asked for without echo), or made
    with --generate. Only the hash goes in the config; the token goes to the client.
    """
    if not name or any(not c.isprintable() for c in name):
        raise CommandError("--name must be printable text, like helpdesk-webhook")
    if generate:
        token = secrets.token_urlsafe(32)
    elif sys.stdin.isatty():
        token = click.prompt("admin token", hide_input=True, err=True).strip()
    else:
        token = sys.stdin.readline().strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise CommandError(
            f"the token is shorter than {MIN_TOKEN_LENGTH} characters: use a random one "
            "(--generate makes one)"
        )
    if not _B64TOKEN.match(token):
        raise CommandError(
            "the token has characters a Bearer header cannot carry: use letters, digits "
            "and -._~+/ (--generate makes one)"
        )
    digest = hashlib.sha256(token.encode("ascii")).hexdigest()
    if generate:
        click.echo(token)
        click.echo("# the token above goes to the client; only this line goes in the config:",
                   err=True)
    click.echo(f"{{ name = {json.dumps(name, ensure_ascii=False)}, sha256 = \"{digest}\" }},")
