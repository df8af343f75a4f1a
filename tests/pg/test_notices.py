"""proxy.pg.notices: real PostgreSQL errors scrubbed so that no protected value is left."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.crypto.tokens import Kind
from proxy.pg.notices import FAILING_ROW_HIDDEN, scrub_fields

# asyncpg's names for the ErrorResponse field codes.
CODES = {
    "severity": "S",
    "severity_en": "V",
    "sqlstate": "C",
    "message": "M",
    "detail": "D",
    "hint": "H",
    "position": "P",
    "internal_position": "p",
    "internal_query": "q",
    "context": "W",
    "schema_name": "s",
    "table_name": "t",
    "column_name": "c",
    "data_type_name": "d",
    "constraint_name": "n",
    "server_source_filename": "F",
    "server_source_line": "L",
    "server_source_function": "R",
}
UNTOUCHED = set("SVCPpFLRntcsd")
PROTECTED = {"full_name": Kind.NAME, "phone": Kind.PHONE, "customer_phone": Kind.PHONE}


def reverse(kind: Kind, value: str) -> str:
    """A deterministic stand-in tokenizer: the value reversed (kind-tagged for phones)."""
    return value[::-1] + ("#" if kind is Kind.PHONE else "")


SCHEMA = """
CREATE TABLE customers (
    id int PRIMARY KEY, full_name text UNIQUE, phone text NOT NULL UNIQUE, email text,
    age int CHECK (age > 0), UNIQUE (email, full_name));
