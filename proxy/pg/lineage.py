"""Query lineage: which result columns, predicates and writes of a SQL text touch protected
columns, parsed with PostgreSQL's own parser (pglast / libpg_query).

`analyze` follows every column through aliases, subqueries, CTEs, views, set operations and
expressions, and fails closed: what it does not understand over protected data is refused.
It works on the parser's JSON tree (which keeps token locations). Locations are byte offsets
into the UTF-8 text; `Slot` offsets are converted to character offsets.

Customer ids are only reported (`ColumnLineage.customer_of`) when every protected value of
that table in the result comes from the same row as the id (one *instance* of the table):
``SELECT a.id, b.full_name FROM customers a, customers b`` reports none.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from pglast import parser as pg_parser

from proxy.crypto.tokens import Kind
from proxy.pg.analysis import (
    Analysis,
    ColumnLineage,
    Problem,
    ProblemKind,
    Relation,
    Schema,
    Slot,
    Source,
    Statement,
)

__all__ = ["analyze", "view_relation"]

J = dict[str, Any]
_Inst = tuple[str, int]

# Functions that run SQL text, read whole relations by name or expose statement text.
_REFUSED_FUNCTIONS = frozenset(
    {
        "ts_stat",
        "ts_rewrite",
        "current_query",
        "pg_stat_get_activity",
        "pg_stat_get_backend_activity",
        "connectby",
        "xpath_table",
        "pg_cursor",
        "pg_prepared_statement",
    }
)
_REFUSED_FUNCTION_PREFIXES = (
    "query_to_xml",
    "table_to_xml",
    "cursor_to_xml",
    "schema_to_xml",
    "database_to_xml",
    "dblink",
    "crosstab",
    "pg_stat_statements",
)
# Functions with side effects that would carry their arguments out.
_SIDE_EFFECT_FUNCTIONS = frozenset(
    {
        "pg_notify",
        "pg_logical_emit_message",
        "lo_from_bytea",
        "lo_put",
        "lo_import",
        "lo_export",
        "pg_file_write",
        "set_config",
    }
)
# Relations that expose values (statistics) or statement text (which holds resolved values).
# pg_statistic_ext itself holds only the definitions of extended statistics (psql's \d
# reads it); their values are in pg_statistic_ext_data.
_REFUSED_RELATIONS = frozenset(
    {
        "pg_statistic",
        "pg_statistic_ext_data",
        "pg_stats",
        "pg_stats_ext",
        "pg_stats_ext_exprs",
        "pg_stat_activity",
        "pg_prepared_statements",
        "pg_cursors",
    }
)
_REFUSED_RELATION_PREFIXES = ("pg_stat_statements",)

_PLAIN_CASTS = frozenset({"text", "varchar"})
_ID_CASTS = frozenset({"text", "varchar", "int2", "int4", "int8", "numeric", "uuid"})
_EQ_OPS = frozenset({"=", "<>", "!="})
_BUILTIN_OPS = frozenset(
    [
        "=",
        "<>",
        "!=",
        "<",
        ">",
        "<=",
        ">=",
        "||",
        "+",
        "-",
        "*",
        "/",
        "%",
        "^",
        "~~",
        "!~~",
        "~~*",
        "!~~*",
        "~",
        "!~",
        "~*",
        "!~*",
        "@>",
        "<@",
        "&&",
        "->",
        "->>",
        "#>",
        "#>>",
        "?",
        "?|",
        "?&",
        "@@",
        "@?",
        "#-",
        "|/",
        "||/",
        "@",
        "&",
        "|",
        "#",
        "<<",
        ">>",
        "!!",
        "@-@",
        "<->",
        "<^",
        ">^",
        "?-",
        "?-|",
        "?||",
        "~=",
        "&<",
        "&>",
        "<<|",
        "|>>",
        "&<|",
        "|&>",
        "^@",
    ]
)
# Expression nodes whose value is computed from their children (derived, followed).
_DERIVED_NODES = frozenset(
    {
        "XmlExpr",
        "XmlSerialize",
        "JsonObjectConstructor",
        "JsonArrayConstructor",
        "JsonValueExpr",
        "JsonKeyValue",
        "JsonFuncExpr",
        "JsonIsPredicate",
        "JsonParseExpr",
        "JsonScalarExpr",
        "JsonSerializeExpr",
        "JsonFormat",
        "JsonOutput",
        "JsonReturning",
        "JsonBehavior",
        "TypeName",
        "A_Indices",
        "String",
        "Integer",
        "Float",
        "Boolean",
        "BitString",
        "List",
        "ResTarget",
    }
)
_SRF_COLUMNS = {
    "json_each": ("key", "value"),
    "jsonb_each": ("key", "value"),
    "json_each_text": ("key", "value"),
    "jsonb_each_text": ("key", "value"),
    "pg_options_to_table": ("option_name", "option_value"),
}
_PARAM_RE = re.compile(r'"ParamRef":\{"number":(\d+)')
_COMMENT_PAIR_RE = re.compile(r"([A-Za-z0-9_%.-]+)\s*=\s*'([^']*)'")
_TICKET_KEYS = frozenset({"ticket", "tokenproxy_ticket"})
_TICKET_SETTING = "tokenproxy.ticket"
_RESTRICTED_SETTINGS = {
    "client_encoding": ("utf8", "utf-8", "unicode"),
    "standard_conforming_strings": ("on", "true", "1", "yes"),
}
_DDL_PREFIXES = (
    "Create",
    "Alter",
    "Drop",
    "Rename",
    "Comment",
    "Grant",
    "Define",
    "Index",
    "View",
    "Rule",
    "SecLabel",
    "ImportForeignSchema",
    "CompositeType",
    "Reassign",
)
_TRANSACTION_TAGS = {
    "TRANS_STMT_BEGIN": "BEGIN",
    "TRANS_STMT_START": "START TRANSACTION",
    "TRANS_STMT_COMMIT": "COMMIT",
    "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT",
    "TRANS_STMT_RELEASE": "RELEASE",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK",
    "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
    "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}
_SIMPLE_TAGS = {
    "VariableShowStmt": "SHOW",
    "ListenStmt": "LISTEN",
    "UnlistenStmt": "UNLISTEN",
    "NotifyStmt": "NOTIFY",
    "CheckPointStmt": "CHECKPOINT",
    "LockStmt": "LOCK TABLE",
    "TruncateStmt": "TRUNCATE TABLE",
    "ClosePortalStmt": "CLOSE",
    "DeallocateStmt": "DEALLOCATE",
    "LoadStmt": "LOAD",
    "ReindexStmt": "REINDEX",
    "ClusterStmt": "CLUSTER",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW",
    "ConstraintsSetStmt": "SET CONSTRAINTS",
}
# Statements whose target relation must not be altered when it holds protected columns
# (renames and schema moves escape the policy; triggers, rules, policies, checks and
# expression indexes run code or raise errors over every row).
_GUARDED_DDL = frozenset(
    {
        "AlterTableStmt",
        "RenameStmt",
        "CreateTrigStmt",
        "RuleStmt",
        "CreatePolicyStmt",
        "AlterPolicyStmt",
        "AlterObjectSchemaStmt",
    }
)


class _Refuse(Exception):
    """The statement is refused; the message names what and why, never a value."""


@dataclass(frozen=True, slots=True)
class _Lin:
    """Internal lineage: `ColumnLineage` plus the table instances the value comes from."""

    sources: frozenset[Source] = frozenset()
    plain: bool = False
    cust: frozenset[str] = frozenset()
    inst: frozenset[_Inst] = frozenset()

    @property
    def kind(self) -> Kind | None:
        if self.plain and self.sources:
            kinds = {s.kind for s in self.sources}
            if len(kinds) == 1:
                return next(iter(kinds))
        return None

    @property
    def plain_protected(self) -> bool:
        return self.kind is not None

    def public(self) -> ColumnLineage:
        plain = self.plain and bool(self.sources)
        return ColumnLineage(self.sources, plain, self.cust if self.plain else frozenset())


_CLEAR = _Lin()


def _derive(lins: Iterable[_Lin]) -> _Lin:
    sources: set[Source] = set()
    inst: set[_Inst] = set()
    for lin in lins:
        sources |= lin.sources
        inst |= lin.inst
    if not sources and not inst:
        return _CLEAR
    return _Lin(frozenset(sources), False, frozenset(), frozenset(inst))


def _alt(lins: Sequence[_Lin]) -> _Lin:
    """One of several values (UNION branches, VALUES rows, an ambiguous name)."""
    if len(lins) == 1:
        return lins[0]
    sources = frozenset().union(*(lin.sources for lin in lins))
    inst = frozenset().union(*(lin.inst for lin in lins))
    plain = all(lin.plain or not lin.sources for lin in lins)
    if plain and sources and len({s.kind for s in sources}) != 1:
        plain = False
    cust = frozenset.intersection(*(lin.cust for lin in lins)) if plain else frozenset()
    return _Lin(sources, plain or bool(cust), cust, inst)


def _names(sources: Iterable[Source]) -> str:
    return ", ".join(sorted({f"{s.table}.{s.column}" for s in sources}))


def _node(n: Any) -> tuple[str, J]:
    """The type and fields of a wrapped parse node (``{"Type": {...}}``)."""
    if isinstance(n, dict) and len(n) == 1:
        key = next(iter(n))
        if key[:1].isupper():
            value = n[key]
            return key, value if isinstance(value, dict) else {}
    return "", n if isinstance(n, dict) else {}


def _strs(items: Any) -> list[str]:
    out = []
    for item in items or ():
        t, f = _node(item)
        if t == "String":
            out.append(f.get("sval", ""))
        elif t == "A_Star":
            out.append("*")
    return out


@dataclass(slots=True)
class _Item:
    """A FROM item as seen by name resolution."""

    name: str | None
    cols: list[tuple[str, _Lin]] | None  # None: columns unknown
    default: _Lin = _CLEAR  # the lineage of any column when unknown
    relnames: tuple[str, ...] = ()  # (schema.name, name) of a base relation

    def column(self, name: str) -> _Lin | None:
        if self.cols is None:
            return self.default
        found = [lin for col, lin in self.cols if col == name]
        return _alt(found) if found else None

    def star(self) -> list[tuple[str, _Lin]]:
        return list(self.cols) if self.cols is not None else [(self.name or "?", self.default)]

    def whole(self) -> _Lin:
        return _derive([lin for _, lin in self.star()])


@dataclass(slots=True)
class _Scope:
    parent: _Scope | None = None
    items: list[_Item] = field(default_factory=list)
    star: list[tuple[str, _Lin]] = field(default_factory=list)
    ctes: dict[str, list[tuple[str, _Lin]]] = field(default_factory=dict)

    def cte(self, name: str) -> list[tuple[str, _Lin]] | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.ctes:
                return scope.ctes[name]
            scope = scope.parent
        return None

    def chain(self) -> Iterator[_Scope]:
        scope: _Scope | None = self
        while scope is not None:
            yield scope
            scope = scope.parent


class _Ctx:
    """The state of the analysis of one statement."""

    def __init__(self, sql: str, raw: bytes, schema: Schema, counter: Iterator[int]) -> None:
        self.sql = sql
        self.raw = raw
        self.schema = schema
        self.counter = counter
        self.problems: list[Problem] = []
        self.slots: list[Slot] = []
        self._tokens: dict[int, tuple[int, str]] | None = None

    # -- problems and slots --------------------------------------------------------------

    def problem(self, kind: ProblemKind, detail: str, sources: frozenset[Source]) -> None:
        self.problems.append(Problem(kind, detail, sources))

    def probe(self, where: str, lin: _Lin) -> None:
        if lin.sources:
            self.problem(
                ProblemKind.PROBE,
                f"{where} tests {_names(lin.sources)} by more than equality",
                lin.sources,
            )

    def tokens(self) -> dict[int, tuple[int, str]]:
        """The scanned tokens by character start: (character end, token name)."""
        if self._tokens is None:
            self._tokens = {}
            try:
                scanned = pg_parser.scan(self.sql)
            except pg_parser.ParseError as exc:
                raise _Refuse("cannot scan the statement's literals") from exc
            for tok in scanned:
                self._tokens[tok.start] = (tok.end + 1, tok.name)
        return self._tokens

    def char(self, offset: int) -> int:
        """The character offset of a byte offset of the parse tree."""
        if len(self.raw) == len(self.sql):
            return offset
        return len(self.raw[:offset].decode("utf-8"))

    def slot(self, node: Any, kind: Kind, *, param_only: bool = False) -> None:
        """Record `node` (a literal or $n, maybe cast) compared or assigned as `kind`."""
        t, f = _node(node)
        while t == "TypeCast":
            t, f = _node(f.get("arg"))
        if t == "ParamRef":
            self.slots.append(Slot(kind, param=int(f.get("number", 0))))
            return
        if t != "A_Const" or f.get("isnull") or param_only:
            return
        location = self.char(int(f.get("location", -1)))
        token = self.tokens().get(location)
        if token is None:
            raise _Refuse("cannot locate a literal compared to a protected column")
        end, name = token
        text = self.sql[location:end]
        if "sval" in f:
            if name != "SCONST":
                raise _Refuse(
                    "a Unicode-escaped literal (U&'...') is compared or assigned to a protected "
                    "column; write a plain literal or use a parameter"
                )
            start = location
            tokens = self.tokens()
            for prev_start, (prev_end, prev_name) in tokens.items():
                if prev_end == location and prev_name == "NCHAR":
                    start = prev_start
            value = f["sval"].get("sval", "")
            self.slots.append(Slot(kind, start=start, end=end, value=value))
        elif ("ival" in f or "fval" in f) and kind is Kind.PHONE and text.isdigit():
            self.slots.append(Slot(kind, start=location, end=end, value=text))

    # -- relations -----------------------------------------------------------------------

    def relation(self, rv: J, scope: _Scope) -> _Item:
        relname = rv.get("relname", "")
        schemaname = rv.get("schemaname")
        alias = (rv.get("alias") or {}).get("aliasname")
        colnames = _strs((rv.get("alias") or {}).get("colnames"))
        low = relname.lower()
        if low in _REFUSED_RELATIONS or low.startswith(_REFUSED_RELATION_PREFIXES):
            raise _Refuse(
                f"reading {relname} is not allowed through tokenproxy: it exposes column values "
                "or statement text; ask an administrator"
            )
        cte = None if schemaname else scope.cte(relname)
        if cte is not None:
            cols = self.reinstance(cte)
            return _Item(alias or relname, _rename(cols, colnames))
        rels = self.schema.relations(relname, schemaname)
        if not rels:
            return _Item(alias or relname, None, relnames=(relname,))
        iid = next(self.counter)
        names: list[str] = []
        per: dict[str, list[_Lin]] = {}
        for rel in rels:
            if rel.refusal:
                raise _Refuse(f"reading {rel.qualified}: {rel.refusal}")
            for problem in rel.problems:
                self.problems.append(
                    Problem(problem.kind, f"{rel.qualified}: {problem.detail}", problem.sources)
                )
            for col in rel.columns:
                if col not in per:
                    names.append(col)
                    per[col] = []
                lin = rel.lineage.get(col)
                per[col].append(_from_public(lin, iid) if lin is not None else _CLEAR)
        cols = [(n, _alt(per[n] + [_CLEAR] * (len(rels) - len(per[n])))) for n in names]
        relnames = tuple({r.qualified for r in rels} | {relname})
        return _Item(alias or relname, _rename(cols, colnames), relnames=relnames)

    def reinstance(self, cols: list[tuple[str, _Lin]]) -> list[tuple[str, _Lin]]:
        """A new reference to the same rows: fresh instances, kept consistent per column."""
        mapping: dict[int, int] = {}
        out = []
        for name, lin in cols:
            if lin.inst:
                inst = frozenset(
                    (t, mapping.setdefault(i, next(self.counter))) for t, i in lin.inst
                )
                lin = _Lin(lin.sources, lin.plain, lin.cust, inst)
            out.append((name, lin))
        return out


def _shape(lin: _Lin) -> tuple[frozenset[Source], bool, frozenset[str]]:
    return lin.sources, lin.plain, lin.cust


def _from_public(lin: ColumnLineage, iid: int) -> _Lin:
    tables = {s.table for s in lin.sources} | set(lin.customer_of)
    plain = lin.plain or bool(lin.customer_of)
    return _Lin(lin.sources, plain, lin.customer_of, frozenset((t, iid) for t in tables))


def _rename(cols: list[tuple[str, _Lin]], names: list[str]) -> list[tuple[str, _Lin]]:
    if not names:
        return cols
    return [(names[i] if i < len(names) else n, lin) for i, (n, lin) in enumerate(cols)]


def _cohere(cols: list[tuple[str, _Lin]]) -> list[tuple[str, _Lin]]:
    """Drop customer ids whose table's protected values in the result come from other rows."""
    seen: dict[str, set[int]] = {}
    for _, lin in cols:
        for t, i in lin.inst:
            seen.setdefault(t, set()).add(i)
    bad = {t for t, ids in seen.items() if len(ids) > 1}
    if not bad:
        return cols
    out = []
    for name, lin in cols:
        if lin.cust & bad:
            cust = lin.cust - bad
            lin = _Lin(lin.sources, lin.plain and bool(lin.sources or cust), cust, lin.inst)
        out.append((name, lin))
    return out


