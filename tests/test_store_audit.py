"""proxy.store.audit: the hash-chained audit log on a real PostgreSQL, tampered with for real."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from store_fixtures import close_pool, migrated_pool  # noqa: F401  (the pool fixture)
from structlog.testing import capture_logs

from proxy.errors import InvalidInputError
from proxy.store import admin_ops
from proxy.store import audit as audit_module
from proxy.store.audit import (
    GENESIS,
    Anchor,
    AuditAction,
    AuditEntry,
    AuditLog,
    AuditRecord,
    ChainVerifier,
    Problem,
    chain_hash,
    content_digest,
    verify,
)
from proxy.store.db import connect_pool

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------- fixtures


# One database per module, a fresh schema per test: CREATE DATABASE costs ~0.5 s here, a
# schema and the migrations ~0.07 s. Each test still starts from an empty, migrated schema.


@pytest.fixture
def audit(pool: asyncpg.Pool) -> AuditLog:
    return AuditLog(pool, instance="test/1")


def entry(n: int, action: AuditAction = AuditAction.REVEAL) -> AuditEntry:
    return AuditEntry(
        action,
        agent="alice",
        ticket=f"T-{n % 3}",
        customer_ids=[n, f"c{n}"],
        fields=["customers.full_name", "customers.phone"],
        route="GET /customers/{id}",
        request_id=f"req-{n}",
        detail={"n": n, "nested": {"ok": True, "list": [1, "two", None]}},
    )


async def fill(audit: AuditLog, n: int) -> None:
    await audit.append_many([entry(i) for i in range(1, n + 1)])


async def tamper(pool: asyncpg.Pool, *statements: str) -> None:
    """Run statements as the superuser with the append-only triggers off, as an attacker."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        await conn.execute("ALTER TABLE audit_head DISABLE TRIGGER USER")
        for sql in statements:
            await conn.execute(sql)
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
        await conn.execute("ALTER TABLE audit_head ENABLE TRIGGER USER")


async def row(pool: asyncpg.Pool, seq: int) -> AuditRecord:
    found = await pool.fetchrow(
        "SELECT seq, at, action, agent, ticket, customer_ids, fields, route, request_id, "
        "instance, detail::text AS detail, prev_hash, hash FROM audit_log WHERE seq = $1",
        seq,
    )
    assert found is not None
    return AuditRecord.from_row(found)


def forged(
    seq: int, prev_hash: bytes, at: datetime, *, agent: str = "mallory"
) -> tuple[str, bytes]:
    """A forged row computed exactly as the proxy would: (INSERT statement, its hash)."""
    digest = content_digest(
        action="reveal",
        agent=agent,
        ticket="T-0",
        customer_ids=["999"],
        fields=[],
        route=None,
        request_id=None,
        instance="test/1",
        detail_json="{}",
    )
    h = chain_hash(seq, at, prev_hash, digest)
    sql = (
        "INSERT INTO audit_log (seq, at, agent, ticket, action, customer_ids, fields, instance, "
        f"detail, prev_hash, hash) VALUES ({seq}, '{at.isoformat()}', '{agent}', 'T-0', "
        f"'reveal', '{{999}}', '{{}}', 'test/1', '{{}}', '\\x{prev_hash.hex()}', '\\x{h.hex()}')"
    )
    return sql, h


# ------------------------------------------------------------------ appending


async def test_an_empty_log_verifies(pool: asyncpg.Pool) -> None:
    report = await verify(pool, progress=False)
    assert report.ok, report.message
    assert report.rows == 0
    assert report.head == Anchor(0, GENESIS)
    assert "intact" in report.message


async def test_append_chains_rows_and_python_agrees_with_sql(audit: AuditLog) -> None:
    first = await audit.append(entry(1))
    second = await audit.append(entry(2, AuditAction.DENY))
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS
    assert second.prev_hash == first.hash
    for record in (first, second):
        assert record.hash == chain_hash(record.seq, record.at, record.prev_hash, record.digest())
        stored = await row(audit.pool, record.seq)
        assert stored == record
    assert await audit.head() == second.anchor
    assert second.at >= first.at


