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
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.crypto.engine import TokenEngine
from proxy.crypto.tokens import Kind
from proxy.errors import TokenProxyError
from proxy.pg.analysis import CLEAR, ColumnLineage
from proxy.pg.catalog import CatalogSnapshot
from proxy.pg.codec import ProtocolError, decode_backend
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
        # takes a tight loop over the engine's cache.
        self._fast: list[tuple[int, str, ValueCodec]] | None = None
        if not self._revealing and not (plan.echo and tokens.known) and all(
            c.kind is not None and c.kind is not Kind.TEXT and c.codec is not None
            for c in plan.columns
        ):
            self._fast = [(c.index, c.kind.value, c.codec) for c in plan.columns
                          if c.kind is not None and c.codec is not None]

    @property
    def framed(self) -> bool:
        """Whether rows may come as raw DataRow frames (`rewrite_frames`)."""
        return self._fast is not None

    async def rewrite(self, rows: Sequence[DataRow]) -> list[bytes]:
        """The rows' new wire bytes, in order; raises ResultCut to end the result."""
        if self._fast is not None:  # parsed rows of a framed result (an Execute's first)
            return await self.rewrite_frames([row.wire() for row in rows])
        return await self._rewrite(rows)

    async def rewrite_frames(self, frames: Sequence[bytes]) -> list[bytes]:
        """`rewrite` for raw DataRow frames (plain columns only): each protected value is
        found by walking the column lengths and replaced in a copy of the frame, which is
        rebuilt only when a token's encoding is not as long as its value's. A frame whose
        lengths do not add up cuts the result (never forwarded as it came)."""
        self.rows += len(frames)
        fast = self._fast
        assert fast is not None
        engine = self.tokens.engine
        last = max(i for i, _, _ in fast)
        protected = {i: (kind, codec, engine.token_lookup(kind)) for i, kind, codec in fast}
        i32 = _I32_FROM
        # Per frame: [(start, stop, replacement bytes or None until resolved)]
        patches: list[list[list[Any]]] = []
        rebuild: list[bool] = []  # a replacement of another length: the frame is rebuilt
        misses: list[tuple[list[Any], str, str, ValueCodec]] = []
        try:
            for frame in frames:
                (count,) = _U16_FROM(frame, 5)
                if count <= last:
                    raise ValueError("fewer columns than the result's description")
                p = 7
                mine: list[list[Any]] = []
                resized = False
                for i in range(last + 1):
                    (size,) = i32(frame, p)
                    p += 4
                    if size < 0:
                        continue
                    stop = p + size
                    target = protected.get(i)
                    if target is not None:
                        if stop > len(frame):
                            raise ValueError("a column runs past its frame")
                        kind, codec, lookup = target
                        text = codec.decode(frame[p:stop])
                        token = lookup(text)
                        if token is None:
                            patch = [p, stop, None]
                            misses.append((patch, kind, text, codec))
                            resized = True  # not known yet: checked when assembled
                        else:
                            new = codec.encode(token)
                            resized = resized or len(new) != size
                            patch = [p, stop, new]
                        mine.append(patch)
                    p = stop
                patches.append(mine)
                rebuild.append(resized)
            if misses:
                await self._resolve_misses(misses)
        except (ValueError, struct.error, TokenProxyError):
            raise ResultCut(_unreadable(self.plan.columns[0].name)) from None
        out: list[bytes] = []
        for frame, mine, resized in zip(frames, patches, rebuild, strict=True):
            if not mine:
                out.append(frame)
            elif resized and any(stop - start != len(new) for start, stop, new in mine):
                try:
                    out.append(_splice(frame, mine))
                except (ValueError, ProtocolError):
                    raise ResultCut(_unreadable(self.plan.columns[0].name)) from None
            else:
                buf = bytearray(frame)
                for start, stop, new in mine:
                    buf[start:stop] = new
                out.append(bytes(buf))
        return out

    async def _resolve_misses(self, misses: list[tuple[list[Any], str, str, ValueCodec]]) -> None:
        by_kind: dict[str, list[str]] = {}
        for _, kind, text, _ in misses:
            by_kind.setdefault(kind, []).append(text)
        tokens: dict[tuple[str, str], str] = {}
        for kind, texts in by_kind.items():
            mapping = await tokens_of(self.tokens.engine, self.tokens.store, Kind(kind), texts)
            tokens.update(((kind, t), tok) for t, tok in mapping.items())
        for patch, kind, text, codec in misses:
            patch[2] = codec.encode(tokens[(kind, text)])

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
_U16_FROM = struct.Struct("!H").unpack_from


def _splice(frame: bytes, patches: list[list[Any]]) -> bytes:
    """``frame`` with the values at the patches' spans replaced (lengths rewritten)."""
    row = decode_backend(frame)
    if not isinstance(row, DataRow):
        raise ValueError("not a DataRow")
    columns = list(row.columns)
    spans = {start: new for start, _, new in patches}
    p = 7
    for i, value in enumerate(columns):
        p += 4
        if value is None:
            continue
        if p in spans:
            columns[i] = spans[p]
        p += len(value)
    return _encode_row(columns)


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
