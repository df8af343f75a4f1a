"""proxy.pg.batches: a whole batch and its whole answer recognised in the bytes (no
sockets), then taken through a live session by real clients.

What is recognised must be exactly what the message-by-message path would read, and
anything else (cut short, malformed, another message in between, unknown) must not be;
through a session, a batch taken whole must answer exactly as message by message."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from session_env import SEED, PgEnv, pg_env
from test_codec import typed_frontend
from test_session import RawSession

from proxy.crypto.engine import TokenEngine
from proxy.crypto.keyring import Keyring
from proxy.pg.batches import (
    BOUND,
    MAX_ROWS,
    PARSED,
    AnswerShape,
    BatchShape,
    answer,
    answer_like,
    learn,
    match,
)
from proxy.pg.codec import BackendDecoder, FrontendDecoder
from proxy.pg.messages import (
    Bind,
    BindComplete,
    Close,
    CommandComplete,
    DataRow,
    Describe,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    NoData,
    NoticeResponse,
    Parse,
    ParseComplete,
    Query,
    ReadyForQuery,
    RowDescription,
    Sync,
)
from proxy.pg.session import Session

SQL = "SELECT id, full_name FROM customers WHERE id = $1"
PARSE = Parse("", SQL, (23,))
FIELDS = RowDescription((FieldDescription("id", 16384, 1, 23, 4), FieldDescription(
    "full_name", 16384, 2)))
TAIL = Describe("P", "").encode() + Execute("", 0).encode() + Sync().encode()


def bind(*values: bytes | None, results: tuple[int, ...] = (0,), statement: str = "",
         portal: str = "") -> bytes:
    return Bind(portal, statement, (1,), values, results).encode()


def batch(*values: bytes | None, parse: Parse | None = PARSE, **kw: object) -> bytes:
    head = parse.encode() if parse is not None else b""
    return head + bind(*values, **kw) + TAIL  # type: ignore[arg-type]


def client(seen: bytes = PARSE.encode(), max_message_size: int = 1 << 30) -> FrontendDecoder:
    """A session's client decoder that has read (and memoized) ``seen``."""
    decoder = typed_frontend(max_message_size=max_message_size)
    decoder.memoize({b"P", b"D", b"E", b"C"})
    decoder.feed(seen)
    list(decoder.messages())
    return decoder


def server(*seen: bytes) -> BackendDecoder:
    decoder = BackendDecoder()
    decoder.memoize({b"T", b"t", b"C"})
    for frame in seen:
        decoder.feed(frame)
    list(decoder.messages())
    return decoder


def shape_of(data: bytes, decoder: FrontendDecoder) -> BatchShape:
    shape = learn(data, 0, decoder)
    assert shape is not None
    return shape


# ------------------------------------------------------------------------ learn, match


def test_a_batch_is_learnt_and_one_of_other_values_matches() -> None:
    decoder = client()
    first = batch(b"\x00\x00\x00\x01")
    shape = shape_of(first, decoder)
    assert shape.parse == PARSE and shape.statement == shape.portal == ""
    assert shape.result_formats == (0,) and shape.count == 1
    assert match(first, 0, shape) == len(first)
    for values in ([b"\x00\x00\x01\x00"], [None], [b""], [b"a longer value than before"]):
        other = batch(*values)
        assert match(other, 0, shape) == len(other)
        assert match(b"xx" + other + b"next", 2, shape) == 2 + len(other)


def test_a_prepared_statements_batch_has_no_parse() -> None:
    decoder = client(b"")
    data = batch(b"7", parse=None, statement="s1", portal="p")
    assert learn(data, 0, decoder) is None  # Describe and Execute name another portal
    data = bind(b"7", statement="s1") + TAIL
    shape = shape_of(data, decoder)
    assert shape.parse is None and shape.statement == "s1"
    other = bind(b"12345", statement="s1") + TAIL
    assert match(other, 0, shape) == len(other)
    assert match(bind(b"1", statement="s2") + TAIL, 0, shape) is None
    assert match(batch(b"1"), 0, shape) is None  # (a Parse first: another shape)


def test_a_prepared_statement_executed_undescribed() -> None:
    decoder = client(b"")
    tail = Execute("p", 0).encode() + Sync().encode()
    data = bind(b"1", statement="s1", portal="p") + tail  # (asyncpg's)
    shape = shape_of(data, decoder)
    assert not shape.described and shape.tail == tail and shape.portal == "p"
    other = bind(b"22", statement="s1", portal="p") + tail
    assert match(other, 0, shape) == len(other)
    assert match(bind(b"1", statement="s1", portal="p") + TAIL, 0, shape) is None
    # A statement parsed in the batch has its rows described first (message by message).
    assert learn(PARSE.encode() + bind(b"1") + Execute("", 0).encode() + Sync().encode(), 0,
                 client()) is None


