"""The benchmark harness: processes, interleaved rounds, measurement, the report.

A :class:`Scenario` starts what it needs in :meth:`Scenario.setup` (through the shared
:class:`Env`: an embedded PostgreSQL, processes pinned to cores, wrk), names two
:class:`Target` s (the baseline and tokenproxy), and drives load at one of them in
:meth:`Scenario.load`. :func:`run_scenario` warms both up, then runs them in interleaved
rounds (the order alternating round by round, so a burst of load from elsewhere on a shared
machine hits both), reading around every round the target process's own CPU time from /proc
and its peak RSS. Then a short sweep of connection counts gives latency against offered load
(wrk is closed-loop: the load it offers is the number of connections, each with one request
in flight). Every loop is bounded in count, every wait in time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from loadtest import procstat

if TYPE_CHECKING:
    from proxy.embedded_pg import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 60.0  # seconds for a process to answer
STOP_TIMEOUT = 15.0  # seconds for a process to exit after SIGTERM
WRK_SLACK = 60.0  # seconds a wrk run may overrun its duration before it is killed
SWEEP = (1, 4, 16, 64)  # connection counts of the latency sweep
QUICK_SWEEP = (1, 8)

Role = Literal["load", "proxy", "other"]


# ------------------------------------------------------------------------------ machine


@dataclass(frozen=True)
class Cpus:
    """Which cores the load generator, the proxies and everything else run on.

    With two or more cores wrk gets the first to itself and the proxies (baseline and
    tokenproxy, one at a time under load) the second; upstreams and PostgreSQL get the rest,
    or float when there is no rest. With one core nothing is pinned.
    """

    load: int | None
    proxy: int | None
    others: tuple[int, ...]

    @classmethod
    def detect(cls) -> Cpus:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2 or shutil.which("taskset") is None:
            return cls(None, None, ())
        return cls(cores[0], cores[1], tuple(cores[2:]))

    def prefix(self, role: Role) -> list[str]:
        """``taskset -c N`` for a command of this role, or nothing."""
        cores: Sequence[int] = {
            "load": () if self.load is None else (self.load,),
            "proxy": () if self.proxy is None else (self.proxy,),
            "other": self.others,
        }[role]
        return ["taskset", "-c", ",".join(map(str, cores))] if cores else []

    def describe(self) -> str:
        if self.load is None:
            return "not pinned (one core, or no taskset)"
        rest = f"on {','.join(map(str, self.others))}" if self.others else "unpinned"
        return f"wrk on core {self.load}, proxies on core {self.proxy}, the rest {rest}"


def machine() -> dict[str, Any]:
    """What the figures came from."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def ensure_wrk() -> str:
    """The path of wrk; installed with apt-get when missing and running as root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: installing it with apt-get", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", "wrk"]
        for argv in (install, ["apt-get", "update"], install):  # update only if needed
            if shutil.which("wrk"):
                break
            subprocess.run(argv, env=env, timeout=600, check=False,
                           stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit(
        "wrk is not installed: run `sudo apt-get install wrk` (Debian, Ubuntu) and try again"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- processes


class Proc:
    """A child process of the harness, pinned by role, its output in a log file."""

    def __init__(
        self, name: str, argv: list[str], *, role: Role, env: Env,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.name, self.argv, self.role = name, argv, role
        self.environ = dict(os.environ if environ is None else environ)  # the whole env
        self.log = env.tmp / f"{name}.log"
        self.cpus = env.cpus
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was not started"
        return self.popen.pid

    def start(self) -> Proc:
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                [*self.cpus.prefix(self.role), *self.argv],  # taskset execs: the same pid
                env=self.environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(sig)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> Proc:
        self.stop()
        return self.start()

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_ready(self, url: str, timeout: float = READY_TIMEOUT,
                   accept: Callable[[bytes], bool] | None = None) -> None:
        """Poll ``url`` until it answers 200 (and ``accept`` holds for the body)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise SystemExit(f"{self.name} exited during start:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status == 200 and (accept is None or accept(resp.read())):
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name}: {url} not ready after {timeout:.0f} s:\n{self.tail()}")


def python_argv(*args: str) -> list[str]:
    """``python -m loadtest _serve ...``: a server of the harness in its own process."""
    return [sys.executable, "-m", "loadtest", *args]


