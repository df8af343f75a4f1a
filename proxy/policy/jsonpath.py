"""The JSONPath subset tokenproxy needs, compiled into a walker that reports where it matched.

Supported, and nothing else:

- ``$``                the document (every path starts with it)
- ``.key``             a member of an object (``key``: a letter or ``_``, then letters,
                       digits, ``_`` or ``-``; anything else goes in brackets)
- ``['key']``          the same, any key (``\\`` escapes the next character)
- ``[*]``              every element of an array, or every member value of an object
- ``[n]``              element ``n`` of an array (``-1`` is the last)
- ``..key``            ``key`` at any depth below (recursive descent; ``..['key']`` too)

Anything else (filters, slices, unions, ``.*``, functions) is refused with a
:class:`JsonPathError` that says where and what to write instead; ``tokenproxy config
check`` shows it next to the line of the config.

**Why hand-written.** The proxy runs these paths over every protected response, thousands of
matches per body, and each match must come with its concrete *location* (a tuple such as
``('customers', 3, 'full_name')``) so that the transform can write the token back in place
and pair the field with its record's customer id by the same array index. ``jsonpath-ng``
(a PLY grammar) wraps every match in a chain of ``DatumInContext`` objects: more work per
match, and the location and write-back have to be unpacked from that chain. The subset
above is compiled once per config and walked as a loop over plain tuples (one path over a
1,000-element list: about 0.2 ms on a slow 2-core VM). Matching is over parsed JSON as
``json``/``orjson`` produce it: ``dict`` with ``str`` keys, ``list``, and scalars.
"""

# ruff: noqa: RUF005  (``loc + (key,)`` is twice as fast as ``(*loc, key)`` in CPython 3.11)
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeAlias

from proxy.errors import InvalidInputError

__all__ = [
    "JsonPath",
    "JsonPathError",
    "Location",
    "compile_path",
    "format_location",
    "get_at",
    "set_at",
]

Location: TypeAlias = tuple[str | int, ...]
"""Where a value sits in a parsed JSON document: object keys and array indices, from the top."""

# Step opcodes. A step is (opcode, argument).
KEY = 0  # arg: str
INDEX = 1  # arg: int (negative counts from the end)
WILD = 2  # arg: None
DESCEND = 3  # arg: str, the key looked for at any depth
WILD_KEY = 4  # arg: str; [*] then .key fused (the common $.items[*].field), one pass

Step: TypeAlias = tuple[int, Any]

_CONTAINERS = (dict, list)  # isinstance on a tuple is twice as fast as on dict | list
_NAME = re.compile(r"[^\W\d][\w-]*")
_INT = re.compile(r"-?[0-9]+")
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class JsonPathError(InvalidInputError):
    """A JSON path outside the supported subset, with the position of the mistake."""

    def __init__(self, text: str, position: int, problem: str, hint: str = "") -> None:
        self.text = text
        self.position = position
        self.problem = problem
        self.hint = hint
        message = f"{problem} at position {position} of JSON path {text!r}"
        super().__init__(f"{message}; {hint}" if hint else message)


