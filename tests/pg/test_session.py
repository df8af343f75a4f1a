"""The PostgreSQL front end end to end: real clients through tokenproxy to a real database.

Every test scans the bytes tokenproxy sent to clients (the tap of session_env.py) for the
seeded names and phones: a value may reach a client only in clear for a ticket's customer.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
import structlog.testing
from session_env import AGENT, SEED, PgEnv, pg_env
from sqlalchemy import Integer, String, create_engine, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from proxy.crypto.engine import TokenEngine
from proxy.crypto.keyring import DataKey, Keyring, KeyState
from proxy.crypto.registry import MemoryRegistry
from proxy.crypto.tokens import IssuedToken, Kind, Method
from proxy.pg.codec import BackendDecoder
from proxy.pg.messages import (
    AuthenticationOk,
    Bind,
    CommandComplete,
    DataRow,
    Describe,
    ErrorResponse,
    Execute,
    FunctionCall,
    ParameterStatus,
    Parse,
    Query,
    ReadyForQuery,
    StartupMessage,
    Sync,
)
from proxy.pg.server import PgFrontEnd
from proxy.pg.session import run_session
from proxy.pg.startup import PgSettings

pytestmark = pytest.mark.timeout(120)

BY_ID = {c.id: c for c in SEED}


@pytest.fixture(scope="module")
async def env(module_dsn: str) -> AsyncIterator[PgEnv]:
    async with pg_env(module_dsn) as e:
        yield e


async def psql(
    dsn: str, *args: str, extra_env: dict[str, str] | None = None, stdin: bytes | None = None
) -> str:
    """Run psql in a subprocess (the proxy runs on this loop: never block it)."""
    proc = await asyncio.create_subprocess_exec(
        "psql", dsn, "-AXt", *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", **(extra_env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


class RawSession:
    """A client speaking the protocol by hand (for messages no driver sends)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = BackendDecoder()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, env: PgEnv) -> AsyncIterator[RawSession]:
        """Connected and past start-up (the first ReadyForQuery read)."""
        reader, writer = await asyncio.open_connection(*env.tap_address)
        raw = cls(reader, writer)
        try:
            raw.send(StartupMessage({"user": AGENT, "database": env.database}).encode())
            await raw.until_ready()
            yield raw
        finally:
            writer.close()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def until_ready(self) -> list[Any]:
        """The messages up to and including the next ReadyForQuery."""
        seen: list[Any] = []
        while not any(isinstance(m, ReadyForQuery) for m in seen):
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            assert data, f"the connection closed before ReadyForQuery (after {seen})"
            self.decoder.feed(data)
            seen += list(self.decoder.messages())
        return seen

    async def until_closed(self) -> list[Any]:
        """The messages up to the server closing the connection."""
        seen: list[Any] = []
        while data := await asyncio.wait_for(self.reader.read(65536), 10):
            self.decoder.feed(data)
            seen += list(self.decoder.messages())
        return seen


def same_shape(token: str, value: str) -> bool:
    return len(token) == len(value) and [c.isspace() for c in token] == [
        c.isspace() for c in value
    ]


# ---------------------------------------------------------------- results are tokenized


async def test_asyncpg_select_star_is_tokenized(env: PgEnv) -> None:
    mark = env.mark()
    conn = await env.connect()
    try:
        rows = await conn.fetch("SELECT * FROM customers ORDER BY id")
    finally:
        await conn.close()
    assert [r["id"] for r in rows] == [c.id for c in SEED]
    for row in rows:
        c = BY_ID[row["id"]]
        assert row["email"] == c.email  # clear columns pass
        assert row["full_name"] != c.full_name and same_shape(row["full_name"], c.full_name)
        assert row["phone"] != c.phone and len(row["phone"]) == len(c.phone)
        assert row["phone"].startswith("+62 8")
        assert row["phone_digits"] != c.phone_digits
    env.assert_no_leak(mark)


async def test_tokens_are_stable_and_resolve(env: PgEnv) -> None:
    conn = await env.connect()
    try:
        a = await conn.fetchrow("SELECT full_name, phone FROM customers WHERE id = 2")
        b = await conn.fetchrow("SELECT full_name AS n, phone::text AS p FROM customers "
                                "WHERE id = $1", 2)
    finally:
        await conn.close()
    assert a is not None and b is not None
    assert (a["full_name"], a["phone"]) == (b["n"], b["p"])
    engine = env.ctx.engine()
    assert await env.store.detokenize(engine, Kind.NAME.value, [a["full_name"]]) == [
        BY_ID[2].full_name
    ]


