"""proxy.pg.copyrows: COPY TO STDOUT rows read and re-written byte-exact, checked against
what the suite's PostgreSQL writes."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from proxy.errors import TokenProxyError
from proxy.pg.copyrows import CopyRow, CopyRowReader, UnsupportedCopyFormat
from proxy.pg.values import ValueFormatError

SPECIAL = ["\t", "\n", "\r", "\\", '"', "'", ",", "|", ";", "\b", "\f", "\v", "\x01", " "]
WORDS = ["", "\\N", "\\.", "N", "NULL", "nil", '""', "John Smith", "Zoë", "李", "🙂", "ソ表", "x"]


def random_value(rnd: random.Random) -> str | None:
    if rnd.random() < 0.08:
        return None
    if rnd.random() < 0.15:
        return rnd.choice(WORDS)
    pool = SPECIAL + WORDS + ["a", "b", "é", "ñ", "1"]
    return "".join(rnd.choice(pool) for _ in range(rnd.randrange(0, 8)))


def random_rows(n: int) -> list[tuple[int, str | None, str | None]]:
    rnd = random.Random(7)
    rows = [(i, random_value(rnd), random_value(rnd)) for i in range(n)]
    rows += [(n, "\\.", None), (n + 1, "", ""), (n + 2, None, None)]
    return rows


@pytest.fixture(scope="module")
async def table(module_dsn: str) -> AsyncIterator[tuple[str, list[tuple[Any, ...]]]]:
    rows = random_rows(400)
    conn = await asyncpg.connect(module_dsn)
    try:
        await conn.execute("CREATE TABLE copy_src (id int, a text, b text)")
        await conn.copy_records_to_table("copy_src", records=rows)
        await conn.execute("CREATE TABLE copy_one (v text)")
        await conn.copy_records_to_table("copy_one", records=[(r[1],) for r in rows])
    finally:
        await conn.close()
    yield module_dsn, rows


async def copy_out(dsn: str, query: str, **options: Any) -> list[bytes]:
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(bytes(data))

    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_from_query(query, output=sink, **options)
    finally:
        await conn.close()
    return chunks


def read_all(reader: CopyRowReader, data: bytes, rnd: random.Random) -> list[CopyRow]:
    """Feed in random-sized pieces (cutting rows and multi-byte characters)."""
    rows: list[CopyRow] = []
    pos = 0
    while pos < len(data):
        step = rnd.randrange(1, 40)
        rows += reader.feed(data[pos : pos + step])
        pos += step
    reader.finish()
    return rows


CONFIGS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    # (id, asyncpg copy options, CopyRowReader keywords)
    ("text", {}, {"format": "text"}),
    ("text-pipe", {"delimiter": "|"}, {"format": "text", "delimiter": "|"}),
    ("text-null", {"null": "nil"}, {"format": "text", "null": "nil"}),
    ("text-header", {"header": True}, {"format": "text", "header": True}),
    ("csv", {"format": "csv"}, {"format": "csv"}),
    ("csv-header", {"format": "csv", "header": True}, {"format": "csv", "header": True}),
    ("csv-semicolon", {"format": "csv", "delimiter": ";"}, {"format": "csv", "delimiter": ";"}),
    ("csv-null", {"format": "csv", "null": "NULL"}, {"format": "csv", "null": "NULL"}),
    (
        "csv-quote-escape",
        {"format": "csv", "quote": "'", "escape": "\\"},
        {"format": "csv", "quote": "'", "escape": "\\"},
    ),
    ("csv-escape", {"format": "csv", "escape": "\\"}, {"format": "csv", "escape": "\\"}),
    ("csv-force-quote", {"format": "csv", "force_quote": True}, {"format": "csv"}),
    ("csv-force-quote-a", {"format": "csv", "force_quote": ["a"]}, {"format": "csv"}),
]


def make_reader(
    kw: dict[str, Any], encoding: str = "UTF8", columns: int | None = 3
) -> CopyRowReader:
    kw = dict(kw)
    fmt = kw.pop("format")
    delimiter = kw.pop("delimiter", None)
    header = kw.pop("header", False)
    return CopyRowReader(fmt, delimiter, header, encoding, columns=columns, **kw)


@pytest.mark.parametrize(("name", "options", "kw"), CONFIGS, ids=[c[0] for c in CONFIGS])
async def test_reads_and_rewrites_postgresql_output(
    table: tuple[str, list[tuple[Any, ...]]], name: str, options: dict[str, Any], kw: dict[str, Any]
) -> None:
    dsn, rows = table
    chunks = await copy_out(dsn, "SELECT id, a, b FROM copy_src ORDER BY id", **options)
    data = b"".join(chunks)
    reader = make_reader(kw)
    got = read_all(reader, data, random.Random(name))
    header = kw.get("header", False)
    if header:
        assert got[0].header and got[0].fields == ("id", "a", "b")
        assert not any(r.header for r in got[1:])
    body = got[1:] if header else got
    expected: list[tuple[str | None, ...]] = [(str(i), a, b) for i, a, b in rows]
    if kw == {"format": "text", "null": "nil"}:
        # Text COPY writes a value equal to a custom NULL string unescaped: PostgreSQL's own
        # ambiguity, read back as NULL (as COPY FROM would).
        expected = [tuple(None if v == "nil" else v for v in row) for row in expected]
    assert [r.fields for r in body] == expected
    # Byte-exact: with the quoting read (FORCE_QUOTE) and, without it, as PostgreSQL writes.
    assert b"".join(reader.encode_row(r.fields, r.quoted) for r in got) == data
    if "force_quote" not in options:
        assert b"".join(reader.encode_row(r.fields) for r in got) == data
    # Also fed whole, one CopyData at a time (as PostgreSQL sends them).
    again = make_reader(kw)
    whole: list[CopyRow] = []
    for chunk in chunks:
        whole += again.feed(chunk)
    again.finish()
    assert whole == got


@pytest.mark.parametrize("fmt", ["text", "csv"])
async def test_single_column_end_marker(table: tuple[str, list[tuple[Any, ...]]], fmt: str) -> None:
    """A lone "\\." in a one-column CSV is quoted by PostgreSQL; the encoder does the same."""
    dsn, rows = table
    data = b"".join(await copy_out(dsn, "SELECT v FROM copy_one", format=fmt))
    reader = CopyRowReader(fmt, None, False, "UTF8", columns=1)
    got = read_all(reader, data, random.Random(1))
    assert [r.fields for r in got] == [(r[1],) for r in rows]
    assert b"".join(reader.encode_row(r.fields) for r in got) == data


@pytest.mark.parametrize("encoding", ["SJIS", "BIG5", "LATIN1", "WIN1251"])
@pytest.mark.parametrize("fmt", ["text", "csv"])
async def test_client_encodings(module_dsn: str, encoding: str, fmt: str) -> None:
    """Multi-byte characters whose second byte is a backslash or delimiter stay whole."""
    values = {
        "SJIS": ["ソ表", "能", "山田|太郎", "a\\b"],
        "BIG5": ["功", "許蓋", "中文,字", "a\\b"],
        "LATIN1": ["Zoë", "Ågot\tx", "ÿ\\"],
        "WIN1251": ["Иван", "Ж\nЁ", "д\\"],
    }[encoding]
    sql = "SELECT v, i FROM unnest($1::text[]) WITH ORDINALITY AS u(v, i) ORDER BY i"
    conn = await asyncpg.connect(module_dsn)
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(bytes(data))

    try:
        # asyncpg's copy_from_query does not take parameters: inline a literal array.
        array = "ARRAY[" + ",".join("'" + v.replace("'", "''") + "'" for v in values) + "]"
        await conn.copy_from_query(
            sql.replace("$1", array), output=sink, format=fmt, encoding=encoding, delimiter="|"
        )
    finally:
        await conn.close()
    data = b"".join(chunks)
    reader = CopyRowReader(fmt, "|", False, encoding, columns=2)
    got = read_all(reader, data, random.Random(encoding))
    assert [r.fields[0] for r in got] == values
    assert b"".join(reader.encode_row(r.fields) for r in got) == data


# -- pure properties ------------------------------------------------------------------------

field = st.none() | st.text(
    alphabet=st.sampled_from([*SPECIAL, "a", "é", "李", "N", ".", "x"])
    | st.characters(exclude_categories=["Cs"]),
    max_size=12,
)
reader_kw = st.sampled_from([c[2] for c in CONFIGS])


@given(reader_kw, st.lists(st.lists(field, min_size=3, max_size=3), max_size=8), st.randoms())
def test_encode_then_read_round_trips(
    kw: dict[str, Any], rows: list[list[str | None]], rnd: random.Random
) -> None:
    if kw.get("null") == "nil":  # text COPY's own ambiguity (see above)
        assume(all(f != "nil" for row in rows for f in row))
    writer = make_reader(kw)
    if kw.get("header"):
        rows = [["id", "a", "b"], *rows]
    data = b"".join(writer.encode_row(r) for r in rows)
    got = read_all(make_reader(kw), data, rnd)
    assert [list(r.fields) for r in got] == rows


@given(st.lists(st.lists(field, min_size=1, max_size=4), min_size=1, max_size=5))
def test_several_rows_in_one_message(rows: list[list[str | None]]) -> None:
    for fmt in ("text", "csv"):
        reader = CopyRowReader(fmt, None, False, "UTF8")
        data = b"".join(reader.encode_row(r) for r in rows)
        got = reader.feed(data)
        reader.finish()
        assert [list(r.fields) for r in got] == rows


def test_text_escapes() -> None:
    reader = CopyRowReader("text", None, False, "UTF8")
    rows = reader.feed(b"\\b\\f\\n\\r\\t\\v\\\\\\101\\x41\\x4\\xg\\q\\.\t\\303\\251\t\\N\tN\n")
    assert rows[0].fields == ("\b\f\n\r\t\v\\AA\x04xgq.", "é", None, "N")


def test_text_escaped_newline_is_data() -> None:
    reader = CopyRowReader("text", None, False, "UTF8")
    assert reader.feed(b"a\\\nb\tc\\\\\n") == [CopyRow(("a\nb", "c\\"))]


def test_csv_quoting_forms() -> None:
    reader = CopyRowReader("csv", None, False, "UTF8")
    rows = reader.feed(b'"a""b",x"y,z"w,,"",""""\n"multi\nline\r\n",\n')
    assert rows[0].fields == ('a"b', "xy,zw", None, "", '"')
    assert rows[0].quoted == (True, True, False, True, True)
    assert rows[1].fields == ("multi\nline\r\n", None)


