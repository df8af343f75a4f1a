"""One result's rows on their way to the client: protected columns tokenized, the ticket's
customers revealed after their audit rows commit, derived values cut where not covered.

A result's `ResultPlan` joins two views of its columns: the statement's lineage (what the
analysis of its text found: plain protected column, derived, clear) and the catalog's
reading of the RowDescription (table OID and attribute number of a plain column). Either
saying "protected" is enough (fail closed). Per column:

- *plain* of kind K: each value tokenized as K, except in rows whose customer (the value
  of the output column holding that table's customer id) the ticket reveals;
- *derived*: passes only in rows whose customers (of every source table) are revealed;
  any other non-NULL value cuts the result with an error (the gate refuses derived
  statements without a justification, so this is the justified session's per-row check);
- *clear*: passes, except that values the statement resolved from tokens (``known``) are
  put back as their tokens wherever they are echoed in text columns (EXPLAIN, say).

A protected column whose type cannot be read or written (`proxy.pg.values`) cuts the
result at its first non-NULL value. Nothing here holds more than one batch of rows.

The common case, plain names and phones with nothing to reveal or scrub, takes runs of
raw DataRow frames (`RowRewriter.rewrite_run`): no object per row, tokens found by the
values' wire bytes, and no waiting unless a value is not in the engine's cache. A point
select's one row, in an answer taken whole, is spliced into it (`RowRewriter.splice_now`):
the answer's bytes around each protected value, the token's between them, joined once.
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

from proxy.crypto.engine import CACHE_SIZE, TokenEngine
from proxy.crypto.tokens import Kind
from proxy.errors import TokenProxyError
from proxy.pg.analysis import CLEAR, ColumnLineage
from proxy.pg.catalog import CatalogSnapshot
from proxy.pg.codec import BackendDecoder, ProtocolError
from proxy.pg.messages import DataRow, ErrorResponse, FieldDescription
from proxy.pg.refusals import FEATURE_NOT_SUPPORTED, INSUFFICIENT_PRIVILEGE, error
from proxy.pg.values import ValueCodec, value_codec
from proxy.policy.tickets import customer_key
from proxy.store.durable import Store
from proxy.store.freetext import tokenize_notes

__all__ = [
    "ColumnPlan",
    "ResultCut",
    "ResultPlan",
    "RowRewriter",
    "Tokens",
    "plan_result",
    "tokens_of",
]

Reveal = Callable[[set[str], frozenset[str]], Awaitable[set[str]]]


class ResultCut(TokenProxyError):
    """The result cannot go on: ``response`` replaces the rest of it."""

    def __init__(self, response: ErrorResponse) -> None:
        super().__init__(response.message or "result cut")
        self.response = response


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """A protected output column: plain (``kind``) or derived (``kind`` None)."""

    index: int
    kind: Kind | None
    tables: frozenset[str]  # source tables (schema.table)
    codec: ValueCodec | None  # None: the type cannot be rewritten
    name: str  # the column's protected source, for audit rows (never a value)


@dataclass(frozen=True, slots=True)
class ResultPlan:
    """What to do with each column of one result."""

    columns: tuple[ColumnPlan, ...]
    customers: Mapping[str, tuple[int, ValueCodec]]  # table -> (output index, id codec)
    echo: tuple[tuple[int, ValueCodec], ...] = ()  # clear text columns to scrub of `known`
    fields: frozenset[str] = frozenset()
    # Derived: (index, kind, codec) of each column when all are plain names or phones of a
    # known type (rows may then be rewritten as frames), else None.
    plain: tuple[tuple[int, str, ValueCodec], ...] | None = field(
        init=False, repr=False, compare=False
    )
    # The framed columns under the last engine that rewrote this plan's rows (RowRewriter's,
    # made once per plan and engine): [weak reference to the engine, columns], or empty.
    wire: list[Any] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        plain = [
            (c.index, c.kind.value, c.codec)
            for c in self.columns
            if c.kind is not None and c.kind is not Kind.TEXT and c.codec is not None
        ]
        whole = len(plain) == len(self.columns)
        object.__setattr__(self, "plain", tuple(plain) if whole else None)

    @property
    def passthrough(self) -> bool:
        """Nothing to look at: rows go out as they came."""
        return not self.columns and not self.echo


def _field_codec(f: FieldDescription, encoding: str) -> ValueCodec | None:
    return value_codec(f.type_oid, f.format, encoding)


def plan_result(
    fields: Sequence[FieldDescription],
    outputs: Sequence[ColumnLineage] | None,
    snapshot: CatalogSnapshot | None,
    encoding: str,
    *,
    echo: bool = False,
) -> ResultPlan:
    """The plan of a result with these RowDescription ``fields``.

    ``outputs`` is the statement's lineage per column (None: unknown, the catalog's
    reading alone decides). A count mismatch is a ResultCut: the analysis and the server
    disagree on what the statement returns, so neither can be trusted.
    """
    if outputs is not None and len(outputs) != len(fields):
        raise ResultCut(
            error(
                INSUFFICIENT_PRIVILEGE,
                "the result does not have the columns the statement's analysis expects; "
                "refused (rewrite the statement with explicit columns)",
            )
        )
    columns: list[ColumnPlan] = []
    customer_cols: dict[str, int] = {}
    echo_cols: list[tuple[int, ValueCodec]] = []
    lineages: list[ColumnLineage] = []
    for i, f in enumerate(fields):
        lin = outputs[i] if outputs is not None else CLEAR
        rd = CLEAR
        if snapshot is not None and f.table_oid:
            rd = snapshot.lineage_of(f.table_oid, f.column_attr)
        chosen = lin if lin.protected else rd
        lineages.append(chosen)
        for table in lin.customer_of | rd.customer_of:
            customer_cols.setdefault(table, i)
        if chosen.protected:
            sources = sorted(chosen.sources)
            columns.append(
                ColumnPlan(
                    index=i,
                    kind=chosen.kind,
                    tables=frozenset(s.table for s in sources),
                    codec=_field_codec(f, encoding),
                    name=",".join(f"{s.table}.{s.column}" for s in sources),
                )
            )
        elif echo:
            codec = _field_codec(f, encoding)
            if codec is not None and f.type_oid in _TEXT_TYPES:
                echo_cols.append((i, codec))
    customers: dict[str, tuple[int, ValueCodec]] = {}
    for table, i in customer_cols.items():
        codec = _field_codec(fields[i], encoding)
        if codec is not None:
            customers[table] = (i, codec)
    names = frozenset(c.name for c in columns)
    return ResultPlan(tuple(columns), customers, tuple(echo_cols), names)


_TEXT_TYPES = frozenset({25, 1043, 1042, 19, 705})


@dataclass
class Tokens:
    """What one statement's rows are rewritten with."""

    engine: TokenEngine
    store: Store
    reveal: Reveal | None = None  # None: no justification, nothing is revealed
    known: Mapping[str, str] = field(default_factory=dict)  # real value -> its token