async def test_psql_simple_protocol(env: PgEnv) -> None:
    mark = env.mark()
    out = await psql(env.dsn, "-c", "SELECT id, full_name, phone FROM customers ORDER BY id")
    lines = out.strip().splitlines()
    assert len(lines) == len(SEED)
    for line in lines:
        cid, name, _phone = line.split("|")
        assert name != BY_ID[int(cid)].full_name
        assert same_shape(name, BY_ID[int(cid)].full_name)
    env.assert_no_leak(mark)


async def test_psql_copy_to_stdout_text_and_csv(env: PgEnv) -> None:
    mark = env.mark()
    for command in (
        r"\copy customers TO STDOUT",
        r"\copy customers (id, full_name, phone) TO STDOUT WITH (FORMAT csv, HEADER)",
        r"\copy (SELECT id, phone, full_name FROM customers) TO STDOUT WITH (FORMAT csv)",
        "COPY customers TO STDOUT",
    ):
        out = await psql(env.dsn, "-c", command)
        assert len(out.strip().splitlines()) >= len(SEED), command
    env.assert_no_leak(mark)


async def test_psycopg_text_binary_and_pipeline(env: PgEnv) -> None:
    mark = env.mark()
    async with await psycopg.AsyncConnection.connect(env.dsn) as conn:
        cur = conn.cursor(binary=True)
        await cur.execute("SELECT id, full_name, phone, phone_digits FROM customers ORDER BY id")
        binary = await cur.fetchall()
        cur = conn.cursor()
        await cur.execute("SELECT id, full_name, phone FROM customers WHERE id = %s", (3,))
        text = await cur.fetchall()
        async with conn.pipeline():
            curs = []
            for cid in (1, 2, 3):
                c = conn.cursor()
                await c.execute("SELECT full_name FROM customers WHERE id = %s", (cid,))
                curs.append(c)
            piped = [await c.fetchone() for c in curs]
    assert len(binary) == len(SEED)
    assert text[0][1] == binary[2][1]  # the same token in text and binary
    assert [p[0] for p in piped if p] == [binary[i][1] for i in range(3)]
    assert all(b[3] != BY_ID[b[0]].phone_digits for b in binary)
    env.assert_no_leak(mark)


async def test_row_limited_execute_and_cursor(env: PgEnv) -> None:
    mark = env.mark()
    conn = await env.connect()
    try:
        async with conn.transaction():
            cursor = await conn.cursor("SELECT id, full_name FROM customers ORDER BY id")
            first = await cursor.fetch(2)
            rest = await cursor.fetch(10)
            await conn.execute("DECLARE c1 CURSOR FOR SELECT phone, id FROM customers")
            fetched = await conn.fetch("FETCH 3 FROM c1")
    finally:
        await conn.close()
    assert len(first) + len(rest) == len(SEED)
    assert len(fetched) == 3
    env.assert_no_leak(mark)


# ---------------------------------------------------------------- derived data is refused


DERIVED = [
    "SELECT upper(full_name) FROM customers",
    "SELECT full_name || '' FROM customers",
    "SELECT substr(phone, 1, 4) FROM customers",
    "SELECT ascii(substr(full_name, 3, 1)) FROM customers WHERE id = 1",
    "SELECT row_to_json(c) FROM customers c",
    "SELECT c FROM customers c",
    "SELECT string_agg(full_name, ',') FROM customers",
    "WITH x AS (SELECT lower(full_name) AS n FROM customers) SELECT n FROM x",
    "SELECT n FROM (SELECT reverse(phone) AS n FROM customers) s",
    "SELECT id::text FROM customers UNION SELECT full_name || 'x' FROM customers",
    "SELECT id FROM customers WHERE full_name LIKE 'B%'",
    "SELECT id FROM customers WHERE phone ~ '^\\+62'",
    "SELECT id FROM customers WHERE phone > '+62 8'",
    "SELECT id FROM customers WHERE left(full_name, 1) = 'B'",
    "SELECT id FROM customers ORDER BY full_name LIMIT 1",
    "UPDATE customers SET notes = full_name WHERE id = 1",
    "INSERT INTO plain_items (label) SELECT full_name FROM customers",
    "CREATE TABLE stolen AS SELECT full_name FROM customers",
]


