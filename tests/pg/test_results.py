"""The rows of a result: the encoder writes what the codec's DataRow writes, and the framed
fast path rewrites exactly as the parsed one."""

from __future__ import annotations

import gc
import struct
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.crypto.engine import TokenEngine
from proxy.crypto.keyring import Keyring
from proxy.crypto.registry import MemoryRegistry
from proxy.crypto.tokens import Kind
from proxy.crypto.vault import MemoryVault
from proxy.pg import results
from proxy.pg.analysis import ColumnLineage, Source
from proxy.pg.codec import decode_backend
from proxy.pg.messages import DataRow, FieldDescription
from proxy.pg.results import (
    ResultCut,
    RowRewriter,
    Tokens,
    _encode_row,
    plan_result,
)
from proxy.store.durable import Store, open_store

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


def framed_rewriter(engine: TokenEngine) -> RowRewriter:
    """A rewriter of (id, full_name, phone) rows, text format (also the bench's)."""
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
    framed = await framed_rewriter(engine).rewrite_frames(frames)
    parsed = await framed_rewriter(engine).rewrite([DataRow(tuple(v)) for v in values])
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
        await framed_rewriter(engine).rewrite_frames([lying])
    short = _encode_row([b"1"])
    with pytest.raises(ResultCut):
        await framed_rewriter(engine).rewrite_frames([short])


def _columns(frame: bytes) -> tuple[bytes | None, ...]:
    row = decode_backend(frame)
    assert isinstance(row, DataRow)
    return row.columns


# ---- runs of frames (take_data_rows + rewrite_run) against the parsed path

LONGER = "Łukasz Ansu"  # its token is one byte longer in UTF-8 (Ł is two bytes, ẞ three)
CYRILLIC = ["Иван Петров", "Ольга Смирнова"]
ASCII = ["Budi Santoso", "Siti Nurhaliza", "Ng"]
LATIN = ["Zoë O'Brien", "Ærø Ñandú"]  # the second's token is not Latin-1: a cut, both ways
ALL_NAMES = [*NAMES, LONGER, *CYRILLIC, *LATIN]

# Layouts: per output column, (kind or None for a clear column, type oid, format code).
Layout = tuple[tuple[Kind | None, int, int], ...]
BULK: Layout = ((None, 23, 0), (Kind.NAME, 25, 0), (Kind.PHONE, 1043, 0))
MIDDLE: Layout = ((Kind.NAME, 25, 1), (None, 23, 0), (Kind.PHONE, 1043, 1), (None, 25, 0))
TWICE: Layout = ((Kind.NAME, 25, 0), (Kind.NAME, 1043, 0), (None, 23, 0), (Kind.PHONE, 25, 0))
LAYOUTS = [BULK, MIDDLE, TWICE]


def _warm(engine: TokenEngine) -> TokenEngine:
    for name in ALL_NAMES:
        engine.tokenize("name", name)
    for phone in PHONES:
        engine.tokenize("phone", phone)
    return engine


WARM = _warm(_engine())  # shared by the tests that do not change its cache


def _layout_rewriter(
    engine: TokenEngine, layout: Layout = BULK, encoding: str = "UTF8", store: Any = None
) -> RowRewriter:
    fields, outputs = [], []
    for i, (kind, oid, fmt) in enumerate(layout):
        fields.append(FieldDescription(f"c{i}", type_oid=oid, format=fmt))
        outputs.append(
            ColumnLineage()
            if kind is None
            else ColumnLineage(frozenset({Source("public.customers", f"c{i}", kind)}), True)
        )
    plan = plan_result(fields, outputs, None, encoding)
    rewriter = RowRewriter(plan, Tokens(engine, store=store))
    assert rewriter.framed
    return rewriter


def _row(
    layout: Layout, i: int, name: str | None, phone: str | None, encoding: str
) -> list[bytes | None]:
    py = {"UTF8": "utf-8", "LATIN1": "latin-1", "WIN1251": "cp1251"}[encoding]
    out: list[bytes | None] = []
    for kind, _, _ in layout:
        value = str(i) if kind is None else name if kind is Kind.NAME else phone
        out.append(None if value is None else value.encode(py))
    return out