@dataclass(frozen=True, slots=True)
class JsonPath:
    """A compiled path. ``find`` walks a document; ``wildcards`` feeds record pairing.

    ``wildcards`` holds the positions (in a match's location) of the ``[*]`` steps when
    the path has no recursive descent, where every step consumes one location element;
    ``None`` when it has ``..`` (locations vary in length).
    """

    text: str
    steps: tuple[Step, ...]
    wildcards: tuple[int, ...] | None
    ops: tuple[Step, ...] = ()  # steps as executed (fused); set by compile_path

    @property
    def has_descent(self) -> bool:
        return self.wildcards is None

    def find(self, doc: Any) -> list[tuple[Location, Any]]:
        """Every match as ``(location, value)``, in document order, each location once."""
        current: list[tuple[Location, Any]] = [((), doc)]
        descents = 0
        for op, arg in self.ops or self.steps:
            nxt: list[tuple[Location, Any]] = []
            append = nxt.append
            if op == WILD_KEY:
                for loc, node in current:
                    if isinstance(node, list):
                        for i, value in enumerate(node):
                            if isinstance(value, dict) and arg in value:
                                append((loc + (i, arg), value[arg]))
                    elif isinstance(node, dict):
                        for key, value in node.items():
                            if isinstance(value, dict) and arg in value:
                                append((loc + (key, arg), value[arg]))
            elif op == KEY:
                for loc, node in current:
                    if isinstance(node, dict) and arg in node:
                        append((loc + (arg,), node[arg]))
            elif op == WILD:
                for loc, node in current:
                    if isinstance(node, list):
                        for i, value in enumerate(node):
                            append((loc + (i,), value))
                    elif isinstance(node, dict):
                        for key, value in node.items():
                            append((loc + (key,), value))
            elif op == INDEX:
                for loc, node in current:
                    if isinstance(node, list):
                        i = arg if arg >= 0 else len(node) + arg
                        if 0 <= i < len(node):
                            append((loc + (i,), node[i]))
            else:  # DESCEND
                descents += 1
                for loc, node in current:
                    _descend(node, loc, arg, nxt)
            current = nxt
            if not current:
                break
        if descents > 1:  # $..a..b reaches a nested b through every enclosing a
            seen: set[Location] = set()
            unique = []
            for loc, value in current:
                if loc not in seen:
                    seen.add(loc)
                    unique.append((loc, value))
            current = unique
        return current

    def split_key(self) -> tuple[JsonPath, str] | None:
        """``(P, key)`` if this path is ``P.key`` with no recursive descent, else None."""
        if self.wildcards is None or not self.steps or self.steps[-1][0] != KEY:
            return None
        steps = self.steps[:-1]
        return _build(_text_of(steps), steps), self.steps[-1][1]

    def __str__(self) -> str:
        return self.text


def _text_of(steps: tuple[Step, ...]) -> str:
    parts = ["$"]
    for op, arg in steps:
        if op == KEY:
            parts.append(format_location((arg,))[1:])
        elif op == INDEX:
            parts.append(f"[{arg}]")
        elif op == WILD:
            parts.append("[*]")
        else:
            parts.append("." + format_location((arg,))[1:].lstrip("."))
    return "".join(parts)


def _descend(node: Any, loc: Location, key: str, out: list[tuple[Location, Any]]) -> None:
    """Append ``key`` of ``node`` and of every object below it, pre-order, without recursion."""
    stack: list[tuple[Location, Any]] = [(loc, node)]
    while stack:
        here, value = stack.pop()
        if isinstance(value, dict):
            if key in value:
                out.append((here + (key,), value[key]))
            children = [(here + (k,), v) for k, v in value.items() if isinstance(v, _CONTAINERS)]
        elif isinstance(value, list):
            children = [(here + (i,), v) for i, v in enumerate(value) if isinstance(v, _CONTAINERS)]
        else:
            continue
        stack.extend(reversed(children))


@lru_cache(maxsize=1024)
def compile_path(text: str) -> JsonPath:
    """Compile ``text``; raises :class:`JsonPathError` for anything outside the subset."""
    if not isinstance(text, str):
        raise InvalidInputError(f"a JSON path must be a string, not {type(text).__name__}")
    if not text.startswith("$"):
        raise JsonPathError(text, 0, "a JSON path must start with '$'", f"write '$.{text}'"
                            if _NAME.fullmatch(text) else "like '$.customers[*].phone'")
    steps: list[Step] = []
    i, n = 1, len(text)
    while i < n:
        c = text[i]
        if text.startswith("..", i):
            i += 2
            if i < n and text[i] == "[":
                key, i = _bracket(text, i)
                if not isinstance(key, str):
                    raise JsonPathError(
                        text, i, "recursive descent takes a key only", "like $..phone"
                    )
                steps.append((DESCEND, key))
                continue
            name = _NAME.match(text, i)
            if name is None:
                raise JsonPathError(text, i, "expected a key after '..'", "like $..phone")
            steps.append((DESCEND, name.group()))
            i = name.end()
        elif c == ".":
            i += 1
            if i < n and text[i] == "*":
                raise JsonPathError(text, i, "'.*' is not supported", "write '[*]'")
            name = _NAME.match(text, i)
            if name is None:
                raise JsonPathError(
                    text, i, "expected a key after '.'",
                    "keys that do not start with a letter or '_' go in brackets: ['key']",
                )
            steps.append((KEY, name.group()))
            i = name.end()
        elif c == "[":
            sel, i = _bracket(text, i)
            if sel is None:
                steps.append((WILD, None))
            elif isinstance(sel, int):
                steps.append((INDEX, sel))
            else:
                steps.append((KEY, sel))
        else:
            raise JsonPathError(
                text, i, f"unexpected {c!r}",
                "a path is $ followed by .key, ['key'], [*], [n] or ..key",
            )
    return _build(text, tuple(steps))


