#!/usr/bin/env python3
"""One entry point for a fresh machine with only Python 3.11+.

    python3 dev.py demo    # install into .venv, then run the demo
    python3 dev.py test    # install into .venv, then run the whole test suite

Each command creates ``.venv`` beside this file when missing and (re)installs the project
with its dev extra whenever pyproject.toml changed since the last install. Anything after
the command is passed on (``python3 dev.py test -k ff1``, ``python3 dev.py demo --once``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".tokenproxy-installed"


def _run(*cmd: str | Path) -> int:
    return subprocess.call([str(c) for c in cmd], cwd=ROOT)


def ensure_installed() -> None:
    """Create .venv and install the project and its dev extra, once per pyproject.toml."""
    if sys.version_info < (3, 11):  # noqa: UP036  (dev.py runs under any python3)
        sys.exit(f"tokenproxy needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    pip = [BIN / "python", "-m", "pip", "--disable-pip-version-check"]
    print("installing tokenproxy and its test dependencies into .venv ...", flush=True)
    if _run(*pip, "install", "--quiet", "--upgrade", "pip") != 0:
        sys.exit("could not upgrade pip in .venv")
    if _run(*pip, "install", "--quiet", "-e", ".[dev]") != 0:
        sys.exit("could not install tokenproxy into .venv (see pip's output above)")
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    ensure_installed()
    if command == "demo":
        return _run(BIN / "tokenproxy", "demo", *rest)
    return _run(BIN / "python", "-m", "pytest", *rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