def tokenproxy_argv(*args: str) -> list[str]:
    """The ``tokenproxy`` command of this interpreter's environment."""
    exe = Path(sys.executable).with_name("tokenproxy")
    if exe.exists():
        return [str(exe), *args]
    return [sys.executable, "-c", "from proxy.cli import main; main()", *args]


class Env:
    """What every scenario shares: a temporary directory, cores, wrk, one PostgreSQL."""

    def __init__(self, *, quick: bool, cpus: Cpus | None = None) -> None:
        self.quick = quick
        self.cpus = cpus or Cpus.detect()
        self.wrk = ensure_wrk()
        self.tmp = Path(tempfile.mkdtemp(prefix="tokenproxy-loadtest-")).resolve()
        self.tmp.chmod(0o711)  # as root, PostgreSQL runs as an unprivileged user
        self._pg: EmbeddedPostgres | None = None
        self._procs: list[Proc] = []
        self._databases = 0

    def postgres(self) -> EmbeddedPostgres:
        """The embedded PostgreSQL (fsync off), started on first use."""
        if self._pg is None:
            from proxy.embedded_pg import EmbeddedPostgres

            self._pg = EmbeddedPostgres().start()
        return self._pg

    def database(self, name: str) -> str:
        """A new database in the embedded PostgreSQL; its DSN."""
        self._databases += 1
        return self.postgres().create_database(f"{name}_{self._databases}")

    def spawn(self, name: str, argv: list[str], *, role: Role,
              environ: dict[str, str] | None = None) -> Proc:
        """Start a process (``environ``: its whole environment, default ours); stopped at
        :meth:`close` at the latest."""
        proc = Proc(name, argv, role=role, env=self, environ=environ)
        self._procs.append(proc)
        return proc.start()

    def stop_all(self) -> None:
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self._procs.clear()

    def close(self) -> None:
        self.stop_all()
        if self._pg is not None:
            self._pg.stop()
            self._pg = None
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------------- load


@dataclass(frozen=True)
class LoadSpec:
    """One load step: how long, how many connections, and what it is for."""

    duration: float
    connections: int
    phase: Literal["warm", "round", "sweep"]
    round: int = 0


@dataclass
class LoadResult:
    """What a load generator reports for one step."""

    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx/3xx responses and socket errors


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if m is None:
        raise ValueError(f"cannot read a wrk latency: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk_argv(env: Env, url: str, spec: LoadSpec, *, script: Path | None = None,
             script_args: Sequence[str] = (), headers: Sequence[str] = ()) -> list[str]:
    """A wrk command line: one thread, on its own core when there are two."""
    argv = [*env.cpus.prefix("load"), env.wrk, "-t1", f"-c{spec.connections}",
            f"-d{max(1, round(spec.duration))}s", "--latency", "--timeout", "10s"]
    for header in headers:
        argv += ["-H", header]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    if script_args:
        argv += ["--", *script_args]
    return argv


def parse_wrk(out: str) -> LoadResult:
    """wrk's summary (with ``--latency``) as a :class:`LoadResult`."""

    def grab(pattern: str) -> str:
        m = re.search(pattern, out)
        if m is None:
            raise ValueError(f"wrk's output has no {pattern!r}:\n{out[-2000:]}")
        return m.group(1)

    count = int(grab(r"(\d+) requests in"))
    seconds = _ms(grab(r"requests in ([\d.]+(?:us|ms|s|m)),")) / 1000
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      out):
        errors += sum(int(g) for g in m.groups())
    return LoadResult(
        requests=count,
        seconds=seconds,
        requests_per_s=float(grab(r"Requests/sec:\s+([\d.]+)")),
        p50_ms=_ms(grab(r"\s50%\s+(\S+)")),
        p99_ms=_ms(grab(r"\s99%\s+(\S+)")),
        errors=errors,
    )


def start_wrk(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)


def finish_wrk(proc: subprocess.Popen[str], spec: LoadSpec) -> LoadResult:
    """Wait for a wrk started by :func:`start_wrk` (bounded) and read its summary."""
    try:
        out, _ = proc.communicate(timeout=spec.duration + WRK_SLACK)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=STOP_TIMEOUT)
        raise SystemExit(f"wrk ran {WRK_SLACK:.0f} s past its {spec.duration:g} s") from None
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed ({proc.returncode}):\n{out[-2000:]}")
    return parse_wrk(out)


