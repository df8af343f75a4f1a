"""The rewriting pipeline: policy and store around the codecs, for responses and requests.

**A response** (parsed JSON, or the values of an NDJSON body)::

    records  = extract_records(doc, route, defaults)      # policy: values + customer ids
    decided  = authorize_reveals(...)                      # store: decide, budget, audit COMMIT
    tokens   = tokenize_durably(...) per kind               # store: registry/vault flushed
    doc      = apply_replacements(doc, replacements)        # policy

Reveals are asked only when the request cites a ticket and has a verified agent; every
customer with a record in the body is asked about (so a denial lists who was not shown),
and exactly the ``allowed`` ones are left in clear. A record without a customer id, and
every record of a customer not allowed, is tokenized. Tokens come only from
:func:`proxy.store.durable.tokenize_durably` (notes: :func:`proxy.store.freetext.tokenize_notes`,
with their record's names), through :class:`SettledTokens`, so every token in the body is
recorded (or queued, when the database is away) before the body leaves, and a vault race
lost to another proxy is settled first.

Anything the request's own tokens were resolved to, found again in the response where no
field rule looks (an echo, an error message, a redirect), goes back as the token
(:func:`scrub_echoes`, :func:`scrub_header_echoes`).

**A request**: tokens in the path, the query and a JSON body are resolved to their values
before forwarding (:func:`resolve_target`, :func:`resolve_body`), so that a search by token
finds the customer and a saved record stores real values, never tokens. A value that is not
a registered token passes as typed. Where a value may be a token is decided by position:

- JSON body: the protected fields (the route's and the default rule's), by kind;
- path: a ``{param}`` of the matched route whose name the default rule classifies
  (``/customers/by-phone/{phone}``) is resolved as that kind, and no other segment of a
  configured route; on an unconfigured route every segment may be a name or a phone, but
  resolves only to a token made by FF1 (a random vault token for a short value is too
  likely to collide with an ordinary segment such as a numeric id);
- query: a parameter whose name the default rule classifies, as that kind; any other
  (``q``, ``search``) as a name or a phone, to an FF1 token, or to a vault token unless the
  value is all digits (``limit=1000`` must stay a number).

With the database away, a candidate that is not cached here cannot be told apart from a
typed value. In a request that may write (any method but GET, HEAD and OPTIONS) forwarding
it might store a token as data, so the request is refused (:class:`RewriteError`
``store-unavailable``, a 503); a read goes on with what the cache resolves (at worst a search
by an uncached token finds nothing).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote, quote_plus, unquote, unquote_plus
from weakref import WeakKeyDictionary

import structlog

from proxy.crypto.engine import AmbiguousTokenError, TokenEngine, UnresolvableTokenError
from proxy.crypto.tokens import Kind
from proxy.errors import InvalidInputError, TokenProxyError
from proxy.policy.fields import DefaultFields
from proxy.policy.records import FieldValue, Record, extract_records, json_value
from proxy.policy.routes import Route
from proxy.policy.tickets import Decision, Reason
from proxy.policy.transform import apply_replacements, resolve_records
from proxy.store.audit import AuditLog
from proxy.store.budget import BudgetLimits
from proxy.store.db import DatabaseUnavailableError
from proxy.store.durable import Store, prefetch_tokens, tokenize_durably
from proxy.store.freetext import resolve_note, tokenize_notes
from proxy.store.reveal import DEFAULT_LIMITS, authorize_reveals
from proxy.store.tickets import TicketStore

__all__ = [
    "RevealOutcome",
    "RewriteError",
    "Rewriter",
    "SettledTokens",
]

log = structlog.get_logger("tokenproxy.http.rewrite")

SETTLED_SIZE = 200_000


class RewriteError(Exception):
    """The body cannot be rewritten safely: send ``status`` with ``code``, never the body."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.status = status
        self.code = code
        self.reason = reason


def reason_code(reason: Reason | str) -> str:
    """A reason as headers show it: ``not_assigned`` -> ``not-assigned``."""
    return str(reason).replace("_", "-")


@dataclass(frozen=True, slots=True)
class RevealOutcome:
    """Which customers are shown in clear, and the ``X-Tokenproxy-Reveal`` header value."""

    revealed: frozenset[str] = frozenset()
    header: str = "none"
    denied: dict[str, int] = field(default_factory=dict)  # reason code -> customers


NO_REVEAL = RevealOutcome()


