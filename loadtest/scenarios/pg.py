"""PostgreSQL scenarios: tokenproxy's ``[pg]`` front end beside PgBouncer and direct.

Each scenario seeds its own database in the harness's embedded PostgreSQL, then starts
PgBouncer and ``tokenproxy serve`` in front of it (:mod:`loadtest.pg_stack`). The pair is
PgBouncer (baseline, the plain-proxy reference) and tokenproxy; direct (the database
itself) runs in the same interleaved rounds as a reference, so every ratio is of the same
minutes. Clients run on the load core: pgbench (``/usr/bin/pgbench``, custom scripts in
``loadtest/sql``) for point selects, :mod:`loadtest.pg_client` (psycopg 3 on libpq) for
the bulk read and the streams. tokenproxy's token cache is warmed by a full read of the
customers before anything is measured.

- ``pg-point``: ``SELECT id, full_name, phone FROM customers WHERE id = :id``, a random id
  of 100,000, 16 clients, ``pgbench -M extended`` (``pg-point-prepared``: ``-M
  prepared``; ``pg-point-simple``: ``-M simple``, the id written into the query's text,
  as psql and client-side interpolating drivers send it: a text new to the analysis cache
  at nearly every query); latency percentiles from pgbench's per-transaction log. Target:
  tokenproxy at least 60% of PgBouncer's throughput. A third reference runs in the same
  rounds: ``python-relay`` (:mod:`loadtest.pg_relay`), a relay on uvloop that decodes
  every message both ways with tokenproxy's codec and forwards it, the Python floor the
  issue compares with (it measured such a relay at 0.50x direct, PgBouncer at 0.60x).
- ``pg-bulk``: ``SELECT id, full_name, phone FROM customers``, 200,000 rows, read again and
  again by one client; a read's wall time is the latency. Target: at most 4x direct.
- ``pg-stream``: 5,000,000 rows of ``big`` (the values of 10,000 customers repeated),
  once as a plain SELECT streamed and once as ``COPY (SELECT ...) TO STDOUT``, tokenproxy's
  RSS sampled every 0.5 s. Check: its peak minus its RSS after warm-up below 100 MiB.
  ``LOADTEST_PG_STREAM_ROWS`` sets the row count (5M takes ~9 minutes here).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

from loadtest.harness import (
    Env,
    LoadResult,
    LoadSpec,
    Scenario,
    ScenarioReport,
    Target,
)
from loadtest.pg_stack import PgStack, ensure_pgbench

SQL = Path(__file__).resolve().parents[1] / "sql"
CLIENT_SLACK = 60.0  # seconds a client may overrun its duration before it is killed
STREAM_TIMEOUT = 900.0  # seconds for one streamed read
SAMPLE_EVERY = 0.5  # seconds between RSS samples of a stream
RSS_BOUND_MIB = 100.0
POINT_TARGET = 0.60  # tokenproxy / PgBouncer throughput, at least
BULK_TARGET = 4.0  # tokenproxy / direct wall time, at most
CUSTOMERS = "SELECT id, full_name, phone FROM customers"


def _pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by rank; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _clean_env() -> dict[str, str]:
    """Our environment without PG* variables (a stray PGHOST would redirect a client)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {
        "PGCONNECT_TIMEOUT": "10", "LC_ALL": "C"}


