"""The PostgreSQL stack of the pg scenarios: one seeded database, three ways to reach it.

- **direct**: the harness's embedded PostgreSQL itself;
- **pgbouncer**: Debian's PgBouncer in *session* pooling (one server connection per client
  for the life of the client, as tokenproxy relays; ``pgbench -M prepared`` needs it with
  PgBouncer 1.18), run as ``nobody`` (it refuses root), installed with apt-get when missing
  and running as root, like wrk;
- **tokenproxy**: ``tokenproxy serve`` with ``[pg]`` on, the tables' ``full_name`` (name)
  and ``phone`` (phone) protected, a fresh keyring under a fresh KEK, and a token cache
  large enough for every value of the benchmark (``[tokens] cache_size``).

Every client connects as the superuser ``postgres`` (trust authentication): to tokenproxy
that is the agent, with no ticket, so every protected value leaves as a token.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from loadtest import procstat
from loadtest.harness import Env, Proc, Target, free_port, python_argv, tokenproxy_argv
from loadtest.scenarios.http import config_toml

PGBENCH = "/usr/bin/pgbench"
NOBODY = 65534  # uid and gid PgBouncer runs as (it refuses root)
CONNECT_TIMEOUT = 60.0  # seconds for a front end to answer a query
SEED_TIMEOUT = 600.0  # seconds for seeding (COPY, CREATE TABLE AS, VACUUM)
TOKEN_CACHE = 1_000_000  # tokenproxy's [tokens] cache_size: every value of a run fits
COLUMNS = {"full_name": "name", "phone": "phone"}  # the protected columns and their kinds


# -------------------------------------------------------------------------- the tools


def _apt_install(package: str, found: Callable[[], str | None]) -> str | None:
    """``apt-get install package`` when running as root (bounded); then what ``found`` finds."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    print(f"{package} is missing: installing it with apt-get", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    for argv in (install, ["apt-get", "update"], install):  # update only if needed
        if found():
            break
        subprocess.run(argv, env=env, timeout=600, check=False, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return found()


def find_pgbouncer() -> str | None:
    """pgbouncer on PATH or in /usr/sbin (Debian's place for it)."""
    found = shutil.which("pgbouncer")
    if found is None and os.access("/usr/sbin/pgbouncer", os.X_OK):
        found = "/usr/sbin/pgbouncer"
    return found


def ensure_pgbouncer() -> str:
    """The path of pgbouncer; installed with apt-get when missing and running as root."""
    found = find_pgbouncer() or _apt_install("pgbouncer", find_pgbouncer)
    if found is None:
        raise SystemExit("pgbouncer is not installed: run `sudo apt-get install pgbouncer`"
                         " (Debian, Ubuntu) and try again")
    return found


def find_pgbench() -> str | None:
    """/usr/bin/pgbench when it runs (Debian's wrapper needs a client package behind it)."""
    exe = PGBENCH if os.access(PGBENCH, os.X_OK) else shutil.which("pgbench")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "--version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return exe if done.returncode == 0 else None


def ensure_pgbench() -> str:
    found = find_pgbench()
    if found is None:
        raise SystemExit("pgbench is not installed: run `sudo apt-get install postgresql-15`"
                         " (it ships /usr/bin/pgbench) and try again")
    return found


# ----------------------------------------------------------------------------- seeding


async def _seed(dsn: str, customers: int, big_rows: int, distinct: int) -> None:
    import asyncpg

    from proxy.demo.seed import generate

    people = generate(customers)
    conn = await asyncpg.connect(dsn, timeout=30, command_timeout=SEED_TIMEOUT)
    try:
        await conn.execute("CREATE TABLE customers (id bigint PRIMARY KEY,"
                           " full_name text NOT NULL, phone text NOT NULL)")
        await conn.copy_records_to_table(
            "customers", records=[(c.id, c.full_name, c.phone) for c in people],
            columns=["id", "full_name", "phone"])
        await conn.execute("VACUUM ANALYZE customers")
        if big_rows:
            await conn.execute(
                "CREATE TABLE big AS SELECT g::bigint AS id, c.full_name, c.phone"
                f" FROM generate_series(1, {int(big_rows)}) g"
                f" JOIN customers c ON c.id = 1 + (g - 1) % {int(distinct)}")
            await conn.execute("VACUUM ANALYZE big")  # hint bits set: no writes when read
    finally:
        await conn.close()


def seed(dsn: str, customers: int, *, big_rows: int = 0, distinct: int = 10_000) -> float:
    """``customers`` (id, full_name, phone) of ``proxy.demo.seed``, and when ``big_rows``
    a table ``big`` of that many rows repeating the first ``distinct`` customers' values;
    the seconds it took."""
    began = time.monotonic()
    asyncio.run(asyncio.wait_for(_seed(dsn, customers, big_rows, distinct), SEED_TIMEOUT))
    return time.monotonic() - began


# ------------------------------------------------------------------------ the processes


class Attached(Proc):
    """A process the harness did not start (the embedded PostgreSQL): a pid, no control."""

    def __init__(self, name: str, pid: int, env: Env) -> None:
        super().__init__(name, [], role="other", env=env)
        self._pid = pid

    @property
    def pid(self) -> int:
        return self._pid

    def start(self) -> Proc:
        return self

    def alive(self) -> bool:
        return Path(f"/proc/{self._pid}").exists()

    def stop(self) -> None:
        """Not ours to stop."""


def with_port(dsn: str, port: int) -> str:
    """``dsn`` with the host 127.0.0.1 and ``port``, user and database kept."""
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}"))


