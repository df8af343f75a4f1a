"""``tokenproxy keys``: data keys in the keys directory, wrapped under a KEK."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from proxy import keystore
from proxy.cli.common import (
    NEW_KEK_FILE_ENV,
    TokenProxyGroup,
    keyring_options,
    keys_dir_option,
    load_kek,
)
from proxy.crypto.keyring import KeyState


@click.group(cls=TokenProxyGroup)
def keys() -> None:
    """Data keys in the keys directory, wrapped under a key-encryption key (KEK).

    The KEK is 32 random bytes given as the base64 in $TOKENPROXY_KEK or with --kek-file,
    and never stored in the keys directory.
    """


@keys.command("generate-kek")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write it to this new file (mode 0600) instead of printing it.",
)
@keys_dir_option
def keys_generate_kek(out: Path | None, keys_dir: Path) -> None:
    """Print a new random KEK, in base64, for TOKENPROXY_KEK or a --kek-file."""
    kek = keystore.generate_kek()
    if out is None:
        click.echo(keystore.encode_kek(kek))
        return
    keystore.write_kek_file(out, kek, keys_dir=keys_dir)
    click.echo(f"wrote a new KEK (id {keystore.kek_id(kek)}) to {out}")


@keys.command("init")
@keyring_options
def keys_init(keys_dir: Path, kek_file: Path | None) -> None:
    """Create the keys directory and its first data key (version 1, active)."""
    change = keystore.init_keyring(keys_dir, load_kek(kek_file, keys_dir))
    click.echo(f"created v{change.created} (active) in {keys_dir}, under KEK id {change.kek_id}")


@keys.command("list")
@keyring_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def keys_list(keys_dir: Path, kek_file: Path | None, as_json: bool) -> None:
    """List the key versions: state, creation time and KEK id (never any key material)."""
    infos = keystore.list_keys(keys_dir, load_kek(kek_file, keys_dir))
    if as_json:
        click.echo(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    rows = [("VERSION", "STATE", "CREATED", "KEK ID")]
    stale = False
    for i in infos:
        state = str(i.state)
        if i.state is not i.stored_state:
            state += "*"
            stale = True
        rows.append((str(i.version), state, i.created_at, i.kek_id))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    if stale:
        click.echo(
            "* the file still says active (an interrupted `keys rotate`); the next "
            "`keys rotate` or `keys retire` rewrites it"
        )
    if not any(i.state is KeyState.ACTIVE for i in infos):
        click.echo(
            f"warning: no key is active: the newest key file in {keys_dir}/ was probably "
            "deleted; restore it from a backup",
            err=True,
        )


@keys.command("rotate")
@keyring_options
def keys_rotate(keys_dir: Path, kek_file: Path | None) -> None:
    """Make a new active data key; the previous active one becomes decrypt-only."""
    change = keystore.rotate_keys(keys_dir, load_kek(kek_file, keys_dir))
    demoted = ", ".join(f"v{v}" for v in change.demoted)
    tail = f"; {demoted} decrypt-only" if demoted else ""
    click.echo(f"rotated: v{change.created} is active{tail}")


@keys.command("retire")
@click.argument("version", type=click.IntRange(min=1))
@keyring_options
def keys_retire(version: int, keys_dir: Path, kek_file: Path | None) -> None:
    """Retire a decrypt-only VERSION: its tokens can no longer be resolved. Not the active one."""
    change = keystore.retire_key(keys_dir, load_kek(kek_file, keys_dir), version)
    if change.retired:
        click.echo(f"retired v{version}: tokens made under it can no longer be resolved")
    else:
        click.echo(f"v{version} was already retired; nothing changed")


@keys.command("rewrap")
@keyring_options
@click.option(
    "--new-kek-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=NEW_KEK_FILE_ENV,
    show_envvar=True,
    help=f"A file (mode 0600) holding the new KEK. Default: the base64 in ${keystore.NEW_KEK_ENV}.",
)
def keys_rewrap(keys_dir: Path, kek_file: Path | None, new_kek_file: Path | None) -> None:
    """Rewrap every data key under a new KEK. No data key, and so no token, changes.

    The current KEK comes from --kek-file or $TOKENPROXY_KEK, the new one from --new-kek-file
    or $TOKENPROXY_NEW_KEK. If a rewrap was interrupted, run it again with the same two KEKs.
    """
    kek = load_kek(kek_file, keys_dir)
    new_kek = keystore.resolve_kek(
        new_kek_file,
        os.environ,
        keys_dir=keys_dir,
        env_var=keystore.NEW_KEK_ENV,
        option="--new-kek-file",
    )
    change = keystore.rewrap_keys(keys_dir, kek, new_kek)
    if not change.rewrapped:
        click.echo(f"nothing to rewrap: every key is already under KEK id {change.kek_id}")
        return
    versions = ", ".join(f"v{v}" for v in change.rewrapped)
    click.echo(
        f"rewrapped {versions} under KEK id {change.kek_id} (was {change.previous_kek_id}); "
        "use the new KEK from now on"
    )