@dataclass(frozen=True, slots=True)
class ResponseResult:
    """A rewritten document and what happened (counts only)."""

    doc: Any
    changed: bool
    reveal: RevealOutcome
    tokenized: dict[str, int]
    records: int


class SettledTokens:
    """Tokens already made durable under one engine (one keyring snapshot).

    ``tokenize_durably`` computes a keyed HMAC per value to look the vault up before
    tokenizing; for a warm, busy proxy that is most of the cost of a large list. A value
    whose token was made durable while the database answered has a final token under this
    engine (FF1 is deterministic; a vault token, once settled, is the value's token for the
    key version), so it needs no second trip. Tokens made while the database was away are
    provisional (a vault race may still be lost) and are not remembered.
    """

    def __init__(self, size: int = SETTLED_SIZE) -> None:
        self._size = size  # per kind
        self._memo: WeakKeyDictionary[TokenEngine, dict[str, dict[Any, str]]]
        self._memo = WeakKeyDictionary()
        # One cold tokenization per kind at a time: when 32 requests for the same new list
        # arrive together, the first does the work and the others find it done, instead of
        # all 32 tokenizing the same thousand notes.
        self._cold: dict[str, asyncio.Lock] = {}
        self.cold_calls = 0  # calls that had to tokenize (for diagnosis and tests)

    def _lock(self, kind: str) -> asyncio.Lock:
        lock = self._cold.get(kind)
        if lock is None:
            lock = self._cold[kind] = asyncio.Lock()
        return lock

    def memo(self, engine: TokenEngine, kind: str) -> dict[Any, str]:
        """The memo of one kind under ``engine``: value (notes: (value, names)) -> token."""
        kinds = self._memo.get(engine)
        if kinds is None:
            kinds = self._memo[engine] = {}
        memo = kinds.get(kind)
        if memo is None:
            memo = kinds[kind] = {}
        return memo

    def _remember(self, memo: dict[Any, str], found: dict[Any, str]) -> None:
        if len(memo) + len(found) > self._size:
            memo.clear()
        memo.update(found)

    async def tokens(
        self, engine: TokenEngine, store: Store | None, kind: str, values: Sequence[str]
    ) -> list[str]:
        """The durable tokens of ``values`` (same order)."""
        memo = self.memo(engine, kind)
        out: list[str | None] = list(map(memo.get, values))
        if None not in out:
            return cast(list[str], out)  # no None left
        async with self._lock(kind):
            return await self._tokens_cold(engine, store, kind, values, memo)

    async def _tokens_cold(
        self,
        engine: TokenEngine,
        store: Store | None,
        kind: str,
        values: Sequence[str],
        memo: dict[Any, str],
    ) -> list[str]:
        out: list[str | None] = list(map(memo.get, values))  # again: a peer may have done it
        missing = list(dict.fromkeys(v for v, t in zip(values, out, strict=True) if t is None))
        if not missing:
            return cast(list[str], out)
        self.cold_calls += 1
        if store is None:
            fresh = engine.tokenize_many(kind, missing)
            settled = True
        else:
            healthy = store.health.healthy
            fresh = await tokenize_durably(
                engine, store.registry, store.vault, kind, missing, health=store.health
            )
            settled = healthy and store.health.healthy and store.vault.pending == 0
        found = dict(zip(missing, fresh, strict=True))
        if settled:
            self._remember(memo, found)
        return [t if t is not None else found[v] for v, t in zip(values, out, strict=True)]

    async def notes(
        self,
        engine: TokenEngine,
        store: Store | None,
        items: Sequence[tuple[str, tuple[str, ...]]],
    ) -> list[str]:
        """The durable tokens of notes with their records' known names (same order)."""
        memo = self.memo(engine, Kind.TEXT.value)
        out: list[str | None] = list(map(memo.get, items))
        if None not in out:
            return cast(list[str], out)
        async with self._lock(Kind.TEXT.value):
            out = list(map(memo.get, items))  # again: a peer may have done it
            if None not in out:
                return cast(list[str], out)
            return await self._notes_cold(engine, store, items, out, memo)

    async def _notes_cold(
        self,
        engine: TokenEngine,
        store: Store | None,
        items: Sequence[tuple[str, tuple[str, ...]]],
        out: list[str | None],
        memo: dict[Any, str],
    ) -> list[str]:
        missing = list(dict.fromkeys(i for i, t in zip(items, out, strict=True) if t is None))
        self.cold_calls += 1
        fresh, settled = await tokenize_notes(engine, store, missing)
        found = dict(zip(missing, fresh, strict=True))
        if settled:
            self._remember(memo, found)
        return [t if t is not None else found[i] for i, t in zip(items, out, strict=True)]

    def forget(self, lost: Iterable[tuple[str, str]]) -> None:
        """Drop values whose vault token was lost to another proxy (the store's hook).
        Notes are dropped whole when a name was lost: it may sit inside any of them."""
        lost = list(lost)
        for kinds in self._memo.values():
            for kind, value in lost:
                kinds.get(kind, {}).pop(value, None)
            if any(kind == Kind.NAME.value for kind, _ in lost):
                kinds.pop(Kind.TEXT.value, None)