def _target_name(rt: J) -> str:
    if rt.get("name"):
        return str(rt["name"])
    t, f = _node(rt.get("val"))
    while t in ("TypeCast", "CollateClause"):
        t, f = _node(f.get("arg"))
    if t == "ColumnRef":
        names = _strs(f.get("fields"))
        return names[-1] if names else "?column?"
    if t == "FuncCall":
        names = _strs(f.get("funcname"))
        return names[-1] if names else "?column?"
    return "?column?"


class _Analyzer:
    """Expressions, predicates and queries of one statement."""

    def __init__(self, ctx: _Ctx) -> None:
        self.ctx = ctx

    # -- expressions ---------------------------------------------------------------------

    def expr(self, node: Any, scope: _Scope) -> _Lin:
        t, f = _node(node)
        if t in ("A_Const", "ParamRef", "SQLValueFunction", "SetToDefault", "GroupingFunc", ""):
            return _CLEAR
        if t == "ColumnRef":
            return self.column(f, scope)
        if t == "TypeCast":
            return _cast(self.expr(f.get("arg"), scope), f.get("typeName") or {})
        if t == "A_Expr":
            return self.a_expr(f, scope)
        if t in ("BoolExpr", "CoalesceExpr", "MinMaxExpr"):
            return _derive(self.expr(a, scope) for a in f.get("args") or ())
        if t in ("NullTest", "BooleanTest", "CollateClause", "NamedArgExpr"):
            lin = self.expr(f.get("arg"), scope)
            return lin if t == "NamedArgExpr" else _derive([lin])
        if t == "FuncCall":
            return self.func(f, scope)
        if t == "CaseExpr":
            lins = [self.expr(f.get("arg"), scope), self.expr(f.get("defresult"), scope)]
            for when in f.get("args") or ():
                _, w = _node(when)
                cond = self.expr(w.get("expr"), scope)
                if f.get("arg") is None:
                    self.pred(w.get("expr"), scope, "CASE WHEN")
                elif cond.sources or lins[0].sources:
                    self.ctx.probe("CASE", _derive([cond, lins[0]]))
                lins += [cond, self.expr(w.get("result"), scope)]
            return _derive(lins)
        if t == "A_ArrayExpr":
            return _derive(self.expr(a, scope) for a in f.get("elements") or ())
        if t == "RowExpr":
            return _derive(self.expr(a, scope) for a in f.get("args") or ())
        if t == "A_Indirection":
            lins = [self.expr(f.get("arg"), scope)]
            lins += [self.generic(i, scope) for i in f.get("indirection") or ()]
            return _derive(lins)
        if t == "SubLink":
            return self.sublink(f, scope)
        if t == "SelectStmt":
            return _derive(lin for _, lin in self.select(f, scope))
        if t == "MultiAssignRef":
            return self.expr(f.get("source"), scope)
        if t in _DERIVED_NODES:
            return self.generic(node, scope)
        lin = self.generic(node, scope)
        if lin.sources:
            raise _Refuse(f"{t or 'an expression'} over protected columns is not supported")
        return lin

    def generic(self, node: Any, scope: _Scope) -> _Lin:
        """The derived lineage of every expression under `node` (its children)."""
        _, f = _node(node)
        lins = []
        for value in f.values():
            if isinstance(value, dict):
                ct, _ = _node(value)
                lins.append(self.expr(value, scope) if ct else self.generic(value, scope))
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, dict):
                        ct, _ = _node(item)
                        lins.append(self.expr(item, scope) if ct else self.generic(item, scope))
        return _derive(lins)

    def column(self, f: J, scope: _Scope) -> _Lin:
        names = _strs(f.get("fields"))
        if not names:
            return self.unknown(scope)
        if names[-1] == "*":
            if len(names) == 1:
                return _derive(lin for _, lin in scope.star)
            item = self.find_item(names[:-1], scope)
            return item.whole() if item else self.unknown(scope)
        if len(names) == 1:
            name = names[0]
            for level in scope.chain():
                known = [
                    lin
                    for it in level.items
                    if it.cols is not None and (lin := it.column(name)) is not None
                ]
                if known:
                    return _alt(known)
                whole = [it for it in level.items if it.name == name]
                if whole:
                    return _derive(it.whole() for it in whole)
                vague = [it.default for it in level.items if it.cols is None]
                if vague:
                    return _alt(vague)
            return self.unknown(scope)
        item = self.find_item(names[:-1], scope)
        if item is None:
            return self.unknown(scope)
        lin = item.column(names[-1])
        return lin if lin is not None else self.unknown(scope)

    def find_item(self, qual: list[str], scope: _Scope) -> _Item | None:
        name = qual[-1]
        full = ".".join(qual[-2:])
        for level in scope.chain():
            for it in level.items:
                if len(qual) == 1 and it.name == name:
                    return it
                if len(qual) > 1 and full in it.relnames:
                    return it
            if len(qual) == 1:
                for it in level.items:
                    if name in it.relnames and it.name == name:
                        return it
        return None

    def unknown(self, scope: _Scope) -> _Lin:
        """A name that does not resolve: conservatively, all protected data in scope."""
        lins = []
        for level in scope.chain():
            for it in level.items:
                lins.append(it.whole())
        return _derive(lins)

    def a_expr(self, f: J, scope: _Scope) -> _Lin:
        lins = [self.expr(f.get("lexpr"), scope)]
        rexpr = f.get("rexpr")
        rt, rf = _node(rexpr)
        if rt == "List":
            lins += [self.expr(i, scope) for i in rf.get("items") or ()]
        elif isinstance(rexpr, list):
            lins += [self.expr(i, scope) for i in rexpr]
        else:
            lins.append(self.expr(rexpr, scope))
        lin = _derive(lins)
        if lin.sources:
            ops = _strs(f.get("name"))
            if f.get("kind") in ("AEXPR_OP", "AEXPR_OP_ANY", "AEXPR_OP_ALL") and (
                len(ops) > 2
                or (len(ops) == 2 and ops[0] != "pg_catalog")
                or (ops and ops[-1] not in _BUILTIN_OPS)
            ):
                raise _Refuse("an operator that is not built in is applied to protected columns")
        return lin

    def func(self, f: J, scope: _Scope) -> _Lin:
        names = _strs(f.get("funcname"))
        fname = names[-1].lower() if names else ""
        fschema = names[-2] if len(names) > 1 else None
        if fname in _REFUSED_FUNCTIONS or fname.startswith(_REFUSED_FUNCTION_PREFIXES):
            raise _Refuse(
                f"{fname}() runs SQL text or exposes statement text or whole relations; "
                "it is not allowed through tokenproxy"
            )
        if self.ctx.schema.is_user_function(names[-1] if names else "", fschema):
            raise _Refuse(
                f"calls the user-defined function {'.'.join(names)}; its body cannot be "
                "followed: ask an administrator to run it"
            )
        args = f.get("args") or ()
        if fname == "set_config":
            _set_config_check(args)
        lins = [self.expr(a, scope) for a in args]
        if f.get("agg_filter") is not None:
            self.pred(f["agg_filter"], scope, "FILTER")
            lins.append(self.expr(f["agg_filter"], scope))
        for sort in f.get("agg_order") or ():
            _, sf = _node(sort)
            self.ctx.probe("an aggregate's ORDER BY", self.expr(sf.get("node"), scope))
        over = f.get("over")
        if over:
            self.window(over, scope)
        lin = _derive(lins)
        if lin.sources and fname in _SIDE_EFFECT_FUNCTIONS:
            raise _Refuse(f"{fname}() would send protected data out of the result")
        if fname == "count" and fschema in (None, "pg_catalog"):
            return _CLEAR
        return lin

    def window(self, w: J, scope: _Scope) -> None:
        for p in w.get("partitionClause") or ():
            self.ctx.probe("a window's PARTITION BY", self.expr(p, scope))
        for sort in w.get("orderClause") or ():
            _, sf = _node(sort)
            self.ctx.probe("a window's ORDER BY", self.expr(sf.get("node"), scope))

    def sublink(self, f: J, scope: _Scope) -> _Lin:
        kind = f.get("subLinkType")
        sub = _Scope(scope)
        cols = self.query(f.get("subselect"), sub)
        if kind == "EXISTS_SUBLINK":
            return _CLEAR
        lins = [lin for _, lin in cols]
        if f.get("testexpr") is not None:
            lins.append(self.expr(f["testexpr"], scope))
        return _derive(lins)

    # -- predicates ----------------------------------------------------------------------

    def pred(self, node: Any, scope: _Scope, where: str) -> None:
        """Check a condition: only equality (and IS NULL) may touch protected values."""
        t, f = _node(node)
        if t == "BoolExpr":
            for a in f.get("args") or ():
                self.pred(a, scope, where)
            return
        if t == "A_Expr":
            kind = f.get("kind")
            ops = _strs(f.get("name"))
            op = ops[-1] if ops and (len(ops) == 1 or ops[0] == "pg_catalog") else ""
            rexpr = f.get("rexpr")
            if (kind == "AEXPR_OP" and op in _EQ_OPS) or kind in (
                "AEXPR_DISTINCT",
                "AEXPR_NOT_DISTINCT",
            ):
                self.equality(f.get("lexpr"), rexpr, scope, where)
                return
            if kind == "AEXPR_IN" and op in _EQ_OPS:
                _, rf = _node(rexpr)
                for item in rf.get("items") or ():
                    self.equality(f.get("lexpr"), item, scope, where)
                return
            if kind in ("AEXPR_OP_ANY", "AEXPR_OP_ALL") and op in _EQ_OPS:
                at, af = _node(rexpr)
                if at == "A_ArrayExpr":
                    for item in af.get("elements") or ():
                        self.equality(f.get("lexpr"), item, scope, where)
                else:
                    self.equality(f.get("lexpr"), rexpr, scope, where, array=True)
                return
        if t == "NullTest":
            lin = self.expr(f.get("arg"), scope)
            if lin.sources and not lin.plain_protected:
                self.ctx.probe(where, lin)
            return
        if t == "SubLink":
            kind = f.get("subLinkType")
            ops = _strs(f.get("operName"))
            if kind == "EXISTS_SUBLINK":
                self.sublink(f, scope)
                return
            if kind in ("ANY_SUBLINK", "ALL_SUBLINK") and (not ops or ops[-1] in _EQ_OPS):
                test = self.expr(f.get("testexpr"), scope)
                cols = self.query(f.get("subselect"), _Scope(scope))
                sub = cols[0][1] if len(cols) == 1 else _derive(lin for _, lin in cols)
                self.equal_lins(test, sub, where)
                return
        self.ctx.probe(where, self.expr(node, scope))

    def equality(
        self, left: Any, right: Any, scope: _Scope, where: str, *, array: bool = False
    ) -> None:
        lt, lf = _node(left)
        rt, rf = _node(right)
        if lt == "RowExpr" and rt == "RowExpr" and not array:
            la, ra = lf.get("args") or [], rf.get("args") or []
            if len(la) == len(ra):
                for a, b in zip(la, ra, strict=True):
                    self.equality(a, b, scope, where)
                return
        ll = self.expr(left, scope)
        rl = self.expr(right, scope)
        if ll.plain_protected and not rl.sources and ll.kind is not None:
            self.ctx.slot(right, ll.kind, param_only=array)
        elif rl.plain_protected and not ll.sources and rl.kind is not None and not array:
            self.ctx.slot(left, rl.kind)
        self.equal_lins(ll, rl, where)

    def equal_lins(self, ll: _Lin, rl: _Lin, where: str) -> None:
        if not ll.sources and not rl.sources:
            return
        if (ll.plain_protected and not rl.sources) or (rl.plain_protected and not ll.sources):
            return
        if ll.plain_protected and rl.plain_protected and ll.kind == rl.kind:
            return
        self.ctx.probe(where, _derive([ll, rl]))

    # -- queries -------------------------------------------------------------------------

    def query(self, node: Any, scope: _Scope) -> list[tuple[str, _Lin]]:
        """The result columns of a row-returning statement node."""
        t, f = _node(node)
        if t == "SelectStmt":
            return self.select(f, scope)
        if t in ("InsertStmt", "UpdateStmt", "DeleteStmt"):
            return self.modify(t, f, scope) or []
        raise _Refuse(f"a {t or 'statement'} in this position is not supported")

    def with_clause(self, f: J, scope: _Scope) -> _Scope:
        wc = f.get("withClause")
        if not wc:
            return scope
        inner = _Scope(scope)
        for cte_node in wc.get("ctes") or ():
            _, c = _node(cte_node)
            name = c.get("ctename", "")
            colnames = _strs(c.get("aliascolnames"))
            qt, qf = _node(c.get("ctequery"))
            if wc.get("recursive") and qt == "SelectStmt" and qf.get("op") == "SETOP_UNION":
                cols = self.recursive(name, colnames, qf, inner)
            else:
                cols = _rename(self.query(c.get("ctequery"), inner), colnames)
            inner.ctes[name] = cols
        return inner

    def recursive(
        self, name: str, colnames: list[str], qf: J, scope: _Scope
    ) -> list[tuple[str, _Lin]]:
        cols = _rename(self.select(qf.get("larg") or {}, scope), colnames)
        for _ in range(6):
            scope.ctes[name] = cols
            right = self.select(qf.get("rarg") or {}, scope)
            if len(right) != len(cols):
                raise _Refuse("a recursive query whose branches differ is not supported")
            merged = [(n, _alt([a, b])) for (n, a), (_, b) in zip(cols, right, strict=True)]
            if [_shape(lin) for _, lin in merged] == [_shape(lin) for _, lin in cols]:
                return merged
            cols = merged
        if any(lin.sources for _, lin in cols):
            raise _Refuse("a recursive query over protected columns that cannot be followed")
        return cols

    def select(self, f: J, parent: _Scope | None) -> list[tuple[str, _Lin]]:
        outer = self.with_clause(f, parent or _Scope())
        op = f.get("op", "SETOP_NONE")
        if op != "SETOP_NONE":
            left = self.select(f.get("larg") or {}, outer)
            right = self.select(f.get("rarg") or {}, outer)
            if len(left) != len(right):
                raise _Refuse("a set operation whose branches differ in width")
            merged = [(n, _alt([a, b])) for (n, a), (_, b) in zip(left, right, strict=True)]
            result = self.ctx.reinstance(merged)
            self.tail(f, _Scope(outer), result)
            return result
        scope = _Scope(outer)
        if f.get("valuesLists"):
            rows: list[list[_Lin]] = []
            for row in f["valuesLists"]:
                _, rf = _node(row)
                rows.append([self.expr(v, scope) for v in rf.get("items") or ()])
            width = max(len(r) for r in rows)
            return [
                (f"column{i + 1}", _alt([r[i] for r in rows if i < len(r)])) for i in range(width)
            ]
        for item in f.get("fromClause") or ():
            scope.star += self.from_item(item, scope)
        if f.get("whereClause") is not None:
            self.pred(f["whereClause"], scope, "WHERE")
        cols: list[tuple[str, _Lin]] = []
        for rt_node in f.get("targetList") or ():
            _, rt = _node(rt_node)
            vt, vf = _node(rt.get("val"))
            if vt == "ColumnRef" and _strs(vf.get("fields"))[-1:] == ["*"]:
                names = _strs(vf.get("fields"))
                if len(names) == 1:
                    cols += scope.star
                else:
                    found = self.find_item(names[:-1], scope)
                    cols += found.star() if found else [("?column?", self.unknown(scope))]
                continue
            cols.append((_target_name(rt), self.expr(rt.get("val"), scope)))
        for g in f.get("groupClause") or ():
            self.group(g, scope, cols)
        if f.get("havingClause") is not None:
            self.pred(f["havingClause"], scope, "HAVING")
        for w in f.get("windowClause") or ():
            _, wf = _node(w)
            self.window(wf, scope)
        for d in f.get("distinctClause") or ():
            if d:
                self.ctx.probe("DISTINCT ON", self.output_ref(d, scope, cols))
        cols = _cohere(cols)
        self.tail(f, scope, cols)
        return cols

    def tail(self, f: J, scope: _Scope, cols: list[tuple[str, _Lin]]) -> None:
        for sort in f.get("sortClause") or ():
            _, sf = _node(sort)
            self.ctx.probe("ORDER BY", self.output_ref(sf.get("node"), scope, cols))
        for key in ("limitCount", "limitOffset"):
            if f.get(key) is not None:
                self.ctx.probe("LIMIT/OFFSET", self.expr(f[key], scope))

    def output_ref(self, node: Any, scope: _Scope, cols: list[tuple[str, _Lin]]) -> _Lin:
        """An ORDER BY / GROUP BY / DISTINCT ON key: an output position or name, or an
        expression."""
        t, f = _node(node)
        if t == "A_Const" and "ival" in f:
            pos = int(f["ival"].get("ival", 0))
            if 1 <= pos <= len(cols):
                return cols[pos - 1][1]
        if t == "ColumnRef":
            names = _strs(f.get("fields"))
            if len(names) == 1:
                matches = [lin for n, lin in cols if n == names[0]]
                if matches and not any(
                    it.cols is not None and it.column(names[0]) is not None for it in scope.items
                ):
                    return _alt(matches)
        return self.expr(node, scope)

    def group(self, g: Any, scope: _Scope, cols: list[tuple[str, _Lin]]) -> None:
        t, f = _node(g)
        if t == "GroupingSet":
            for c in f.get("content") or ():
                self.group(c, scope, cols)
            return
        if t == "RowExpr":
            for a in f.get("args") or ():
                self.group(a, scope, cols)
            return
        lin = self.output_ref(g, scope, cols)
        if lin.sources and not lin.plain_protected:
            self.ctx.probe("GROUP BY", lin)

    def from_item(self, node: Any, scope: _Scope) -> list[tuple[str, _Lin]]:
        """Add a FROM item's names to `scope`; return its columns for ``*``."""
        t, f = _node(node)
        if t == "RangeVar":
            item = self.ctx.relation(f, scope)
            scope.items.append(item)
            return item.star()
        if t == "RangeSubselect":
            alias = f.get("alias") or {}
            sub_scope = scope if f.get("lateral") else (scope.parent or _Scope())
            cols = _rename(
                self.query(f.get("subquery"), _Scope(sub_scope)), _strs(alias.get("colnames"))
            )
            item = _Item(alias.get("aliasname"), cols)
            scope.items.append(item)
            return item.star()
        if t == "JoinExpr":
            return self.join(f, scope)
        if t == "RangeFunction":
            return self.range_function(f, scope)
        if t == "RangeTableSample":
            cols = self.from_item(f.get("relation"), scope)
            for a in f.get("args") or ():
                self.ctx.probe("TABLESAMPLE", self.expr(a, scope))
            return cols
        lin = self.generic(node, scope)
        if lin.sources:
            raise _Refuse(f"{t or 'a FROM item'} over protected columns is not supported")
        alias = (f.get("alias") or {}).get("aliasname")
        item = _Item(alias, None)
        scope.items.append(item)
        return item.star()

    def join(self, f: J, scope: _Scope) -> list[tuple[str, _Lin]]:
        left = self.from_item(f.get("larg"), scope)
        right = self.from_item(f.get("rarg"), scope)
        using = _strs(f.get("usingClause"))
        if f.get("isNatural"):
            rnames = {n for n, _ in right}
            using = [n for n, _ in left if n in rnames]
        if f.get("quals") is not None:
            self.pred(f["quals"], scope, "JOIN ON")
        cols: list[tuple[str, _Lin]]
        if using:
            lmap = {n: lin for n, lin in left}
            rmap = {n: lin for n, lin in right}
            for n in using:
                self.equal_lins(lmap.get(n, _CLEAR), rmap.get(n, _CLEAR), "JOIN USING")
            merged = [(n, _alt([lmap.get(n, _CLEAR), rmap.get(n, _CLEAR)])) for n in using]
            cols = merged + [c for c in left if c[0] not in using]
            cols += [c for c in right if c[0] not in using]
        else:
            cols = left + right
        alias = f.get("alias")
        if alias:
            scope.items.append(
                _Item(alias.get("aliasname"), _rename(cols, _strs(alias.get("colnames"))))
            )
        return cols

    def range_function(self, f: J, scope: _Scope) -> list[tuple[str, _Lin]]:
        lins = []
        width = 0
        first = ""
        implicit: list[str] = []
        for entry in f.get("functions") or ():
            _, ef = _node(entry)
            items = ef.get("items") or []
            call = items[0] if items else None
            ct, cf = _node(call)
            lins.append(self.expr(call, scope))
            if ct == "FuncCall":
                fname = (_strs(cf.get("funcname")) or [""])[-1]
                first = first or fname
                known = _SRF_COLUMNS.get(fname, ())
                n = len(known) or 1
                if fname == "unnest":
                    n = max(1, len(cf.get("args") or ()))
                implicit += list(known) or [fname] * n
                width += n
            else:
                implicit.append("?column?")
                width += 1
        lin = _derive(lins)
        alias = f.get("alias") or {}
        names = _strs(alias.get("colnames"))
        for cd in f.get("coldeflist") or ():
            _, cdf = _node(cd)
            names.append(cdf.get("colname", ""))
        if f.get("ordinality"):
            width += 1
        width = max(width, len(names))
        aliasname = alias.get("aliasname") or first
        if f.get("ordinality"):
            implicit.append("ordinality")
        if len(f.get("functions") or ()) == 1 and len(implicit) == 1 and not names:
            implicit = [aliasname]
        names += implicit[len(names) :]
        cols = [(names[i] if i < len(names) else f"column{i + 1}", lin) for i in range(width)]
        item = _Item(aliasname, cols, default=lin)
        scope.items.append(item)
        return cols

    # -- writes --------------------------------------------------------------------------

    def written(self, target: str, col: str, lin: _Lin) -> None:
        if lin.sources:
            self.ctx.problem(
                ProblemKind.PROTECTED_WRITE,
                f"{target}.{col} is written from {_names(lin.sources)}",
                lin.sources,
            )

    def assign(self, item: _Item, col: str, node: Any, lin: _Lin) -> None:
        target_lin = item.column(col)
        if target_lin is not None and target_lin.kind is not None and not lin.sources:
            self.ctx.slot(node, target_lin.kind)

    def modify(self, t: str, f: J, parent: _Scope) -> list[tuple[str, _Lin]] | None:
        """INSERT, UPDATE or DELETE; returns the RETURNING columns (None without)."""
        scope = _Scope(self.with_clause(f, parent))
        target = self.ctx.relation(f.get("relation") or {}, scope)
        tname = target.relnames[0] if target.relnames else (target.name or "?")
        scope.items.append(target)
        new: dict[str, _Lin] = {}
        if t == "InsertStmt":
            self.insert(f, scope, target, tname, new)
        elif t == "UpdateStmt":
            for item in f.get("fromClause") or ():
                scope.star += self.from_item(item, scope)
            self.set_list(f.get("targetList") or (), scope, target, tname, new)
        else:
            for item in f.get("usingClause") or ():
                scope.star += self.from_item(item, scope)
        if f.get("whereClause") is not None:
            self.pred(f["whereClause"], scope, "WHERE")
        returning = (f.get("returningClause") or {}).get("exprs") or f.get("returningList")
        if not returning:
            return None
        cols_now = []
        for n, lin in target.star():
            if n in new and not lin.sources and not lin.cust:
                lin = new[n]
            cols_now.append((n, lin))
        rscope = _Scope(scope.parent)
        rscope.items = [
            _Item(target.name, cols_now, relnames=target.relnames),
            _Item("old", target.star()),
            _Item("new", cols_now),
            *scope.items[1:],
        ]
        rscope.star = cols_now + scope.star
        out: list[tuple[str, _Lin]] = []
        for rt_node in returning:
            _, rt = _node(rt_node)
            vt, vf = _node(rt.get("val"))
            if vt == "ColumnRef" and _strs(vf.get("fields"))[-1:] == ["*"]:
                names = _strs(vf.get("fields"))
                found = self.find_item(names[:-1], rscope) if len(names) > 1 else None
                out += found.star() if found else cols_now
                continue
            out.append((_target_name(rt), self.expr(rt.get("val"), rscope)))
        return _cohere(out)

    def insert(self, f: J, scope: _Scope, target: _Item, tname: str, new: dict[str, _Lin]) -> None:
        cols = [_node(c)[1].get("name", "") for c in f.get("cols") or ()]
        if not cols:
            cols = [n for n, _ in target.star()]
        st, sf = _node(f.get("selectStmt"))
        values_scope = _Scope(scope.parent)
        if (
            st == "SelectStmt"
            and sf.get("valuesLists")
            and sf.get("op", "SETOP_NONE") == ("SETOP_NONE")
        ):
            per: dict[str, list[_Lin]] = {}
            for row in sf["valuesLists"]:
                _, rf = _node(row)
                for i, v in enumerate(rf.get("items") or ()):
                    col = cols[i] if i < len(cols) else f"?{i}"
                    lin = self.expr(v, values_scope)
                    self.written(tname, col, lin)
                    self.assign(target, col, v, lin)
                    per.setdefault(col, []).append(lin)
            new.update({c: _alt(lins) for c, lins in per.items()})
        elif st == "SelectStmt":
            out = self.select(sf, values_scope)
            plain_targets = (sf.get("targetList") or ()) if not sf.get("fromClause") else ()
            for i, (_, lin) in enumerate(out):
                col = cols[i] if i < len(cols) else f"?{i}"
                self.written(tname, col, lin)
                new[col] = lin
                if sf.get("op", "SETOP_NONE") == "SETOP_NONE" and i < len(plain_targets):
                    _, rt = _node(plain_targets[i])
                    self.assign(target, col, rt.get("val"), lin)
        oc = f.get("onConflictClause")
        if oc:
            excluded = _Item("excluded", [(n, new.get(n, _CLEAR)) for n, _ in target.star()])
            cscope = _Scope(scope.parent, [target, excluded])
            infer = oc.get("infer") or {}
            if infer.get("whereClause") is not None:
                self.pred(infer["whereClause"], cscope, "ON CONFLICT WHERE")
            self.set_list(oc.get("targetList") or (), cscope, target, tname, new)
            if oc.get("whereClause") is not None:
                self.pred(oc["whereClause"], cscope, "ON CONFLICT WHERE")

    def set_list(
        self,
        targets: Iterable[Any],
        scope: _Scope,
        target: _Item,
        tname: str,
        new: dict[str, _Lin],
    ) -> None:
        for rt_node in targets:
            _, rt = _node(rt_node)
            col = rt.get("name", "")
            val = rt.get("val")
            vt, vf = _node(val)
            if vt == "MultiAssignRef":
                st, sf = _node(vf.get("source"))
                colno = int(vf.get("colno", 1))
                if st == "RowExpr" and colno <= len(sf.get("args") or ()):
                    val = sf["args"][colno - 1]
            lin = self.expr(val, scope)
            if rt.get("indirection"):
                lin = _derive([lin, self.generic({"List": {"items": rt["indirection"]}}, scope)])
            self.written(tname, col, lin)
            self.assign(target, col, val, lin)
            new[col] = lin