CREATE TABLE orders (id int, customer_phone text REFERENCES customers (phone));
CREATE TABLE lowered (full_name text);
CREATE UNIQUE INDEX lowered_name ON lowered (lower(full_name));
CREATE TABLE bookings (full_name text, EXCLUDE USING hash (full_name WITH =));
INSERT INTO customers VALUES (1, 'John Smith', '+15551234567', 'js@example.com', 40);
INSERT INTO customers VALUES (2, 'Ann, Lee', '+15557654321', 'al@example.com', 30);
INSERT INTO orders VALUES (1, '+15551234567');
INSERT INTO lowered VALUES ('Mary Major');
INSERT INTO bookings VALUES ('Zoë Ñúñez');
"""


@pytest.fixture
async def conn(schema_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(schema_dsn)
    await c.execute(SCHEMA)
    try:
        yield c
    finally:
        await c.close()


async def error_fields(conn: asyncpg.Connection, sql: str) -> dict[str, str]:
    with pytest.raises(asyncpg.PostgresError) as err:
        await conn.execute(sql)
    return {CODES[k]: str(v) for k, v in err.value.as_dict().items() if k in CODES}


def scrub(
    fields: Mapping[str, str], touches: bool = True, known: Mapping[str, str] | None = None
) -> dict[str, str]:
    return scrub_fields(
        fields,
        touches_protected=touches,
        known=known or {},
        protected_columns=PROTECTED,
        tokenize=reverse,
    )


def assert_gone(fields: Mapping[str, str], *raws: str) -> None:
    for code, text in fields.items():
        for raw in raws:
            assert raw not in text, (code, text)


def assert_untouched(before: Mapping[str, str], after: Mapping[str, str]) -> None:
    for code in UNTOUCHED & before.keys():
        assert after[code] == before[code]


async def test_unique_violation_tokenizes_key(conn: asyncpg.Connection) -> None:
    f = await error_fields(conn, "INSERT INTO customers VALUES (3, 'John Smith', '+1999', 'x', 1)")
    assert f["D"] == "Key (full_name)=(John Smith) already exists."
    for touches in (True, False):
        out = scrub(f, touches)
        assert out["D"] == "Key (full_name)=(htimS nhoJ) already exists."
        assert out["M"] == f["M"]  # 'duplicate key value violates unique constraint "..."'
        assert_untouched(f, out)


async def test_composite_key_with_comma_in_value_is_hidden(conn: asyncpg.Connection) -> None:
    await conn.execute("ALTER TABLE customers DROP CONSTRAINT customers_full_name_key")
    f = await error_fields(
        conn, "INSERT INTO customers VALUES (4, 'Ann, Lee', '+1888', 'al@example.com', 1)"
    )
    assert f["D"] == "Key (email, full_name)=(al@example.com, Ann, Lee) already exists."
    out = scrub(f)
    assert out["D"] == "Key (email, full_name)=(...) already exists."
    assert_gone(out, "Ann", "Lee")


async def test_single_column_key_with_comma(conn: asyncpg.Connection) -> None:
    f = await error_fields(conn, "INSERT INTO customers VALUES (4, 'Ann, Lee', '+1888', 'x', 1)")
    assert f["D"] == "Key (full_name)=(Ann, Lee) already exists."
    assert scrub(f)["D"] == "Key (full_name)=(eeL ,nnA) already exists."


async def test_composite_key_unambiguous(conn: asyncpg.Connection) -> None:
    await conn.execute("ALTER TABLE customers DROP CONSTRAINT customers_full_name_key")
    f = await error_fields(
        conn, "INSERT INTO customers VALUES (3, 'John Smith', '+1999', 'js@example.com', 1)"
    )
    assert f["D"] == "Key (email, full_name)=(js@example.com, John Smith) already exists."
    out = scrub(f)
    assert out["D"] == "Key (email, full_name)=(js@example.com, htimS nhoJ) already exists."


async def test_not_null_violation_hides_failing_row(conn: asyncpg.Connection) -> None:
    f = await error_fields(conn, "INSERT INTO customers VALUES (5, 'Jane Roe', NULL, 'j', 3)")
    assert "Jane Roe" in f["D"] and f["D"].startswith("Failing row contains (")
    out = scrub(f)
    assert out["D"] == FAILING_ROW_HIDDEN
    assert out["M"] == f["M"]  # identifiers only: column "phone" of relation "customers"
    assert_gone(out, "Jane Roe")
    assert_untouched(f, out)


async def test_check_violation_hides_failing_row(conn: asyncpg.Connection) -> None:
    f = await error_fields(conn, "INSERT INTO customers VALUES (5, 'Jane Roe', '+1777', 'j', -3)")
    out = scrub(f)
    assert out["D"] == FAILING_ROW_HIDDEN
    assert_gone(out, "Jane Roe", "+1777")


async def test_invalid_input_echo(conn: asyncpg.Connection) -> None:
    sql = "INSERT INTO customers VALUES (5, 'Jane', '+1777', 'j', 'John Smith')"
    f = await error_fields(conn, sql)
    assert f["M"] == 'invalid input syntax for type integer: "John Smith"'
    out = scrub(f)
    assert out["M"] == 'invalid input syntax for type integer: "..."'
    # The client typed a token the session resolved to John Smith: the token comes back.
    known = scrub(f, known={"John Smith": "Jxhn Smxth"})
    assert known["M"] == 'invalid input syntax for type integer: "Jxhn Smxth"'
    assert "P" in out  # the position stays


async def test_value_with_quote_echo(conn: asyncpg.Connection) -> None:
    f = await error_fields(conn, """SELECT 'Jo"hn Sm"ith'::int""")
    out = scrub(f)
    assert_gone(out, "Jo", "hn", "ith")


async def test_json_echo_and_context(conn: asyncpg.Connection) -> None:
    f = await error_fields(conn, "SELECT 'John Smith'::json")
    assert "W" in f and "John" in f["D"]
    out = scrub(f)
    assert "W" not in out
    assert out["D"] == 'Token "..." is invalid.'
    assert_gone(out, "John")
    # Without protected data in the statement the message passes as is.
    assert scrub(f, touches=False) == f


async def test_out_of_range_and_to_date(conn: asyncpg.Connection) -> None:
    f = await error_fields(conn, "SELECT '15551234567'::int")
    out = scrub(f)
    assert_gone(out, "15551234567")
    f = await error_fields(conn, "SELECT to_date('John', 'YYYY')")
    assert_gone(scrub(f), "John")


async def test_foreign_key_violations(conn: asyncpg.Connection) -> None:
    f = await error_fields(conn, "INSERT INTO orders VALUES (2, '+15550000000')")
    assert f["D"] == 'Key (customer_phone)=(+15550000000) is not present in table "customers".'
    out = scrub(f)
    assert out["D"] == 'Key (customer_phone)=(00000005551+#) is not present in table "customers".'
    f = await error_fields(conn, "DELETE FROM customers WHERE id = 1")
    assert f["D"] == 'Key (phone)=(+15551234567) is still referenced from table "orders".'
    out = scrub(f, touches=False)
    assert out["D"] == 'Key (phone)=(76543215551+#) is still referenced from table "orders".'
    assert_untouched(f, out)


async def test_expression_index_is_hidden(conn: asyncpg.Connection) -> None:
    f = await error_fields(conn, "INSERT INTO lowered VALUES ('MARY MAJOR')")
    assert f["D"] == "Key (lower(full_name))=(mary major) already exists."
    for touches in (True, False):
        out = scrub(f, touches)
        assert out["D"] == "Key (lower(full_name))=(...) already exists."


async def test_exclusion_constraint(conn: asyncpg.Connection) -> None:
    f = await error_fields(conn, "INSERT INTO bookings VALUES ('Zoë Ñúñez')")
    assert (
        f["D"] == "Key (full_name)=(Zoë Ñúñez) conflicts with existing key (full_name)=(Zoë Ñúñez)."
    )
    out = scrub(f)
    assert (
        out["D"]
        == "Key (full_name)=(zeñúÑ ëoZ) conflicts with existing key (full_name)=(zeñúÑ ëoZ)."
    )


async def test_unique_index_build_duplicated(conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TABLE dup (full_name text)")
    await conn.execute("INSERT INTO dup VALUES ('Mary  Major'), ('Mary  Major')")
    f = await error_fields(conn, "CREATE UNIQUE INDEX ON dup (full_name)")
    assert f["D"] == "Key (full_name)=(Mary  Major) is duplicated."
    assert scrub(f)["D"] == "Key (full_name)=(rojaM  yraM) is duplicated."


async def test_plpgsql_context_and_internal_query_dropped(conn: asyncpg.Connection) -> None:
    sql = """DO $$ BEGIN EXECUTE 'SELECT ''John Smith''::int'; END $$"""
    f = await error_fields(conn, sql)
    assert "W" in f and "John Smith" in f["q"]
    out = scrub(f)
    assert "W" not in out and "q" not in out
    assert_gone(out, "John")
    kept = scrub(f, touches=False, known={"John Smith": "Jxhn Smxth"})
    assert_gone(kept, "John Smith")
    assert "Jxhn Smxth" in kept["q"]


# -- pure ----------------------------------------------------------------------------------


def test_known_values_longest_first() -> None:
    fields = {"M": "x: John Smith and John", "H": "John", "t": "John Smith", "S": "ERROR"}
    out = scrub(fields, touches=False, known={"John": "Q", "John Smith": "Jxhn Smxth"})
    assert out == {"M": "x: Jxhn Smxth and Q", "H": "Q", "t": "John Smith", "S": "ERROR"}


def test_tokenize_failure_hides_value() -> None:
    def failing(kind: Kind, value: str) -> str:
        raise ValueError("vault down")

    out = scrub_fields(
        {"D": "Key (full_name)=(Li) already exists."},
        touches_protected=True,
        known={},
        protected_columns=PROTECTED,
        tokenize=failing,
    )
    assert out == {"D": "Key (full_name)=(...) already exists."}


def test_unknown_codes_dropped_when_protected() -> None:
    fields = {"M": "m", "Z": "John", "W": "ctx"}
    assert scrub(fields) == {"M": "m"}
    assert scrub(fields, touches=False) == fields


def test_identifiers_kept_values_redacted() -> None:
    out = scrub({"M": 'column "full_name" of relation "customers": "John"', "H": 'Try "John".'})
    assert out == {"M": 'column "full_name" of relation "customers": "..."', "H": 'Try "...".'}


def test_single_column_value_with_comma() -> None:
    out = scrub({"D": "Key (full_name)=(Lee, Ann) already exists."})
    assert out["D"] == "Key (full_name)=(nnA ,eeL) already exists."


def test_value_holding_the_suffix_text() -> None:
    d = 'Key (phone)=(1) is not present in table "t". 2) is not present in table "t".'
    out = scrub({"D": d})
    value = '1) is not present in table "t". 2'
    assert out["D"] == f'Key (phone)=({value[::-1]}#) is not present in table "t".'


def test_partition_key_detail() -> None:
    out = scrub({"D": "Partition key of the failing row contains (phone) = (+1555)."})
    assert out["D"] == "Partition key of the failing row contains (phone) = (5551+#)."


def test_byte_dump_redacted() -> None:
    out = scrub({"M": 'invalid byte sequence for encoding "UTF8": 0xc3 0x28'})
    assert out["M"] == 'invalid byte sequence for encoding "UTF8": 0x..'


@given(
    st.dictionaries(st.sampled_from("SVCMDHPWqntcZp"), st.text(max_size=60)),
    st.booleans(),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
)
def test_never_raises_and_keeps_identifier_fields(
    fields: dict[str, str], touches: bool, known: dict[str, str]
) -> None:
    def odd(kind: Kind, value: str) -> str:
        if len(value) % 3 == 0:
            raise RuntimeError("odd")
        return value.upper()

    out = scrub_fields(
        fields, touches_protected=touches, known=known, protected_columns=PROTECTED, tokenize=odd
    )
    assert set(out) <= set(fields) | {"M"}
    assert_untouched(fields, out)
    if touches:
        assert not out.keys() & {"W", "q", "Z"}


@given(
    st.sampled_from(["full_name", "phone", "full_name, phone", "phone, full_name"]),
    st.lists(st.text(min_size=3, max_size=12), min_size=2, max_size=2),
    st.sampled_from([" already exists.", ' is not present in table "t".', " is duplicated."]),
)
def test_key_values_of_protected_columns_never_survive(
    cols: str, values: list[str], suffix: str
) -> None:
    names = [c.strip() for c in cols.split(",")]
    values = values[: len(names)]
    fields = {"D": f"Key ({cols})=({', '.join(values)}){suffix}"}
    out = scrub(fields)["D"]
    tokens = [reverse(PROTECTED[n], v) for n, v in zip(names, values, strict=True)]
    frame = f"Key ({cols})=(...)=(){suffix}, "
    for v in values:
        if v != "null" and v not in frame and not any(v in t for t in tokens):
            assert v not in out