async def test_the_hash_format_is_the_documented_one(audit: AuditLog) -> None:
    record = await audit.append(entry(7))
    micros = (record.at - datetime(2000, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    expected = hashlib.sha256(
        b"tokenproxy-audit-v1\x00"
        + (1).to_bytes(8, "big")
        + micros.to_bytes(8, "big")
        + GENESIS
        + record.digest()
    ).digest()
    assert record.hash == expected


async def test_append_many_is_one_call_with_one_time(audit: AuditLog) -> None:
    records = await audit.append_many([entry(i) for i in range(3)])
    assert [r.seq for r in records] == [1, 2, 3]
    assert len({r.at for r in records}) == 1
    assert records[1].prev_hash == records[0].hash
    assert await audit.append_many([]) == []
    assert (await verify(audit.pool, progress=False)).ok


async def test_entries_are_normalised_and_hold_no_value(audit: AuditLog) -> None:
    record = await audit.append(
        AuditEntry(
            "reveal",
            agent="alice",
            customer_ids=[42, "42", "7"],
            fields=["b", "a", "a"],
            detail={"reason": "allowed"},
        )
    )
    assert record.customer_ids == ("42", "7")
    assert record.fields == ("a", "b")
    assert record.detail == {"reason": "allowed"}
    assert record.instance == "test/1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": "Reveal!"}, "audit action"),
        ({"action": "reveal", "detail": {"score": 0.5}}, "floats"),
        ({"action": "reveal", "detail": {1: "x"}}, "keys must be strings"),
        ({"action": "reveal", "agent": "a\x00b"}, "no NUL"),
        ({"action": "reveal", "customer_ids": [4.2]}, "not float"),
        ({"action": "reveal", "customer_ids": "42"}, "not a str"),
        ({"action": "reveal", "route": "x" * 1001}, "at most"),
    ],
)
def test_bad_entries_are_refused(kwargs: dict[str, object], message: str) -> None:
    action = kwargs.pop("action")
    with pytest.raises(InvalidInputError, match=message):
        AuditEntry(action, **kwargs)  # type: ignore[arg-type]


async def test_the_table_refuses_update_delete_and_truncate(audit: AuditLog) -> None:
    await fill(audit, 3)
    for sql in (
        "UPDATE audit_log SET agent = 'mallory' WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 2",
        "DELETE FROM audit_log WHERE false",
        "TRUNCATE audit_log",
        "DELETE FROM audit_head",
        "UPDATE audit_head SET seq = 1",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=r"append-only|forward"):
            await audit.pool.execute(sql)
    assert (await verify(audit.pool, progress=False)).ok


async def test_concurrent_appends_from_two_proxies_keep_one_chain(
    schema_dsn: str, pool: asyncpg.Pool
) -> None:
    other = await connect_pool(schema_dsn, max_size=8)
    try:
        logs = [AuditLog(pool, instance="proxy-a"), AuditLog(other, instance="proxy-b")]

        async def writer(log: AuditLog, w: int) -> None:
            for i in range(15):
                if i % 3:
                    await log.append(entry(w * 100 + i))
                else:
                    await log.append_many([entry(w * 100 + i), entry(w * 100 + i + 50)])

        await asyncio.gather(*(writer(logs[w % 2], w) for w in range(16)))
    finally:
        await other.close()
    report = await verify(pool, progress=False)
    assert report.ok, report.message
    assert report.rows == 16 * (10 + 5 * 2)
    assert await pool.fetchval("SELECT count(DISTINCT instance) FROM audit_log") == 2


async def test_a_rolled_back_append_leaves_no_trace(audit: AuditLog) -> None:
    await fill(audit, 2)
    async with audit.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await audit.append(entry(3), conn=conn)
        await tx.rollback()
    await audit.append(entry(4))
    report = await verify(audit.pool, progress=False)
    assert report.ok, report.message
    assert report.rows == 3


# -------------------------------------------------------------------- tampering


async def expect(pool: asyncpg.Pool, seq: int, problem: Problem, **kw: object) -> None:
    report = await verify(pool, progress=False, **kw)  # type: ignore[arg-type]
    assert not report.ok
    assert (report.first_bad_seq, report.problem) == (seq, problem), report.message
    assert f"tampered at seq {seq}: {problem}" in report.message


async def test_a_modified_field_is_found(audit: AuditLog) -> None:
    await fill(audit, 8)
    await tamper(audit.pool, "UPDATE audit_log SET agent = 'bob' WHERE seq = 5")
    await expect(audit.pool, 5, Problem.MODIFIED)


