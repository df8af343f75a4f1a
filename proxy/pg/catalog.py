"""The upstream database's catalog, as the lineage analyzer sees it.

A `CatalogSnapshot` is an immutable picture of one upstream database: every table, view,
materialized view, foreign and partitioned table (``pg_class.relkind`` r, v, m, f, p) in
every schema, its columns in ``attnum`` order, and per column its `ColumnLineage`:

- a protected table (in the `ColumnPolicy`): its protected columns are plain copies of
  themselves, its customer id column is ``customer_of`` itself;
- a partition or inheritance child of a protected table, and an ancestor of one, shares its
  rows: the same columns carry the protected table's sources (several: derived);
- a view or materialized view: the analysis of ``pg_get_viewdef`` by
  `proxy.pg.lineage.view_relation` (views over views resolved in dependency order, lazily,
  with a cycle guard). Views of ``pg_catalog`` and ``information_schema`` are taken as
  clear: the analyzer refuses the dangerous ones by name. **Fail closed**: a view whose
  definition the analyzer refuses or cannot follow (a cycle of views included) keeps the
  analyzer's ``refusal`` (reading it is refused) and has every column *derived* from every
  protected column of the policy (`CatalogSnapshot.unfollowed_views` names them);
- a policy table absent from the database (`CatalogSnapshot.missing_tables`) still exists
  for the analyzer, with its policy columns, so a query naming it is treated as protected.

A `Catalog` (one per upstream database) loads snapshots over one connection it keeps open:
a handful of queries in one read-only repeatable-read transaction. `Catalog.invalidate` (the
session calls it after relaying DDL) makes the next `Catalog.snapshot` reload; DDL made
elsewhere is caught by a cheap fingerprint query run at most every ``recheck_seconds``
(counts and sums of ``oid`` and ``xmin`` over pg_class, pg_attribute, pg_rewrite, pg_proc,
pg_namespace and pg_inherits: creating, altering, replacing or dropping a relation, column,
view definition, function or schema changes it; so do harmless changes such as GRANT or
REFRESH MATERIALIZED VIEW, costing a reload). Concurrent callers share one load; a failure
(of a load or of a recheck: a stale snapshot is never served) raises
`CatalogUnavailableError` and the next call tries again.
"""

from __future__ import annotations

import asyncio
import graphlib
import hashlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import structlog

from proxy.errors import TokenProxyError
from proxy.pg.analysis import CLEAR, ColumnLineage, Relation, Schema, Source
from proxy.policy.columns import ColumnPolicy, ProtectedTable

__all__ = [
    "Catalog",
    "CatalogRows",
    "CatalogSnapshot",
    "CatalogUnavailableError",
    "Catalogs",
    "RelationRow",
    "ViewAnalyzer",
    "fetch_rows",
]

log = structlog.get_logger("tokenproxy.pg.catalog")

SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})

ViewAnalyzer = Callable[[str, str, tuple[str, ...], str, Schema], Relation]
"""``view_relation(schema_name, name, columns, definition, schema) -> Relation``."""

Connect = Callable[[], Awaitable[Any]]  # -> asyncpg.Connection


class CatalogUnavailableError(TokenProxyError):
    """The upstream catalog could not be loaded or checked: statements cannot be analyzed."""


# ----------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelationRow:
    """One ``pg_class`` row: ``definition`` is ``pg_get_viewdef`` for a non-system view."""

    oid: int
    schema: str
    name: str
    relkind: str
    definition: str | None = None


@dataclass(frozen=True, slots=True)
class CatalogRows:
    """What a load reads from the upstream catalog."""

    relations: Sequence[RelationRow]
    columns: Sequence[tuple[int, int, str]]  # (attrelid, attnum, attname), attnum ascending
    functions: Sequence[tuple[str, str]] = ()  # (schema, name) outside the system schemas
    inherits: Sequence[tuple[int, int]] = ()  # (child oid, parent oid)
    dependencies: Sequence[tuple[int, int]] = ()  # (view oid, relation oid it reads)
    fingerprint: str = ""


