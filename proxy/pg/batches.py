"""A whole extended-protocol exchange found in the bytes, for a session to take in one step.

Drivers send a query with parameters as one batch of frames in one write: libpq, psycopg
and pgbench send Parse (none for a prepared statement), Bind, Describe of the portal,
Execute of all rows, Sync; asyncpg, which described its prepared statement once, Bind,
Execute, Sync. The server answers in one write too: ParseComplete (when parsed),
BindComplete, RowDescription or NoData (when described), the DataRows, CommandComplete,
ReadyForQuery. A point select's ten or so messages cost more to frame and dispatch one by
one than the work they carry. Here a batch's shape is learnt from its frames once
(`learn`); a batch of the same shape is then recognised by its bytes alone (`match`: only
the parameter values may differ), and its answer by its frames (`answer`). The answer to
a simple Query of one statement (RowDescription, DataRows, CommandComplete,
ReadyForQuery: a point select sent as text) is the same with no acknowledgement first.

Only frames are read here (no I/O, no session state): whether a session may take a batch
this way is the session's business. Anything else (a batch or answer split across reads,
another message in between, a frame not seen before, a malformed one) is not recognised,
and goes message by message, the path that handles (and refuses) every case.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from proxy.pg.codec import BackendDecoder, FrontendDecoder, ProtocolError, decode_frontend
from proxy.pg.messages import (
    Bind,
    CommandComplete,
    Describe,
    Execute,
    NoData,
    Parse,
    ReadyForQuery,
    RowDescription,
)

__all__ = [
    "BOUND", "PARSED", "Answer", "AnswerShape", "BatchShape", "answer", "answer_like",
    "bind_key", "learn", "match",
]

_HEADER_FROM = struct.Struct("!Bi").unpack_from
_I32_FROM = struct.Struct("!i").unpack_from
_U16_FROM = struct.Struct("!H").unpack_from
_PARSE, _BIND, _DESCRIBE, _EXECUTE, _SYNC = 0x50, 0x42, 0x44, 0x45, 0x53
_DATA_ROW = 0x44
BOUND = b"2\x00\x00\x00\x04"  # BindComplete: the answer to a batch begins with it
PARSED = b"1\x00\x00\x00\x04" + BOUND  # ParseComplete first when the batch parsed
MAX_ROWS = 256  # DataRows an answer may hold to be taken whole (more: row runs do better)


@dataclass(frozen=True, slots=True)
class BatchShape:
    """What every batch of one kind has in common: all its bytes but the Bind's values."""

    parse: Parse | None  # the batch's Parse (None: a statement prepared before)
    parse_frame: bytes  # its frame (b"" for none)
    statement: str  # the Bind's statement
    portal: str  # the Bind's portal (the one described and executed)
    result_formats: tuple[int, ...]
    head: bytes  # the Bind's payload up to its values (names, formats, value count)
    count: int  # how many values
    results: bytes  # the Bind's payload after its values (the result formats)
    described: bool  # the batch describes its portal
    tail: bytes  # the frames after the Bind: [Describe], Execute, Sync
    bind_sizes: range  # the lengths the Bind may declare (its decoder's `sizes`)
    # What `match` compares, worked out once: results + tail, and where the Bind's
    # frame and its values begin (after the Parse frame; after the Bind's header).
    after: bytes = field(init=False, repr=False, compare=False)
    bind_at: int = field(init=False, repr=False, compare=False)
    values_at: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "after", self.results + self.tail)
        object.__setattr__(self, "bind_at", len(self.parse_frame))
        object.__setattr__(self, "values_at", 5 + len(self.head))


def _frame_at(buf: bytes, pos: int) -> tuple[int, int] | None:
    """The type and end of the frame at ``pos``, if it is all in ``buf``."""
    if pos + 5 > len(buf):
        return None
    code, size = _HEADER_FROM(buf, pos)
    end = pos + 1 + size
    if size < 4 or end > len(buf):
        return None
    return code, end


def bind_key(buf: bytes, pos: int, end: int) -> tuple[bytes, int] | None:
    """The payload of the Bind frame ``buf[pos:end]`` up to its values (its portal and
    statement names, parameter formats and value count: what every Bind of a batch shape
    has), and where the values begin."""
    try:
        p = buf.index(0, pos + 5, end) + 1  # the portal's name
        p = buf.index(0, p, end) + 1  # the statement's
        (formats,) = _U16_FROM(buf, p)
        p += 4 + 2 * formats  # the formats, then the value count
    except (ValueError, struct.error):
        return None
    if p > end:
        return None
    return buf[pos + 5 : p], p


