"""What a statement may do before it reaches the database: refused, justified, or let
through with the tokens in its literals and parameters resolved.

The gate of one session analyzes each SQL text against the catalog (cached by text and
catalog fingerprint, shared by the sessions of a database), then:

- a statement the analysis refuses is refused, whatever the ticket;
- a statement with problems (derived outputs, probing predicates, protected writes)
  needs a *valid justification*: the ticket it cites (sqlcommenter comment), else the
  session's (``SET tokenproxy.ticket``), else the startup option, must be open, assigned
  to the agent and unexpired. Which customers are then revealed is decided per row;
- tokens written where a protected column is compared or assigned (`Slot`) become their
  real values: a literal is rewritten in the SQL text, a ``$n`` in the Bind. What is not
  a token passes as typed; a registered token that cannot be resolved is refused. With
  the state database away, a write whose candidates are not cached is refused (it might
  store a token as data); a read goes on with what the cache resolves.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import structlog

from proxy.crypto.engine import AmbiguousTokenError, TokenEngine, UnresolvableTokenError
from proxy.crypto.tokens import Kind
from proxy.pg.analysis import Analysis, Slot, Statement
from proxy.pg.catalog import Catalog, CatalogSnapshot, CatalogUnavailableError
from proxy.pg.constants import Template, digit_runs, integers_blanked, only_compared_integers
from proxy.pg.lineage import analyze
from proxy.pg.messages import Bind, ErrorResponse
from proxy.pg.refusals import (
    CANNOT_CONNECT_NOW,
    FEATURE_NOT_SUPPORTED,
    INSUFFICIENT_PRIVILEGE,
    INVALID_PARAMETER_VALUE,
    error,
    needs_justification,
)
from proxy.policy.tickets import Reason
from proxy.store.db import DatabaseUnavailableError
from proxy.store.durable import Store
from proxy.store.freetext import resolve_note
from proxy.store.tickets import TicketStore

__all__ = ["WRITE_TAGS", "AnalysisCache", "Gate", "Refused"]

log = structlog.get_logger("tokenproxy.pg")

WRITE_TAGS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "COPY"})
_TEXT_PARAM_TYPES = frozenset({0, 25, 1043, 1042, 19, 705})


class Refused(Exception):
    """The statement is refused; ``response`` is what the client gets."""

    def __init__(self, response: ErrorResponse) -> None:
        super().__init__(response.message)
        self.response = response


class AnalysisCache:
    """Analyses by (catalog fingerprint, SQL text), least recently used dropped first.

    A text that differs from one analysed before only in the integers it compares
    columns with (``WHERE id = 41234``: a point select sent as text) gets that one's
    analysis when it was plain and could not depend on them (`proxy.pg.constants`); the
    exact texts are not kept for it (each id would push out a statement used again)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], Analysis] = OrderedDict()
        # By (catalog fingerprint, text with its integers blanked): the analysis its texts
        # share, or None when they may not share one.
        self._shared: OrderedDict[tuple[str, str], Analysis | None] = OrderedDict()
        # By (catalog fingerprint, text with its runs of digits blanked): the template of
        # a text whose analysis is shared, and that analysis (found with no scan).
        self._templates: OrderedDict[tuple[str, str], tuple[Template, Analysis]] = (
            OrderedDict()
        )
        # The last template found, with its catalog fingerprint: a client sending one
        # point select again and again has its text matched with no regular expression.
        self._last: tuple[str, Template, Analysis] | None = None

    def get(self, snapshot: CatalogSnapshot, sql: str) -> Analysis:
        fingerprint = snapshot.fingerprint
        key = (fingerprint, sql)
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        last = self._last
        if last is not None and last[0] == fingerprint and last[1].fits_text(sql):
            return last[2]
        blanked_runs, runs = digit_runs(sql)
        if runs:
            like_runs = (fingerprint, blanked_runs)
            found = self._templates.get(like_runs)
            if found is not None and found[0].fits(runs):
                self._templates.move_to_end(like_runs)
                self._last = (fingerprint, *found)
                return found[1]
        blanked = integers_blanked(sql)
        if blanked is None:
            return self._analyze(key, snapshot)
        like = (fingerprint, blanked)
        if like in self._shared:
            self._shared.move_to_end(like)
            shared = self._shared[like]
            return shared if shared is not None else self._analyze(key, snapshot)
        result = self._analyze(key, snapshot)
        shareable = _shareable(result, sql)
        self._shared[like] = result if shareable else None
        while len(self._shared) > self.size:
            self._shared.popitem(last=False)
        template = Template.of(sql) if shareable else None
        if template is not None:
            self._templates[(fingerprint, blanked_runs)] = (template, result)
            self._last = (fingerprint, template, result)
            while len(self._templates) > self.size:
                self._templates.popitem(last=False)
        return result

    def _analyze(self, key: tuple[str, str], snapshot: CatalogSnapshot) -> Analysis:
        result = self._items[key] = analyze(key[1], snapshot)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return result