def run_client(env: Env, mode: str, dsn: str, query: str, *, seconds: float = 0.0,
               most: int = 1000, timeout: float) -> tuple[list[int], list[float]]:
    """:mod:`loadtest.pg_client` on the load core (bounded): rows and seconds per read."""
    argv = [*env.cpus.prefix("load"), sys.executable, "-m", "loadtest.pg_client", mode, dsn,
            query, "--seconds", str(seconds), "--max", str(most)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=Path(__file__).resolve().parents[2], env=_clean_env())
    if done.returncode != 0:
        raise SystemExit(f"pg_client {mode} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    out = json.loads(done.stdout)
    return [int(n) for n in out["rows"]], [float(s) for s in out["seconds"]]


class PgScenario(Scenario):
    """A :class:`PgStack` seeded with ``customers`` rows; subclasses say what load to drive."""

    customers: ClassVar[int] = 100_000
    quick_customers: ClassVar[int] = 2_000  # --quick: for development, not figures
    tables: ClassVar[tuple[str, ...]] = ("customers",)
    relay: ClassVar[bool] = False  # the parsing relay as a reference too (loadtest.pg_relay)

    def setup(self, env: Env) -> None:
        self.env = env
        self.rows = self.quick_customers if env.quick else self.customers
        self.stack = PgStack(env, self.name, self.tables)
        took = self.seed()
        self.notes["seeded"] = f"{self.describe_seed()} in {took:.1f} s"
        self.stack.start(relay=self.relay)
        self.stack.check_tokenized()
        self.prime()

    def seed(self) -> float:
        from loadtest.pg_stack import seed

        return seed(self.stack.dsn, self.rows)

    def describe_seed(self) -> str:
        return f"{self.rows:,} customers (proxy.demo.seed names and phones)"

    def prime(self) -> None:
        """Every customer once through tokenproxy: a warm token cache."""
        began = time.monotonic()
        rows, _ = run_client(self.env, "bulk", self.stack.tokenproxy_dsn, CUSTOMERS, most=1,
                             timeout=STREAM_TIMEOUT)
        if rows != [self.rows]:
            raise SystemExit(f"{self.name}: the warm-up read returned {rows} rows,"
                             f" not {self.rows}")
        self.notes["token cache warm-up"] = (
            f"{self.rows:,} customers read through tokenproxy in"
            f" {time.monotonic() - began:.1f} s (cold)")

    def targets(self) -> tuple[Target, Target]:
        base, cand, _ = self.stack.targets()
        return base, cand

    def references(self) -> tuple[Target, ...]:
        direct = self.stack.targets()[2]
        return (direct, self.stack.relay_target()) if self.relay else (direct,)


# --------------------------------------------------------------------------- pg-point


def parse_pgbench(out: str) -> tuple[int, float, int]:
    """(transactions, tps, failed) from pgbench's summary."""

    def grab(pattern: str) -> str:
        m = re.search(pattern, out)
        if m is None:
            raise ValueError(f"pgbench's output has no {pattern!r}:\n{out[-2000:]}")
        return m.group(1)

    failed = re.search(r"number of failed transactions: (\d+)", out)
    return (int(grab(r"number of transactions actually processed: (\d+)")),
            float(grab(r"tps = ([\d.]+) \(without initial connection time\)")),
            int(failed.group(1)) if failed else 0)


def read_pgbench_logs(prefix: Path) -> list[float]:
    """Latencies (ms) of every logged transaction under ``prefix.*``; the logs removed."""
    latencies: list[float] = []
    for path in sorted(prefix.parent.glob(prefix.name + ".*"))[:64]:
        with path.open() as log:
            for line in log:
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():  # "failed"/"skipped" otherwise
                    latencies.append(int(fields[2]) / 1000)
        path.unlink()
    return latencies


class PgPoint(PgScenario):
    name = "pg-point"
    summary = ("point select by id, 16 clients, pgbench -M extended, random ids of 100,000"
               " customers, warm token cache")
    connections = 16
    mode: ClassVar[str] = "extended"
    relay = True

    def load(self, target: Target, spec: LoadSpec) -> LoadResult:
        exe = ensure_pgbench()
        logs = self.stack.dir / "pgbench-logs"
        logs.mkdir(exist_ok=True)
        prefix = logs / f"{target.name}-{spec.phase}-{spec.round}-{spec.connections}"
        dsn = target.url.split("://", 1)[1]
        user, rest = dsn.split("@", 1)
        hostport, db = rest.split("/", 1)
        host, port = hostport.rsplit(":", 1)
        seconds = max(1, round(spec.duration))
        argv = [*self.env.cpus.prefix("load"), exe, "-n", "-M", self.mode,
                "-c", str(spec.connections), "-j", "1", "-T", str(seconds),
                "-f", str(SQL / "point.sql"), "-D", f"customers={self.rows}",
                "--log", f"--log-prefix={prefix}",
                "-h", host, "-p", port, "-U", user, db]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False,
                                  timeout=seconds + CLIENT_SLACK, env=_clean_env(),
                                  cwd=logs)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"pgbench ran {CLIENT_SLACK:.0f} s past its {seconds} s") from None
        latencies = read_pgbench_logs(prefix)
        if done.returncode not in (0, 2):  # 2: some clients aborted (counted as errors)
            raise SystemExit(f"pgbench failed ({done.returncode}) on {target.name}:\n"
                             f"{(done.stdout + done.stderr)[-2000:]}")
        transactions, tps, failed = parse_pgbench(done.stdout)
        aborted = 1 if done.returncode == 2 else 0
        return LoadResult(
            requests=transactions, seconds=float(seconds), requests_per_s=tps,
            p50_ms=_pct(latencies, 0.50), p99_ms=_pct(latencies, 0.99),
            errors=failed + aborted,
        )

    def review(self, report: ScenarioReport) -> None:
        share = report.ratios["requests_per_s"]
        verdict = "met" if share >= POINT_TARGET else "MISSED"
        self.notes["target"] = (f"tokenproxy {share:.1%} of PgBouncer's throughput"
                                f" (>= {POINT_TARGET:.0%}): {verdict}")
        direct = {k.split(" / ")[0]: v["requests_per_s"]
                  for k, v in report.reference_ratios.items() if k.endswith(" / direct")}
        self.notes["of direct"] = ", ".join(f"{k} {v:.1%}" for k, v in direct.items())
        relay = report.reference_ratios.get("tokenproxy / python-relay")
        if relay is not None:
            self.notes["of the parsing relay"] = (
                f"tokenproxy {relay['requests_per_s']:.1%}, pgbouncer"
                f" {report.reference_ratios['pgbouncer / python-relay']['requests_per_s']:.1%}")
        cpu = {n: report.medians[n].cpu_us_per_request for n in (report.baseline,
                                                                  report.candidate)}
        self.notes["CPU per query (/proc)"] = ", ".join(f"{n} {v:.0f} us"
                                                         for n, v in cpu.items())
        machine = {n: s.machine_us_per_request for n, s in report.medians.items()}
        self.notes["machine CPU per query (pgbench, database, proxy)"] = ", ".join(
            f"{n} {v:.0f} us" for n, v in machine.items())