@pytest.mark.parametrize("sql", DERIVED)
async def test_derived_and_probing_statements_are_refused(env: PgEnv, sql: str) -> None:
    mark = env.mark()
    conn = await env.connect()
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as info:
            await conn.fetch(sql)
        # The session goes on after a refusal.
        assert await conn.fetchval("SELECT count(*) FROM plain_items") >= 2
    finally:
        await conn.close()
    assert "tokenproxy" in str(info.value)
    env.assert_no_leak(mark)
    direct = await env.direct()
    try:
        assert await direct.fetchval("SELECT to_regclass('stolen')") is None
        assert await direct.fetchval("SELECT count(*) FROM plain_items") == 2
    finally:
        await direct.close()


@pytest.mark.parametrize(
    "sql",
    [
        "DO $$ BEGIN RAISE NOTICE '%', (SELECT full_name FROM customers LIMIT 1); END $$",
        "SELECT * FROM pg_stats WHERE tablename = 'customers'",
        "SELECT query FROM pg_stat_activity",
        "SELECT query_to_xml('select full_name from customers', true, false, '')",
        "SELEC full_name FROM customers",
    ],
)
async def test_unfollowable_statements_are_refused(env: PgEnv, sql: str) -> None:
    mark = env.mark()
    conn = await env.connect()
    try:
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.execute(sql)
    finally:
        await conn.close()
    assert info.value.sqlstate in ("42501", "42601")
    env.assert_no_leak(mark)


async def test_view_over_protected_columns(env: PgEnv) -> None:
    direct = await env.direct()
    try:
        await direct.execute(
            "CREATE VIEW v_shout AS SELECT id, upper(full_name) AS loud FROM customers;"
            "CREATE VIEW v_plain AS SELECT id, full_name AS who, phone FROM customers"
        )
    finally:
        await direct.close()
    await asyncio.sleep(0.5)  # the catalog's recheck sees the new views
    mark = env.mark()
    conn = await env.connect()
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT loud FROM v_shout")
        rows = await conn.fetch("SELECT id, who, phone FROM v_plain ORDER BY id")
    finally:
        await conn.close()
    assert [r["who"] != BY_ID[r["id"]].full_name for r in rows] == [True] * len(SEED)
    env.assert_no_leak(mark)


# ---------------------------------------------------------------- tokens coming back


async def test_equality_lookups_by_real_value_and_by_token(env: PgEnv) -> None:
    mark = env.mark()
    conn = await env.connect()
    try:
        by_real = await conn.fetchrow("SELECT id, phone FROM customers WHERE phone = $1",
                                      BY_ID[4].phone)
        assert by_real is not None and by_real["id"] == 4
        token = by_real["phone"]
        by_token = await conn.fetchrow("SELECT id FROM customers WHERE phone = $1", token)
        literal = await conn.fetchrow(f"SELECT id FROM customers WHERE phone = '{token}'")
        name_token = await conn.fetchval("SELECT full_name FROM customers WHERE id = 4")
        by_name = await conn.fetchval("SELECT id FROM customers WHERE full_name = $1",
                                      name_token)
    finally:
        await conn.close()
    assert by_token is not None and by_token["id"] == 4
    assert literal is not None and literal["id"] == 4
    assert by_name == 4
    env.assert_no_leak(mark)


async def test_saving_tokens_back_stores_real_values(env: PgEnv) -> None:
    direct = await env.direct()
    try:
        await direct.execute(
            "INSERT INTO customers (id, full_name, phone, notes, email) VALUES "
            "(101, 'Yohanes Gunawan Saputra', '+62 812-7777-0101', 'note', 'y@mail.example')"
        )
        conn = await env.connect()
        try:
            row = await conn.fetchrow("SELECT full_name, phone FROM customers WHERE id = 101")
            assert row is not None
            await conn.execute("UPDATE customers SET full_name = $1, phone = $2 WHERE id = 101",
                               row["full_name"], row["phone"])
            await conn.execute(
                f"UPDATE customers SET full_name = '{row['full_name']}' WHERE id = 101"
            )
        finally:
            await conn.close()
        stored = await direct.fetchrow("SELECT full_name, phone FROM customers WHERE id = 101")
        assert stored is not None
        assert stored["full_name"] == "Yohanes Gunawan Saputra"
        assert stored["phone"] == "+62 812-7777-0101"
    finally:
        await direct.execute("DELETE FROM customers WHERE id = 101")
        await direct.close()


async def test_duplicate_key_error_echo_is_tokenized(env: PgEnv) -> None:
    mark = env.mark()
    conn = await env.connect()
    try:
        with pytest.raises(asyncpg.UniqueViolationError) as info:
            await conn.execute(
                "INSERT INTO customers (id, full_name, phone) VALUES (200, 'X Y', $1)",
                BY_ID[5].phone,
            )
    finally:
        await conn.close()
    assert "Key (phone)=(" in (info.value.detail or "")
    env.assert_no_leak(mark)