def learn(buf: bytes, pos: int, decoder: FrontendDecoder) -> BatchShape | None:
    """The shape of the batch at ``buf[pos:]`` (see the module docstring), if one is there
    whole: [Parse], Bind, [Describe of the Bind's portal], Execute of it with no row
    limit, Sync. The Parse must be one ``decoder`` has seen before (`known`), and comes
    with a Describe (a statement parsed and executed undescribed goes message by message:
    its rows must be described first)."""
    frames: list[tuple[int, int, int]] = []  # (type, start, end)
    p = pos
    while len(frames) < 5:
        found = _frame_at(buf, p)
        if found is None:
            return None
        code, end = found
        if not decoder.fits(code, end - p - 1):
            return None
        frames.append((code, p, end))
        p = end
        if code == _SYNC:
            break
    parse_frame = b""
    if frames[0][0] == _PARSE:
        parse_frame = buf[frames[0][1] : frames[0][2]]
        del frames[0]
    codes = [code for code, _, _ in frames]
    described = codes == [_BIND, _DESCRIBE, _EXECUTE, _SYNC]
    if not (described or (codes == [_BIND, _EXECUTE, _SYNC] and not parse_frame)):
        return None
    known = decoder.known(parse_frame) if parse_frame else None
    parse = known if isinstance(known, Parse) else None
    if parse_frame and parse is None:
        return None
    (_, b_start, b_end), (_, tail_at, _) = frames[0], frames[1]
    try:
        bind, *rest, _ = [decode_frontend(buf[start:end]) for _, start, end in frames]
    except ProtocolError:
        return None
    if not (
        isinstance(bind, Bind)
        and rest == ([Describe("P", bind.portal)] if described else []) + [
            Execute(bind.portal, 0)]
        and (parse is None or parse.statement == bind.statement)
    ):
        return None
    key = bind_key(buf, b_start, b_end)
    if key is None:
        return None
    head, values = key
    for value in bind.params:
        values += 4 + (len(value) if value is not None else 0)
    return BatchShape(
        parse=parse,
        parse_frame=parse_frame,
        statement=bind.statement,
        portal=bind.portal,
        result_formats=bind.result_formats,
        head=head,
        count=len(bind.params),
        results=buf[values:b_end],
        described=described,
        tail=buf[tail_at:p],
        bind_sizes=decoder.sizes(_BIND),
    )


def match(buf: bytes, pos: int, shape: BatchShape) -> int | None:
    """Where the batch at ``buf[pos:]`` ends if it is one of ``shape`` (whole, every
    frame well formed), else None."""
    p = pos + shape.bind_at
    if not (buf.startswith(shape.parse_frame, pos) and buf.startswith(shape.head, p + 5)):
        return None  # (the head: after the Bind's type and length)
    code: int
    size: int
    code, size = _HEADER_FROM(buf, p)
    bind_end = p + 1 + size
    end = bind_end + len(shape.tail)
    if code != _BIND or end > len(buf) or size not in shape.bind_sizes:
        return None
    q = p + shape.values_at
    for _ in range(shape.count):
        if q + 4 > bind_end:
            return None
        (size,) = _I32_FROM(buf, q)
        if size < -1:
            return None
        q += 4 + size if size > 0 else 4
    if q + len(shape.results) != bind_end or not buf.startswith(shape.after, q):
        return None
    return end


Answer = tuple[RowDescription | NoData | None, int, int, int]


@dataclass(frozen=True, slots=True)
class AnswerShape:
    """What an answer taken whole had around its rows (`answer`): the same bytes again
    are the same messages (`answer_like`)."""

    head: bytes  # the acks ([ParseComplete], BindComplete; none), [RowDescription or NoData]
    description: RowDescription | NoData | None
    tail: bytes  # CommandComplete, ReadyForQuery
    row_sizes: range  # the lengths a DataRow may declare (its decoder's `sizes`)


def answer(
    buf: bytes, pos: int, acks: bytes, described: bool, decoder: BackendDecoder
) -> Answer | None:
    """The whole answer at ``buf[pos:]`` to a batch (``acks``: `PARSED` or `BOUND`, as it
    had a Parse or not; ``described``: a Describe) or to a simple Query (``acks`` empty,
    described), if it is there: ``acks``, [RowDescription or NoData (one ``decoder``
    knows)], at most `MAX_ROWS` DataRows, CommandComplete (known) and ReadyForQuery. As
    (the description or None, where the rows begin, where they end, where the answer
    ends); else None.

    (A frame is found by its bytes, length included: one cut short by the buffer's end
    is never taken for a whole one.)"""
    if not buf.startswith(acks, pos):
        return None
    p = pos + len(acks)
    known = decoder.known
    try:
        description: RowDescription | NoData | None = None
        if described:
            _, size = _HEADER_FROM(buf, p)
            end = p + 1 + size
            found = known(buf[p:end])
            if not isinstance(found, RowDescription | NoData):
                return None
            description, p = found, end
        rows = p
        p = _rows_end(buf, p, decoder)
        if p < 0:
            return None
        _, size = _HEADER_FROM(buf, p)
        end = p + 1 + size
        if type(known(buf[p:end])) is not CommandComplete:
            return None
        _, size = _HEADER_FROM(buf, end)
        stop = end + 1 + size
        if type(known(buf[end:stop])) is not ReadyForQuery:
            return None
    except struct.error:  # fewer than five bytes left: not all here
        return None
    return description, rows, p, stop


def answer_like(
    buf: bytes, pos: int, shape: AnswerShape, decoder: BackendDecoder
) -> Answer | None:
    """`answer` for an answer with ``shape``'s bytes around its rows (an answer to the
    same statement, as a point select's are): the frames around the rows compared, not
    read; None when they differ (`answer` then reads them)."""
    head, tail = shape.head, shape.tail
    if not buf.startswith(head, pos):
        return None
    rows = pos + len(head)
    try:
        code, size = _HEADER_FROM(buf, rows)
        p = rows + 1 + size
        if code == _DATA_ROW and buf.startswith(tail, p):  # one row (a point select's)
            if size not in shape.row_sizes:
                return None
        else:
            p = _rows_end(buf, rows, decoder)
            if p < 0 or not buf.startswith(tail, p):
                return None
    except struct.error:
        return None
    return shape.description, rows, p, p + len(tail)


def _rows_end(buf: bytes, p: int, decoder: BackendDecoder) -> int:
    """Where the DataRows from ``p`` end (at most `MAX_ROWS`, each whole and fitting
    ``decoder``'s bounds), with at least five bytes after them; -1 if not so."""
    n = len(buf)
    for _ in range(MAX_ROWS + 1):
        code, size = _HEADER_FROM(buf, p)  # (struct.error: fewer than five bytes left)
        if code != _DATA_ROW:
            return p
        if not decoder.fits(code, size):
            return -1
        p += 1 + size
        if p > n:
            return -1
    return -1