async def _parsed(
    engine: TokenEngine, layout: Layout, encoding: str, rows: list[list[bytes | None]]
) -> bytes | None:
    """What the parsed path makes of the rows (None: it cuts the result)."""
    try:
        out = await _layout_rewriter(engine, layout, encoding)._rewrite(
            [DataRow(tuple(r)) for r in rows]
        )
    except ResultCut:
        return None
    return b"".join(out)


def _drive(coro: Coroutine[Any, Any, bytes]) -> bytes:
    """Run a rewrite that must finish without waiting (as the pump drives it)."""
    with pytest.raises(StopIteration) as done:
        coro.send(None)
    value: bytes = done.value.value
    return value


ENCODED_NAMES = {
    "UTF8": ALL_NAMES,
    "LATIN1": [*ASCII, *LATIN],
    "WIN1251": [*CYRILLIC, *ASCII],
}


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(LAYOUTS),
    st.sampled_from(sorted(ENCODED_NAMES)),
    st.data(),
)
async def test_a_run_is_rewritten_like_parsed_rows(
    layout: Layout, encoding: str, data: st.DataObject
) -> None:
    rows = data.draw(
        st.lists(
            st.tuples(
                st.integers(0, 10**6),
                st.none() | st.sampled_from(ENCODED_NAMES[encoding]),
                st.none() | st.sampled_from(PHONES),
            ),
            max_size=20,
        )
    )
    values = [_row(layout, *r, encoding) for r in rows]
    expected = await _parsed(WARM, layout, encoding, values)
    run = b"".join(_encode_row(v) for v in values)
    rewriter = _layout_rewriter(WARM, layout, encoding)
    if expected is None:
        with pytest.raises(ResultCut):
            _drive(rewriter.rewrite_run(run))
        return
    assert _drive(rewriter.rewrite_run(run)) == expected  # twice: the memo is warm now
    assert _drive(rewriter.rewrite_run(run)) == expected
    assert rewriter.rows == 2 * len(rows)
    frames = await _layout_rewriter(WARM, layout, encoding).rewrite_frames(
        [_encode_row(v) for v in values]
    )
    assert b"".join(frames) == expected and len(frames) == len(rows)


async def test_a_longer_token_rebuilds_its_frame_only() -> None:
    assert len(WARM.tokenize("name", LONGER).encode()) == len(LONGER.encode()) + 1
    values: list[list[bytes | None]] = [
        [b"1", b"Budi Santoso", None],
        [b"2", LONGER.encode(), PHONES[0].encode()],
        [b"3", None, PHONES[1].encode()],
        [b"4", LONGER.encode(), None],
    ]
    run = b"".join(_encode_row(v) for v in values)
    out = _drive(_layout_rewriter(WARM).rewrite_run(run))
    assert out == await _parsed(WARM, BULK, "UTF8", values)
    assert len(out) == len(run) + 2
    frames = await _layout_rewriter(WARM).rewrite_frames([_encode_row(v) for v in values])
    names = [v[1] for v in values]
    assert [_columns(f)[1] for f in frames] == [
        None if n is None else WARM.tokenize("name", n.decode()).encode() for n in names
    ]
    # Two longer values in one frame, in two frames of three.
    twice = [_row(TWICE, 1, LONGER, None, "UTF8"), _row(TWICE, 2, "Ng", PHONES[0], "UTF8")]
    twice.append(_row(TWICE, 3, LONGER, PHONES[1], "UTF8"))
    run = b"".join(_encode_row(v) for v in twice)
    out = _drive(_layout_rewriter(WARM, TWICE).rewrite_run(run))
    assert out == await _parsed(WARM, TWICE, "UTF8", twice)
    assert len(out) == len(run) + 4


async def test_a_warm_cache_never_waits_and_an_empty_run_is_empty() -> None:
    engine = _warm(_engine())  # a fresh engine: its memo is empty, its cache full
    pairs = zip(NAMES, PHONES, strict=False)
    run = b"".join(_encode_row([b"1", n.encode(), p.encode()]) for n, p in pairs)
    rewriter = _layout_rewriter(engine)
    first = _drive(rewriter.rewrite_run(run))  # through the cache (and into the memo)
    assert _drive(rewriter.rewrite_run(run)) == first  # through the memo
    assert _drive(_layout_rewriter(engine).rewrite_run(b"")) == b""
    assert await _layout_rewriter(engine).rewrite_frames([]) == []