# ---------------------------------------------------------------- justification


async def test_comment_ticket_reveals_only_its_customer(env: PgEnv) -> None:
    ticket = env.new_ticket_id()
    await env.add_ticket(ticket, [2])
    mark = env.mark()
    conn = await env.connect()
    try:
        rows = await conn.fetch(
            f"SELECT id, full_name, phone FROM customers ORDER BY id /*ticket='{ticket}'*/"
        )
    finally:
        await conn.close()
    got = {r["id"]: r for r in rows}
    assert got[2]["full_name"] == BY_ID[2].full_name
    assert got[2]["phone"] == BY_ID[2].phone
    assert got[1]["full_name"] != BY_ID[1].full_name
    env.assert_no_leak(mark, except_ids=[2])
    audit = await env.pool.fetch(
        "SELECT action, customer_ids FROM audit_log WHERE ticket = $1", ticket
    )
    actions = {(a["action"], tuple(a["customer_ids"])) for a in audit}
    assert ("reveal", ("2",)) in actions
    denied = {c for action, ids in actions if action == "deny" for c in ids}
    assert denied == {"1", "3", "4", "5", "6"}


async def test_set_and_startup_ticket(env: PgEnv) -> None:
    ticket = env.new_ticket_id()
    await env.add_ticket(ticket, [3])
    sql = "SELECT id, full_name FROM customers WHERE id = 3"
    conn = await env.connect()
    try:
        assert await conn.fetchval(sql, column=1) != BY_ID[3].full_name
        await conn.execute(f"SET tokenproxy.ticket = '{ticket}'")
        assert await conn.fetchval(sql, column=1) == BY_ID[3].full_name
        await conn.execute("RESET tokenproxy.ticket")
        assert await conn.fetchval(sql, column=1) != BY_ID[3].full_name
        # Without the customer id in the result, no row can be attributed: tokens.
        await conn.execute(f"SET tokenproxy.ticket = '{ticket}'")
        assert await conn.fetchval("SELECT full_name FROM customers WHERE id = 3") != (
            BY_ID[3].full_name
        )
    finally:
        await conn.close()
    conn = await env.connect(server_settings={"tokenproxy.ticket": ticket})
    try:
        row = await conn.fetchrow("SELECT id, phone FROM customers WHERE id = 3")
        assert row is not None and row["phone"] == BY_ID[3].phone
    finally:
        await conn.close()
    out = await psql(env.dsn, "-c", sql, extra_env={"PGOPTIONS": f"-c tokenproxy.ticket={ticket}"})
    assert out.strip() == f"3|{BY_ID[3].full_name}"


async def test_closed_or_foreign_ticket_reveals_nothing(env: PgEnv) -> None:
    closed, foreign = env.new_ticket_id(), env.new_ticket_id()
    await env.add_ticket(closed, [1], status="closed")
    await env.add_ticket(foreign, [1], agent="someone_else")
    mark = env.mark()
    conn = await env.connect()
    try:
        for ticket in (closed, foreign):
            name = await conn.fetchval(
                f"SELECT full_name FROM customers WHERE id = 1 /*ticket='{ticket}'*/"
            )
            assert name != BY_ID[1].full_name
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(f"SELECT upper(full_name) FROM customers /*ticket='{ticket}'*/")
    finally:
        await conn.close()
    env.assert_no_leak(mark)


async def test_justified_derived_values_only_for_ticket_customers(env: PgEnv) -> None:
    ticket = env.new_ticket_id()
    await env.add_ticket(ticket, [6])
    conn = await env.connect()
    mark = env.mark()
    try:
        with pytest.raises(asyncpg.PostgresError):  # no customer id: no row is covered
            await conn.fetchval(
                f"SELECT upper(full_name) FROM customers WHERE id = 6 /*ticket='{ticket}'*/"
            )
        with pytest.raises(asyncpg.PostgresError):
            await conn.fetch(
                f"SELECT id, upper(full_name) FROM customers ORDER BY id /*ticket='{ticket}'*/"
            )
        row = await conn.fetchrow(
            f"SELECT id, upper(full_name) AS u FROM customers WHERE id = 6 /*ticket='{ticket}'*/"
        )
    finally:
        await conn.close()
    assert row is not None and row["u"] == BY_ID[6].full_name.upper()
    env.assert_no_leak(mark, except_ids=[6])


# ---------------------------------------------------------------- transparency


