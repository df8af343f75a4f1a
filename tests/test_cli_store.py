"""`tokenproxy db`, `tickets` and `audit` through the real script against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

SCRIPT = str(Path(sys.executable).with_name("tokenproxy"))


def tp(dsn: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    extra = ["--database", dsn] if dsn else []
    return subprocess.run(
        [SCRIPT, *args, *extra], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def migrated(pg_dsn: str) -> str:
    done = tp(pg_dsn, "db", "migrate")
    assert done.returncode == 0, done.stderr
    return pg_dsn


def test_migrate_is_idempotent_and_check_reports_the_version(pg_dsn: str) -> None:
    first = tp(pg_dsn, "db", "migrate")
    assert first.returncode == 0, first.stderr
    assert ("applied now: 1 (tokens), 2 (tickets_audit), 3 (alternate_tokens),"
            " 4 (cancel_keys)\n") in first.stdout
    second = tp(pg_dsn, "db", "migrate")
    assert "applied now: none" in second.stdout
    check = tp(pg_dsn, "db", "check")
    assert check.returncode == 0 and "schema at version 4" in check.stdout


def test_check_on_an_empty_database_says_to_migrate(pg_dsn: str) -> None:
    done = tp(pg_dsn, "db", "check")
    assert done.returncode == 2
    assert "tokenproxy db migrate" in done.stderr


def test_no_database_is_a_clear_error() -> None:
    done = tp(None, "tickets", "list")
    assert done.returncode == 2
    assert "--database URL or set DATABASE_URL" in done.stderr


def test_an_unreachable_database_is_a_clear_error_without_the_password() -> None:
    done = tp("postgresql://agent:s3cret@127.0.0.1:1/x", "tickets", "list")
    assert done.returncode == 2
    assert "127.0.0.1:1" in done.stderr
    assert "s3cret" not in done.stderr and "Traceback" not in done.stderr


def test_tickets_add_list_close(migrated: str) -> None:
    added = tp(migrated, "tickets", "add", "SUP-1", "--agent", "ana", "--customer", "42",
               "--customer", "43")
    assert added.returncode == 0, added.stderr
    listed = tp(migrated, "tickets", "list", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["id"], r["agent"], r["customer_ids"], r["status"]) for r in rows] == [
        ("SUP-1", "ana", ["42", "43"], "open")
    ]
    closed = tp(migrated, "tickets", "close", "SUP-1")
    assert closed.returncode == 0 and "closed" in closed.stdout
    assert "closed" in tp(migrated, "tickets", "list").stdout
    unknown = tp(migrated, "tickets", "close", "SUP-404")
    assert unknown.returncode == 2 and "SUP-404" in unknown.stderr


def test_a_ticket_without_customers_is_refused(migrated: str) -> None:
    done = tp(migrated, "tickets", "add", "SUP-2", "--agent", "ana")
    assert done.returncode == 2
    assert "--customer" in done.stderr


def test_audit_tail_export_and_verify_catch_an_edited_row(migrated: str) -> None:
    for n in range(3):
        assert tp(migrated, "tickets", "add", f"SUP-{n}", "--agent", "ana",
                  "--customer", str(n)).returncode == 0
    tail = tp(migrated, "audit", "tail", "-n", "2")
    entries = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [e["action"] for e in entries] == ["ticket_change", "ticket_change"]
    assert "anchor" in tail.stderr
    exported = tp(migrated, "audit", "export", "--since", "1h")
    assert len(exported.stdout.splitlines()) == 3
    ok = tp(migrated, "audit", "verify", "--no-progress")
    assert ok.returncode == 0, ok.stdout + ok.stderr

    async def tamper() -> None:
        conn = await asyncpg.connect(migrated)
        try:
            await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
            await conn.execute("UPDATE audit_log SET agent = 'mallory' WHERE seq = 2")
        finally:
            await conn.close()

    asyncio.run(tamper())
    bad = tp(migrated, "audit", "verify", "--no-progress")
    assert bad.returncode == 1
    assert "2" in bad.stdout and "modified" in bad.stdout
