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
"""

from __future__ import annotations

import json
from typing import Any

from pglast import parser as pg_parser

__all__ = ["integers_blanked", "only_compared_integers"]

_BLANK = "\x00"  # (never in a statement's text: the protocol's strings end at a NUL)


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
