"""COPY ... TO STDOUT rows: CopyData payloads to fields, and fields back to bytes.

PostgreSQL sends one row per CopyData message; `CopyRowReader` keeps a buffer anyway, so a
message holding several rows or part of one is read the same. Bytes are decoded with an
incremental decoder of the client encoding before any parsing, so a multi-byte character
whose trailing byte looks like a delimiter, quote or backslash (SJIS, BIG5, GBK...) is
never split.

Text format (COPY's default): fields split by the delimiter (tab), ``\\N`` for NULL (or
the NULL option), backslash escapes ``\\b \\f \\n \\r \\t \\v \\\\ \\ooo \\xhh`` and a
backslash before any other character for that character. CSV: QUOTE (``"``), ESCAPE (the
quote), NULL (unquoted empty string), quoted fields holding delimiters, quotes and newlines.
`CopyRowReader.encode_row` writes fields as PostgreSQL's COPY TO does (CopyAttributeOutText
and CopyAttributeOutCSV), so an unchanged row comes back byte for byte. Binary COPY is not
supported (UnsupportedCopyFormat).

A text-format value equal to a custom NULL string (``NULL 'nil'``) is written by PostgreSQL
unescaped and so reads back as NULL (as COPY FROM would read it): PostgreSQL's ambiguity.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from proxy.errors import TokenProxyError
from proxy.pg.values import ValueFormatError, python_encoding

__all__ = ["CopyRow", "CopyRowReader", "UnsupportedCopyFormat"]


class UnsupportedCopyFormat(TokenProxyError):
    """A COPY the proxy cannot rewrite (binary format, an odd delimiter or encoding)."""


@dataclass(frozen=True, slots=True)
class CopyRow:
    """One COPY row: its fields (None for NULL), whether it is the HEADER line, and (CSV)
    which fields were quoted (pass it back to `CopyRowReader.encode_row` to keep them so)."""

    fields: tuple[str | None, ...]
    header: bool = False
    quoted: tuple[bool, ...] = ()


_TEXT_FORBIDDEN_DELIMITERS: Final = "\\.abcdefghijklmnopqrstuvwxyz0123456789"
_TEXT_ESCAPES: Final = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_MAX_BUFFER: Final = 1 << 30


def _one_ascii(option: str, value: str) -> str:
    if len(value) != 1 or not value.isascii():
        raise UnsupportedCopyFormat(f"COPY {option} must be a single one-byte character")
    if value in "\r\n":
        raise UnsupportedCopyFormat(f"COPY {option} cannot be newline or carriage return")
    return value


class CopyRowReader:
    """Decode COPY TO STDOUT output (text or CSV) into rows, and encode rows back.

    ``format`` is ``text`` or ``csv``; ``delimiter`` None for the default (tab, comma);
    ``header`` whether the first line holds column names; ``encoding`` PostgreSQL's name of
    the client encoding (or the COPY's ENCODING option). ``null``, ``quote`` and ``escape``
    are the COPY options of the same names (None: PostgreSQL's defaults); ``columns``, when
    given, is the number of fields every row must have (ValueFormatError otherwise).
    """

    def __init__(
        self,
        format: str,
        delimiter: str | None,
        header: bool,
        encoding: str,
        *,
        null: str | None = None,
        quote: str | None = None,
        escape: str | None = None,
        columns: int | None = None,
    ) -> None:
        fmt = format.lower()
        if fmt == "binary":
            raise UnsupportedCopyFormat(
                "binary COPY cannot be rewritten by tokenproxy: use FORMAT text or FORMAT csv"
            )
        if fmt not in ("text", "csv"):
            raise UnsupportedCopyFormat("unknown COPY format: use FORMAT text or FORMAT csv")
        py = python_encoding(encoding)
        if py is None:
            raise UnsupportedCopyFormat(
                f"client encoding {encoding!r} is not supported by tokenproxy: use UTF8"
            )
        self._csv = fmt == "csv"
        self._encoding = codecs.lookup(py).name
        self._decoder = codecs.getincrementaldecoder(self._encoding)("strict")
        self._delim = _one_ascii("delimiter", delimiter or ("," if self._csv else "\t"))
        self._null = ("" if self._csv else "\\N") if null is None else null
        if "\r" in self._null or "\n" in self._null:
            raise UnsupportedCopyFormat("COPY null representation cannot hold a newline")
        self._columns = columns
        self._header_pending = header
        self._buffer = ""
        self._pos = 0
        if self._csv:
            self._quote = _one_ascii("quote", quote or '"')
            self._escape = _one_ascii("escape", escape or self._quote)
            if self._delim == self._quote:
                raise UnsupportedCopyFormat("COPY delimiter and quote must be different")
            if self._delim in self._null or self._quote in self._null:
                raise UnsupportedCopyFormat("COPY null cannot hold the delimiter or quote")
            self._compile_csv()
        else:
            if quote is not None or escape is not None:
                raise UnsupportedCopyFormat("COPY quote and escape are for CSV only")
            if self._delim in _TEXT_FORBIDDEN_DELIMITERS:
                raise UnsupportedCopyFormat("COPY delimiter cannot be that character")
            if self._delim in self._null:
                raise UnsupportedCopyFormat("COPY null cannot hold the delimiter")
            self._compile_text()

    # -- text format ---------------------------------------------------------------------

    def _compile_text(self) -> None:
        d = self._delim
        table = {"\\": "\\\\", d: "\\" + d}
        table.update({v: "\\" + k for k, v in _TEXT_ESCAPES.items()})
        self._out_table = str.maketrans(table)
        self._out_needs = re.compile("[" + re.escape("".join(table)) + "]").search
        # One field: runs of plain characters and escapes, up to a delimiter or the end.
        self._text_token = re.compile(
            r"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))|([^\\" + re.escape(d) + r"]+)",
            re.DOTALL,
        )

    def _text_line_end(self) -> int:
        """Index of the newline ending the next line (a backslash-escaped one is data)."""
        buf = self._buffer
        start = self._pos
        while True:
            nl = buf.find("\n", start)
            if nl < 0:
                return -1
            back = nl
            while back > self._pos and buf[back - 1] == "\\":
                back -= 1
            if (nl - back) % 2 == 0:
                return nl
            start = nl + 1

    def _text_fields(self, line: str) -> list[str | None]:
        if "\\" not in line:
            raws: list[str] = line.split(self._delim)
            return [None if r == self._null else r for r in raws]
        fields: list[str | None] = []
        pos = 0
        end = len(line)
        while True:
            stop = pos
            parts: list[str] = []
            pending = bytearray()
            while stop < end and line[stop] != self._delim:
                m = self._text_token.match(line, stop)
                if m is None:  # a lone backslash at the end of the line
                    raise ValueFormatError("COPY text row ends in a lone backslash")
                octal, hexa, other, plain = m.groups()
                if octal is not None or hexa is not None:
                    byte = int(octal, 8) if octal is not None else int(hexa, 16)
                    pending.append(byte & 0xFF)
                else:
                    if pending:
                        parts.append(self._decode_escaped(pending))
                        pending = bytearray()
                    if other is not None:
                        parts.append(_TEXT_ESCAPES.get(other, other))
                    else:
                        parts.append(plain)
                stop = m.end()
            if pending:
                parts.append(self._decode_escaped(pending))
            raw = line[pos:stop]
            fields.append(None if raw == self._null else "".join(parts))
            if stop >= end:
                return fields
            pos = stop + 1

    def _decode_escaped(self, data: bytearray) -> str:
        try:
            return bytes(data).decode(self._encoding)
        except UnicodeDecodeError:
            raise ValueFormatError(
                "COPY text row has escaped bytes invalid in the client encoding"
            ) from None

    def _encode_text(self, fields: Sequence[str | None]) -> str:
        needs = self._out_needs
        table = self._out_table
        out = [self._null if f is None else (f.translate(table) if needs(f) else f) for f in fields]
        return self._delim.join(out) + "\n"

    # -- CSV -----------------------------------------------------------------------------

    def _compile_csv(self) -> None:
        q, e, d = (re.escape(c) for c in (self._quote, self._escape, self._delim))
        quoted = f"{q}(?>{e}[{e}{q}]|[^{q}])*+{q}" if e != q else f"{q}(?:[^{q}]|{q}{q})*+{q}"
        self._csv_line = re.compile(f"(?:[^{q}\\n]++|{quoted})*+\\n")
        self._csv_field = re.compile(f"(?:[^{q}{d}]++|{quoted})*+")
        self._csv_segment = re.compile(quoted)
        unescape: Callable[[str], str]
        if e == q:
            doubled = self._quote * 2
            quote = self._quote

            def unescape(s: str) -> str:
                return s.replace(doubled, quote)
        else:
            pairs = re.compile(f"{e}([{e}{q}])")

            def unescape(s: str) -> str:
                return pairs.sub(r"\1", s)

        self._csv_unescape = unescape
        self._csv_out_needs = re.compile(f"[{d}{q}\\n\\r]").search
        self._csv_out_escape = re.compile(f"[{q}{e}]" if e != q else q)

    def _csv_fields(self, line: str) -> tuple[list[str | None], list[bool]]:
        fields: list[str | None] = []
        quoted: list[bool] = []
        q = self._quote
        if q not in line:
            for raw in line.split(self._delim):
                fields.append(None if raw == self._null else raw)
                quoted.append(False)
            return fields, quoted
        pos = 0
        end = len(line)
        unescape = self._csv_unescape
        while True:
            m = self._csv_field.match(line, pos)
            assert m is not None  # the pattern matches the empty string
            raw = m.group(0)
            stop = m.end()
            if stop < end and line[stop] != self._delim:
                raise ValueFormatError("COPY CSV row has an unterminated quoted field")
            if q in raw:
                value = self._csv_segment.sub(lambda s: unescape(s.group(0)[1:-1]), raw)
                fields.append(value)
                quoted.append(True)
            else:
                fields.append(None if raw == self._null else raw)
                quoted.append(False)
            if stop >= end:
                return fields, quoted
            pos = stop + 1

    def _encode_csv(self, fields: Sequence[str | None], quoted: Sequence[bool]) -> str:
        out: list[str] = []
        single = len(fields) == 1
        needs = self._csv_out_needs
        q = self._quote
        e = self._escape
        for i, f in enumerate(fields):
            if f is None:
                out.append(self._null)
                continue
            if (
                (i < len(quoted) and quoted[i])
                or f == self._null
                or needs(f)
                or (single and f == "\\.")
            ):
                out.append(q + self._csv_out_escape.sub(lambda m: e + m.group(0), f) + q)
            else:
                out.append(f)
        return self._delim.join(out) + "\n"

    # -- public --------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[CopyRow]:
        """The complete rows the bytes received so far end; the rest waits in the buffer."""
        try:
            text = self._decoder.decode(data)
        except UnicodeDecodeError:
            raise ValueFormatError("COPY data is not valid in the client encoding") from None
        buf = self._buffer[self._pos :] + text if self._pos else self._buffer + text
        self._pos = 0
        if len(buf) > _MAX_BUFFER:
            raise ValueFormatError("COPY row too large")
        rows: list[CopyRow] = []
        if (self._quote if self._csv else "\\") not in buf:
            # Fast path: no escapes or quotes, so every newline ends a row.
            lines = buf.split("\n")
            self._buffer = lines.pop()
            null = self._null
            delim = self._delim
            for line in lines:
                raws = line.split(delim)
                fields = tuple([None if r == null else r for r in raws])
                rows.append(self._row(fields, (False,) * len(fields) if self._csv else ()))
            return rows
        self._buffer = buf
        while self._pos < len(buf):
            row = self._next_row()
            if row is None:
                break
            rows.append(row)
        if self._pos >= len(buf):
            self._buffer = ""
            self._pos = 0
        return rows

    def _row(self, fields: tuple[str | None, ...], quoted: tuple[bool, ...]) -> CopyRow:
        header = self._header_pending
        self._header_pending = False
        if self._columns is not None and len(fields) != self._columns:
            raise ValueFormatError(
                f"COPY row has {len(fields)} fields where {self._columns} were expected"
            )
        return CopyRow(fields, header, quoted)

    def _next_row(self) -> CopyRow | None:
        buf = self._buffer
        if self._csv:
            m = self._csv_line.match(buf, self._pos)
            if m is None:
                return None
            line = buf[self._pos : m.end() - 1]
            self._pos = m.end()
            csv_fields, csv_quoted = self._csv_fields(line)
            return self._row(tuple(csv_fields), tuple(csv_quoted))
        nl = self._text_line_end()
        if nl < 0:
            return None
        line = buf[self._pos : nl]
        self._pos = nl + 1
        return self._row(tuple(self._text_fields(line)), ())

    def encode_row(self, fields: Sequence[str | None], quoted: Sequence[bool] = ()) -> bytes:
        """One row as PostgreSQL writes it (with its newline), in the client encoding. In CSV,
        fields flagged in ``quoted`` (a `CopyRow.quoted`, e.g. from FORCE_QUOTE) stay quoted."""
        text = self._encode_csv(fields, quoted) if self._csv else self._encode_text(fields)
        try:
            return text.encode(self._encoding)
        except UnicodeEncodeError:
            raise ValueFormatError("COPY field cannot be written in the client encoding") from None

    def finish(self) -> None:
        """At CopyDone: ValueFormatError if a partial row (or character) is left over."""
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValueFormatError("COPY data ends inside a character") from None
        if self._pos < len(self._buffer):
            raise ValueFormatError("COPY data ends inside a row")
