"""The pg scenarios of the benchmark harness run end to end (a smoke test, not figures).

pg-point, pg-bulk and pg-stream with the smallest sizes and one short round each, against
direct PostgreSQL, PgBouncer and tokenproxy: every target answers, tokenproxy tokenizes, no
query fails, tokenproxy's memory stays flat while a result streams through. Needs pgbench
(/usr/bin/pgbench) and PgBouncer (installed with apt-get when running as root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # loadtest/ is not an installed package

from loadtest.scenarios.pg import (  # noqa: E402
    SCENARIOS,
    parse_pgbench,
    pg_tools_missing,
    read_pgbench_logs,
)

PGBENCH_OUTPUT = """transaction type: point.sql
scaling factor: 1
query mode: extended
number of clients: 16
number of threads: 1
maximum number of tries: 1
duration: 2 s
number of transactions actually processed: 24512
number of failed transactions: 3 (0.012%)
latency average = 1.301 ms
initial connection time = 14.502 ms
tps = 12254.331842 (without initial connection time)
"""


def test_pgbench_output_and_logs_are_read(tmp_path: Path) -> None:
    assert parse_pgbench(PGBENCH_OUTPUT) == (24512, 12254.331842, 3)
    (tmp_path / "tp.123").write_text("0 1 1500 0 1700000000 1\n1 1 500 0 1700000000 2\n"
                                     "2 1 failed 0 1700000000 3\n")
    assert sorted(read_pgbench_logs(tmp_path / "tp")) == [0.5, 1.5]
    assert not list(tmp_path.iterdir())  # the logs are removed once read


def test_the_registry_lists_the_pg_scenarios() -> None:
    names = {cls.name for cls in SCENARIOS}
    assert {"pg-point", "pg-point-prepared", "pg-point-simple", "pg-bulk", "pg-stream"} <= names


@pytest.mark.skipif((why := pg_tools_missing()) is not None, reason=why or "")
def test_a_tiny_pg_run(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    env = {**os.environ, "LOADTEST_PG_STREAM_ROWS": "10000"}
    run = subprocess.run(
        [sys.executable, "-m", "loadtest", "run", "pg-point", "pg-bulk", "pg-stream",
         "--quick", "--rounds", "1", "--duration", "1", "--warm", "0", "--sweep", "none",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    data = json.loads(out.read_text())
    by_name = {s["scenario"]: s for s in data["scenarios"]}
    assert set(by_name) == {"pg-point", "pg-bulk", "pg-stream"}
    for name, scenario in by_name.items():
        # (point selects also beside the Python relay that decodes every message)
        references = ["direct", "python-relay"] if name == "pg-point" else ["direct"]
        assert (scenario["baseline"], scenario["candidate"], scenario["references"]) == (
            "pgbouncer", "tokenproxy", references)
        assert scenario["problems"] == []
        for target in ("pgbouncer", "tokenproxy", *references):
            m = scenario["medians"][target]
            assert m["requests"] > 0 and m["requests_per_s"] > 0 and m["errors"] == 0
        assert scenario["medians"]["tokenproxy"]["cpu_us_per_request"] > 0
        assert set(scenario["reference_ratios"]) == {
            f"{a} / {ref}" for ref in references for a in ("pgbouncer", "tokenproxy")}
    assert "of the parsing relay" in by_name["pg-point"]["notes"]
    point = by_name["pg-point"]["medians"]["tokenproxy"]
    assert 0 < point["p50_ms"] <= point["p99_ms"]
    assert "tokenproxy RSS" in by_name["pg-stream"]["notes"]
