"""The rows of a result: the encoder writes what the codec's DataRow writes, and the framed
fast path rewrites exactly as the parsed one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.crypto.engine import TokenEngine
from proxy.crypto.keyring import Keyring
from proxy.crypto.registry import MemoryRegistry
from proxy.crypto.tokens import Kind
from proxy.crypto.vault import MemoryVault
from proxy.pg.analysis import ColumnLineage, Source
from proxy.pg.codec import decode_backend
from proxy.pg.messages import DataRow, FieldDescription
from proxy.pg.results import (
    ResultCut,
    RowRewriter,
    Tokens,
    _encode_row,
    _splice,
    plan_result,
)

columns = st.lists(st.one_of(st.none(), st.binary(max_size=5000)), max_size=20)


@given(columns)
def test_encode_row_is_the_data_row_wire_format(values: list[bytes | None]) -> None:
    wire = _encode_row(list(values))
    assert wire == DataRow(tuple(values)).encode()
    decoded = decode_backend(wire)
    assert isinstance(decoded, DataRow) and decoded.columns == tuple(values)


# ---- the framed fast path against the parsed one

NAMES = ["Budi Santoso", "Siti Nurhaliza", "Zoë O'Brien-Łukasz", "Иван Петров", "李小龙", "Ng"]
PHONES = ["+62 812-3456-789", "+62 813-9876-5432", "+44 20 7946 0958", "0812 3456 7890"]


def _engine() -> TokenEngine:
    return TokenEngine.standard(Keyring.single(bytes(range(32))), MemoryVault(), MemoryRegistry())


def _rewriter(engine: TokenEngine) -> RowRewriter:
    fields = (
        FieldDescription("id", type_oid=23),
        FieldDescription("full_name", type_oid=25),
        FieldDescription("phone", type_oid=1043),
    )
    outputs = (
        ColumnLineage(customer_of=frozenset({"public.customers"})),
        ColumnLineage(frozenset({Source("public.customers", "full_name", Kind.NAME)}), True),
        ColumnLineage(frozenset({Source("public.customers", "phone", Kind.PHONE)}), True),
    )
    plan = plan_result(fields, outputs, None, "UTF8")
    rewriter = RowRewriter(plan, Tokens(engine, store=None))  # type: ignore[arg-type]
    assert rewriter.framed
    return rewriter


@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**6),
            st.one_of(st.none(), st.sampled_from(NAMES)),
            st.one_of(st.none(), st.sampled_from(PHONES)),
        ),
        max_size=30,
    )
)
async def test_framed_rows_are_rewritten_like_parsed_rows(
    rows: list[tuple[int, str | None, str | None]],
) -> None:
    engine = _engine()
    for name in NAMES:
        engine.tokenize("name", name)  # cached: no store needed
    for phone in PHONES:
        engine.tokenize("phone", phone)
    values = [
        [str(i).encode(), None if n is None else n.encode(), None if p is None else p.encode()]
        for i, n, p in rows
    ]
    frames = [_encode_row(list(v)) for v in values]
    framed = await _rewriter(engine).rewrite_frames(frames)
    parsed = await _rewriter(engine).rewrite([DataRow(tuple(v)) for v in values])
    assert framed == parsed
    for frame, (_, who, number) in zip(framed, rows, strict=True):
        columns = _columns(frame)
        assert columns[1] == (None if who is None else engine.tokenize("name", who).encode())
        assert columns[2] == (None if number is None else engine.tokenize("phone", number).encode())


async def test_a_frame_whose_lengths_lie_cuts_the_result() -> None:
    engine = _engine()
    engine.tokenize("name", "Budi Santoso")
    good = _encode_row([b"1", b"Budi Santoso", None])
    lying = good[:7] + good[7:11] + b"\x00\x00\x03\xe8" + good[15:]  # name length 1000
    with pytest.raises(ResultCut):
        await _rewriter(engine).rewrite_frames([lying])
    short = _encode_row([b"1"])
    with pytest.raises(ResultCut):
        await _rewriter(engine).rewrite_frames([short])


def _columns(frame: bytes) -> tuple[bytes | None, ...]:
    row = decode_backend(frame)
    assert isinstance(row, DataRow)
    return row.columns


def test_splice_rewrites_lengths() -> None:
    frame = _encode_row([b"1", b"abc", None, b"xy"])
    # value b"abc" starts after the header (7), the id's length and value (4 + 1), its length
    out = _splice(frame, [[7 + 4 + 1 + 4, 7 + 4 + 1 + 4 + 3, b"abcdef"]])
    assert _columns(out) == (b"1", b"abcdef", None, b"xy")
