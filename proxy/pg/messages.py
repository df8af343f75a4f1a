"""The messages of the PostgreSQL frontend/backend protocol 3.0 and 3.2, and their encoders.

Every message is a frozen, slotted dataclass whose ``encode()`` returns its exact wire
bytes. Decoding lives in `proxy.pg.codec`; this module knows nothing of buffers.

Conventions (the same for every message):

- A protocol ``String`` (NUL-terminated) is a ``str``, decoded as UTF-8 with
  ``surrogateescape``: any byte sequence round-trips exactly, and UTF-8 text (the proxy's
  client_encoding) reads naturally. A session that allows another client_encoding gets the
  original bytes back with ``s.encode("utf-8", "surrogateescape")``.
- Column values, parameter values, COPY data and authentication payloads are ``bytes``
  (``None`` for SQL NULL). Repeated items are tuples and key/value sets are read-only
  mappings, so a message cannot change after it is built (see ``raw`` below).
- Counts are Int16 on the wire and read unsigned (0..65535), as PostgreSQL reads them; OIDs
  are unsigned 32-bit; lengths, pids, type sizes and modifiers are signed.
- Encoding a message the wire cannot carry (a NUL inside a String, an empty startup
  parameter name, a cancel key outside 4..256 bytes, ...) raises
  `proxy.errors.InvalidInputError`; an integer out of its wire range raises `struct.error`.
  Decoding errors are the codec's `ProtocolError`: the peer's fault, not the caller's.

``raw``: a message that came out of a decoder carries the exact bytes it arrived as (type
byte and length included) in ``raw`` (unless the decoder was made with ``keep_raw=False``);
a message built in code has ``raw = None``. ``raw`` is
not an ``__init__`` argument and takes no part in equality, and ``dataclasses.replace``
resets it, so a rewritten message (say a DataRow with a column tokenized) can never be
forwarded with its stale original bytes. ``wire()`` is ``raw`` when present, else
``encode()``: what a pump sends for a message it did not change.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Final, Literal, TypeAlias

from proxy.errors import InvalidInputError

__all__ = [
    "CANCEL_REQUEST_CODE",
    "GSSENC_REQUEST_CODE",
    "MAX_CANCEL_KEY_LENGTH",
    "MIN_CANCEL_KEY_LENGTH",
    "PROTOCOL_3_0",
    "PROTOCOL_3_2",
    "SSL_REQUEST_CODE",
    "AuthenticationCleartextPassword",
    "AuthenticationGSS",
    "AuthenticationGSSContinue",
    "AuthenticationMD5Password",
    "AuthenticationMessage",
    "AuthenticationOk",
    "AuthenticationOther",
    "AuthenticationSASL",
    "AuthenticationSASLContinue",
    "AuthenticationSASLFinal",
    "AuthenticationSSPI",
    "BackendKeyData",
    "BackendMessage",
    "Bind",
    "BindComplete",
    "CancelRequest",
    "Close",
    "CloseComplete",
    "CommandComplete",
    "CopyBothResponse",
    "CopyData",
    "CopyDone",
    "CopyFail",
    "CopyInResponse",
    "CopyOutResponse",
    "DataRow",
    "Describe",
    "EmptyQueryResponse",
    "EncryptionResponse",
    "ErrorResponse",
    "Execute",
    "FieldDescription",
    "Flush",
    "FrontendMessage",
    "FunctionCall",
    "FunctionCallResponse",
    "GSSENCRequest",
    "GSSResponse",
    "Message",
    "NegotiateProtocolVersion",
    "NoData",
    "NoticeResponse",
    "NotificationResponse",
    "ParameterDescription",
    "ParameterStatus",
    "Parse",
    "ParseComplete",
    "Passthrough",
    "PasswordLike",
    "PasswordMessage",
    "PortalSuspended",
    "Query",
    "ReadyForQuery",
    "RowDescription",
    "SASLInitialResponse",
    "SASLResponse",
    "SSLRequest",
    "StartupMessage",
    "Sync",
    "Terminate",
    "Unknown",
    "error_response",
    "notice_response",
]

PROTOCOL_3_0: Final = 3 << 16
PROTOCOL_3_2: Final = (3 << 16) | 2  # PostgreSQL 18: variable-length cancel keys
SSL_REQUEST_CODE: Final = 80877103  # 1234.5679
GSSENC_REQUEST_CODE: Final = 80877104  # 1234.5680
CANCEL_REQUEST_CODE: Final = 80877102  # 1234.5678
MIN_CANCEL_KEY_LENGTH: Final = 4
MAX_CANCEL_KEY_LENGTH: Final = 256

_I8 = struct.Struct("!B")
_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_PACK_I32 = _I32.pack
_PACK_U16 = _U16.pack
_NULL: Final = b"\xff\xff\xff\xff"  # Int32 -1: SQL NULL


def _cstr(value: str, what: str) -> bytes:
    """A protocol String: UTF-8 (surrogateescape) bytes and the terminating NUL."""
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{what} cannot be encoded as UTF-8: {exc.reason}") from None
    if b"\0" in data:
        raise InvalidInputError(f"{what} contains a NUL byte, which a protocol String cannot")
    return data + b"\0"


def _frame(type_byte: bytes, body: bytes) -> bytes:
    return type_byte + _PACK_I32(len(body) + 4) + body


def _values(values: tuple[bytes | None, ...]) -> list[bytes]:
    """Int16 count, then each value as Int32 length (-1 for NULL) and its bytes."""
    parts = [_PACK_U16(len(values))]
    append = parts.append
    for value in values:
        if value is None:
            append(_NULL)
        else:
            append(_PACK_I32(len(value)))
            append(value)
    return parts


def _int16s(values: tuple[int, ...]) -> bytes:
    return _PACK_U16(len(values)) + struct.pack(f"!{len(values)}h", *values)


def _oids(values: tuple[int, ...]) -> bytes:
    return _PACK_U16(len(values)) + struct.pack(f"!{len(values)}I", *values)


def _kind(kind: str, what: str) -> bytes:
    if kind not in ("S", "P"):
        raise InvalidInputError(f"{what} kind must be 'S' (statement) or 'P' (portal)")
    return kind.encode("ascii")


# ============================================================================
# The base
# ============================================================================


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every message. ``raw``: the bytes it was decoded from, or None (see above)."""

    raw: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def encode(self) -> bytes:
        """The exact wire bytes of this message."""
        raise NotImplementedError

    def wire(self) -> bytes:
        """The bytes to send: ``raw`` when the message came off the wire unchanged."""
        raw = self.raw
        return raw if raw is not None else self.encode()