def wait_query(proc: Proc, dsn: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Until ``SELECT 1`` through ``dsn`` answers (bounded), while ``proc`` lives."""
    import psycopg

    deadline = time.monotonic() + timeout
    problem = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise SystemExit(f"{proc.name} exited during start:\n{proc.tail()}")
        try:
            with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.Error as exc:
            problem = type(exc).__name__
        time.sleep(0.2)
    raise SystemExit(f"{proc.name}: no answer on {dsn} after {timeout:.0f} s ({problem}):\n"
                     f"{proc.tail()}")


_PGBOUNCER_INI = """;; written by python -m loadtest, removed at exit
[databases]
{db} = host=127.0.0.1 port={pg_port} dbname={db} user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 80
max_db_connections = 80
ignore_startup_parameters = extra_float_digits,options
log_connections = 0
log_disconnections = 0
stats_period = 3600
"""


class PgStack:
    """A database seeded for one scenario, PgBouncer and tokenproxy in front of it (and,
    when asked, the parsing relay: `loadtest.pg_relay`)."""

    def __init__(self, env: Env, name: str, tables: Sequence[str] = ("customers",)) -> None:
        self.env, self.name = env, name
        pg = env.postgres()
        self.dir = env.tmp / name
        self.dir.mkdir()
        self.dir.chmod(0o755)  # PgBouncer (nobody) reads its config here
        self.dsn = env.database(name.replace("-", "_"))
        self.db = urlsplit(self.dsn).path.lstrip("/")
        self.pg_port = pg.port
        self.tables = tuple(tables)
        pid = pg.server_pid
        assert pid is not None, "the embedded PostgreSQL is not running"
        self.postgres = Attached("postgres", pid, env)
        self.pgbouncer: Proc | None = None
        self.tokenproxy: Proc | None = None
        self.relay: Proc | None = None
        self.pgbouncer_port, self.tokenproxy_port = free_port(), free_port()
        self.relay_port = free_port()

    def start(self, relay: bool = False) -> None:
        """PgBouncer and tokenproxy (and the parsing relay if ``relay``), each answering a
        query before this returns."""
        self._start_pgbouncer()
        self._start_tokenproxy()
        assert self.pgbouncer is not None and self.tokenproxy is not None
        if relay:
            self.relay = self.env.spawn(
                f"{self.name}-relay",
                python_argv("_serve", "pg-relay", str(self.relay_port), str(self.pg_port)),
                role="proxy",
            )
            wait_query(self.relay, self.relay_dsn)
        wait_query(self.pgbouncer, self.pgbouncer_dsn)
        wait_query(self.tokenproxy, self.tokenproxy_dsn)

    @property
    def relay_dsn(self) -> str:
        return with_port(self.dsn, self.relay_port)

    def relay_target(self) -> Target:
        """The parsing relay (`start` with ``relay``)."""
        assert self.relay is not None
        return Target("python-relay", self.relay_dsn, self.relay)

    @property
    def pgbouncer_dsn(self) -> str:
        return with_port(self.dsn, self.pgbouncer_port)

    @property
    def tokenproxy_dsn(self) -> str:
        return with_port(self.dsn, self.tokenproxy_port)

    def _start_pgbouncer(self) -> None:
        exe = ensure_pgbouncer()
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(_PGBOUNCER_INI.format(db=self.db, pg_port=self.pg_port,
                                             port=self.pgbouncer_port, dir=self.dir))
        (self.dir / "userlist.txt").write_text('"postgres" ""\n')
        for path in (ini, self.dir / "userlist.txt"):
            path.chmod(0o644)
        argv = [exe, str(ini)]
        if os.geteuid() == 0:  # setpriv execs: the pid stays PgBouncer's
            argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                    *argv]
        self.pgbouncer = self.env.spawn(f"{self.name}-pgbouncer", argv, role="proxy")

    def _start_tokenproxy(self) -> None:
        from proxy import keystore

        state_dsn = self.env.database(f"{self.name.replace('-', '_')}_state")
        keys_dir, kek_file = self.dir / "keys", self.dir / "kek"
        kek = keystore.generate_kek()
        keystore.init_keyring(keys_dir, kek)
        keystore.write_kek_file(kek_file, kek, keys_dir=keys_dir)
        self.admin_url = f"http://127.0.0.1:{free_port()}"
        text = config_toml(
            keys_dir=keys_dir, dsn=state_dsn, listen=f"127.0.0.1:{free_port()}",
            upstream=f"http://127.0.0.1:{free_port()}",  # the HTTP side is not used here
            admin=self.admin_url.removeprefix("http://"),
        )
        text += f"""
[tokens]
cache_size = {TOKEN_CACHE}

[pg]
enabled = true
listen = "127.0.0.1:{self.tokenproxy_port}"
upstream = "127.0.0.1:{self.pg_port}"
catalog_user = "postgres"
"""
        columns = ", ".join(f'{c} = "{k}"' for c, k in COLUMNS.items())
        for table in self.tables:
            text += (f'\n[[pg.tables]]\ntable = "public.{table}"\ncustomer_id = "id"\n'
                     f"columns = {{ {columns} }}\n")
        config = self.dir / "tokenproxy.toml"
        config.write_text(text)
        config.chmod(0o600)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TOKENPROXY_")}
        self.tokenproxy = self.env.spawn(
            f"{self.name}-tokenproxy",
            tokenproxy_argv("serve", "--config", str(config), "--kek-file", str(kek_file)),
            role="proxy",
            environ={**clean, "TOKENPROXY_COOKIE_SECRET": secrets.token_urlsafe(32)},
        )

    def targets(self) -> tuple[Target, Target, Target]:
        """(pgbouncer, tokenproxy, direct)."""
        assert self.pgbouncer is not None and self.tokenproxy is not None
        return (Target("pgbouncer", self.pgbouncer_dsn, self.pgbouncer),
                Target("tokenproxy", self.tokenproxy_dsn, self.tokenproxy),
                Target("direct", self.dsn, self.postgres, measured=False))

    def check_tokenized(self, table: str = "customers", row_id: int = 1) -> None:
        """One row through each target: tokenproxy's protected values differ from the
        database's and keep their length, PgBouncer's equal them (no value is printed)."""
        import psycopg

        query = f"SELECT full_name, phone FROM {table} WHERE id = %s"
        seen: dict[str, tuple[str, str]] = {}
        for name, dsn in (("direct", self.dsn), ("pgbouncer", self.pgbouncer_dsn),
                          ("tokenproxy", self.tokenproxy_dsn)):
            with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
                row = conn.execute(query, (row_id,)).fetchone()
            assert row is not None, f"{table} has no row {row_id}"
            seen[name] = (str(row[0]), str(row[1]))
        real, tokens = seen["direct"], seen["tokenproxy"]
        tokenized = all(t != r and len(t) == len(r) for t, r in zip(tokens, real, strict=True))
        if seen["pgbouncer"] != real or not tokenized:
            raise SystemExit(f"{self.name}: PgBouncer relays the values unchanged:"
                             f" {seen['pgbouncer'] == real}; tokenproxy tokenizes both:"
                             f" {tokenized}; the comparison would be wrong")

    def rss_mib(self, proc: Proc) -> float:
        return procstat.rss_kib(proc.pid) / 1024