def _cast(lin: _Lin, type_name: J) -> _Lin:
    names = _strs(type_name.get("names"))
    tname = names[-1] if names else ""
    unbounded = not type_name.get("typmods") and not type_name.get("arrayBounds")
    if unbounded and tname in _PLAIN_CASTS and (len(names) == 1 or names[0] == "pg_catalog"):
        return lin
    if lin.cust and unbounded and tname in _ID_CASTS and not lin.sources:
        return lin
    return _derive([lin])


def _set_config_check(args: Sequence[Any]) -> None:
    t, f = _node(args[0]) if args else ("", {})
    if t != "A_Const" or "sval" not in f:
        raise _Refuse("set_config() with a computed setting name is not allowed")
    name = str(f["sval"].get("sval", "")).lower()
    if name.startswith("tokenproxy."):
        raise _Refuse("set the ticket with SET tokenproxy.ticket = '...', not set_config()")
    if name in _RESTRICTED_SETTINGS:
        raise _Refuse(f"{name} cannot be changed through tokenproxy")


def _copy_options(options: Sequence[Any]) -> tuple[str, str | None, bool, list[str]]:
    fmt, delimiter, header = "text", None, False
    others: list[str] = []
    for opt in options:
        _, o = _node(opt)
        name = str(o.get("defname", "")).lower()
        at, af = _node(o.get("arg"))
        value: Any
        if at == "String":
            value = af.get("sval", "")
        elif at == "Boolean":
            value = bool(af.get("boolval", False))
        elif at == "Integer":
            value = int(af.get("ival", 0))
        else:
            value = None
        if name == "format":
            fmt = str(value).lower()
        elif name == "delimiter":
            delimiter = str(value)
        elif name == "header":
            header = (
                value is None
                or value is True
                or value == 1
                or (isinstance(value, str) and value.lower() in ("true", "on", "1", "yes", "match"))
            )
        else:
            others.append(name)
    return fmt, delimiter, header, others