@pytest.mark.parametrize("data", [
    batch(b"1", parse=Parse("", "SELECT 2", ())),  # a Parse not seen (not memoized) yet
    PARSE.encode() + bind(b"1", statement="other") + TAIL,  # binds another statement
    PARSE.encode() + bind(b"1") + Describe("S", "").encode() + Execute("", 0).encode()
    + Sync().encode(),
    PARSE.encode() + bind(b"1") + Describe("P", "").encode() + Execute("", 10).encode()
    + Sync().encode(),  # a row limit
    PARSE.encode() + bind(b"1") + Execute("other", 0).encode() + Sync().encode(),
    bind(b"1") + Describe("P", "").encode() + Describe("P", "").encode()
    + Execute("", 0).encode() + Sync().encode(),
    PARSE.encode() + bind(b"1") + TAIL[:-5] + Flush().encode(),  # no Sync
    PARSE.encode() + bind(b"1") + Flush().encode() + TAIL,  # something in between
    Describe("P", "").encode() + TAIL,
], ids=["unknown-parse", "other-statement", "describe-s", "row-limit", "other-portal",
        "two-describes", "flush", "in-between", "no-bind"])
def test_other_batches_are_not_learnt(data: bytes) -> None:
    assert learn(data, 0, client()) is None


def test_a_batch_cut_short_is_neither_learnt_nor_matched() -> None:
    decoder = client()
    data = batch(b"\x00\x00\x00\x05", b"")
    shape = shape_of(data, decoder)
    for cut in range(len(data)):
        assert learn(data[:cut], 0, decoder) is None
        assert match(data[:cut], 0, shape) is None, cut


@pytest.mark.parametrize("other", [
    batch(b"1", b"2"),  # another count of values (and length of the head)
    batch(b"1", results=(1,)),  # other result formats
    batch(b"1", results=()),
    PARSE.encode() + Bind("", "", (0,), (b"1",), (0,)).encode() + TAIL,  # other formats
    batch(b"1")[:-5] + Flush().encode(),  # another message last
], ids=["count", "results", "no-results", "param-formats", "tail"])
def test_a_batch_of_another_shape_does_not_match(other: bytes) -> None:
    decoder = client()
    shape = shape_of(batch(b"1"), decoder)
    assert match(other, 0, shape) is None


def _with_length(data: bytes, at: int, length: int) -> bytes:
    return data[:at] + length.to_bytes(4, "big", signed=True) + data[at + 4:]


def test_malformed_values_do_not_match() -> None:
    decoder = client()
    good = batch(b"abcd")
    shape = shape_of(good, decoder)
    values = len(PARSE.encode()) + 5 + len(shape.head)  # the first value's length
    for length in (-2, 5, 100, 1 << 30):  # past its Bind, or no length at all
        assert match(_with_length(good, values, length), 0, shape) is None
    assert match(_with_length(good, values, 4), 0, shape) == len(good)


def test_a_bind_over_the_size_limit_does_not_match() -> None:
    small = client(max_message_size=64)
    data = batch(b"x" * 10)
    shape = shape_of(data, small)
    assert match(data, 0, shape) == len(data)
    assert match(batch(b"x" * 100), 0, shape) is None


@given(st.lists(st.one_of(st.none(), st.binary(max_size=40)), min_size=1, max_size=4),
       st.lists(st.one_of(st.none(), st.binary(max_size=40)), min_size=1, max_size=4),
       st.binary(max_size=12))
def test_match_finds_exactly_the_batch_the_decoder_reads(
    first: list[bytes | None], second: list[bytes | None], after: bytes
) -> None:
    decoder = client()
    shape = shape_of(batch(*first), decoder)
    data = batch(*second) + after
    end = match(data, 0, shape)
    if len(first) != len(second):
        assert end is None
        return
    assert end == len(data) - len(after)
    reader = client()
    reader.feed(data[:end])
    messages = list(reader.messages())
    assert [type(m) for m in messages] == [Parse, Bind, Describe, Execute, Sync]
    assert messages[1].params == tuple(second)  # type: ignore[attr-defined]
    assert reader.buffered == 0


# ------------------------------------------------------------------------------- answer

ROW = DataRow((b"1", b"Budi")).encode()
DONE = CommandComplete("SELECT 1").encode() + ReadyForQuery("I").encode()
HEAD = ParseComplete().encode() + BindComplete().encode() + FIELDS.encode()


def test_a_whole_answer_is_found() -> None:
    decoder = server(FIELDS.encode(), DONE)
    data = HEAD + ROW + ROW + DONE
    found = answer(data, 0, PARSED, True, decoder)
    assert found is not None
    description, rows, rows_end, end = found
    assert description == FIELDS and data[rows:rows_end] == ROW + ROW and end == len(data)
    assert answer(data[5:], 0, BOUND, True, decoder) == (FIELDS, rows - 5, rows_end - 5, end - 5)
    assert answer(data[5:], 0, PARSED, True, decoder) is None  # ParseComplete missing
    assert answer(data, 0, BOUND, True, decoder) is None