FINGERPRINT_SQL = """  -- 16384: FirstNormalObjectId, the first oid after initdb
SELECT concat_ws('/',
  (SELECT count(*) || ':' || coalesce(sum(oid::int8), 0) || ':'
          || coalesce(sum(xmin::text::int8), 0)
     FROM pg_catalog.pg_class WHERE relkind IN ('r', 'v', 'm', 'f', 'p')),
  (SELECT count(*) || ':' || coalesce(sum(attnum), 0) || ':'
          || coalesce(sum(xmin::text::int8), 0)
     FROM pg_catalog.pg_attribute WHERE attrelid >= 16384 AND attnum > 0),
  (SELECT count(*) || ':' || coalesce(sum(oid::int8), 0) || ':'
          || coalesce(sum(xmin::text::int8), 0)
     FROM pg_catalog.pg_rewrite),
  (SELECT count(*) || ':' || coalesce(sum(oid::int8), 0) || ':'
          || coalesce(sum(xmin::text::int8), 0)
     FROM pg_catalog.pg_proc WHERE oid >= 16384),
  (SELECT count(*) || ':' || coalesce(sum(oid::int8), 0) || ':'
          || coalesce(sum(xmin::text::int8), 0)
     FROM pg_catalog.pg_namespace),
  (SELECT count(*) || ':' || coalesce(sum(inhrelid::int8 * 7 + inhparent::int8), 0)
     FROM pg_catalog.pg_inherits))
"""

_RELATIONS_SQL = """
SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text,
       CASE WHEN c.relkind IN ('v', 'm')
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            THEN pg_catalog.pg_get_viewdef(c.oid) END
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p')
"""

_COLUMNS_SQL = """
SELECT a.attrelid::int8, a.attnum::int4, a.attname::text
  FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
 WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p') AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attrelid, a.attnum
"""

_FUNCTIONS_SQL = """
SELECT DISTINCT n.nspname::text, p.proname::text
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
"""

_INHERITS_SQL = "SELECT inhrelid::int8, inhparent::int8 FROM pg_catalog.pg_inherits"

_DEPENDENCIES_SQL = """
SELECT DISTINCT r.ev_class::int8, d.refobjid::int8
  FROM pg_catalog.pg_rewrite r
  JOIN pg_catalog.pg_depend d
    ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
 WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND d.refobjid <> r.ev_class AND r.ev_class >= 16384
"""


async def fetch_rows(conn: Any, seconds: float) -> CatalogRows:
    """Read the catalog over ``conn`` (an asyncpg connection) in one read-only
    repeatable-read transaction; each query bounded by ``seconds``."""
    timeout = seconds
    await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", timeout=timeout)
    try:
        fingerprint = await conn.fetchval(FINGERPRINT_SQL, timeout=timeout)
        relations = await conn.fetch(_RELATIONS_SQL, timeout=timeout)
        columns = await conn.fetch(_COLUMNS_SQL, timeout=timeout)
        functions = await conn.fetch(_FUNCTIONS_SQL, timeout=timeout)
        inherits = await conn.fetch(_INHERITS_SQL, timeout=timeout)
        dependencies = await conn.fetch(_DEPENDENCIES_SQL, timeout=timeout)
    finally:
        if not conn.is_closed():
            await conn.execute("ROLLBACK", timeout=timeout)
    return CatalogRows(
        relations=[RelationRow(r[0], r[1], r[2], r[3], r[4]) for r in relations],
        columns=[(r[0], r[1], r[2]) for r in columns],
        functions=[(r[0], r[1]) for r in functions],
        inherits=[(r[0], r[1]) for r in inherits],
        dependencies=[(r[0], r[1]) for r in dependencies],
        fingerprint=str(fingerprint),
    )


# ----------------------------------------------------------------------------------------
# The snapshot
# ----------------------------------------------------------------------------------------


def _table_lineage(table: ProtectedTable) -> dict[str, ColumnLineage]:
    lineage = {
        column: ColumnLineage(frozenset({Source(table.qualified, column, kind)}), plain=True)
        for column, kind in table.columns.items()
    }
    if table.customer_id is not None:
        lineage[table.customer_id] = ColumnLineage(customer_of=frozenset({table.qualified}))
    return lineage