class _StatementAnalyzer(_Analyzer):
    """One top-level statement, to a `Statement`."""

    def run(self, t: str, f: J) -> Statement:
        tag = _tag(t, f)
        try:
            st = self.dispatch(t, f, tag)
        except _Refuse as exc:
            return Statement(tag=tag, refusal=str(exc), ddl=_is_ddl(t))
        except RecursionError:
            return Statement(tag=tag, refusal="the statement is nested too deeply to follow")
        except Exception:  # fail closed: a statement the analyzer trips on is refused
            return Statement(tag=tag, refusal="tokenproxy could not follow this statement")
        return st

    def finish(self, tag: str, outputs: list[tuple[str, _Lin]] | None, **kw: Any) -> Statement:
        if outputs is not None:
            for name, lin in outputs:
                if lin.sources and lin.kind is None:
                    self.ctx.problem(
                        ProblemKind.DERIVED_OUTPUT,
                        f"result column {name} is computed from {_names(lin.sources)}",
                        lin.sources,
                    )
        public = tuple(lin.public() for _, lin in outputs) if outputs is not None else None
        return Statement(
            tag=tag,
            outputs=public,
            problems=tuple(dict.fromkeys(self.ctx.problems)),
            slots=tuple(dict.fromkeys(self.ctx.slots)),
            **kw,
        )

    def dispatch(self, t: str, f: J, tag: str) -> Statement:
        if t == "SelectStmt":
            cols = self.select(f, None)
            if f.get("intoClause"):
                for name, lin in cols:
                    self.written("SELECT INTO", name, lin)
                return self.finish(tag, None, ddl=True)
            return self.finish(tag, cols)
        if t in ("InsertStmt", "UpdateStmt", "DeleteStmt"):
            return self.finish(tag, self.modify(t, f, _Scope()))
        if t == "MergeStmt":
            return self.merge(f, tag)
        if t == "ExplainStmt":
            qt, qf = _node(f.get("query"))
            inner = _StatementAnalyzer(self.ctx).dispatch(qt, qf, _tag(qt, qf))
            if inner.refusal:
                raise _Refuse(inner.refusal)
            return Statement(tag=tag, problems=inner.problems)
        if t == "DeclareCursorStmt":
            cols = self.query(f.get("query"), _Scope())
            return self.finish(tag, cols, cursor=f.get("portalname"))
        if t == "PrepareStmt":
            qt, qf = _node(f.get("query"))
            inner = _StatementAnalyzer(self.ctx).dispatch(qt, qf, _tag(qt, qf))
            if inner.refusal:
                raise _Refuse(inner.refusal)
            return Statement(
                tag=tag,
                outputs=inner.outputs,
                problems=inner.problems,
                slots=inner.slots,
                prepare=f.get("name", ""),
            )
        if t == "ExecuteStmt":
            for p in f.get("params") or ():
                self.expr(p, _Scope())
            return Statement(tag=tag, execute=f.get("name", ""))
        if t == "FetchStmt":
            return Statement(tag=tag, fetch=f.get("portalname", ""))
        if t == "CopyStmt":
            return self.copy(f, tag)
        if t == "VariableSetStmt":
            return _variable_set(f, tag)
        if t == "DiscardStmt":
            return Statement(tag=tag, reset_ticket=f.get("target") == "DISCARD_ALL")
        if t == "DoStmt":
            raise _Refuse("DO blocks cannot be followed; ask an administrator to run them")
        if t == "CallStmt":
            raise _Refuse("CALL runs a procedure that cannot be followed; ask an administrator")
        if t == "CreateTableAsStmt":
            qt, qf = _node(f.get("query"))
            if qt != "SelectStmt":
                raise _Refuse("CREATE TABLE AS with anything but a query is not supported")
            cols = self.select(qf, None)
            if not (f.get("into") or {}).get("skipData"):
                for name, lin in cols:
                    self.written("CREATE TABLE AS", name, lin)
            return self.finish(tag, None, ddl=True)
        if t in ("VariableShowStmt",):
            return Statement(tag=tag, outputs=(ColumnLineage(),))
        if t in _GUARDED_DDL or t == "IndexStmt":
            self.guard_ddl(t, f)
        if _is_ddl(t):
            return Statement(tag=tag, ddl=True)
        if t in _SIMPLE_TAGS or t in ("TransactionStmt", "VacuumStmt"):
            return Statement(tag=tag)
        lin = self.generic({t: f}, _Scope())
        if lin.sources:
            raise _Refuse(f"{tag} over protected columns is not supported")
        return self.finish(tag, None)

    def guard_ddl(self, t: str, f: J) -> None:
        rv = f.get("relation") or f.get("table")
        if not isinstance(rv, dict):
            return
        item = self.ctx.relation(rv, _Scope())
        if not any(lin.sources or lin.cust for _, lin in item.star()):
            return
        if t == "IndexStmt":
            exprs = [p for p in f.get("indexParams") or () if _node(p)[1].get("expr")]
            if not exprs and f.get("whereClause") is None:
                return
        raise _Refuse(
            f"{_tag(t, f)} on a relation with protected columns must be run by an administrator"
        )

    def merge(self, f: J, tag: str) -> Statement:
        scope = _Scope(self.with_clause(f, _Scope()))
        target = self.ctx.relation(f.get("relation") or {}, scope)
        scope.items.append(target)
        source_cols = self.from_item(f.get("sourceRelation"), scope)
        if any(lin.sources or lin.cust for _, lin in target.star() + source_cols):
            raise _Refuse("MERGE over protected columns is not supported; use INSERT or UPDATE")
        lin = self.generic({"MergeStmt": f}, scope)
        if lin.sources:
            raise _Refuse("MERGE over protected columns is not supported; use INSERT or UPDATE")
        return self.finish(tag, None)

    def copy(self, f: J, tag: str) -> Statement:
        fmt, delimiter, header, others = _copy_options(f.get("options") or ())
        if fmt not in ("text", "csv", "binary"):
            raise _Refuse("COPY in an unknown format is not supported")
        to_stdout = not f.get("is_from") and not f.get("filename") and not f.get("is_program")
        from_stdin = f.get("is_from") and not f.get("filename") and not f.get("is_program")
        scope = _Scope()
        if f.get("query") is not None:
            cols = self.query(f["query"], scope)
        else:
            item = self.ctx.relation(f.get("relation") or {}, scope)
            scope.items.append(item)
            attlist = _strs(f.get("attlist"))
            all_cols = item.star()
            if attlist:
                cols = [(a, _or(item.column(a), self.unknown(scope))) for a in attlist]
            else:
                cols = all_cols
            if f.get("whereClause") is not None:
                self.pred(f["whereClause"], scope, "COPY WHERE")
        protected = any(lin.sources or lin.cust for _, lin in cols)
        if protected and not (to_stdout or from_stdin):
            raise _Refuse(
                "COPY of protected columns to or from a file or program is not allowed; "
                "use COPY ... TO STDOUT or FROM STDIN"
            )
        bad = [o for o in others if o in ("quote", "escape", "encoding")]
        if protected and bad:
            raise _Refuse(f"COPY of protected columns with option {bad[0]} is not supported")
        common: dict[str, Any] = {
            "copy_format": fmt,
            "copy_delimiter": delimiter,
            "copy_header": header,
        }
        if f.get("is_from"):
            into = tuple(lin.public() for _, lin in cols)
            return self.finish(
                tag,
                None,
                copy_from_stdin=bool(from_stdin and protected),
                copy_into=into,
                **common,
            )
        return self.finish(tag, cols, copy_to_stdout=to_stdout, **common)