class RowRewriter:
    """Rewrites the DataRows of one result, a batch at a time."""

    def __init__(self, plan: ResultPlan, tokens: Tokens) -> None:
        self.plan = plan
        self.tokens = tokens
        self._decided: dict[str, bool] = {}  # customer -> revealed, for this result
        self._revealing = tokens.reveal is not None and bool(plan.customers)
        self.rows = 0
        # The common case (plain names and phones, nothing revealed, nothing to scrub)
        # rewrites raw frames in a tight loop over the engine's cache.
        self._fast = plan.plain
        if self._revealing or (plan.echo and tokens.known):
            self._fast = None
        self._wire: list[_Wire | None] | None = None  # made on first use
        # ... and the same past a clear first column (an id), read with the row's header
        self._lead = False
        self._rest: list[_Wire | None] = []
        self._width = 0  # len(self._wire)
        self._checked = -1  # the engine's `forgotten` when this checked its memos fresh
        self._rows_memo: tuple[_Memo, list[int]] = ({}, [0, 0])  # (set with _wire)
        self._admit = True  # rows rewritten may go in the row memo (see _ROWS_MEMO)
        self._hot = False  # a row of this rewriter's came back: keep all of them

    @property
    def framed(self) -> bool:
        """Whether rows may come as raw DataRow frames (`rewrite_run`, `rewrite_frames`)."""
        return self._fast is not None

    async def rewrite(self, rows: Sequence[DataRow]) -> list[bytes]:
        """The rows' new wire bytes, in order; raises ResultCut to end the result."""
        if self._fast is not None:  # parsed rows of a framed result (an Execute's first)
            return await self.rewrite_frames([row.wire() for row in rows])
        return await self._rewrite(rows)

    async def rewrite_frames(self, frames: Sequence[bytes]) -> list[bytes]:
        """`rewrite_run` for a list of DataRow frames: the new frames, in order."""
        for frame in frames:
            if len(frame) < 7 or frame[0] != 0x44 or _I32_FROM(frame, 1)[0] != len(frame) - 1:
                raise ResultCut(self._unreadable())
        if not frames:
            return []
        return _split_run(await self.rewrite_run(b"".join(frames)))

    async def rewrite_run(self, run: bytes) -> bytes:
        """A run of DataRow frames (as `BackendDecoder.take_data_rows` returns it) with its
        protected values tokenized, as one bytes object; raises ResultCut to end the result.

        Framed results: each protected value is found by walking the column lengths (up to
        the last protected column: the client reads the rest); its token's wire bytes come
        from a memo of the engine's cache keyed by the value's own bytes (no decoding) and
        are written over it in one copy of the run, or, when not as long as the value, into
        a rebuilt frame. Unless a value is missing from the engine's cache this never
        waits. Other results: the rows are parsed and rewritten as `rewrite` does. A frame
        whose lengths do not add up, or with a value its type cannot read, cuts the result:
        nothing of the run is returned.
        """
        if self._fast is None:
            return await self._rewrite_parsed(run)
        if (engine := self.tokens.engine).forgotten != self._checked:
            self._checked = _fresh_memos(engine)
        try:
            buf, resized, misses, rows = self._walk(run)
            self.rows += rows
            if misses:
                await self._resolve_misses(misses, memoryview(buf), resized)
            if resized:
                return _rebuild(buf, resized)
        except _UNREADABLE:
            raise ResultCut(self._unreadable()) from None
        return bytes(buf)

    def rewrite_run_now(self, run: bytes) -> bytes | None:
        """`rewrite_run` when it needs no I/O; None when it does (a token not in the
        engine's cache, or rows that must be parsed: reveals, scrubbing, notes)."""
        if self._fast is None:
            return None
        if (engine := self.tokens.engine).forgotten != self._checked:
            self._checked = _fresh_memos(engine)
        if len(run) <= _ONE_ROW and self._wire is not None:  # (a point select's row)
            again = self._rows_memo[0].get(run)  # (a key is one whole frame: no run is one)
            if again is not None:
                self.rows += 1
                self._hot = True
                return again
        try:
            buf, resized, misses, rows = self._walk(run)
            if misses:
                return None
            self.rows += rows
            if resized:
                return _rebuild(buf, resized)
        except _UNREADABLE:
            raise ResultCut(self._unreadable()) from None
        return bytes(buf)

    def splice_now(
        self, buf: bytes, first: int, start: int, stop: int, last: int
    ) -> list[bytes] | None:
        """``buf[first:last]`` as pieces to join, the one DataRow frame at
        ``buf[start:stop]`` in it rewritten: the bytes around its protected values sliced
        from ``buf``, the tokens' wire bytes between them (a point select's answer, with
        no copy of the row before the one that joins them). None when this cannot tell:
        not exactly one readable frame, a token of another length or not in the engine's
        cache, or a result that is not framed (`rewrite_run_now` then decides, cutting
        the result where the frame is unreadable)."""
        if self._fast is None:
            return None
        if (engine := self.tokens.engine).forgotten != self._checked:
            self._checked = _fresh_memos(engine)
        if self._wire is None:
            self._wire_columns()
        width, i32 = self._width, _I32_FROM
        try:
            if self._lead:
                code, size, count, length = _RUN_HEADER_LEAD(buf, start)
                p = start + 11 + (length if length > 0 else 0)
                if length < -1:
                    return None
            else:
                code, size, count = _RUN_HEADER(buf, start)
                p = start + 7
            if code != 0x44 or start + 1 + size != stop or count < width:
                return None
            pieces: list[bytes] = []
            at = first
            for col in self._rest:
                (length,) = i32(buf, p)
                p += 4
                if length >= 0:
                    end = p + length
                    if col is not None:
                        raw = buf[p:end]
                        new = col[0](raw)
                        if new is None and (new := _confirmed(col, raw)) is None:
                            return None
                        pieces += (buf[at:p], new)
                        at = end
                    p = end
                elif length != -1:
                    return None
        except _UNREADABLE:
            return None
        if p != stop and (p > stop or count == width):  # (trailing columns: unread)
            return None
        pieces.append(buf[at:last])
        self.rows += 1
        return pieces

    def _walk(self, run: bytes) -> tuple[bytearray, list[_Patch], list[_Miss], int]:
        """A copy of ``run`` with every cached token written over its value, the frames
        to rebuild (tokens of another length), the values not cached, and the row count.
        (The engine's memos were checked fresh by the caller: `_fresh_memos`.)"""
        cols = self._wire if self._wire is not None else self._wire_columns()
        frames, counts = self._rows_memo
        seen = frames.get
        width, lead, rest = len(cols), self._lead, self._rest
        head = _RUN_HEADER_LEAD if lead else _RUN_HEADER
        i32 = _I32_FROM
        buf = bytearray(run)
        out = memoryview(buf)  # (a slice assignment through a view costs a fifth)
        n = len(run)
        pos = rows = 0
        resized: list[_Patch] = []  # (frame start, frame end, value start, value stop, new)
        misses: list[_Miss] = []  # not in the engine's cache: through the store
        hot = self._hot
        while pos < n:
            # A row seen before (the same bytes, so the same values): its rewrite again.
            end = pos + 1 + i32(run, pos + 1)[0]
            frame = run[pos:end]
            again = seen(frame)
            if again is not None:
                out[pos:end] = again
                pos = end
                rows += 1
                hot = True
                continue
            pending = len(misses) + len(resized)
            if lead:
                code, size, count, length = head(run, pos)
                p = pos + 11
                if length > 0:
                    p += length
                elif length < -1:
                    raise ValueError("negative column length")
            else:
                code, size, count = head(run, pos)
                p = pos + 7
            end = pos + 1 + size
            if code != 0x44 or count < width:
                raise ValueError("not a DataRow, or fewer columns than the result's")
            for col in rest:
                (length,) = i32(run, p)
                p += 4
                if length >= 0:
                    stop = p + length
                    if col is not None:
                        raw = run[p:stop]
                        hit = col[0](raw)
                        if hit is not None or (hit := _confirmed(col, raw)) is not None:
                            out[p:stop] = hit  # (as long as the value: see _remember)
                        else:  # not cached, or of another length (or cut by the run's end)
                            codec = col[3]
                            text = codec.decode(raw)
                            token = col[1](text)
                            if token is None:
                                misses.append((pos, end, p, stop, raw, text, col))
                            else:
                                resized.append((pos, end, p, stop, codec.encode(token)))
                    p = stop
                elif length != -1:
                    raise ValueError("negative column length")
            if p != end and (p > end or count == width):  # (trailing columns: unread)
                raise ValueError("a DataRow whose lengths do not add up")
            if (
                len(misses) + len(resized) == pending  # rewritten in place
                and self._admit
                and (hot or len(frames) < _ROWS_PROBE)
            ):
                if counts[1] < _ROWS_MEMO:
                    frames[frame] = bytes(out[pos:end])
                    counts[1] += 1
                else:  # too many rows to keep: this result adds no more
                    counts[1] -= len(frames)
                    frames.clear()
                    self._admit = False
            pos = end
            rows += 1
        if pos != n:
            raise ValueError("a DataRow cut short")
        self._hot = hot
        return buf, resized, misses, rows

    def _wire_columns(self) -> list[_Wire | None]:
        """Per output column up to the last protected one: how to rewrite it (or None)."""
        fast = self._fast
        assert fast is not None
        engine = self.tokens.engine
        made = self.plan.wire
        if made and made[0]() is engine:
            cols: list[_Wire | None] = made[1]
        else:
            size: int = getattr(engine, "_cache_size", CACHE_SIZE)  # (what it can confirm)
            cols = [None] * (max((i for i, _, _ in fast), default=-1) + 1)
            for i, kind, codec in fast:
                memo = _memo(engine, kind, codec)
                cols[i] = (memo.get, engine.token_lookup(kind), memo, codec, kind, size)
            made[:] = [weakref.ref(engine, lambda _: made.clear()), cols]  # (not kept alive)
        self._wire = cols
        self._lead = bool(cols) and cols[0] is None
        self._rest = cols[1:] if self._lead else cols
        self._width = len(cols)
        self._rows_memo = _memos(engine, ("rows", fast))
        return cols

    async def _resolve_misses(
        self, misses: list[_Miss], out: memoryview, resized: list[_Patch]
    ) -> None:
        """Tokens of the values the engine's cache lacks, through the store, put in place."""
        by_kind: dict[str, list[str]] = {}
        for *_, text, col in misses:
            by_kind.setdefault(col[4], []).append(text)
        tokens: dict[tuple[str, str], str] = {}
        for kind, texts in by_kind.items():
            mapping = await tokens_of(self.tokens.engine, self.tokens.store, Kind(kind), texts)
            tokens.update(((kind, t), tok) for t, tok in mapping.items())
        for pos, end, p, stop, raw, text, col in misses:
            token = tokens[(col[4], text)]
            new = col[3].encode(token)
            if len(new) == len(raw):
                confirmed = col[1](text)
                if confirmed is not None and confirmed == token:  # only what the cache holds
                    _remember(col, raw, new)
                out[p:stop] = new
            else:
                resized.append((pos, end, p, stop, new))

    async def _rewrite_parsed(self, run: bytes) -> bytes:
        """`rewrite_run` for a result that needs parsed rows (revealing, scrubbing, notes)."""
        decoder = BackendDecoder()
        decoder.feed(run)
        try:
            rows = list(decoder.messages())
        except ProtocolError:
            raise ResultCut(self._unreadable()) from None
        if decoder.buffered or not all(type(row) is DataRow for row in rows):
            raise ResultCut(self._unreadable())
        return b"".join(await self._rewrite(cast(list[DataRow], rows)))

    def _unreadable(self) -> ErrorResponse:
        columns = self.plan.columns
        return _unreadable(columns[0].name if columns else "(none)")

    async def _rewrite(self, rows: Sequence[DataRow]) -> list[bytes]:
        plan, n = self.plan, len(rows)
        self.rows += n
        values = [list(r.columns) for r in rows]
        allowed = await self._allowed(values) if self._revealing else None
        pending: dict[Kind, list[tuple[int, int, str]]] = {}
        for col in plan.columns:
            i = col.index
            for r in range(n):
                raw = values[r][i]
                if raw is None:
                    continue
                if allowed is not None and all(allowed[r].get(t, False) for t in col.tables):
                    continue  # the ticket's customer: revealed as it is
                if col.kind is None:
                    raise ResultCut(
                        error(
                            INSUFFICIENT_PRIVILEGE,
                            f"a value derived from {col.name} belongs to a customer the "
                            "ticket does not cover; the result was cut there",
                            hint="select only the ticket's customer, and their customer id",
                        )
                    )
                if col.codec is None:
                    raise ResultCut(
                        error(
                            FEATURE_NOT_SUPPORTED,
                            f"the type of protected column {col.name} cannot be tokenized",
                            hint="cast it to text in the query",
                        )
                    )
                try:
                    text = col.codec.decode(raw)
                except TokenProxyError:
                    raise ResultCut(_unreadable(col.name)) from None
                pending.setdefault(col.kind, []).append((r, i, text))
        if pending:
            await self._tokenize(pending, values, rows)
        if plan.echo and self.tokens.known:
            self._scrub(values)
        return [_encode_row(v) for v in values]

    async def _allowed(self, values: list[list[bytes | None]]) -> list[dict[str, bool]]:
        """Per row, per protected table: is that row's customer revealed?"""
        plan = self.plan
        ids: list[dict[str, str]] = []
        wanted: set[str] = set()
        for row in values:
            found: dict[str, str] = {}
            for table, (i, codec) in plan.customers.items():
                raw = row[i]
                if raw is None:
                    continue
                try:
                    key = customer_key(codec.decode(raw))
                except TokenProxyError:
                    continue
                found[table] = key
                if key not in self._decided:
                    wanted.add(key)
            ids.append(found)
        if wanted and self.tokens.reveal is not None:
            revealed = await self.tokens.reveal(wanted, plan.fields)
            for key in wanted:
                self._decided[key] = key in revealed
        return [{t: self._decided.get(k, False) for t, k in found.items()} for found in ids]

    async def _tokenize(
        self,
        pending: dict[Kind, list[tuple[int, int, str]]],
        values: list[list[bytes | None]],
        rows: Sequence[DataRow],
    ) -> None:
        engine, store = self.tokens.engine, self.tokens.store
        codecs = {c.index: c.codec for c in self.plan.columns}
        # A note's known names are its row's names as they are, before they are replaced.
        names = self._row_names(values) if Kind.TEXT in pending else {}
        for kind, items in pending.items():
            if kind is Kind.TEXT:
                notes = [(text, names.get(r, ())) for r, _, text in items]
                out, _ = await tokenize_notes(engine, store, notes)
                mapping = None
            else:
                mapping = await tokens_of(engine, store, kind, [t for _, _, t in items])
                out = [mapping[text] for _, _, text in items]
            for (r, i, _), token in zip(items, out, strict=True):
                codec = codecs[i]
                assert codec is not None
                try:
                    values[r][i] = codec.encode(token)
                except TokenProxyError:
                    raise ResultCut(_unreadable(self._name(i))) from None

    def _row_names(self, values: list[list[bytes | None]]) -> dict[int, tuple[str, ...]]:
        """Each row's plain name values (the known names of its notes)."""
        cols = [c for c in self.plan.columns if c.kind is Kind.NAME and c.codec is not None]
        out: dict[int, tuple[str, ...]] = {}
        for r, row in enumerate(values):
            names = []
            for c in cols:
                raw = row[c.index]
                if raw is not None and c.codec is not None:
                    try:
                        names.append(c.codec.decode(raw))
                    except TokenProxyError:
                        continue
            out[r] = tuple(names)
        return out

    def _name(self, index: int) -> str:
        return next(c.name for c in self.plan.columns if c.index == index)

    def _scrub(self, values: list[list[bytes | None]]) -> None:
        known = sorted(self.tokens.known.items(), key=lambda kv: -len(kv[0]))
        for row in values:
            for i, codec in self.plan.echo:
                raw = row[i]
                if raw is None:
                    continue
                try:
                    text = codec.decode(raw)
                except TokenProxyError:
                    row[i] = None
                    continue
                new = text
                for real, token in known:
                    if real and real in new:
                        new = new.replace(real, token)
                if new is not text:
                    row[i] = codec.encode(new)


