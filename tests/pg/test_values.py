"""proxy.pg.values: column value codecs (checked against the bytes PostgreSQL sends),
client encodings and StartupMessage options."""

from __future__ import annotations

import random
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.adapt import Loader
from psycopg.pq import Format

from proxy.errors import TokenProxyError
from proxy.pg.values import (
    BINARY,
    OID_BPCHAR,
    OID_INT2,
    OID_INT4,
    OID_INT8,
    OID_NAME,
    OID_NUMERIC,
    OID_TEXT,
    OID_UNKNOWN,
    OID_VARCHAR,
    TEXT,
    ValueFormatError,
    parse_options,
    python_encoding,
    value_codec,
)

INT_RANGES = {OID_INT2: 2**15, OID_INT4: 2**31, OID_INT8: 2**63}


def codec(oid: int, fmt: int, encoding: str = "UTF8") -> Any:
    c = value_codec(oid, fmt, encoding)
    assert c is not None
    return c


# -- encodings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pg", "py"),
    [
        ("UTF8", "utf-8"),
        ("utf-8", "utf-8"),
        ("unicode", "utf-8"),
        ("LATIN1", "iso8859-1"),
        ("LATIN5", "iso8859-9"),
        ("LATIN9", "iso8859-15"),
        ("LATIN10", "iso8859-16"),
        ("ISO_8859_5", "iso8859-5"),
        ("WIN1252", "cp1252"),
        ("WIN1258", "cp1258"),
        ("WIN866", "cp866"),
        ("EUC_JP", "euc_jp"),
        ("SJIS", "shift_jis"),
        ("GBK", "gbk"),
        ("BIG5", "big5"),
        ("KOI8R", "koi8-r"),
        ("UHC", "cp949"),
        ("SQL_ASCII", "ascii"),
    ],
)
def test_python_encoding(pg: str, py: str) -> None:
    assert python_encoding(pg) == py
    assert value_codec(OID_TEXT, TEXT, pg) is not None


@pytest.mark.parametrize("pg", ["EUC_TW", "MULE_INTERNAL", "", "klingon"])
def test_unsupported_encoding_has_no_codec(pg: str) -> None:
    assert python_encoding(pg) is None
    assert value_codec(OID_TEXT, TEXT, pg) is None


def test_sql_ascii_refuses_non_ascii() -> None:
    c = codec(OID_TEXT, TEXT, "SQL_ASCII")
    assert c.decode(b"plain") == "plain"
    with pytest.raises(ValueFormatError):
        c.decode("Zoë".encode())


# -- which types ---------------------------------------------------------------------------


@pytest.mark.parametrize("oid", [16, 17, 114, 1082, 1114, 2950, 3802, 1009, 700, 701])
def test_other_types_have_no_codec(oid: int) -> None:
    assert value_codec(oid, TEXT, "UTF8") is None
    assert value_codec(oid, BINARY, "UTF8") is None


def test_unknown_format_code_has_no_codec() -> None:
    assert value_codec(OID_TEXT, 2, "UTF8") is None


def test_codecs_are_cached() -> None:
    assert value_codec(OID_TEXT, TEXT, "UTF8") is value_codec(OID_TEXT, TEXT, "UTF8")


# -- strings -------------------------------------------------------------------------------

STRING_OIDS = [OID_TEXT, OID_VARCHAR, OID_BPCHAR, OID_NAME, OID_UNKNOWN]


@given(st.sampled_from(STRING_OIDS), st.sampled_from([TEXT, BINARY]), st.text())
def test_string_round_trip_utf8(oid: int, fmt: int, s: str) -> None:
    c = codec(oid, fmt)
    raw = s.encode()
    assert c.decode(raw) == s
    assert c.encode(s) == raw


@given(st.text(alphabet=st.characters(max_codepoint=255)))
def test_string_round_trip_latin1(s: str) -> None:
    c = codec(OID_TEXT, TEXT, "LATIN1")
    assert c.decode(s.encode("latin-1")) == s
    assert c.encode(s) == s.encode("latin-1")


def test_string_errors_name_no_value() -> None:
    c = codec(OID_VARCHAR, TEXT)
    with pytest.raises(ValueFormatError) as err:
        c.decode(b"Secret\xffName")
    assert "Secret" not in str(err.value)
    assert err.value.__cause__ is None
    assert isinstance(err.value, TokenProxyError)
    latin = codec(OID_TEXT, TEXT, "LATIN1")
    with pytest.raises(ValueFormatError) as err:
        latin.encode("Secret 名")
    assert "Secret" not in str(err.value)
    assert "名" not in str(err.value)


# -- integers ------------------------------------------------------------------------------


@given(st.data())
def test_int_round_trip(data: st.DataObject) -> None:
    oid = data.draw(st.sampled_from(list(INT_RANGES)))
    bound = INT_RANGES[oid]
    value = data.draw(st.integers(-bound, bound - 1))
    text = str(value)
    t = codec(oid, TEXT)
    b = codec(oid, BINARY)
    assert t.decode(text.encode()) == text
    assert t.encode(text) == text.encode()
    raw = value.to_bytes({OID_INT2: 2, OID_INT4: 4, OID_INT8: 8}[oid], "big", signed=True)
    assert b.decode(raw) == text
    assert b.encode(text) == raw


