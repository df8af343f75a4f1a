"""`tokenproxy demo`: the README's main command, as a real subprocess.

``--once`` starts an embedded PostgreSQL, seeds the support database, runs the sample API
and tokenproxy in front of it, walks through the story and exits 0 when every step held,
leaving no temporary directory and no PostgreSQL behind. The stay-up mode refuses a port
already in use with a clear message, before starting anything.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("tokenproxy")
STEPS = (
    "no name, phone or note of the 5 customers reaches the agent in clear",
    "customer 1 is shown in clear under the ticket",
    "customers 2-5 stay tokens",
    "the name token finds customer 1",
    "the row in the database still holds the real values (SQL)",
    "under the closed ticket customer 1 is shown as tokens",
    "the new key gives customer 1 new tokens",
    "a search by the old (v1) token still finds customer 1",
    "audit verify: the chain holds",
    "audit verify catches the edit at seq",
)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOKENPROXY_")}


def _postgres_under(directory: str) -> list[int]:
    """Pids of processes whose command line names ``directory`` (a postgres left behind)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if directory.encode() in argv:
            found.append(int(proc.name))
    return found


def test_demo_once_runs_the_whole_story_and_leaves_nothing_behind() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [str(SCRIPT), "demo", "--once"],
        capture_output=True, text=True, timeout=120, env=_env(),
    )
    took = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "FAILED" not in out
    for step in STEPS:
        assert f"[ok] {step}" in out, step
    assert "every step held" in out
    assert "seeding customers" in done.stderr  # the progress bar
    assert "10000/10000" in done.stderr
    # the side-by-side table: customer 1 in clear only in the ticket column
    row = next(line for line in out.splitlines() if "Budi Santoso" in line)
    cells = [c.strip() for c in row.split("|")]
    assert cells[1] == "Budi Santoso" and cells[3] == "Budi Santoso"
    assert cells[2] != "Budi Santoso" and len(cells[2]) == len("Budi Santoso")
    match = re.search(r"temporary directory: (\S+)", out)
    assert match is not None
    tmp = match.group(1)
    assert f"removed {tmp}" in out
    assert not Path(tmp).exists()
    time.sleep(0.5)  # the watchdog of the embedded server exits after it
    assert _postgres_under(tmp) == []
    assert took < 60


def test_demo_refuses_a_port_in_use_at_once_with_a_clear_message() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run(
            [str(SCRIPT), "demo", "--http-port", str(port), "--admin-port", "0",
             "--api-port", "0", "--customers", "100"],
            capture_output=True, text=True, timeout=60, env=_env(),
        )
    assert done.returncode != 0
    assert f"port {port} is in use: pass --http-port" in done.stderr
    assert "Traceback" not in done.stderr
    assert "temporary directory" not in done.stdout  # refused before starting anything
    assert time.monotonic() - started < 10


@pytest.mark.skipif(sys.platform != "linux", reason="signals and /proc")
def test_demo_stays_up_until_ctrl_c_then_stops_everything() -> None:
    proc = subprocess.Popen(
        [str(SCRIPT), "demo", "--http-port", "0", "--admin-port", "0", "--api-port", "0",
         "--customers", "200"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "/audit/status" in line:  # the last curl example
                break
        out = "".join(lines)
        assert "psql" in out and "curl" in out, out
        url = re.search(r"tokenproxy \(HTTP\)\s+(\S+)", out)
        assert url is not None, out
        request = urllib.request.Request(
            url.group(1) + "/customers/1", headers={"X-Authenticated-User": "bob"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            seen = json.loads(resp.read())
        assert seen["id"] == 1 and seen["full_name"] != "Budi Santoso"
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    match = re.search(r"temporary directory: (\S+)", out)
    assert match is not None
    assert f"removed {match.group(1)}" in rest
    assert not Path(match.group(1)).exists()
