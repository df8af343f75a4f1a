"""`tokenproxy config check`, `tokenproxy admin hash-token` and the admin config keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

from click.testing import CliRunner

from proxy.cli import main
from proxy.config import check_config, load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tokenproxy.example.toml"


def test_config_check_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["config", "check", str(EXAMPLE)])
    assert result.exit_code == 0 and result.output.strip().endswith(": ok")
    bad = tmp_path / "bad.toml"
    bad.write_text('[admin]\nmetrics_public = "yes"\n\n[http]\nlisten = "x"\n')
    result = runner.invoke(main, ["config", "check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:2: admin.metrics_public: expected true or false" in result.output
    assert f"{bad}:5: http.listen" in result.output
    result = runner.invoke(main, ["config", "check", str(tmp_path / "missing.toml")])
    assert result.exit_code == 1 and "cannot read the config" in result.output


def test_metrics_public_key() -> None:
    assert load_config(EXAMPLE, env={}).admin.metrics_public is True
    assert check_config("[admin]\nmetrics_public = false\n") == []
    (problem,) = check_config("[admin]\nmetrics_publik = false\n")
    assert problem.key == "admin.metrics_publik" and "metrics_public" in problem.suggestion


def test_hash_token_from_stdin() -> None:
    token = "a-long-random-admin-token-123"
    result = CliRunner().invoke(
        main, ["admin", "hash-token", "--name", "ops"], input=token + "\n"
    )
    assert result.exit_code == 0, result.output
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert result.output.strip() == f'{{ name = "ops", sha256 = "{digest}" }},'
    # the line pastes into the config as is
    text = f"[admin]\ntokens = [\n  {result.output.strip()}\n]\n"
    assert check_config(text) == []


def test_hash_token_generates_one() -> None:
    result = CliRunner().invoke(main, ["admin", "hash-token", "--generate"])
    assert result.exit_code == 0
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    token, entry = lines[0], lines[-1]
    assert len(token) >= 40
    assert hashlib.sha256(token.encode()).hexdigest() in entry
    assert entry.startswith('{ name = "helpdesk-webhook"')


def test_hash_token_refuses_weak_or_unsendable_tokens() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["admin", "hash-token"], input="short\n")
    assert result.exit_code == 2 and "shorter than 16" in result.output
    result = runner.invoke(main, ["admin", "hash-token"], input="has spaces in it, long enough\n")
    assert result.exit_code == 2 and "Bearer header cannot carry" in result.output


def test_serve_without_a_kek_says_how_to_give_one(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text(f'[keys]\ndir = "{tmp_path / "keys"}"\n')
    result = CliRunner().invoke(
        main, ["serve", "--config", str(config)], env={"TOKENPROXY_KEK": "", "DATABASE_URL": ""}
    )
    assert result.exit_code == 2
    assert "no key-encryption key" in result.output
