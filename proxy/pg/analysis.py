"""What the analysis of one SQL text finds: the values types the lineage analyzer returns,
the catalog feeds it, and the session acts on.

Names follow PostgreSQL's: a *relation* is a table, view, materialized view or foreign table
(``schema.name``); a *protected column* is one the policy names (``[[pg.tables]]``), with its
kind. Lineage is conservative: where a name could mean several relations (an unqualified
name found in several schemas, since the session's search_path is not tracked) the union
of their protected columns is assumed.

How the session acts on a `Statement`:

- ``refusal`` set: refuse the statement whatever the justification (the parser cannot follow
  it, or it reads something that exposes values no policy can scope: ``pg_stats``,
  ``pg_stat_activity``, dynamic SQL such as ``query_to_xml``, user-defined functions);
- ``problems`` non-empty: refuse unless the session holds a valid justification (an open
  ticket assigned to the agent); with one, derived outputs pass only in rows whose customer
  the ticket names, and the result is cut with an error at the first other row;
- ``outputs``: per result column, tokenize (``plain`` with a kind), check per row
  (``derived``) or pass; `ColumnLineage.customer_of` tells which output column carries
  each protected table's customer id, for per-row reveals;
- ``slots``: literals and ``$n`` parameters compared or assigned to protected columns, where a
  token coming back is resolved to its value before the statement reaches the database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from proxy.crypto.tokens import Kind

__all__ = [
    "CLEAR",
    "Analysis",
    "ColumnLineage",
    "Problem",
    "ProblemKind",
    "Relation",
    "Schema",
    "Slot",
    "Source",
    "Statement",
]


@dataclass(frozen=True, slots=True, order=True)
class Source:
    """A protected column: ``schema.table``, column and kind."""

    table: str
    column: str
    kind: Kind


@dataclass(frozen=True, slots=True)
class ColumnLineage:
    """Where one output column's values come from.

    ``sources``: the protected columns whose data flows into it (empty: not protected data).
    ``plain``: passed unchanged from one source, or several of one kind (a rename, a cast to
    ``text`` or unbounded ``varchar``, through views, CTEs, subqueries, or a UNION whose every
    branch is plain of the same kind): the value can be tokenized as `kind`. Otherwise, with
    sources, it is *derived* (``upper(full_name)``, ``row_to_json(c)``, ``string_agg``...).
    ``customer_of``: the protected tables (``schema.table``) whose customer id column this
    output is, plainly.
    """

    sources: frozenset[Source] = frozenset()
    plain: bool = False
    customer_of: frozenset[str] = frozenset()

    @property
    def kind(self) -> Kind | None:
        """The kind to tokenize as, for a plain column; None otherwise.

        Several sources of one kind (a UNION of plain branches, a name that may mean
        relations in several schemas) are plain of that kind."""
        if self.plain and self.sources:
            kinds = {source.kind for source in self.sources}
            if len(kinds) == 1:
                return next(iter(kinds))
        return None

    @property
    def derived(self) -> bool:
        """Protected data, but not a plain copy of one protected column."""
        return bool(self.sources) and self.kind is None

    @property
    def protected(self) -> bool:
        return bool(self.sources)


CLEAR = ColumnLineage()


class ProblemKind(StrEnum):
    """Why a statement needs a justification."""

    DERIVED_OUTPUT = "derived_output"  # a result column computed from protected data
    PROBE = "probe"  # LIKE, ~, ranges, ORDER BY, functions of a protected column in a predicate
    PROTECTED_WRITE = "protected_write"  # protected data written from protected data


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a statement needs a justification; ``detail`` names columns, never values."""

    kind: ProblemKind
    detail: str
    sources: frozenset[Source] = frozenset()


@dataclass(frozen=True, slots=True)
class Slot:
    """A place where a value compared or assigned to a protected column is written.

    Either a ``$n`` parameter (``param``, 1-based) or a string literal of the statement
    (``start``/``end``: character offsets in the *whole SQL text* of the literal including
    its quotes and any ``E``/``N`` prefix; ``value``: the literal's string value).
    """

    kind: Kind
    param: int | None = None
    start: int = -1
    end: int = -1
    value: str | None = None