async def test_unprotected_tables_transactions_and_notify(env: PgEnv) -> None:
    conn = await env.connect()
    other = await env.connect()
    try:
        got: list[str] = []
        await other.add_listener("chan", lambda *args: got.append(args[3]))
        async with conn.transaction():
            await conn.execute("INSERT INTO plain_items (label) VALUES ($1)", "gamma")
            assert await conn.fetchval("SELECT count(*) FROM plain_items") == 3
            raise_it = conn.transaction()
            await raise_it.start()
            await conn.execute("INSERT INTO plain_items (label) VALUES ('delta')")
            await raise_it.rollback()
            await conn.execute("SELECT pg_notify('chan', 'hello')")
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.05)
        assert got == ["hello"]
        stmt = await conn.prepare("SELECT label FROM plain_items WHERE id = $1")
        assert await stmt.fetchval(1) == "alpha"
        await conn.execute("DELETE FROM plain_items WHERE label = 'gamma'")
        assert await conn.fetchval("SELECT label FROM plain_items WHERE id = 2") == "beta"
    finally:
        await conn.close()
        await other.close()


async def test_sqlalchemy_orm_round_trip(env: PgEnv) -> None:
    """A synchronous SQLAlchemy 2 program, in a thread (the proxy runs on this loop)."""
    mark = env.mark()
    await asyncio.to_thread(_sqlalchemy_program, env.dsn, env.direct_dsn)
    env.assert_no_leak(mark)


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    full_name: Mapped[str] = mapped_column(String)
    phone: Mapped[str] = mapped_column(String)
    email: Mapped[str] = mapped_column(String)


def _sqlalchemy_program(dsn: str, direct_dsn: str) -> None:
    engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with Session(engine) as session:
            people = session.scalars(select(Customer).order_by(Customer.id)).all()
            assert [p.id for p in people] == [c.id for c in SEED]
            assert all(p.full_name != BY_ID[p.id].full_name for p in people)
            dewi = session.get(Customer, 4)
            assert dewi is not None
            dewi.email = "dewi@new.example"
            session.commit()
            # A whole-record save, as a form would post it: the tokens go back.
            session.execute(
                update(Customer)
                .where(Customer.id == 4)
                .values(full_name=dewi.full_name, phone=dewi.phone)
            )
            session.commit()
            same = session.scalars(select(Customer).where(Customer.phone == dewi.phone)).one()
            assert same.id == 4
        with psycopg.connect(direct_dsn) as direct:
            stored = direct.execute(
                "SELECT full_name, phone, email FROM customers WHERE id = 4"
            ).fetchone()
            assert stored == (BY_ID[4].full_name, BY_ID[4].phone, "dewi@new.example")
            direct.execute("UPDATE customers SET email = %s WHERE id = 4", (BY_ID[4].email,))
    finally:
        engine.dispose()


async def test_agent_is_the_database_user(env: PgEnv) -> None:
    conn = await env.connect()
    try:
        assert await conn.fetchval("SELECT current_user") == AGENT
    finally:
        await conn.close()


# ---------------------------------------------------------------- pipelines and failures


async def test_refusal_inside_a_pipeline_aborts_it_like_an_error(env: PgEnv) -> None:
    """A refused statement in a pipeline behaves as a server error: the implicit transaction
    rolls back, the rest up to the Sync is skipped, the session goes on."""
    mark = env.mark()
    async with await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            async with conn.pipeline():
                await conn.execute("INSERT INTO plain_items (label) VALUES ('piped')")
                await conn.execute("SELECT upper(full_name) FROM customers")
                await conn.execute("INSERT INTO plain_items (label) VALUES ('after')")
        cur = await conn.execute("SELECT count(*) FROM plain_items WHERE label IN "
                                 "('piped', 'after')")
        row = await cur.fetchone()
    assert row == (0,)
    env.assert_no_leak(mark)


async def test_refusal_in_a_transaction_block_fails_the_transaction(env: PgEnv) -> None:
    conn = await env.connect()
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("INSERT INTO plain_items (label) VALUES ('in-tx')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SELECT lower(full_name) FROM customers")
        with pytest.raises(asyncpg.InFailedSQLTransactionError):
            await conn.execute("SELECT 1")
        await tx.rollback()
        assert await conn.fetchval("SELECT count(*) FROM plain_items WHERE label = 'in-tx'") == 0
    finally:
        await conn.close()


async def test_not_null_violation_does_not_echo_the_row(env: PgEnv) -> None:
    mark = env.mark()
    conn = await env.connect()
    try:
        with pytest.raises(asyncpg.NotNullViolationError) as info:
            await conn.execute("UPDATE customers SET full_name = NULL WHERE id = 1")
    finally:
        await conn.close()
    assert BY_ID[1].phone not in str(info.value.detail)
    env.assert_no_leak(mark)