def _shared_lineage(
    columns: Iterable[str], tables: Iterable[ProtectedTable]
) -> dict[str, ColumnLineage]:
    """The lineage of a relation sharing rows with ``tables`` (partitions, inheritance)."""
    sources: dict[str, set[Source]] = defaultdict(set)
    customer_of: dict[str, set[str]] = defaultdict(set)
    wanted = set(columns)
    for table in tables:
        for column, kind in table.columns.items():
            if column in wanted:
                sources[column].add(Source(table.qualified, column, kind))
        if table.customer_id is not None and table.customer_id in wanted:
            customer_of[table.customer_id].add(table.qualified)
    lineage: dict[str, ColumnLineage] = {}
    for column in wanted:
        if column in sources or column in customer_of:
            found = frozenset(sources.get(column, ()))
            lineage[column] = ColumnLineage(
                sources=found,
                plain=len(found) == 1,
                customer_of=frozenset(customer_of.get(column, ())),
            )
    return lineage


def _default_view_analyzer() -> ViewAnalyzer:
    from proxy.pg.lineage import view_relation  # lineage imports nothing of the catalog

    analyzer: ViewAnalyzer = view_relation
    return analyzer


class _ViewResolver:
    """The `Schema` views are analyzed against while a snapshot is built: views resolved
    on demand and memoized; a view met again while it is being resolved (a cycle) is
    taken as unfollowable."""

    def __init__(
        self,
        known: dict[tuple[str, str], Relation],
        views: dict[tuple[str, str], tuple[RelationRow, tuple[str, ...]]],
        by_name: Mapping[str, Sequence[tuple[str, str]]],
        functions: frozenset[tuple[str, str]],
        fail_closed: ColumnLineage,
        policy: ColumnPolicy,
        analyzer: ViewAnalyzer,
    ) -> None:
        self._known = known
        self._views = views
        self._by_name = by_name
        self._functions = functions
        self._function_names = frozenset(name for _, name in functions)
        self._fail_closed = fail_closed
        self._policy = policy
        self._analyzer = analyzer
        self._busy: set[tuple[str, str]] = set()
        self.unfollowed: set[str] = set()

    def relations(self, name: str, schema: str | None) -> Sequence[Relation]:
        return [self.resolve(key) for key in _keys(self._by_name, name, schema)]

    def is_user_function(self, name: str, schema: str | None) -> bool:
        return _is_user_function(self._functions, self._function_names, name, schema)

    def resolve(self, key: tuple[str, str]) -> Relation:
        known = self._known.get(key)
        if known is not None:
            return known
        row, columns = self._views[key]
        qualified = f"{row.schema}.{row.name}"
        if key in self._busy:  # not memoized: the view being resolved fails closed itself
            return self._unfollowable(row, columns, "it reads itself through other views")
        self._busy.add(key)
        try:
            relation = self._analyzer(row.schema, row.name, columns, row.definition or "", self)
        except Exception as exc:  # the analyzer's bug: fail closed
            log.warning("pg.catalog.view_failed", view=qualified, error=type(exc).__name__)
            relation = self._unfollowable(row, columns, "its definition could not be analyzed")
        finally:
            self._busy.discard(key)
        if relation.refusal is not None:
            self.unfollowed.add(qualified)
            log.warning("pg.catalog.view_refused", view=qualified, refusal=relation.refusal)
            lineage = self._fail_closed_lineage(columns)
        else:
            lineage = dict(relation.lineage)
        table = self._policy.table(row.schema, row.name)
        if table is not None:
            lineage.update(_table_lineage(table))
        relation = replace(
            relation,
            schema=row.schema,
            name=row.name,
            columns=columns,
            lineage=MappingProxyType(lineage),
            relkind=row.relkind,
        )
        self._known[key] = relation
        return relation

    def _fail_closed_lineage(self, columns: Iterable[str]) -> dict[str, ColumnLineage]:
        return dict.fromkeys(columns, self._fail_closed) if self._fail_closed.sources else {}

    def _unfollowable(self, row: RelationRow, columns: tuple[str, ...], why: str) -> Relation:
        return Relation(
            row.schema,
            row.name,
            columns,
            MappingProxyType(self._fail_closed_lineage(columns)),
            row.relkind,
            refusal=f"view {row.schema}.{row.name}: {why}",
        )


def _keys(
    by_name: Mapping[str, Sequence[tuple[str, str]]], name: str, schema: str | None
) -> list[tuple[str, str]]:
    keys = by_name.get(name, ())
    if schema is None:
        return list(keys)
    if schema == "pg_temp":  # the alias of the session's own temporary schema
        return [key for key in keys if key[0].startswith("pg_temp_")]
    return [key for key in keys if key[0] == schema]


