"""SQL texts that differ only in the integers they compare columns with.

psql, BI tools and drivers that interpolate on the client (psycopg2) send a point select
as text with its id written in: ``... WHERE id = 41234``. Each such text is new to a
cache of analyses by text, and its analysis (a parse and the lineage of every column, in
Python) costs more than everything else the proxy does with the query. Here two texts
are found to be the same statement but for those integers: equal once each integer
constant the scanner finds (an ``ICONST`` token) is blanked out (`integers_blanked`).

That alone does not make their analyses equal: an integer may be a sort position
(``ORDER BY 1``), a function's argument, a type modifier, a subscript, a LIMIT. A text's
analysis stands for all the texts like it only when every constant in its parse tree is
an integer compared with ``=`` to a column (`only_compared_integers`); the analyzer reads
no such value (a phone column compared with digits makes a slot, whatever the digits:
that analysis is not plain, and is not shared). Anything else is analysed text by text.

The scan costs as much as the rest of a point select's handling, so a text whose
analysis is shared also gives a `Template`: its runs of digits, found by a regular
expression (`digit_runs`: delimited by characters that cannot continue a number, a word
or a parameter), those that are its integer constants free, the others fixed. A text
with the same characters around its runs, the same fixed ones, and a number in the int4
range (the scanner's ``ICONST``) in each free one is the template's text with other
integers in the same places: the scanner reads it as the same tokens, so it is like it
(`Template.fits`) with no scan. A template of one free integer (a point select) is also
matched with no regular expression at all: a text that starts and ends with the
characters around that integer, with nothing but such a number between them
(`Template.fits_text`, what a session sending the same select again and again needs).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pglast import parser as pg_parser

__all__ = ["Template", "digit_runs", "integers_blanked", "only_compared_integers"]

_BLANK = "\x00"  # (never in a statement's text: the protocol's strings end at a NUL)
# A run of digits no letter, digit, underscore, dollar or dot touches: a whole integer
# literal where the scanner reads one (not part of a name, a $n, a decimal, 1e5, 1_000).
_DIGIT_RUN = re.compile(r"(?<![0-9A-Za-z_$.])([0-9]+)(?![0-9A-Za-z_$.])")
_INT4_DIGITS = 10  # int4's maximum, 2147483647, has ten digits
_INT4_MAX = 2**31 - 1


def digit_runs(sql: str) -> tuple[str, list[str]]:
    """``sql`` with its runs of digits blanked out (the key of its `Template`), and the
    runs."""
    parts = _DIGIT_RUN.split(sql)
    return _BLANK.join(parts[0::2]), parts[1::2]


@dataclass(frozen=True, slots=True)
class Template:
    """A text's runs of digits: None for each that is an integer constant (free), the
    digits of the others (fixed)."""

    runs: tuple[str | None, ...]
    # With one free run: the text before it and after it (`fits_text`).
    around: tuple[str, str] | None = None

    @classmethod
    def of(cls, sql: str) -> Template | None:
        """The template of ``sql`` (ASCII: the scanner counts bytes; its key: `digit_runs`);
        None if it cannot be scanned. (An integer constant that is not a run, ``0x1F``, is
        in the key as it is.)"""
        try:
            tokens = pg_parser.scan(sql)
        except pg_parser.ParseError:
            return None
        free = {(t.start, t.end + 1) for t in tokens if t.name == "ICONST"}
        found = list(_DIGIT_RUN.finditer(sql))
        runs = tuple(None if m.span() in free else m.group() for m in found)
        spans = [m.span() for m, fixed in zip(found, runs, strict=True) if fixed is None]
        around = (sql[: spans[0][0]], sql[spans[0][1] :]) if len(spans) == 1 else None
        return cls(runs, around)

    def fits(self, runs: list[str]) -> bool:
        """Whether ``runs`` (of a text with this template's key) are the same in its
        fixed places and integer constants in its free ones."""
        for digits, fixed in zip(runs, self.runs, strict=True):
            if fixed is None:
                if not _int4(digits):
                    return False  # a numeric (FCONST): another text
            elif digits != fixed:
                return False
        return True

    def fits_text(self, sql: str) -> bool:
        """Whether ``sql`` is this template's text but for its one free integer: the same
        characters around it, and an integer constant in its place. False for a template
        of more or fewer free runs (`fits` then)."""
        if self.around is None:
            return False
        before, after = self.around
        end = len(sql) - len(after)
        if end <= len(before) or not sql.startswith(before) or not sql.endswith(after):
            return False
        digits = sql[len(before) : end]
        return digits.isascii() and digits.isdigit() and _int4(digits)


def _int4(digits: str) -> bool:
    """Whether the ASCII ``digits`` are an int4 (what the scanner reads as an ICONST)."""
    value = digits.lstrip("0")  # (leading zeros: still an ICONST)
    return len(value) < _INT4_DIGITS or (
        len(value) == _INT4_DIGITS and int(value) <= _INT4_MAX
    )


def integers_blanked(sql: str) -> str | None:
    """``sql`` with each integer constant blanked out; None when it has none, is not
    ASCII (the scanner counts bytes) or cannot be scanned."""
    if not sql.isascii():
        return None
    try:
        tokens = pg_parser.scan(sql)
    except pg_parser.ParseError:
        return None
    pieces: list[str] = []
    at = 0
    for token in tokens:
        if token.name == "ICONST":
            pieces += (sql[at : token.start], _BLANK)
            at = token.end + 1
    if not pieces:
        return None
    pieces.append(sql[at:])
    return "".join(pieces)


def only_compared_integers(sql: str) -> bool:
    """Whether every constant of ``sql`` (ASCII, with at least one integer constant) is
    an integer compared with ``=`` to a column (``id = 5``, ``5 = id``), and every
    integer the scanner finds is one of them."""
    try:
        tree = json.loads(pg_parser.parse_sql_json(sql))
        tokens = pg_parser.scan(sql)
    except (pg_parser.ParseError, ValueError, RecursionError):
        return False
    compared: set[int] = set()
    if not _constants_compared(tree, compared):
        return False
    return compared == {t.start for t in tokens if t.name == "ICONST"}


def _constants_compared(node: Any, compared: set[int]) -> bool:
    """False at the first constant of ``node`` that is not an integer compared with ``=``
    to a column; else True, the locations of those integers added to ``compared``."""
    if isinstance(node, list):
        return all(_constants_compared(item, compared) for item in node)
    if not isinstance(node, dict):
        return True
    if "A_Const" in node:
        return False
    expr = node.get("A_Expr")
    if isinstance(expr, dict) and expr.get("kind") == "AEXPR_OP" and expr.get("name") == [
        {"String": {"sval": "="}}
    ]:
        sides = [expr.get("lexpr"), expr.get("rexpr")]
        for i, side in enumerate(sides):
            const = side.get("A_Const") if isinstance(side, dict) else None
            other = sides[1 - i]
            if (
                isinstance(const, dict)
                and set(const) == {"ival", "location"}
                and isinstance(other, dict)
                and set(other) == {"ColumnRef"}
            ):
                compared.add(int(const["location"]))
                return _constants_compared(other, compared)
    return all(_constants_compared(value, compared) for value in node.values())