async def test_token_echo_in_an_error_is_put_back(env: PgEnv) -> None:
    """A token resolved in a literal, echoed by the server in an error, goes back as the
    token (the real value never reaches the client)."""
    conn = await env.connect()
    try:
        token = await conn.fetchval("SELECT phone FROM customers WHERE id = 5")
        mark = env.mark()
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute(
                f"SELECT id FROM customers WHERE phone = '{token}' AND id = 'x{token}'::int"
            )
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute(f"UPDATE customers SET phone = '{token}' WHERE id = 6")
    finally:
        await conn.close()
    env.assert_no_leak(mark)


async def test_unknown_prepared_statement_and_portal_are_refused(env: PgEnv) -> None:
    """A Bind of a statement never parsed through tokenproxy never reaches the server."""
    mark = env.mark()
    async with RawSession.open(env) as raw:
        raw.send(Bind("", "never_parsed").encode() + Execute("").encode() + Sync().encode())
        seen = await raw.until_ready()
    assert [type(m).__name__ for m in seen] == ["ErrorResponse", "ReadyForQuery"]
    env.assert_no_leak(mark)


async def test_rows_after_an_empty_result_in_a_pipeline_are_tokenized(env: PgEnv) -> None:
    """An Execute whose first answer is CommandComplete (no rows) is planned there; the
    next Execute's rows, right behind it, are planned for their own statement."""
    mark = env.mark()
    empty = "SELECT full_name FROM customers WHERE false"
    rows = "SELECT full_name, phone FROM customers ORDER BY id"
    async with RawSession.open(env) as raw:
        raw.send(
            Parse("s1", empty, ()).encode() + Bind("p1", "s1").encode()
            + Describe("P", "p1").encode()
            + Parse("s2", rows, ()).encode() + Bind("p2", "s2").encode()
            + Describe("P", "p2").encode()
            + Execute("p1").encode() + Execute("p2").encode() + Sync().encode()
        )
        seen = await raw.until_ready()
    data = [m for m in seen if isinstance(m, DataRow)]
    assert len(data) == len(SEED)
    env.assert_no_leak(mark)


async def test_rows_the_server_sends_without_a_description_end_the_session(
    env: PgEnv,
) -> None:
    """An upstream that answers a query with DataRows and no RowDescription (no real
    PostgreSQL does) gets nothing through: the rows cannot be planned, the session ends."""
    secret = SEED[0].full_name

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = int.from_bytes(await reader.readexactly(4), "big")
        await reader.readexactly(size - 4)  # the StartupMessage
        writer.write(
            AuthenticationOk().encode()
            + ParameterStatus("client_encoding", "UTF8").encode()
            + ParameterStatus("standard_conforming_strings", "on").encode()
            + ReadyForQuery("I").encode()
        )
        while (kind := await reader.read(1)) and kind != b"X":
            size = int.from_bytes(await reader.readexactly(4), "big")
            await reader.readexactly(size - 4)
            if kind == b"Q":
                writer.write(DataRow((secret.encode(),)).encode()
                             + CommandComplete("SELECT 1").encode() + ReadyForQuery("I").encode())
        writer.close()

    fake = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = fake.sockets[0].getsockname()[1]
    frontend = PgFrontEnd(PgSettings(upstream_host="127.0.0.1", upstream_port=port))

    async def session(est: Any) -> None:
        await run_session(env.ctx, est)

    frontend.session = session
    (host, bound), *_ = await frontend.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(host, bound)
        raw = RawSession(reader, writer)
        raw.send(StartupMessage({"user": AGENT, "database": env.database}).encode())
        await raw.until_ready()
        raw.send(Query("SELECT full_name FROM customers").encode())
        data = b""
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            data += chunk
        writer.close()
    finally:
        await frontend.close(2.0)
        fake.close()
    assert secret.encode() not in data
    assert b"XX000" in data  # tokenproxy's error, then the close


async def test_catalog_unavailable_refuses_every_statement(module_dsn: str) -> None:
    async def broken(database: str) -> asyncpg.Connection:
        raise OSError("no catalog for this test")

    async with pg_env(module_dsn, connect_for=broken, seed_data=False) as env:
        conn = await env.connect()
        try:
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.fetch("SELECT id, full_name FROM customers")
            assert info.value.sqlstate == "57P03"
        finally:
            await conn.close()