def _is_user_function(
    functions: frozenset[tuple[str, str]],
    names: frozenset[str],
    name: str,
    schema: str | None,
) -> bool:
    if schema is None:
        return name in names
    if schema in SYSTEM_SCHEMAS:
        return False
    if schema == "pg_temp":
        return any(s.startswith("pg_temp_") and n == name for s, n in functions)
    return (schema, name) in functions


class CatalogSnapshot:
    """One database's relations, columns and user functions, with per-column lineage.

    Immutable; implements `proxy.pg.analysis.Schema`. Build with `CatalogSnapshot.build`.
    """

    __slots__ = (
        "_by_name",
        "_by_oid",
        "_catalog_fingerprint",
        "_fingerprint",
        "_function_names",
        "_functions",
        "_loaded_at",
        "_missing",
        "_missing_columns",
        "_relations",
        "_unfollowed",
    )

    def __init__(
        self,
        relations: Mapping[tuple[str, str], Relation],
        by_oid: Mapping[int, tuple[Relation, Mapping[int, str]]],
        functions: frozenset[tuple[str, str]],
        missing: tuple[str, ...],
        missing_columns: tuple[str, ...],
        unfollowed: tuple[str, ...],
        fingerprint: str,
        policy_digest: str,
        loaded_at: float,
    ) -> None:
        self._relations = MappingProxyType(dict(relations))
        by_name: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for key in sorted(relations):
            by_name[key[1]].append(key)
        self._by_name: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType(
            {name: tuple(keys) for name, keys in by_name.items()}
        )
        self._by_oid = MappingProxyType(dict(by_oid))
        self._functions = functions
        self._function_names = frozenset(name for _, name in functions)
        self._missing = missing
        self._missing_columns = missing_columns
        self._unfollowed = unfollowed
        self._catalog_fingerprint = fingerprint
        self._fingerprint = f"{fingerprint}#{policy_digest}"
        self._loaded_at = loaded_at

    @classmethod
    def build(
        cls,
        rows: CatalogRows,
        policy: ColumnPolicy,
        *,
        analyzer: ViewAnalyzer | None = None,
        loaded_at: float | None = None,
    ) -> CatalogSnapshot:
        """The snapshot of ``rows`` under ``policy``; views analyzed by ``analyzer``
        (default: `proxy.pg.lineage.view_relation`)."""
        columns_of: dict[int, dict[int, str]] = defaultdict(dict)
        for attrelid, attnum, attname in rows.columns:
            columns_of[attrelid][attnum] = attname
        by_oid_row = {row.oid: row for row in rows.relations}

        parents: dict[int, set[int]] = defaultdict(set)
        children: dict[int, set[int]] = defaultdict(set)
        for child, parent in rows.inherits:
            parents[child].add(parent)
            children[parent].add(child)

        everything = frozenset(
            Source(table.qualified, column, kind)
            for table in policy
            for column, kind in table.columns.items()
        )
        fail_closed = ColumnLineage(sources=everything, plain=False)

        known: dict[tuple[str, str], Relation] = {}
        views: dict[tuple[str, str], tuple[RelationRow, tuple[str, ...]]] = {}
        missing_columns: list[str] = []
        for row in rows.relations:
            key = (row.schema, row.name)
            attnums = columns_of.get(row.oid, {})
            columns = tuple(attnums[n] for n in sorted(attnums))
            table = policy.table(row.schema, row.name)
            if table is not None:
                present = set(columns)
                wanted = [*table.columns, *([table.customer_id] if table.customer_id else [])]
                missing_columns += [f"{table.qualified}.{c}" for c in wanted if c not in present]
            if row.relkind in ("v", "m") and row.schema not in SYSTEM_SCHEMAS:
                views[key] = (row, columns)
                continue
            related = [
                t
                for oid in (*_closure(row.oid, parents), *_closure(row.oid, children))
                if (rel := by_oid_row.get(oid)) is not None
                and (t := policy.table(rel.schema, rel.name)) is not None
            ]
            lineage = _shared_lineage(columns, related) if related else {}
            if table is not None:
                lineage.update(_table_lineage(table))
            known[key] = Relation(
                row.schema, row.name, columns, MappingProxyType(lineage), row.relkind
            )

        missing: list[str] = []
        for table in policy:
            key = (table.schema, table.name)
            if key in known or key in views:
                continue
            missing.append(table.qualified)
            columns = (*table.columns, *([table.customer_id] if table.customer_id else []))
            known[key] = Relation(
                table.schema, table.name, tuple(columns), MappingProxyType(_table_lineage(table))
            )

        by_name: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for key in sorted((*known, *views)):
            by_name[key[1]].append(key)
        functions = frozenset((schema, name) for schema, name in rows.functions)
        if views:
            resolver = _ViewResolver(
                known,
                views,
                by_name,
                functions,
                fail_closed,
                policy,
                analyzer or _default_view_analyzer(),
            )
            for key in _view_order(views, rows.dependencies):
                resolver.resolve(key)
            unfollowed = tuple(sorted(resolver.unfollowed))
        else:
            unfollowed = ()

        by_oid: dict[int, tuple[Relation, Mapping[int, str]]] = {}
        for row in rows.relations:
            by_oid[row.oid] = (
                known[(row.schema, row.name)],
                MappingProxyType(columns_of.get(row.oid, {})),
            )
        return cls(
            known,
            by_oid,
            functions,
            tuple(sorted(missing)),
            tuple(sorted(missing_columns)),
            unfollowed,
            rows.fingerprint,
            _policy_digest(policy),
            time.time() if loaded_at is None else loaded_at,
        )

    # -- the Schema protocol ----------------------------------------------------------------

    def relations(self, name: str, schema: str | None) -> Sequence[Relation]:
        """Every relation ``name`` may mean: in ``schema`` (``pg_temp``: any temporary
        schema), else in any schema (the conservative union)."""
        return tuple(self._relations[key] for key in _keys(self._by_name, name, schema))

    def is_user_function(self, name: str, schema: str | None) -> bool:
        """Whether ``name`` may be a function (or aggregate, procedure) defined outside
        pg_catalog and information_schema, extension functions included."""
        return _is_user_function(self._functions, self._function_names, name, schema)

    # -- RowDescription fields -------------------------------------------------------------

    def column(self, table_oid: int, attnum: int) -> tuple[Relation, str] | None:
        """The relation and column a RowDescription field names; None for 0/0 (a computed
        column), a system column or an unknown relation."""
        found = self._by_oid.get(table_oid)
        if found is None:
            return None
        name = found[1].get(attnum)
        return None if name is None else (found[0], name)

    def lineage_of(self, table_oid: int, attnum: int) -> ColumnLineage:
        """The lineage of a RowDescription field's column; `CLEAR` when not protected."""
        found = self.column(table_oid, attnum)
        if found is None:
            return CLEAR
        return found[0].lineage.get(found[1], CLEAR)

    # -- what the caller reports -----------------------------------------------------------

    def relation(self, schema: str, name: str) -> Relation | None:
        """The relation ``schema.name``, if any."""
        return self._relations.get((schema, name))

    def missing_tables(self) -> tuple[str, ...]:
        """Policy tables (``schema.table``) absent from the database: warn."""
        return self._missing

    def missing_columns(self) -> tuple[str, ...]:
        """Policy columns (``schema.table.column``) absent from their existing table."""
        return self._missing_columns

    def unfollowed_views(self) -> tuple[str, ...]:
        """Views whose definition could not be followed: every column taken as derived."""
        return self._unfollowed

    @property
    def fingerprint(self) -> str:
        """Identifies what this snapshot says: the upstream catalog's fingerprint (see
        `FINGERPRINT_SQL`) and the policy's digest. Equal fingerprints, equal analyses."""
        return self._fingerprint

    @property
    def catalog_fingerprint(self) -> str:
        """The upstream catalog's fingerprint when it was loaded."""
        return self._catalog_fingerprint

    @property
    def loaded_at(self) -> float:
        """When it was loaded (seconds since the epoch)."""
        return self._loaded_at

    def __len__(self) -> int:
        return len(self._relations)

    def __repr__(self) -> str:
        return f"<CatalogSnapshot relations={len(self._relations)} at {self._fingerprint!r}>"