def _build(text: str, steps: tuple[Step, ...]) -> JsonPath:
    wild: tuple[int, ...] | None
    if any(op == DESCEND for op, _ in steps):
        wild = None
    else:
        wild = tuple(pos for pos, (op, _) in enumerate(steps) if op == WILD)
    ops: list[Step] = []
    for step in steps:
        if step[0] == KEY and ops and ops[-1][0] == WILD:
            ops[-1] = (WILD_KEY, step[1])
        else:
            ops.append(step)
    return JsonPath(text, steps, wild, tuple(ops))


def _bracket(text: str, i: int) -> tuple[str | int | None, int]:
    """Parse ``[...]`` at ``i``: a quoted key (str), an index (int) or ``*`` (None)."""
    i += 1
    n = len(text)
    if i >= n:
        raise JsonPathError(text, i, "unclosed '['", "close it with ']'")
    c = text[i]
    sel: str | int | None
    if c == "*":
        sel, i = None, i + 1
    elif c in "'\"":
        quote, i = c, i + 1
        chars: list[str] = []
        while True:
            if i >= n:
                raise JsonPathError(text, i, "unterminated quoted key", f"close it with {quote}")
            ch = text[i]
            if ch == "\\" and i + 1 < n:
                chars.append(text[i + 1])
                i += 2
            elif ch == quote:
                i += 1
                break
            else:
                chars.append(ch)
                i += 1
        sel = "".join(chars)
    else:
        m = _INT.match(text, i)
        if m is None:
            what, hint = _unsupported(text, i)
            raise JsonPathError(text, i, what, hint)
        sel, i = int(m.group()), m.end()
    if i >= n or text[i] != "]":
        what, hint = _unsupported(text, i)
        raise JsonPathError(text, i, what, hint)
    return sel, i + 1


def _unsupported(text: str, i: int) -> tuple[str, str]:
    rest = text[i:]
    if rest.startswith("?"):
        return "filters are not supported", "select with [*] and list the field's path"
    if ":" in rest.split("]", 1)[0]:
        return "slices are not supported", "use [*] or one index [n]"
    if "," in rest.split("]", 1)[0]:
        return "unions are not supported", "list each path as its own field"
    if i >= len(text):
        return "unclosed '['", "close it with ']'"
    return f"unexpected {text[i]!r} in brackets", "inside [] write *, a number or a quoted key"


def format_location(location: Location) -> str:
    """A location as a JSON path, for logs and the audit log: ``$.customers[3].full_name``."""
    parts = ["$"]
    for step in location:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _BARE.match(step):
            parts.append(f".{step}")
        else:
            escaped = step.replace("\\", "\\\\").replace("'", "\\'")
            parts.append(f"['{escaped}']")
    return "".join(parts)


def get_at(doc: Any, location: Location) -> Any:
    """The value at ``location`` (KeyError/IndexError/TypeError if it is not there)."""
    node = doc
    for step in location:
        node = node[step]
    return node


def set_at(doc: Any, location: Location, value: Any) -> Any:
    """Write ``value`` at ``location`` in place; returns the document (``value`` at ``()``)."""
    if not location:
        return value
    node = doc
    for step in location[:-1]:
        node = node[step]
    node[location[-1]] = value
    return doc
