"""One client's PostgreSQL session after start-up: two pumps and the queue between them.

The client pump decodes what the client sends, passes each statement through the
`Gate` (refuse, resolve tokens) and forwards it; for every message that will be answered
it appends an *expectation* to a FIFO. The server pump decodes the answers in the same
order and, guided by the expectation at the head, rewrites results (`RowRewriter`,
COPY rows), scrubs errors and notices, and tracks session state (prepared statements,
portals, cursors, the ticket). Handlers answer synchronously when they need no I/O and
return a coroutine when they do (see `proxy.pg.pump`): each has a ``_later`` twin that
takes the general path. A whole batch of a shape seen before (Parse, Bind, Describe,
Execute, Sync) and its whole answer are taken in one step when each of their messages
would take its handler's usual path (`proxy.pg.batches`): straight from the read that
brings them (`whole_batch`, `whole_answer`), or from the bytes buffered (`take_batch`,
`take_answer`); so are a read that is one simple Query and its answer.

A refused statement never reaches the database. It is replaced by a message the server
is sure to reject (a Parse or Query of text that does not parse, a Bind of a statement
that does not exist), and the server's error is swapped for tokenproxy's on the way
back: the transaction and pipeline then behave exactly as on any other error (an implicit
transaction rolls back, an extended-protocol batch is skipped up to its Sync).

A result cut mid-way (a derived value of a customer the ticket does not cover, a value
that cannot be rewritten) ends with tokenproxy's ErrorResponse; the rest of the server's
answers up to the next ReadyForQuery are dropped. Anything unexpected from either side
closes the session with an error: fail closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from proxy.crypto.engine import TokenEngine
from proxy.crypto.tokens import Kind
from proxy.errors import TokenProxyError
from proxy.pg.analysis import Analysis, ColumnLineage, Statement
from proxy.pg.batches import (
    BOUND,
    PARSED,
    Answer,
    AnswerShape,
    BatchShape,
    answer,
    answer_like,
    bind_key,
    learn,
    match,
)
from proxy.pg.catalog import Catalogs, CatalogSnapshot, CatalogUnavailableError
from proxy.pg.codec import FrontendDecoder, ProtocolError
from proxy.pg.copyrows import CopyRow, CopyRowReader, UnsupportedCopyFormat
from proxy.pg.gate import WRITE_TAGS, AnalysisCache, Gate, Refused
from proxy.pg.link import Link, Outbox
from proxy.pg.messages import (
    Bind,
    BindComplete,
    Close,
    CloseComplete,
    CommandComplete,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    FunctionCall,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    Passthrough,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    Sync,
    Terminate,
)
from proxy.pg.notices import scrub_fields
from proxy.pg.pump import Ended, Handled, Pump, Taken
from proxy.pg.refusals import CANNOT_CONNECT_NOW, INSUFFICIENT_PRIVILEGE, error
from proxy.pg.results import ResultCut, ResultPlan, RowRewriter, Tokens, plan_result, tokens_of
from proxy.pg.startup import Established
from proxy.pg.values import parse_options, python_encoding
from proxy.policy.columns import ColumnPolicy
from proxy.store.audit import AuditLog
from proxy.store.budget import BudgetLimits
from proxy.store.durable import Store
from proxy.store.freetext import tokenize_notes
from proxy.store.reveal import DEFAULT_LIMITS, authorize_reveals
from proxy.store.tickets import TicketStore

__all__ = ["PgContext", "run_session"]

log = structlog.get_logger("tokenproxy.pg")

# Messages that come back byte for byte (a statement's RowDescription, CommandComplete;
# a client's Parse, Describe, Execute, Close): the decoder parses each distinct frame once
# and gives the same instance again (`_Decoder.memoize`). (Those with no content, and
# ReadyForQuery, are shared instances already.) DataRows come framed only (`Passthrough`):
# the first of a result, before the rest are taken as a run.
_MEMOIZED = frozenset({b"T", b"t", b"C"})
_CLIENT_MEMOIZED = frozenset({b"P", b"D", b"E", b"C"})
_FRAMED = frozenset({b"D"})
_PLAN_CACHE = 256  # result plans kept per session
_ACKS = (ParseComplete, BindComplete, CloseComplete)
_ACKED = frozenset({"parse", "bind", "close"})
_EMPTY = Statement("EMPTY")
_DATA_ROW, _COPY_DATA = 0x44, 0x64  # the type bytes of the messages taken in runs
_COPY_UNREADABLE = error("0A000", "a COPY row could not be read; the COPY was cut")
_LENGTH_FROM = struct.Struct("!i").unpack_from
_HEADER_FROM = struct.Struct("!Bi").unpack_from
_QUERY = 0x51  # a simple Query's type byte
# What planning a result gives: the bytes of a cut (none: planned), or a coroutine giving
# them when the catalog must reload first.
Planning = list[bytes] | Coroutine[Any, Any, list[bytes]]
REFUSED_SQL = "TOKENPROXY REFUSED THIS STATEMENT"  # a syntax error: the server rejects it
REFUSED_NAME = "tokenproxy: refused"  # no such prepared statement or portal
# Fast-path function calls allowed: the large-object functions libpq uses (pg_proc OIDs).
LARGE_OBJECT_FUNCTIONS = frozenset(
    {715, 952, 953, 954, 955, 956, 957, 958, 964, 1004, 3170, 3171, 3172}
)


@dataclass
class PgContext:
    """What every session of one PostgreSQL listener shares."""

    engine: Callable[[], TokenEngine]  # the current engine: one keyring snapshot per call
    store: Store
    tickets: TicketStore
    audit: AuditLog
    catalogs: Catalogs
    policy: ColumnPolicy
    limits: Callable[[], BudgetLimits] = lambda: DEFAULT_LIMITS  # the budget in force
    cache: AnalysisCache = field(default_factory=AnalysisCache)
    outbox: Outbox = field(default_factory=Outbox)  # what the sessions send, written together

    def protected_columns(self) -> dict[str, Kind]:
        """Protected column names -> kind (for error messages that name a key column)."""
        out: dict[str, Kind] = {}
        for table in self.policy:
            out.update(table.columns)
        return out


# ---- what the server pump expects next


# Rows of a result, as rewritten: for these fields, in this encoding, with this engine,
# by this plan's shared rewriter (framed; None: the rows pass as they are).
_Rewritten = tuple[tuple[FieldDescription, ...], str, TokenEngine, RowRewriter | None]


@dataclass(slots=True)
class _Run:
    """One statement whose answers are on their way."""

    statement: Statement
    outputs: tuple[ColumnLineage, ...] | None
    known: dict[str, str]
    ticket: str | None
    snapshot: CatalogSnapshot | None
    undeclared: bool = False  # FETCH/EXECUTE of a cursor or statement not seen here
    planned: _Rewritten | None = None  # how its rows were last rewritten (`_answer_at`)
    effects: bool = field(init=False)  # it changes session state when done (`_completed`)
    answered: AnswerShape | None = None  # the frames around its last answer's rows (ditto)

    def __post_init__(self) -> None:
        s = self.statement  # (what `Session._completed` looks at)
        self.effects = bool(
            s.set_ticket is not None
            or s.reset_ticket
            or s.cursor is not None
            or s.prepare is not None
            or s.ddl
        )


@dataclass(slots=True)
class _Expect:
    kind: str  # parse bind close describe execute sync query function
    refusal: ErrorResponse | None = None
    run: _Run | None = None
    runs: Sequence[_Run] = ()  # query: one per statement
    index: int = 0
    internal: bool = False  # injected by the proxy: its answer is not forwarded
    prepared: _Prepared | None = None  # the objects as they were when the message was sent
    portal: _Portal | None = None
    planned: bool = False


# Expectations that carry nothing and are never changed: shared. Those of a batch taken
# whole (`Session._batch`) are their own, so that its answer is known for one: a
# Parse, a Bind followed by a Describe (_BATCH_BIND), a Bind with none (_BATCH_BOUND), and
# the Describe of the portal the Execute after it runs (_BATCH_DESCRIBE: that Execute's).
_SYNC, _BIND, _CLOSE, _PARSE = _Expect("sync"), _Expect("bind"), _Expect("close"), _Expect("parse")
_BATCH_PARSE, _BATCH_BIND, _BATCH_BOUND = _Expect("parse"), _Expect("bind"), _Expect("bind")
_BATCH_DESCRIBE = _Expect("describe")


@dataclass(slots=True)
class _Prepared:
    statement: Statement
    ticket_comment: str | None
    param_types: tuple[int, ...]
    snapshot: CatalogSnapshot | None
    known: dict[str, str] = field(default_factory=dict)  # resolved in the Parse's text
    description: tuple[FieldDescription, ...] | None = None  # from Describe S
    described: bool = False
    describing: bool = False  # a Describe S was sent
    formatted: dict[tuple[int, ...], tuple[FieldDescription, ...]] | None = None


@dataclass(slots=True)
class _Portal:
    prepared: _Prepared
    run: _Run
    result_formats: tuple[int, ...]
    description: tuple[FieldDescription, ...] | None = None
    described: bool = False
    describing: bool = False  # a Describe P was sent
    copy_in: _CopyIn | None = None  # a COPY FROM STDIN into protected columns

    def fields(self) -> tuple[FieldDescription, ...] | None:
        """The row description of this portal's rows, if the server told."""
        if self.described:
            return self.description
        prepared = self.prepared
        if prepared.described and prepared.description is not None:
            formats = self.result_formats
            if prepared.formatted is None:
                prepared.formatted = {}
            cached = prepared.formatted.get(formats)
            if cached is None:
                cached = _apply_formats(prepared.description, formats)
                prepared.formatted[formats] = cached
            return cached
        return None

    @property
    def no_rows(self) -> bool:
        return (self.described and self.description is None) or (
            not self.described and self.prepared.described and self.prepared.description is None
        )