async def test_any_modified_column_is_found_and_restoring_it_heals(audit: AuditLog) -> None:
    await fill(audit, 6)
    await tamper(audit.pool, "CREATE TABLE saved AS SELECT * FROM audit_log WHERE seq = 4")
    restore = ("DELETE FROM audit_log WHERE seq = 4", "INSERT INTO audit_log SELECT * FROM saved")
    for change in (
        "customer_ids = '{43}'",
        "customer_ids = ARRAY[customer_ids[2], customer_ids[1]]",
        "fields = '{}'",
        "detail = '{\"n\": 4}'",
        "at = at + interval '1 microsecond'",
        "instance = NULL",
        "action = 'deny'",
        "ticket = ticket || ' '",
        "request_id = NULL",
    ):
        await tamper(audit.pool, f"UPDATE audit_log SET {change} WHERE seq = 4")
        await expect(audit.pool, 4, Problem.MODIFIED)
        await tamper(audit.pool, *restore)
        assert (await verify(audit.pool, progress=False)).ok, change


async def test_a_modified_row_with_a_recomputed_hash_is_found_by_the_next_link(
    audit: AuditLog,
) -> None:
    await fill(audit, 8)
    victim = await row(audit.pool, 5)
    digest = content_digest(
        action=victim.action,
        agent="bob",
        ticket=victim.ticket,
        customer_ids=victim.customer_ids,
        fields=victim.fields,
        route=victim.route,
        request_id=victim.request_id,
        instance=victim.instance,
        detail_json=victim.detail_json,
    )
    new_hash = chain_hash(5, victim.at, victim.prev_hash, digest)
    await tamper(
        audit.pool,
        f"UPDATE audit_log SET agent = 'bob', hash = '\\x{new_hash.hex()}' WHERE seq = 5",
    )
    await expect(audit.pool, 5, Problem.MODIFIED)


async def test_a_deleted_row_is_found(audit: AuditLog) -> None:
    await fill(audit, 8)
    await tamper(audit.pool, "DELETE FROM audit_log WHERE seq = 3")
    await expect(audit.pool, 3, Problem.DELETED)


async def test_deleted_newest_rows_are_found_by_the_head(audit: AuditLog) -> None:
    await fill(audit, 8)
    await tamper(audit.pool, "DELETE FROM audit_log WHERE seq >= 7")
    await expect(audit.pool, 7, Problem.DELETED)


async def test_a_deleted_row_with_the_rest_renumbered_is_found(audit: AuditLog) -> None:
    await fill(audit, 8)
    await tamper(
        audit.pool,
        "DELETE FROM audit_log WHERE seq = 4",
        "UPDATE audit_log SET seq = seq + 1000 WHERE seq > 4",
        "UPDATE audit_log SET seq = seq - 1001 WHERE seq > 1000",
        "UPDATE audit_head SET seq = 7",
    )
    await expect(audit.pool, 4, Problem.DELETED)


async def test_a_forged_row_inserted_in_the_middle_is_found(audit: AuditLog) -> None:
    await fill(audit, 8)
    before = await row(audit.pool, 4)
    sql, _ = forged(5, before.hash, before.at)
    await tamper(
        audit.pool,
        "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 5",
        "UPDATE audit_log SET seq = seq - 999 WHERE seq > 1000",
        sql,
        "UPDATE audit_head SET seq = 9",
    )
    assert await audit.pool.fetchval("SELECT agent FROM audit_log WHERE seq = 5") == "mallory"
    await expect(audit.pool, 5, Problem.INSERTED)


async def test_a_clumsily_forged_row_in_the_middle_is_found(audit: AuditLog) -> None:
    await fill(audit, 8)
    before = await row(audit.pool, 4)
    sql, _ = forged(5, b"\x01" * 32, before.at)  # wrong link, nothing recomputed
    await tamper(
        audit.pool,
        "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 5",
        "UPDATE audit_log SET seq = seq - 999 WHERE seq > 1000",
        sql,
    )
    await expect(audit.pool, 5, Problem.INSERTED)


async def test_a_forged_row_appended_past_the_head_is_found(audit: AuditLog) -> None:
    await fill(audit, 8)
    last = await row(audit.pool, 8)
    sql, _ = forged(9, last.hash, last.at)
    await tamper(audit.pool, sql)
    await expect(audit.pool, 9, Problem.INSERTED)


async def test_a_row_before_the_first_is_found(audit: AuditLog) -> None:
    await fill(audit, 3)
    await tamper(audit.pool, "ALTER TABLE audit_log DROP CONSTRAINT audit_log_seq_check",
                 forged(0, GENESIS, datetime.now(UTC))[0])
    await expect(audit.pool, 0, Problem.INSERTED)


