"""Records: the protected values of a parsed JSON body, each with its record's customer id.

:func:`extract_records` is what a front end calls on a parsed body (responses to tokenize,
requests to resolve). It returns :class:`Record` objects grouping :class:`FieldValue` s by
the record they belong to, where each value's *location* says where to write it back.

**Pairing values with customer ids.**

- Route fields: the route's ``customer_id`` path is instantiated with the field match's
  wildcard indices: the k-th ``[*]`` of the id path takes the value of the field's k-th
  ``[*]``, so ``$.customers[3].full_name`` pairs with ``$.customers[3].id``, and an id path
  without wildcards (``$.id``) pairs with every field. If either path uses ``..``, the id
  whose object is the closest enclosing ancestor of the field is used. No id there, or
  several: the record has no customer id (it is never revealed).
- The default rule: the sibling key of ``customer_id_fields`` (see ``proxy.policy.fields``).
- A route's body is *also* scanned by the default rule; a location a route field covers
  takes the route's kind and id, every other protected key the default rule's.

**Customer ids** are normalised by :func:`proxy.policy.tickets.customer_key`: a JSON number
``42`` and a string ``"42"`` are the same customer; a bool, float, null, object or array, or a
string that is empty, longer than 200 or holds control characters, is no id (None: never
revealed).

**Values that are not strings.** Fail closed, and keep the JSON shape where possible:

- ``null`` and ``true``/``false`` stay as they are (nothing to tokenize);
- an empty string is skipped (nothing to hide);
- a number is tokenized from its decimal text (a phone stored as a JSON number is still a
  phone) and written back as a *number* when the token is one with the same number of
  digits (phone tokens are digits, so usually it is); when it is not (a token with a
  leading zero, say) it is written back as the token string: the JSON type changes, the
  value does not leak. See :func:`json_value`;
- an object or array under a protected key protects every string and number leaf inside
  with the same kind (``"phone": {"home": ..., "work": ...}``, ``"names": [...]``), except
  that a nested key the default rule knows uses its own kind (``"contact": {"name": ...}``
  under a phone key is a name). Keys are not values: object keys are left as they are.
"""

# ruff: noqa: RUF005  (see the note above _Builder)
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from itertools import compress, repeat
from operator import itemgetter
from typing import Any, Literal, NamedTuple

from proxy.crypto.tokens import Kind
from proxy.errors import InvalidInputError
from proxy.policy.fields import DEFAULT_FIELDS, DefaultFields, ObjectPlan
from proxy.policy.jsonpath import KEY, WILD, JsonPath, Location
from proxy.policy.routes import RecordShape, Route
from proxy.policy.tickets import customer_key, is_customer_key

__all__ = [
    "FieldValue",
    "JsonType",
    "Record",
    "customer_id_of",
    "extract_records",
    "json_value",
]

JsonType = Literal["string", "int", "float"]

_INT_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_FLOAT_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
_PLANNED_KEYS = 64  # objects up to this many keys are scanned by a cached plan
_CONTAINERS = (dict, list)  # a tuple: isinstance on it is twice as fast as on dict | list
_UNIFORM_MIN = 2  # lists of at least this many objects try the column-wise path (_Builder.uniform)
_DICT_ONLY = frozenset((dict,))
_INT_ONLY = frozenset((int,))
_NONE_TYPE = type(None)
_PLAIN_STRINGS = frozenset((str, _NONE_TYPE))  # a protected column the column-wise path takes
_SCALARS = frozenset((str, int, float, bool, _NONE_TYPE))  # JSON leaves: nothing to walk into


class FieldValue(NamedTuple):
    """One protected value: where it is, its kind, its text, and its JSON type."""

    location: Location
    kind: Kind
    value: str
    json_type: JsonType = "string"


class Record(NamedTuple):
    """The protected values of one record, and its customer id (None: never revealed)."""

    customer_id: str | None
    fields: list[FieldValue]

    @property
    def known_names(self) -> tuple[str, ...]:
        """The record's name values: the names to look for in its free text."""
        return tuple(f.value for f in self.fields if f.kind is Kind.NAME)