_PACK_I32 = struct.Struct("!i").pack
_ROW_HEADER = struct.Struct("!ciH").pack
_NULL = _PACK_I32(-1)
_LENGTHS = [_PACK_I32(n) for n in range(4096)]


_I32_FROM = struct.Struct("!i").unpack_from
_UNREADABLE = (ValueError, struct.error, TokenProxyError)  # a run the walk cannot read
_RUN_HEADER = struct.Struct("!BiH").unpack_from  # type byte, length, column count
_RUN_HEADER_LEAD = struct.Struct("!BiHi").unpack_from  # ... and the first column's length
_FRAME_HEADER = struct.Struct("!ci").pack

# The wire-value memo: per engine, kind and codec, a column's raw wire value -> its token's
# wire bytes (as long as the value: written in its place). Only tokens the
# engine's cache confirmed go in; an engine maps a value to one token for its life but
# after `forget` (a lost vault race), which empties its memos (`TokenEngine.forgotten`,
# checked once a run), so the memo is a shortcut past decoding, encoding and the cache,
# never a second source of tokens. Bounded: a memo holds no
# more values than the engine's cache (more could not hit), a full one is cleared; an
# engine's memos go with it (a weak reference), and only the last two engines (keyring
# snapshots: the current one and the one before a rotation) keep theirs.
_Memo = dict[bytes, bytes]
# The row memo: per engine and layout of the protected columns (`ResultPlan.plain`), a
# DataRow's frame -> its rewrite, for the rows whose every value was rewritten in place
# from the engine's cache: a row read again (a dashboard's refresh, the same customer
# looked up again) costs one look-up. Kept with the wire-value memos and emptied with them.
# Keeping a row costs more than rewriting it (an allocation), so a result keeps its rows
# only once one of them came back from the memo (a result read again, a customer looked up
# again); until then only the first _ROWS_PROBE rows of a layout are kept, to find out.
# (A row spliced into its answer, `splice_now`, neither looks here nor is kept: two value
# memo look-ups cost what one here does, and keeping a new row would cost more.)
# Bounded: _ROWS_MEMO rows in all an engine's row memos; a result that would pass the
# bound empties its layout's memo and adds no more (a stream bigger than the memo would
# only churn it).
_ROWS_MEMO: Final = 1 << 18
_ROWS_PROBE: Final = 1024
_ONE_ROW: Final = 512  # a run this short is looked up whole first (one row, most likely)
_MEMO_ENGINES: Final = 2
_MEMO_CODECS: Final = 64  # memos per engine
# id(engine) -> (the engine, its memos by (kind, codec) or ("rows", layout),
#                [its `forgotten` when checked, the rows in its row memos])
_Memos = tuple[weakref.ref[TokenEngine], dict[tuple[Any, ...], _Memo], list[int]]
_MEMOS: dict[int, _Memos] = {}