@pytest.mark.parametrize("fmt", [TEXT, BINARY])
@pytest.mark.parametrize(
    ("oid", "text"),
    [
        (OID_INT2, "32768"),
        (OID_INT2, "-32769"),
        (OID_INT4, "2147483648"),
        (OID_INT8, "9223372036854775808"),
        (OID_INT8, "0123"),
        (OID_INT4, "-0"),
        (OID_INT4, "+5"),
        (OID_INT4, ""),
        (OID_INT4, "12a"),
        (OID_INT4, " 12"),
        (OID_INT4, "١٢"),  # Arabic-Indic digits: int() would take them
    ],
)
def test_int_encode_refuses(oid: int, fmt: int, text: str) -> None:
    with pytest.raises(ValueFormatError) as err:
        codec(oid, fmt).encode(text)
    if len(text) > 2:
        assert text not in str(err.value)


def test_int_decode_refuses() -> None:
    with pytest.raises(ValueFormatError):
        codec(OID_INT4, BINARY).decode(b"\x00\x01")
    with pytest.raises(ValueFormatError):
        codec(OID_INT4, TEXT).decode(b"1.5")
    with pytest.raises(ValueFormatError):
        codec(OID_INT2, TEXT).decode(b"\xff")


# -- numeric -------------------------------------------------------------------------------


def numeric_binary(value: int) -> bytes:
    """PostgreSQL's numeric send format for a non-negative integer, computed independently."""
    if value == 0:
        return (0).to_bytes(2, "big") * 4
    digits: list[int] = []
    while value:
        value, d = divmod(value, 10000)
        digits.append(d)
    digits.reverse()
    weight = len(digits) - 1
    while digits[-1] == 0:
        digits.pop()
    head = [len(digits), weight, 0, 0]
    return b"".join(x.to_bytes(2, "big") for x in head + digits)


@given(st.integers(0, 10**60) | st.sampled_from([0, 1, 9999, 10000, 10**8, 10**12 + 1]))
def test_numeric_round_trip(value: int) -> None:
    text = str(value)
    raw = numeric_binary(value)
    b = codec(OID_NUMERIC, BINARY)
    assert b.decode(raw) == text
    assert b.encode(text) == raw
    t = codec(OID_NUMERIC, TEXT)
    assert t.decode(text.encode()) == text
    assert t.encode(text) == text.encode()


@pytest.mark.parametrize("text", ["-1", "1.5", "1e5", "NaN", "Infinity", "012", "", "+1"])
def test_numeric_text_refuses(text: str) -> None:
    for fmt in (TEXT, BINARY):
        with pytest.raises(ValueFormatError):
            codec(OID_NUMERIC, fmt).encode(text)
    with pytest.raises(ValueFormatError):
        codec(OID_NUMERIC, TEXT).decode(text.encode())


@pytest.mark.parametrize(
    "raw",
    [
        bytes.fromhex("0001 0000 4000 0000 0001"),  # -1
        bytes.fromhex("0001 0000 0000 0001 000f"),  # dscale 1: 15.0
        bytes.fromhex("0002 0000 0000 0001 0001 1388"),  # 1.5
        bytes.fromhex("0000 0000 c000 0000"),  # NaN
        bytes.fromhex("0000 0000 d000 0000"),  # +Infinity
        bytes.fromhex("0001 0000 0000 0000"),  # truncated
        bytes.fromhex("0001 0000 0000 0000 2710"),  # digit 10000
        b"\x00",
    ],
)
def test_numeric_binary_refuses(raw: bytes) -> None:
    with pytest.raises(ValueFormatError):
        codec(OID_NUMERIC, BINARY).decode(raw)


# -- against PostgreSQL ---------------------------------------------------------------------


class RawBinary(Loader):
    format = Format.BINARY

    def load(self, data: Any) -> bytes:
        return bytes(data)


class RawText(Loader):
    format = Format.TEXT

    def load(self, data: Any) -> bytes:
        return bytes(data)


def sample_values() -> dict[str, list[int]]:
    rnd = random.Random(20240607)
    out: dict[str, list[int]] = {}
    for name, bits in (("int2", 15), ("int4", 31), ("int8", 63)):
        edge = [0, 1, -1, 2**bits - 1, -(2**bits)]
        out[name] = edge + [rnd.randrange(-(2**bits), 2**bits) for _ in range(150)]
    nums = [0, 1, 9999, 10000, 10001, 10**8, 10**16, 10**40 + 7, 2**64]
    nums += [rnd.randrange(0, 10 ** rnd.randrange(1, 40)) for _ in range(200)]
    out["numeric"] = nums
    return out


OIDS = {"int2": OID_INT2, "int4": OID_INT4, "int8": OID_INT8, "numeric": OID_NUMERIC}


