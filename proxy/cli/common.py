"""What every ``tokenproxy`` command shares: error handling, logging, key options.

Errors: a :class:`~proxy.errors.TokenProxyError` from any command prints
``error: <message>`` to stderr and exits 2, with no traceback. Usage errors exit 2 too
(click's own). Success exits 0. No command prints key material, except
``keys generate-kek``, whose purpose is to print a new KEK.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from proxy import keystore
from proxy.errors import TokenProxyError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

EXIT_ERROR = 2
KEYS_ENV = "TOKENPROXY_KEYS"
KEK_FILE_ENV = "TOKENPROXY_KEK_FILE"
NEW_KEK_FILE_ENV = "TOKENPROXY_NEW_KEK_FILE"
LOG_LEVELS = ("debug", "info", "warning", "error")


# ----------------------------------------------------------------------- shared pieces


class CommandError(click.ClickException):
    """A refusal to report as ``error: <message>`` on stderr, exit code 2."""

    exit_code = EXIT_ERROR

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", file=file or sys.stderr)


class TokenProxyGroup(click.Group):
    """A click group that turns the project's errors into :class:`CommandError`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TokenProxyError as exc:
            raise CommandError(str(exc)) from exc


def configure_logging(level: str, fmt: str = "auto") -> None:
    """structlog (and stdlib logging) to stderr at ``level``: ``fmt`` "json", "console", or
    "auto" (console on a tty, JSON otherwise)."""
    import structlog  # here, not at the top: keeps `tokenproxy keys ...` quick to start

    numeric = logging.getLevelNamesMapping()[level.upper()]
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s", force=True)
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def keys_dir_option(f: F) -> F:
    """``--keys DIR``: the keys directory (default ``keys``, env ``TOKENPROXY_KEYS``)."""
    return click.option(
        "--keys",
        "keys_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("keys"),
        envvar=KEYS_ENV,
        show_default=True,
        show_envvar=True,
        help="The keys directory.",
    )(f)


def kek_file_option(f: F) -> F:
    """``--kek-file FILE``: the KEK from a file instead of ``TOKENPROXY_KEK``."""
    return click.option(
        "--kek-file",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar=KEK_FILE_ENV,
        show_envvar=True,
        help=(
            f"A file (mode 0600) holding the key-encryption key: 32 raw bytes or their base64. "
            f"Default: the base64 in ${keystore.KEK_ENV}."
        ),
    )(f)


def keyring_options(f: F) -> F:
    """``--keys`` and ``--kek-file``: what every command that loads the keyring takes."""
    return keys_dir_option(kek_file_option(f))


def load_kek(kek_file: Path | None, keys_dir: Path) -> bytes:
    """The KEK from ``--kek-file`` or ``TOKENPROXY_KEK``, or a clear error."""
    return keystore.resolve_kek(kek_file, os.environ, keys_dir=keys_dir)


def database_option(f: F) -> F:
    """``--database URL``: the state database (env ``DATABASE_URL``)."""
    return click.option(
        "--database",
        "database_url",
        envvar="DATABASE_URL",
        show_envvar=True,
        metavar="URL",
        help="PostgreSQL URL of the state database (registry, vault, tickets, audit).",
    )(f)


def require_database(url: str | None) -> str:
    """The database URL, or a clear error saying how to give one."""
    if not url:
        raise CommandError("no database: pass --database URL or set DATABASE_URL")
    return url


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine on a fresh event loop (uvloop where available)."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coro)