def run_wrk(env: Env, url: str, spec: LoadSpec, **kwargs: Any) -> LoadResult:
    """Run wrk for one load step (see :func:`wrk_argv` for the options)."""
    return finish_wrk(start_wrk(wrk_argv(env, url, spec, **kwargs)), spec)


@dataclass(frozen=True)
class Options:
    rounds: int = 5
    duration: float = 10.0
    connections: int = 32
    warm: float = 3.0
    sweep: tuple[int, ...] = SWEEP
    sweep_duration: float = 3.0


# ---------------------------------------------------------------------------- scenarios


@dataclass
class Target:
    """One side of a pair: a URL (or DSN) and the process whose CPU and memory count."""

    name: str
    url: str
    proc: Proc
    measured: bool = True  # False: proc is not the target's own (direct: the database's)

    @property
    def pid(self) -> int:
        return self.proc.pid


class Scenario(ABC):
    """A pair to compare. Subclasses set :attr:`name` and :attr:`summary`, and implement
    :meth:`setup`, :meth:`targets` and :meth:`load`; :meth:`teardown` by default stops
    every process of the :class:`Env`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    sweep: ClassVar[bool] = True  # run the latency sweep (not for one-off runs)
    warm_up: ClassVar[bool] = True
    connections: ClassVar[int | None] = None  # the client count a target is stated for
    max_rounds: ClassVar[int | None] = None  # at most this many rounds (a long one-off run)

    def __init__(self) -> None:
        self.notes: dict[str, Any] = {}  # facts for the report and JSON (no customer values)
        self.options = Options()  # set by run_scenario before setup

    @abstractmethod
    def setup(self, env: Env) -> None:
        """Start everything the two targets need."""

    @abstractmethod
    def targets(self) -> tuple[Target, Target]:
        """(baseline, candidate): the candidate is tokenproxy."""

    @abstractmethod
    def load(self, target: Target, spec: LoadSpec) -> LoadResult:
        """Drive load at ``target`` for ``spec.duration`` seconds (bounded)."""

    def references(self) -> tuple[Target, ...]:
        """Further targets (direct, say) run in the same interleaved rounds, reported beside
        the pair with the pair's ratios to them."""
        return ()

    def before_round(self, target: Target, spec: LoadSpec) -> None:  # noqa: B027
        """Called before each measured round of ``target`` (a cold start restarts here)."""

    def check(self) -> list[str]:
        """After every round: what did not hold (an empty list when all did)."""
        return []

    def review(self, report: ScenarioReport) -> None:  # noqa: B027
        """After the rounds, the figures in ``report``: add notes (a target met or missed)."""

    def teardown(self, env: Env) -> None:
        env.stop_all()


# ------------------------------------------------------------------------------ results


@dataclass
class RoundResult:
    """One measured load step of one target."""

    target: str
    round: int
    connections: int
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float  # the target process's utime+stime delta over requests
    peak_rss_mib: float  # VmHWM of the target process after the step
    # Every core's busy time over requests (`procstat.machine_busy_seconds`): the client,
    # the database and the target together; what bounds throughput when the cores are full.
    machine_us_per_request: float = math.nan