def test_no_rows_and_no_data() -> None:
    decoder = server(FIELDS.encode(), DONE, CommandComplete("UPDATE 0").encode())
    found = answer(HEAD + DONE, 0, PARSED, True, decoder)
    assert found is not None and found[1] == found[2]
    data = BindComplete().encode() + NoData().encode() + CommandComplete("UPDATE 0").encode() \
        + ReadyForQuery("T").encode()
    found = answer(data, 0, BOUND, True, decoder)
    assert found is not None and found[0] == NoData() and found[3] == len(data)


def test_an_answer_with_no_description() -> None:
    decoder = server(DONE)
    data = BindComplete().encode() + ROW + DONE
    assert answer(data, 0, BOUND, False, decoder) == (None, 5, 5 + len(ROW), len(data))
    assert answer(data, 0, BOUND, True, decoder) is None
    assert answer(BindComplete().encode() + FIELDS.encode() + ROW + DONE, 0, BOUND, False,
                  server(FIELDS.encode(), DONE)) is None  # (a description not asked for)


def test_the_answer_to_a_simple_query() -> None:
    decoder = server(FIELDS.encode(), DONE)
    data = FIELDS.encode() + ROW + ROW + DONE
    assert answer(data, 0, b"", True, decoder) == (
        FIELDS, len(FIELDS.encode()), len(FIELDS.encode()) + 2 * len(ROW), len(data))
    assert answer(BindComplete().encode() + data, 0, b"", True, decoder) is None
    assert answer(data, 0, BOUND, True, decoder) is None


@pytest.mark.parametrize("data", [
    HEAD + ROW + ErrorResponse({"S": "ERROR", "C": "22012", "M": "division by zero"}).encode()
    + ReadyForQuery("I").encode(),
    HEAD + NoticeResponse({"S": "NOTICE", "M": "hi"}).encode() + ROW + DONE,
    HEAD + ROW + NoticeResponse({"S": "NOTICE", "M": "hi"}).encode() + DONE,
    HEAD + ROW + CommandComplete("SELECT 2").encode() + ReadyForQuery("I").encode(),
    ParseComplete().encode() + BindComplete().encode() + RowDescription(
        (FieldDescription("other"),)).encode() + DONE,
    HEAD + ROW * (MAX_ROWS + 1) + DONE,
    HEAD + b"D\x00\x00\x00\x01" + DONE,  # a DataRow of a length no DataRow may have
], ids=["error", "notice-before", "notice-after", "unknown-complete", "unknown-fields",
        "too-many-rows", "bad-row-length"])
def test_other_answers_are_not_taken(data: bytes) -> None:
    assert answer(data, 0, PARSED, True, server(FIELDS.encode(), DONE)) is None


def test_an_answer_cut_short_is_not_found() -> None:
    decoder = server(FIELDS.encode(), DONE)
    data = HEAD + ROW + DONE
    for cut in range(len(data)):
        assert answer(data[:cut], 0, PARSED, True, decoder) is None, cut
    assert answer(data + b"Z", 0, PARSED, True, decoder) is not None  # (what follows is not read)


# What `answer` found around a point select's row:
SEEN = AnswerShape(HEAD, FIELDS, DONE, server().sizes(0x44))


def test_an_answer_like_one_seen_before_is_found_as_answer_finds_it() -> None:
    decoder = server(FIELDS.encode(), DONE)
    for data in (HEAD + ROW + DONE, HEAD + ROW + ROW + DONE, HEAD + DONE):
        assert answer_like(data, 0, SEEN, decoder) == answer(data, 0, PARSED, True, decoder)
        moved = b"Z\x00\x00\x00\x05I" + data + b"1"
        assert answer_like(moved, 6, SEEN, decoder) == answer(moved, 6, PARSED, True, decoder)
    bare = AnswerShape(BindComplete().encode(), None, DONE, SEEN.row_sizes)  # (no Parse, Describe)
    data = BindComplete().encode() + ROW + DONE
    assert answer_like(data, 0, bare, decoder) == answer(data, 0, BOUND, False, decoder)


@pytest.mark.parametrize("data", [
    BindComplete().encode() + FIELDS.encode() + ROW + DONE,  # no ParseComplete
    ParseComplete().encode() + BindComplete().encode() + RowDescription(
        (FieldDescription("other"),)).encode() + ROW + DONE,
    HEAD + ROW + CommandComplete("SELECT 2").encode() + ReadyForQuery("I").encode(),
    HEAD + ROW + CommandComplete("SELECT 1").encode() + ReadyForQuery("T").encode(),
    HEAD + ROW + ErrorResponse({"S": "ERROR", "C": "22012", "M": "division by zero"}).encode()
    + ReadyForQuery("I").encode(),
    HEAD + NoticeResponse({"S": "NOTICE", "M": "hi"}).encode() + ROW + DONE,
    HEAD + ROW * (MAX_ROWS + 1) + DONE,
    HEAD + b"D\x00\x00\x00\x01" + DONE,
    HEAD + ROW[:-1] + DONE,  # a row one byte short: its frame swallows the tail's first
], ids=["no-parse-complete", "other-fields", "other-complete", "in-transaction", "error",
        "notice", "too-many-rows", "bad-row-length", "short-row"])