def test_partial_rows_wait_and_finish_checks() -> None:
    reader = CopyRowReader("csv", None, False, "UTF8")
    assert reader.feed(b'1,"open\n') == []
    assert reader.feed(b'still"\n2,') == [CopyRow(("1", "open\nstill"), quoted=(False, True))]
    with pytest.raises(ValueFormatError):
        reader.finish()
    text = CopyRowReader("text", None, False, "UTF8")
    assert text.feed(b"a\tZo" + "ë".encode()[:1]) == []
    with pytest.raises(ValueFormatError) as err:
        text.finish()
    assert "Zo" not in str(err.value)


def test_errors_and_column_count() -> None:
    reader = CopyRowReader("text", None, False, "UTF8", columns=2)
    with pytest.raises(ValueFormatError) as err:
        reader.feed(b"Secret Name\n")
    assert "Secret" not in str(err.value)
    with pytest.raises(ValueFormatError):
        CopyRowReader("text", None, False, "UTF8").feed(b"\xff\xfe\n")
    assert CopyRowReader("csv", None, False, "UTF8").feed(b'"a"b"\n"\n')[0].fields == ("ab\n",)
    with pytest.raises(ValueFormatError):
        CopyRowReader("text", None, False, "LATIN1").encode_row(["李"])
    with pytest.raises(ValueFormatError):
        CopyRowReader("csv", None, False, "UTF8").encode_row(["\ud800"])