@dataclass
class Summary:
    """Medians over the rounds of one target (errors summed, peak RSS the largest)."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    peak_rss_mib: float
    errors: int
    requests: int
    machine_us_per_request: float = math.nan


@dataclass
class ScenarioReport:
    scenario: str
    summary: str
    baseline: str
    candidate: str
    connections: int
    duration_s: float
    rounds: list[RoundResult] = field(default_factory=list)
    sweep: list[RoundResult] = field(default_factory=list)
    medians: dict[str, Summary] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)  # candidate / baseline, medians
    notes: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)  # Scenario.references, by name
    reference_ratios: dict[str, dict[str, float]] = field(default_factory=dict)  # "a / ref"


RATIO_FIELDS = (
    "requests_per_s", "p50_ms", "p99_ms", "cpu_us_per_request", "machine_us_per_request"
)


def summarize(rounds: list[RoundResult]) -> Summary:
    return Summary(
        requests_per_s=statistics.median(r.requests_per_s for r in rounds),
        p50_ms=statistics.median(r.p50_ms for r in rounds),
        p99_ms=statistics.median(r.p99_ms for r in rounds),
        cpu_us_per_request=statistics.median(r.cpu_us_per_request for r in rounds),
        peak_rss_mib=max(r.peak_rss_mib for r in rounds),
        errors=sum(r.errors for r in rounds),
        requests=sum(r.requests for r in rounds),
        machine_us_per_request=statistics.median(r.machine_us_per_request for r in rounds),
    )


def round_ratios(base: list[RoundResult], cand: list[RoundResult]) -> dict[str, float]:
    """The median over rounds of candidate / baseline, round by round."""
    out: dict[str, float] = {}
    pairs = list(zip(base, cand, strict=True))
    for name in RATIO_FIELDS:
        values = [getattr(c, name) / getattr(b, name) for b, c in pairs if getattr(b, name)]
        out[name] = statistics.median(values) if values else float("nan")
    return out


# -------------------------------------------------------------------------------- runner


def measure(scenario: Scenario, target: Target, spec: LoadSpec) -> RoundResult:
    """One load step with the target process's CPU time and peak RSS around it."""
    scenario.before_round(target, spec)
    pid = target.pid  # after before_round: a restart changes it
    cpu = procstat.cpu_seconds(pid) if target.measured else math.nan
    busy = procstat.machine_busy_seconds()
    result = scenario.load(target, spec)
    busy = procstat.machine_busy_seconds() - busy
    cpu = procstat.cpu_seconds(pid) - cpu if target.measured else math.nan
    return RoundResult(
        target=target.name,
        round=spec.round,
        connections=spec.connections,
        requests=result.requests,
        requests_per_s=result.requests_per_s,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=result.errors,
        cpu_us_per_request=cpu / max(1, result.requests) * 1e6,
        peak_rss_mib=procstat.peak_rss_kib(pid) / 1024 if target.measured else math.nan,
        machine_us_per_request=busy / max(1, result.requests) * 1e6,
    )


def _line(r: RoundResult, phase: str) -> str:
    return (f"  {phase:<5} {r.target:<14} c={r.connections:<3} {r.requests_per_s:9.1f} req/s"
            f"  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms  cpu {r.cpu_us_per_request:6.0f}"
            f" us/req  machine {r.machine_us_per_request:6.0f} us/req"
            f"  rss {r.peak_rss_mib:6.1f} MiB"
            + (f"  errors {r.errors}" if r.errors else ""))


def run_scenario(scenario: Scenario, env: Env, opts: Options) -> ScenarioReport:
    """Set up, warm up, interleaved rounds, the sweep, checks; always torn down."""
    log = sys.stderr
    print(f"== {scenario.name}: {scenario.summary}", file=log)
    opts = dataclasses.replace(
        opts, connections=scenario.connections or opts.connections,
        rounds=min(opts.rounds, scenario.max_rounds or opts.rounds))
    scenario.options = opts
    try:
        scenario.setup(env)
        base, cand = scenario.targets()
        refs = scenario.references()
        everyone = (base, cand, *refs)
        report = ScenarioReport(scenario.name, scenario.summary, base.name, cand.name,
                                opts.connections, opts.duration,
                                references=[r.name for r in refs])
        if scenario.warm_up and opts.warm > 0:
            for target in everyone:
                scenario.load(target, LoadSpec(opts.warm, opts.connections, "warm"))
        runs: dict[str, list[RoundResult]] = {t.name: [] for t in everyone}
        for n in range(opts.rounds):
            order = everyone if n % 2 == 0 else everyone[::-1]
            for target in order:
                result = measure(scenario, target,
                                 LoadSpec(opts.duration, opts.connections, "round", n))
                runs[target.name].append(result)
                report.rounds.append(result)
                print(_line(result, f"r{n + 1}"), file=log)
        if scenario.sweep and opts.sweep:
            for connections in opts.sweep:
                for target in everyone:
                    result = measure(scenario, target,
                                     LoadSpec(opts.sweep_duration, connections, "sweep"))
                    report.sweep.append(result)
                    print(_line(result, "sweep"), file=log)
        report.medians = {name: summarize(rs) for name, rs in runs.items()}
        report.ratios = round_ratios(runs[base.name], runs[cand.name])
        report.reference_ratios = {
            f"{t.name} / {ref.name}": round_ratios(runs[ref.name], runs[t.name])
            for ref in refs for t in (base, cand)
        }
        report.problems = [
            f"{name}: {s.errors} of {s.requests} requests failed"
            for name, s in report.medians.items() if s.errors
        ]
        report.problems += scenario.check()
        scenario.review(report)
        report.notes = dict(scenario.notes)
        return report
    finally:
        scenario.teardown(env)