def test_an_answer_unlike_the_one_seen_is_left_to_answer(data: bytes) -> None:
    assert answer_like(data, 0, SEEN, server(FIELDS.encode(), DONE)) is None


def test_an_answer_like_one_seen_cut_short_is_not_found() -> None:
    decoder = server(FIELDS.encode(), DONE)
    data = HEAD + ROW + DONE
    for cut in range(len(data)):
        assert answer_like(data[:cut], 0, SEEN, decoder) is None, cut


def test_decoder_view_and_skip() -> None:
    decoder = server()
    data = HEAD + ROW + DONE
    decoder.feed(data[:10])
    assert decoder.view() == (data[:10], 0)
    decoder.feed(data[10:])
    assert decoder.view() is None  # not in one piece: message by message
    assert isinstance(decoder.next_message(), ParseComplete)
    fresh = server()
    fresh.feed(data)
    assert fresh.view() == (data, 0)
    fresh.skip(10)
    assert fresh.view() == (data, 10)
    with pytest.raises(Exception, match="whole frames"):
        fresh.skip(len(data) + 1)
    assert isinstance(fresh.next_message(), RowDescription)


# ------------------------------------------------------------------ through a live session

POINT = "SELECT id, full_name, phone FROM customers WHERE id = %s"
BY_ID = {c.id: c for c in SEED}


@pytest.fixture(scope="module")
async def env(module_dsn: str) -> AsyncIterator[PgEnv]:
    async with pg_env(module_dsn) as e:
        yield e


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Batches and answers taken whole by the sessions started from now on."""
    counts: Counter[str] = Counter()
    for name, what in (("take_batch", "batch"), ("whole_batch", "batch"),
                       ("take_answer", "answer"), ("whole_answer", "answer")):
        real: Callable[..., Any] = getattr(Session, name)

        def counting(self: Session, *args: Any, real: Callable[..., Any] = real,
                     what: str = what) -> Any:
            out = real(self, *args)
            if out is not None:
                counts[what] += 1
            return out

        monkeypatch.setattr(Session, name, counting)
    yield counts


def message_by_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """No batch taken whole by the sessions started from now on."""
    monkeypatch.setattr(Session, "take_batch", lambda self: None)
    monkeypatch.setattr(Session, "whole_batch", lambda self, data: None)


async def whole_as_one_by_one(
    env: PgEnv, taken: Counter[str], monkeypatch: pytest.MonkeyPatch,
    run: Callable[[], Awaitable[list[tuple[Any, ...]]]],
) -> None:
    """``run``'s point selects over every customer, taken whole (batches and answers),
    give the same rows as message by message: tokens, every customer, nothing leaked."""
    mark = env.mark()
    whole = await run()
    assert taken["batch"] >= 2 * len(SEED) and taken["answer"] >= 2 * len(SEED)
    message_by_message(monkeypatch)
    assert await run() == whole
    assert {row[0] for row in whole} == set(BY_ID)
    assert all(row[1] != BY_ID[row[0]].full_name for row in whole)
    env.assert_no_leak(mark)


async def point_selects(env: PgEnv, *, prepare: bool, binary: bool, ticket: str = ""
                        ) -> list[tuple[Any, ...]]:
    sql = POINT + (f" /*ticket='{ticket}'*/" if ticket else "")
    async with await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as conn:
        cur = conn.cursor(binary=binary)
        rows = []
        for _ in range(3):
            for customer in SEED:
                await cur.execute(sql, (customer.id,), prepare=prepare)  # type: ignore[arg-type]
                rows += await cur.fetchall()
        return rows


@pytest.mark.parametrize("prepare", [False, True], ids=["extended", "prepared"])
@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
async def test_point_selects_taken_whole_answer_as_message_by_message(
    env: PgEnv, taken: Counter[str], monkeypatch: pytest.MonkeyPatch, prepare: bool,
    binary: bool
) -> None:
    await whole_as_one_by_one(env, taken, monkeypatch, lambda: point_selects(
        env, prepare=prepare, binary=binary))


async def test_answers_of_other_row_counts_between_point_selects(
    env: PgEnv, taken: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A customer that is not there (no row, "SELECT 0") between those that are: each
    answer is read as it is, not as the one before it was."""
    async def run() -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as conn:
            rows = []
            for _ in range(2):
                for customer in SEED:
                    for cid in (customer.id, -customer.id, customer.id):
                        rows += await (await conn.execute(POINT, (cid,))).fetchall()
            assert len(rows) == 4 * len(SEED)
            return rows

    await whole_as_one_by_one(env, taken, monkeypatch, run)


def by_id(cid: int, parse: bool = True, describe: bool = True) -> bytes:
    """A point select of customer ``cid`` as a driver sends it, with a text parameter."""
    return (PARSE.encode() if parse else b"") + Bind(
        "", "", (0,), (str(cid).encode(),), (0,)).encode() + (
        TAIL if describe else Execute("", 0).encode() + Sync().encode())