@dataclass(slots=True)
class _Lane:
    """A batch shape learnt (`Session.take_batch`), with what its batches found: the
    statement its Parse is (in the catalog snapshot it was analysed in; the analysis is
    looked up again when the snapshot changes) and the run its batches share."""

    shape: BatchShape
    snapshot: CatalogSnapshot | None = None
    statement: Statement = _EMPTY
    comment: str | None = None  # the ticket the statement's text cites
    run: _Run | None = None
    prepared: _Prepared | None = None  # what its last Parse made (`Session._batch`)
    # The expectations its batches queue before their Execute's: [Parse], Bind, [Describe]
    heads: tuple[_Expect, ...] = field(init=False)
    # The portal its last batch made, that batch's expectations (heads, Execute, Sync):
    # made again in place when nothing else is expected (`Session._batch`).
    portal: _Portal | None = None
    queued: tuple[_Expect, ...] = ()

    def __post_init__(self) -> None:
        shape = self.shape
        parse = (_BATCH_PARSE,) if shape.parse is not None else ()
        bind = (_BATCH_BIND, _BATCH_DESCRIBE) if shape.described else (_BATCH_BOUND,)
        self.heads = parse + bind


def _apply_formats(
    fields: tuple[FieldDescription, ...], formats: tuple[int, ...]
) -> tuple[FieldDescription, ...]:
    out = []
    for i, f in enumerate(fields):
        if not formats:
            fmt = 0
        elif len(formats) == 1:
            fmt = formats[0]
        else:
            fmt = formats[i] if i < len(formats) else 0
        out.append(
            FieldDescription(
                f.name, f.table_oid, f.column_attr, f.type_oid, f.type_size, f.type_mod, fmt
            )
        )
    return tuple(out)


