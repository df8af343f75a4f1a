"""`tokenproxy keys`: the real console script in subprocesses, and click's CliRunner."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from proxy import __version__
from proxy.cli import main
from proxy.crypto.keyring import DataKey, KeyState
from proxy.keystore import (
    encode_kek,
    encode_key_file,
    kek_id,
    load_keyring,
    write_kek_file,
)

KEK = bytes(range(32))
NEW_KEK = bytes(range(50, 82))
ENV_VARS = (
    "TOKENPROXY_KEK",
    "TOKENPROXY_NEW_KEK",
    "TOKENPROXY_KEYS",
    "TOKENPROXY_KEK_FILE",
    "TOKENPROXY_NEW_KEK_FILE",
    "TOKENPROXY_LOG_LEVEL",
)


def _script() -> str:
    beside = Path(sys.executable).parent / "tokenproxy"
    if beside.exists():
        return str(beside)
    found = shutil.which("tokenproxy")
    assert found, "the tokenproxy console script is not installed"
    return found


SCRIPT = _script()


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    return subprocess.run(
        [SCRIPT, *args],
        env={**base, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    yield


@pytest.fixture
def kdir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


def cli(*args: str, kek: bytes | None = KEK, **env: str) -> Result:
    full = dict(env)
    if kek is not None:
        full["TOKENPROXY_KEK"] = encode_kek(kek)
    return CliRunner().invoke(main, list(args), env=full, catch_exceptions=False)


def snapshot(d: Path) -> dict[str, tuple[bytes, int]]:
    if not d.exists():
        return {}
    return {
        p.name: (p.read_bytes(), stat.S_IMODE(p.lstat().st_mode))
        for p in sorted(d.iterdir())
        if p.is_file()
    }


def assert_refused(result: Result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: "), result.stderr
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def secrets_of(d: Path, kek: bytes = KEK) -> list[str]:
    """Every form in which key material could leak into output."""
    out = [encode_kek(kek), kek.hex()]
    for k in load_keyring(d, kek).keys:
        out += [base64.b64encode(k.material).decode(), k.material.hex()]
    return out


# ------------------------------------------------------------------- the real script


def test_version_and_help() -> None:
    r = run("--version")
    assert r.returncode == 0
    assert __version__ in r.stdout
    r = run("keys", "--help")
    assert r.returncode == 0
    for cmd in ("generate-kek", "init", "list", "rotate", "retire", "rewrap"):
        assert cmd in r.stdout


def test_lifecycle_through_the_console_script(tmp_path: Path) -> None:
    r = run("keys", "generate-kek")
    assert r.returncode == 0, r.stderr
    kek_text = r.stdout.strip()
    assert len(base64.b64decode(kek_text, validate=True)) == 32
    env = {"TOKENPROXY_KEK": kek_text}
    kdir = tmp_path / "keys"
    outputs: list[str] = []

    def ok(*args: str, extra: dict[str, str] | None = None) -> str:
        r = run(*args, "--keys", str(kdir), env={**env, **(extra or {})})
        assert r.returncode == 0, r.stderr
        outputs.append(r.stdout + r.stderr)
        return r.stdout

    assert "created v1 (active)" in ok("keys", "init")
    assert "v2 is active; v1 decrypt-only" in ok("keys", "rotate")
    listing = ok("keys", "list")
    assert "decrypt-only" in listing and "active" in listing
    assert kek_id(base64.b64decode(kek_text)) in listing
    rows = json.loads(ok("keys", "list", "--json"))
    assert [(r["version"], r["state"]) for r in rows] == [(1, "decrypt-only"), (2, "active")]

    r = run("keys", "retire", "2", "--keys", str(kdir), env=env)
    assert r.returncode == 2
    assert r.stderr.startswith("error: key version 2 is the active key")
    assert "Traceback" not in r.stderr
    assert "retired v1" in ok("keys", "retire", "1")

    material = load_keyring(kdir, base64.b64decode(kek_text)).active.material
    secrets = secrets_of(kdir, base64.b64decode(kek_text))
    new_text = run("keys", "generate-kek").stdout.strip()
    out = ok("keys", "rewrap", extra={"TOKENPROXY_NEW_KEK": new_text})
    assert "rewrapped v1, v2" in out
    assert load_keyring(kdir, base64.b64decode(new_text)).active.material == material

    r = run("keys", "list", "--keys", str(kdir), env=env)
    assert r.returncode == 2
    assert "wrong KEK" in r.stderr
    for text in outputs:
        for s in secrets:
            assert s not in text


def test_default_keys_dir_and_env(tmp_path: Path) -> None:
    env = {"TOKENPROXY_KEK": encode_kek(KEK)}
    assert run("keys", "init", env=env, cwd=tmp_path).returncode == 0
    assert (tmp_path / "keys" / "key-0001.json").exists()
    other = tmp_path / "other"
    r = run("keys", "init", env={**env, "TOKENPROXY_KEYS": str(other)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (other / "key-0001.json").exists()


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({}, "set TOKENPROXY_KEK to the base64 of 32 bytes"),
        ({"TOKENPROXY_KEK": "%%%"}, "TOKENPROXY_KEK is not valid base64"),
        ({"TOKENPROXY_KEK": base64.b64encode(b"short").decode()}, "decodes to 5 bytes"),
        ({"TOKENPROXY_KEK": encode_kek(NEW_KEK)}, "wrong KEK"),
    ],
)
def test_kek_errors_through_the_console_script(
    kdir: Path, env: dict[str, str], needle: str
) -> None:
    assert cli("keys", "init", "--keys", str(kdir)).exit_code == 0
    before = snapshot(kdir)
    r = run("keys", "rotate", "--keys", str(kdir), env=env)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.startswith("error: ")
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    for args in (("list",), ("retire", "1"), ("rewrap",)):
        new = {"TOKENPROXY_NEW_KEK": encode_kek(bytes(range(100, 132)))}
        result = cli("keys", *args, "--keys", str(kdir), kek=None, **env, **new)
        assert_refused(result, needle)
    for value in env.values():
        assert value not in r.stderr
    assert snapshot(kdir) == before


def test_usage_errors_exit_non_zero() -> None:
    r = run("keys", "retire", "zero")
    assert r.returncode == 2
    r = run("keys", "nope")
    assert r.returncode == 2


# ---------------------------------------------------------------------------- CliRunner


def test_init_twice_is_refused(kdir: Path) -> None:
    assert cli("keys", "init", "--keys", str(kdir)).exit_code == 0
    assert stat.S_IMODE((kdir / "key-0001.json").stat().st_mode) == 0o600
    before = snapshot(kdir)
    assert_refused(cli("keys", "init", "--keys", str(kdir)), "use `tokenproxy keys rotate`")
    assert snapshot(kdir) == before


def test_list_json_has_no_material(kdir: Path) -> None:
    cli("keys", "init", "--keys", str(kdir))
    cli("keys", "rotate", "--keys", str(kdir))
    r = cli("keys", "list", "--json", "--keys", str(kdir))
    assert r.exit_code == 0
    rows = json.loads(r.stdout)
    assert rows[1] == {
        "version": 2,
        "state": "active",
        "stored_state": "active",
        "created_at": rows[1]["created_at"],
        "kek_id": kek_id(KEK),
        "file": str(kdir / "key-0002.json"),
    }
    for s in secrets_of(kdir):
        assert s not in r.output


def test_list_marks_a_stale_active(kdir: Path) -> None:
    cli("keys", "init", "--keys", str(kdir))
    # What a crash between writing v2 and demoting v1 leaves: two files say active.
    v2 = DataKey(2, bytes(range(7, 39)), KeyState.ACTIVE, "2026-01-01T00:00:00Z")
    (kdir / "key-0002.json").write_bytes(encode_key_file(v2, KEK))
    (kdir / "key-0002.json").chmod(0o600)
    r = cli("keys", "list", "--keys", str(kdir))
    assert r.exit_code == 0
    assert "decrypt-only*" in r.stdout
    assert "interrupted `keys rotate`" in r.stdout


def test_retire(kdir: Path) -> None:
    cli("keys", "init", "--keys", str(kdir))
    cli("keys", "rotate", "--keys", str(kdir))
    before = snapshot(kdir)
    assert_refused(cli("keys", "retire", "2", "--keys", str(kdir)), "cannot be retired")
    assert_refused(cli("keys", "retire", "5", "--keys", str(kdir)), "no key version 5")
    assert snapshot(kdir) == before
    r = cli("keys", "retire", "1", "--keys", str(kdir))
    assert r.exit_code == 0
    assert "retired v1" in r.stdout
    r = cli("keys", "retire", "1", "--keys", str(kdir))
    assert r.exit_code == 0
    assert "already retired" in r.stdout


def _corrupt(d: Path) -> None:
    f = d / "key-0001.json"
    f.write_bytes(f.read_bytes()[:-30])


def _newer(d: Path) -> None:
    f = d / "key-0001.json"
    doc = json.loads(f.read_text())
    doc["format"] = 9
    f.write_text(json.dumps(doc))


def _perms(d: Path) -> None:
    (d / "key-0001.json").chmod(0o644)


def _empty(d: Path) -> None:
    (d / "key-0001.json").unlink()


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_corrupt, "is corrupted or truncated"),
        (_newer, "written by a newer tokenproxy"),
        (_perms, "run `chmod 600 "),
        (_empty, "run `tokenproxy keys init`"),
    ],
)
@pytest.mark.parametrize("command", [["list"], ["rotate"], ["retire", "1"], ["rewrap"]])
def test_broken_keys_are_refused_untouched(
    kdir: Path, damage: object, needle: str, command: list[str]
) -> None:
    cli("keys", "init", "--keys", str(kdir))
    assert callable(damage)
    damage(kdir)
    before = snapshot(kdir)
    r = cli("keys", *command, "--keys", str(kdir), TOKENPROXY_NEW_KEK=encode_kek(NEW_KEK))
    assert_refused(r, needle)
    assert snapshot(kdir) == before


def test_kek_file(tmp_path: Path, kdir: Path) -> None:
    f = tmp_path / "kek"
    r = cli("keys", "generate-kek", "--out", str(f), "--keys", str(kdir), kek=None)
    assert r.exit_code == 0
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert encode_kek(KEK) not in r.output
    assert cli("keys", "init", "--keys", str(kdir), "--kek-file", str(f), kek=None).exit_code == 0
    r = cli("keys", "list", "--keys", str(kdir), kek=None, TOKENPROXY_KEK_FILE=str(f))
    assert r.exit_code == 0, r.output
    # --kek-file wins over TOKENPROXY_KEK
    r = cli("keys", "list", "--keys", str(kdir), "--kek-file", str(f), kek=NEW_KEK)
    assert r.exit_code == 0, r.output
    assert_refused(cli("keys", "generate-kek", "--out", str(f), kek=None), "refusing to overwrite")


def test_kek_file_refusals(tmp_path: Path, kdir: Path) -> None:
    cli("keys", "init", "--keys", str(kdir))
    before = snapshot(kdir)
    loose = tmp_path / "loose"
    loose.write_text(encode_kek(KEK))
    loose.chmod(0o644)
    assert_refused(
        cli("keys", "rotate", "--keys", str(kdir), "--kek-file", str(loose), kek=None),
        f"run `chmod 600 {loose}`",
    )
    inside = kdir / "kek"
    write_kek_file(inside, KEK)
    assert_refused(
        cli("keys", "rotate", "--keys", str(kdir), "--kek-file", str(inside), kek=None),
        "inside the keys directory",
    )
    inside.unlink()
    assert_refused(
        cli("keys", "list", "--keys", str(kdir), "--kek-file", str(tmp_path / "nope"), kek=None),
        "cannot read the KEK file",
    )
    assert_refused(
        cli("keys", "generate-kek", "--out", str(kdir / "k"), "--keys", str(kdir)),
        "inside the keys directory",
    )
    assert snapshot(kdir) == before


def test_rewrap_with_a_new_kek_file(tmp_path: Path, kdir: Path) -> None:
    cli("keys", "init", "--keys", str(kdir))
    cli("keys", "rotate", "--keys", str(kdir))
    before = load_keyring(kdir, KEK)
    tokens = [k.ff1(10).encrypt_int(5551234567, 10, b"phone") for k in before.keys]
    before_files = snapshot(kdir)
    assert_refused(cli("keys", "rewrap", "--keys", str(kdir)), "set TOKENPROXY_NEW_KEK")
    assert_refused(
        cli("keys", "rewrap", "--keys", str(kdir), TOKENPROXY_NEW_KEK=encode_kek(KEK)),
        "same as the current one",
    )
    assert snapshot(kdir) == before_files
    f = tmp_path / "new-kek"
    write_kek_file(f, NEW_KEK)
    r = cli("keys", "rewrap", "--keys", str(kdir), "--new-kek-file", str(f))
    assert r.exit_code == 0, r.output
    assert f"under KEK id {kek_id(NEW_KEK)} (was {kek_id(KEK)})" in r.stdout
    after = load_keyring(kdir, NEW_KEK)
    assert [k.ff1(10).encrypt_int(5551234567, 10, b"phone") for k in after.keys] == tokens
    assert [(k.version, k.state) for k in after.keys] == [(k.version, k.state) for k in before.keys]
    r = cli("keys", "rewrap", "--keys", str(kdir), "--new-kek-file", str(f))
    assert r.exit_code == 0
    assert "nothing to rewrap" in r.stdout


def test_log_level_option(kdir: Path) -> None:
    r = cli("--log-level", "debug", "keys", "init", "--keys", str(kdir))
    assert r.exit_code == 0, r.output
    r = cli("--log-level", "loud", "keys", "list", "--keys", str(kdir))
    assert r.exit_code == 2