def rows_of(seen: list[Any]) -> list[tuple[bytes | None, ...]]:
    return [m.columns for m in seen if isinstance(m, DataRow)]


async def test_the_statement_of_a_batch_described_or_closed_between_batches(
    env: PgEnv, taken: Counter[str]
) -> None:
    """The unnamed statement batches of one shape parse, described or closed message by
    message between them: each exchange answers as it would alone, rows tokenized."""
    mark = env.mark()
    name_of = {c.id: env.ctx.engine().tokenize("name", c.full_name).encode() for c in SEED}
    async with RawSession.open(env) as raw:
        async def exchange(data: bytes) -> list[Any]:
            raw.send(data)
            return await raw.until_ready()

        for cid in (1, 2, 1):
            assert rows_of(await exchange(by_id(cid))) == [(str(cid).encode(), name_of[cid])]
        described = await exchange(Describe("S", "").encode() + Sync().encode())
        assert [type(m).__name__ for m in described][-2:] == ["RowDescription", "ReadyForQuery"]
        undescribed = by_id(2, parse=False, describe=False)  # (the statement's description)
        assert rows_of(await exchange(undescribed)) == [(b"2", name_of[2])]
        assert rows_of(await exchange(by_id(3, parse=False))) == [(b"3", name_of[3])]
        assert rows_of(await exchange(by_id(3))) == [(b"3", name_of[3])]
        closed = await exchange(Close("S", "").encode() + undescribed)
        assert any(isinstance(m, ErrorResponse) for m in closed) and not rows_of(closed)
        for cid in (4, 1):
            assert rows_of(await exchange(by_id(cid))) == [(str(cid).encode(), name_of[cid])]
    assert taken["batch"] >= 5
    env.assert_no_leak(mark)


async def test_the_portal_of_a_batch_used_between_batches_and_behind_them(
    env: PgEnv, taken: Counter[str]
) -> None:
    """In a transaction (where the unnamed portal outlives its Sync), the portal batches
    of one shape bind is described and executed again message by message between them,
    and executed again behind a batch sent with it (before the batch's answer), the next
    batch sent in the same write: each exchange answers as it would alone, rows
    tokenized (a batch's portal is made again in place only when nothing is expected)."""
    mark = env.mark()
    name_of = {c.id: env.ctx.engine().tokenize("name", c.full_name).encode() for c in SEED}
    again = Describe("P", "").encode() + Execute("", 0).encode() + Sync().encode()

    def row(cid: int) -> tuple[bytes, bytes]:
        return (str(cid).encode(), name_of[cid])

    async with RawSession.open(env) as raw:
        async def exchange(data: bytes, syncs: int = 1) -> list[Any]:
            raw.send(data)
            seen: list[Any] = []
            while sum(isinstance(m, ReadyForQuery) for m in seen) < syncs:
                seen += await raw.until_ready()
            return seen

        await exchange(Query("BEGIN").encode())
        for cid in (1, 2):
            assert rows_of(await exchange(by_id(cid))) == [row(cid)]
        seen = await exchange(again)  # (its one row was read: a portal run to its end)
        assert [type(m).__name__ for m in seen] == [
            "RowDescription", "CommandComplete", "ReadyForQuery"]
        assert rows_of(await exchange(by_id(3))) == [row(3)]
        behind = await exchange(by_id(4) + again + by_id(1), syncs=3)
        assert rows_of(behind) == [row(4), row(1)]
        assert [type(m).__name__ for m in behind].count("ReadyForQuery") == 3
        assert not any(isinstance(m, ErrorResponse) for m in behind)
        assert rows_of(await exchange(by_id(2))) == [row(2)]
        await exchange(Query("ROLLBACK").encode())
    assert taken["batch"] >= 5 and taken["answer"] >= 4
    env.assert_no_leak(mark)