class Session:
    """See the module docstring."""

    def __init__(self, ctx: PgContext, est: Established) -> None:
        self.ctx = ctx
        self.est = est
        self.agent = est.user
        status = dict(est.parameter_status)
        # PostgreSQL's name of the client encoding: the value codecs refuse one they do not
        # know (the result is then cut rather than passed).
        self.encoding = status.get("client_encoding", "UTF8")
        options = parse_options(est.params.get("options", ""))
        self.gate = Gate(
            agent=est.user,
            catalog=ctx.catalogs.get(est.database),
            cache=ctx.cache,
            tickets=ctx.tickets,
            store=ctx.store,
            engine=ctx.engine,
            startup_ticket=(
                options.get("tokenproxy.ticket") or est.params.get("tokenproxy.ticket") or None
            ),
        )
        self.gate.standard_strings = status.get("standard_conforming_strings", "on") == "on"
        self.protected_columns = ctx.protected_columns()
        self.expect: deque[_Expect] = deque()
        self.statements: dict[str, _Prepared] = {}
        self.portals: dict[str, _Portal] = {}
        self.cursors: dict[str, tuple[ColumnLineage, ...] | None] = {}
        self.sql_prepared: dict[str, Statement] = {}
        self._copying: _CopyIn | None = None  # see copy_in
        self.result: RowRewriter | None = None
        self.copy_out: _CopyOut | None = None
        self.cutting = False  # drop the server's answers until ReadyForQuery
        self.copy_refused: ErrorResponse | None = None  # COPY FROM data refused: drop the rest
        self._plans: dict[tuple[Any, ...], tuple[Statement, Any, Any, ResultPlan]] = {}
        self._rewriters: dict[int, tuple[ResultPlan, RowRewriter]] = {}  # by id(plan)
        # The messages now taken in runs (DataRows of a planned result, CopyData of a COPY
        # TO STDOUT under way): their type byte, 0 for none.
        self._taking = 0
        # Batch shapes learnt (`take_batch`): by their Parse frame, or their Bind's head.
        self._lanes: dict[bytes, _Lane] = {}
        self._bind_lanes: dict[bytes, _Lane] = {}
        self._last_lane: _Lane | None = None  # the lane of the last batch taken
        # The runs of the last simple Query (`_query`): its analysis, snapshot and ticket.
        self._last_query: tuple[Analysis, CatalogSnapshot, str | None, list[_Run]] | None = None
        self._alone = 0  # messages of a batch declined, left to go one by one
        est.server_decoder.memoize(_MEMOIZED, _PLAN_CACHE)
        est.server_decoder.passthrough = _FRAMED
        est.client_decoder.memoize(_CLIENT_MEMOIZED, _PLAN_CACHE)
        self._client_handlers: dict[type, Callable[[Any], Handled]] = {
            Query: self._query,
            Parse: self._parse,
            Bind: self._bind,
            Describe: self._describe,
            Execute: self._execute,
            Close: self._close,
            Sync: self._sync,
            CopyData: self._copy_data,
            CopyDone: self._copy_end,
            CopyFail: self._copy_end,
            FunctionCall: self._function_call,
            Flush: self._flush,
            Terminate: self._terminate,
        }

    @property
    def copy_in(self) -> _CopyIn | None:
        """The COPY FROM STDIN into protected columns under way, if any: its data is taken
        in runs (the client pump looks for them only then)."""
        return self._copying

    @copy_in.setter
    def copy_in(self, copy: _CopyIn | None) -> None:
        if copy is self._copying:
            return
        self._copying = copy
        self._client.take = self.take_batch if copy is None else self.take_copy

    # ================================================================ client side

    def on_client(self, msg: Any) -> Handled:
        """The bytes to send upstream for a client message no handler takes: none."""
        raise ProtocolError(f"unexpected {type(msg).__name__} message in a session")

    def _close(self, msg: Close) -> bytes:
        (self.statements if msg.kind == "S" else self.portals).pop(msg.name, None)
        self.expect.append(_CLOSE)
        return msg.wire()

    def _sync(self, msg: Sync) -> bytes:
        self.expect.append(_SYNC)
        return msg.wire()

    def _flush(self, msg: Flush) -> bytes:
        return msg.wire()

    def _terminate(self, msg: Terminate) -> bytes:
        raise Ended(msg.wire())

    async def _copy_end(self, msg: CopyDone | CopyFail) -> bytes:
        if self.copy_refused is not None:
            self.copy_refused = None
            return b""  # the server had a CopyFail already
        out = b""
        if self.copy_in is not None and isinstance(msg, CopyDone):
            try:
                out = await self.copy_in.finish()
            except TokenProxyError:
                self.copy_in = None
                return CopyFail("tokenproxy could not read the end of the COPY").encode()
        self.copy_in = None
        return out + msg.wire()

    def _function_call(self, msg: FunctionCall) -> bytes:
        if msg.function_oid in LARGE_OBJECT_FUNCTIONS:
            self.expect.append(_Expect("function"))
            return msg.wire()
        refusal = error(
            INSUFFICIENT_PRIVILEGE,
            "fast-path function calls are allowed for large objects only",
            hint="call the function in a SELECT",
        )
        self.expect.append(_Expect("query", refusal=refusal))
        return Query(REFUSED_SQL).encode()

    def _query(self, msg: Query) -> Handled:
        wire = msg.wire()
        sent = self._query_now(msg.sql, wire)
        return self._query_later(msg) if sent is None else sent

    def _query_now(self, sql: str, wire: bytes) -> bytes | None:
        """`_query` of the Query ``wire`` (its text ``sql``) when it needs no I/O: the
        bytes to send on, its expectation queued; None, with nothing changed, when it
        does (an analysis or catalog to load, tokens in it to resolve, a check to make)."""
        now = self.gate.analyze_now(sql)
        if now is None:
            return None
        analysis, snapshot = now
        ticket = self.gate.ticket(analysis)
        last = self._last_query  # (a client sends one statement again and again, most often)
        if last is not None and last[0] is analysis and last[1] is snapshot and last[2] == ticket:
            runs = last[3]  # (its statements plain: checked the first time)
        elif not all(s.plain for s in analysis.statements):
            return None
        else:
            runs = [self._run(s, {}, ticket, snapshot) for s in analysis.statements]
            # Shared by the next Query of this analysis unless a run looks up the
            # outputs of the session's cursor or statement it runs (FETCH, EXECUTE).
            shared = all(s.fetch is None and s.execute is None for s in analysis.statements)
            self._last_query = (analysis, snapshot, ticket, runs) if shared else None
        self.copy_in = None
        self.expect.append(_Expect("query", runs=runs))
        return wire

    async def _query_later(self, msg: Query) -> bytes:
        try:
            analysis, snapshot = await self.gate.analyze(msg.sql)
            ticket = self.gate.ticket(analysis)
            for statement in analysis.statements:
                await self.gate.check(statement, ticket)
            sql, known = await self.gate.resolve_text(msg.sql, analysis)
            copy_in = None
            for statement in analysis.statements:
                if statement.copy_from_stdin:
                    copy_in = self._copy_in(statement)
        except Refused as refused:
            self.expect.append(_Expect("query", refusal=refused.response))
            return Query(REFUSED_SQL).encode()
        self.copy_in = copy_in
        runs = [self._run(s, known, ticket, snapshot) for s in analysis.statements]
        self.expect.append(_Expect("query", runs=runs))
        return msg.wire() if sql == msg.sql else Query(sql).encode()

    def _run(
        self,
        statement: Statement,
        known: dict[str, str],
        ticket: str | None,
        snapshot: CatalogSnapshot | None,
    ) -> _Run:
        """A statement on its way, with the outputs of the cursor or statement it uses."""
        outputs, undeclared = statement.outputs, False
        if statement.fetch is not None:
            undeclared = statement.fetch not in self.cursors
            outputs = self.cursors.get(statement.fetch)
        elif statement.execute is not None:
            prepared = self.sql_prepared.get(statement.execute)
            undeclared = prepared is None
            outputs = prepared.outputs if prepared is not None else None
        return _Run(statement, outputs, known, ticket, snapshot, undeclared)

    def _parse(self, msg: Parse) -> Handled:
        now = self.gate.analyze_now(msg.query)
        if now is not None and len(now[0].statements) <= 1:
            analysis, snapshot = now
            statement = analysis.statements[0] if analysis.statements else _EMPTY
            if _parses_now(statement):
                return self._prepare(msg, statement, analysis, snapshot, msg.query, {})
        return self._parse_later(msg)

    def _prepare(
        self,
        msg: Parse,
        statement: Statement,
        analysis: Analysis,
        snapshot: CatalogSnapshot,
        query: str,
        known: dict[str, str],
    ) -> bytes:
        self.statements[msg.statement] = _Prepared(
            statement, analysis.ticket, msg.param_types, snapshot, known
        )
        self.expect.append(_PARSE)
        if query == msg.query:
            return msg.wire()
        return Parse(msg.statement, query, msg.param_types).encode()

    async def _parse_later(self, msg: Parse) -> bytes:
        try:
            analysis, snapshot = await self.gate.analyze(msg.query)
            if len(analysis.statements) > 1:
                raise Refused(
                    error(
                        INSUFFICIENT_PRIVILEGE,
                        "a prepared statement holds one SQL statement",
                        hint="send the statements one by one",
                    )
                )
            statement = analysis.statements[0] if analysis.statements else _EMPTY
            if statement.refusal is not None:
                await self.gate.check(statement, None)
            query, known = await self.gate.resolve_text(msg.query, analysis)
        except Refused as refused:
            self.statements.pop(msg.statement, None)
            self.expect.append(_Expect("parse", refusal=refused.response))
            return Parse(msg.statement, REFUSED_SQL, ()).encode()
        return self._prepare(msg, statement, analysis, snapshot, query, known)

    def _bind(self, msg: Bind) -> Handled:
        prepared = self.statements.get(msg.statement)
        if prepared is not None:
            s = prepared.statement
            if _binds_now(s):
                ticket = prepared.ticket_comment or self.gate.ticket_now()
                run = self._run(s, prepared.known, ticket, prepared.snapshot)
                self.portals[msg.portal] = _Portal(prepared, run, msg.result_formats)
                self.expect.append(_BIND)
                return msg.wire()
        return self._bind_later(msg)

    async def _bind_later(self, msg: Bind) -> bytes:
        prepared = self.statements.get(msg.statement)
        try:
            if prepared is None:
                sql_prepared = self.sql_prepared.get(msg.statement)
                if sql_prepared is None:
                    raise Refused(
                        error(
                            "26000",
                            f"prepared statement {msg.statement!r} is not known to tokenproxy",
                        )
                    )
                prepared = _Prepared(sql_prepared, None, (), None)
            ticket = prepared.ticket_comment or self.gate.ticket_now()
            await self.gate.check(prepared.statement, ticket)
            bind, known = await self.gate.resolve_bind(
                msg, prepared.statement, prepared.param_types, python_encoding(self.encoding)
            )
            copy_in = (
                self._copy_in(prepared.statement) if prepared.statement.copy_from_stdin else None
            )
        except Refused as refused:
            self.portals.pop(msg.portal, None)
            self.expect.append(_Expect("bind", refusal=refused.response))
            return Bind(msg.portal, REFUSED_NAME).encode()
        run = self._run(prepared.statement, {**prepared.known, **known}, ticket, prepared.snapshot)
        portal = _Portal(prepared, run, msg.result_formats, copy_in=copy_in)
        self.portals[msg.portal] = portal
        self.expect.append(_BIND)
        return msg.wire() if bind is msg else bind.encode()

    def _describe(self, msg: Describe) -> bytes:
        head = _Expect("describe")
        if msg.kind == "S":
            head.prepared = self.statements.get(msg.name)
            if head.prepared is not None:
                head.prepared.describing = True
        else:
            head.portal = self.portals.get(msg.name)
            if head.portal is not None:
                head.portal.describing = True
        self.expect.append(head)
        return msg.wire()

    def _execute(self, msg: Execute) -> bytes:
        portal = self.portals.get(msg.portal)
        if portal is None:
            refusal = error("34000", f"portal {msg.portal!r} is not known to tokenproxy")
            self.expect.append(_Expect("execute", refusal=refusal))
            return Execute(REFUSED_NAME, msg.max_rows).encode()
        out = b""
        if not (portal.describing or portal.prepared.describing):
            # The client never asked what the rows are: ask, and keep the answer.
            portal.describing = True
            self.expect.append(
                _Expect("describe", internal=True, portal=portal)
            )
            out = Describe("P", msg.portal).encode()
        self.expect.append(_Expect("execute", run=portal.run, portal=portal))
        self.copy_in = portal.copy_in
        return out + msg.wire()

    # ---- a whole batch at once (proxy.pg.batches)

    def whole_batch(self, data: bytes) -> Taken | None:
        """A read that begins with a whole batch of a shape learnt before (Parse, Bind,
        Describe, Execute, Sync): taken straight from it when each of its messages would
        take its handler's usual path (the client pump's ``whole``)."""
        if self._alone:  # (a batch declined is still on its way, message by message)
            return None
        if data[0] == _QUERY:
            return self._whole_query(data)
        end = self._batch_at(data, 0)
        if end is None:
            return None
        return (data if end == len(data) else data[:end]), end

    def _whole_query(self, data: bytes) -> Taken | None:
        """`whole_batch` of a read that is one whole simple Query (what psql and clients
        that bind values themselves send, one a read): `_query_now` of its text, with no
        message decoded. None when it is not exactly one well-formed Query (the decoder
        then reads it, with its errors), or needs I/O."""
        sql = self.est.client_decoder.query_text(data)
        sent = None if sql is None else self._query_now(sql, data)
        return None if sent is None else (sent, len(data))

    def take_batch(self) -> Handled | None:
        """`whole_batch` of the bytes buffered (the client pump's ``take``); None: the
        next message goes alone."""
        if self._alone:
            self._alone -= 1  # (one call a message: the pump reads the next one now)
            return None
        decoder = self.est.client_decoder
        view = decoder.view()
        if view is None:
            return None
        buf, pos = view
        end = self._batch_at(buf, pos)
        if end is None:
            if self._alone:
                self._alone -= 1  # (declined: this call was for its first message)
            return None
        decoder.skip(end)
        return buf[pos:end]

    def _batch_at(self, buf: bytes, pos: int) -> int | None:
        """Where the batch at ``buf[pos:]`` ends, its state made (`_batch`); None when
        there is none, or it goes message by message (`_alone` then counts its
        messages)."""
        lane = self._last_lane  # (a client sends one shape again and again, most often)
        end = None if lane is None else match(buf, pos, lane.shape)
        if lane is None or end is None:
            found = self._lane_at(buf, pos, self.est.client_decoder)
            if found is None:
                return None
            lane, end = found
            self._last_lane = lane
        if not self._batch(lane):
            shape = lane.shape
            self._alone = (shape.parse is not None) + shape.described + 3
            return None
        return end

    def _lane_at(
        self, buf: bytes, pos: int, decoder: FrontendDecoder
    ) -> tuple[_Lane, int] | None:
        """The lane of the batch at ``buf[pos:]`` (learnt now if new) and where it ends."""
        if pos + 5 > len(buf):
            return None
        code, size = _HEADER_FROM(buf, pos)
        first = pos + 1 + size
        if code == 0x50:  # a Parse: the shape learnt for this one
            lanes, key = self._lanes, buf[pos:first]
        elif code == 0x42:  # a Bind (of a statement prepared before): for its head
            found = bind_key(buf, pos, first)
            if found is None:
                return None
            lanes, key = self._bind_lanes, found[0]
        else:
            return None
        lane = lanes.get(key)
        end = None if lane is None else match(buf, pos, lane.shape)
        if lane is None or end is None:
            shape = learn(buf, pos, decoder)
            if shape is None or (end := match(buf, pos, shape)) is None:
                return None
            if len(lanes) >= _PLAN_CACHE:
                lanes.clear()
            lane = lanes[key] = _Lane(shape)
        return lane, end

    def _batch(self, lane: _Lane) -> bool:
        """The session state a batch of ``lane``'s shape makes, as its messages' handlers
        make it on their usual paths (`_parse`, `_bind`, `_describe`, `_execute`,
        `_sync`); False, with nothing changed, when one of them would take another."""
        if self._copying is not None:
            return False
        shape = lane.shape
        parse = shape.parse
        if parse is not None:
            snapshot = self.gate.snapshot_now()
            if snapshot is None:
                return False
            if snapshot is not lane.snapshot:  # (else the analysis found for it before)
                analysis = self.gate.cache.get(snapshot, parse.query)
                statement = analysis.statements[0] if analysis.statements else _EMPTY
                if (
                    len(analysis.statements) > 1
                    or not _parses_now(statement)
                    or not _binds_now(statement)
                ):
                    return False
                lane.snapshot, lane.statement, lane.comment = (
                    snapshot, statement, analysis.ticket
                )
            statement = lane.statement  # (a batch with a Parse describes its portal: `learn`)
            prepared = lane.prepared
            # The statement its last Parse made, unchanged since (never described, and
            # still the one of that name), is what this Parse makes again.
            if (
                prepared is None
                or prepared.snapshot is not snapshot
                or prepared.statement is not statement
                or prepared.describing
                or self.statements.get(parse.statement) is not prepared
            ):
                prepared = lane.prepared = _Prepared(
                    statement, lane.comment, parse.param_types, snapshot
                )
                self.statements[parse.statement] = prepared
        else:
            found = self.statements.get(shape.statement)
            if (
                found is None
                or not _binds_now(found.statement)
                or not (shape.described or found.describing)  # (a Describe to inject)
            ):
                return False
            prepared, statement = found, found.statement
        ticket = prepared.ticket_comment or self.gate.ticket_now()
        run = lane.run  # (a run changes nothing it holds: its batches share it)
        if (
            run is None
            or run.statement is not statement
            or run.snapshot is not prepared.snapshot
            or run.ticket != ticket
            or prepared.known  # (a statement prepared with values of its own since)
        ):
            run = self._run(statement, prepared.known, ticket, prepared.snapshot)
            # Shared unless it holds values of its own, or the outputs of the session's
            # cursor or statement it runs (FETCH, EXECUTE: looked up for each).
            own = run.known or statement.fetch is not None or statement.execute is not None
            lane.run = None if own else run
        expect, portal = self.expect, lane.portal
        if expect or portal is None or portal.prepared is not prepared or portal.run is not run:
            portal = _Portal(prepared, run, shape.result_formats, describing=shape.described)
            queued = (*lane.heads, _Expect("execute", run=run, portal=portal), _SYNC)
            if not expect:  # (else a batch on its way may hold the lane's portal)
                lane.portal, lane.queued = portal, queued
        else:  # nothing expected holds the lane's: the same objects as they were made
            portal.description, portal.described = None, False
            portal.describing, portal.copy_in = shape.described, None
            queued = lane.queued
            execute = queued[-2]
            execute.refusal, execute.planned = None, False
        self.portals[shape.portal] = portal
        expect.extend(queued)
        return True

    # ---- COPY FROM STDIN: tokens in protected columns resolved

    def _copy_in(self, statement: Statement) -> _CopyIn | None:
        """The rewriter of a COPY FROM STDIN into protected columns (None: nothing to do)."""
        into = statement.copy_into or ()
        if not any(c.protected for c in into):
            return None
        try:
            return _CopyIn(self, statement, into)
        except UnsupportedCopyFormat as exc:
            raise Refused(error("0A000", str(exc))) from None

    def take_copy(self) -> Handled | None:
        """A whole run of CopyData into protected columns, taken before the decoder parses
        them one by one (None: the next message is not one, or no such COPY is under way)."""
        if self.copy_in is None:
            return None
        run = self.est.client_decoder.take_run(_COPY_DATA)
        return None if run is None else self._copy_in_rows(self.copy_in, _payloads(run))

    def _copy_data(self, msg: CopyData) -> Handled:
        if self.copy_refused is not None:
            return b""
        if self.copy_in is None:
            return msg.wire()
        return self._copy_in_rows(self.copy_in, msg.data)

    async def _copy_in_rows(self, copy: _CopyIn, data: bytes) -> bytes:
        try:
            return await copy.feed(data)
        except (Refused, TokenProxyError) as exc:
            response = (
                exc.response
                if isinstance(exc, Refused)
                else error("22P04", "a COPY row could not be read; the COPY was refused")
            )
            self.copy_in = None
            self.copy_refused = response
            for head in self.expect:
                if head.kind in ("query", "execute"):
                    head.refusal = response
            return CopyFail("tokenproxy refused the COPY data").encode()

    # ================================================================ server side

    def _take(self, kind: int) -> None:
        """Take runs of the server's messages of type ``kind`` (0: none) before the decoder
        parses them one by one."""
        self._taking = kind
        self._server.take = self.take_rows if kind else self.take_answer

    def whole_answer(self, data: bytes) -> Taken | None:
        """A read that begins with the whole answer to a batch taken whole: taken straight
        from it when each of its messages would take its handler's usual path (the server
        pump's ``whole``)."""
        if self._taking:  # (rows of a result under way)
            return None
        return self._answer_at(data, 0)

    def take_answer(self) -> Handled | None:
        """`whole_answer` of the bytes buffered (the server pump's ``take`` between
        results); None: the next message goes alone."""
        decoder = self.est.server_decoder
        view = decoder.view()
        if view is None:
            return None
        taken = self._answer_at(*view)
        if taken is None:
            return None
        decoder.skip(taken[1])
        return taken[0]

    def _answer_at(self, buf: bytes, pos: int) -> Taken | None:
        """The bytes to send for the answer at ``buf[pos:]`` to the batch at the head, and
        where it ends, its state changed as message by message; None when it is not one,
        or goes message by message."""
        expect = self.expect
        if not expect or self.cutting:
            return None
        head = expect[0]
        parsed = head is _BATCH_PARSE
        described = parsed or head is _BATCH_BIND
        if not (described or head is _BATCH_BOUND):
            return self._query_answer_at(buf, pos, head) if head.kind == "query" else None
        execute = expect[parsed + described + 1]  # ([parse], bind, [describe], execute)
        portal, run = execute.portal, execute.run
        if execute.refusal is not None or portal is None or run is None or run.undeclared:
            return None
        got = self._answer_of(run, buf, pos, PARSED if parsed else BOUND, described)
        if got is None:
            return None
        found, new = got
        description, rows_at, rows_end, end = found
        fields = description.fields if type(description) is RowDescription else None
        if not described:
            fields = portal.fields()  # (the statement's description, as the Execute's)
            if fields is None and not portal.no_rows:
                return None
        out = self._answer_bytes(run, fields, buf, pos, rows_at, rows_end, end)
        if out is None:
            return None
        # What _ack, _described, _planned, _executing and _ready do with these answers.
        if described:
            portal.description, portal.described = fields, True
        execute.planned = True
        count = 3 + described + parsed  # [Parse], Bind, [Describe], Execute, Sync
        if len(expect) == count:
            expect.clear()
        else:
            for _ in range(count):
                expect.popleft()
        self._taken(run, buf, pos, found, new)
        return out, end

    def _query_answer_at(self, buf: bytes, pos: int, head: _Expect) -> Taken | None:
        """`_answer_at` for a simple Query of one statement that returns rows: its
        RowDescription, DataRows, CommandComplete and ReadyForQuery."""
        runs = head.runs
        if len(runs) != 1 or head.index or head.refusal is not None:
            return None
        run = runs[0]
        if run.undeclared:
            return None
        got = self._answer_of(run, buf, pos, b"", True)
        if got is None:
            return None
        found, new = got
        description, rows_at, rows_end, end = found
        if type(description) is not RowDescription:
            return None
        out = self._answer_bytes(run, description.fields, buf, pos, rows_at, rows_end, end)
        if out is None:
            return None
        # What _describing_rows, _querying and _ready do with these answers.
        self.expect.popleft()
        self._taken(run, buf, pos, found, new)
        return out, end

    def _answer_of(
        self, run: _Run, buf: bytes, pos: int, acks: bytes, described: bool
    ) -> tuple[Answer, bool] | None:
        """The answer at ``buf[pos:]`` to ``run``'s statement, read as one with the frames
        of its last answer taken (`answer_like`), else as any (`answer`); and whether it
        was the latter (its frames to keep once it is taken: `_taken`)."""
        decoder = self.est.server_decoder
        shape = run.answered
        found = None if shape is None else answer_like(buf, pos, shape, decoder)
        if found is not None:
            return found, False
        found = answer(buf, pos, acks, described, decoder)
        return None if found is None else (found, True)

    def _taken(self, run: _Run, buf: bytes, pos: int, found: Answer, new: bool) -> None:
        """What taking ``run``'s answer ``found`` whole changes: the session state its
        statement changes (if any); the frames around its rows if ``new``, for the next."""
        if run.effects:
            self._completed(run)
        if new:
            description, rows_at, rows_end, end = found
            run.answered = AnswerShape(
                buf[pos:rows_at],
                description,
                buf[rows_end:end],
                self.est.server_decoder.sizes(_DATA_ROW),
            )

    def _answer_bytes(
        self,
        run: _Run,
        fields: tuple[FieldDescription, ...] | None,
        buf: bytes,
        pos: int,
        rows_at: int,
        rows_end: int,
        end: int,
    ) -> bytes | None:
        """The answer ``buf[pos:end]`` to send, its rows (``buf[rows_at:rows_end]``, of
        ``run``'s result described by ``fields``; None: no rows) rewritten; None when it
        must go message by message (planned the first time, tokens to fetch, reveals to
        audit, a result to cut)."""
        has_rows = rows_at < rows_end
        if fields is None:
            if has_rows:
                return None
        else:
            planned, engine = run.planned, self.ctx.engine()
            if (
                planned is not None
                and planned[0] is fields
                and planned[1] == self.encoding
                and planned[2] is engine
            ):
                result = planned[3]
            else:
                plan = self._cached_plan(run, fields)
                if plan is None:
                    return None  # (planned message by message the first time)
                self._use(run, plan)
                result, self.result = self.result, None
                if result is not None and not result.framed:
                    return None
                shared = self._rewriters.get(id(plan))
                if result is None or (shared is not None and shared[1] is result):
                    run.planned = (fields, self.encoding, engine, result)
            if has_rows and result is not None:
                taken = result.splice_now(buf, pos, rows_at, rows_end, end)
                if taken is None:
                    try:
                        rows = result.rewrite_run_now(buf[rows_at:rows_end])
                    except ResultCut:
                        return None  # (cut message by message)
                    if rows is None:
                        return None  # tokens to fetch, reveals to audit
                    taken = [buf[pos:rows_at], rows, buf[rows_end:end]]
                return b"".join(taken)
        return buf if pos == 0 and end == len(buf) else buf[pos:end]

    def take_rows(self) -> Handled | None:
        """A whole run of DataRows of a planned result, or of CopyData of a COPY TO STDOUT,
        taken before the decoder parses them one by one (None: the next message is not
        one)."""
        kind = self._taking
        if not kind:
            return None
        run = self.est.server_decoder.take_run(kind)
        if run is None:
            return None
        if self.cutting:
            return []
        if kind == _COPY_DATA:
            copy = self.copy_out
            return run if copy is None else self._copy_rows(copy, _payloads(run))
        return self._rows(run)

    def _rows(self, run: bytes) -> Handled:
        """DataRows (one or more frames) of the current result, rewritten."""
        result = self.result
        if result is None:
            return run  # planned: no column of this result is protected
        if result.framed:
            try:
                out = result.rewrite_run_now(run)
            except ResultCut as cut:
                return self._cut(cut.response)
            if out is not None:
                return out
        return self._rows_later(result, run)

    async def _rows_later(self, result: RowRewriter, run: bytes) -> list[bytes]:
        """`_rows` with I/O: tokens not cached yet, reveals to authorize."""
        try:
            return [await result.rewrite_run(run)]
        except ResultCut as cut:
            return self._cut(cut.response)

    def _cut(self, response: ErrorResponse) -> list[bytes]:
        log.warning("pg.result_cut", agent=self.agent, reason=response.message)
        self.result = None
        self.copy_out = None
        self.cutting = True
        # Nothing more of this exchange is expected by the client until ReadyForQuery.
        while self.expect and self.expect[0].kind not in ("sync", "query", "function"):
            self.expect.popleft()
        if self.expect and self.expect[0].kind == "query":
            self.expect[0].runs = ()
        return [response.encode()]

    def on_server(self, msg: Any) -> Handled:
        """The bytes to send the client for one server message (a coroutine if it may
        wait)."""
        kind = type(msg)
        if kind is NoticeResponse:  # (may come in the middle of a result)
            return NoticeResponse(self._scrub(msg.fields)).encode()
        if kind is ParameterStatus:
            self._parameter(msg)
            return msg.wire()  # type: ignore[no-any-return]
        if kind is NotificationResponse:
            return msg.wire()  # type: ignore[no-any-return]
        if kind is ReadyForQuery:
            return self._ready(msg)
        if self._taking and kind is not Passthrough:  # (a DataRow)
            self._take(0)  # a run of rows or COPY data ends at any other message
        if self.cutting:
            return []
        head = self.expect[0] if self.expect else None
        if head is not None and head.kind == "execute" and not head.planned:
            head.planned = True
            if kind is not ErrorResponse:
                return self._planned(head, msg)
        return self._answer(head, msg)

    def _ready(self, msg: ReadyForQuery) -> bytes:
        """The end of an exchange: whatever was cut or taken ends with it."""
        if self._taking:
            self._take(0)
        self.cutting = False
        self.result = None
        self.copy_out = None
        head = self.expect.popleft() if self.expect else None
        if head is not None and head.kind not in ("sync", "query", "function"):
            raise ProtocolError("ReadyForQuery arrived before the answers it follows")
        return msg.wire()

    def _ack(self, msg: ParseComplete | BindComplete | CloseComplete) -> Handled:
        """ParseComplete, BindComplete, CloseComplete: answering the Parse, Bind or Close
        at the head (the usual case, straight); anything else as any other message."""
        expect = self.expect
        if expect and not (self._taking or self.cutting) and expect[0].kind in _ACKED:
            expect.popleft()
            return msg.wire()
        return self.on_server(msg)

    # The usual answers of an extended-protocol exchange, straight to what `on_server` would
    # do with them; anything else (cutting, taking runs, another head) through it.

    def _description(self, msg: RowDescription) -> Handled:
        expect = self.expect
        if expect and not (self._taking or self.cutting) and expect[0].kind == "describe":
            return self._described(expect[0], msg)
        return self.on_server(msg)

    def _first_row(self, msg: Passthrough) -> Handled:
        expect = self.expect
        if expect and not self.cutting:
            head = expect[0]
            if head.kind == "execute" and not head.planned:
                head.planned = True
                return self._planned(head, msg)
        return self.on_server(msg)

    def _complete(self, msg: CommandComplete) -> Handled:
        expect = self.expect
        if expect and not self.cutting:
            head = expect[0]
            if head.kind == "execute" and head.planned:
                if self._taking:
                    self._take(0)
                return self._executing(head, msg)
        return self.on_server(msg)

    def _planned(self, head: _Expect, msg: Any) -> Handled:
        """The first answer to an Execute, after its rows are planned."""
        planning = self._plan_execute(head)
        if not isinstance(planning, list):
            return self._after(planning, head, msg)
        return planning or self._answer(head, msg, first=True)

    async def _after(self, planning: Awaitable[list[bytes]], head: _Expect, msg: Any
                     ) -> list[bytes]:
        cut = await planning
        if cut:
            return cut
        answer = self._answer(head, msg, first=True)
        if not isinstance(answer, bytes | list):
            answer = await answer
        return [answer] if isinstance(answer, bytes) else answer

    def _answer(self, head: _Expect | None, msg: Any, first: bool = False) -> Handled:
        """``msg`` answering ``head`` (``first``: the first answer of an Execute, its rows
        planned just now)."""
        if type(msg) is Passthrough:  # a DataRow
            if not (first or self._taking == _DATA_ROW):
                raise ProtocolError("a DataRow outside of a planned result")
            self._take(_DATA_ROW)
            return self._rows(msg.wire())
        if head is None:
            if isinstance(msg, ErrorResponse):  # FATAL at shutdown, say
                return ErrorResponse(self._scrub(msg.fields)).encode()
            raise ProtocolError(f"unexpected {type(msg).__name__} from the server")
        if isinstance(msg, ErrorResponse):
            return self._error(head, msg)
        kind = head.kind
        if kind in _ACKED:
            self.expect.popleft()
            return msg.wire()  # type: ignore[no-any-return]
        if kind == "describe":
            return self._described(head, msg)
        if kind == "execute":
            return self._executing(head, msg)
        if kind == "query":
            return self._querying(head, msg)
        if kind == "function":
            return msg.wire()  # type: ignore[no-any-return]
        raise ProtocolError(f"unexpected {type(msg).__name__} from the server")

    def _parameter(self, msg: ParameterStatus) -> None:
        if msg.name == "client_encoding":
            self.encoding = msg.value
        elif msg.name == "standard_conforming_strings":
            self.gate.standard_strings = msg.value == "on"

    def _error(self, head: _Expect, msg: ErrorResponse) -> list[bytes]:
        self.result = None
        self.copy_out = None
        self.copy_in = None
        if head.kind in ("query", "function"):
            response = head.refusal or self._scrubbed(msg, head)
            head.runs = ()
            return [response.encode()]
        # Extended protocol: the server skips everything up to the Sync.
        response = head.refusal or self._scrubbed(msg, head)
        while self.expect and self.expect[0].kind != "sync":
            self.expect.popleft()
        return [response.encode()]

    def _scrubbed(self, msg: ErrorResponse, head: _Expect) -> ErrorResponse:
        run = head.run or (head.runs[head.index] if head.index < len(head.runs) else None)
        return ErrorResponse(self._scrub(msg.fields, run))

    def _scrub(self, fields: Any, run: _Run | None = None) -> dict[str, str]:
        engine = self.ctx.engine()
        touches = True if run is None else _touches(run)
        return scrub_fields(
            fields,
            touches_protected=touches and bool(self.ctx.policy),
            known=run.known if run is not None else {},
            protected_columns=self.protected_columns,
            tokenize=lambda kind, value: engine.tokenize(kind.value, value),
        )

    def _described(self, head: _Expect, msg: Any) -> list[bytes]:
        if isinstance(msg, ParameterDescription):
            return [] if head.internal else [msg.wire()]
        if not isinstance(msg, RowDescription | NoData):
            raise ProtocolError(f"unexpected {type(msg).__name__} answering a Describe")
        self.expect.popleft()
        fields = msg.fields if isinstance(msg, RowDescription) else None
        if head.prepared is not None:
            head.prepared.description, head.prepared.described = fields, True
        portal = self.expect[0].portal if head is _BATCH_DESCRIBE else head.portal
        if portal is not None:
            portal.description, portal.described = fields, True
        return [] if head.internal else [msg.wire()]

    def _executing(self, head: _Expect, msg: Any) -> Handled:
        run = head.run
        assert run is not None
        if isinstance(msg, CommandComplete | PortalSuspended | EmptyQueryResponse):
            self.expect.popleft()
            self.result = None
            if isinstance(msg, CommandComplete):
                self._completed(run)
            return msg.wire()
        if isinstance(msg, CopyOutResponse):
            return self._start_copy_out(run, msg)
        if isinstance(msg, CopyData | CopyDone):
            return self._copy_out_data(msg)
        if isinstance(msg, CopyInResponse):
            return msg.wire()
        raise ProtocolError(f"unexpected {type(msg).__name__} answering an Execute")

    def _plan_execute(self, head: _Expect) -> Planning:
        """Plan the rows an Execute is about to return (its portal's description)."""
        portal = head.portal
        assert portal is not None and head.run is not None
        fields = portal.fields()
        if fields is None:
            if portal.no_rows:
                self.result = None
                return []
            return self._cut(
                error(INSUFFICIENT_PRIVILEGE, "the rows of this portal could not be described")
            )
        return self.start_rows(head.run, fields)

    def start_rows(self, run: _Run, fields: Sequence[FieldDescription]) -> Planning:
        """Plan the rows of a result (a coroutine if the catalog must reload first); a
        plan that cannot be made cuts the result."""
        if run.undeclared:
            self.result = None
            return self._cut(
                error(
                    INSUFFICIENT_PRIVILEGE,
                    "the rows of this cursor or prepared statement were not declared through "
                    "tokenproxy, so their columns cannot be checked",
                    hint="declare the cursor or prepare the statement in this session",
                )
            )
        fields = tuple(fields)  # a tuple already: the same object, kept by identity
        plan = self._cached_plan(run, fields)
        if plan is None:
            if run.snapshot is not None and _unknown_columns(run.snapshot, fields):
                return self._start_rows_later(run, fields)
            try:
                plan = self._plan(run, fields, run.snapshot)
            except ResultCut as cut:
                return self._cut(cut.response)
        self._use(run, plan)
        return []

    async def _start_rows_later(
        self, run: _Run, fields: tuple[FieldDescription, ...]
    ) -> list[bytes]:
        """A column of a relation the catalog does not know (created since it was read,
        or in this very transaction, where the catalog cannot see it) makes the catalog
        reload; still unknown, the result is cut: its lineage is not known, so its values
        cannot be let through."""
        self.gate.catalog.invalidate()
        try:
            snapshot = await self.gate.catalog.snapshot()
        except CatalogUnavailableError:
            return self._cut(
                error(CANNOT_CONNECT_NOW, "the upstream catalog cannot be read; try again")
            )
        if _unknown_columns(snapshot, fields):
            return self._cut(
                error(
                    INSUFFICIENT_PRIVILEGE,
                    "a result column comes from a relation tokenproxy's catalog does not "
                    "know (created in this transaction?), so its lineage cannot be checked",
                    hint="commit the schema change, then run the query again",
                )
            )
        try:
            self._use(run, self._plan(run, fields, snapshot))
        except ResultCut as cut:
            return self._cut(cut.response)
        return []

    def _use(self, run: _Run, plan: ResultPlan) -> None:
        """Rewrite the coming rows with ``plan``."""
        if plan.passthrough:
            self.result = None
        elif run.known or (run.ticket and plan.customers):  # this run's own tokens
            self.result = RowRewriter(plan, self._tokens(run, plan))
        else:  # nothing of the run's own: the plan's rewriter serves every run of it
            engine = self.ctx.engine()
            hit = self._rewriters.get(id(plan))
            if hit is None or hit[0] is not plan or hit[1].tokens.engine is not engine:
                if len(self._rewriters) >= _PLAN_CACHE:
                    self._rewriters.clear()
                hit = self._rewriters[id(plan)] = (plan, RowRewriter(plan, self._tokens(run, plan)))
            self.result = hit[1]

    def _plan_key(self, run: _Run, fields: tuple[FieldDescription, ...]) -> tuple[Any, ...]:
        # By identity: a prepared statement's fields, or a RowDescription decoded once per
        # distinct frame, are the same objects each time; the hit is checked to be them.
        return (id(run.statement), id(run.outputs), id(run.snapshot), id(fields), self.encoding,
                bool(run.known))

    def _cached_plan(self, run: _Run, fields: tuple[FieldDescription, ...]) -> ResultPlan | None:
        """The plan of ``run``'s rows if made before (a prepared statement executed again
        is not planned again)."""
        hit = self._plans.get(self._plan_key(run, fields))
        if (
            hit is not None
            and hit[0] is run.statement
            and hit[1] is run.snapshot
            and hit[2] is fields
        ):
            return hit[3]
        return None

    def _plan(
        self, run: _Run, fields: tuple[FieldDescription, ...], snapshot: CatalogSnapshot | None
    ) -> ResultPlan:
        """Plan ``run``'s rows against ``snapshot`` (one that knows every column)."""
        plan = plan_result(fields, run.outputs, snapshot, self.encoding, echo=bool(run.known))
        if len(self._plans) >= _PLAN_CACHE:
            self._plans.clear()
        self._plans[self._plan_key(run, fields)] = (run.statement, run.snapshot, fields, plan)
        return plan

    def _tokens(self, run: _Run, plan: ResultPlan) -> Tokens:
        reveal = None
        if run.ticket and plan.customers:
            ticket = run.ticket

            async def reveal_fn(customers: set[str], fields: frozenset[str]) -> set[str]:
                decisions = await authorize_reveals(
                    self.ctx.tickets,
                    self.ctx.audit,
                    agent=self.agent,
                    ticket_id=ticket,
                    customer_ids=customers,
                    fields=fields,
                    route=f"pg:{run.statement.tag}",
                    request_id=None,
                    limits=self.ctx.limits(),
                )
                return {c for c, d in decisions.items() if d.allowed}

            reveal = reveal_fn
        return Tokens(self.ctx.engine(), self.ctx.store, reveal, run.known)

    def _querying(self, head: _Expect, msg: Any) -> Handled:
        run = head.runs[head.index] if head.index < len(head.runs) else None
        if isinstance(msg, RowDescription):
            if run is None:
                raise ProtocolError("a RowDescription for no statement")
            return self._describing_rows(run, msg)
        if isinstance(msg, CommandComplete | EmptyQueryResponse):
            self.result = None
            if run is not None and isinstance(msg, CommandComplete):
                self._completed(run)
            head.index += 1
            return msg.wire()
        if isinstance(msg, CopyOutResponse):
            if run is None:
                raise ProtocolError("a CopyOutResponse for no statement")
            return self._start_copy_out(run, msg)
        if isinstance(msg, CopyData | CopyDone):
            return self._copy_out_data(msg)
        if isinstance(msg, CopyInResponse):
            return msg.wire()
        raise ProtocolError(f"unexpected {type(msg).__name__} answering a Query")

    def _describing_rows(self, run: _Run, msg: RowDescription) -> Handled:
        planning = self.start_rows(run, msg.fields)
        if not isinstance(planning, list):
            return self._described_later(planning, msg)
        if planning:
            return planning
        self._take(_DATA_ROW)  # the rows follow
        return msg.wire()

    async def _described_later(self, planning: Awaitable[list[bytes]], msg: RowDescription
                               ) -> list[bytes]:
        cut = await planning
        if cut:
            return cut
        self._take(_DATA_ROW)
        return [msg.wire()]

    def _completed(self, run: _Run) -> None:
        """Session state a completed statement changes (if any: `_Run.effects`)."""
        s = run.statement
        if s.set_ticket is not None:
            self.gate.session_ticket = s.set_ticket
        if s.reset_ticket:
            self.gate.session_ticket = None
        if s.cursor is not None:
            self.cursors[s.cursor] = s.outputs
        if s.prepare is not None:
            self.sql_prepared[s.prepare] = s
        if s.ddl:
            self.gate.catalog.invalidate()

    # ---- COPY TO STDOUT

    def _start_copy_out(self, run: _Run, msg: CopyOutResponse) -> list[bytes]:
        outputs = run.outputs
        if run.undeclared or (outputs is None and run.statement.copy_to_stdout):
            return self._cut(
                error(INSUFFICIENT_PRIVILEGE, "the columns of this COPY cannot be checked")
            )
        self._take(_COPY_DATA)
        if outputs is None or not any(o.protected for o in outputs):
            self.copy_out = None
            return [msg.wire()]
        try:
            reader = CopyRowReader(
                run.statement.copy_format,
                run.statement.copy_delimiter,
                run.statement.copy_header,
                self.encoding,
                columns=len(outputs),
            )
        except UnsupportedCopyFormat as exc:
            self._take(0)
            return self._cut(error("0A000", str(exc), hint="COPY protected columns as text or csv"))
        self.copy_out = _CopyOut(self, run, outputs, reader)
        return [msg.wire()]

    def _copy_out_data(self, msg: CopyData | CopyDone) -> Handled:
        copy = self.copy_out
        if copy is None:
            return msg.wire()
        if isinstance(msg, CopyData):
            return self._copy_rows(copy, msg.data)
        try:
            copy.reader.finish()
        except TokenProxyError:
            return self._cut(_COPY_UNREADABLE)
        self.copy_out = None
        return msg.wire()

    async def _copy_rows(self, copy: _CopyOut, data: bytes) -> list[bytes]:
        try:
            return await copy.feed(data)
        except ResultCut as cut:
            return self._cut(cut.response)
        except TokenProxyError:
            return self._cut(_COPY_UNREADABLE)

    # ================================================================ the session

    async def run(self) -> None:
        est = self.est
        started = time.monotonic()
        ended: asyncio.Future[tuple[BaseException, str]] = (
            asyncio.get_running_loop().create_future()
        )

        def end(exc: BaseException, side: str = "") -> None:
            if not ended.done():
                ended.set_result((exc, side))

        def lost() -> None:
            end(Ended())

        outbox = self.ctx.outbox
        client = Link(est.client_reader, est.client_writer, lost, outbox)
        server = Link(est.server_reader, est.server_writer, lost, outbox, last=True)
        client.peer, server.peer = server, client
        self._client = Pump(est.client_decoder, self.on_client, client, server,
                            lambda exc: end(exc, "client"), take=self.take_batch,
                            handlers=self._client_handlers, whole=self.whole_batch)
        self._server = Pump(est.server_decoder, self.on_server, server, client, end,
                            take=self.take_answer, whole=self.whole_answer,
                            handlers=dict.fromkeys(_ACKS, self._ack) | {
                                ReadyForQuery: self._ready,
                                RowDescription: self._description,
                                Passthrough: self._first_row,
                                CommandComplete: self._complete,
                            })
        client.deliver(self._client.feed)
        server.deliver(self._server.feed)
        client.write(est.ready.wire())
        early = (client.take_over(), server.take_over())
        try:
            for pump, data in zip((self._client, self._server), early, strict=True):
                if data:
                    pump.decoder.feed(data)
                pump.run()
            exc, side = await ended
        finally:
            for pump in (self._client, self._server):
                pump.stopped = True
                if pump.waiting is not None:
                    pump.waiting.cancel()
                    with contextlib.suppress(BaseException):
                        await pump.waiting
            outbox.flush()  # (the transports close once this returns)
        if isinstance(exc, ProtocolError) and side == "client":
            client.write(exc.to_error_response().encode())
        elif not isinstance(exc, Ended | ConnectionError):
            log.error("pg.session_failed", agent=self.agent, error=type(exc).__name__)
            with contextlib.suppress(Exception):
                client.write(
                    error("XX000", "tokenproxy ended this session on an internal "
                          "error; reconnect").encode()
                )
        log.info("pg.session_end", agent=self.agent, seconds=round(time.monotonic() - started, 3))