@dataclass(frozen=True, slots=True)
class _Fixed(Message):
    """A message with no content: its wire bytes are a constant of the class."""

    TYPE: ClassVar[bytes]
    WIRE: ClassVar[bytes]

    def encode(self) -> bytes:
        return self.WIRE


# ============================================================================
# Startup phase: no type byte (frontend)
# ============================================================================


@dataclass(frozen=True, slots=True)
class StartupMessage(Message):
    """The first message of a session: protocol version and parameters (user, database...).

    ``version`` is major << 16 | minor: `PROTOCOL_3_0` or `PROTOCOL_3_2` (3.1 was skipped);
    any 3.x decodes, and the session answers a minor it does not speak with
    NegotiateProtocolVersion. Parameters keep their wire order; names starting with
    ``_pq_.`` are protocol options, not settings.
    """

    parameters: Mapping[str, str]
    version: int = PROTOCOL_3_0

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", MappingProxyType(dict(self.parameters)))

    @property
    def major(self) -> int:
        return self.version >> 16

    @property
    def minor(self) -> int:
        return self.version & 0xFFFF

    def encode(self) -> bytes:
        parts = [_U32.pack(self.version)]
        for name, value in self.parameters.items():
            if not name:
                raise InvalidInputError("a startup parameter name cannot be empty")
            parts.append(_cstr(name, "a startup parameter name"))
            parts.append(_cstr(value, f"startup parameter {name!r}"))
        parts.append(b"\0")
        body = b"".join(parts)
        return _PACK_I32(len(body) + 4) + body