async def test_each_engine_has_its_own_memo() -> None:
    """After key rotation (a new engine) no token of the old one is served."""
    run = _encode_row([b"1", b"Budi Santoso", PHONES[0].encode()])
    engines = [
        TokenEngine.standard(Keyring.single(bytes([k]) * 32), MemoryVault(), MemoryRegistry())
        for k in range(6)
    ]
    for engine in engines:
        engine.tokenize("name", "Budi Santoso")
        engine.tokenize("phone", PHONES[0])
        columns = _columns(_drive(_layout_rewriter(engine).rewrite_run(run)))
        assert columns[1] == engine.tokenize("name", "Budi Santoso").encode()
        assert columns[2] == engine.tokenize("phone", PHONES[0]).encode()
    assert len(results._MEMOS) <= results._MEMO_ENGINES  # bounded: the newest engines only
    newest = engines[-results._MEMO_ENGINES :]
    assert all(held[0]() in newest for held in results._MEMOS.values())
    del engine, engines, newest
    gc.collect()
    assert not results._MEMOS  # an engine's memos go with it


def _cut(rewriter: RowRewriter, run: bytes) -> None:
    with pytest.raises(ResultCut) as cut:
        _drive(rewriter.rewrite_run(run))
    assert cut.value.response.sqlstate == "0A000"
    assert rewriter.rows == 0


def _lengths(frame: bytes, delta: int) -> bytes:
    """``frame`` with its message length changed by ``delta``."""
    (size,) = struct.unpack_from("!i", frame, 1)
    return frame[:1] + struct.pack("!i", size + delta) + frame[5:]


GOOD = _encode_row([b"1", b"Budi Santoso", PHONES[0].encode()])
MALFORMED = {
    "fewer columns": _encode_row([b"1", b"Budi Santoso"]),
    "a column past its frame": GOOD[:11] + b"\x00\x00\x03\xe8" + GOOD[15:],  # a length of 1000
    "a column past the run": _encode_row([b"1", b"Budi Santoso", b"x" * 5000])[:200],
    "a longer frame than its columns": _lengths(GOOD + b"!", 1),
    "a shorter frame than its columns": _lengths(GOOD, -1),
    "a negative length": GOOD[:11] + struct.pack("!i", -2) + GOOD[15:],
    "a frame cut short": GOOD[:-1],
    "not a DataRow": b"C" + GOOD[1:],
    "a tiny frame": b"D\x00\x00\x00\x04",
    "a value that is not UTF-8": _encode_row([b"1", b"\xff\xfe", None]),
}