def _variable_set(f: J, tag: str) -> Statement:
    kind = f.get("kind")
    name = str(f.get("name") or "").lower()
    if kind == "VAR_RESET_ALL":
        return Statement(tag=tag, reset_ticket=True)
    if name == _TICKET_SETTING:
        if kind in ("VAR_SET_DEFAULT", "VAR_RESET"):
            return Statement(tag=tag, reset_ticket=True)
        args = f.get("args") or []
        if kind != "VAR_SET_VALUE" or len(args) != 1:
            raise _Refuse("set the ticket with SET tokenproxy.ticket = 'SUP-123'")
        value = _const_str(args[0])
        if value is None:
            raise _Refuse("set the ticket with SET tokenproxy.ticket = 'SUP-123'")
        return Statement(tag=tag, set_ticket=value)
    if name in _RESTRICTED_SETTINGS and kind in ("VAR_SET_VALUE", "VAR_SET_CURRENT"):
        values = [_const_str(a) for a in f.get("args") or ()]
        if len(values) != 1 or str(values[0]).lower() not in _RESTRICTED_SETTINGS[name]:
            raise _Refuse(f"{name} cannot be changed through tokenproxy")
    return Statement(tag=tag)


def _const_str(node: Any) -> str | None:
    _, f = _node(node)
    if "sval" in f:
        return str(f["sval"].get("sval", ""))
    if "ival" in f:
        return str(f["ival"].get("ival", 0))
    return None