@dataclass(frozen=True, slots=True)
class SSLRequest(Message):
    """Asks for TLS; the server answers one unframed byte (see `EncryptionResponse`)."""

    def encode(self) -> bytes:
        return _I32.pack(8) + _U32.pack(SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest(Message):
    """Asks for GSSAPI encryption; the server answers one unframed byte ('G' or 'N')."""

    def encode(self) -> bytes:
        return _I32.pack(8) + _U32.pack(GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest(Message):
    """Sent on a new connection to cancel a running query of the session ``pid``.

    ``secret_key`` is 4 bytes in protocol 3.0 and 4 to 256 bytes in 3.2 (PostgreSQL 18
    sends 32): the key is whatever BackendKeyData gave, echoed verbatim.
    """

    pid: int
    secret_key: bytes

    def encode(self) -> bytes:
        key = self.secret_key
        if not MIN_CANCEL_KEY_LENGTH <= len(key) <= MAX_CANCEL_KEY_LENGTH:
            raise InvalidInputError(
                f"a cancel key must be {MIN_CANCEL_KEY_LENGTH} to {MAX_CANCEL_KEY_LENGTH} "
                f"bytes, not {len(key)}"
            )
        return struct.pack("!iIi", 12 + len(key), CANCEL_REQUEST_CODE, self.pid) + key


# ============================================================================
# Frontend: typed messages
# ============================================================================


@dataclass(frozen=True, slots=True)
class Query(Message):
    """Simple query: one or more SQL statements separated by semicolons."""

    TYPE: ClassVar[bytes] = b"Q"
    sql: str

    def encode(self) -> bytes:
        return _frame(b"Q", _cstr(self.sql, "a query"))


@dataclass(frozen=True, slots=True)
class Parse(Message):
    """Extended protocol: prepare ``query`` as ``statement`` ("" is the unnamed one).

    ``param_types`` are type OIDs; 0 leaves a parameter's type to the server.
    """

    TYPE: ClassVar[bytes] = b"P"
    statement: str = ""
    query: str = ""
    param_types: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _frame(
            b"P",
            _cstr(self.statement, "a statement name")
            + _cstr(self.query, "a query")
            + _oids(self.param_types),
        )


@dataclass(frozen=True, slots=True)
class Bind(Message):
    """Extended protocol: bind ``params`` to ``statement``, making ``portal``.

    ``param_formats`` / ``result_formats``: () for all text, one code for all, or one per
    item (0 text, 1 binary). ``params``: the values, None for NULL.
    """

    TYPE: ClassVar[bytes] = b"B"
    portal: str = ""
    statement: str = ""
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        parts = [
            _cstr(self.portal, "a portal name"),
            _cstr(self.statement, "a statement name"),
            _int16s(self.param_formats),
        ]
        parts += _values(self.params)
        parts.append(_int16s(self.result_formats))
        return _frame(b"B", b"".join(parts))


@dataclass(frozen=True, slots=True)
class Describe(Message):
    """Extended protocol: describe a prepared statement ('S') or a portal ('P')."""

    TYPE: ClassVar[bytes] = b"D"
    kind: Literal["S", "P"]
    name: str = ""

    def encode(self) -> bytes:
        return _frame(b"D", _kind(self.kind, "Describe") + _cstr(self.name, "a name"))


@dataclass(frozen=True, slots=True)
class Execute(Message):
    """Extended protocol: run ``portal``, returning at most ``max_rows`` rows (0: all)."""

    TYPE: ClassVar[bytes] = b"E"
    portal: str = ""
    max_rows: int = 0

    def encode(self) -> bytes:
        return _frame(b"E", _cstr(self.portal, "a portal name") + _PACK_I32(self.max_rows))


@dataclass(frozen=True, slots=True)
class Close(Message):
    """Extended protocol: close a prepared statement ('S') or a portal ('P')."""

    TYPE: ClassVar[bytes] = b"C"
    kind: Literal["S", "P"]
    name: str = ""

    def encode(self) -> bytes:
        return _frame(b"C", _kind(self.kind, "Close") + _cstr(self.name, "a name"))


@dataclass(frozen=True, slots=True)
class Sync(_Fixed):
    TYPE: ClassVar[bytes] = b"S"
    WIRE: ClassVar[bytes] = _frame(b"S", b"")


@dataclass(frozen=True, slots=True)
class Flush(_Fixed):
    TYPE: ClassVar[bytes] = b"H"
    WIRE: ClassVar[bytes] = _frame(b"H", b"")


@dataclass(frozen=True, slots=True)
class Terminate(_Fixed):
    TYPE: ClassVar[bytes] = b"X"
    WIRE: ClassVar[bytes] = _frame(b"X", b"")


@dataclass(frozen=True, slots=True)
class FunctionCall(Message):
    """The legacy fast-path function call (by OID)."""

    TYPE: ClassVar[bytes] = b"F"
    function_oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def encode(self) -> bytes:
        parts = [_U32.pack(self.function_oid), _int16s(self.arg_formats)]
        parts += _values(self.args)
        parts.append(_I16.pack(self.result_format))
        return _frame(b"F", b"".join(parts))


@dataclass(frozen=True, slots=True)
class CopyFail(Message):
    """Frontend: abort COPY FROM STDIN with an error message."""

    TYPE: ClassVar[bytes] = b"f"
    message: str

    def encode(self) -> bytes:
        return _frame(b"f", _cstr(self.message, "a CopyFail message"))


# The 'p' family. One type byte serves five messages: which one is meant depends on the
# authentication request the server sent last. The decoder yields `PasswordLike` (the
# payload, uninterpreted) unless the session told it what to expect (see
# `proxy.pg.codec.AuthResponseKind`).


@dataclass(frozen=True, slots=True)
class PasswordLike(Message):
    """A 'p' message not yet interpreted: ``data`` is its payload as received."""

    TYPE: ClassVar[bytes] = b"p"
    data: bytes

    def encode(self) -> bytes:
        return _frame(b"p", self.data)


@dataclass(frozen=True, slots=True)
class PasswordMessage(Message):
    """A password, cleartext or ``md5...`` hashed (answers AuthenticationCleartextPassword
    or AuthenticationMD5Password)."""

    TYPE: ClassVar[bytes] = b"p"
    password: str

    def encode(self) -> bytes:
        return _frame(b"p", _cstr(self.password, "a password"))


@dataclass(frozen=True, slots=True)
class SASLInitialResponse(Message):
    """The chosen SASL mechanism and its initial response (None: no initial response)."""

    TYPE: ClassVar[bytes] = b"p"
    mechanism: str
    data: bytes | None = None

    def encode(self) -> bytes:
        data = self.data
        tail = _NULL if data is None else _PACK_I32(len(data)) + data
        return _frame(b"p", _cstr(self.mechanism, "a SASL mechanism") + tail)


@dataclass(frozen=True, slots=True)
class SASLResponse(Message):
    """A SASL message from the client (answers AuthenticationSASLContinue)."""

    TYPE: ClassVar[bytes] = b"p"
    data: bytes

    def encode(self) -> bytes:
        return _frame(b"p", self.data)


@dataclass(frozen=True, slots=True)
class GSSResponse(Message):
    """A GSSAPI or SSPI token from the client."""

    TYPE: ClassVar[bytes] = b"p"
    data: bytes

    def encode(self) -> bytes:
        return _frame(b"p", self.data)


# ============================================================================
# Both directions
# ============================================================================


@dataclass(frozen=True, slots=True)
class CopyData(Message):
    TYPE: ClassVar[bytes] = b"d"
    data: bytes

    def encode(self) -> bytes:
        data = self.data
        return b"d" + _PACK_I32(len(data) + 4) + data


@dataclass(frozen=True, slots=True)
class CopyDone(_Fixed):
    TYPE: ClassVar[bytes] = b"c"
    WIRE: ClassVar[bytes] = _frame(b"c", b"")


@dataclass(frozen=True, slots=True)
class Unknown(Message):
    """A message whose type the decoder does not know in its direction: kept as is,
    re-encoded byte-exact."""

    type: bytes
    payload: bytes

    def encode(self) -> bytes:
        if len(self.type) != 1:
            raise InvalidInputError("a message type is exactly one byte")
        return _frame(self.type, self.payload)


@dataclass(frozen=True, slots=True)
class Passthrough(Message):
    """A framed message the decoder was told not to parse (``frame``: type byte, length
    and payload, exactly as received). See ``passthrough`` in `proxy.pg.codec`."""

    frame: bytes

    @property
    def type(self) -> bytes:
        return self.frame[:1]

    def encode(self) -> bytes:
        return self.frame


# ============================================================================
# Backend: the answer to SSLRequest / GSSENCRequest (one byte, not framed)
# ============================================================================


@dataclass(frozen=True, slots=True)
class EncryptionResponse(Message):
    """The single byte answering SSLRequest ('S' yes, 'N' no) or GSSENCRequest ('G', 'N')."""

    code: Literal["S", "N", "G"]

    @property
    def accepted(self) -> bool:
        return self.code != "N"

    def encode(self) -> bytes:
        if self.code not in ("S", "N", "G"):
            raise InvalidInputError("an encryption response is 'S', 'G' or 'N'")
        return self.code.encode("ascii")


# ============================================================================
# Backend: authentication ('R')
# ============================================================================


@dataclass(frozen=True, slots=True)
class AuthenticationMessage(Message):
    """Base of the 'R' messages; ``CODE`` is the Int32 that follows the length."""

    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int]


@dataclass(frozen=True, slots=True)
class AuthenticationOk(AuthenticationMessage):
    CODE: ClassVar[int] = 0

    def encode(self) -> bytes:
        return _frame(b"R", _PACK_I32(0))


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword(AuthenticationMessage):
    CODE: ClassVar[int] = 3

    def encode(self) -> bytes:
        return _frame(b"R", _PACK_I32(3))


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password(AuthenticationMessage):
    CODE: ClassVar[int] = 5
    salt: bytes

    def encode(self) -> bytes:
        if len(self.salt) != 4:
            raise InvalidInputError("an MD5 salt is exactly 4 bytes")
        return _frame(b"R", _PACK_I32(5) + self.salt)


@dataclass(frozen=True, slots=True)
class AuthenticationGSS(AuthenticationMessage):
    CODE: ClassVar[int] = 7

    def encode(self) -> bytes:
        return _frame(b"R", _PACK_I32(7))


@dataclass(frozen=True, slots=True)
class AuthenticationGSSContinue(AuthenticationMessage):
    CODE: ClassVar[int] = 8
    data: bytes

    def encode(self) -> bytes:
        return _frame(b"R", _PACK_I32(8) + self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationSSPI(AuthenticationMessage):
    CODE: ClassVar[int] = 9

    def encode(self) -> bytes:
        return _frame(b"R", _PACK_I32(9))


@dataclass(frozen=True, slots=True)
class AuthenticationSASL(AuthenticationMessage):
    """The SASL mechanisms the server offers, in its order of preference."""

    CODE: ClassVar[int] = 10
    mechanisms: tuple[str, ...]

    def encode(self) -> bytes:
        parts = [_PACK_I32(10)]
        for mechanism in self.mechanisms:
            if not mechanism:
                raise InvalidInputError("a SASL mechanism name cannot be empty")
            parts.append(_cstr(mechanism, "a SASL mechanism"))
        parts.append(b"\0")
        return _frame(b"R", b"".join(parts))


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue(AuthenticationMessage):
    CODE: ClassVar[int] = 11
    data: bytes

    def encode(self) -> bytes:
        return _frame(b"R", _PACK_I32(11) + self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal(AuthenticationMessage):
    CODE: ClassVar[int] = 12
    data: bytes

    def encode(self) -> bytes:
        return _frame(b"R", _PACK_I32(12) + self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationOther(AuthenticationMessage):
    """Any other authentication request (KerberosV5 = 2, SCM = 6, future codes), raw."""

    code: int
    data: bytes = b""

    def encode(self) -> bytes:
        if self.code in _KNOWN_AUTH_CODES:
            raise InvalidInputError(f"authentication request {self.code} has its own class: use it")
        return _frame(b"R", _PACK_I32(self.code) + self.data)


_KNOWN_AUTH_CODES = frozenset({0, 3, 5, 7, 8, 9, 10, 11, 12})


# ============================================================================
# Backend: everything else
# ============================================================================


@dataclass(frozen=True, slots=True)
class BackendKeyData(Message):
    """The pid and secret key a CancelRequest must quote (key: 4 bytes in 3.0, 4..256 in
    3.2)."""

    TYPE: ClassVar[bytes] = b"K"
    pid: int
    secret_key: bytes

    def encode(self) -> bytes:
        key = self.secret_key
        if not MIN_CANCEL_KEY_LENGTH <= len(key) <= MAX_CANCEL_KEY_LENGTH:
            raise InvalidInputError(
                f"a cancel key must be {MIN_CANCEL_KEY_LENGTH} to {MAX_CANCEL_KEY_LENGTH} "
                f"bytes, not {len(key)}"
            )
        return _frame(b"K", _PACK_I32(self.pid) + key)


@dataclass(frozen=True, slots=True)
class ParameterStatus(Message):
    TYPE: ClassVar[bytes] = b"S"
    name: str
    value: str

    def encode(self) -> bytes:
        return _frame(
            b"S", _cstr(self.name, "a parameter name") + _cstr(self.value, "a parameter value")
        )


@dataclass(frozen=True, slots=True)
class ReadyForQuery(Message):
    """``status``: 'I' idle, 'T' in a transaction block, 'E' in a failed transaction."""

    TYPE: ClassVar[bytes] = b"Z"
    status: Literal["I", "T", "E"] = "I"

    def encode(self) -> bytes:
        status = self.status
        if status not in ("I", "T", "E"):
            raise InvalidInputError("a ReadyForQuery status is 'I', 'T' or 'E'")
        return b"Z\x00\x00\x00\x05" + status.encode("ascii")


@dataclass(frozen=True, slots=True)
class ParseComplete(_Fixed):
    TYPE: ClassVar[bytes] = b"1"
    WIRE: ClassVar[bytes] = _frame(b"1", b"")


@dataclass(frozen=True, slots=True)
class BindComplete(_Fixed):
    TYPE: ClassVar[bytes] = b"2"
    WIRE: ClassVar[bytes] = _frame(b"2", b"")


@dataclass(frozen=True, slots=True)
class CloseComplete(_Fixed):
    TYPE: ClassVar[bytes] = b"3"
    WIRE: ClassVar[bytes] = _frame(b"3", b"")


@dataclass(frozen=True, slots=True)
class NoData(_Fixed):
    TYPE: ClassVar[bytes] = b"n"
    WIRE: ClassVar[bytes] = _frame(b"n", b"")


@dataclass(frozen=True, slots=True)
class PortalSuspended(_Fixed):
    TYPE: ClassVar[bytes] = b"s"
    WIRE: ClassVar[bytes] = _frame(b"s", b"")


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(_Fixed):
    TYPE: ClassVar[bytes] = b"I"
    WIRE: ClassVar[bytes] = _frame(b"I", b"")


@dataclass(frozen=True, slots=True)
class CommandComplete(Message):
    """``tag``: "SELECT 2", "INSERT 0 1", "UPDATE 3", ..."""

    TYPE: ClassVar[bytes] = b"C"
    tag: str

    def encode(self) -> bytes:
        return _frame(b"C", _cstr(self.tag, "a command tag"))


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One column of a RowDescription."""

    name: str
    table_oid: int = 0  # 0: not a column of a table
    column_attr: int = 0  # attribute number in that table, 0 if none
    type_oid: int = 25  # text
    type_size: int = -1  # pg_type.typlen: negative for variable width
    type_mod: int = -1  # pg_attribute.atttypmod
    format: int = 0  # 0 text, 1 binary


_FIELD = struct.Struct("!IhIhih")


@dataclass(frozen=True, slots=True)
class RowDescription(Message):
    TYPE: ClassVar[bytes] = b"T"
    fields: tuple[FieldDescription, ...]

    def encode(self) -> bytes:
        parts = [_PACK_U16(len(self.fields))]
        pack = _FIELD.pack
        for f in self.fields:
            parts.append(_cstr(f.name, "a column name"))
            parts.append(
                pack(f.table_oid, f.column_attr, f.type_oid, f.type_size, f.type_mod, f.format)
            )
        return _frame(b"T", b"".join(parts))


@dataclass(frozen=True, slots=True, init=False)
class DataRow(Message):
    """One row: each column's bytes in the row's format, None for NULL.

    The hot message: its ``__init__`` is written out (slot setters instead of the generic
    frozen-dataclass ``object.__setattr__``), and ``encode`` does one step per column.
    """

    TYPE: ClassVar[bytes] = b"D"
    columns: tuple[bytes | None, ...]

    def __init__(self, columns: tuple[bytes | None, ...]) -> None:
        _set_columns(self, columns)
        _set_raw(self, None)

    def encode(self) -> bytes:
        columns = self.columns
        try:  # the length prefixes of short values are looked up, not packed
            body = b"".join([_NULL if v is None else _LENGTHS[len(v)] + v for v in columns])
        except IndexError:
            body = b"".join([_NULL if v is None else _PACK_I32(len(v)) + v for v in columns])
        return _PACK_DATA_ROW_HEADER(b"D", len(body) + 6, len(columns)) + body


_PACK_DATA_ROW_HEADER = struct.Struct("!ciH").pack
_LENGTHS = [_PACK_I32(n) for n in range(1024)]
_set_columns = DataRow.__dict__["columns"].__set__
_set_raw = Message.__dict__["raw"].__set__


@dataclass(frozen=True, slots=True)
class ParameterDescription(Message):
    """The parameter type OIDs of a prepared statement."""

    TYPE: ClassVar[bytes] = b"t"
    type_oids: tuple[int, ...]

    def encode(self) -> bytes:
        return _frame(b"t", _oids(self.type_oids))


@dataclass(frozen=True, slots=True)
class _Notice(Message):
    """ErrorResponse and NoticeResponse: fields keyed by their one-character code, in wire
    order ('S' severity, 'V' severity not localized, 'C' SQLSTATE, 'M' message, 'D'
    detail, 'H' hint, 'P' position, 'W' where, 's' schema, 't' table, 'c' column, 'n'
    constraint, 'F' file, 'L' line, 'R' routine...)."""

    TYPE: ClassVar[bytes]
    fields: Mapping[str, str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))

    @property
    def severity(self) -> str | None:
        """'V' (never localized) when present, else 'S'."""
        return self.fields.get("V", self.fields.get("S"))

    @property
    def sqlstate(self) -> str | None:
        return self.fields.get("C")

    @property
    def message(self) -> str | None:
        return self.fields.get("M")

    @property
    def detail(self) -> str | None:
        return self.fields.get("D")

    @property
    def hint(self) -> str | None:
        return self.fields.get("H")

    def encode(self) -> bytes:
        parts = []
        for code, value in self.fields.items():
            try:
                code_byte = code.encode("latin-1")
            except UnicodeEncodeError:
                code_byte = b""
            if len(code_byte) != 1 or code_byte == b"\0":
                raise InvalidInputError(f"a notice field code is one non-NUL byte, not {code!r}")
            parts.append(code_byte)
            parts.append(_cstr(value, f"notice field {code!r}"))
        parts.append(b"\0")
        return _frame(self.TYPE, b"".join(parts))


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Notice):
    TYPE: ClassVar[bytes] = b"E"


@dataclass(frozen=True, slots=True)
class NoticeResponse(_Notice):
    TYPE: ClassVar[bytes] = b"N"


@dataclass(frozen=True, slots=True)
class NotificationResponse(Message):
    """A NOTIFY delivered to this session's LISTEN."""

    TYPE: ClassVar[bytes] = b"A"
    pid: int
    channel: str
    payload: str = ""

    def encode(self) -> bytes:
        return _frame(
            b"A",
            _PACK_I32(self.pid)
            + _cstr(self.channel, "a channel name")
            + _cstr(self.payload, "a notification payload"),
        )


@dataclass(frozen=True, slots=True)
class FunctionCallResponse(Message):
    TYPE: ClassVar[bytes] = b"V"
    value: bytes | None

    def encode(self) -> bytes:
        value = self.value
        return _frame(b"V", _NULL if value is None else _PACK_I32(len(value)) + value)


@dataclass(frozen=True, slots=True)
class _CopyResponse(Message):
    """``format``: 0 text, 1 binary (overall); ``column_formats``: one per column."""

    TYPE: ClassVar[bytes]
    format: int = 0
    column_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _frame(self.TYPE, _I8.pack(self.format) + _int16s(self.column_formats))


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    TYPE: ClassVar[bytes] = b"G"


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    TYPE: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    TYPE: ClassVar[bytes] = b"W"


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion(Message):
    """The server speaks an older minor version than asked, or ignored ``_pq_.`` options.

    ``version`` is the full major << 16 | minor the server will use (PostgreSQL 18 sends
    the full version here, though older documentation says "newest minor version").
    """

    TYPE: ClassVar[bytes] = b"v"
    version: int
    unrecognized_options: tuple[str, ...] = ()

    def encode(self) -> bytes:
        parts = [_U32.pack(self.version), _U32.pack(len(self.unrecognized_options))]
        parts += [_cstr(o, "a protocol option") for o in self.unrecognized_options]
        return _frame(b"v", b"".join(parts))


# ============================================================================
# Unions, for exhaustive matching
# ============================================================================

FrontendMessage: TypeAlias = (
    StartupMessage
    | SSLRequest
    | GSSENCRequest
    | CancelRequest
    | Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Close
    | Sync
    | Flush
    | Terminate
    | FunctionCall
    | CopyData
    | CopyDone
    | CopyFail
    | PasswordLike
    | PasswordMessage
    | SASLInitialResponse
    | SASLResponse
    | GSSResponse
    | Unknown
    | Passthrough
)

BackendMessage: TypeAlias = (
    EncryptionResponse
    | AuthenticationMessage
    | BackendKeyData
    | ParameterStatus
    | ReadyForQuery
    | ParseComplete
    | BindComplete
    | CloseComplete
    | NoData
    | PortalSuspended
    | EmptyQueryResponse
    | CommandComplete
    | RowDescription
    | DataRow
    | ParameterDescription
    | ErrorResponse
    | NoticeResponse
    | NotificationResponse
    | FunctionCallResponse
    | CopyInResponse
    | CopyOutResponse
    | CopyBothResponse
    | CopyData
    | CopyDone
    | NegotiateProtocolVersion
    | Unknown
    | Passthrough
)


# ============================================================================
# ErrorResponse / NoticeResponse construction
# ============================================================================

_SQLSTATE = re.compile(r"[0-9A-Z]{5}")
_ERROR_SEVERITIES = frozenset({"ERROR", "FATAL", "PANIC"})
_NOTICE_SEVERITIES = frozenset({"WARNING", "NOTICE", "DEBUG", "INFO", "LOG"})


def _notice_fields(
    sqlstate: str,
    message: str,
    severity: str,
    detail: str | None,
    hint: str | None,
    allowed: frozenset[str],
) -> dict[str, str]:
    if not _SQLSTATE.fullmatch(sqlstate):
        raise InvalidInputError(f"a SQLSTATE is five characters of 0-9 and A-Z, not {sqlstate!r}")
    if severity not in allowed:
        raise InvalidInputError(f"severity must be one of {sorted(allowed)}, not {severity!r}")
    fields = {"S": severity, "V": severity, "C": sqlstate, "M": message}
    if detail is not None:
        fields["D"] = detail
    if hint is not None:
        fields["H"] = hint
    return fields


def error_response(
    sqlstate: str,
    message: str,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
) -> ErrorResponse:
    """An ErrorResponse as PostgreSQL writes one: S, V, C, M, then D and H when given.

    ``severity``: ERROR (the statement fails), FATAL (the session ends) or PANIC.
    """
    return ErrorResponse(
        _notice_fields(sqlstate, message, severity, detail, hint, _ERROR_SEVERITIES)
    )


def notice_response(
    sqlstate: str,
    message: str,
    severity: str = "NOTICE",
    detail: str | None = None,
    hint: str | None = None,
) -> NoticeResponse:
    """A NoticeResponse (WARNING, NOTICE, DEBUG, INFO or LOG), laid out like
    `error_response`."""
    return NoticeResponse(
        _notice_fields(sqlstate, message, severity, detail, hint, _NOTICE_SEVERITIES)
    )