def _policy_digest(policy: ColumnPolicy) -> str:
    described = sorted(
        (t.schema, t.name, t.customer_id or "", tuple(sorted(t.columns.items()))) for t in policy
    )
    return hashlib.sha256(repr(described).encode()).hexdigest()[:16]


def _closure(start: int, edges: Mapping[int, set[int]]) -> set[int]:
    seen: set[int] = set()
    todo = list(edges.get(start, ()))
    while todo:
        oid = todo.pop()
        if oid not in seen and oid != start:
            seen.add(oid)
            todo.extend(edges.get(oid, ()))
    return seen


def _view_order(
    views: Mapping[tuple[str, str], tuple[RelationRow, tuple[str, ...]]],
    dependencies: Iterable[tuple[int, int]],
) -> list[tuple[str, str]]:
    """Views in dependency order (dependencies first); any order left to the lazy resolver
    when the dependencies hold a cycle."""
    key_of = {row.oid: key for key, (row, _) in views.items()}
    sorter: graphlib.TopologicalSorter[tuple[str, str]] = graphlib.TopologicalSorter()
    for key in views:
        sorter.add(key)
    for view, referenced in dependencies:
        if view in key_of and referenced in key_of:
            sorter.add(key_of[view], key_of[referenced])
    try:
        return list(sorter.static_order())
    except graphlib.CycleError:
        return sorted(views, key=lambda key: views[key][0].oid)