async def test_two_swapped_rows_are_found(audit: AuditLog) -> None:
    await fill(audit, 8)
    await tamper(
        audit.pool,
        "UPDATE audit_log SET seq = 1000 WHERE seq = 4",
        "UPDATE audit_log SET seq = 4 WHERE seq = 5",
        "UPDATE audit_log SET seq = 5 WHERE seq = 1000",
    )
    await expect(audit.pool, 4, Problem.REORDERED)


async def test_the_first_bad_row_is_reported_when_there_are_several(audit: AuditLog) -> None:
    await fill(audit, 10)
    await tamper(
        audit.pool,
        "DELETE FROM audit_log WHERE seq = 8",
        "UPDATE audit_log SET route = 'x' WHERE seq = 6",
        "UPDATE audit_log SET route = 'y' WHERE seq = 9",
    )
    await expect(audit.pool, 6, Problem.MODIFIED)


async def test_a_recomputed_chain_passes_alone_but_fails_its_anchor(audit: AuditLog) -> None:
    await fill(audit, 6)
    anchor = await audit.head()
    # The attacker rewrites row 3 and recomputes every later hash and the head.
    rows = [await row(audit.pool, s) for s in range(1, 7)]
    statements = ["UPDATE audit_log SET agent = 'bob' WHERE seq = 3"]
    prev = rows[1].hash
    for r in rows[2:]:
        digest = content_digest(
            action=r.action,
            agent="bob" if r.seq == 3 else r.agent,
            ticket=r.ticket,
            customer_ids=r.customer_ids,
            fields=r.fields,
            route=r.route,
            request_id=r.request_id,
            instance=r.instance,
            detail_json=r.detail_json,
        )
        h = chain_hash(r.seq, r.at, prev, digest)
        statements.append(
            f"UPDATE audit_log SET prev_hash = '\\x{prev.hex()}', hash = '\\x{h.hex()}' "
            f"WHERE seq = {r.seq}"
        )
        prev = h
    statements.append(f"UPDATE audit_head SET seq = 6, hash = '\\x{prev.hex()}'")
    await tamper(audit.pool, *statements)

    assert (await verify(audit.pool, progress=False)).ok  # the limit of a plain chain
    await expect(audit.pool, 6, Problem.REWRITTEN, anchors=[anchor])
    older = Anchor(4, rows[3].hash)
    await expect(audit.pool, 4, Problem.REWRITTEN, anchors=[Anchor.parse(str(older))])


async def test_an_anchor_beyond_the_log_means_rows_were_deleted(audit: AuditLog) -> None:
    await fill(audit, 5)
    anchor = Anchor(8, b"\x02" * 32)
    await expect(audit.pool, 6, Problem.DELETED, anchors=[anchor])


async def test_a_rewritten_head_row_is_found(audit: AuditLog) -> None:
    await fill(audit, 4)
    await tamper(audit.pool, f"UPDATE audit_head SET hash = '\\x{'ab' * 32}'")
    await expect(audit.pool, 4, Problem.MODIFIED)


def test_anchor_text_form() -> None:
    anchor = Anchor(12, bytes(range(32)))
    assert Anchor.parse(str(anchor)) == anchor
    for bad in ("12", "x:00", f"12:{'00' * 31}", "-1:" + "00" * 32):
        with pytest.raises(InvalidInputError, match="SEQ:HASH"):
            Anchor.parse(bad)


def test_the_verifier_needs_no_database() -> None:
    at = datetime(2024, 5, 1, tzinfo=UTC)
    prev, records = GENESIS, []
    for seq in range(1, 4):
        digest = content_digest(
            action="reveal", agent="a", ticket=None, customer_ids=[], fields=[], route=None,
            request_id=None, instance=None, detail_json="{}",
        )
        h = chain_hash(seq, at, prev, digest)
        records.append(AuditRecord(seq, at, "reveal", "a", None, (), (), None, None, None,
                                   "{}", prev, h))
        prev = h
    checker = ChainVerifier(records[-1].anchor)
    for r in records:
        checker.feed(r)
    assert checker.finish().ok
    checker = ChainVerifier(records[-1].anchor)
    for r in (records[0], records[2]):
        checker.feed(r)
    report = checker.finish()
    assert (report.first_bad_seq, report.problem) == (2, Problem.DELETED)


# ------------------------------------------------------------- verify, tail, export