# FieldValue(...) through NamedTuple's Python-level __new__ costs twice this C call; the hot
# loops build thousands per body.
_field: Callable[[type[FieldValue], tuple[Any, ...]], FieldValue] = (
    tuple.__new__
)
_first = itemgetter(0)
_second = itemgetter(1)
_third = itemgetter(2)
_BATCH = object()  # the customer id slot of a group that holds a uniform list's Records


def customer_id_of(value: object) -> str | None:
    """A JSON value as a customer id, or None if it cannot be one (never guessed)."""
    if type(value) is int:
        return str(value)
    if isinstance(value, str):
        return value if is_customer_key(value) else None
    if value is None or isinstance(value, bool | float):
        return None
    try:
        return customer_key(value)
    except InvalidInputError:
        return None


def json_value(field: FieldValue, text: str) -> str | int | float:
    """``text`` (a token, or a resolved value) as the JSON value to write at ``field``.

    A string stays a string. A number is written back as a number when ``text`` is one of
    the same form and digit count; otherwise as the string (never the original value).
    """
    if field.json_type == "string":
        return text
    if field.json_type == "int":
        if _INT_TEXT.match(text) and len(text) == len(field.value):
            return int(text)
        return text
    if _FLOAT_TEXT.match(text) and len(text) == len(field.value):
        number = float(text)
        if math.isfinite(number):
            return number
    return text


def extract_records(
    doc: Any, route: Route | None = None, defaults: DefaultFields = DEFAULT_FIELDS
) -> list[Record]:
    """The protected values of ``doc`` grouped by record, in document order (see module doc).

    ``doc`` is parsed JSON as ``json``/``orjson`` produce it (dict with str keys, list, str,
    int, float, bool, None); anything else under a protected key raises InvalidInputError.
    """
    if route is None or not route.fields:
        builder = _Builder(defaults)
        builder.scan(doc)
        return builder.records()
    shape = route.shape
    if shape is not None:
        # The records are the objects the route's prefix matches: one pass does both rules.
        overlay = _record_locations(shape.records, doc)
        builder = _Builder(defaults, shape, overlay)
        builder.scan(doc)
        if builder.overlaid == len(overlay):
            return builder.records()
        # A record sat inside a value the default rule protects whole (so the scan did not
        # visit it): fall back to the general way, which pairs the route's fields first.
    builder = _Builder(defaults)
    builder.route(doc, route)
    builder.scan(doc)
    return builder.records()


def _record_locations(path: JsonPath, doc: Any) -> dict[Location, None]:
    """``{loc: None for loc, node in path.find(doc) if isinstance(node, dict)}``.

    At C speed for the common records path, keys then one ``[*]`` (``$.customers[*]``)
    reaching a list: the locations are ``loc + (i,)`` for the items that are objects.
    """
    steps = path.steps
    if steps and steps[-1][0] == WILD and all(op == KEY for op, _ in steps[:-1]):
        node = doc
        for _, key in steps[:-1]:
            if not (isinstance(node, dict) and key in node):
                return {}
            node = node[key]
        if isinstance(node, list):
            prefix = [repeat(key) for _, key in steps[:-1]]
            locs = zip(*prefix, range(len(node)), strict=False)  # loc + (i,) for each item
            return dict.fromkeys(compress(locs, map(isinstance, node, repeat(dict))))
    found = path.find(doc)
    is_object = map(isinstance, map(_second, found), repeat(dict))
    return dict.fromkeys(compress(map(_first, found), is_object))


# Hot loops below: locations are built with ``loc + (key,)`` (twice as fast as
# ``(*loc, key)`` in CPython 3.11, hence the RUF005 exemption at the top), FieldValues with
# ``_field``, and the common cases inline. A list of objects of one key shape (a page of
# records, the big bodies) skips them: _Builder.uniform does it column by column in C loops.


