"""A sans-I/O decoder for the PostgreSQL frontend/backend protocol (3.0 and 3.2).

Bytes in, message objects out (`proxy.pg.messages`; each message encodes itself back).
No sockets, no asyncio: the pumps feed whatever the socket gave and drain messages::

    decoder = BackendDecoder()
    decoder.feed(chunk)                      # any split: one byte, or many messages
    while (msg := decoder.next_message()) is not None:
        ...                                  # None: the next message is incomplete
    # or: for msg in decoder.messages(): ...

`FrontendDecoder` reads what a client sends and starts in the startup phase, where the
first message has no type byte. `BackendDecoder` reads what a server sends.

Errors. Anything malformed, oversized or out of place raises `ProtocolError` (SQLSTATE
08P01 protocol_violation, or 0A000 for an unsupported protocol version), never another
exception type, never a hang: a length is checked against the limits as soon as its five
header bytes are in, before any payload is awaited. After a ProtocolError the decoder is
broken and raises the same error again; the session answers with
``err.to_error_response()`` and closes.

Limits, on the payload (the bytes after the Int32 length), as PostgreSQL states its own:

- the startup packet: 10,000 bytes (PostgreSQL's MAX_STARTUP_PACKET_LENGTH);
- messages with no content (Sync, ParseComplete, ...): exactly 0; ReadyForQuery: 1;
  BackendKeyData: 8 to 260;
- frontend Describe, Close, Execute, CopyFail: 10,000 (PostgreSQL's PQ_SMALL_MESSAGE_LIMIT);
  'p' (password, SASL, GSS): 65,535 (PG_MAX_AUTH_TOKEN_LENGTH);
- everything else: ``max_message_size``, by default 1 GiB (PostgreSQL's own limit for a
  Query, a Bind or a DataRow is 1 GiB - 2).

Buffering is linear in the bytes received however they are split: fed chunks are kept as
a list and joined once, when the message they complete is whole; complete messages are
parsed straight out of the received chunk, without copying it.

The encryption handshake. After an SSLRequest or GSSENCRequest the FrontendDecoder yields
nothing until the caller says what it answered: `FrontendDecoder.startup_continues` after
an 'N' (the client goes on in cleartext with a StartupMessage), or
`FrontendDecoder.encryption_started` after an 'S'/'G', which refuses cleartext bytes the
client sent after its request (CVE-2021-23214: they would be read as if they had come
through TLS) and expects the decrypted stream next. The BackendDecoder's side is
`BackendDecoder.expect_encryption_response`: the next message is then the unframed one-byte
`EncryptionResponse` (or a framed ErrorResponse from a server that refuses); after an
'S'/'G' the caller calls `BackendDecoder.encryption_started` before the handshake, which
refuses cleartext bytes received after the answer (CVE-2021-23222: a response injected
by a man in the middle), as does every `next_message` until then. A client that opens with a TLS
ClientHello (``sslnegotiation=direct``, PostgreSQL 17+) shows as
`FrontendDecoder.direct_tls`.

The 'p' ambiguity. PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse all
have type 'p'; only the authentication request the server sent last tells them apart. The
FrontendDecoder yields `PasswordLike` (the payload, uninterpreted) until the session says
what it expects: ``decoder.expect_auth_response(auth_response_kind(request))`` when it
sends (or forwards) an authentication request, ``None`` after AuthenticationOk. From then
on 'p' decodes to the typed message directly, and a malformed one is a ProtocolError at
decode time. `parse_password_like` re-parses a PasswordLike after the fact.

Passthrough. Every decoded message carries ``raw``, its exact wire bytes (``keep_raw=False``
turns that off), so a pump forwards ``msg.wire()`` for a message it did not change without
re-encoding. When a session knows it will not look inside some messages at all (DataRows
of a result with no protected column, CopyData of an unprotected COPY), it sets
``decoder.passthrough = {b"D"}``: those then arrive as `Passthrough` (the frame, unparsed)
at the cost of framing alone, until the set is changed. The set applies from the next
``next_message`` call, so a session can switch it between a RowDescription and its rows.
`BackendDecoder.take_data_rows` frames a whole run of DataRows at once: the complete rows
buffered next, back to back in one bytes object, with no object per row. And for the
messages a session sees again byte for byte (a statement's Parse, its RowDescription),
``decoder.memoize({b"P", b"T"})`` makes each distinct frame parsed once: when it comes
again the same (immutable) instance is found by its bytes, as the messages with no
content and ReadyForQuery always are.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Generic, Literal, TypeVar

from proxy.errors import TokenProxyError
from proxy.pg.messages import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_CANCEL_KEY_LENGTH,
    MIN_CANCEL_KEY_LENGTH,
    SSL_REQUEST_CODE,
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationGSSContinue,
    AuthenticationMD5Password,
    AuthenticationMessage,
    AuthenticationOk,
    AuthenticationOther,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationSSPI,
    BackendKeyData,
    BackendMessage,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    EncryptionResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    FrontendMessage,
    FunctionCall,
    FunctionCallResponse,
    GSSENCRequest,
    GSSResponse,
    Message,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    Passthrough,
    PasswordLike,
    PasswordMessage,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
    Unknown,
    error_response,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_AUTH_MESSAGE_SIZE",
    "MAX_SMALL_MESSAGE_SIZE",
    "MAX_STARTUP_PACKET_SIZE",
    "AuthResponseKind",
    "BackendDecoder",
    "CodecStateError",
    "FrontendDecoder",
    "FrontendPhase",
    "ProtocolError",
    "auth_response_kind",
    "decode_backend",
    "decode_frontend",
    "parse_password_like",
]

DEFAULT_MAX_MESSAGE_SIZE: Final = 1 << 30
MAX_STARTUP_PACKET_SIZE: Final = 10_000
MAX_SMALL_MESSAGE_SIZE: Final = 10_000
MAX_AUTH_MESSAGE_SIZE: Final = 65_535

PROTOCOL_VIOLATION: Final = "08P01"
FEATURE_NOT_SUPPORTED: Final = "0A000"


class ProtocolError(TokenProxyError):
    """The peer sent bytes that are not valid protocol: answer ``to_error_response()``
    (FATAL) and close the connection. The message names types and lengths, never payload.
    """

    def __init__(self, message: str, sqlstate: str = PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate

    def to_error_response(self) -> ErrorResponse:
        return error_response(self.sqlstate, str(self), severity="FATAL")


class CodecStateError(TokenProxyError, RuntimeError):
    """The caller used a decoder out of order (a bug in the session, not the peer's)."""


_I16_FROM = struct.Struct("!h").unpack_from
_U16_FROM = struct.Struct("!H").unpack_from
_I32_FROM = struct.Struct("!i").unpack_from
_U32_FROM = struct.Struct("!I").unpack_from
_FIELD_FROM = struct.Struct("!IhIhih").unpack_from
_HEADER_FROM = struct.Struct("!Bi").unpack_from

_Parser = Callable[[bytes, int, int], Message]
_PARSE_ERRORS = (ValueError, IndexError, struct.error)
_TLS_HANDSHAKE = 0x16  # the first byte of a TLS record carrying a ClientHello


def _name(type_code: int) -> str:
    return repr(chr(type_code)) if 0x20 < type_code < 0x7F else f"0x{type_code:02x}"


# ============================================================================
# Payload readers: (buf, p, end) -> value and the next position. A read past `end` is
# caught by the final position check or by the slice checks; the exceptions they raise
# (ValueError, IndexError, struct.error) become ProtocolError in the decoder.
# ============================================================================


def _str(buf: bytes, p: int, end: int) -> tuple[str, int]:
    nul = buf.index(0, p, end)
    if nul == p:  # (the unnamed statement or portal: most of them)
        return "", p + 1
    return _text(buf[p:nul]), nul + 1


def _text(raw: bytes) -> str:
    """A string of the protocol (bytes the client's encoding may not decode kept as
    surrogates: the text sent on is the text received)."""
    return raw.decode("utf-8", "surrogateescape")


def _done(p: int, end: int, what: str) -> None:
    if p != end:
        raise ProtocolError(f"malformed {what} message: its length does not match its content")


def _int16s(buf: bytes, p: int, end: int) -> tuple[tuple[int, ...], int]:
    (n,) = _U16_FROM(buf, p)
    p += 2
    stop = p + 2 * n
    if stop > end:
        raise ValueError("array past the end of the message")
    if n <= 1:  # (all text, or one format for all: most of them)
        return (_I16_FROM(buf, p) if n else ()), stop
    return struct.unpack_from(f"!{n}h", buf, p), stop


def _oids(buf: bytes, p: int, end: int) -> tuple[tuple[int, ...], int]:
    (n,) = _U16_FROM(buf, p)
    p += 2
    stop = p + 4 * n
    if stop > end:
        raise ValueError("array past the end of the message")
    if not n:
        return (), stop
    return struct.unpack_from(f"!{n}I", buf, p), stop


def _values(buf: bytes, p: int, end: int) -> tuple[tuple[bytes | None, ...], int]:
    """Int16 count, then Int32 length (-1: NULL) and bytes, per value."""
    (n,) = _U16_FROM(buf, p)
    p += 2
    if p + 4 * n > end:
        raise ValueError("more values than the message can hold")
    values: list[bytes | None] = []
    append = values.append
    i32 = _I32_FROM
    for _ in range(n):
        (size,) = i32(buf, p)
        p += 4
        if size < 0:
            if size != -1:
                raise ValueError("negative value length")
            append(None)
        else:
            stop = p + size
            if stop > end:
                raise ValueError("value past the end of the message")
            append(buf[p:stop])
            p = stop
    return tuple(values), p


# ============================================================================
# Frontend parsers
# ============================================================================


def _parse_query(buf: bytes, p: int, end: int) -> Query:
    sql, p = _str(buf, p, end)
    _done(p, end, "Query")
    return Query(sql)


def _parse_parse(buf: bytes, p: int, end: int) -> Parse:
    statement, p = _str(buf, p, end)
    query, p = _str(buf, p, end)
    types, p = _oids(buf, p, end)
    _done(p, end, "Parse")
    return Parse(statement, query, types)


def _parse_bind(buf: bytes, p: int, end: int) -> Bind:
    portal, p = _str(buf, p, end)
    statement, p = _str(buf, p, end)
    param_formats, p = _int16s(buf, p, end)
    params, p = _values(buf, p, end)
    result_formats, p = _int16s(buf, p, end)
    _done(p, end, "Bind")
    # (Set field by field: a frozen dataclass's __init__ costs more, on every query.)
    bind: Bind = _new(Bind)
    _set_bind_portal(bind, portal)
    _set_bind_statement(bind, statement)
    _set_bind_param_formats(bind, param_formats)
    _set_bind_params(bind, params)
    _set_bind_result_formats(bind, result_formats)
    _set_raw(bind, None)
    return bind


_set_bind_portal = Bind.__dict__["portal"].__set__
_set_bind_statement = Bind.__dict__["statement"].__set__
_set_bind_param_formats = Bind.__dict__["param_formats"].__set__
_set_bind_params = Bind.__dict__["params"].__set__
_set_bind_result_formats = Bind.__dict__["result_formats"].__set__


def _kind(buf: bytes, p: int, what: str) -> Literal["S", "P"]:
    kind = buf[p]
    if kind == 0x53:
        return "S"
    if kind == 0x50:
        return "P"
    raise ProtocolError(f"malformed {what} message: kind {_name(kind)} is neither 'S' nor 'P'")


def _parse_describe(buf: bytes, p: int, end: int) -> Describe:
    kind = _kind(buf, p, "Describe")
    name, p = _str(buf, p + 1, end)
    _done(p, end, "Describe")
    return Describe(kind, name)


def _parse_close(buf: bytes, p: int, end: int) -> Close:
    kind = _kind(buf, p, "Close")
    name, p = _str(buf, p + 1, end)
    _done(p, end, "Close")
    return Close(kind, name)


def _parse_execute(buf: bytes, p: int, end: int) -> Execute:
    portal, p = _str(buf, p, end)
    (max_rows,) = _I32_FROM(buf, p)
    _done(p + 4, end, "Execute")
    return Execute(portal, max_rows)


def _parse_function_call(buf: bytes, p: int, end: int) -> FunctionCall:
    (oid,) = _U32_FROM(buf, p)
    formats, p = _int16s(buf, p + 4, end)
    args, p = _values(buf, p, end)
    (result_format,) = _I16_FROM(buf, p)
    _done(p + 2, end, "FunctionCall")
    return FunctionCall(oid, formats, args, result_format)


def _parse_copy_data(buf: bytes, p: int, end: int) -> CopyData:
    return CopyData(buf[p:end])


def _parse_copy_fail(buf: bytes, p: int, end: int) -> CopyFail:
    message, p = _str(buf, p, end)
    _done(p, end, "CopyFail")
    return CopyFail(message)


def _parse_password_like(buf: bytes, p: int, end: int) -> PasswordLike:
    return PasswordLike(buf[p:end])


def _parse_password(buf: bytes, p: int, end: int) -> PasswordMessage:
    password, p = _str(buf, p, end)
    _done(p, end, "PasswordMessage")
    return PasswordMessage(password)


def _parse_sasl_initial(buf: bytes, p: int, end: int) -> SASLInitialResponse:
    mechanism, p = _str(buf, p, end)
    (size,) = _I32_FROM(buf, p)
    p += 4
    if size == -1:
        _done(p, end, "SASLInitialResponse")
        return SASLInitialResponse(mechanism, None)
    _done(p + size if size >= 0 else -1, end, "SASLInitialResponse")
    return SASLInitialResponse(mechanism, buf[p:end])


def _parse_sasl_response(buf: bytes, p: int, end: int) -> SASLResponse:
    return SASLResponse(buf[p:end])


def _parse_gss_response(buf: bytes, p: int, end: int) -> GSSResponse:
    return GSSResponse(buf[p:end])


class AuthResponseKind(enum.Enum):
    """What a 'p' message from the client means, given the server's last request."""

    PASSWORD = "PasswordMessage"  # noqa: S105  # after AuthenticationCleartextPassword / MD5Password
    SASL_INITIAL = "SASLInitialResponse"  # after AuthenticationSASL
    SASL = "SASLResponse"  # after AuthenticationSASLContinue
    GSS = "GSSResponse"  # after AuthenticationGSS / SSPI / GSSContinue


_AUTH_PARSERS: dict[AuthResponseKind | None, _Parser] = {
    None: _parse_password_like,
    AuthResponseKind.PASSWORD: _parse_password,
    AuthResponseKind.SASL_INITIAL: _parse_sasl_initial,
    AuthResponseKind.SASL: _parse_sasl_response,
    AuthResponseKind.GSS: _parse_gss_response,
}


def auth_response_kind(request: AuthenticationMessage) -> AuthResponseKind | None:
    """The kind of 'p' message a client sends in answer to ``request`` (None: none, as
    after AuthenticationOk or SASLFinal)."""
    match request:
        case AuthenticationCleartextPassword() | AuthenticationMD5Password():
            return AuthResponseKind.PASSWORD
        case AuthenticationSASL():
            return AuthResponseKind.SASL_INITIAL
        case AuthenticationSASLContinue():
            return AuthResponseKind.SASL
        case AuthenticationGSS() | AuthenticationSSPI() | AuthenticationGSSContinue():
            return AuthResponseKind.GSS
        case _:
            return None


def parse_password_like(
    message: PasswordLike, kind: AuthResponseKind
) -> PasswordMessage | SASLInitialResponse | SASLResponse | GSSResponse:
    """Interpret a PasswordLike once the session knows what the server asked for."""
    data = message.data
    parsed = _parse_payload(_AUTH_PARSERS[kind], 0x70, data, 0, len(data))
    assert isinstance(parsed, PasswordMessage | SASLInitialResponse | SASLResponse | GSSResponse)
    return parsed


# ============================================================================
# Backend parsers
# ============================================================================


def _parse_authentication(buf: bytes, p: int, end: int) -> AuthenticationMessage:
    (code,) = _I32_FROM(buf, p)
    p += 4
    size = end - p
    if code == 0 and size == 0:
        return _AUTH_OK
    if code == 3 and size == 0:
        return _AUTH_CLEARTEXT
    if code == 5 and size == 4:
        return AuthenticationMD5Password(buf[p:end])
    if code == 7 and size == 0:
        return _AUTH_GSS
    if code == 8:
        return AuthenticationGSSContinue(buf[p:end])
    if code == 9 and size == 0:
        return _AUTH_SSPI
    if code == 10:
        mechanisms = []
        while True:
            mechanism, p = _str(buf, p, end)
            if not mechanism:
                break
            mechanisms.append(mechanism)
        _done(p, end, "AuthenticationSASL")
        return AuthenticationSASL(tuple(mechanisms))
    if code == 11:
        return AuthenticationSASLContinue(buf[p:end])
    if code == 12:
        return AuthenticationSASLFinal(buf[p:end])
    if code in (0, 3, 5, 7, 9):
        raise ProtocolError(f"malformed authentication request {code}: wrong length")
    return AuthenticationOther(code, buf[p:end])


def _cancel_key(key: bytes, what: str) -> bytes:
    if not MIN_CANCEL_KEY_LENGTH <= len(key) <= MAX_CANCEL_KEY_LENGTH:
        raise ProtocolError(
            f"malformed {what}: a cancel key is {MIN_CANCEL_KEY_LENGTH} to "
            f"{MAX_CANCEL_KEY_LENGTH} bytes, not {len(key)}"
        )
    return key


def _parse_backend_key_data(buf: bytes, p: int, end: int) -> BackendKeyData:
    (pid,) = _I32_FROM(buf, p)
    return BackendKeyData(pid, _cancel_key(buf[p + 4 : end], "BackendKeyData"))


def _parse_parameter_status(buf: bytes, p: int, end: int) -> ParameterStatus:
    name, p = _str(buf, p, end)
    value, p = _str(buf, p, end)
    _done(p, end, "ParameterStatus")
    return ParameterStatus(name, value)


def _parse_ready_for_query(buf: bytes, p: int, end: int) -> ReadyForQuery:
    status = buf[p]
    if status == 0x49:
        return _READY_IDLE
    if status == 0x54:
        return _READY_IN_TRANSACTION
    if status == 0x45:
        return _READY_FAILED
    raise ProtocolError(f"malformed ReadyForQuery: unknown status {_name(status)}")


def _parse_command_complete(buf: bytes, p: int, end: int) -> CommandComplete:
    tag, p = _str(buf, p, end)
    _done(p, end, "CommandComplete")
    return CommandComplete(tag)


def _parse_row_description(buf: bytes, p: int, end: int) -> RowDescription:
    (n,) = _U16_FROM(buf, p)
    p += 2
    if p + 19 * n > end:
        raise ValueError("more fields than the message can hold")
    fields = []
    for _ in range(n):
        name, p = _str(buf, p, end)
        fields.append(FieldDescription(name, *_FIELD_FROM(buf, p)))
        p += 18
    _done(p, end, "RowDescription")
    return RowDescription(tuple(fields))


_new = object.__new__
_set_columns = DataRow.__dict__["columns"].__set__


def _data_row_columns(buf: bytes, p: int, end: int) -> tuple[bytes | None, ...]:
    """The hot path: one unpack and one slice per column, nothing else per column.

    No bounds check per column: ``p`` only moves forward and the slices never overlap, so
    a lying length costs at most one pass over the buffer before the final check refuses
    the row (and the count is bounded by the payload first).
    """
    (n,) = _U16_FROM(buf, p)
    p += 2
    if p + 4 * n > end:
        raise ValueError("more columns than the message can hold")
    columns: list[bytes | None] = [None] * n
    i32 = _I32_FROM
    for i in range(n):
        (size,) = i32(buf, p)
        p += 4
        if size >= 0:
            stop = p + size
            columns[i] = buf[p:stop]
            p = stop
        elif size != -1:
            raise ValueError("negative column length")
    if p != end:
        raise ValueError("DataRow length does not match its columns")
    return tuple(columns)


def _parse_data_row(buf: bytes, p: int, end: int) -> DataRow:
    row: DataRow = _new(DataRow)
    _set_columns(row, _data_row_columns(buf, p, end))
    _set_raw(row, None)
    return row


def _parse_parameter_description(buf: bytes, p: int, end: int) -> ParameterDescription:
    oids, p = _oids(buf, p, end)
    _done(p, end, "ParameterDescription")
    return ParameterDescription(oids)


def _parse_notice_fields(buf: bytes, p: int, end: int, what: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    while True:
        if p >= end:
            raise ValueError("fields without their terminator")
        code = buf[p]
        p += 1
        if code == 0:
            break
        key = chr(code)
        if key in fields:
            raise ProtocolError(f"malformed {what}: field {_name(code)} appears twice")
        fields[key], p = _str(buf, p, end)
    _done(p, end, what)
    return fields


def _parse_error(buf: bytes, p: int, end: int) -> ErrorResponse:
    return ErrorResponse(_parse_notice_fields(buf, p, end, "ErrorResponse"))


def _parse_notice(buf: bytes, p: int, end: int) -> NoticeResponse:
    return NoticeResponse(_parse_notice_fields(buf, p, end, "NoticeResponse"))


def _parse_notification(buf: bytes, p: int, end: int) -> NotificationResponse:
    (pid,) = _I32_FROM(buf, p)
    channel, p = _str(buf, p + 4, end)
    payload, p = _str(buf, p, end)
    _done(p, end, "NotificationResponse")
    return NotificationResponse(pid, channel, payload)


def _parse_function_call_response(buf: bytes, p: int, end: int) -> FunctionCallResponse:
    (size,) = _I32_FROM(buf, p)
    p += 4
    if size == -1:
        _done(p, end, "FunctionCallResponse")
        return FunctionCallResponse(None)
    _done(p + size if size >= 0 else -1, end, "FunctionCallResponse")
    return FunctionCallResponse(buf[p:end])


def _copy_response(buf: bytes, p: int, end: int, what: str) -> tuple[int, tuple[int, ...]]:
    overall = buf[p]
    formats, p = _int16s(buf, p + 1, end)
    _done(p, end, what)
    return overall, formats


def _parse_copy_in(buf: bytes, p: int, end: int) -> CopyInResponse:
    return CopyInResponse(*_copy_response(buf, p, end, "CopyInResponse"))


def _parse_copy_out(buf: bytes, p: int, end: int) -> CopyOutResponse:
    return CopyOutResponse(*_copy_response(buf, p, end, "CopyOutResponse"))


def _parse_copy_both(buf: bytes, p: int, end: int) -> CopyBothResponse:
    return CopyBothResponse(*_copy_response(buf, p, end, "CopyBothResponse"))


def _parse_negotiate(buf: bytes, p: int, end: int) -> NegotiateProtocolVersion:
    version, n = struct.unpack_from("!II", buf, p)
    p += 8
    if p + n > end:  # every option name takes at least its NUL
        raise ValueError("more options than the message can hold")
    options = []
    for _ in range(n):
        option, p = _str(buf, p, end)
        options.append(option)
    _done(p, end, "NegotiateProtocolVersion")
    return NegotiateProtocolVersion(version, tuple(options))


# ============================================================================
# Shared instances of the messages with no content, with their raw bytes
# ============================================================================

_set_raw = Message.__dict__["raw"].__set__

_M = TypeVar("_M", bound=Message)


def _decoded(message: _M) -> _M:
    _set_raw(message, message.encode())
    return message


_AUTH_OK = _decoded(AuthenticationOk())
_AUTH_CLEARTEXT = _decoded(AuthenticationCleartextPassword())
_AUTH_GSS = _decoded(AuthenticationGSS())
_AUTH_SSPI = _decoded(AuthenticationSSPI())
_READY_IDLE = _decoded(ReadyForQuery("I"))
_READY_IN_TRANSACTION = _decoded(ReadyForQuery("T"))
_READY_FAILED = _decoded(ReadyForQuery("E"))


def _constant(message: Message) -> _Parser:
    instance = _decoded(message)

    def parse(buf: bytes, p: int, end: int) -> Message:
        return instance

    return parse


def _parse_unknown(buf: bytes, p: int, end: int) -> Unknown:
    return Unknown(buf[p - 5 : p - 4], buf[p:end])


_set_frame = Passthrough.__dict__["frame"].__set__


def _parse_passthrough(buf: bytes, p: int, end: int) -> Passthrough:
    frame = buf[p - 5 : end]
    message: Passthrough = _new(Passthrough)
    _set_frame(message, frame)
    _set_raw(message, frame)
    return message


# (parser, smallest payload, largest payload or None for max_message_size). Payload: the
# bytes after the Int32 length, which is how PostgreSQL states its own limits.
_Spec = tuple[_Parser, int, int | None]

_FRONTEND: dict[bytes, _Spec] = {
    b"Q": (_parse_query, 1, None),
    b"P": (_parse_parse, 4, None),
    b"B": (_parse_bind, 8, None),
    b"D": (_parse_describe, 2, MAX_SMALL_MESSAGE_SIZE),
    b"E": (_parse_execute, 5, MAX_SMALL_MESSAGE_SIZE),
    b"C": (_parse_close, 2, MAX_SMALL_MESSAGE_SIZE),
    b"S": (_constant(Sync()), 0, 0),
    b"H": (_constant(Flush()), 0, 0),
    b"X": (_constant(Terminate()), 0, 0),
    b"F": (_parse_function_call, 10, None),
    b"d": (_parse_copy_data, 0, None),
    b"c": (_constant(CopyDone()), 0, 0),
    b"f": (_parse_copy_fail, 1, MAX_SMALL_MESSAGE_SIZE),
    b"p": (_parse_password_like, 0, MAX_AUTH_MESSAGE_SIZE),
}

_BACKEND: dict[bytes, _Spec] = {
    b"R": (_parse_authentication, 4, None),
    b"K": (_parse_backend_key_data, 8, 4 + MAX_CANCEL_KEY_LENGTH),
    b"S": (_parse_parameter_status, 2, None),
    b"Z": (_parse_ready_for_query, 1, 1),
    b"1": (_constant(ParseComplete()), 0, 0),
    b"2": (_constant(BindComplete()), 0, 0),
    b"3": (_constant(CloseComplete()), 0, 0),
    b"n": (_constant(NoData()), 0, 0),
    b"s": (_constant(PortalSuspended()), 0, 0),
    b"I": (_constant(EmptyQueryResponse()), 0, 0),
    b"C": (_parse_command_complete, 1, None),
    b"T": (_parse_row_description, 2, None),
    b"D": (_parse_data_row, 2, None),
    b"t": (_parse_parameter_description, 2, None),
    b"E": (_parse_error, 1, None),
    b"N": (_parse_notice, 1, None),
    b"A": (_parse_notification, 6, None),
    b"V": (_parse_function_call_response, 4, None),
    b"G": (_parse_copy_in, 3, None),
    b"H": (_parse_copy_out, 3, None),
    b"W": (_parse_copy_both, 3, None),
    b"d": (_parse_copy_data, 0, None),
    b"c": (_constant(CopyDone()), 0, 0),
    b"v": (_parse_negotiate, 8, None),
}


def _constant_frames(specs: dict[bytes, _Spec]) -> dict[bytes, Message]:
    """The frames of ``specs``' messages with no content, and ReadyForQuery's, to the
    shared instances their parsers answer."""
    frames = {}
    for type_byte, (parser, low, high) in specs.items():
        if low == high == 0:
            message = parser(type_byte + b"\x00\x00\x00\x04", 5, 5)
            assert message.raw is not None
            frames[message.raw] = message
    if specs is _BACKEND:
        for ready in (_READY_IDLE, _READY_IN_TRANSACTION, _READY_FAILED):
            assert ready.raw is not None
            frames[ready.raw] = ready
    return frames


def _parse_payload(parser: _Parser, type_code: int, buf: bytes, p: int, end: int) -> Message:
    try:
        return parser(buf, p, end)
    except _PARSE_ERRORS as exc:
        raise ProtocolError(
            f"malformed message of type {_name(type_code)} ({end - p + 4} bytes)"
        ) from exc


# ============================================================================
# The decoders
# ============================================================================

_T = TypeVar("_T", bound=Message)


class _Decoder(Generic[_T]):
    """Buffering and framing shared by both directions.

    The bytes not yet consumed are ``_buf[_pos:]`` followed by the chunks in ``_pending``.
    A message is parsed straight out of ``_buf`` when it lies entirely inside it; the
    pending chunks are joined into a new ``_buf`` only when they complete what is needed,
    so every received byte is copied a bounded number of times (feeding one byte at a time
    included).

    ``next_message`` runs the typed-message path inline while ``_fast`` is set (no error,
    no startup phase, no pending encryption answer); every other state goes through the
    subclass's ``_next_special``.
    """

    _SPECS: dict[bytes, _Spec]

    def __init__(self, *, max_message_size: int, keep_raw: bool) -> None:
        if max_message_size < 0:
            raise CodecStateError("max_message_size cannot be negative")
        self._max_message_size = max_message_size
        self._keep_raw = keep_raw
        self._buf = b""
        self._pos = 0
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._error: ProtocolError | None = None
        self._fast = False
        self._parsers: list[_Parser] = [_parse_unknown] * 256
        # Bounds of the Int32 length field (the payload plus the 4 bytes of the length).
        self._min = [4] * 256
        self._max = [4 + max_message_size] * 256
        for type_byte, (parser, low, high) in self._SPECS.items():
            code = type_byte[0]
            self._parsers[code] = parser
            self._min[code] = 4 + low
            self._max[code] = 4 + (
                max_message_size if high is None else min(high, max_message_size)
            )
        self._base_parsers = list(self._parsers)
        self._tables: dict[frozenset[bytes], list[_Parser]] = {}
        self._passthrough: frozenset[bytes] = frozenset()
        self._data_rows = self._parsers[0x44] is _parse_data_row
        # Messages found by their frame, with no parser call: the constant ones (no
        # content, ReadyForQuery) and those of the types `memoize` names.
        self._constants = _constant_frames(self._SPECS)
        self._frames: dict[bytes, Message] = dict(self._constants)
        # The message of a frame if found by its bytes (`memoize`d, or constant), else None
        # (the memo's own look-up: emptied and refilled in place, never replaced).
        self.known: Callable[[bytes], Message | None] = self._frames.get
        self._memoized = [False] * 256
        self._memo_limit = 0
        self._by_frame = [False] * 256
        self._rebuild_parsers()

    # --- input ---------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (b"" is allowed and does nothing)."""
        if self._error is not None:
            raise self._error
        if not data:
            return
        chunk = bytes(data)
        if self._pos >= len(self._buf) and not self._pending:
            self._buf = chunk
            self._pos = 0
        else:
            self._pending.append(chunk)
            self._pending_len += len(chunk)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as messages."""
        return len(self._buf) - self._pos + self._pending_len

    def _ensure(self, n: int) -> bool:
        """Make ``_buf[_pos:]`` hold at least ``n`` bytes if they have arrived."""
        avail = len(self._buf) - self._pos
        if avail >= n:
            return True
        if avail + self._pending_len < n:
            return False
        parts: list[bytes | memoryview] = [memoryview(self._buf)[self._pos :], *self._pending]
        self._buf = b"".join(parts)
        self._pos = 0
        self._pending = []
        self._pending_len = 0
        return True

    # --- modes ---------------------------------------------------------------------------

    @property
    def passthrough(self) -> frozenset[bytes]:
        """Type bytes returned as unparsed `Passthrough` frames (see the module doc)."""
        return self._passthrough

    @passthrough.setter
    def passthrough(self, types: Iterable[bytes]) -> None:
        chosen = types if isinstance(types, frozenset) else frozenset(types)
        if chosen == self._passthrough:
            return
        if chosen not in self._tables:
            for type_byte in chosen:
                if not isinstance(type_byte, bytes) or len(type_byte) != 1:
                    raise CodecStateError(f"a message type is one byte, not {type_byte!r}")
        self._passthrough = chosen
        self._rebuild_parsers()

    def memoize(self, types: Iterable[bytes], limit: int = 256) -> None:
        """Parse messages of ``types`` once per distinct frame: a frame that comes again
        gives the same (immutable) message instance, found by its bytes. Up to ``limit``
        distinct frames are kept; a full memo is emptied. For the messages a session sees
        again and again with the same bytes (a statement's Parse and RowDescription, an
        Execute, a CommandComplete)."""
        for type_byte in types:
            if not isinstance(type_byte, bytes) or len(type_byte) != 1:
                raise CodecStateError(f"a message type is one byte, not {type_byte!r}")
            self._memoized[type_byte[0]] = True
        self._memo_limit = limit
        self._rebuild_parsers()

    def _rebuild_parsers(self) -> None:
        # A session switches between a few sets, result after result: tables are kept.
        table = self._tables.get(self._passthrough)
        if table is None:
            table = list(self._base_parsers)
            for type_byte in self._passthrough:
                table[type_byte[0]] = _parse_passthrough
            self._tables[self._passthrough] = table
        self._parsers = table
        self._data_rows = table[0x44] is _parse_data_row
        constant = {frame[0] for frame in self._constants}
        self._by_frame = [
            (self._memoized[code] or code in constant) and table[code] is self._base_parsers[code]
            for code in range(256)
        ]  # (not a type the passthrough set frames)

    @property
    def broken(self) -> bool:
        """A ProtocolError was raised: the stream cannot be resynchronised."""
        return self._error is not None

    # --- output --------------------------------------------------------------------------

    def next_message(self) -> _T | None:
        """The next complete message, or None until more bytes are fed."""
        if not self._fast:
            return self._next_special()
        code: int
        size: int
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 5:
            if not self._pending or not self._ensure(5):  # (all read: the usual end)
                return None
            buf = self._buf
            pos = self._pos
        code, size = _HEADER_FROM(buf, pos)
        end = pos + 1 + size
        if end > len(buf):  # (not all here yet, or a length no message may have)
            if not self._min[code] <= size <= self._max[code]:
                raise self._fail(self._bad_length(code, size))
            if not self._ensure(1 + size):
                return None
            buf = self._buf
            pos = self._pos
            end = pos + 1 + size
        if self._by_frame[code]:
            # A frame seen before, so its length was checked then: no parser call.
            message = self._frames.get(buf[pos:end])
            if message is not None:
                self._pos = end
                return message  # type: ignore[return-value]
        if not self._min[code] <= size <= self._max[code]:
            raise self._fail(self._bad_length(code, size))
        self._pos = end
        try:
            if code == 0x44 and self._data_rows:  # the hot path: a DataRow, parsed
                row: DataRow = _new(DataRow)
                _set_columns(row, _data_row_columns(buf, pos + 5, end))
                _set_raw(row, buf[pos:end] if self._keep_raw else None)
                return row  # type: ignore[return-value]  # (no cast(): this is the hot path)
            message = self._parsers[code](buf, pos + 5, end)
        except _PARSE_ERRORS as exc:
            raise self._fail(
                ProtocolError(f"malformed message of type {_name(code)} ({size} bytes)")
            ) from exc
        except ProtocolError as exc:
            raise self._fail(exc) from None
        if self._keep_raw and message.raw is None:
            _set_raw(message, buf[pos:end])
        if self._memoized[code] and self._by_frame[code]:
            self._remember(buf[pos:end], message)
        return message  # type: ignore[return-value]  # the tables hold this direction's only

    def _remember(self, frame: bytes, message: Message) -> None:
        """Keep a memoized type's message for the next time its frame comes."""
        if message.raw is None:
            _set_raw(message, frame)
        frames = self._frames
        if len(frames) >= self._memo_limit + len(self._constants):
            frames.clear()
            frames.update(self._constants)
        frames[frame] = message

    def take_data_rows(self) -> bytes | None:
        """`take_run` of DataRows."""
        return self.take_run(0x44)

    def take_run(self, kind: int) -> bytes | None:
        """The longest run of complete messages of type ``kind`` (a DataRow's 0x44, a
        CopyData's 0x64) buffered next, as one bytes object (the frames back to back,
        unparsed), the decoder advanced past them; None when the next message is not a
        complete one of them (`next_message` then reads it).

        Each frame's length is checked as `next_message` checks it: a bad one ends the run
        before it, and raises the ProtocolError when it comes first. The run is one slice
        of the buffer (the fed chunk itself when it holds them only); a message split
        across feeds is joined as `next_message` joins it.
        """
        if not self._fast:
            if self._error is not None:
                raise self._error
            return None  # an encryption answer is due: next_message's business
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 5:
            if not self._ensure(5):
                return None
            buf = self._buf
            pos = self._pos
        code, size = _HEADER_FROM(buf, pos)
        if code != kind:
            return None
        low = self._min[kind]
        high = self._max[kind]
        if not low <= size <= high:
            raise self._fail(self._bad_length(code, size))
        if pos + 1 + size > len(buf):
            if not self._ensure(1 + size):
                return None
            buf = self._buf
            pos = self._pos
        header = _HEADER_FROM
        q = pos + 1 + size
        n = len(buf)
        while True:
            try:
                while True:  # the hot loop: one unpack and a few checks a message
                    code, size = header(buf, q)
                    if code != kind or not low <= size <= high:
                        break
                    end = q + 1 + size
                    if end > n:
                        break
                    q = end
            except struct.error:  # fewer than five bytes left
                need = 5
            else:
                if code != kind or not low <= size <= high:
                    break  # another message, or a bad length (raised by the next call)
                need = 1 + size
            # A message not all in ``buf``: join what was fed after it if that completes it.
            if not self._pending:
                break
            self._pos = pos
            if not self._ensure(q - pos + need):
                break
            q -= pos
            buf = self._buf
            pos = 0
            n = len(buf)
        self._pos = q
        return buf[pos:q]

    # --- several frames at once (`proxy.pg.batches`) ----------------------------------------

    def view(self) -> tuple[bytes, int] | None:
        """The bytes buffered next as ``(buf, pos)`` (they are ``buf[pos:]``), for a caller
        that recognises several frames at once before it takes them (`skip`); None while
        they are not in one piece (a message split across feeds) or typed messages are not
        being read."""
        if not self._fast or self._pending:
            return None
        return self._buf, self._pos

    def skip(self, end: int) -> None:
        """Take the frames of ``view()``'s ``buf`` up to ``end`` (the caller checked them:
        whole frames, each of a length `fits`)."""
        if not self._pos <= end <= len(self._buf) or self._pending:
            raise CodecStateError("skip() takes whole frames of view() only")
        self._pos = end

    def fits(self, code: int, size: int) -> bool:
        """Whether a frame of type ``code`` may declare the length ``size``."""
        return self._min[code] <= size <= self._max[code]

    def sizes(self, code: int) -> range:
        """The lengths a frame of type ``code`` may declare (`fits`, as a range to keep)."""
        return range(self._min[code], self._max[code] + 1)

    def messages(self) -> Iterator[_T]:
        """Every complete message now buffered."""
        next_message = self.next_message
        while (message := next_message()) is not None:
            yield message

    def _next_special(self) -> _T | None:
        raise NotImplementedError

    def _fail(self, error: ProtocolError) -> ProtocolError:
        self._error = error
        self._fast = False
        return error

    def _bad_length(self, code: int, size: int) -> ProtocolError:
        if size > self._max[code] and self._min[code] != self._max[code]:
            return ProtocolError(
                f"message of type {_name(code)} declares {size - 4} bytes, over the limit of "
                f"{self._max[code] - 4}"
            )
        return ProtocolError(f"message of type {_name(code)} has an invalid length {size}")


class FrontendPhase(enum.Enum):
    STARTUP = "startup"  # the next message has no type byte
    ENCRYPTION_PENDING = "encryption pending"  # SSLRequest/GSSENCRequest read: awaiting the caller
    MESSAGES = "messages"  # typed messages
    CANCELLED = "cancelled"  # a CancelRequest was read: nothing more may come


class FrontendDecoder(_Decoder[FrontendMessage]):
    """Decodes what a client sends: the startup phase, then typed messages."""

    _SPECS = _FRONTEND

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_startup_size: int = MAX_STARTUP_PACKET_SIZE,
        keep_raw: bool = True,
    ) -> None:
        super().__init__(max_message_size=max_message_size, keep_raw=keep_raw)
        self._max_startup_size = max_startup_size
        self._phase = FrontendPhase.STARTUP
        self._auth_kind: AuthResponseKind | None = None

    @property
    def phase(self) -> FrontendPhase:
        return self._phase

    def _set_phase(self, phase: FrontendPhase) -> None:
        self._phase = phase
        self._fast = phase is FrontendPhase.MESSAGES and self._error is None

    def query_text(self, frame: bytes) -> str | None:
        """The text of ``frame`` if it is exactly one well-formed Query, of a length this
        decoder takes, while it reads typed messages: what `next_message` would read from
        it (a Query's ``sql``), with no message made. None otherwise (feed it to see why)."""
        n = len(frame)
        if not self._fast or n < 6 or frame[0] != 0x51 or frame.find(0, 5) != n - 1:
            return None  # (its text must end the frame: no NUL inside it)
        (size,) = _I32_FROM(frame, 1)
        if size != n - 1 or not self.fits(0x51, size):
            return None
        return _text(frame[5:-1])

    @property
    def direct_tls(self) -> bool:
        """The client opened with a TLS handshake instead of a startup packet (PostgreSQL
        17's ``sslnegotiation=direct``). `next_message` refuses it; a pump that supports it
        starts TLS on the raw bytes it has not fed yet, and a fresh decoder after."""
        if self._phase is not FrontendPhase.STARTUP or not self._ensure(1):
            return False
        return self._buf[self._pos] == _TLS_HANDSHAKE

    def startup_continues(self) -> None:
        """The session answered SSLRequest/GSSENCRequest with 'N': the client goes on in
        cleartext with another startup-phase message."""
        self._require_encryption_pending()
        self._set_phase(FrontendPhase.STARTUP)

    def encryption_started(self) -> None:
        """The session answered 'S' (or 'G') and hands the socket to TLS (GSSAPI): no
        cleartext byte may follow the request, and the next bytes fed are decrypted ones,
        starting again with a startup-phase message."""
        self._require_encryption_pending()
        if self.buffered:
            raise self._fail(
                ProtocolError(
                    "received unencrypted data after the encryption request: a client bug "
                    "or a man-in-the-middle attempt"
                )
            )
        self._set_phase(FrontendPhase.STARTUP)

    def _require_encryption_pending(self) -> None:
        if self._error is not None:
            raise self._error
        if self._phase is not FrontendPhase.ENCRYPTION_PENDING:
            raise CodecStateError(
                f"no SSLRequest or GSSENCRequest is awaiting an answer (phase: {self._phase.value})"
            )

    def expect_auth_response(self, kind: AuthResponseKind | None) -> None:
        """What the next 'p' messages are (see the module doc): typed from now on, or
        `PasswordLike` for None."""
        self._auth_kind = kind
        self._base_parsers[0x70] = _AUTH_PARSERS[kind]
        self._tables.clear()
        self._rebuild_parsers()

    @property
    def auth_response_kind(self) -> AuthResponseKind | None:
        return self._auth_kind

    def _next_special(self) -> FrontendMessage | None:
        if self._error is not None:
            raise self._error
        phase = self._phase
        if phase is FrontendPhase.STARTUP:
            return self._next_startup()
        if phase is FrontendPhase.CANCELLED and self.buffered:
            raise self._fail(ProtocolError("data after a CancelRequest"))
        return None  # ENCRYPTION_PENDING: waiting for the caller

    def _next_startup(self) -> FrontendMessage | None:
        if not self._ensure(8):
            if self.buffered and self._ensure(1) and self._buf[self._pos] == _TLS_HANDSHAKE:
                raise self._fail(self._direct_tls_error())
            return None
        buf, pos = self._buf, self._pos
        if buf[pos] == _TLS_HANDSHAKE:
            raise self._fail(self._direct_tls_error())
        size, code = struct.unpack_from("!iI", buf, pos)
        if not 8 <= size <= 4 + self._max_startup_size:
            raise self._fail(
                ProtocolError(
                    f"invalid startup packet length {size} (8 to {4 + self._max_startup_size})"
                )
            )
        if not self._ensure(size):
            return None
        buf, pos = self._buf, self._pos
        end = pos + size
        message, phase = self._parse_startup(buf, pos + 8, end, size, code)
        self._pos = end
        if self._keep_raw:
            _set_raw(message, buf[pos:end])
        self._set_phase(phase)
        return message

    def _parse_startup(
        self, buf: bytes, p: int, end: int, size: int, code: int
    ) -> tuple[FrontendMessage, FrontendPhase]:
        if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
            if size != 8:
                raise self._fail(ProtocolError(f"invalid encryption request length {size}"))
            request = SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
            return request, FrontendPhase.ENCRYPTION_PENDING
        if code == CANCEL_REQUEST_CODE:
            if not 12 + MIN_CANCEL_KEY_LENGTH <= size <= 12 + MAX_CANCEL_KEY_LENGTH:
                raise self._fail(ProtocolError(f"invalid CancelRequest length {size}"))
            (pid,) = _I32_FROM(buf, p)
            return CancelRequest(pid, buf[p + 4 : end]), FrontendPhase.CANCELLED
        major, minor = code >> 16, code & 0xFFFF
        if major != 3:
            what = "special request" if major == 1234 else "frontend protocol"
            raise self._fail(
                ProtocolError(
                    f"unsupported {what} {major}.{minor}: this server speaks protocol 3",
                    FEATURE_NOT_SUPPORTED,
                )
            )
        parameters: dict[str, str] = {}
        try:
            while True:
                name, p = _str(buf, p, end)
                if not name:
                    break
                if name in parameters:
                    raise self._fail(ProtocolError(f"startup parameter {name!r} appears twice"))
                parameters[name], p = _str(buf, p, end)
        except _PARSE_ERRORS as exc:
            raise self._fail(
                ProtocolError("invalid startup packet layout: expected a terminator")
            ) from exc
        if p != end:
            raise self._fail(
                ProtocolError("invalid startup packet layout: data after the terminator")
            )
        return StartupMessage(parameters, code), FrontendPhase.MESSAGES

    def _direct_tls_error(self) -> ProtocolError:
        return ProtocolError(
            "the client started TLS directly (sslnegotiation=direct), which is not "
            "supported here: connect with sslnegotiation=postgres"
        )


class BackendDecoder(_Decoder[BackendMessage]):
    """Decodes what a server sends."""

    _SPECS = _BACKEND

    def __init__(
        self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, keep_raw: bool = True
    ) -> None:
        super().__init__(max_message_size=max_message_size, keep_raw=keep_raw)
        self._expect_encryption = False
        self._encryption_accepted = False
        self._fast = True

    def expect_encryption_response(self) -> None:
        """An SSLRequest or GSSENCRequest was sent: the next message is the server's
        one-byte answer (`EncryptionResponse`), or an ErrorResponse."""
        if self._error is not None:
            raise self._error
        self._expect_encryption = True
        self._fast = False

    def encryption_started(self) -> None:
        """After an accepted `EncryptionResponse` ('S' or 'G'), the TLS (GSSAPI) session is
        up: the next bytes fed are decrypted ones. Until this call the decoder refuses any
        byte, as cleartext after the answer can only be injected."""
        if self._error is not None:
            raise self._error
        if not self._encryption_accepted:
            raise CodecStateError("no accepted encryption response is awaiting the handshake")
        self._refuse_cleartext()
        self._encryption_accepted = False
        self._fast = True

    def _refuse_cleartext(self) -> None:
        if self.buffered:
            raise self._fail(
                ProtocolError(
                    "received unencrypted data after the server accepted encryption: "
                    "a man-in-the-middle attempt?"
                )
            )

    def _next_special(self) -> BackendMessage | None:
        if self._error is not None:
            raise self._error
        if self._encryption_accepted:
            self._refuse_cleartext()
            return None
        if not self._ensure(1):
            return None
        byte = self._buf[self._pos]
        if byte == 0x45:  # 'E': a server refusing with a framed ErrorResponse
            self._fast = True
            try:
                message = self.next_message()
            finally:
                self._fast = False
            if message is not None:
                self._expect_encryption = False
                self._fast = self._error is None
            return message
        if byte not in (0x53, 0x4E, 0x47):
            raise self._fail(
                ProtocolError(f"invalid answer {_name(byte)} to an encryption request")
            )
        self._pos += 1
        self._expect_encryption = False
        response = EncryptionResponse("S" if byte == 0x53 else "N" if byte == 0x4E else "G")
        if response.accepted:  # (cleartext after it: refused by the next call)
            self._encryption_accepted = True
        else:
            self._fast = True
        if self._keep_raw:
            _set_raw(response, bytes((byte,)))
        return response


# ============================================================================
# One-shot decoding of a complete frame
# ============================================================================


def _decode_one(decoder: _Decoder[_T], frame: bytes) -> _T:
    decoder.feed(frame)
    message = decoder.next_message()
    if message is None or decoder.buffered:
        raise ProtocolError(f"expected exactly one complete message in {len(frame)} bytes")
    return message


def decode_frontend(
    frame: bytes, *, startup: bool = False, auth: AuthResponseKind | None = None
) -> FrontendMessage:
    """Decode exactly one frontend message (``startup``: one with no type byte)."""
    decoder = FrontendDecoder()
    if not startup:
        decoder._set_phase(FrontendPhase.MESSAGES)
    decoder.expect_auth_response(auth)
    return _decode_one(decoder, frame)


def decode_backend(frame: bytes) -> BackendMessage:
    """Decode exactly one framed backend message."""
    return _decode_one(BackendDecoder(), frame)
