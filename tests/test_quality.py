"""ruff and mypy --strict stay clean: part of the suite, so CI keeps them so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name(name)
    return subprocess.run(
        [str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_is_clean() -> None:
    run = _tool("ruff", "check", "proxy", "tests", "loadtest", "examples", "dev.py")
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy_strict_is_clean() -> None:
    run = _tool("mypy")
    assert run.returncode == 0, run.stdout + run.stderr