# A framed column: (memo.get, the engine's token lookup, memo, codec, kind, memo size).
_Wire = tuple[
    Callable[[bytes], bytes | None],
    Callable[[str], str | None],
    _Memo,
    ValueCodec,
    str,
    int,
]
_Patch = tuple[int, int, int, int, bytes]  # frame start, frame end, value start, stop, new
_Miss = tuple[int, int, int, int, bytes, str, _Wire]  # ... raw value, text, column


def _memo(engine: TokenEngine, kind: str, codec: ValueCodec) -> _Memo:
    """The wire-value memo of ``engine`` for one kind and codec."""
    return _memos(engine, (kind, codec))[0]


def _memos(engine: TokenEngine, which: tuple[Any, ...]) -> tuple[_Memo, list[int]]:
    """One memo of ``engine`` (see above), and its engine's counters."""
    key = id(engine)
    held = _MEMOS.get(key)
    if held is None or held[0]() is not engine:
        while len(_MEMOS) >= _MEMO_ENGINES:
            del _MEMOS[next(iter(_MEMOS))]  # the oldest engine
        held = _MEMOS[key] = (
            weakref.ref(engine, lambda ref: _forget_engine(key, ref)), {}, [engine.forgotten, 0]
        )
    memos = held[1]
    memo = memos.get(which)
    if memo is None:
        if len(memos) >= _MEMO_CODECS:
            memos.clear()
            held[2][1] = 0
        memo = memos[which] = {}
    return memo, held[2]


