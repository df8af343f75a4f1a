"""The soak (``python -m loadtest soak``) runs end to end, very short, and every check holds.

About 25 s of load with every fault once (two embedded PostgreSQL servers, the upstream API,
``tokenproxy serve`` with HTTP and [pg]); plus the scanner finding what it must find.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # loadtest/ is not an installed package

from loadtest.soak_seed import Scanner, generate  # noqa: E402

ROWS = (
    "no raw name/phone outside a valid ticket",
    "closed tickets do not reveal",
    "every save stored real values",
    "every reveal has its audit row",
    "`tokenproxy audit verify` holds",
    "RSS back near its warm-up level",
    "open fds back near their warm-up level",
    "the proxy still serves both front ends",
    "no unexpected errors",
    "every fault ran and recovered",
)


def test_the_scanner_finds_seeded_values_outside_their_ticket() -> None:
    people = generate(50)
    scanner = Scanner(people)
    a, b = people[3], people[4]
    body = json.dumps({"full_name": a.full_name, "phone": b.phone}, ensure_ascii=True)
    hits = scanner.scan(body.encode(), frozenset(), "test")
    assert {(h.customer, h.kind) for h in hits} >= {(a.id, "name"), (b.id, "phone")}
    allowed = scanner.scan(body.encode(), frozenset({a.id, b.id}), "test")
    assert not [h for h in allowed if h.customer in (a.id, b.id)]
    assert not scanner.scan(b'{"full_name": "Zzzzzzzz Qqqqqqqq"}', frozenset(), "test")


def test_a_short_soak_passes(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, "-m", "loadtest", "soak", "--quick", "--duration", "20",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=170, check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = {r["check"]: r for r in json.loads(out.read_text())["rows"]}
    for name in ROWS:
        assert rows[name]["ok"] is True, rows[name]
        assert name in run.stdout
    assert "PASS" in run.stdout and "FAIL" not in run.stdout
