"""Which JSON fields are protected: route rules by JSON path, and the default rule by key name.

**The default rule** (``[defaults]`` in the config) protects any object key whose name is in
``name_fields``, ``phone_fields`` or ``text_fields``, anywhere in a body, with that kind.
Key names are compared ignoring case and separators (``-``, ``_``, spaces, ``.``), so
camelCase, snake_case and kebab-case spellings are one name (``fullName``, ``full-name``,
``FULL_NAME``, ``Full Name`` and ``fullname`` are all ``full_name``; ``WhatsApp`` is
``whatsapp``), and a trailing number does not matter either (``phone2``, ``phone_2`` are
``phone``: the second phone of a record is as protected as the first). An entry may be a
glob with ``*`` (``"*_phone"`` also protects ``home_phone`` and ``workPhone``), matched
against the key in snake_case (:func:`normalize_field_name`).

The record's customer id, under the default rule, is a *sibling* key of the protected one,
the first of ``customer_id_fields`` (in that order) that the object has. "First that
exists" is literal: if ``customer_id`` is present but null, the record has no customer id
even when ``id`` is present (``id`` may be the order's or the note's own id; taking it
would reveal one customer's data under another's ticket). Ancestors are not searched, for
the same reason: ``{"id": 7, "referrer": {"name": ...}}`` is not customer 7's name.

A key cannot be both protected and a customer id field; nor protected with two kinds: the
constructor refuses both (``tokenproxy config check`` reports them with their line).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from proxy.crypto.tokens import Kind
from proxy.errors import InvalidInputError
from proxy.policy.jsonpath import JsonPath, compile_path

__all__ = [
    "DEFAULT_CUSTOMER_ID_FIELDS",
    "DEFAULT_FIELDS",
    "DEFAULT_NAME_FIELDS",
    "DEFAULT_PHONE_FIELDS",
    "DEFAULT_TEXT_FIELDS",
    "DefaultFields",
    "FieldRule",
    "ObjectPlan",
    "compact_field_name",
    "normalize_field_name",
    "parse_kind",
]

DEFAULT_NAME_FIELDS = (
    "name", "full_name", "first_name", "last_name", "middle_name", "surname", "given_name",
    "family_name", "display_name", "contact_name", "customer_name",
)  # fmt: skip
DEFAULT_PHONE_FIELDS = (
    "phone", "phone_number", "mobile", "mobile_number", "msisdn", "telephone", "tel", "cell",
    "whatsapp", "contact_phone",
)  # fmt: skip
DEFAULT_TEXT_FIELDS = ("notes", "note", "comment", "comments", "remarks", "message")
DEFAULT_CUSTOMER_ID_FIELDS = ("customer_id",)

KINDS = tuple(k.value for k in Kind)

_CAMEL_WORD = re.compile(r"(.)([A-Z][a-z]+)")  # fullName -> full_Name, HTTPStatus -> HTTP_Status
_CAMEL_TAIL = re.compile(r"([a-z0-9])([A-Z])")  # phoneNUMBER -> phone_NUMBER
_SEPARATORS = re.compile(r"[\s.\-_]+")
_TRAILING_NUMBER = re.compile(r"[0-9]+\Z")
_GLOB_ENTRY = re.compile(r"[A-Za-z0-9_\-*]+\Z")
_CACHE_LIMIT = 8192
_PLAN_LIMIT = 1024


def normalize_field_name(key: str) -> str:
    """``fullName``, ``full-name``, ``FULL_NAME``, ``Full Name`` -> ``full_name``."""
    s = _CAMEL_WORD.sub(r"\1_\2", key)
    s = _CAMEL_TAIL.sub(r"\1_\2", s)
    return _SEPARATORS.sub("_", s).strip("_").lower()


def compact_field_name(key: str) -> str:
    """The form keys are compared in: lower case, no separators (``fullname``)."""
    return _SEPARATORS.sub("", key).lower()


def parse_kind(value: object) -> Kind:
    """A field kind from config text; the error lists the kinds."""
    if isinstance(value, str):
        try:
            return Kind(value)
        except ValueError:
            pass
    raise InvalidInputError(f"kind must be one of {', '.join(KINDS)}, got {value!r}")


@dataclass(frozen=True, slots=True)
class FieldRule:
    """A protected field of a route: the values ``path`` matches are of ``kind``."""

    path: JsonPath
    kind: Kind

    @classmethod
    def parse(cls, path: str, kind: str) -> FieldRule:
        """From config text; raises :class:`InvalidInputError` for a bad path or kind."""
        return cls(compile_path(path), parse_kind(kind))


class ObjectPlan(NamedTuple):
    """The default rule applied to one set of object keys."""

    protected: tuple[tuple[str, Kind], ...]  # (key, kind), in the object's order
    id_key: str | None  # the key that holds the customer id, if any
    others: tuple[str, ...]  # every other key (to descend into objects and arrays)


@dataclass(frozen=True)
class DefaultFields:
    """The default rule: protected key names per kind, and the customer id key names."""

    name_fields: tuple[str, ...] = DEFAULT_NAME_FIELDS
    phone_fields: tuple[str, ...] = DEFAULT_PHONE_FIELDS
    text_fields: tuple[str, ...] = DEFAULT_TEXT_FIELDS
    customer_id_fields: tuple[str, ...] = DEFAULT_CUSTOMER_ID_FIELDS
    _exact: dict[str, Kind] = field(init=False, repr=False, compare=False)
    _globs: tuple[tuple[re.Pattern[str], Kind], ...] = field(
        init=False, repr=False, compare=False
    )
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)
    _cache: dict[str, tuple[Kind | None, int | None]] = field(
        init=False, repr=False, compare=False
    )
    _plans: dict[tuple[str, ...], ObjectPlan] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact: dict[str, Kind] = {}
        globs: list[tuple[re.Pattern[str], Kind]] = []
        for kind, entries in (
            (Kind.NAME, self.name_fields),
            (Kind.PHONE, self.phone_fields),
            (Kind.TEXT, self.text_fields),
        ):
            for entry in _entries(entries, f"{kind.value}_fields"):
                if "*" in entry:
                    pattern = entry.lower().replace("-", "_")
                    globs.append((re.compile(fnmatch.translate(pattern)), kind))
                    continue
                norm = compact_field_name(entry)
                other = exact.get(norm)
                if other is not None and other is not kind:
                    raise InvalidInputError(
                        f"field {entry!r} is listed as both {other.value} and {kind.value}: "
                        "keep it in one list"
                    )
                exact[norm] = kind
        ids: dict[str, int] = {}
        for rank, entry in enumerate(_entries(self.customer_id_fields, "customer_id_fields")):
            if "*" in entry:
                raise InvalidInputError(
                    f"customer_id_fields entry {entry!r}: globs are not allowed for ids"
                )
            norm = compact_field_name(entry)
            if norm in exact:
                raise InvalidInputError(
                    f"field {entry!r} is both a customer id field and a protected "
                    f"{exact[norm].value} field: keep it in one list"
                )
            ids.setdefault(norm, rank)
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_globs", tuple(globs))
        object.__setattr__(self, "_ids", ids)
        object.__setattr__(self, "_cache", {})
        object.__setattr__(self, "_plans", {})

    def classify(self, key: str) -> tuple[Kind | None, int | None]:
        """``(kind if key is protected, rank if key is a customer id field)`` (cached)."""
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        compact = compact_field_name(key)
        kind = self._exact.get(compact)
        if kind is None:
            bare = _TRAILING_NUMBER.sub("", compact)
            kind = self._exact.get(bare) if bare else None
            if kind is None and self._globs:
                snake = normalize_field_name(key)
                snake_bare = _TRAILING_NUMBER.sub("", snake).rstrip("_")
                for pattern, glob_kind in self._globs:
                    if pattern.match(snake) or (snake_bare and pattern.match(snake_bare)):
                        kind = glob_kind
                        break
        result = (kind, None if kind is not None else self._ids.get(compact))
        if len(self._cache) >= _CACHE_LIMIT:  # keys can be data (a map keyed by id)
            self._cache.clear()
        self._cache[key] = result
        return result

    @property
    def cache(self) -> dict[str, tuple[Kind | None, int | None]]:
        """The classify cache, for hot loops: ``cache.get(key) or classify(key)``."""
        return self._cache

    @property
    def plans(self) -> dict[tuple[str, ...], ObjectPlan]:
        """The plan cache, for hot loops: ``plans.get(keys) or plan(keys)``."""
        return self._plans

    def plan(self, keys: tuple[str, ...]) -> ObjectPlan:
        """What the default rule does with an object of these keys (cached).

        Records of one list share their keys, so a body of a thousand customers is
        classified once, not a thousand times.
        """
        hit = self._plans.get(keys)
        if hit is not None:
            return hit
        protected: list[tuple[str, Kind]] = []
        others: list[str] = []
        id_key: str | None = None
        best: int | None = None
        for key in keys:
            kind, rank = self.classify(key)
            if kind is not None:
                protected.append((key, kind))
                continue
            others.append(key)
            if rank is not None and (best is None or rank < best):
                id_key, best = key, rank
        plan = ObjectPlan(tuple(protected), id_key, tuple(others))
        if len(self._plans) >= _PLAN_LIMIT:
            self._plans.clear()
        self._plans[keys] = plan
        return plan

    def kind_of(self, key: str) -> Kind | None:
        """The kind that protects an object key, or None."""
        return self.classify(key)[0]

    def id_rank(self, key: str) -> int | None:
        """The key's position in ``customer_id_fields`` (lower wins), or None."""
        return self.classify(key)[1]


def _entries(entries: Iterable[str], what: str) -> Iterable[str]:
    if isinstance(entries, str):
        raise InvalidInputError(f"{what} must be a list of field names, not one string")
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise InvalidInputError(f"{what} entries must be non-empty strings")
        if "*" in entry and not _GLOB_ENTRY.match(entry):
            raise InvalidInputError(
                f"{what} entry {entry!r}: a glob may use only letters, digits, '_', '-' "
                "and '*'"
            )
        yield entry


DEFAULT_FIELDS = DefaultFields()