def _fresh_memos(engine: TokenEngine) -> int:
    """Empty ``engine``'s memos if it forgot a token since they were checked; its
    `forgotten` now (a rewriter checks again only once that changes: it only grows)."""
    held = _MEMOS.get(id(engine))
    if held is not None and held[2][0] != engine.forgotten and held[0]() is engine:
        for memo in held[1].values():
            memo.clear()  # (in place: the rewriters' columns hold them)
        held[2][:] = [engine.forgotten, 0]
    return engine.forgotten


def _forget_engine(key: int, ref: weakref.ref[TokenEngine]) -> None:
    held = _MEMOS.get(key)
    if held is not None and held[0] is ref:
        del _MEMOS[key]


def _remember(col: _Wire, raw: bytes, new: bytes) -> None:
    """Memoize a token as long as its value ``raw`` (only those: a hit is written in place
    of the value)."""
    memo = col[2]
    if len(memo) >= col[5]:
        memo.clear()
    memo[raw] = new


def _confirmed(col: _Wire, raw: bytes) -> bytes | None:
    """The token of the wire value ``raw`` from the engine's cache, memoized, when as long
    as the value; None when not cached or of another length."""
    codec = col[3]
    token = col[1](codec.decode(raw))
    if token is None:
        return None
    new = codec.encode(token)
    if len(new) != len(raw):
        return None
    _remember(col, raw, new)
    return new


