"""Reading and writing one column value of a DataRow, and the StartupMessage ``options``.

`value_codec` gives, per (type oid, format code, client_encoding), a small immutable codec
whose ``decode`` turns the wire bytes into the string the tokenizers see and whose ``encode``
turns a (tokenized) string back into bytes the client's driver accepts for that type. Types
outside the short list return None: the session then fails closed. Codecs are cached, so
the per-value cost is one bound method call (for UTF-8 text: ``bytes.decode``/``str.encode``
plus a ``try``).

Client encodings follow PostgreSQL's names (`python_encoding`). ``SQL_ASCII`` means the
server does no conversion and the bytes may be in any encoding: it is read as strict ASCII,
so a non-ASCII value there is refused (ValueFormatError) rather than guessed at.

No message here carries a value: errors name the type and what was wrong only.
"""

from __future__ import annotations

import codecs
import re
import struct
from functools import lru_cache
from typing import Final

from proxy.errors import TokenProxyError

__all__ = [
    "BINARY",
    "OID_BPCHAR",
    "OID_INT2",
    "OID_INT4",
    "OID_INT8",
    "OID_NAME",
    "OID_NUMERIC",
    "OID_TEXT",
    "OID_UNKNOWN",
    "OID_VARCHAR",
    "TEXT",
    "ValueCodec",
    "ValueFormatError",
    "parse_options",
    "python_encoding",
    "value_codec",
]

TEXT: Final = 0
BINARY: Final = 1

OID_NAME: Final = 19
OID_INT8: Final = 20
OID_INT2: Final = 21
OID_INT4: Final = 23
OID_TEXT: Final = 25
OID_UNKNOWN: Final = 705
OID_BPCHAR: Final = 1042
OID_VARCHAR: Final = 1043
OID_NUMERIC: Final = 1700

_STRING_OIDS: Final = frozenset({OID_TEXT, OID_VARCHAR, OID_BPCHAR, OID_NAME, OID_UNKNOWN})


class ValueFormatError(TokenProxyError, ValueError):
    """A column value (or COPY row) is not in the form its type and encoding promise, or a
    tokenized value cannot be written back as that type. The message never holds the value."""


# PostgreSQL encoding name (as clean_encoding_name leaves it: lower case, alphanumerics
# only) -> Python codec. EUC_TW and MULE_INTERNAL have no Python codec: unsupported.
_ENCODINGS: Final[dict[str, str]] = {
    "utf8": "utf-8",
    "unicode": "utf-8",
    "sqlascii": "ascii",
    "latin1": "iso8859-1",
    "latin2": "iso8859-2",
    "latin3": "iso8859-3",
    "latin4": "iso8859-4",
    "latin5": "iso8859-9",
    "latin6": "iso8859-10",
    "latin7": "iso8859-13",
    "latin8": "iso8859-14",
    "latin9": "iso8859-15",
    "latin10": "iso8859-16",
    "iso88591": "iso8859-1",
    "iso88592": "iso8859-2",
    "iso88593": "iso8859-3",
    "iso88594": "iso8859-4",
    "iso88595": "iso8859-5",
    "iso88596": "iso8859-6",
    "iso88597": "iso8859-7",
    "iso88598": "iso8859-8",
    "iso88599": "iso8859-9",
    "iso885910": "iso8859-10",
    "iso885913": "iso8859-13",
    "iso885914": "iso8859-14",
    "iso885915": "iso8859-15",
    "iso885916": "iso8859-16",
    "win866": "cp866",
    "win874": "cp874",
    "win1250": "cp1250",
    "win1251": "cp1251",
    "win1252": "cp1252",
    "win1253": "cp1253",
    "win1254": "cp1254",
    "win1255": "cp1255",
    "win1256": "cp1256",
    "win1257": "cp1257",
    "win1258": "cp1258",
    "win": "cp1251",
    "alt": "cp866",
    "windows866": "cp866",
    "windows874": "cp874",
    "windows1250": "cp1250",
    "windows1251": "cp1251",
    "windows1252": "cp1252",
    "windows1253": "cp1253",
    "windows1254": "cp1254",
    "windows1255": "cp1255",
    "windows1256": "cp1256",
    "windows1257": "cp1257",
    "windows1258": "cp1258",
    "abc": "cp1258",
    "tcvn": "cp1258",
    "tcvn5712": "cp1258",
    "vscii": "cp1258",
    "koi8": "koi8-r",
    "koi8r": "koi8-r",
    "koi8u": "koi8-u",
    "eucjp": "euc_jp",
    "eucjis2004": "euc_jis_2004",
    "euccn": "gb2312",
    "euckr": "euc_kr",
    "sjis": "shift_jis",
    "mskanji": "shift_jis",
    "shiftjis": "shift_jis",
    "shiftjis2004": "shift_jis_2004",
    "gbk": "gbk",
    "cp936": "gbk",
    "gb18030": "gb18030",
    "big5": "big5",
    "uhc": "cp949",
    "johab": "johab",
}