@pytest.mark.parametrize(
    ("args", "kw"),
    [
        (("binary", None, False, "UTF8"), {}),
        (("BINARY", None, False, "UTF8"), {}),
        (("xml", None, False, "UTF8"), {}),
        (("text", None, False, "EUC_TW"), {}),
        (("text", "ab", False, "UTF8"), {}),
        (("text", "\n", False, "UTF8"), {}),
        (("text", "a", False, "UTF8"), {}),
        (("text", "\\", False, "UTF8"), {}),
        (("csv", ",", False, "UTF8"), {"quote": ","}),
        (("csv", None, False, "UTF8"), {"null": "a,b"}),
        (("text", None, False, "UTF8"), {"quote": "'"}),
    ],
)
def test_unsupported(args: tuple[str, str | None, bool, str], kw: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedCopyFormat) as err:
        CopyRowReader(*args, **kw)
    assert isinstance(err.value, TokenProxyError)
    if args[0].lower() == "binary":
        assert "text" in str(err.value) and "csv" in str(err.value)


def test_encode_row_matches_postgresql_rules() -> None:
    text = CopyRowReader("text", "|", False, "UTF8")
    assert text.encode_row(["a|b", "c\td", None, "\\N"]) == b"a\\|b|c\\td|\\N|\\\\N\n"
    csv = CopyRowReader("csv", None, False, "UTF8")
    fields: Sequence[str | None] = ["", None, "a,b", 'q"', "x\ry", "\\."]
    assert csv.encode_row(fields) == b'"",,"a,b","q""","x\ry",\\.\n'
    assert csv.encode_row(["\\."]) == b'"\\."\n'
    assert csv.encode_row(["a", "b"], quoted=[True, False]) == b'"a",b\n'
