"""The benchmark harness (``python -m loadtest``) runs end to end and reports what it says.

The smoke test runs the smallest real scenario (http-record: an upstream, the pass-through
proxy, ``tokenproxy serve`` on an embedded PostgreSQL, wrk) for about two seconds per target
and checks the JSON and the PNG. It needs wrk (``apt-get install wrk``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # loadtest/ is not an installed package

from loadtest import procstat  # noqa: E402
from loadtest.harness import RoundResult, parse_wrk, round_ratios  # noqa: E402
from loadtest.scenarios import registry  # noqa: E402

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:1/customers/1001
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    15.10ms    4.02ms  62.37ms   88.12%
    Req/Sec     2.11k   120.00     2.30k    70.00%
  Latency Distribution
     50%   14.48ms
     75%   16.01ms
     90%   18.92ms
     99%    1.02s
  4213 requests in 2.00s, 2.71MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:   2103.51
Transfer/sec:      1.35MB
"""


def test_wrk_output_is_read() -> None:
    r = parse_wrk(WRK_OUTPUT)
    assert (r.requests, r.seconds, r.requests_per_s) == (4213, 2.0, 2103.51)
    assert (r.p50_ms, r.p99_ms) == (14.48, 1020.0)
    assert r.errors == 7


def test_procstat_reads_this_process() -> None:
    before, busy = procstat.cpu_seconds(os.getpid()), procstat.machine_busy_seconds()
    sum(i * i for i in range(300_000))  # some CPU time
    spent = procstat.cpu_seconds(os.getpid()) - before
    assert spent > 0
    assert procstat.machine_busy_seconds() - busy >= spent - 0.02  # (ticks of 10 ms)
    assert procstat.peak_rss_kib(os.getpid()) >= procstat.rss_kib(os.getpid()) > 1000
    assert procstat.open_fds(os.getpid()) >= 3


def test_ratios_are_medians_of_round_ratios() -> None:
    def rr(target: str, rps: float) -> RoundResult:
        return RoundResult(target, 0, 32, 100, rps, 1.0, 2.0, 0, 10.0, 50.0)

    base = [rr("b", 100), rr("b", 200), rr("b", 100)]
    cand = [rr("c", 50), rr("c", 50), rr("c", 90)]
    assert round_ratios(base, cand)["requests_per_s"] == 0.5  # of 0.5, 0.25, 0.9


def test_the_registry_lists_the_http_scenarios() -> None:
    names = set(registry())
    assert {"http-record", "http-list", "http-mixed", "http-cold", "http-rotation"} <= names
    out = subprocess.run([sys.executable, "-m", "loadtest", "list"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "http-rotation" in out


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_a_tiny_run_writes_json_and_a_plot(tmp_path: Path) -> None:
    out, plots = tmp_path / "out.json", tmp_path / "plots"
    run = subprocess.run(
        [sys.executable, "-m", "loadtest", "run", "http-record", "--quick", "--rounds", "1",
         "--duration", "2", "--warm", "1", "--sweep", "4", "--connections", "8",
         "--json", str(out), "--plot", str(plots)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "http-record" in run.stdout and "ratio" in run.stdout
    data = json.loads(out.read_text())
    assert data["machine"]["nproc"] >= 1 and data["command"].startswith("python -m loadtest")
    [scenario] = data["scenarios"]
    assert (scenario["scenario"], scenario["baseline"], scenario["candidate"]) == (
        "http-record", "pass-through", "tokenproxy")
    assert len(scenario["rounds"]) == 2 and len(scenario["sweep"]) == 2
    for name in ("pass-through", "tokenproxy"):
        m = scenario["medians"][name]
        assert m["requests_per_s"] > 0 and m["requests"] > 0 and m["errors"] == 0
        assert 0 < m["p50_ms"] <= m["p99_ms"]
        assert m["cpu_us_per_request"] > 0 and m["peak_rss_mib"] > 10
        assert m["machine_us_per_request"] > 0.8 * m["cpu_us_per_request"]  # (its own too)
    assert set(scenario["ratios"]) == {"requests_per_s", "p50_ms", "p99_ms",
                                       "cpu_us_per_request", "machine_us_per_request"}
    assert scenario["problems"] == []
    png = plots / "http-record.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