def _or(lin: _Lin | None, fallback: _Lin) -> _Lin:
    return lin if lin is not None else fallback


def _is_ddl(t: str) -> bool:
    return t.startswith(_DDL_PREFIXES) or t in ("GrantRoleStmt",)


def _tag(t: str, f: J) -> str:
    simple = {
        "SelectStmt": "SELECT",
        "InsertStmt": "INSERT",
        "UpdateStmt": "UPDATE",
        "DeleteStmt": "DELETE",
        "MergeStmt": "MERGE",
        "CopyStmt": "COPY",
        "ExplainStmt": "EXPLAIN",
        "DeclareCursorStmt": "DECLARE CURSOR",
        "PrepareStmt": "PREPARE",
        "ExecuteStmt": "EXECUTE",
        "DoStmt": "DO",
        "CallStmt": "CALL",
        "CreateStmt": "CREATE TABLE",
        "ViewStmt": "CREATE VIEW",
        "IndexStmt": "CREATE INDEX",
        "RuleStmt": "CREATE RULE",
        "GrantStmt": "GRANT",
        "GrantRoleStmt": "GRANT",
        "CommentStmt": "COMMENT",
        "CreateTrigStmt": "CREATE TRIGGER",
        "CreateFunctionStmt": "CREATE FUNCTION",
    }
    if t in simple:
        if t in ("GrantStmt", "GrantRoleStmt") and not f.get("is_grant"):
            return "REVOKE"
        return simple[t]
    if t in _SIMPLE_TAGS:
        return _SIMPLE_TAGS[t]
    if t == "TransactionStmt":
        return _TRANSACTION_TAGS.get(str(f.get("kind")), "OTHER")
    if t == "FetchStmt":
        return "MOVE" if f.get("ismove") else "FETCH"
    if t == "VariableSetStmt":
        return "RESET" if str(f.get("kind", "")).startswith("VAR_RESET") else "SET"
    if t == "DiscardStmt":
        return "DISCARD " + str(f.get("target", "DISCARD_ALL")).removeprefix("DISCARD_")
    if t == "VacuumStmt":
        return "VACUUM" if f.get("is_vacuumcmd") else "ANALYZE"
    if t == "CreateTableAsStmt":
        if f.get("objtype") == "OBJECT_MATVIEW":
            return "CREATE MATERIALIZED VIEW"
        return "CREATE TABLE AS"
    if t == "DropStmt":
        return "DROP " + str(f.get("removeType", "")).removeprefix("OBJECT_").replace("_", " ")
    if _is_ddl(t):
        words = re.findall(r"[A-Z][a-z]*", t.removesuffix("Stmt"))
        return " ".join(words).upper() or "OTHER"
    return "OTHER"