def _payloads(run: bytes) -> bytes:
    """The data of a run of CopyData frames, back to back."""
    parts, pos, end = [], 0, len(run)
    while pos < end:
        (size,) = _LENGTH_FROM(run, pos + 1)
        parts.append(run[pos + 5 : pos + 1 + size])
        pos += 1 + size
    return b"".join(parts)


def _unknown_columns(snapshot: CatalogSnapshot, fields: Sequence[FieldDescription]) -> bool:
    """Whether a field names a table column the snapshot does not know."""
    return any(
        f.table_oid and f.column_attr > 0 and snapshot.column(f.table_oid, f.column_attr) is None
        for f in fields
    )


def _parses_now(statement: Statement) -> bool:
    """Whether a Parse of ``statement`` goes on as it came, with no I/O (`Session._parse`):
    nothing refused, no literal in its text to resolve."""
    return statement.refusal is None and (
        not statement.slots or all(s.param is not None for s in statement.slots)
    )


def _binds_now(statement: Statement) -> bool:
    """Whether a Bind of ``statement`` goes on as it came, with no I/O (`Session._bind`):
    nothing refused or in doubt, no value to resolve, no COPY FROM STDIN."""
    return (
        statement.refusal is None
        and not statement.problems
        and not statement.copy_from_stdin
        and (not statement.slots or all(slot.param is None for slot in statement.slots))
    )