_NOT_ALNUM: Final = re.compile(r"[^0-9a-z]")


def python_encoding(pg_name: str) -> str | None:
    """The Python codec for a PostgreSQL encoding name (any case, ``-``/``_`` ignored, as
    PostgreSQL matches them), or None when unsupported (the caller fails closed)."""
    return _ENCODINGS.get(_NOT_ALNUM.sub("", pg_name.lower()))


class ValueCodec:
    """Decode one column value from the wire to a string, and encode a string back."""

    __slots__ = ("format_code", "type_oid")

    def __init__(self, type_oid: int, format_code: int) -> None:
        self.type_oid = type_oid
        self.format_code = format_code

    def decode(self, raw: bytes) -> str:
        """The value as a string; ValueFormatError if the bytes are not a valid value."""
        raise NotImplementedError

    def encode(self, text: str) -> bytes:
        """The string as wire bytes of this type; ValueFormatError if it cannot be one."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(oid={self.type_oid}, format={self.format_code})"


def _bad(what: str, codec: ValueCodec) -> ValueFormatError:
    return ValueFormatError(
        f"{what} (type oid {codec.type_oid}, format {codec.format_code}); the value is withheld"
    )


class _StringCodec(ValueCodec):
    """text, varchar, bpchar, name, unknown: the string in the client encoding, both formats."""

    __slots__ = ("_encoding",)

    def __init__(self, type_oid: int, format_code: int, encoding: str) -> None:
        super().__init__(type_oid, format_code)
        self._encoding = encoding

    def decode(self, raw: bytes) -> str:
        try:
            return raw.decode(self._encoding)
        except UnicodeDecodeError:
            raise _bad("value is not valid in the client encoding", self) from None

    def encode(self, text: str) -> bytes:
        try:
            return text.encode(self._encoding)
        except UnicodeEncodeError:
            raise _bad("value cannot be written in the client encoding", self) from None


# PostgreSQL's integer output: an optional minus, no leading zeros, no "-0".
_INT_TEXT: Final = re.compile(r"-?[1-9][0-9]*|0")
_NUMERIC_TEXT: Final = re.compile(r"[1-9][0-9]*|0")
_INT_RANGE: Final[dict[int, tuple[int, int, int]]] = {
    # oid: (bytes, min, max)
    OID_INT2: (2, -(2**15), 2**15 - 1),
    OID_INT4: (4, -(2**31), 2**31 - 1),
    OID_INT8: (8, -(2**63), 2**63 - 1),
}


class _IntCodec(ValueCodec):
    """int2/int4/int8: decimal ASCII (text) or big-endian two's complement (binary)."""

    __slots__ = ("_max", "_min", "_struct")

    def __init__(self, type_oid: int, format_code: int) -> None:
        super().__init__(type_oid, format_code)
        size, self._min, self._max = _INT_RANGE[type_oid]
        self._struct = struct.Struct({2: ">h", 4: ">i", 8: ">q"}[size])

    def _parse(self, text: str) -> int:
        if len(text) > 20 or _INT_TEXT.fullmatch(text) is None:
            raise _bad("not a canonical decimal integer (sign, digits, no leading zero)", self)
        value = int(text)
        if not self._min <= value <= self._max:
            raise _bad("integer out of range for the type", self)
        return value

    def decode(self, raw: bytes) -> str:
        if self.format_code == BINARY:
            if len(raw) != self._struct.size:
                raise _bad("binary integer of the wrong length", self)
            value: int = self._struct.unpack(raw)[0]
            return str(value)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise _bad("integer text is not ASCII", self) from None
        self._parse(text)
        return text

    def encode(self, text: str) -> bytes:
        value = self._parse(text)
        if self.format_code == BINARY:
            return self._struct.pack(value)
        return text.encode("ascii")


_NUMERIC_HEADER: Final = struct.Struct(">hhHH")
_NUMERIC_POS: Final = 0x0000
_NUMERIC_MAX_DIGITS: Final = 131072  # PostgreSQL's limit before the decimal point