async def test_large_objects_through_psql_fast_path(env: PgEnv, tmp_path: Path) -> None:
    """psql's \\lo_import / \\lo_export use the fast-path function calls of libpq."""
    source, target = tmp_path / "in.bin", tmp_path / "out.bin"
    source.write_bytes(bytes(range(256)) * 40)
    out = await psql(env.dsn, "-c", f"\\lo_import {source}")
    oid = int(out.split()[-1])
    await psql(env.dsn, "-c", f"\\lo_export {oid} {target}")
    assert target.read_bytes() == source.read_bytes()
    await psql(env.dsn, "-c", f"\\lo_unlink {oid}")


async def test_fast_path_calls_other_than_large_objects_are_refused(env: PgEnv) -> None:
    version_oid = 89  # pg_catalog.version()
    async with RawSession.open(env) as raw:
        raw.send(FunctionCall(version_oid).encode())
        seen = await raw.until_ready()
    assert [type(m).__name__ for m in seen] == ["ErrorResponse", "ReadyForQuery"]
    assert seen[0].sqlstate == "42501"


async def test_copy_from_stdin_stores_real_values_for_tokens(env: PgEnv) -> None:
    """A tokenized export loaded back with \\copy FROM STDIN stores the real values."""
    exported = await psql(
        env.dsn, "-c", "\\copy (SELECT id + 300, full_name, notes FROM customers "
        "WHERE id IN (1, 2)) TO STDOUT WITH (FORMAT csv)"
    )
    assert BY_ID[1].full_name not in exported
    direct = await env.direct()
    try:
        await psql(env.dsn, "-c", "\\copy customers (id, full_name, notes) FROM STDIN "
                   "WITH (FORMAT csv)", stdin=exported.encode())
        stored = {r["id"]: (r["full_name"], r["notes"]) for r in await direct.fetch(
            "SELECT id, full_name, notes FROM customers WHERE id > 300")}
        assert stored == {
            301: (BY_ID[1].full_name, BY_ID[1].notes),
            302: (BY_ID[2].full_name, BY_ID[2].notes),
        }
    finally:
        await direct.execute("DELETE FROM customers WHERE id > 300")
        await direct.close()


async def test_binary_copy_of_protected_columns_is_refused(env: PgEnv) -> None:
    mark = env.mark()
    conn = await env.connect()
    try:
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.copy_from_query(
                "SELECT id, full_name FROM customers", output=lambda data: None,
                format="binary",
            )
        assert info.value.sqlstate in ("0A000", "42501")
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    env.assert_no_leak(mark)


async def test_other_client_encoding(env: PgEnv) -> None:
    mark = env.mark()
    async with await psycopg.AsyncConnection.connect(env.dsn, client_encoding="LATIN1") as conn:
        cur = await conn.execute("SELECT id, full_name FROM customers WHERE id = %s", (6,))
        row = await cur.fetchone()
        cur = conn.cursor(binary=True)
        await cur.execute("SELECT full_name FROM customers WHERE id = %s", (6,))
        binary = await cur.fetchone()
    assert row is not None and binary is not None
    assert row[1] != BY_ID[6].full_name and same_shape(row[1], BY_ID[6].full_name)
    assert binary[0] == row[1]
    env.assert_no_leak(mark)


async def test_sessions_without_standard_conforming_strings_are_refused(env: PgEnv) -> None:
    """With standard_conforming_strings off the server reads backslashes in literals where
    the parser does not: what is code and what is a string could be steered."""
    mark = env.mark()
    conn = await env.connect(server_settings={"standard_conforming_strings": "off"})
    try:
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.fetch("SELECT 'a\\\\', full_name FROM customers")
        assert info.value.sqlstate == "0A000"
    finally:
        await conn.close()
    env.assert_no_leak(mark)


async def test_a_view_created_in_the_same_text_is_not_a_way_around(env: PgEnv) -> None:
    """The analysis of a text runs before its DDL does: a view made and read in one go is
    unknown to it. The RowDescription names the new view; the catalog reloads, cannot see
    it (uncommitted), and the result is cut."""
    mark = env.mark()
    conn = await env.connect()
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch(
                "CREATE TEMP VIEW sneaky AS SELECT id, upper(full_name) AS n FROM customers;"
                " SELECT n FROM sneaky"
            )
        async with conn.transaction():
            await conn.execute(
                "CREATE TEMP VIEW sneaky2 AS SELECT id, full_name || '' AS n FROM customers"
            )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch("SELECT n FROM sneaky2")
    finally:
        await conn.close()
    env.assert_no_leak(mark)