class PgPointPrepared(PgPoint):
    name = "pg-point-prepared"
    summary = ("point select by id, 16 clients, pgbench -M prepared, random ids of 100,000"
               " customers, warm token cache")
    mode = "prepared"
    sweep = False


class PgPointSimple(PgPoint):
    name = "pg-point-simple"
    summary = ("point select by id, 16 clients, pgbench -M simple (the id in the text),"
               " random ids of 100,000 customers, warm token cache")
    mode = "simple"
    sweep = False


# ---------------------------------------------------------------------------- pg-bulk


class PgBulk(PgScenario):
    name = "pg-bulk"
    summary = ("SELECT id, full_name, phone FROM customers: 200,000 rows a read, one client"
               " (psycopg 3, libpq, text), warm token cache")
    customers = 200_000
    quick_customers = 5_000
    sweep = False
    connections = 1

    def load(self, target: Target, spec: LoadSpec) -> LoadResult:
        rows, seconds = run_client(self.env, "bulk", target.url, CUSTOMERS,
                                   seconds=spec.duration, most=1000,
                                   timeout=STREAM_TIMEOUT + spec.duration)
        total = sum(seconds)
        ms = [s * 1000 for s in seconds]
        return LoadResult(
            requests=len(seconds), seconds=total, requests_per_s=len(seconds) / total,
            p50_ms=statistics.median(ms), p99_ms=_pct(ms, 0.99),
            errors=sum(n != self.rows for n in rows),
        )

    def review(self, report: ScenarioReport) -> None:
        walls = {k.split(" / ")[0]: v["p50_ms"] for k, v in report.reference_ratios.items()}
        tp = walls.get("tokenproxy", math.nan)
        verdict = "met" if tp <= BULK_TARGET else "MISSED"
        self.notes["target"] = (f"tokenproxy's read takes {tp:.2f}x direct's"
                                f" (<= {BULK_TARGET:g}x): {verdict};"
                                f" PgBouncer {walls.get('pgbouncer', math.nan):.2f}x")
        self.notes["read wall time, median"] = ", ".join(
            f"{n} {s.p50_ms:.0f} ms" for n, s in report.medians.items())
        tp_cpu = report.medians[report.candidate].cpu_us_per_request
        self.notes["tokenproxy CPU per row"] = f"{tp_cpu / self.rows:.2f} us"


# -------------------------------------------------------------------------- pg-stream


