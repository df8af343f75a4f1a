"""``tokenproxy serve``: run the proxy (HTTP and PostgreSQL front ends, admin API) on uvloop."""

from __future__ import annotations

import os
from pathlib import Path

import click

from proxy.admin.runtime import Runtime, RuntimeOptions
from proxy.cli.common import configure_logging, kek_file_option, run_async
from proxy.config import load_config
from proxy.http.app import tune_gc

CONFIG_ENV = "TOKENPROXY_CONFIG"


@click.command("serve")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("tokenproxy.toml"),
    envvar=CONFIG_ENV,
    show_default=True,
    show_envvar=True,
    help="The configuration file (`tokenproxy config check` checks it).",
)
@click.option(
    "--keys",
    "keys_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The keys directory (default: keys.dir of the config, or $TOKENPROXY_KEYS).",
)
@kek_file_option
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds to let requests in flight finish after SIGTERM.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    config_path: Path,
    keys_dir: Path | None,
    kek_file: Path | None,
    drain_timeout: float,
) -> None:
    """Run the proxy: the HTTP front end on http.listen, the admin API on admin.listen.

    SIGHUP reloads the keyring (keys/, with the KEK given at start) and the policy (the
    config file); SIGTERM or SIGINT drains: requests in flight finish, queued tokens are
    written to the database, then the process exits (status 1 if rows could not be
    written). The state database may be down at start: tokenization goes on and reveals are
    denied until it answers.
    """
    config = load_config(config_path)
    level = config.logging.level
    root = ctx.find_root()
    if root.get_parameter_source("log_level") not in (
        click.core.ParameterSource.DEFAULT,
        None,
    ):
        level = root.params.get("log_level") or level
    configure_logging(level, config.logging.format)
    options = RuntimeOptions(
        config_path=config_path,
        keys_dir=keys_dir,
        kek_file=kek_file,
        env=os.environ,
        config=config,
        drain_timeout=drain_timeout,
    )

    async def main() -> int:
        runtime = await Runtime.open(options)
        tune_gc()  # after start-up: what is loaded now is frozen out of collection
        return await runtime.run()

    ctx.exit(run_async(main()))