class _OverlayPlan(NamedTuple):
    """A record object of a route with a RecordShape: the route's keys, then the default's."""

    route_fields: tuple[tuple[str, Kind], ...]  # present in the object
    route_id_key: str | None  # present in the object
    plan: ObjectPlan  # the default rule for every other key


class _Builder:
    __slots__ = (
        "batched",
        "classify",
        "covered",
        "defaults",
        "groups",
        "overlaid",
        "overlay",
        "overlay_plans",
        "routed",
        "shape",
    )

    def __init__(
        self,
        defaults: DefaultFields,
        shape: RecordShape | None = None,
        overlay: dict[Location, None] | None = None,
    ) -> None:
        self.defaults = defaults
        self.classify = defaults.classify
        self.covered: set[Location] = set()  # leaves route() took (the general way)
        # (anchor, customer id) -> the record's fields; (list location, _BATCH) -> the made
        # Records of a list uniform() took whole (they are new records, in item order)
        self.groups: dict[tuple[Location, object], list[Any]] = {}
        self.batched = False
        self.routed = False  # route() ran: its groups come first, uniform() must not run
        self.shape = shape
        self.overlay = overlay or {}
        self.overlay_plans: dict[tuple[str, ...], _OverlayPlan] = {}
        self.overlaid = 0

    def group(self, anchor: Location, cid: str | None) -> list[FieldValue]:
        out = self.groups.get((anchor, cid))
        if out is None:
            out = self.groups[(anchor, cid)] = []
        return out

    def records(self) -> list[Record]:
        groups = self.groups
        new = tuple.__new__  # map(new, repeat(T), tuples): T(*tuple) for each, at C speed
        if not self.batched:
            # [Record(cid, fields) for (_, cid), fields in groups.items() if fields], in C
            made = map(new, repeat(Record), zip(map(_second, groups), groups.values(), strict=True))
            return list(filter(_second, made))
        out: list[Record] = []
        for (_, cid), fields in groups.items():
            if cid is _BATCH:
                out += fields
            elif fields:
                out.append(new(Record, (cid, fields)))
        return out

    def overlay_plan(self, keys: tuple[str, ...]) -> _OverlayPlan:
        assert self.shape is not None
        route_keys = {key for key, _ in self.shape.fields}
        present = set(keys)
        full = self.defaults.plan(keys)  # the sibling id is chosen among all the keys
        plan = ObjectPlan(
            tuple((key, kind) for key, kind in full.protected if key not in route_keys),
            full.id_key,
            tuple(key for key in full.others if key not in route_keys),
        )
        id_key = self.shape.id_key if self.shape.id_key in present else None
        result = _OverlayPlan(
            tuple((key, kind) for key, kind in self.shape.fields if key in present), id_key, plan
        )
        self.overlay_plans[keys] = result
        return result

    def scan(self, doc: Any) -> None:
        """The default rule over the whole document (and a RecordShape route's records)."""
        plans_get = self.defaults.plans.get
        make_plan = self.defaults.plan
        overlay = self.overlay
        overlay_get = self.overlay_plans.get
        covered = self.covered
        groups = self.groups
        routed = self.routed
        containers = _CONTAINERS
        stack: list[tuple[Location, Any]] = [((), doc)]
        while stack:
            loc, node = stack.pop()
            if isinstance(node, dict):
                record = loc in overlay if overlay else False
                if not record and len(node) > _PLANNED_KEYS:
                    # a big object (a map keyed by ids?): no plan worth caching
                    stack.extend(reversed(self.scan_keys(loc, node)))
                    continue
                keys = tuple(node)
                route_out: list[FieldValue] | None = None
                route_cid: str | None = None
                if record:
                    self.overlaid += 1
                    oplan = overlay_get(keys) or self.overlay_plan(keys)
                    plan = oplan.plan
                    id_key = oplan.route_id_key
                    route_cid = None if id_key is None else customer_id_of(node[id_key])
                    out = route_out = groups.get((loc, route_cid))
                    if out is None:
                        out = route_out = groups[(loc, route_cid)] = []
                    for key, kind in oplan.route_fields:
                        value = node[key]
                        if type(value) is str:  # the common case, inline
                            if value:
                                fv = (loc + (key,), kind, value, "string")
                                out.append(_field(FieldValue, fv))
                        else:
                            self.protect(loc + (key,), value, kind, out)
                else:
                    plan = plans_get(keys) or make_plan(keys)
                children: list[tuple[Location, Any]] | None = None
                for key in plan.others:
                    value = node[key]
                    if isinstance(value, containers):
                        if children is None:
                            children = [(loc + (key,), value)]
                        else:
                            children.append((loc + (key,), value))
                if plan.protected:
                    id_key = plan.id_key
                    cid = None if id_key is None else customer_id_of(node[id_key])
                    if route_out is None or cid != route_cid:
                        out = groups.get((loc, cid))
                        if out is None:
                            out = groups[(loc, cid)] = []
                    else:
                        out = route_out
                    for key, kind in plan.protected:
                        value = node[key]
                        if type(value) is str:  # the common case, inline
                            if value:
                                here = loc + (key,)
                                if not (covered and here in covered):
                                    out.append(_field(FieldValue, (here, kind, value, "string")))
                        else:
                            self.protect(loc + (key,), value, kind, out)
                if children is not None:
                    stack.extend(reversed(children))
            elif isinstance(node, list):
                if len(node) >= _UNIFORM_MIN and not routed and self.uniform(loc, node):
                    continue
                items = [
                    (loc + (i,), value)
                    for i, value in enumerate(node)
                    if isinstance(value, containers)
                ]
                items.reverse()
                stack.extend(items)

    def uniform(self, loc: Location, items: list[Any]) -> bool:
        """A list of objects of one key shape (a page of records), column by column.

        What :meth:`scan` does with each item, with the per-item work done a column at a
        time by C loops (``map``, ``zip``, ``set``): a thousand records cost a few dozen
        bytecodes, not a thousand loop turns. Only for the plain case, checked before
        anything is recorded: every item a dict with the same keys (at most
        ``_PLANNED_KEYS``; in the same order where the order matters), every item a
        RecordShape record or none, no container under an unprotected key (so there is
        nothing to descend into, and document order is item order), every protected value
        a string or null, and a record's route and default customer ids the same. Anything
        else returns False having done nothing, and the caller walks the list the general
        way. Must not run after route(): each
        item's group is assumed new (route() may have made one earlier, for a value it
        skipped, and that group's place in the order is the record's).
        """
        if set(map(type, items)) != _DICT_ONLY:
            return False
        keys = tuple(items[0])
        width = len(keys)
        if width > _PLANNED_KEYS or set(map(len, items)) != {width}:
            return False
        n = len(items)
        prefix = [repeat(step) for step in loc]  # zip(*prefix, range(n)): loc + (i,) for each i
        overlay = self.overlay
        route_fields: tuple[tuple[str, Kind], ...] = ()
        route_id_key: str | None = None
        record = False
        if overlay:
            hits = sum(map(overlay.__contains__, zip(*prefix, range(n), strict=False)))
            if hits == n:
                record = True
                oplan = self.overlay_plans.get(keys) or self.overlay_plan(keys)
                plan = oplan.plan
                route_fields, route_id_key = oplan.route_fields, oplan.route_id_key
            elif hits:
                return False
        if not record:
            plan = self.defaults.plans.get(keys) or self.defaults.plan(keys)
        # Every item has the keys of the first, in the same order. The order only matters
        # for the order of the default rule's fields and for a tie between two id keys of
        # one rank; without either, the same keys do (equal lengths, and no KeyError below).
        if (len(plan.protected) > 1 or self.id_tie(keys, plan.id_key)) and not all(
            map(keys.__eq__, map(tuple, items))
        ):
            return False
        columns: list[tuple[str, Kind, list[Any]]] = []
        holes = False  # an empty string or a null somewhere: values to leave out
        try:
            for key in plan.others:
                if not _SCALARS.issuperset(map(type, map(itemgetter(key), items))):
                    return False
            for key, kind in route_fields + plan.protected:
                column = list(map(itemgetter(key), items))
                types = set(map(type, column))
                if not types <= _PLAIN_STRINGS:
                    return False
                holes = holes or _NONE_TYPE in types or "" in column
                columns.append((key, kind, column))
        except KeyError:  # an item without one of the keys: another shape
            return False
        if plan.protected:
            cids = _customer_ids(items, plan.id_key)
            if record and _customer_ids(items, route_id_key) != cids:
                return False
        elif record:
            cids = _customer_ids(items, route_id_key)
        if record:
            self.overlaid += n
        if not columns:
            return True
        new = tuple.__new__  # map(new, repeat(T), tuples): T(*tuple) for each, at C speed
        made = [
            map(new, repeat(FieldValue), zip(
                zip(*prefix, range(n), repeat(key), strict=False),
                repeat(kind), column, repeat("string"), strict=False,
            ))
            for key, kind, column in columns
        ]
        rows: Iterable[list[FieldValue]] = map(list, zip(*made, strict=True))
        if holes:
            rows = [row if all(map(_third, row)) else [f for f in row if f[2]] for row in rows]
        records = map(new, repeat(Record), zip(cids, rows, strict=True))
        # each item is its own record: a new group, after whatever came before the list
        self.groups[(loc, _BATCH)] = list(filter(_second, records) if holes else records)
        self.batched = True
        return True

    def id_tie(self, keys: tuple[str, ...], id_key: str | None) -> bool:
        """Whether another of ``keys`` has ``id_key``'s rank (the first in order wins)."""
        if id_key is None:
            return False
        classify = self.classify
        rank = classify(id_key)[1]
        return sum(classify(key)[1] == rank for key in keys) > 1

    def scan_keys(self, loc: Location, node: dict[str, Any]) -> list[tuple[Location, Any]]:
        """The default rule over one object, key by key; returns the children to walk."""
        classify = self.classify
        children: list[tuple[Location, Any]] = []
        protected: list[tuple[str, Any, Kind]] = []
        best_rank: int | None = None
        best_value: Any = None
        for key, value in node.items():
            kind, rank = classify(key)
            if kind is not None:
                protected.append((key, value, kind))
                continue
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_value = rank, value
            if isinstance(value, _CONTAINERS):
                children.append((loc + (key,), value))
        if protected:
            cid = customer_id_of(best_value) if best_rank is not None else None
            out = self.group(loc, cid)
            for key, value, kind in protected:
                self.protect(loc + (key,), value, kind, out)
        return children

    def route(self, doc: Any, route: Route) -> None:
        """The general way: the route's fields, each paired with its record's customer id."""
        self.routed = True
        ids = _IdIndex(route.customer_id, doc)
        covered = self.covered
        for rule in route.fields:
            kind = rule.kind
            pair = ids.pairer(rule.path)
            for loc, value in rule.path.find(doc):
                slot = pair(loc)
                out = slot[2]
                if out is None:
                    out = slot[2] = self.group(slot[0], slot[1])
                if type(value) is str:  # the common case, inline
                    if value and loc not in covered:
                        covered.add(loc)
                        out.append(_field(FieldValue, (loc, kind, value, "string")))
                else:
                    self.protect(loc, value, kind, out, route=True)

    def protect(
        self,
        loc: Location,
        value: Any,
        kind: Kind,
        out: list[FieldValue],
        *,
        route: bool = False,
    ) -> None:
        """Every leaf of ``value`` at ``loc``, as a FieldValue of ``kind``, into ``out``."""
        covered = self.covered
        classify = self.classify
        stack: list[tuple[Location, Any, Kind]] = [(loc, value, kind)]
        while stack:
            here, node, k = stack.pop()
            fv: FieldValue
            if isinstance(node, str):
                if not node:
                    continue
                fv = _field(FieldValue, (here, k, node, "string"))
            elif isinstance(node, dict):
                stack.extend(
                    reversed([(here + (key,), v, classify(key)[0] or k) for key, v in node.items()])
                )
                continue
            elif isinstance(node, list):
                stack.extend(reversed([(here + (i,), v, k) for i, v in enumerate(node)]))
                continue
            elif node is None or isinstance(node, bool):
                continue
            elif isinstance(node, int):
                fv = _field(FieldValue, (here, k, str(node), "int"))
            elif isinstance(node, float):
                text = str(int(node)) if node.is_integer() and abs(node) < 1e16 else repr(node)
                fv = _field(FieldValue, (here, k, text, "float"))
            else:  # not a JSON value: refuse rather than pass it on unexamined
                raise InvalidInputError(f"unexpected {type(node).__name__} in a parsed JSON body")
            if route:
                if here in covered:
                    continue
                covered.add(here)
            elif covered and here in covered:
                continue
            out.append(fv)