def _touches(run: _Run) -> bool:
    """Whether the statement may touch protected data (its errors are scrubbed harder)."""
    s = run.statement
    if s.slots or s.problems or s.tag in WRITE_TAGS:
        return True
    outputs = run.outputs or ()
    return any(o.protected for o in outputs)


class _CopyOut:
    """The rows of one COPY TO STDOUT with protected columns: tokenized, never revealed."""

    def __init__(
        self,
        session: Session,
        run: _Run,
        outputs: tuple[ColumnLineage, ...],
        reader: CopyRowReader,
    ) -> None:
        self.session = session
        self.run = run
        self.outputs = outputs
        self.reader = reader
        self.columns = [(i, o.kind) for i, o in enumerate(outputs) if o.protected]
        self.names = [i for i, o in enumerate(outputs) if o.kind is Kind.NAME]

    async def feed(self, data: bytes) -> list[bytes]:
        rows = self.reader.feed(data)
        pending: dict[Kind, list[tuple[int, int, str]]] = {}
        fields_list: list[list[str | None]] = []
        names: dict[int, tuple[str, ...]] = {}
        for r, row in enumerate(rows):
            fields = list(row.fields)
            fields_list.append(fields)
            if row.header:
                continue
            if len(fields) != len(self.outputs):
                raise ResultCut(
                    error(INSUFFICIENT_PRIVILEGE, "a COPY row has an unexpected number of columns")
                )
            names[r] = tuple(v for i in self.names if (v := fields[i]) is not None)
            for i, kind in self.columns:
                value = fields[i]
                if value is None:
                    continue
                if kind is None:
                    raise ResultCut(
                        error(
                            INSUFFICIENT_PRIVILEGE,
                            "COPY of values derived from protected columns is refused",
                        )
                    )
                pending.setdefault(kind, []).append((r, i, value))
        engine = self.session.ctx.engine()
        store = self.session.ctx.store
        for kind, items in pending.items():
            if kind is Kind.TEXT:
                notes = [(v, names.get(r, ())) for r, _, v in items]
                tokens, _ = await tokenize_notes(engine, store, notes)
            else:
                mapping = await tokens_of(engine, store, kind, [v for _, _, v in items])
                tokens = [mapping[v] for _, _, v in items]
            for (r, i, _), token in zip(items, tokens, strict=True):
                fields_list[r][i] = token
        return [
            CopyData(self.reader.encode_row(fields, row.quoted)).encode()
            for row, fields in zip(rows, fields_list, strict=True)
        ]