async def test_verify_streams_a_long_log_with_a_progress_bar(
    audit: AuditLog, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(5):
        await audit.append_many([entry(i) for i in range(500)])
    report = await verify(audit.pool, progress=True, batch=300)
    assert report.ok, report.message
    assert report.rows == 2500
    err = capsys.readouterr().err
    assert "verifying audit log" in err
    assert "2.50k" in err
    report = await verify(audit.pool, progress=False)
    assert capsys.readouterr().err == ""


async def test_tail_gives_the_last_rows_and_follows(audit: AuditLog) -> None:
    await fill(audit, 5)
    assert [r.seq async for r in audit.tail(3)] == [3, 4, 5]
    assert [r.seq async for r in audit.tail(0)] == []

    seen: list[int] = []

    async def follow() -> None:
        async for r in audit.tail(1, follow=True, poll_interval=0.05):
            seen.append(r.seq)
            if r.seq == 7:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.1)
    await audit.append_many([entry(6), entry(7)])
    await asyncio.wait_for(task, 5)
    assert seen == [5, 6, 7]


async def test_export_since_gives_json_lines_of_ids_only(audit: AuditLog) -> None:
    await fill(audit, 3)
    await asyncio.sleep(0.01)
    since = datetime.now(UTC)
    await audit.append_many([entry(4), entry(5)])
    rows = [r async for r in audit.export(since)]
    assert [r["seq"] for r in rows] == [4, 5]
    line = json.dumps(rows[0])
    assert json.loads(line)["customer_ids"] == ["4", "c4"]
    assert set(rows[0]) == {
        "seq", "at", "action", "agent", "ticket", "customer_ids", "fields", "route",
        "request_id", "instance", "detail", "prev_hash", "hash",
    }
    assert rows[1]["prev_hash"] == rows[0]["hash"]
    assert [r["seq"] async for r in audit.export(since - timedelta(days=1), since)] == [1, 2, 3]
    with pytest.raises(InvalidInputError, match="timezone-aware"):
        [r async for r in audit.export(datetime(2024, 1, 1))]


# --------------------------------------------------- tokenproxy audit verify|tail|export


async def test_admin_ops_verify_tail_export(audit: AuditLog) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert await admin_ops.audit_verify(audit.pool, progress=False, out=out) == 0
    assert "audit log intact: 0 rows" in out.getvalue()
    await admin_ops.audit_tail(audit.pool, n=5, out=out, err=err)
    assert err.getvalue().startswith(f"anchor 0:{'00' * 32}")

    await fill(audit, 4)
    out, err = io.StringIO(), io.StringIO()
    await admin_ops.audit_tail(audit.pool, n=2, out=out, err=err)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["seq"] for line in lines] == [3, 4]
    anchor = err.getvalue().split()[1]
    assert anchor == f"4:{lines[-1]['hash']}"

    out = io.StringIO()
    assert await admin_ops.audit_verify(audit.pool, anchors=[anchor], out=out) == 0
    assert "head 4:" in out.getvalue()

    exported = io.StringIO()
    assert await admin_ops.audit_export(audit.pool, since="1h", out=exported) == 4
    assert [json.loads(x)["seq"] for x in exported.getvalue().splitlines()] == [1, 2, 3, 4]
    assert await admin_ops.audit_export(
        audit.pool, since="2000-01-01T00:00Z", until="2000-01-02T00:00Z", out=io.StringIO()
    ) == 0

    await tamper(audit.pool, "UPDATE audit_log SET agent = 'bob' WHERE seq = 2")
    out = io.StringIO()
    assert await admin_ops.audit_verify(audit.pool, anchors=[anchor], out=out) == 1
    assert out.getvalue().startswith("audit log tampered at seq 2: modified")
    with pytest.raises(InvalidInputError, match="SEQ:HASH"):
        await admin_ops.audit_verify(audit.pool, anchors=["nonsense"])


async def test_committed_appends_log_an_anchor_now_and_then(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_module, "_last_anchor_log", float("-inf"))
    async with audit.pool.acquire() as conn:
        with capture_logs() as logs:
            async with conn.transaction():
                await audit.append(entry(1), conn=conn)  # not yet committed: no anchor
            first = await audit.append(entry(2))
            await audit.append(entry(3))  # within the interval: no second line
    anchors = [e["anchor"] for e in logs if e["event"] == "audit.anchor"]
    assert anchors == [str(first.anchor)]
    report = await verify(audit.pool, progress=False, anchors=[Anchor.parse(anchors[0])])
    assert report.ok, report.message