class PgStream(PgScenario):
    """One streamed SELECT and one COPY of ``big`` per target, RSS sampled meanwhile."""

    name = "pg-stream"
    summary = ("5,000,000 rows streamed (plain SELECT in chunks, then COPY TO STDOUT), one"
               " client; tokenproxy's RSS sampled every 0.5 s")
    customers = 10_000
    quick_customers = 2_000
    tables = ("customers", "big")
    big_rows: ClassVar[int] = 5_000_000
    quick_big_rows: ClassVar[int] = 100_000
    sweep = False
    warm_up = False
    max_rounds = 1
    connections = 1

    def seed(self) -> float:
        from loadtest.pg_stack import seed

        env_rows = os.environ.get("LOADTEST_PG_STREAM_ROWS", "")
        default = self.quick_big_rows if self.env.quick else self.big_rows
        self.big = int(env_rows) if env_rows.isdigit() else default
        self.series: dict[str, list[float]] = {}
        self.rates: dict[str, str] = {}
        self.rss_after_warm_up = math.nan
        return seed(self.stack.dsn, self.rows, big_rows=self.big, distinct=self.rows)

    def describe_seed(self) -> str:
        return (f"big: {self.big:,} rows repeating the names and phones of {self.rows:,}"
                " customers")

    def prime(self) -> None:
        super().prime()  # the customers' values are all of big's
        assert self.stack.tokenproxy is not None
        self.rss_after_warm_up = self.stack.rss_mib(self.stack.tokenproxy)

    def stream(self, target: Target, mode: str) -> tuple[int, float]:
        """One read of ``big`` by the client, sampling ``target``'s RSS (bounded)."""
        argv = [*self.env.cpus.prefix("load"), sys.executable, "-m", "loadtest.pg_client",
                mode, target.url, "SELECT id, full_name, phone FROM big"]
        samples: list[float] = []
        began = time.monotonic()
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2],
                              env=_clean_env()) as client:
            while client.poll() is None and time.monotonic() - began < STREAM_TIMEOUT:
                if target.measured:
                    samples.append(self.stack.rss_mib(target.proc))
                time.sleep(SAMPLE_EVERY)
            if client.poll() is None:
                client.kill()
                client.communicate(timeout=30)
                raise SystemExit(f"{target.name}: {mode} of {self.big:,} rows did not end"
                                 f" within {STREAM_TIMEOUT:.0f} s")
            out, err = client.communicate(timeout=30)
        if client.returncode != 0:
            raise SystemExit(f"pg_client {mode} failed on {target.name}:\n{err[-2000:]}")
        data = json.loads(out)
        rows, seconds = int(data["rows"][0]), float(data["seconds"][0])
        self.series[f"{target.name} {mode}"] = samples
        self.rates[f"{target.name} {mode}"] = (f"{rows:,} rows in {seconds:.1f} s"
                                               f" ({rows / seconds:,.0f} rows/s)")
        return rows, seconds

    def load(self, target: Target, spec: LoadSpec) -> LoadResult:
        rows, seconds, errors = 0, 0.0, 0
        for mode in ("select", "copy"):
            n, s = self.stream(target, mode)
            rows, seconds, errors = rows + n, seconds + s, errors + (n != self.big)
        return LoadResult(requests=rows, seconds=seconds, requests_per_s=rows / seconds,
                          p50_ms=math.nan, p99_ms=math.nan, errors=errors)

    def check(self) -> list[str]:
        tp = [v for k, vs in self.series.items() if k.startswith("tokenproxy") for v in vs]
        if not tp:
            return ["tokenproxy's RSS was not sampled"]
        growth = max(tp) - self.rss_after_warm_up
        self.notes["tokenproxy RSS"] = (
            f"{self.rss_after_warm_up:.0f} MiB after warm-up, peak {max(tp):.0f} MiB while"
            f" streaming: +{growth:.0f} MiB (bound {RSS_BOUND_MIB:.0f} MiB)")
        for key, rate in self.rates.items():
            self.notes[f"{key}"] = rate
        for key, samples in self.series.items():
            if samples:
                step = max(1, len(samples) // 24)
                self.notes[f"RSS MiB every {SAMPLE_EVERY * step:g} s, {key}"] = " ".join(
                    f"{v:.0f}" for v in samples[::step])
        if growth >= RSS_BOUND_MIB:
            return [f"tokenproxy's RSS grew by {growth:.0f} MiB while streaming"
                    f" (bound {RSS_BOUND_MIB:.0f} MiB)"]
        return []


def pg_tools_missing() -> str | None:
    """Why the pg scenarios cannot run here, or None (for the smoke test's skip)."""
    from loadtest.pg_stack import find_pgbench, find_pgbouncer

    if find_pgbench() is None:
        return "pgbench is not installed (Debian: apt-get install postgresql-15)"
    if find_pgbouncer() is None and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        return "pgbouncer is not installed and cannot be (not root, or no apt-get)"
    return None


SCENARIOS: tuple[type[Scenario], ...] = (
    PgPoint, PgPointPrepared, PgPointSimple, PgBulk, PgStream
)
__all__ = ["SCENARIOS", "pg_tools_missing"]