def _rebuild(buf: bytearray, resized: list[_Patch]) -> bytes:
    """The run in ``buf`` with the frames holding ``resized`` values rebuilt around them
    (their column and message lengths rewritten); the other bytes copied as they are."""
    resized.sort(key=lambda patch: patch[2])
    view = memoryview(buf)
    out: list[bytes | memoryview] = []
    done = 0  # bytes of buf written out
    k, total = 0, len(resized)
    while k < total:
        pos, end = resized[k][0], resized[k][1]
        body: list[bytes | memoryview] = []
        q = pos + 5  # from the column count on
        grown = 0
        while k < total and resized[k][0] == pos:
            _, _, p, stop, new = resized[k]
            body += (view[q : p - 4], _PACK_I32(len(new)), new)
            grown += len(new) - (stop - p)
            q = stop
            k += 1
        body.append(view[q:end])
        out += (view[done:pos], _FRAME_HEADER(b"D", end - pos - 1 + grown), *body)
        done = end
    out.append(view[done:])
    return b"".join(out)


def _split_run(run: bytes) -> list[bytes]:
    """The frames of a run (well formed: `rewrite_run` made it)."""
    frames: list[bytes] = []
    pos, n = 0, len(run)
    while pos < n:
        end = pos + 1 + _I32_FROM(run, pos + 1)[0]
        frames.append(run[pos:end])
        pos = end
    return frames