@pytest.mark.parametrize("bad", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_frame_cuts_the_whole_run(bad: bytes) -> None:
    _cut(_layout_rewriter(WARM), bad)
    _cut(_layout_rewriter(WARM), GOOD + bad + GOOD)
    # (a value no cache holds, before it: the run is cut before the store is asked)
    unknown = _encode_row([b"9", b"Nobody Cached", None])
    _cut(_layout_rewriter(WARM), unknown + bad)


async def test_a_value_cut_short_by_the_run_end_leaves_no_trace() -> None:
    # A name of 12 bytes declared as 13 (its token's length) at the very end of a run: cut,
    # and not memoized as the token of those 12 bytes (which would break a good run later).
    engine = _warm(_engine())
    good = _encode_row([b"1", LONGER.encode(), None])
    assert len(engine.tokenize("name", LONGER).encode()) == len(LONGER.encode()) + 1
    head = 7 + 4 + 1  # the header, then the id
    name = good[head + 4 : head + 4 + 12]
    lying = good[:1] + struct.pack("!i", len(good)) + good[5:head] + struct.pack("!i", 13) + name
    _cut(_layout_rewriter(engine), lying)  # (the run ends after the 12 bytes of the name)
    out = _drive(_layout_rewriter(engine).rewrite_run(good))
    assert out == await _parsed(engine, BULK, "UTF8", [[b"1", LONGER.encode(), None]])


async def test_a_malformed_frame_given_as_frames_cuts_the_result() -> None:
    for bad in MALFORMED.values():
        with pytest.raises(ResultCut):
            await _layout_rewriter(WARM).rewrite_frames([GOOD, bad])


async def test_trailing_clear_columns_are_not_read() -> None:
    # Columns after the last protected one are the client's to read: they pass as they are.
    row = _encode_row([b"Budi Santoso", b"1", PHONES[0].encode(), b"note"])
    out = _drive(_layout_rewriter(WARM, MIDDLE).rewrite_run(row))
    assert _columns(out) == (
        WARM.tokenize("name", "Budi Santoso").encode(),
        b"1",
        WARM.tokenize("phone", PHONES[0]).encode(),
        b"note",
    )


async def test_a_run_of_a_result_that_needs_parsed_rows() -> None:
    """Not framed (a reveal is possible): rewrite_run parses the rows and rewrites them."""
    fields = (FieldDescription("id", type_oid=23), FieldDescription("full_name", type_oid=25))
    outputs = (
        ColumnLineage(customer_of=frozenset({"public.customers"})),
        ColumnLineage(frozenset({Source("public.customers", "full_name", Kind.NAME)}), True),
    )
    plan = plan_result(fields, outputs, None, "UTF8")

    async def reveal(keys: set[str], fields: frozenset[str]) -> set[str]:
        return {"2"}

    rewriter = RowRewriter(plan, Tokens(WARM, store=None, reveal=reveal))  # type: ignore[arg-type]
    assert not rewriter.framed
    run = _encode_row([b"1", b"Budi Santoso"]) + _encode_row([b"2", b"Ng"])
    out = await rewriter.rewrite_run(run)
    assert out == _encode_row([b"1", WARM.tokenize("name", "Budi Santoso").encode()]) + (
        _encode_row([b"2", b"Ng"])
    )
    with pytest.raises(ResultCut):
        await rewriter.rewrite_run(run[:-1])


# ---- one row spliced into its answer (splice_now) against the parsed path


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(LAYOUTS),
    st.sampled_from(sorted(ENCODED_NAMES)),
    st.data(),
)
async def test_a_spliced_row_is_rewritten_like_parsed_rows(
    layout: Layout, encoding: str, data: st.DataObject
) -> None:
    i, name, phone = data.draw(
        st.tuples(
            st.integers(0, 10**6),
            st.none() | st.sampled_from(ENCODED_NAMES[encoding]),
            st.none() | st.sampled_from(PHONES),
        )
    )
    before, after = data.draw(st.binary(max_size=30)), data.draw(st.binary(max_size=30))
    values = [_row(layout, i, name, phone, encoding)]
    frame = _encode_row(values[0])
    expected = await _parsed(WARM, layout, encoding, values)
    buf = before + frame + after
    rewriter = _layout_rewriter(WARM, layout, encoding)
    pieces = rewriter.splice_now(buf, 0, len(before), len(before) + len(frame), len(buf))
    if expected is None or len(expected) != len(frame):  # a cut, or a frame to rebuild
        assert pieces is None and rewriter.rows == 0
        return
    assert pieces is not None and b"".join(pieces) == before + expected + after
    assert rewriter.rows == 1
    # Part of a buffer: only buf[first:last] is in the pieces.
    pieces = rewriter.splice_now(buf, 1 if before else 0, len(before), len(before) + len(frame),
                                 len(buf) - (1 if after else 0))
    assert pieces is not None
    assert b"".join(pieces) == before[1:] + expected + after[: len(after) - 1]


def test_splice_leaves_to_rewrite_run_now_what_it_cannot_tell() -> None:
    rewriter = _layout_rewriter(WARM)
    two = GOOD + GOOD
    assert rewriter.splice_now(two, 0, 0, len(two), len(two)) is None  # two frames
    for bad in MALFORMED.values():  # (rewrite_run_now then cuts the result)
        buf = bad + GOOD
        assert rewriter.splice_now(buf, 0, 0, len(bad), len(buf)) is None
    unknown = _encode_row([b"9", b"Nobody Cached", PHONES[0].encode()])
    assert rewriter.splice_now(unknown, 0, 0, len(unknown), len(unknown)) is None
    longer = _encode_row([b"9", LONGER.encode(), None])
    assert rewriter.splice_now(longer, 0, 0, len(longer), len(longer)) is None
    assert rewriter.rows == 0
    pieces = rewriter.splice_now(GOOD, 0, 0, len(GOOD), len(GOOD))
    assert pieces is not None and b"".join(pieces) == rewriter.rewrite_run_now(GOOD)


