"""Configured HTTP routes: which fields of which response are protected, and how.

A route is a method and a path pattern: literal segments, ``{name}`` for one segment (its
value comes back as a path parameter), and ``*`` as the last segment for the rest of the
path (zero or more segments). Method ``*`` matches any method.

**Most specific wins.** Segment by segment, a literal beats ``{param}``, which beats the end
of a shorter pattern, which beats ``*``; at equal shapes an explicit method beats ``*``. So
``GET /customers/export`` wins over ``GET /customers/{id}`` for ``/customers/export``, and
``/customers/{id}`` wins over ``/customers/*`` for ``/customers/7``. Two routes with the same
method and shape are a configuration error (:class:`RouteTable` refuses them).

A path is matched after light normalisation, so that a spelling the upstream treats as the
same resource cannot dodge a route: empty segments are dropped (``//customers/`` is
``/customers``) and ``.``/``..`` segments are resolved. The caller passes the path without
the query string, percent-decoded once (aiohttp's ``request.path``); matching does not
decode again. Literal segments match case-sensitively.

**Routes add to the default rule, never replace it.** A route's fields say exactly where
its protected values are and where each record's customer id is; the default rule (by key
name, ``proxy.policy.fields``) still runs over the whole body for every key the route does
not cover. An upstream that adds ``mobile`` to its customers must not leak it because the
route's config lags behind. An unconfigured route (``match`` returns None) gets the default
rule only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from proxy.crypto.tokens import Kind
from proxy.errors import InvalidInputError
from proxy.policy.fields import FieldRule
from proxy.policy.jsonpath import JsonPath, compile_path

__all__ = [
    "OnUnparseable",
    "PathPattern",
    "RecordShape",
    "Route",
    "RouteTable",
    "parse_pattern",
]

OnUnparseable = Literal["refuse", "pass"]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]*\Z")  # an RFC 9110 token, upper-cased

# Segment ranks for specificity (higher is more specific).
_LITERAL, _PARAM_RANK, _END, _STAR = 3, 2, 1, 0


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A compiled path pattern: literal strings, parameter names (``{...}``) and a tail."""

    text: str
    literals: tuple[str | None, ...]  # a literal segment, or None for a parameter
    params: tuple[str | None, ...]  # the parameter name at each position, or None
    rest: bool  # ends with '*'

    @property
    def shape(self) -> str:
        """The pattern with parameter names erased: two routes of one shape collide."""
        parts = ["{}" if lit is None else lit for lit in self.literals]
        if self.rest:
            parts.append("*")
        return "/" + "/".join(parts)

    @property
    def rank(self) -> tuple[int, ...]:
        ranks = [_PARAM_RANK if lit is None else _LITERAL for lit in self.literals]
        ranks.append(_STAR if self.rest else _END)
        return tuple(ranks)

    def match(self, segments: Sequence[str]) -> dict[str, str] | None:
        n = len(self.literals)
        if len(segments) < n or (len(segments) > n and not self.rest):
            return None
        params: dict[str, str] = {}
        for literal, name, segment in zip(self.literals, self.params, segments, strict=False):
            if literal is None:
                params[name or ""] = segment
            elif literal != segment:
                return None
        return params


def parse_pattern(text: str) -> PathPattern:
    """Compile a path pattern; :class:`InvalidInputError` says what is wrong and the fix."""
    if not isinstance(text, str) or not text.startswith("/"):
        raise InvalidInputError(f"a path pattern must start with '/', like '/customers/{{id}}'"
                                f"; got {text!r}")
    if "?" in text or "#" in text:
        raise InvalidInputError(
            f"path pattern {text!r} has a query or fragment: patterns match the path only"
        )
    raw = [s for s in text.split("/") if s]
    literals: list[str | None] = []
    params: list[str | None] = []
    seen: set[str] = set()
    rest = False
    for i, segment in enumerate(raw):
        if segment == "*":
            if i != len(raw) - 1:
                raise InvalidInputError(
                    f"path pattern {text!r}: '*' matches the rest of the path, so it must be "
                    "the last segment; use {name} for one segment"
                )
            rest = True
            continue
        if segment in (".", ".."):
            raise InvalidInputError(f"path pattern {text!r}: '.' and '..' segments never match")
        m = _PARAM.match(segment)
        if m is not None:
            name = m.group(1)
            if name in seen:
                raise InvalidInputError(
                    f"path pattern {text!r}: parameter {{{name}}} appears twice; rename one"
                )
            seen.add(name)
            literals.append(None)
            params.append(name)
            continue
        if any(c in segment for c in "{}*"):
            raise InvalidInputError(
                f"path pattern {text!r}: segment {segment!r} mixes text with {{}} or *; a "
                "segment is all literal, a whole {name}, or a final *"
            )
        literals.append(segment)
        params.append(None)
    return PathPattern(text, tuple(literals), tuple(params), rest)