class _NumericCodec(ValueCodec):
    """numeric holding a non-negative integer: text without sign, fraction or exponent;
    binary as PostgreSQL's base-10000 digits (ndigits, weight, sign, dscale, digits)."""

    __slots__ = ()

    def _check(self, text: str) -> None:
        if len(text) > _NUMERIC_MAX_DIGITS or _NUMERIC_TEXT.fullmatch(text) is None:
            raise _bad("numeric is not a non-negative integer without leading zeros", self)

    def decode(self, raw: bytes) -> str:
        if self.format_code == BINARY:
            return self._decode_binary(raw)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise _bad("numeric text is not ASCII", self) from None
        self._check(text)
        return text

    def _decode_binary(self, raw: bytes) -> str:
        if len(raw) < _NUMERIC_HEADER.size:
            raise _bad("binary numeric too short", self)
        header: tuple[int, int, int, int] = _NUMERIC_HEADER.unpack_from(raw)
        ndigits, weight, sign, dscale = header
        if len(raw) != _NUMERIC_HEADER.size + 2 * ndigits or ndigits < 0:
            raise _bad("binary numeric of the wrong length", self)
        if sign != _NUMERIC_POS or dscale != 0:
            raise _bad("numeric is not a non-negative integer", self)
        if ndigits == 0:
            return "0"
        if weight < ndigits - 1:
            raise _bad("numeric has a fraction", self)
        digits = struct.unpack_from(f">{ndigits}h", raw, _NUMERIC_HEADER.size)
        if any(not 0 <= d <= 9999 for d in digits):
            raise _bad("binary numeric digit out of range", self)
        text = "".join(f"{d:04d}" for d in digits).lstrip("0")
        if not text:
            return "0"
        return text + "0000" * (weight - (ndigits - 1))

    def encode(self, text: str) -> bytes:
        self._check(text)
        if self.format_code != BINARY:
            return text.encode("ascii")
        if text == "0":
            return _NUMERIC_HEADER.pack(0, 0, _NUMERIC_POS, 0)
        pad = -len(text) % 4
        padded = "0" * pad + text
        digits = [int(padded[i : i + 4]) for i in range(0, len(padded), 4)]
        weight = len(digits) - 1
        while digits[-1] == 0:
            digits.pop()
        ndigits = len(digits)
        return _NUMERIC_HEADER.pack(ndigits, weight, _NUMERIC_POS, 0) + struct.pack(
            f">{ndigits}h", *digits
        )


@lru_cache(maxsize=256)
def value_codec(type_oid: int, format_code: int, encoding: str) -> ValueCodec | None:
    """The codec for a column of ``type_oid`` sent in ``format_code`` (0 text, 1 binary)
    under the PostgreSQL ``client_encoding`` named ``encoding``; None when unsupported."""
    if format_code not in (TEXT, BINARY):
        return None
    if type_oid in _STRING_OIDS:
        py = python_encoding(encoding)
        if py is None:
            return None
        return _StringCodec(type_oid, format_code, codecs.lookup(py).name)
    if type_oid in _INT_RANGE:
        return _IntCodec(type_oid, format_code)
    if type_oid == OID_NUMERIC:
        return _NumericCodec(type_oid, format_code)
    return None


# PostgreSQL's backend switches (postgres.c process_postgres_switches): those that take an
# argument. ``-c name=value`` and ``--name=value`` set parameters; the rest concern the
# server only and are skipped.
_SWITCHES_WITH_ARG: Final = frozenset("BcCDdfhkNprStvW")
_SWITCHES_NO_ARG: Final = frozenset("beEFijlnOPsT")


def _split_options(options: str) -> list[str]:
    """Split as pg_split_opts does: on whitespace, a backslash escapes the next character."""
    words: list[str] = []
    current: list[str] = []
    in_word = False
    escaped = False
    for ch in options:
        if escaped:
            current.append(ch)
            escaped = False
            in_word = True
        elif ch == "\\":
            escaped = True
            in_word = True
        elif ch.isspace():
            if in_word:
                words.append("".join(current))
                current = []
                in_word = False
        else:
            current.append(ch)
            in_word = True
    if in_word:
        words.append("".join(current))
    return words


def _setting(arg: str) -> tuple[str, str]:
    name, eq, value = arg.partition("=")
    if not eq or not name:
        raise ValueFormatError("a startup option -c/-- needs name=value")
    return name.replace("-", "_").lower(), value


def parse_options(options: str) -> dict[str, str]:
    """The parameters a StartupMessage ``options`` value sets (``-c name=value``,
    ``-cname=value``, ``--name=value``, backslash-escaped spaces), names lower-cased with
    ``-`` as ``_`` (as PostgreSQL looks them up); later wins. ValueFormatError on anything
    PostgreSQL would refuse; other backend switches are skipped with their arguments."""
    settings: dict[str, str] = {}
    words = _split_options(options)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if len(word) < 2 or word[0] != "-":
            raise ValueFormatError("a startup option is not a -switch")
        if word.startswith("--"):
            name, value = _setting(word[2:])
            settings[name] = value
            continue
        j = 1
        while j < len(word):  # getopt: "-Fe" is "-F -e"; "-cname=v" carries its argument
            switch, j = word[j], j + 1
            if switch in _SWITCHES_NO_ARG:
                continue
            if switch not in _SWITCHES_WITH_ARG:
                raise ValueFormatError("a startup option uses an unknown switch")
            rest, j = word[j:], len(word)
            if not rest:
                if i >= len(words):
                    raise ValueFormatError(f"startup option -{switch} needs an argument")
                rest = words[i]
                i += 1
            if switch == "c":
                name, value = _setting(rest)
                settings[name] = value
    return settings