def test_a_spliced_value_whose_token_is_forgotten_is_not_served_again() -> None:
    engine = _warm(_engine())
    row = _encode_row([b"9", NAMES[1].encode(), PHONES[1].encode()])
    rewriter = _layout_rewriter(engine)
    pieces = rewriter.splice_now(row, 0, 0, len(row), len(row))  # (into the value memos)
    assert pieces is not None
    assert rewriter.splice_now(row, 0, 0, len(row), len(row)) == pieces
    engine.forget("phone", PHONES[1])  # (a vault race lost)
    assert rewriter.splice_now(row, 0, 0, len(row), len(row)) is None
    assert _layout_rewriter(engine).splice_now(row, 0, 0, len(row), len(row)) is None
    engine.tokenize("phone", PHONES[1])
    assert rewriter.splice_now(row, 0, 0, len(row), len(row)) == pieces


def test_a_plan_computes_its_plain_columns_once() -> None:
    rewriter = _layout_rewriter(WARM)
    assert rewriter.plan.plain == (
        (1, "name", rewriter.plan.columns[0].codec),
        (2, "phone", rewriter.plan.columns[1].codec),
    )
    again = RowRewriter(rewriter.plan, Tokens(WARM, store=None))  # type: ignore[arg-type]
    assert again._fast is rewriter.plan.plain


# ---- cache misses: through the store (a real one, on PostgreSQL)


@pytest.fixture
async def store(schema_dsn: str) -> AsyncIterator[Store]:
    store = await open_store(schema_dsn, run_migrations=True, start=False, timeout=2)
    try:
        yield store
    finally:
        await store.close(timeout=2)


async def test_misses_go_through_the_store_then_never_wait(store: Store) -> None:
    engine = TokenEngine.standard(Keyring.single(bytes(range(32))), store.vault, store.registry)
    people = list(zip([*NAMES, LONGER, "Ng"], [*PHONES, *PHONES], strict=False))
    values: list[list[bytes | None]] = [
        [str(i).encode(), n.encode(), p.encode()] for i, (n, p) in enumerate(people)
    ]
    run = b"".join(_encode_row(v) for v in values)
    rewriter = _layout_rewriter(engine, store=store)
    cold = await rewriter.rewrite_run(run)  # every token drawn and recorded by the store
    for frame, (who, number) in zip(results._split_run(cold), people, strict=True):
        _, name, phone = _columns(frame)
        assert name == str(engine.cached_token("name", who)).encode()
        assert phone == str(engine.cached_token("phone", number)).encode()
    assert await _parsed(engine, BULK, "UTF8", values) == cold
    assert _drive(rewriter.rewrite_run(run)) == cold  # warm: no waiting
    # A token the engine forgets (a vault race lost to another proxy) is not served from
    # the memo: the value goes to the store again.
    engine.forget("name", "Budi Santoso")
    assert engine.cached_token("name", "Budi Santoso") is None
    assert await rewriter.rewrite_run(run) == cold
    assert engine.cached_token("name", "Budi Santoso") is not None


# ---- the row memo

NAME_ONLY: Layout = ((None, 23, 0), (Kind.NAME, 25, 0), (None, 1043, 0))


def _row_memo(engine: TokenEngine, layout: Layout) -> dict[bytes, bytes]:
    rewriter = _layout_rewriter(engine, layout)
    assert rewriter._fast is not None
    return results._memos(engine, ("rows", rewriter._fast))[0]


async def test_a_row_read_again_comes_from_the_row_memo_of_its_layout_only() -> None:
    """The same frame under a layout that protects more columns is never answered with
    the rewrite of one that protects fewer (that would pass a raw phone)."""
    engine = _warm(_engine())
    row = _encode_row([b"7", NAMES[0].encode(), PHONES[0].encode()])
    only_name = _drive(_layout_rewriter(engine, NAME_ONLY).rewrite_run(row))
    assert _columns(only_name)[2] == PHONES[0].encode()  # not protected in this layout
    assert _row_memo(engine, NAME_ONLY) == {row: only_name}
    both = _drive(_layout_rewriter(engine, BULK).rewrite_run(row))
    assert _columns(both)[2] == engine.tokenize("phone", PHONES[0]).encode()
    assert _columns(both)[1] == _columns(only_name)[1]
    assert _row_memo(engine, BULK) == {row: both}
    # Read again, by another result of each layout: from the memo, the same bytes.
    assert _drive(_layout_rewriter(engine, BULK).rewrite_run(row + row)) == both + both
    assert _drive(_layout_rewriter(engine, NAME_ONLY).rewrite_run(row)) == only_name


