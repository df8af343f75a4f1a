"""``tokenproxy tokenize`` and ``tokenproxy detokenize``: values one per line, in order.

Without ``--database``, tokens come from the keys alone: FF1 tokens are deterministic and
detokenize anywhere the keys are; short values (below FF1's 10^6 domain) get a random vault
token that only this run knows, and a warning says so. With ``--database`` the registry and
vault in PostgreSQL are used, as the proxy does: short values keep one token, and
``detokenize`` resolves only tokens the proxy really issued.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from proxy import keystore
from proxy.cli.common import CommandError, database_option, keyring_options, load_kek, run_async
from proxy.crypto.engine import TokenEngine
from proxy.crypto.keyring import Keyring
from proxy.crypto.registry import AssumedRegistry, MemoryRegistry
from proxy.crypto.tokens import Kind
from proxy.crypto.vault import MemoryVault
from proxy.errors import TokenProxyError
from proxy.store.durable import open_store

KINDS = click.Choice([k.value for k in Kind])


def _read_lines() -> list[str]:
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(
            f"stdin is not UTF-8 (byte {exc.start}): convert it, e.g. with iconv"
        ) from None
    return text.splitlines()


def _run_lines(lines: list[str], convert: Callable[[str], str]) -> list[str]:
    out = []
    for number, line in enumerate(lines, 1):
        try:
            out.append(convert(line))
        except TokenProxyError as exc:
            raise TokenProxyError(f"line {number}: {exc}") from exc
    return out


def _print_lines(lines: list[str]) -> None:
    if lines:
        click.echo("\n".join(lines))


def _keyring(keys_dir: Path, kek_file: Path | None) -> Keyring:
    return keystore.load_keyring(keys_dir, load_kek(kek_file, keys_dir))


def _region_option(f: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--region",
        default="ID",
        show_default=True,
        envvar="TOKENPROXY_REGION",
        help="Region of phone numbers written without a +country code.",
    )(f)


@click.command()
@click.option("--kind", type=KINDS, required=True, help="The field kind of every line.")
@_region_option
@keyring_options
@database_option
def tokenize(
    kind: str, region: str, keys_dir: Path, kek_file: Path | None, database_url: str | None
) -> None:
    """Read values from stdin, one per line; print their tokens, one per line, in order."""
    keyring = _keyring(keys_dir, kek_file)
    lines = _read_lines()
    if database_url:
        _print_lines(run_async(_tokenize_with_store(database_url, keyring, region, kind, lines)))
        return
    vault = MemoryVault()
    engine = TokenEngine.standard(keyring, vault, MemoryRegistry(), default_region=region)
    convert = engine.tokenize_text if kind == Kind.TEXT else (
        lambda v: engine.tokenize(kind, v)
    )
    _print_lines(_run_lines(lines, convert))
    if len(vault):
        click.echo(
            f"warning: {len(vault)} short value(s) got random vault tokens that only this run "
            "knows; use --database to keep them resolvable",
            err=True,
        )


@click.command()
@click.option("--kind", type=KINDS, required=True, help="The field kind of every line.")
@click.option(
    "--key-version",
    type=click.IntRange(min=1),
    help="The key version the tokens were made under (default: the active one).",
)
@_region_option
@keyring_options
@database_option
def detokenize(
    kind: str,
    key_version: int | None,
    region: str,
    keys_dir: Path,
    kek_file: Path | None,
    database_url: str | None,
) -> None:
    """Read tokens from stdin, one per line; print their values, one per line, in order.

    Every line must be a token: the first line that is not fails the command, and nothing
    is printed. With --database, only tokens the proxy issued are tokens, each resolved
    under the key version that made it; without, every line is taken for a token of
    --key-version's first key (a token made under a version's alternate key, which a
    value takes when the first one's token was another version's, needs --database).
    """
    keyring = _keyring(keys_dir, kek_file)
    if database_url:
        if kind == Kind.TEXT:
            raise CommandError(
                "detokenize --kind text needs the record's names; resolve notes through the "
                "proxy, or detokenize without --database to resolve their phone numbers"
            )
        lines = _read_lines()
        _print_lines(run_async(_detokenize_with_store(database_url, keyring, region, kind, lines)))
        return
    version = key_version or keyring.active.version
    keyring.get(version)  # a retired or unknown version is a clear error up front
    engine = TokenEngine.standard(
        keyring, MemoryVault(), AssumedRegistry(version), default_region=region
    )
    _print_lines(_run_lines(_read_lines(), lambda t: engine.detokenize(kind, t)))


async def _tokenize_with_store(
    url: str, keyring: Keyring, region: str, kind: str, lines: list[str]
) -> list[str]:
    store = await open_store(url, start=False)
    try:
        engine = TokenEngine.standard(keyring, store.vault, store.registry, default_region=region)
        if kind != Kind.TEXT:
            return await store.tokenize(engine, kind, lines)
        tokens = _run_lines(lines, engine.tokenize_text)
        await store.flush()
        return tokens
    finally:
        await store.close()


async def _detokenize_with_store(
    url: str, keyring: Keyring, region: str, kind: str, lines: list[str]
) -> list[str]:
    store = await open_store(url, start=False)
    try:
        engine = TokenEngine.standard(keyring, store.vault, store.registry, default_region=region)
        resolved = await store.resolve(engine, kind, lines)
    finally:
        await store.close()
    for number, result in enumerate(resolved, 1):
        if not result.was_token:
            raise CommandError(f"line {number}: not a {kind} token issued by this proxy")
    return [r.value for r in resolved]


__all__ = ["detokenize", "tokenize"]