# -------------------------------------------------------------------------------- report


def _fmt(value: float, spec: str, width: int) -> str:
    """``value`` formatted by ``spec`` and right-aligned; "-" for not measured (NaN)."""
    return f"{'-' if math.isnan(value) else format(value, spec):>{width}}"


def format_report(reports: list[ScenarioReport], info: dict[str, Any]) -> str:
    """The table: per pair the medians of both targets (and of any references) and the
    medians of the ratios."""
    m = info["machine"]
    w = max([13, *(len(label) for rep in reports
                   for label in (*rep.references, *rep.reference_ratios))])
    sw = max([14, *(len(rep.scenario) for rep in reports)])
    lines = [
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['mem_gib']} GiB,"
        f" Python {m['python']}; {info['pinning']}",
        f"command: {info['command']}",
        "",
        f"{'scenario':<{sw}} {'target':<{w}} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'cpu us/req':>10} {'peak RSS':>9} {'errors':>6} {'machine us/req':>14}",
    ]
    for rep in reports:
        for name in (rep.baseline, rep.candidate, *rep.references):
            s = rep.medians[name]
            lines.append(
                f"{rep.scenario:<{sw}} {name:<{w}} {_fmt(s.requests_per_s, '.1f', 9)}"
                f" {_fmt(s.p50_ms, '.2f', 8)} {_fmt(s.p99_ms, '.2f', 8)}"
                f" {_fmt(s.cpu_us_per_request, '.0f', 10)} {_fmt(s.peak_rss_mib, '.0f', 6)} MiB"
                f" {s.errors:>6} {_fmt(s.machine_us_per_request, '.0f', 14)}"
            )
        ratios = {"ratio": rep.ratios, **rep.reference_ratios}
        for label, r in ratios.items():
            lines.append(
                f"{'':<{sw}} {label:<{w}} {_fmt(r['requests_per_s'], '.1%', 9)}"
                f" {_fmt(r['p50_ms'], '.2f', 7)}x {_fmt(r['p99_ms'], '.2f', 7)}x"
                f" {_fmt(r['cpu_us_per_request'], '.2f', 9)}x {'':>9} {'':>6}"
                f" {_fmt(r['machine_us_per_request'], '.2f', 13)}x"
            )
    lines.append(
        "\nmedians over the rounds; ratio = tokenproxy / baseline, the median of the"
        " per-round ratios\n(req/s: share of the baseline's throughput; latency and CPU per"
        " request: times the baseline's); 'a / ref': the same against a reference target;"
        "\nmachine us/req: every core's busy time a request (client, database, target"
        " together)"
    )
    for rep in reports:
        for key, value in rep.notes.items():
            lines.append(f"{rep.scenario}: {key}: {value}")
        for problem in rep.problems:
            lines.append(f"{rep.scenario}: FAILED: {problem}")
    return "\n".join(lines)


def to_json(reports: list[ScenarioReport], info: dict[str, Any]) -> dict[str, Any]:
    return {**info, "scenarios": [asdict(r) for r in reports]}


def run(scenarios: Sequence[Scenario], opts: Options, *, quick: bool,
        json_path: Path | None, plot_dir: Path | None, command: str) -> int:
    """Run the scenarios one after the other; print the table; 1 if any check failed."""
    import structlog

    # The project's code run in this process (tickets, stores) logs at warning and above only.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    env = Env(quick=quick)
    info = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine(),
        "pinning": env.cpus.describe(),
        "options": asdict(opts),
    }
    reports: list[ScenarioReport] = []
    try:
        for scenario in scenarios:
            reports.append(run_scenario(scenario, env, opts))
    finally:
        env.close()
    print(format_report(reports, info))
    if json_path is not None:
        json_path.write_text(json.dumps(to_json(reports, info), indent=2) + "\n")
    if plot_dir is not None:
        from loadtest.plot import plot_report

        for rep in reports:
            print(f"plot: {plot_report(rep, plot_dir)}")
    return 1 if any(rep.problems for rep in reports) else 0