_AMBIGUOUS = object()
_MISSING = object()

Slot = list[Any]  # [anchor, customer id, the record's FieldValue list once made]


class _IdIndex:
    """The matches of a route's customer id path, indexed for pairing with field matches."""

    __slots__ = ("_scopes", "by_wild", "matches", "path")

    def __init__(self, path: JsonPath | None, doc: Any) -> None:
        self.path = path
        self.matches = [] if path is None else path.find(doc)
        self.by_wild: dict[Any, Slot] = {}
        self._scopes: dict[Location, object] | None = None
        if path is not None and path.wildcards is not None:
            key_of = _key_getter(path.wildcards)
            for loc, value in self.matches:
                self.by_wild[key_of(loc)] = [loc[:-1], customer_id_of(value), None]

    def pairer(self, field_path: JsonPath) -> Callable[[Location], Slot]:
        """A function from a match of ``field_path`` to its record's slot."""
        path = self.path
        if path is None:
            return _no_id
        if path.wildcards is not None and field_path.wildcards is not None:
            n = len(path.wildcards)
            if len(field_path.wildcards) < n:
                return _no_id
            positions = field_path.wildcards[:n]
            key_of = _key_getter(positions)
            cut = positions[-1] + 1 if positions else 0
            get = self.by_wild.get
            missing: dict[Any, Slot] = {}

            def by_wild(loc: Location) -> Slot:
                key = key_of(loc)
                slot = get(key)
                if slot is None:  # no id for this record: group it by its wildcard values
                    slot = missing.get(key)
                    if slot is None:
                        slot = missing[key] = [loc[:cut], None, None]
                return slot

            return by_wild
        return self._by_scope  # either path has '..': pair by the closest enclosing id

    def _by_scope(self, loc: Location) -> Slot:
        scopes = self._scopes
        if scopes is None:
            scopes = self._scopes = {}
            for id_loc, value in self.matches:
                scope = id_loc[:-1]
                scopes[scope] = _AMBIGUOUS if scope in scopes else customer_id_of(value)
        for k in range(len(loc) - 1, -1, -1):
            scope = loc[:k]
            found = scopes.get(scope, _MISSING)
            if found is not _MISSING:
                if found is None or isinstance(found, str):
                    return [scope, found, None]
                return [scope, None, None]  # several ids in one object: ambiguous
        return [loc[:-1], None, None]


def _customer_ids(items: list[dict[str, Any]], key: str | None) -> list[str | None]:
    """``customer_id_of(item[key])`` for each item (None for each without an id key)."""
    if key is None:
        return [None] * len(items)
    column = list(map(itemgetter(key), items))
    if set(map(type, column)) == _INT_ONLY:
        return list(map(str, column))
    return list(map(customer_id_of, column))


def _no_id(loc: Location) -> Slot:
    return [loc[:-1], None, None]


def _key_getter(positions: tuple[int, ...]) -> Callable[[Location], Any]:
    """The values of a location at ``positions``, as a hashable key (C speed)."""
    if not positions:
        return _empty_key
    return itemgetter(*positions)  # a scalar for one position, a tuple for more


def _empty_key(loc: Location) -> Any:
    return ()