def _ticket(sql: str) -> str | None:
    """The ticket of an sqlcommenter comment (``/*ticket='SUP-1'*/``); None if none or
    several different ones."""
    if "/*" not in sql:
        return None
    try:
        tokens = pg_parser.scan(sql)
    except pg_parser.ParseError:
        return None
    found: set[str] = set()
    for tok in tokens:
        if tok.name != "C_COMMENT":
            continue
        text = sql[tok.start : tok.end + 1]
        for key, value in _COMMENT_PAIR_RE.findall(text[2:-2]):
            if unquote(key).lower() in _TICKET_KEYS:
                found.add(unquote(value).strip())
    found.discard("")
    return found.pop() if len(found) == 1 else None


def analyze(sql: str, schema: Schema) -> Analysis:
    """The lineage analysis of one SQL text (one or several statements). Never raises on
    SQL input: what cannot be parsed or followed is a refused statement."""
    ticket = _ticket(sql)
    try:
        tree = pg_parser.parse_sql_json(sql)
        stmts = json.loads(tree).get("stmts") or ()
    except (pg_parser.ParseError, ValueError, UnicodeError, RecursionError):
        return Analysis(
            (
                Statement(
                    tag="OTHER",
                    refusal="cannot parse the statement; tokenproxy refuses what it cannot "
                    "follow: check the syntax",
                ),
            ),
            ticket,
        )
    params = max((int(n) for n in _PARAM_RE.findall(tree)), default=0)
    raw = sql.encode("utf-8")
    counter = itertools.count(1)
    statements = []
    for raw_stmt in stmts:
        t, f = _node(raw_stmt.get("stmt"))
        ctx = _Ctx(sql, raw, schema, counter)
        statements.append(_StatementAnalyzer(ctx).run(t, f))
    return Analysis(tuple(statements), ticket, params)


