"""`tokenproxy tokenize` / `detokenize`: lines in, lines out, in order, through the real script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.keystore import encode_kek

KEK = encode_kek(bytes(range(32)))
SCRIPT = str(Path(sys.executable).with_name("tokenproxy")) if Path(
    sys.executable
).with_name("tokenproxy").exists() else (shutil.which("tokenproxy") or "tokenproxy")

NAMES = ["Budi Santoso", "Siti Nurhaliza", "José García-Márquez", "Иван Петров", "王小明先生"]
PHONES = ["+62 812-3456-789", "0812 3456 789", "+1 (415) 555-0123", "N/A", "+44 20 7946 0958"]


def run(keys: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENPROXY_")}
    env["TOKENPROXY_KEK"] = KEK
    return subprocess.run(
        [SCRIPT, *args, "--keys", str(keys)],
        input=stdin, env=env, capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    done = run(tmp_path / "keys", "keys", "init")
    assert done.returncode == 0, done.stderr
    return tmp_path / "keys"


@pytest.mark.parametrize(("kind", "values"), [("name", NAMES), ("phone", PHONES)])
def test_tokens_come_out_one_per_line_in_order_and_go_back(
    keys: Path, kind: str, values: list[str]
) -> None:
    done = run(keys, "tokenize", "--kind", kind, stdin="\n".join(values) + "\n")
    assert done.returncode == 0, done.stderr
    tokens = done.stdout.splitlines()
    assert len(tokens) == len(values)
    for value, token in zip(values, tokens, strict=True):
        assert len(token) == len(value)
        if any(c.isalpha() or c.isdigit() for c in value) and value != "N/A":
            assert token != value
    again = run(keys, "tokenize", "--kind", kind, stdin="\n".join(values) + "\n")
    assert again.stdout == done.stdout, "tokens are deterministic across runs"
    back = run(keys, "detokenize", "--kind", kind, stdin=done.stdout)
    assert back.returncode == 0, back.stderr
    assert back.stdout.splitlines() == values


def test_free_text_keeps_the_words_and_tokenizes_the_phone(keys: Path) -> None:
    note = "Call back on +62 812-3456-789 after lunch"
    done = run(keys, "tokenize", "--kind", "text", stdin=note + "\n")
    assert done.returncode == 0, done.stderr
    out = done.stdout.strip()
    assert out.startswith("Call back on +62 812-") and out.endswith(" after lunch")
    assert "3456-789" not in out


def test_after_rotation_old_tokens_resolve_with_their_version(keys: Path) -> None:
    old = run(keys, "tokenize", "--kind", "name", stdin="Budi Santoso\n").stdout
    assert run(keys, "keys", "rotate").returncode == 0
    new = run(keys, "tokenize", "--kind", "name", stdin="Budi Santoso\n").stdout
    assert new != old
    back = run(keys, "detokenize", "--kind", "name", "--key-version", "1", stdin=old)
    assert back.stdout == "Budi Santoso\n"
    assert run(keys, "keys", "retire", "1").returncode == 0
    refused = run(keys, "detokenize", "--kind", "name", "--key-version", "1", stdin=old)
    assert refused.returncode == 2
    assert "retired" in refused.stderr
    assert refused.stdout == ""


def test_a_short_value_is_tokenized_with_a_warning(keys: Path) -> None:
    done = run(keys, "tokenize", "--kind", "name", stdin="Li\n")
    assert done.returncode == 0
    assert len(done.stdout.strip()) == 2 and done.stdout.strip() != "Li"
    assert "--database" in done.stderr


def test_a_line_that_is_not_a_token_fails_the_command_and_prints_nothing(keys: Path) -> None:
    tokens = run(keys, "tokenize", "--kind", "name", stdin="Budi Santoso\n").stdout
    done = run(keys, "detokenize", "--kind", "name", stdin=tokens + "Li\n")
    assert done.returncode == 2
    assert done.stderr.startswith("error: line 2:")
    assert done.stdout == ""
    assert "Traceback" not in done.stderr


def test_stdin_that_is_not_utf8_is_a_clear_error(keys: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENPROXY_")}
    env["TOKENPROXY_KEK"] = KEK
    done = subprocess.run(
        [SCRIPT, "tokenize", "--kind", "name", "--keys", str(keys)],
        input=b"Jos\xe9\n", env=env, capture_output=True, timeout=60,
    )
    assert done.returncode == 2
    assert b"not UTF-8" in done.stderr
    assert b"Jos" not in done.stderr


def test_without_a_kek_nothing_is_tokenized(keys: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENPROXY_")}
    done = subprocess.run(
        [SCRIPT, "tokenize", "--kind", "name", "--keys", str(keys)],
        input="Budi Santoso\n", env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "TOKENPROXY_KEK" in done.stderr
    assert "Budi" not in done.stdout + done.stderr


def run_db(keys: Path, dsn: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run(keys, *args, "--database", dsn, stdin=stdin)


def test_with_a_database_short_values_keep_one_token_and_only_issued_tokens_resolve(
    keys: Path, pg_dsn: str
) -> None:
    migrated = subprocess.run(
        [SCRIPT, "db", "migrate", "--database", pg_dsn], capture_output=True, text=True,
        timeout=60,
    )
    assert migrated.returncode == 0, migrated.stderr
    values = "Li\nBudi Santoso\nLi\n"
    first = run_db(keys, pg_dsn, "tokenize", "--kind", "name", stdin=values)
    assert first.returncode == 0, first.stderr
    tokens = first.stdout.splitlines()
    assert tokens[0] == tokens[2] != "Li"
    again = run_db(keys, pg_dsn, "tokenize", "--kind", "name", stdin=values)
    assert again.stdout == first.stdout, "the vault keeps one token per short value"
    back = run_db(keys, pg_dsn, "detokenize", "--kind", "name", stdin=first.stdout)
    assert back.returncode == 0, back.stderr
    assert back.stdout == values
    typed = run_db(keys, pg_dsn, "detokenize", "--kind", "name", stdin="Xqzt Plorbix\n")
    assert typed.returncode == 2
    assert "line 1: not a name token issued by this proxy" in typed.stderr


def test_a_database_without_the_schema_is_a_clear_error(keys: Path, pg_dsn: str) -> None:
    done = run_db(keys, pg_dsn, "tokenize", "--kind", "name", stdin="Budi Santoso\n")
    assert done.returncode == 2
    assert "tokenproxy db migrate" in done.stderr
    assert done.stdout == "" and "Budi" not in done.stderr