async def test_psql_describe_commands_work(env: PgEnv) -> None:
    """psql's \\d reads the catalog (and the definitions in pg_statistic_ext)."""
    out = await psql(env.dsn, "-c", "\\d customers")
    assert "full_name" in out and "phone" in out
    assert "customers" in await psql(env.dsn, "-c", "\\dt")


async def test_an_unknown_message_mid_session_ends_it_with_a_protocol_error(env: PgEnv) -> None:
    async with RawSession.open(env) as raw:
        raw.send(b"z\x00\x00\x00\x04")  # no such frontend message
        seen = await raw.until_closed()
    errors = [m for m in seen if isinstance(m, ErrorResponse)]
    assert errors and errors[0].sqlstate == "08P01"


async def writes_refused_under(
    env: PgEnv, engine: TokenEngine, statements: list[tuple[str, tuple[Any, ...]]],
    message: str, cid: int, hint: str = "reload the record",
) -> list[Any]:
    """Each statement, run through the proxy with ``engine`` in force, is refused with
    22023 saying ``message`` (and ``hint``) before it reaches the database (customer
    ``cid``'s phone is as it was); the log entries of the tokens not resolved, checked to
    hold no value."""
    current = env.ctx.engine
    env.ctx.engine = lambda: engine
    try:
        conn = await env.connect()
        try:
            with structlog.testing.capture_logs() as logs:
                for sql, args in statements:
                    with pytest.raises(asyncpg.PostgresError) as info:
                        await conn.execute(sql, *args)
                    assert info.value.sqlstate == "22023"
                    assert message in str(info.value)
                    assert hint in (info.value.hint or "")
        finally:
            await conn.close()
    finally:
        env.ctx.engine = current
    direct = await env.direct()
    try:
        phone = await direct.fetchval("SELECT phone FROM customers WHERE id = $1", cid)
        assert phone == BY_ID[cid].phone
    finally:
        await direct.close()
    text = repr(logs)
    assert all(c.phone not in text and c.full_name not in text for c in SEED)
    return [e for e in logs if e["event"] == "pg.token_unresolved"]


async def test_a_token_of_a_retired_key_is_refused_and_logged_without_values(
    env: PgEnv,
) -> None:
    """A token whose key version this proxy no longer holds cannot be resolved: the
    statement is refused with 22023 before it reaches the database (passing the token
    on would store it as data), and the log says which kind and why, with no value."""
    conn = await env.connect()
    try:
        token = await conn.fetchval("SELECT phone FROM customers WHERE id = 3")
    finally:
        await conn.close()
    assert token != BY_ID[3].phone
    engine = env.ctx.engine()
    rotated = TokenEngine.standard(  # version 1 retired: its tokens are stale here
        Keyring.single(secrets.token_bytes(32), version=2),
        engine.vault,
        engine.registry,
        default_region="ID",
    )
    unresolved = await writes_refused_under(env, rotated, [
        ("UPDATE customers SET phone = $1 WHERE id = 4", (token,)),
        (f"UPDATE customers SET phone = '{token}' WHERE id = 4", ()),
    ], "cannot be resolved", 4)
    assert len(unresolved) == 2
    assert all(e["kind"] == "phone" and e["error"] == "StaleTokenError" for e in unresolved)
    assert "version 1" in unresolved[0]["detail"]


async def test_a_token_two_key_versions_issued_for_different_values_is_refused(
    env: PgEnv,
) -> None:
    """FF1 under two keys is two permutations of one domain: the new key's token of one
    phone may be the old key's token of another. Such a token coming back is refused
    (22023, saying so), never resolved by a guess; the database keeps its value."""
    conn = await env.connect()
    try:
        token = await conn.fetchval("SELECT phone FROM customers WHERE id = 3")
    finally:
        await conn.close()
    engine = env.ctx.engine()
    old = engine.keyring.active
    rotated = TokenEngine.standard(
        Keyring((old.with_state(KeyState.DECRYPT_ONLY),
                 DataKey(old.version + 1, secrets.token_bytes(32)))),
        engine.vault,
        MemoryRegistry(),  # (not the session's: its rows stay as they are)
        default_region="ID",
    )
    # The old key's token, as if the new key had issued it too (for the phone it
    # deciphers to under that key).
    rotated.registry.record([IssuedToken("phone", token, v, Method.FF1)
                             for v in (old.version, old.version + 1)])
    unresolved = await writes_refused_under(env, rotated, [
        ("UPDATE customers SET phone = $1 WHERE id = 3", (token,)),
    ], "two key versions for different values", 3, hint="cite a ticket for its customer")
    assert [e["error"] for e in unresolved] == ["AmbiguousTokenError"]