def view_relation(
    schema_name: str, name: str, columns: Sequence[str], definition: str, schema: Schema
) -> Relation:
    """The Relation of a view: its columns' lineage from the analysis of its definition
    (``pg_get_viewdef`` text), its probes, or a refusal when it cannot be followed."""
    cols = tuple(columns)
    qualified = f"{schema_name}.{name}"
    try:
        tree = json.loads(pg_parser.parse_sql_json(definition)).get("stmts") or []
    except (pg_parser.ParseError, ValueError, UnicodeError, RecursionError):
        tree = []
    refusal: str | None = None
    lineage: dict[str, ColumnLineage] = {}
    problems: tuple[Problem, ...] = ()
    if len(tree) != 1:
        refusal = "its definition cannot be parsed"
    else:
        t, f = _node(tree[0].get("stmt"))
        ctx = _Ctx(definition, definition.encode("utf-8"), schema, itertools.count(1))
        analyzer = _StatementAnalyzer(ctx)
        try:
            if t != "SelectStmt":
                raise _Refuse("its definition is not a query")
            outs = analyzer.select(f, None)
            if len(outs) != len(cols):
                raise _Refuse("its definition does not match its columns")
            for col, (_, lin) in zip(cols, outs, strict=True):
                if lin.sources or (lin.plain and lin.cust):
                    lineage[col] = lin.public()
            problems = tuple(dict.fromkeys(p for p in ctx.problems if p.kind is ProblemKind.PROBE))
        except _Refuse as exc:
            refusal = str(exc)
        except RecursionError:
            refusal = "its definition is nested too deeply to follow"
        except Exception:  # fail closed
            refusal = "its definition could not be followed"
    if refusal is not None:
        return Relation(schema_name, name, cols, {}, "v", refusal=f"view {qualified}: {refusal}")
    return Relation(schema_name, name, cols, lineage, "v", problems=problems)