async def test_batches_sent_together_answered_message_by_message(
    env: PgEnv, taken: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of one shape sent in one write (each before the last one's answer), taken
    whole, their answers read message by message: each batch's expectations are its own,
    rows tokenized."""
    mark = env.mark()
    name_of = {c.id: env.ctx.engine().tokenize("name", c.full_name).encode() for c in SEED}
    monkeypatch.setattr(Session, "take_answer", lambda self: None)
    monkeypatch.setattr(Session, "whole_answer", lambda self, data: None)
    ids = [1, 2, 3, 1, 2]
    async with RawSession.open(env) as raw:
        for together in (ids[:1], ids, ids[::-1]):
            raw.send(b"".join(by_id(cid) for cid in together))
            seen: list[Any] = []
            while sum(isinstance(m, ReadyForQuery) for m in seen) < len(together):
                seen += await raw.until_ready()
            assert rows_of(seen) == [(str(cid).encode(), name_of[cid]) for cid in together]
    assert taken["batch"] >= 2 * len(ids) + 1
    env.assert_no_leak(mark)


async def test_a_ticket_reveals_its_customer_each_time_and_audits_it(
    env: PgEnv, taken: Counter[str]
) -> None:
    ticket = env.new_ticket_id()
    await env.add_ticket(ticket, [2])
    mark = env.mark()
    rows = await point_selects(env, prepare=True, binary=False, ticket=ticket)
    # The batches are taken whole; their answers go one by one (rows checked against the
    # ticket, a reveal audited before it is sent).
    assert taken["batch"] >= 2 * len(SEED)
    for cid, name, phone in rows:
        clear = cid == 2
        assert (name == BY_ID[cid].full_name) is clear and (phone == BY_ID[cid].phone) is clear
    env.assert_no_leak(mark, except_ids=[2])
    reveals = await env.pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE ticket = $1 AND action = 'reveal'", ticket)
    assert reveals == 3  # one a query of customer 2, each before its answer was sent


async def test_asyncpg_prepared_statements_taken_whole(
    env: PgEnv, taken: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> list[tuple[Any, ...]]:
        conn = await env.connect()
        try:
            rows = []
            for _ in range(3):
                for customer in SEED:
                    rows += [tuple(r) for r in await conn.fetch(POINT.replace("%s", "$1"),
                                                                customer.id)]
                await conn.execute("UPDATE plain_items SET label = label WHERE id = $1", 1)
            return rows
        finally:
            await conn.close()

    await whole_as_one_by_one(env, taken, monkeypatch, run)


async def test_a_session_ticket_set_between_batches_of_one_shape(
    env: PgEnv, taken: Counter[str]
) -> None:
    """The ticket is the session's at each batch, not the one of the batch before."""
    ticket = env.new_ticket_id()
    await env.add_ticket(ticket, [3])
    mark = env.mark()
    async with await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as conn:
        async def name_of_3() -> str:
            row = await (await conn.execute(POINT, (3,))).fetchone()
            assert row is not None
            return str(row[1])

        before = [await name_of_3() for _ in range(3)]
        await conn.execute(f"SET tokenproxy.ticket = '{ticket}'")
        during = [await name_of_3() for _ in range(3)]
        await conn.execute("RESET tokenproxy.ticket")
        after = [await name_of_3() for _ in range(3)]
    real = BY_ID[3].full_name
    assert real not in before + after and len(set(before + after)) == 1
    assert during == [real] * 3
    assert taken["batch"] >= 8
    env.assert_no_leak(mark, except_ids=[3])


async def test_a_key_rotated_between_batches_of_one_shape(
    env: PgEnv, taken: Counter[str]
) -> None:
    """Rows are rewritten with the engine in force at each answer: after a rotation, the
    new key's tokens (from the next batch of the same session and shape on)."""
    mark = env.mark()
    current = env.ctx.engine
    engine = current()
    rotated = TokenEngine.standard(
        Keyring.single(bytes(range(50, 82)), version=2), engine.vault, engine.registry,
        default_region="ID",
    )
    async with await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as conn:
        async def tokens() -> set[tuple[Any, ...]]:
            rows = set()
            for _ in range(3):
                for customer in SEED:
                    row = await (await conn.execute(POINT, (customer.id,))).fetchone()
                    assert row is not None
                    rows.add(tuple(row))
            return rows

        before = await tokens()
        env.ctx.engine = lambda: rotated
        try:
            after = await tokens()
        finally:
            env.ctx.engine = current
        again = await tokens()
    assert len(before) == len(after) == len(SEED) and before == again  # (stable per key)
    assert not {row[1] for row in before} & {row[1] for row in after}
    expected = {(c.id, rotated.tokenize("name", c.full_name), rotated.tokenize("phone", c.phone))
                for c in SEED}
    assert after == expected
    assert taken["answer"] >= 5 * len(SEED)
    env.assert_no_leak(mark)


async def test_errors_refusals_and_declined_batches_go_one_by_one(
    env: PgEnv, taken: Counter[str]
) -> None:
    mark = env.mark()
    async with await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as conn:
        for _ in range(3):
            await conn.execute(POINT, (1,))
        before = taken["answer"]
        with pytest.raises(psycopg.errors.DivisionByZero):  # the server's error
            await conn.execute("SELECT id / %s FROM customers WHERE id = 1", (0,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # refused by tokenproxy
            await conn.execute("SELECT upper(full_name) FROM customers WHERE id = %s", (1,))
        phone_token = (await (await conn.execute(POINT, (4,))).fetchone())[2]  # type: ignore[index]
        for _ in range(2):  # a token to resolve: each batch declined, then message by message
            found = await (await conn.execute(
                "SELECT id FROM customers WHERE phone = %s", (phone_token,))).fetchall()
            assert found == [(4,)]
        row = await (await conn.execute(POINT, (3,))).fetchone()
        assert row is not None and row[0] == 3 and row[1] != BY_ID[3].full_name
        assert taken["answer"] > before  # whole again after all of them
        async with conn.pipeline():  # several batches in one read, and their answers
            cursors = [await conn.execute(POINT, (cid,)) for cid in (1, 2, 3)]
        assert [(await c.fetchone())[0] for c in cursors] == [1, 2, 3]  # type: ignore[index]
    env.assert_no_leak(mark)


# ------------------------------------------------------- simple queries, answered whole

TEXT_POINT = "SELECT id, full_name, phone FROM customers WHERE id = {}"


def no_whole_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """No answer taken whole by the sessions started from now on."""
    monkeypatch.setattr(Session, "take_answer", lambda self: None)
    monkeypatch.setattr(Session, "whole_answer", lambda self, data: None)


async def simple_queries(env: PgEnv, texts: list[str]) -> list[list[Any]]:
    """The messages answering each text, sent as a simple Query one after the other."""
    async with RawSession.open(env) as raw:
        answers = []
        for text in texts:
            raw.send(Query(text).encode())
            answers.append(await raw.until_ready())
        return answers


async def test_simple_queries_answered_whole_as_message_by_message(
    env: PgEnv, taken: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point selects sent as text (psql, pgbench -M simple, drivers that interpolate) have
    their answers taken whole; between them, every other kind of answer goes as it did.
    Both ways, the client receives the same messages: tokens, reveals under the ticket
    only (each audited), errors and refusals, several statements in one Query."""
    ticket = env.new_ticket_id()
    await env.add_ticket(ticket, [2])
    texts: list[str] = []
    for customer in SEED:
        texts += [TEXT_POINT.format(customer.id)] * 2
        texts.append(TEXT_POINT.format(customer.id + 1000))  # no row: another CommandComplete
    texts += [
        "SELECT id, label FROM plain_items WHERE id = 1",  # no protected column
        "SELECT id, full_name FROM customers WHERE id IN (1, 2, 3) ORDER BY id",
        TEXT_POINT.format(1) + "; " + TEXT_POINT.format(3),  # two statements
        "SELECT id / 0 FROM customers WHERE id = 1",  # the server's error after a description
        "SELECT upper(full_name) FROM customers WHERE id = 1",  # refused by tokenproxy
        TEXT_POINT.format(2) + f" /*ticket='{ticket}'*/",  # revealed, audited
        TEXT_POINT.format(4) + f" /*ticket='{ticket}'*/",  # not on the ticket: tokens
        TEXT_POINT.format(2),
        f"SET tokenproxy.ticket = '{ticket}'",
        TEXT_POINT.format(2),  # revealed: the session's ticket
        TEXT_POINT.format(2),
        "RESET tokenproxy.ticket",
        TEXT_POINT.format(2),  # tokens again
        "BEGIN",
        TEXT_POINT.format(3),  # ReadyForQuery 'T': another tail
        TEXT_POINT.format(3),
        "COMMIT",
        TEXT_POINT.format(3),
        "PREPARE byid AS SELECT id, email FROM customers WHERE id = $1",
        "EXECUTE byid(1)",  # rows of a statement prepared in SQL: its outputs
        "EXECUTE byid(1)",
        "DEALLOCATE byid",
        "PREPARE byid AS SELECT id, full_name FROM customers WHERE id = $1",
        "EXECUTE byid(1)",  # the same text, another statement: tokens
        "EXECUTE byid(1)",
    ]
    mark = env.mark()
    whole = await simple_queries(env, texts)
    # (message by message: the first, planned; the first with no row, its "SELECT 0" new)
    assert taken["answer"] >= 3 * len(SEED) - 2
    audited = "SELECT count(*) FROM audit_log WHERE ticket = $1 AND action = 'reveal'"
    assert await env.pool.fetchval(audited, ticket) == 3
    assert taken["batch"] >= 3 * len(SEED)  # (the Queries, taken whole too)
    no_whole_answers(monkeypatch)
    message_by_message(monkeypatch)
    assert await simple_queries(env, texts) == whole
    assert await env.pool.fetchval(audited, ticket) == 6
    env.assert_no_leak(mark, except_ids=[2])

    def rows(i: int) -> list[tuple[bytes | None, ...]]:
        return rows_of(whole[i])

    name = {c.id: c.full_name.encode() for c in SEED}
    for i, customer in enumerate(SEED):
        first, again, missing = rows(3 * i), rows(3 * i + 1), rows(3 * i + 2)
        assert first == again and len(first) == 1 and missing == []
        assert first[0][0] == str(customer.id).encode() and first[0][1] != name[customer.id]
    at = 3 * len(SEED)
    assert rows(at) == [(b"1", b"alpha")]
    assert [r[0] for r in rows(at + 1)] == [b"1", b"2", b"3"]
    assert [r[0] for r in rows(at + 2)] == [b"1", b"3"]
    assert any(isinstance(m, ErrorResponse) for m in whole[at + 3])
    assert any(isinstance(m, ErrorResponse) for m in whole[at + 4])
    def revealed(i: int) -> bool:
        ((cid, got, _),) = rows(i)
        return cid is not None and got == name[int(cid)]

    assert [revealed(at + k) for k in (5, 6, 7, 9, 10, 12)] == [
        True, False, False, True, True, False]
    assert rows(at + 14) == rows(at + 15) == rows(at + 17)
    assert rows(at + 19) == rows(at + 20) == [(b"1", SEED[0].email.encode())]
    assert rows(at + 23) == rows(at + 24) == [(b"1", rows(0)[0][1])]  # (customer 1's token)


def query_frame(body: bytes, size: int | None = None) -> bytes:
    """A Query frame of ``body`` (its text and NUL, as is), declaring ``size`` if given."""
    return b"Q" + (len(body) + 4 if size is None else size).to_bytes(4, "big") + body


async def test_only_one_whole_query_a_read_is_taken_undecoded(
    env: PgEnv, taken: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that is exactly one well-formed Query is handled without decoding it; any
    other read beginning with a Query goes through the decoder, as before: the client
    receives the same messages either way (the decoder's errors included)."""
    point = Query(TEXT_POINT.format(2)).encode()
    cases: list[tuple[list[bytes], int]] = [  # (the reads sent, the ReadyForQuery awaited)
        ([point] * 6, 6),  # (one may wait for the catalog's recheck, every 2 s: not all)
        ([point + point], 2),  # two in one read
        ([point[:9], point[9:]], 1),  # one over two reads
        ([query_frame(b"SELECT 1\0x\0")], 0),  # a NUL in its text: refused, closed
        ([query_frame(b"SELECT 1\0", 9)], 0),  # a length that does not match its text
        ([query_frame(b"SELECT 1\0") + b"Q"], 1),  # the next message begun
        ([query_frame(b"\0")], 1),  # no statement at all
    ]

    async def answers() -> list[list[Any]]:
        out = []
        for reads, readies in cases:
            async with RawSession.open(env) as raw:
                for data in reads:
                    raw.send(data)
                    await raw.writer.drain()
                    await asyncio.sleep(0.02)
                seen: list[Any] = []
                while sum(isinstance(m, ReadyForQuery) for m in seen) < readies:
                    seen += await raw.until_ready()  # (two may come in one read)
                out.append(seen if readies else await raw.until_closed())
        return out

    mark = env.mark()
    whole = await answers()
    env.assert_no_leak(mark)  # (customer 2's name and phone never sent)
    assert taken["batch"] >= 3
    assert [type(m) for m in whole[0]] == [RowDescription, DataRow, CommandComplete,
                                           ReadyForQuery] * 6
    assert len(rows_of(whole[1])) == 2 and len(rows_of(whole[2])) == 1
    for closed in whole[3:5]:
        assert [type(m) for m in closed] == [ErrorResponse]
    message_by_message(monkeypatch)
    assert await answers() == whole
    env.assert_no_leak(mark)  # (nor message by message)


async def test_a_ticket_set_by_the_extended_protocol_between_simple_queries(
    env: PgEnv, taken: Counter[str]
) -> None:
    """The runs of a simple Query sent again are its last ones only under the same ticket:
    one set or reset by a statement of the extended protocol in between counts."""
    ticket = env.new_ticket_id()
    await env.add_ticket(ticket, [2])
    mark = env.mark()

    def extended(sql: str) -> bytes:
        return (Parse("", sql, ()).encode() + Bind("", "", (), (), ()).encode()
                + Execute("", 0).encode() + Sync().encode())

    point = Query(TEXT_POINT.format(2)).encode()
    names = []
    async with RawSession.open(env) as raw:
        for before in (b"", extended(f"SET tokenproxy.ticket = '{ticket}'"),
                       extended("RESET tokenproxy.ticket")):
            if before:
                raw.send(before)
                await raw.until_ready()
            for _ in range(3):
                raw.send(point)
                names += [row[1] for row in rows_of(await raw.until_ready())]
    real = BY_ID[2].full_name.encode()
    assert [name == real for name in names] == [False] * 3 + [True] * 3 + [False] * 3
    assert taken["answer"] >= 4
    env.assert_no_leak(mark, except_ids=[2])


async def test_a_token_in_a_simple_query_is_resolved_and_echoed(
    env: PgEnv, taken: Counter[str]
) -> None:
    """A Query with a token in its text (resolved before it is sent: the run holds the
    value) answers with that token where the value comes back, each time alike."""
    mark = env.mark()
    async with RawSession.open(env) as raw:
        raw.send(Query(TEXT_POINT.format(4)).encode())
        ((_, _, phone),) = rows_of(await raw.until_ready())
        assert phone is not None and phone.decode() != BY_ID[4].phone
        by_phone = f"SELECT id, phone FROM customers WHERE phone = '{phone.decode()}'"
        found = []
        for _ in range(3):
            raw.send(Query(by_phone).encode())
            found.append(rows_of(await raw.until_ready()))
    assert found == [[(b"4", phone)]] * 3
    env.assert_no_leak(mark)