@dataclass(frozen=True, slots=True)
class Statement:
    """The analysis of one statement of a SQL text."""

    tag: str  # the command: SELECT, INSERT, UPDATE, DELETE, COPY, SET, BEGIN, ... or OTHER
    outputs: tuple[ColumnLineage, ...] | None = None  # row-returning statements; None: none
    problems: tuple[Problem, ...] = ()
    refusal: str | None = None  # refuse whatever the justification; says why (no values)
    slots: tuple[Slot, ...] = ()
    # Session state a statement changes or uses:
    set_ticket: str | None = None  # SET [SESSION|LOCAL] tokenproxy.ticket = '...'
    reset_ticket: bool = False  # RESET tokenproxy.ticket / SET ... TO DEFAULT / RESET ALL
    cursor: str | None = None  # DECLARE name CURSOR FOR ...: outputs are the cursor's
    fetch: str | None = None  # FETCH/MOVE ... FROM name: rows as that cursor's outputs
    prepare: str | None = None  # PREPARE name AS ...: outputs/slots are the statement's
    execute: str | None = None  # EXECUTE name(...): results as that prepared statement's
    copy_to_stdout: bool = False  # COPY ... TO STDOUT: the CopyData rows carry `outputs`
    copy_format: str = "text"  # text | csv | binary
    copy_delimiter: str | None = None  # the COPY's DELIMITER option, if given
    copy_header: bool = False
    copy_from_stdin: bool = False  # COPY ... FROM STDIN into a protected table
    copy_into: tuple[ColumnLineage, ...] | None = None  # COPY FROM: target columns' lineage
    ddl: bool = False  # changes the catalog: refresh it after this statement completes

    @property
    def needs_justification(self) -> bool:
        return bool(self.problems)

    @property
    def plain(self) -> bool:
        """Nothing to check or resolve before it runs (allowed with or without a ticket,
        no token to resolve, no COPY data to read)."""
        return (
            self.refusal is None
            and not self.problems
            and not self.slots
            and not self.copy_from_stdin
        )


@dataclass(frozen=True, slots=True)
class Analysis:
    """The analysis of one SQL text (a simple Query may hold several statements)."""

    statements: tuple[Statement, ...]
    ticket: str | None = None  # from an sqlcommenter comment: /*ticket='SUP-123'*/
    params: int = 0  # the highest $n used


@dataclass(frozen=True, slots=True)
class Relation:
    """A relation as the analyzer sees it: its columns in order and their lineage.

    ``lineage`` holds the protected columns of a table (plain, their own `Source`) and the
    protected or derived columns of a view (from the analysis of its definition); a column
    absent from it is clear. ``customer_id``: the column holding the customer id of a
    protected table (or a view column that is plainly one: see ``customer_of``).
    """

    schema: str
    name: str
    columns: tuple[str, ...]
    lineage: Mapping[str, ColumnLineage] = field(default_factory=dict)
    relkind: str = "r"  # pg_class.relkind: r table, v view, m matview, f foreign, p partitioned
    # A view whose definition cannot be followed (or reads what is always refused): reading
    # it is refused. ``problems``: the probes of its definition (a WHERE with LIKE on a
    # protected column), which every statement reading it inherits.
    refusal: str | None = None
    problems: tuple[Problem, ...] = ()

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


class Schema(Protocol):
    """What the analyzer needs of the catalog (one database, one snapshot)."""

    def relations(self, name: str, schema: str | None) -> Sequence[Relation]:
        """Every relation ``name`` may mean: in ``schema`` if given, else in any schema
        (the conservative union). Empty when none exists."""
        ...

    def is_user_function(self, name: str, schema: str | None) -> bool:
        """Whether ``name`` may be a function defined outside pg_catalog and
        information_schema (its body may read protected columns: not followed)."""
        ...