def parse_method(method: str) -> str:
    """An HTTP method, upper-cased, or ``*``."""
    if not isinstance(method, str):
        raise InvalidInputError(f"a method must be a string, not {type(method).__name__}")
    upper = method.upper()
    if upper != "*" and not _METHOD.match(upper):
        raise InvalidInputError(f"method must be an HTTP method like GET, or '*'; got {method!r}")
    return upper


def split_path(path: str) -> list[str]:
    """Segments of a request path: empty segments dropped, ``.`` and ``..`` resolved."""
    out: list[str] = []
    for segment in path.split("?", 1)[0].split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    return out


@dataclass(frozen=True, slots=True)
class RecordShape:
    """A route whose fields and customer id are all keys of the same objects (``P.key``).

    The common case (``$.customers[*].full_name`` with ``$.customers[*].id``, or
    ``$.full_name`` with ``$.id``): the objects ``P`` matches are the records, and
    extraction handles them in the same pass as the default rule.
    """

    records: JsonPath  # P
    fields: tuple[tuple[str, Kind], ...]  # (key, kind); the first rule of a key wins
    id_key: str | None

    @classmethod
    def of(cls, route: Route) -> RecordShape | None:
        if not route.fields:
            return None
        prefix: JsonPath | None = None
        fields: dict[str, Kind] = {}
        for rule in route.fields:
            split = rule.path.split_key()
            if split is None or (prefix is not None and split[0].steps != prefix.steps):
                return None
            prefix = split[0]
            fields.setdefault(split[1], rule.kind)
        assert prefix is not None
        id_key = None
        if route.customer_id is not None:
            split = route.customer_id.split_key()
            if split is None or split[0].steps != prefix.steps:
                return None
            id_key = split[1]
        return cls(prefix, tuple(fields.items()), id_key)


@dataclass(frozen=True)
class Route:
    """One configured route. ``customer_id`` is None when its records carry no customer id."""

    method: str
    pattern: str
    customer_id: JsonPath | None = None
    fields: tuple[FieldRule, ...] = ()
    on_unparseable: OnUnparseable = "refuse"
    compiled: PathPattern = field(init=False, repr=False, compare=False)
    shape: RecordShape | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", parse_method(self.method))
        object.__setattr__(self, "compiled", parse_pattern(self.pattern))
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "shape", RecordShape.of(self))
        if self.on_unparseable not in ("refuse", "pass"):
            raise InvalidInputError(
                f"on_unparseable must be 'refuse' or 'pass', got {self.on_unparseable!r}"
            )

    @classmethod
    def parse(
        cls,
        method: str,
        pattern: str,
        customer_id: str | None = None,
        fields: Iterable[tuple[str, str]] = (),
        on_unparseable: OnUnparseable = "refuse",
    ) -> Route:
        """From config text: ``fields`` as ``(json path, kind)`` pairs."""
        return cls(
            method,
            pattern,
            compile_path(customer_id) if customer_id else None,
            tuple(FieldRule.parse(p, k) for p, k in fields),
            on_unparseable,
        )

    @property
    def key(self) -> tuple[str, str]:
        """(method, shape): two routes with the same key collide."""
        return (self.method, self.compiled.shape)

    def __str__(self) -> str:
        return f"{self.method} {self.pattern}"


class RouteTable:
    """The configured routes; :meth:`match` finds the most specific one for a request."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        seen: dict[tuple[str, str], Route] = {}
        for route in self.routes:
            other = seen.get(route.key)
            if other is not None:
                raise InvalidInputError(
                    f"duplicate route {route} (same method and path shape as {other}): "
                    "merge their fields into one route"
                )
            seen[route.key] = route
        # Most specific first: the first match is the answer.
        self._ordered = sorted(
            self.routes,
            key=lambda r: (r.compiled.rank, r.method != "*"),
            reverse=True,
        )

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str]]:
        """The most specific route for ``method path`` and its path parameters, or (None, {})."""
        upper = method.upper()
        segments = split_path(path)
        for route in self._ordered:
            if route.method != "*" and route.method != upper:
                continue
            params = route.compiled.match(segments)
            if params is not None:
                return route, params
        return None, {}

    def __len__(self) -> int:
        return len(self.routes)