def _shareable(analysis: Analysis, sql: str) -> bool:
    """Whether ``analysis`` of ``sql`` stands for every text like it but for the integers
    it compares columns with: one plain SELECT that changes no session state, whose every
    constant is such an integer."""
    if len(analysis.statements) != 1:
        return False
    s = analysis.statements[0]
    return (
        s.tag == "SELECT"
        and s.plain
        and s.outputs is not None
        and s.set_ticket is None
        and not s.reset_ticket
        and s.cursor is None
        and s.fetch is None
        and s.prepare is None
        and s.execute is None
        and not s.copy_to_stdout
        and not s.ddl
        and only_compared_integers(sql)
    )


_WHY = {
    Reason.NO_TICKET: "no ticket cited",
    Reason.UNKNOWN_TICKET: "the ticket is unknown",
    Reason.CLOSED: "the ticket is closed",
    Reason.PENDING: "the ticket is not open",
    Reason.EXPIRED: "the ticket has expired",
    Reason.NOT_ASSIGNED: "the ticket is not assigned to you",
    Reason.STORE_UNAVAILABLE: "tickets cannot be checked now",
}


class Gate:
    """One session's statement checks (see the module docstring)."""

    def __init__(
        self,
        *,
        agent: str,
        catalog: Catalog,
        cache: AnalysisCache,
        tickets: TicketStore,
        store: Store,
        engine: Callable[[], TokenEngine],
        startup_ticket: str | None,
    ) -> None:
        self.agent = agent
        self.catalog = catalog
        self.cache = cache
        self.tickets = tickets
        self.store = store
        self.engine = engine
        self.startup_ticket = startup_ticket
        self.session_ticket: str | None = None
        self.standard_strings = True

    # ---- analysis and justification

    async def analyze(self, sql: str) -> tuple[Analysis, CatalogSnapshot]:
        if not self.standard_strings:
            # The parser reads string literals as standard_conforming_strings = on does;
            # with it off the server would read them otherwise, and the analysis of what
            # is code and what is a string could be steered. Fail closed.
            raise Refused(
                error(
                    FEATURE_NOT_SUPPORTED,
                    "this session has standard_conforming_strings off; tokenproxy analyses "
                    "statements as PostgreSQL reads them with it on",
                    hint="connect without -c standard_conforming_strings=off",
                )
            )
        try:
            snapshot = await self.catalog.snapshot()
        except CatalogUnavailableError:
            raise Refused(
                error(
                    CANNOT_CONNECT_NOW,
                    "the upstream catalog cannot be read, so no statement can be checked; "
                    "try again shortly",
                )
            ) from None
        return self.cache.get(snapshot, sql), snapshot

    def analyze_now(self, sql: str) -> tuple[Analysis, CatalogSnapshot] | None:
        """`analyze` when it needs no I/O (the catalog snapshot is fresh); else None."""
        snapshot = self.snapshot_now()
        if snapshot is None:
            return None
        return self.cache.get(snapshot, sql), snapshot

    def snapshot_now(self) -> CatalogSnapshot | None:
        """The catalog snapshot statements are analysed in now, if fresh (no I/O) and
        the session's strings standard (else `analyze` reads them: None)."""
        return self.catalog.snapshot_now() if self.standard_strings else None

    def ticket(self, analysis: Analysis) -> str | None:
        """The ticket a statement cites: its comment, else the session's, else startup's."""
        return analysis.ticket or self.ticket_now()

    def ticket_now(self) -> str | None:
        """The session's ticket: ``SET tokenproxy.ticket``, else the startup option."""
        return self.session_ticket or self.startup_ticket

    async def justification(self, ticket: str | None) -> str | None:
        """None if ``ticket`` justifies reveals for this agent now; else why not."""
        if not ticket:
            return _WHY[Reason.NO_TICKET]
        decision = (await self.tickets.decide_many(self.agent, ticket, [None]))[0]
        if decision.reason is Reason.NO_CUSTOMER_ID:
            return None  # every ticket-level check passed
        return _WHY.get(decision.reason, str(decision.reason)) if decision.reason else "denied"

    async def check(self, statement: Statement, ticket: str | None) -> None:
        """Raise Refused unless ``statement`` may run in this session now."""
        if statement.refusal is not None:
            raise Refused(
                error(INSUFFICIENT_PRIVILEGE, statement.refusal, hint="this is never allowed")
            )
        if statement.problems:
            why = await self.justification(ticket)
            if why is not None:
                log.info(
                    "pg.refused",
                    agent=self.agent,
                    ticket=ticket,
                    tag=statement.tag,
                    problems=[p.kind.value for p in statement.problems],
                    why=why,
                )
                raise Refused(needs_justification(statement.problems, why))

    # ---- tokens coming back

    async def resolve_text(self, sql: str, analysis: Analysis) -> tuple[str, dict[str, str]]:
        """``sql`` with its literal slots resolved, and real value -> token of each."""
        slots = [
            (s, stmt)
            for stmt in analysis.statements
            for s in stmt.slots
            if s.param is None and s.value is not None
        ]
        if not slots:
            return sql, {}
        writes = any(stmt.tag in WRITE_TAGS for _, stmt in slots)
        wanted = [(s.kind, s.value or "") for s, _ in slots]
        names = [v for k, v in wanted if k is Kind.NAME]
        real = await self.resolve(wanted, writes, names)
        known: dict[str, str] = {}
        out = sql
        for (slot, _), (kind, value) in sorted(
            zip(slots, wanted, strict=True), key=lambda p: -p[0][0].start
        ):
            resolved = real.get((kind, value), value)
            if resolved == value:
                continue
            known[resolved] = value
            out = out[: slot.start] + self._quote(resolved) + out[slot.end :]
        return out, known

    async def resolve_bind(
        self, bind: Bind, statement: Statement, param_types: Sequence[int], encoding: str | None
    ) -> tuple[Bind, dict[str, str]]:
        """``bind`` with the tokens of its slot parameters resolved (``encoding``: the
        Python codec of the client encoding; None: not one tokenproxy can read)."""
        slots = [s for s in statement.slots if s.param is not None]
        if not slots:
            return bind, {}
        if encoding is None:
            raise Refused(
                error(
                    FEATURE_NOT_SUPPORTED,
                    "parameters compared with protected columns cannot be read in this "
                    "client encoding",
                    hint="connect with client_encoding UTF8",
                )
            )
        params = list(bind.params)
        wanted: list[tuple[Slot, Kind, str]] = []
        for slot in slots:
            index = (slot.param or 0) - 1
            if not 0 <= index < len(params) or params[index] is None:
                continue
            ptype = param_types[index] if index < len(param_types) else 0
            if _format(bind.param_formats, index) == 1 and ptype not in _TEXT_PARAM_TYPES:
                continue  # a binary non-text parameter cannot hold a name or phone token
            raw = params[index]
            assert raw is not None
            try:
                wanted.append((slot, slot.kind, raw.decode(encoding)))
            except UnicodeDecodeError:
                continue
        if not wanted:
            return bind, {}
        real = await self.resolve(
            [(k, v) for _, k, v in wanted],
            statement.tag in WRITE_TAGS,
            [v for _, k, v in wanted if k is Kind.NAME],
        )
        known: dict[str, str] = {}
        changed = False
        for slot, kind, value in wanted:
            resolved = real.get((kind, value), value)
            if resolved != value:
                known[resolved] = value
                params[(slot.param or 0) - 1] = resolved.encode(encoding)
                changed = True
        if not changed:
            return bind, known
        new = Bind(bind.portal, bind.statement, bind.param_formats, tuple(params),
                   bind.result_formats)
        return new, known

    async def resolve(
        self, items: Sequence[tuple[Kind, str]], writes: bool, names: Sequence[str] = ()
    ) -> dict[tuple[Kind, str], str]:
        """The values of ``items`` (kind, value as typed): a registered token becomes its
        value, anything else stays as typed. ``names``: the record's name values as they
        came (tokens or typed), which a note's name tokens are resolved with."""
        engine = self.engine()
        by_kind: dict[Kind, list[str]] = {}
        for kind, value in items:
            by_kind.setdefault(kind, []).append(value)
        out: dict[tuple[Kind, str], str] = {}
        kind = Kind.TEXT
        try:
            for kind, values in by_kind.items():
                unique = list(dict.fromkeys(values))
                if kind is Kind.TEXT:
                    for value in unique:
                        out[(kind, value)] = await resolve_note(engine, self.store, value, names)
                    continue
                for value, res in zip(
                    unique, await self.store.resolve(engine, kind.value, unique), strict=True
                ):
                    out[(kind, value)] = res.value
        except UnresolvableTokenError as exc:
            # Which kind, and why (the message names the key version, never a value).
            log.warning(
                "pg.token_unresolved",
                agent=self.agent,
                kind=kind.value,
                error=type(exc).__name__,
                detail=str(exc),
            )
            if isinstance(exc, AmbiguousTokenError):
                why = "was issued under two key versions for different values"
                hint = "reload the record, or cite a ticket for its customer and write its values"
            else:
                why = "cannot be resolved (its key version is retired or not loaded here yet)"
                hint = "reload the record and try again"
            raise Refused(
                error(INVALID_PARAMETER_VALUE, f"a token in this statement {why}", hint=hint)
            ) from None
        except DatabaseUnavailableError:
            if writes:
                raise Refused(
                    error(
                        CANNOT_CONNECT_NOW,
                        "tokens in this statement cannot be checked while tokenproxy's state "
                        "database is unavailable, and a write might store a token as data",
                        hint="try again shortly",
                    )
                ) from None
            return {}
        return out

    def _quote(self, value: str) -> str:
        """A SQL string literal of ``value`` (standard_conforming_strings is on: checked)."""
        return "'" + value.replace("'", "''") + "'"


def _format(formats: Sequence[int], index: int) -> int:
    if not formats:
        return 0
    if len(formats) == 1:
        return formats[0]
    return formats[index] if index < len(formats) else 0
