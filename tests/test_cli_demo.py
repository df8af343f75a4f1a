"""`tokenproxy demo --once`: the README's main command runs its story and every step holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from proxy.cli import main
from proxy.cli.demo import CUSTOMERS


def test_the_demo_story_holds_and_no_raw_value_is_shown_as_a_token() -> None:
    result = CliRunner().invoke(main, ["demo", "--once"])
    assert result.exit_code == 0, result.output
    assert "every step held." in result.output
    assert "FAILED" not in result.output
    token_lines = [line for line in result.output.splitlines() if "TOKENIZED" in line]
    assert token_lines
    for name, phone, _ in CUSTOMERS:
        assert all(name not in line and phone not in line for line in token_lines)


def test_the_demo_runs_as_the_console_script() -> None:
    script = Path(sys.executable).with_name("tokenproxy")
    done = subprocess.run(
        [str(script), "demo", "--once"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "every step held." in done.stdout