# ----------------------------------------------------------------------------------------
# The catalog of one upstream database
# ----------------------------------------------------------------------------------------


class Catalog:
    """Snapshots of one upstream database's catalog, kept fresh (see the module docstring).

    ``connect`` opens an asyncpg connection to that database (the caller decides the
    credentials); one connection is kept open for rechecks and reopened when lost.
    """

    def __init__(
        self,
        policy: ColumnPolicy,
        connect: Connect,
        *,
        recheck_seconds: float = 2.0,
        timeout: float = 5.0,
        database: str = "",
        analyzer: ViewAnalyzer | None = None,
    ) -> None:
        self._policy = policy
        self._connect = connect
        self._recheck = recheck_seconds
        self._timeout = timeout
        self._database = database
        self._analyzer = analyzer
        self._conn: Any = None
        self._snapshot: CatalogSnapshot | None = None
        self._generation = 0  # bumped by invalidate()
        self._loaded_generation = -1
        self._checked_at = 0.0
        self._task: asyncio.Task[CatalogSnapshot] | None = None
        self._task_generation = 0
        self._closed = False
        self.loads = 0  # full loads done (for metrics and tests)

    @property
    def database(self) -> str:
        return self._database

    @property
    def policy(self) -> ColumnPolicy:
        return self._policy

    def set_policy(self, policy: ColumnPolicy) -> None:
        """Use ``policy`` from the next snapshot on."""
        self._policy = policy
        self.invalidate()

    def invalidate(self) -> None:
        """Reload on the next `snapshot` (after DDL the session relayed)."""
        self._generation += 1

    async def snapshot(self) -> CatalogSnapshot:
        """The current snapshot: loaded on first use, after `invalidate`, or when the
        fingerprint (checked at most every ``recheck_seconds``) has changed.

        Raises `CatalogUnavailableError` when the catalog cannot be loaded or checked.
        """
        while True:
            if self._closed:
                raise CatalogUnavailableError(
                    f"the catalog of upstream database {self._database!r} is closed"
                )
            snap = self.snapshot_now()
            if snap is not None:
                return snap
            task = self._task
            if task is not None and not task.done() and self._task_generation != self._generation:
                # Started before an invalidate(): its result may predate the DDL.
                await asyncio.wait({task})
                continue
            if task is None or task.done():
                task = asyncio.get_running_loop().create_task(self._refresh(self._generation))
                self._task, self._task_generation = task, self._generation
                task.add_done_callback(self._refresh_done)
            return await asyncio.shield(task)  # a cancelled caller leaves the load running

    def snapshot_now(self) -> CatalogSnapshot | None:
        """The current snapshot if `snapshot` would return it without I/O, else None."""
        snap = self._snapshot
        if (
            snap is not None
            and not self._closed
            and self._loaded_generation == self._generation
            and time.monotonic() - self._checked_at < self._recheck
        ):
            return snap
        return None

    def _refresh_done(self, task: asyncio.Task[CatalogSnapshot]) -> None:
        if self._task is task:
            self._task = None
        if not task.cancelled():
            task.exception()  # retrieved: every waiter got it

    async def _refresh(self, generation: int) -> CatalogSnapshot:
        started = time.perf_counter()
        rows = await self._fetch(generation)
        if rows is None:  # the fingerprint is unchanged
            snap = self._snapshot
            assert snap is not None
        else:
            fetched = time.perf_counter()
            try:
                snap = await asyncio.to_thread(  # parsing many views: keep the loop free
                    CatalogSnapshot.build, rows, self._policy, analyzer=self._analyzer
                )
            except Exception as exc:  # a bug: still no statement may pass unanalyzed
                log.error(
                    "pg.catalog.build_failed", database=self._database, error=type(exc).__name__
                )
                raise CatalogUnavailableError(
                    f"the catalog of upstream database {self._database!r} could not be "
                    f"built ({type(exc).__name__}): a bug, report it with the proxy's log"
                ) from exc
            self.loads += 1
            log.info(
                "pg.catalog.loaded",
                database=self._database,
                relations=len(rows.relations),
                columns=len(rows.columns),
                fetch_ms=round((fetched - started) * 1000, 1),
                build_ms=round((time.perf_counter() - fetched) * 1000, 1),
                missing_tables=len(snap.missing_tables()),
                unfollowed_views=len(snap.unfollowed_views()),
            )
            if snap.missing_tables() or snap.missing_columns():
                log.warning(
                    "pg.catalog.policy_not_found",
                    database=self._database,
                    tables=list(snap.missing_tables()),
                    columns=list(snap.missing_columns()),
                    hint="a protected table or column the policy names is not in this database",
                )
        self._snapshot = snap
        self._loaded_generation = generation
        self._checked_at = time.monotonic()
        return snap

    async def _fetch(self, generation: int) -> CatalogRows | None:
        """The catalog's rows; None when the loaded snapshot is still current. A failed
        query is tried once more on a new connection (the old one may have been lost)."""
        for attempt in (1, 2):
            try:
                conn = await self._connection()
            except Exception as exc:
                raise self._unavailable("cannot connect", exc) from exc
            try:
                snap = self._snapshot
                if snap is not None and self._loaded_generation == generation:
                    fingerprint = await conn.fetchval(FINGERPRINT_SQL, timeout=self._timeout)
                    if fingerprint == snap.catalog_fingerprint:
                        return None
                return await fetch_rows(conn, self._timeout)
            except Exception as exc:
                self._drop_connection()
                if attempt == 2:
                    raise self._unavailable("cannot read the catalog", exc) from exc
                log.info("pg.catalog.retry", database=self._database, reason=type(exc).__name__)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connection(self) -> Any:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        self._conn = None
        conn = await asyncio.wait_for(self._connect(), timeout=self._timeout)
        self._conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    def _unavailable(self, what: str, exc: BaseException) -> CatalogUnavailableError:
        return CatalogUnavailableError(
            f"{what} of upstream database {self._database!r} "
            f"({type(exc).__name__}: {exc}); statements cannot be analyzed until it loads: "
            "check that the upstream PostgreSQL is reachable, that the proxy's catalog "
            "credentials are accepted, and that they may read pg_catalog"
        )

    async def close(self) -> None:
        """Close the connection; `snapshot` raises afterwards."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), timeout=self._timeout)
            except Exception:  # closing: nothing more to do
                conn.terminate()


@dataclass
class Catalogs:
    """One `Catalog` per upstream database name, created on first use.

    ``connect_for(database)`` opens an asyncpg connection to that database.
    """

    policy: ColumnPolicy
    connect_for: Callable[[str], Awaitable[Any]]
    recheck_seconds: float = 2.0
    timeout: float = 5.0
    analyzer: ViewAnalyzer | None = None
    _catalogs: dict[str, Catalog] = field(default_factory=dict, init=False, repr=False)

    def get(self, database: str) -> Catalog:
        """The catalog of ``database``."""
        catalog = self._catalogs.get(database)
        if catalog is None:
            connect_for = self.connect_for

            def connect() -> Awaitable[Any]:
                return connect_for(database)

            catalog = Catalog(
                self.policy,
                connect,
                recheck_seconds=self.recheck_seconds,
                timeout=self.timeout,
                database=database,
                analyzer=self.analyzer,
            )
            self._catalogs[database] = catalog
        return catalog

    def set_policy(self, policy: ColumnPolicy) -> None:
        """Use ``policy`` in every catalog from its next snapshot on."""
        self.policy = policy
        for catalog in self._catalogs.values():
            catalog.set_policy(policy)

    async def close(self) -> None:
        """Close every catalog's connection."""
        catalogs = list(self._catalogs.values())
        self._catalogs.clear()
        await asyncio.gather(*(catalog.close() for catalog in catalogs))