@dataclass
class Rewriter:
    """The store handles the pipeline needs; ``None`` store parts mean no database:
    tokens from the engine's own registry and vault, and no reveal (``store-unavailable``)."""

    store: Store | None = None
    tickets: TicketStore | None = None
    audit: AuditLog | None = None
    settled: SettledTokens = field(default_factory=SettledTokens)

    # -- responses ---------------------------------------------------------------------

    async def rewrite_response(
        self,
        doc: Any,
        *,
        ndjson: bool,
        route: Route | None,
        defaults: DefaultFields,
        engine: TokenEngine,
        agent: str | None,
        ticket: str | None,
        citation_problem: str | None,
        route_label: str,
        request_id: str,
        budget: BudgetLimits = DEFAULT_LIMITS,
        echoes: dict[str, str] | None = None,
    ) -> ResponseResult:
        """Tokenize ``doc`` (a list of lines' values when ``ndjson``) except what may be
        revealed; raises :class:`RewriteError` if that cannot be done safely."""
        try:
            records = _records(doc, ndjson=ndjson, route=route, defaults=defaults)
        except InvalidInputError:
            raise RewriteError(
                502, "unreadable-body", "the body holds values it cannot check"
            ) from None
        if not records:
            reveal = no_reveal(ticket, citation_problem, agent)
            doc, scrubbed = scrub_echoes(doc, echoes, frozenset())
            return ResponseResult(doc, scrubbed > 0, reveal, {}, 0)
        reveal = await self.decide(
            records,
            agent=agent,
            ticket=ticket,
            citation_problem=citation_problem,
            route_label=route_label,
            request_id=request_id,
            budget=budget,
        )
        by_kind: dict[Kind, list[FieldValue]] = {}
        notes: list[tuple[FieldValue, tuple[str, ...]]] = []
        text, name = Kind.TEXT, Kind.NAME  # enum attribute access is slow in a hot loop
        revealed = reveal.revealed
        for record in records:
            if revealed and record.customer_id in revealed:
                continue
            texts = None
            for f in record.fields:
                kind = f.kind
                if kind is text:
                    if texts is None:
                        texts = [f]
                    else:
                        texts.append(f)
                else:
                    group = by_kind.get(kind)
                    if group is None:
                        by_kind[kind] = [f]
                    else:
                        group.append(f)
            if texts is not None:
                names = tuple(f.value for f in record.fields if f.kind is name)
                notes.extend((f, names) for f in texts)
        replacements: dict[Any, Any] = {}
        counts: dict[str, int] = {}
        try:
            for kind, fields in by_kind.items():
                tokens = await self.settled.tokens(
                    engine, self.store, kind.value, [f.value for f in fields]
                )
                for f, token in zip(fields, tokens, strict=True):
                    if token != f.value:
                        replacements[f.location] = (
                            token if f.json_type == "string" else json_value(f, token)
                        )
                counts[kind.value] = len(fields)
            if notes:
                tokens = await self.settled.notes(
                    engine, self.store, [(f.value, names) for f, names in notes]
                )
                for (f, _), token in zip(notes, tokens, strict=True):
                    if token != f.value:
                        replacements[f.location] = json_value(f, token)
                counts[Kind.TEXT.value] = len(notes)
        except TokenProxyError as exc:
            log.error("rewrite.tokenize_failed", error=type(exc).__name__, route=route_label)
            raise RewriteError(502, "tokenize-failed", "the body could not be tokenized") from None
        if replacements:
            doc = _apply(doc, replacements)
        scrubbed = 0
        if echoes:
            shown = frozenset(
                f.value
                for r in records
                if r.customer_id is not None and r.customer_id in reveal.revealed
                for f in r.fields
            )
            doc, scrubbed = scrub_echoes(doc, echoes, shown)
        return ResponseResult(doc, bool(replacements) or scrubbed > 0, reveal, counts, len(records))

    async def decide(
        self,
        records: list[Record],
        *,
        agent: str | None,
        ticket: str | None,
        citation_problem: str | None,
        route_label: str,
        request_id: str,
        budget: BudgetLimits = DEFAULT_LIMITS,
    ) -> RevealOutcome:
        """Ask the store which customers may be revealed; audited and committed on return."""
        if ticket is None or agent is None:
            return no_reveal(ticket, citation_problem, agent)
        customers = sorted({r.customer_id for r in records if r.customer_id is not None})
        if not customers:
            return RevealOutcome(header=f"denied; reason={reason_code(Reason.NO_CUSTOMER_ID)}")
        if self.tickets is None or self.audit is None:
            code = reason_code(Reason.STORE_UNAVAILABLE)
            return RevealOutcome(header=f"denied; reason={code}", denied={code: len(customers)})
        fields = sorted(
            {
                str(f.location[-1])
                for r in records
                if r.customer_id is not None
                for f in r.fields
                if f.location and isinstance(f.location[-1], str)
            }
        ) or ["(value)"]
        decisions: dict[str, Decision] = await authorize_reveals(
            self.tickets,
            self.audit,
            agent=agent,
            ticket_id=ticket,
            customer_ids=customers,
            fields=fields,
            route=route_label,
            request_id=request_id,
            limits=budget,
        )
        revealed = frozenset(c for c, d in decisions.items() if d.allowed)
        denied = Counter(reason_code(d.reason) for d in decisions.values() if not d.allowed)
        return RevealOutcome(revealed, _reveal_header(len(revealed), denied), dict(denied))

    # -- requests ----------------------------------------------------------------------

    async def resolve_body(
        self,
        doc: Any,
        *,
        route: Route | None,
        defaults: DefaultFields,
        engine: TokenEngine,
        echoes: dict[str, str] | None = None,
    ) -> tuple[Any, int]:
        """Resolve the registered tokens in a JSON request body (module docstring).
        ``echoes`` collects ``{value: token}`` of what was resolved (see ``scrub_echoes``)."""
        try:
            records = extract_records(doc, route, defaults)
        except InvalidInputError:
            raise RewriteError(
                400, "unreadable-body", "the request body holds values it cannot check"
            ) from None
        if not records:
            return doc, 0
        by_kind: dict[str, list[str]] = {}
        for record in records:
            for f in record.fields:
                if f.kind is not Kind.TEXT:
                    by_kind.setdefault(f.kind.value, []).append(f.value)
        for kind, values in by_kind.items():
            await self._prefetch(engine, kind, values)
        try:
            plain = [
                Record(r.customer_id, [f for f in r.fields if f.kind is not Kind.TEXT])
                for r in records
            ]
            resolved = resolve_records(plain, engine)
            notes = await self._resolve_notes(records, engine)
        except AmbiguousTokenError:
            raise RewriteError(
                409,
                "ambiguous-token",
                "a token in the body was issued under two key versions for different values; "
                "reload the record, or cite a ticket for its customer and save the real values",
            ) from None
        except UnresolvableTokenError:
            raise RewriteError(
                409,
                "stale-token",
                "a token in the body can no longer be resolved; reload the record",
            ) from None
        except TokenProxyError:
            raise RewriteError(
                502, "resolve-failed", "a token in the body could not be resolved"
            ) from None
        replacements = {**resolved.replacements, **notes}
        if replacements and echoes is not None:
            for record in records:
                for f in record.fields:
                    value = replacements.get(f.location)
                    if value is not None:
                        echoes[str(value)] = f.value
        if replacements:
            doc = apply_replacements(doc, replacements)
        return doc, resolved.total + len(notes)

    async def _resolve_notes(self, records: list[Record], engine: TokenEngine) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for record in records:
            texts = [f for f in record.fields if f.kind is Kind.TEXT]
            if not texts:
                continue
            names = record.known_names
            for f in texts:
                try:
                    value = await resolve_note(engine, self.store, f.value, names)
                except DatabaseUnavailableError:
                    raise RewriteError(
                        503, "store-unavailable", "tokens in the request cannot be resolved now"
                    ) from None
                if value != f.value:
                    out[f.location] = json_value(f, value)
        return out

    async def resolve_target(
        self,
        raw_path: str,
        raw_query: str,
        *,
        route: Route | None,
        params: dict[str, str],
        defaults: DefaultFields,
        engine: TokenEngine,
        echoes: dict[str, str] | None = None,
        safe: bool = False,
    ) -> tuple[str, str, int]:
        """Resolve tokens in the path and the query (module docstring); raw (encoded) in,
        raw out. Returns ``(path, query, tokens resolved)``."""
        segments = raw_path.split("/")
        decoded = [_unquote(s, plus=False) for s in segments]
        param_kinds = _param_kinds(route, params, defaults)
        # (index in segments or -1 - index in query pairs, candidate text, kinds, vault ok)
        slots: list[tuple[int, str, tuple[Kind, ...], bool]] = []
        for i, segment in enumerate(decoded):
            if not segment:
                continue
            kind = param_kinds.get(segment)
            if kind is not None:
                slots.append((i, segment, (kind,), True))
            elif route is None:  # a configured route names the parameters that matter
                slots.append((i, segment, _generic_kinds(segment), False))
        pairs = raw_query.split("&") if raw_query else []
        for j, pair in enumerate(pairs):
            key, sep, value = pair.partition("=")
            if not sep or not value:
                continue
            given = _unquote(value, plus=True)
            name = _unquote(key, plus=True)
            if not given or name is None:
                continue
            kind = defaults.kind_of(name)
            if kind is Kind.TEXT:
                continue
            if kind is not None:
                slots.append((-1 - j, given, (kind,), True))
            else:  # a short all-digit vault token could be any number (limit=1000)
                slots.append((-1 - j, given, _generic_kinds(given), not given.isdigit()))
        slots = [s for s in slots if s[2]]
        if not slots:
            return raw_path, raw_query, 0
        by_kind: dict[Kind, list[str]] = {}
        for _, candidate, kinds, _ in slots:
            for kind in kinds:
                by_kind.setdefault(kind, []).append(candidate)
        for kind, values in by_kind.items():
            await self._prefetch(engine, kind.value, values, strict=not safe)
        resolved = 0
        for index, candidate, kinds, vault_ok in slots:
            real = self._resolve_one(engine, candidate, kinds, vault_ok)
            if real is None:
                continue
            resolved += 1
            if echoes is not None:
                echoes[real] = candidate
            if index >= 0:
                segments[index] = quote(real, safe="")
            else:
                j = -1 - index
                pairs[j] = pairs[j].partition("=")[0] + "=" + quote_plus(real, safe="")
        if not resolved:
            return raw_path, raw_query, 0
        return "/".join(segments), "&".join(pairs), resolved

    def _resolve_one(
        self, engine: TokenEngine, text: str, kinds: tuple[Kind, ...], vault_ok: bool
    ) -> str | None:
        values: set[str] = set()
        for kind in kinds:
            rows = engine.registry.lookup(kind.value, text)
            if not rows:
                continue
            if not vault_ok and any(not r.method.ciphered for r in rows):
                continue
            try:
                result = engine.resolve(kind.value, text)
            except AmbiguousTokenError:
                raise RewriteError(
                    409, "ambiguous-token", "a token in the request is ambiguous"
                ) from None
            except UnresolvableTokenError:
                raise RewriteError(
                    409, "stale-token", "a token in the request can no longer be resolved"
                ) from None
            except TokenProxyError:
                continue
            if result.was_token:
                values.add(result.value)
        if len(values) > 1:
            raise RewriteError(409, "ambiguous-token", "a token in the request is ambiguous")
        return values.pop() if values else None

    async def _prefetch(
        self, engine: TokenEngine, kind: str, values: list[str], *, strict: bool = True
    ) -> None:
        if self.store is None:
            return
        try:
            await prefetch_tokens(
                engine,
                self.store.registry,
                self.store.vault,
                kind,
                values,
                offline=not self.store.health.healthy,
            )
        except DatabaseUnavailableError as exc:
            self.store.health.report_failure(exc)
            if not strict:
                return  # a read: what is cached resolves, the rest passes as typed
            raise RewriteError(
                503, "store-unavailable", "tokens in the request cannot be resolved right now"
            ) from None