def _encode_row(columns: list[bytes | None]) -> bytes:
    """A DataRow's wire bytes (what `DataRow.encode` writes, without the object)."""
    try:
        body = b"".join([_NULL if v is None else _LENGTHS[len(v)] + v for v in columns])
    except IndexError:
        body = b"".join([_NULL if v is None else _PACK_I32(len(v)) + v for v in columns])
    return _ROW_HEADER(b"D", len(body) + 6, len(columns)) + body


async def tokens_of(
    engine: TokenEngine, store: Store, kind: Kind, values: Sequence[str]
) -> dict[str, str]:
    """The tokens of ``values``: from the engine's cache (recorded when issued), the rest
    through the store (recorded before they are returned)."""
    mapping: dict[str, str] = {}
    missing: list[str] = []
    cached = engine.cached_token
    for value in dict.fromkeys(values):
        token = cached(kind.value, value)
        if token is None:
            missing.append(value)
        else:
            mapping[value] = token
    if missing:
        mapping.update(
            zip(missing, await store.tokenize(engine, kind.value, missing), strict=True)
        )
    return mapping


def _unreadable(name: str) -> ErrorResponse:
    return error(
        FEATURE_NOT_SUPPORTED,
        f"a value of protected column {name} cannot be read or written in its type",
        hint="cast it to text in the query",
    )