class _CopyIn:
    """COPY FROM STDIN into protected columns: tokens resolved to their values."""

    def __init__(
        self, session: Session, statement: Statement, into: Sequence[ColumnLineage]
    ) -> None:
        self.session = session
        self.statement = statement
        self.into = list(into)
        self.name_columns = [i for i, lin in enumerate(self.into) if lin.kind is Kind.NAME]
        self.reader = CopyRowReader(
            statement.copy_format, statement.copy_delimiter, statement.copy_header,
            session.encoding, columns=len(self.into),
        )

    async def feed(self, data: bytes) -> bytes:
        rows = self.reader.feed(data)
        return await self._resolve(rows)

    async def finish(self) -> bytes:
        self.reader.finish()
        return b""

    async def _resolve(self, rows: list[CopyRow]) -> bytes:
        gate = self.session.gate
        fields_list = [list(r.fields) for r in rows]
        plain: list[tuple[int, int, Kind, str]] = []
        notes: list[tuple[int, int, str]] = []
        for r, row in enumerate(rows):
            if row.header:
                continue
            for i, lin in enumerate(self.into):
                value = fields_list[r][i] if i < len(fields_list[r]) else None
                if lin.kind is None or value is None:
                    continue
                if lin.kind is Kind.TEXT:
                    notes.append((r, i, value))
                else:
                    plain.append((r, i, lin.kind, value))
        if plain:
            real = await gate.resolve([(k, v) for _, _, k, v in plain], True)
            for r, i, kind, value in plain:
                fields_list[r][i] = real.get((kind, value), value)
        for r, i, value in notes:  # with the row's names as they came (tokens or typed)
            names = [v for j in self.name_columns if (v := rows[r].fields[j]) is not None]
            real = await gate.resolve([(Kind.TEXT, value)], True, names)
            fields_list[r][i] = real.get((Kind.TEXT, value), value)
        return b"".join(
            CopyData(self.reader.encode_row(fields, row.quoted)).encode()
            for row, fields in zip(rows, fields_list, strict=True)
        )


async def run_session(ctx: PgContext, est: Established) -> None:
    """Serve one established client session until either side closes."""
    await Session(ctx, est).run()