# ---------------------------------------------------------------------------- helpers


def _apply(doc: Any, replacements: dict[Any, Any]) -> Any:
    """``apply_replacements`` without a call per location (thousands per big list)."""
    for location, value in replacements.items():
        if not location:
            doc = value
            continue
        node = doc
        for step in location[:-1]:
            node = node[step]
        node[location[-1]] = value
    return doc


def _records(
    doc: Any, *, ndjson: bool, route: Route | None, defaults: DefaultFields
) -> list[Record]:
    if not ndjson:
        return extract_records(doc, route, defaults)
    out: list[Record] = []
    for i, line in enumerate(doc):
        for record in extract_records(line, route, defaults):
            fields = [f._replace(location=(i, *f.location)) for f in record.fields]
            out.append(Record(record.customer_id, fields))
    return out


MIN_ECHO = 3  # shorter resolved values are not searched for (they would match anywhere)


def scrub_header_echoes(headers: Any, echoes: dict[str, str] | None) -> None:
    """:func:`scrub_echoes` for response header values (a redirect's ``Location`` may
    carry a resolved search term), in their plain and percent-encoded forms."""
    wanted = [(v, t) for v, t in (echoes or {}).items() if len(v) >= MIN_ECHO]
    if not wanted:
        return
    forms = []
    for value, token in wanted:
        forms.append((value, token))
        forms.append((quote(value, safe=""), quote(token, safe="")))
        forms.append((quote_plus(value, safe=""), quote_plus(token, safe="")))
        forms.append((quote(value), quote(token)))
    for name in list(headers.keys()):
        values = headers.getall(name)
        fixed = []
        for text in values:
            for value, token in forms:
                if value in text:
                    text = text.replace(value, token)
            fixed.append(text)
        if fixed != values:
            headers.popall(name)
            for text in fixed:
                headers.add(name, text)


