"""The one transform both front ends call: records in, replacements out.

Responses: :func:`tokenize_records` turns every protected value into its token, except the
records of customers the caller has already decided (and audited) to reveal. Requests
(write-back, search): :func:`resolve_records` turns every token this proxy issued back into
its value; anything else is a value the agent typed and passes unchanged. Both return
replacements keyed by location, which :func:`apply_replacements` writes into the parsed
document (the HTTP front end) or the PostgreSQL front end maps to its columns.

The order a front end follows::

    records = extract_records(doc, route, defaults)
    candidates = reveal_candidates(records, ticket.customer_ids)   # if a ticket is cited
    revealed = {c for c in candidates if <decide() allows and the audit row is committed>}
    result = tokenize_records(records, revealed, engine)
    <flush the engine's registry/vault writes>                      # before bytes leave
    doc = apply_replacements(doc, result.replacements)

Nothing is revealed that the caller did not put in ``revealed``; a record without a
customer id is never revealed. The summary names customer ids, kinds, locations and counts,
never a value, so it can go to the audit log and metrics as is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Any

from proxy.crypto.engine import TokenEngine
from proxy.crypto.tokens import Kind
from proxy.policy.jsonpath import Location, set_at
from proxy.policy.records import FieldValue, Record, json_value

__all__ = [
    "Resolved",
    "RevealedField",
    "TransformSummary",
    "Transformed",
    "apply_replacements",
    "resolve_records",
    "reveal_candidates",
    "tokenize_records",
]

Replacements = dict[Location, Any]


@dataclass(frozen=True, slots=True)
class RevealedField:
    """A value that left in clear: whose, what kind, and where (no value)."""

    customer_id: str
    kind: Kind
    location: Location


@dataclass(frozen=True, slots=True)
class TransformSummary:
    """What a response transform did, for the audit log and metrics (no values)."""

    revealed_customers: frozenset[str]
    revealed_fields: tuple[RevealedField, ...]
    tokenized: Mapping[str, int]  # kind -> values tokenized
    revealed: Mapping[str, int]  # kind -> values left in clear
    records_without_id: int  # records that could never be revealed

    @property
    def tokenized_total(self) -> int:
        return sum(self.tokenized.values())


@dataclass(frozen=True, slots=True)
class Transformed:
    """The result of :func:`tokenize_records`."""

    replacements: Replacements
    summary: TransformSummary


@dataclass(frozen=True, slots=True)
class Resolved:
    """The result of :func:`resolve_records`: replacements and tokens resolved per kind."""

    replacements: Replacements
    resolved: Mapping[str, int]  # kind -> tokens resolved (the caller audits resolve_token)

    @property
    def total(self) -> int:
        return sum(self.resolved.values())


def reveal_candidates(records: Iterable[Record], ticket_customer_ids: Set[str]) -> set[str]:
    """The customer ids of ``records`` that the cited ticket names: the ones to decide on.

    A plan, not a permission: each candidate still goes through ``decide()`` (and the reveal
    budget, and the audit) before it may be passed to :func:`tokenize_records`.
    """
    return {
        r.customer_id
        for r in records
        if r.customer_id is not None and r.customer_id in ticket_customer_ids
    }


def tokenize_records(
    records: Iterable[Record], revealed: Set[str], engine: TokenEngine
) -> Transformed:
    """Tokens for every value except those of records whose customer is in ``revealed``.

    Values are batched per kind through ``engine.tokenize_many`` (one FF1 pass per shape).
    Raises whatever the engine raises (a vault miss, say): the caller must then send no
    body at all, never the untransformed one.
    """
    by_kind: dict[Kind, list[FieldValue]] = {}
    revealed_fields: list[RevealedField] = []
    revealed_customers: set[str] = set()
    revealed_counts: Counter[str] = Counter()
    without_id = 0
    for record in records:
        cid = record.customer_id
        if cid is None:
            without_id += 1
        elif cid in revealed:
            revealed_customers.add(cid)
            for f in record.fields:
                revealed_fields.append(RevealedField(cid, f.kind, f.location))
                revealed_counts[f.kind.value] += 1
            continue
        for f in record.fields:
            by_kind.setdefault(f.kind, []).append(f)
    replacements: Replacements = {}
    tokenized: dict[str, int] = {}
    for kind, fields in by_kind.items():
        # TODO(lead): for Kind.TEXT pass each record's known names (Record.known_names) once
        # engine.tokenize_text(value, known_names) exists; until then the text tokenizer
        # finds names and phones on its own.
        tokens = engine.tokenize_many(kind.value, [f.value for f in fields])
        for f, token in zip(fields, tokens, strict=True):
            replacements[f.location] = json_value(f, token)
        tokenized[kind.value] = len(fields)
    summary = TransformSummary(
        revealed_customers=frozenset(revealed_customers),
        revealed_fields=tuple(revealed_fields),
        tokenized=tokenized,
        revealed=dict(revealed_counts),
        records_without_id=without_id,
    )
    return Transformed(replacements, summary)


def resolve_records(records: Iterable[Record], engine: TokenEngine) -> Resolved:
    """Replacements that turn every registered token in ``records`` back into its value.

    A value that is not a token of its kind is what the agent typed and is left alone (no
    replacement). ``AmbiguousTokenError`` propagates: refuse the request, never guess.
    """
    replacements: Replacements = {}
    resolved: Counter[str] = Counter()
    for record in records:
        for f in record.fields:
            result = engine.resolve(f.kind.value, f.value)
            if result.was_token:
                replacements[f.location] = json_value(f, result.value)
                resolved[f.kind.value] += 1
    return Resolved(replacements, dict(resolved))


def apply_replacements(doc: Any, replacements: Mapping[Location, Any]) -> Any:
    """Write ``replacements`` into ``doc`` in place; returns the document.

    The document is returned because a replacement at the root location ``()`` (a body that
    is one protected string) replaces the document itself.
    """
    for location, value in replacements.items():
        doc = set_at(doc, location, value)
    return doc