async def test_rows_not_rewritten_in_place_are_not_kept() -> None:
    engine = _warm(_engine())
    longer = _encode_row([b"1", LONGER.encode(), PHONES[0].encode()])
    same = _encode_row([b"2", NAMES[1].encode(), PHONES[1].encode()])
    out = _drive(_layout_rewriter(engine).rewrite_run(longer + same))
    assert list(_row_memo(engine, BULK)) == [same]  # the longer token's frame was rebuilt
    assert _drive(_layout_rewriter(engine).rewrite_run(longer + same)) == out


async def test_a_result_past_the_row_bound_empties_its_memo_and_keeps_no_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(results, "_ROWS_MEMO", 3)
    engine = _warm(_engine())
    frames = [
        _encode_row([str(i).encode(), n.encode(), p.encode()])
        for i, (n, p) in enumerate(zip(NAMES, PHONES, strict=False))
    ]
    assert len(frames) == 4
    run = b"".join(frames)
    expected = await _parsed(engine, BULK, "UTF8", [_columns(f) for f in frames])
    rewriter = _layout_rewriter(engine)
    assert _drive(rewriter.rewrite_run(run)) == expected
    assert _row_memo(engine, BULK) == {}  # three kept, then emptied at the fourth
    assert _drive(rewriter.rewrite_run(run)) == expected  # (and no more kept)
    assert _row_memo(engine, BULK) == {}
    small = _layout_rewriter(engine)  # another result, within the bound: kept
    assert _drive(small.rewrite_run(frames[0] + frames[1])) == b"".join(
        results._split_run(expected)[:2]
    )
    assert len(_row_memo(engine, BULK)) == 2


def test_a_single_row_seen_before_is_looked_up_whole_until_a_token_is_forgotten() -> None:
    engine = _warm(_engine())
    row = _encode_row([b"9", NAMES[2].encode(), PHONES[2].encode()])
    rewriter = _layout_rewriter(engine)
    first = rewriter.rewrite_run_now(row)  # walked (and kept)
    assert first is not None and _columns(first)[2] != PHONES[2].encode()
    assert rewriter.rewrite_run_now(row) == first  # the whole run found in the row memo
    assert rewriter.rewrite_run_now(row + row) == first + first  # two rows: walked
    assert rewriter.rows == 4
    engine.forget("phone", PHONES[2])  # (a vault race lost): never served from a memo
    assert rewriter.rewrite_run_now(row) is None  # the store must be asked again


async def test_rows_are_kept_once_one_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layout's first rows are kept to find out; a result keeps the rest only once one
    of its rows came back from the memo (read again); new rows alone (a stream, an export)
    are not kept past the probe."""
    monkeypatch.setattr(results, "_ROWS_PROBE", 2)
    engine = _warm(_engine())
    frames = [
        _encode_row([str(i).encode(), n.encode(), p.encode()])
        for i, (n, p) in enumerate(zip(NAMES, PHONES, strict=False))
    ]
    run = b"".join(frames)
    rewriter = _layout_rewriter(engine)
    out = _drive(rewriter.rewrite_run(run))
    assert list(_row_memo(engine, BULK)) == frames[:2]  # the probe
    stream = _layout_rewriter(engine)  # another result, of new rows only
    news = [_encode_row([str(100 + i).encode(), *_columns(f)[1:]]) for i, f in enumerate(frames)]
    _drive(stream.rewrite_run(b"".join(news)))
    assert list(_row_memo(engine, BULK)) == frames[:2]  # none of them kept
    assert _drive(rewriter.rewrite_run(run)) == out  # read again: rows come back...
    assert list(_row_memo(engine, BULK)) == frames  # ... so the rest are kept
    assert _drive(_layout_rewriter(engine).rewrite_run(run)) == out