def test_integers_match_postgresql(module_dsn: str) -> None:
    """Decode exactly what PostgreSQL sends (text and binary), and encode to the same bytes."""
    with psycopg.connect(module_dsn) as conn:
        for name in ("int2", "int4", "int8", "numeric", "text"):
            conn.adapters.register_loader(name, RawBinary)
            conn.adapters.register_loader(name, RawText)
        for typ, values in sample_values().items():
            oid = OIDS[typ]
            strings = [str(v) for v in values]
            sql = f"SELECT v::{typ} FROM unnest(%s::text[]) WITH ORDINALITY AS u(v, i) ORDER BY i"
            for fmt, binary in ((TEXT, False), (BINARY, True)):
                with conn.cursor(binary=binary) as cur:
                    cur.execute(sql, (strings,))
                    got = [r[0] for r in cur.fetchall()]
                c = codec(oid, fmt)
                assert [c.decode(raw) for raw in got] == strings, (typ, fmt)
                assert [c.encode(s) for s in strings] == got, (typ, fmt)


@pytest.mark.parametrize("encoding", ["UTF8", "LATIN1", "WIN1251", "SJIS"])
def test_strings_match_postgresql(module_dsn: str, encoding: str) -> None:
    """Strings in the client encoding, both formats, as PostgreSQL sends them."""
    samples = {
        "UTF8": ["John Smith", "Zoë Ñúñez", "李小龙", "tab\there", "", "émoji 🙂"],
        "LATIN1": ["Zoë Ñúñez", "Ågot", "plain", "ÿ"],
        "WIN1251": ["Иван Петров", "Ёлка", "mixed Ж"],
        "SJIS": ["ソフト", "表示", "山田太郎"],  # trailing bytes 0x5c (backslash)
    }[encoding]
    with psycopg.connect(module_dsn) as conn:
        conn.execute(f"SET client_encoding = '{encoding}'")
        for name in ("text", "varchar", "bpchar", "name"):
            conn.adapters.register_loader(name, RawBinary)
            conn.adapters.register_loader(name, RawText)
        for typ, oid in (("text", OID_TEXT), ("varchar", OID_VARCHAR), ("name", OID_NAME)):
            sql = f"SELECT v::{typ} FROM unnest(%s::text[]) WITH ORDINALITY AS u(v, i) ORDER BY i"
            for fmt, binary in ((TEXT, False), (BINARY, True)):
                with conn.cursor(binary=binary) as cur:
                    cur.execute(sql, (samples,))
                    got = [r[0] for r in cur.fetchall()]
                c = codec(oid, fmt, encoding)
                assert [c.decode(raw) for raw in got] == samples
                assert [c.encode(s) for s in samples] == got


# -- StartupMessage options ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("", {}),
        ("-c tokenproxy.ticket=SUP-1", {"tokenproxy.ticket": "SUP-1"}),
        ("-ctokenproxy.ticket=SUP-1", {"tokenproxy.ticket": "SUP-1"}),
        ("--tokenproxy.ticket=SUP-1", {"tokenproxy.ticket": "SUP-1"}),
        (
            "-c tokenproxy.ticket=SUP-1 -c search_path=x --foo=bar",
            {"tokenproxy.ticket": "SUP-1", "search_path": "x", "foo": "bar"},
        ),
        ("-c application_name=my\\ app", {"application_name": "my app"}),
        ("-c a=x\\\\y", {"a": "x\\y"}),
        ("  -c   a=1\t-c a=2  ", {"a": "2"}),
        ("--statement-timeout=5s", {"statement_timeout": "5s"}),
        ("-c TokenProxy.Ticket=SUP-2", {"tokenproxy.ticket": "SUP-2"}),
        ("-c a=b=c", {"a": "b=c"}),
        ("-c a=", {"a": ""}),
        ("-F -e -c a=1", {"a": "1"}),
        ("-Fe -B 100 -c a=1", {"a": "1"}),
        ("-c search_path=\\ x\\ ,y", {"search_path": " x ,y"}),
    ],
)
def test_parse_options(options: str, expected: dict[str, str]) -> None:
    assert parse_options(options) == expected


@pytest.mark.parametrize("options", ["-c", "-c a", "--a", "x=1", "-", "-Z", "-F1", "--=1"])
def test_parse_options_refuses(options: str) -> None:
    with pytest.raises(ValueFormatError):
        parse_options(options)


@given(st.dictionaries(st.from_regex(r"[a-z][a-z_.]{0,10}", fullmatch=True), st.text(max_size=20)))
def test_parse_options_escaped_round_trip(settings: dict[str, str]) -> None:
    """What libpq writes (spaces and backslashes escaped) parses back to the settings."""

    def esc(s: str) -> str:
        return "".join("\\" + ch if ch.isspace() or ch == "\\" else ch for ch in s)

    options = " ".join(f"-c {esc(k)}={esc(v)}" for k, v in settings.items())
    assert parse_options(options) == settings