def scrub_echoes(doc: Any, echoes: dict[str, str] | None, shown: frozenset[str]) -> tuple[Any, int]:
    """Replace, in every string of ``doc``, the values this request's tokens were resolved
    to by those tokens, except values shown in clear by a reveal (``shown``).

    A safety net for upstreams that echo what they were sent where no field rule looks
    ("no results for 'Budi Santoso'", an echo endpoint, an error message): the agent sent a
    token and must not get the value back through the proxy's own resolution.
    Returns the document and the number of strings changed.
    """
    wanted = sorted(
        ((v, t) for v, t in (echoes or {}).items() if len(v) >= MIN_ECHO and v not in shown),
        key=lambda vt: -len(vt[0]),
    )
    if not wanted:
        return doc, 0
    changed = 0

    def fix(text: str) -> str:
        nonlocal changed
        out = text
        for value, token in wanted:
            if value in out:
                out = out.replace(value, token)
        if out != text:
            changed += 1
        return out

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return fix(node)
        if isinstance(node, dict):
            return {(fix(k) if isinstance(k, str) else k): walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(doc), changed


def no_reveal(ticket: str | None, problem: str | None, agent: str | None) -> RevealOutcome:
    if problem is not None:
        return RevealOutcome(header=f"denied; reason={problem}")
    if ticket is not None and agent is None:
        return RevealOutcome(header="denied; reason=no-identity")
    return NO_REVEAL


def _reveal_header(revealed: int, denied: Counter[str]) -> str:
    reasons = ",".join(sorted(denied))
    if not denied:
        return f"allowed; customers={revealed}"
    if not revealed:
        return f"denied; reason={reasons}"
    return f"partial; customers={revealed}; denied={sum(denied.values())}; reason={reasons}"


def _param_kinds(
    route: Route | None, params: dict[str, str], defaults: DefaultFields
) -> dict[str, Kind]:
    """Path parameter values whose name the default rule classifies (not text)."""
    out: dict[str, Kind] = {}
    if route is None:
        return out
    for name, value in params.items():
        kind = defaults.kind_of(name)
        if kind is not None and kind is not Kind.TEXT:
            out[value] = kind
    return out


def _generic_kinds(text: str) -> tuple[Kind, ...]:
    """The kinds an unlabelled value could be a token of, by its characters alone."""
    has_digit = any(c.isdigit() for c in text)
    has_alpha = any(c.isalpha() for c in text)
    if has_alpha and has_digit:
        return (Kind.NAME, Kind.PHONE)
    if has_alpha:
        return (Kind.NAME,)
    if has_digit:
        return (Kind.PHONE,)
    return ()


def _unquote(text: str, *, plus: bool) -> str | None:
    """Percent-decoded text, or None when it is not valid UTF-8 (then it is no token)."""
    if "%" not in text and not (plus and "+" in text):
        return text
    try:
        if plus:
            return unquote_plus(text, errors="strict")
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        return None
