"""Scrubbing the fields of ErrorResponse and NoticeResponse before they reach the client.

PostgreSQL echoes values in its messages: a unique violation prints the duplicate key, a
not-null or check violation the whole failing row, a failed input conversion the input.
`scrub_fields` rewrites them:

- values the statement resolved from tokens (``known``: real value -> token) become their
  token again wherever they appear, longest first;
- ``Key (cols)=(values) ...`` details (unique, foreign key, exclusion, CREATE UNIQUE INDEX,
  partition routing): values of protected columns are tokenized; a value list that cannot
  be split unambiguously, or one keyed by an expression over protected data, is hidden;
- when the statement touches protected data (``touches_protected``): a failing row is
  hidden, double-quoted value echoes in the message, detail and hint become ``"..."``
  (identifiers after ``relation``, ``column``, ``constraint``... stay), byte dumps
  (``0xc3 0xa9``) become ``0x..``, and the context (W), internal query (q) and any field
  code this module does not know are dropped.

Fields that hold only identifiers, codes or positions (S V C P p F L R n t c s d) are never
touched. Nothing here raises: a field that cannot be processed is hidden instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Final

from proxy.crypto.tokens import Kind

__all__ = ["FAILING_ROW_HIDDEN", "scrub_fields"]

FAILING_ROW_HIDDEN: Final = "Failing row contains (values hidden by tokenproxy)."
_DETAIL_HIDDEN: Final = "(detail hidden by tokenproxy)"
_MESSAGE_HIDDEN: Final = "(message hidden by tokenproxy)"
_LIST_HIDDEN: Final = "(...)"
_VALUE_HIDDEN: Final = "..."

# Codes that hold identifiers, SQLSTATE, severity, positions or source locations only.
_UNTOUCHED: Final = frozenset("SVCPpFLRntcsd")
_ECHOING: Final = frozenset("MDH")  # message, detail, hint: value echoes are redacted
_DROPPED: Final = frozenset("Wq")  # context, internal query: dropped when protected

# The values, then the end of a key detail; the greedy group puts the split at the last
# place it can be, so a value holding the suffix text stays inside the values.
_KEY_SUFFIXES: Final = re.compile(
    r"(.*)\) (?:already exists|is duplicated|is not present in table \".*\""
    r"|is still referenced from table \".*\")\.\Z",
    re.DOTALL,
)
_KEY_PREFIXES: Final = (
    ("Key (", ")=("),
    ("Partition key of the failing row contains (", ") = ("),
)
_FAILING_ROW: Final = re.compile(r"failing row", re.IGNORECASE)
_KEYISH: Final = re.compile(r"\)\s*=\s*\(")
# A double quote preceded by one of these words opens an identifier, not a value.
_IDENTIFIER_BEFORE: Final = re.compile(
    r"(?:\b(?:relation|table|column|constraint|index|type|schema|function|procedure|"
    r"routine|aggregate|sequence|view|encoding|database|role|user|operator|trigger|"
    r"extension|parameter|cursor|statement|portal|savepoint|collation|domain|policy|"
    r"publication|subscription|server|tablespace|language|rule|conversion|family|class|"
    r"method|wrapper|mapping|channel|attribute|at or near)) \Z",
    re.IGNORECASE,
)
_BYTE_DUMP: Final = re.compile(r"0x[0-9a-fA-F]{2}(?: 0x[0-9a-fA-F]{2})*")
_IDENTIFIER: Final = re.compile(
    r'[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*|"(?:[^"]|"")+"'
)

Tokenize = Callable[[Kind, str], str]


class _Scrubber:
    """The state of one scrub: the known replacements and the tokens seen or produced."""

    def __init__(
        self,
        known: Mapping[str, str],
        protected_columns: Mapping[str, Kind],
        tokenize: Tokenize,
        touches_protected: bool,
    ) -> None:
        self.known = {k: v for k, v in known.items() if k}
        self.keep = set(known.values())
        self.tokenize = tokenize
        self.touches = touches_protected
        self.columns = {name.lower(): kind for name, kind in protected_columns.items()}
        self.known_re = (
            re.compile("|".join(re.escape(k) for k in sorted(self.known, key=len, reverse=True)))
            if self.known
            else None
        )

    def sub_known(self, text: str) -> str:
        if self.known_re is None:
            return text
        return self.known_re.sub(lambda m: self.known[m.group(0)], text)

    # -- key details ---------------------------------------------------------------------

    def column_kind(self, column: str) -> Kind | bool | None:
        """Kind of a protected plain column, None for an unprotected one, True for an
        expression over protected data (or any expression when the statement is protected)."""
        if _IDENTIFIER.fullmatch(column) is None:
            if self.touches:
                return True
            words = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", column)}
            return True if words & set(self.columns) else None
        name = column[1:-1].replace('""', '"') if column.startswith('"') else column
        return self.columns.get(name.lower())

    def value(self, kind: Kind | bool | None, value: str) -> str:
        if kind is None:
            return self.sub_known(value)
        if value in self.known:
            return self.known[value]
        if kind is True or kind is False:
            return _VALUE_HIDDEN
        if value == "null" or value in self.keep:
            return value
        try:
            token = self.tokenize(kind, value)
        except Exception:  # a value that cannot be tokenized is hidden, never shown
            return _VALUE_HIDDEN
        self.keep.add(token)
        return token

    def values(self, kinds: list[Kind | bool | None], text: str) -> str:
        parts = [text] if len(kinds) == 1 else text.split(", ")
        if len(parts) != len(kinds):
            if any(k is not None for k in kinds):
                return _LIST_HIDDEN
            return "(" + self.sub_known(text) + ")"
        return "(" + ", ".join(self.value(k, v) for k, v in zip(kinds, parts, strict=True)) + ")"

    def key_detail(self, text: str) -> str | None:
        """The detail with its key values scrubbed, or None if it is not a key detail."""
        found = next(((p, s) for p, s in _KEY_PREFIXES if text.startswith(p)), None)
        if found is None:
            return None
        prefix, sep = found
        end = _close_paren(text, len(prefix))
        if end < 0 or not text.startswith(sep, end):
            return None
        cols_text = text[len(prefix) : end]
        columns = _split_columns(cols_text)
        if columns is None:
            return None
        kinds = [self.column_kind(c) for c in columns]
        start = end + len(sep)
        head = self.sub_known(text[: end + len(sep) - 1])
        if prefix.startswith("Partition"):
            if not text.endswith(")."):
                return None
            return head + self.values(kinds, text[start:-2]) + "."
        conflict = f") conflicts with existing key ({cols_text})=("
        if conflict not in text[start:]:
            conflict = f") conflicts with key ({cols_text})=("
        if conflict in text[start:]:
            if text.count(conflict) != 1 or not text.endswith(")."):
                return head + _LIST_HIDDEN + " conflicts with an existing key " + _LIST_HIDDEN + "."
            at = text.index(conflict)
            return (
                head
                + self.values(kinds, text[start:at])
                + self.sub_known(conflict[1:-1])
                + self.values(kinds, text[at + len(conflict) : -2])
                + "."
            )
        m = _KEY_SUFFIXES.match(text, start)
        if m is None:
            return None
        values = self.values(kinds, m.group(1))
        return head + values + self.sub_known(text[m.end(1) + 1 :])

    def mentions_protected(self, text: str) -> bool:
        words = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", text)}
        return bool(words & set(self.columns))

    # -- value echoes --------------------------------------------------------------------

    def redact_echoes(self, text: str) -> str:
        """Quoted fragments that are not identifiers become "..." (unless a token)."""
        out: list[str] = []
        pos = 0
        while True:
            q = text.find('"', pos)
            if q < 0:
                out.append(text[pos:])
                break
            out.append(text[pos:q])
            if _IDENTIFIER_BEFORE.search(text, 0, q) is not None:
                close = text.find('"', q + 1)
                if close < 0:
                    out.append('"' + _VALUE_HIDDEN)
                    break
                out.append(text[q : close + 1])
                pos = close + 1
                continue
            close = text.rfind('"')
            if close <= q:  # unterminated: hide to the end
                out.append('"' + _VALUE_HIDDEN)
                break
            inner = text[q + 1 : close]
            out.append(text[q : close + 1] if inner in self.keep else '"' + _VALUE_HIDDEN + '"')
            pos = close + 1
        return _BYTE_DUMP.sub("0x..", "".join(out))

    # -- one field -----------------------------------------------------------------------

    def field(self, code: str, text: str) -> str | None:
        if code in _UNTOUCHED:
            return text
        if code in _DROPPED or code not in _ECHOING:
            return None if self.touches else self.sub_known(text)
        if code == "D":
            keyed = self.key_detail(text)
            if keyed is not None:
                return keyed
            if _FAILING_ROW.search(text) is not None:
                if self.touches:
                    return FAILING_ROW_HIDDEN
                return _DETAIL_HIDDEN if self.mentions_protected(text) else self.sub_known(text)
            if _KEYISH.search(text) is not None and (self.touches or self.mentions_protected(text)):
                return _DETAIL_HIDDEN
        text = self.sub_known(text)
        return self.redact_echoes(text) if self.touches else text


def _close_paren(text: str, start: int) -> int:
    """Index of the ``)`` closing a list opened just before ``start`` (quotes respected)."""
    depth = 0
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in "\"'":
            close = text.find(ch, i + 1)
            while close >= 0 and text.startswith(ch, close + 1):  # doubled quote
                close = text.find(ch, close + 2)
            if close < 0:
                return -1
            i = close + 1
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    return -1


def _split_columns(text: str) -> list[str] | None:
    """The index columns or expressions of a key, split at top-level ``, ``."""
    columns: list[str] = []
    depth = 0
    start = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in "\"'":
            close = text.find(ch, i + 1)
            while close >= 0 and text.startswith(ch, close + 1):
                close = text.find(ch, close + 2)
            if close < 0:
                return None
            i = close + 1
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            columns.append(text[start:i].strip())
            start = i + 1
        i += 1
    columns.append(text[start:].strip())
    return columns if all(columns) else None


def scrub_fields(
    fields: Mapping[str, str],
    *,
    touches_protected: bool,
    known: Mapping[str, str],
    protected_columns: Mapping[str, Kind],
    tokenize: Callable[[Kind, str], str],
) -> dict[str, str]:
    """A copy of an ErrorResponse/NoticeResponse's fields with protected values tokenized
    or hidden (see the module docstring). Never raises."""
    try:
        scrubber = _Scrubber(known, protected_columns, tokenize, touches_protected)
    except Exception:  # unusable inputs: keep only what never carries a value
        return {k: v for k, v in fields.items() if k in _UNTOUCHED} | {"M": _MESSAGE_HIDDEN}
    out: dict[str, str] = {}
    for code, text in fields.items():
        try:
            scrubbed = scrubber.field(code, text)
        except Exception:  # hide what could not be processed
            scrubbed = _MESSAGE_HIDDEN if code == "M" else None
        if scrubbed is not None:
            out[code] = scrubbed
    return out
