"""The PostgreSQL codec, with no sockets: byte-exact fixtures, round trips, every split,
limits, malformed input and fuzzing (only ProtocolError may come out of a decoder)."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import InvalidInputError, TokenProxyError
from proxy.pg.codec import (
    AuthResponseKind,
    BackendDecoder,
    CodecStateError,
    FrontendDecoder,
    FrontendPhase,
    ProtocolError,
    auth_response_kind,
    decode_backend,
    decode_frontend,
    parse_password_like,
)
from proxy.pg.messages import (
    PROTOCOL_3_0,
    PROTOCOL_3_2,
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationGSSContinue,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationOther,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationSSPI,
    BackendKeyData,
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
    notice_response,
)

# ============================================================================
# Fixtures assembled by hand from the protocol documentation ("Message Formats"):
# type byte, Int32 length (counting itself, not the type), payload.
# ============================================================================

KEY32 = bytes(range(32))

STARTUP_FIXTURES: list[tuple[Message, bytes]] = [
    (
        StartupMessage({"user": "postgres", "database": "db"}),
        b"\x00\x00\x00\x23\x00\x03\x00\x00user\x00postgres\x00database\x00db\x00\x00",
    ),
    (
        StartupMessage({"user": "u"}, PROTOCOL_3_2),
        b"\x00\x00\x00\x10\x00\x03\x00\x02user\x00u\x00\x00",
    ),
    (SSLRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),  # 1234 << 16 | 5679
    (GSSENCRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x30"),  # 1234 << 16 | 5680
    (
        CancelRequest(1234, b"\x01\x02\x03\x04"),  # protocol 3.0: a 4-byte key
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x04\xd2\x01\x02\x03\x04",
    ),
    (
        CancelRequest(7, KEY32),  # protocol 3.2: PostgreSQL 18 hands out 32-byte keys
        b"\x00\x00\x00\x2c\x04\xd2\x16\x2e\x00\x00\x00\x07" + KEY32,
    ),
]

FRONTEND_FIXTURES: list[tuple[Message, bytes]] = [
    (Query("SELECT 1"), b"Q\x00\x00\x00\x0dSELECT 1\x00"),
    (Query(""), b"Q\x00\x00\x00\x05\x00"),
    (
        Parse("s1", "SELECT $1", (23,)),
        b"P\x00\x00\x00\x17s1\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17",
    ),
    (Parse("", "SELECT 2", ()), b"P\x00\x00\x00\x10\x00SELECT 2\x00\x00\x00"),
    (
        Bind("p1", "s1", (0, 1), (b"42", None), (1,)),
        b"B\x00\x00\x00\x20"
        b"p1\x00"
        b"s1\x00"
        b"\x00\x02\x00\x00\x00\x01"  # two parameter format codes: text, binary
        b"\x00\x02"  # two parameters
        b"\x00\x00\x00\x0242"  # '42'
        b"\xff\xff\xff\xff"  # NULL
        b"\x00\x01\x00\x01",  # one result format code: binary
    ),
    (Bind(), b"B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00"),
    (Describe("P", "p1"), b"D\x00\x00\x00\x08Pp1\x00"),
    (Describe("S"), b"D\x00\x00\x00\x06S\x00"),
    (Execute("p1", 100), b"E\x00\x00\x00\x0bp1\x00\x00\x00\x00\x64"),
    (Execute(), b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"),
    (Close("S", "s1"), b"C\x00\x00\x00\x08Ss1\x00"),
    (Close("P"), b"C\x00\x00\x00\x06P\x00"),
    (Sync(), b"S\x00\x00\x00\x04"),
    (Flush(), b"H\x00\x00\x00\x04"),
    (Terminate(), b"X\x00\x00\x00\x04"),
    (
        FunctionCall(1598, (0,), (b"x", None), 1),
        b"F\x00\x00\x00\x19"
        b"\x00\x00\x06\x3e"  # function OID 1598
        b"\x00\x01\x00\x00"  # one argument format: text
        b"\x00\x02\x00\x00\x00\x01x\xff\xff\xff\xff"  # 'x', NULL
        b"\x00\x01",  # result format: binary
    ),
    (CopyData(b"1\tAlice\n"), b"d\x00\x00\x00\x0c1\tAlice\n"),
    (CopyDone(), b"c\x00\x00\x00\x04"),
    (CopyFail("oops"), b"f\x00\x00\x00\x09oops\x00"),
    (PasswordLike(b"secret\x00"), b"p\x00\x00\x00\x0bsecret\x00"),
    (Unknown(b"?", b"\x01\x02"), b"?\x00\x00\x00\x06\x01\x02"),
]

# The 'p' family, each with the kind of authentication request it answers.
AUTH_FIXTURES: list[tuple[Message, AuthResponseKind, bytes]] = [
    (PasswordMessage("secret"), AuthResponseKind.PASSWORD, b"p\x00\x00\x00\x0bsecret\x00"),
    (
        SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc"),
        AuthResponseKind.SASL_INITIAL,
        b"p\x00\x00\x00\x21SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc",
    ),
    (
        SASLInitialResponse("SCRAM-SHA-256", None),
        AuthResponseKind.SASL_INITIAL,
        b"p\x00\x00\x00\x16SCRAM-SHA-256\x00\xff\xff\xff\xff",
    ),
    (
        SASLResponse(b"c=biws,r=abc,p=xyz"),
        AuthResponseKind.SASL,
        b"p\x00\x00\x00\x16c=biws,r=abc,p=xyz",
    ),
    (GSSResponse(b"\x60\x82"), AuthResponseKind.GSS, b"p\x00\x00\x00\x06\x60\x82"),
]

BACKEND_FIXTURES: list[tuple[Message, bytes]] = [
    (AuthenticationOk(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
    (AuthenticationOther(2), b"R\x00\x00\x00\x08\x00\x00\x00\x02"),  # KerberosV5
    (AuthenticationCleartextPassword(), b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
    (
        AuthenticationMD5Password(b"\x01\x02\x03\x04"),
        b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04",
    ),
    (AuthenticationGSS(), b"R\x00\x00\x00\x08\x00\x00\x00\x07"),
    (AuthenticationGSSContinue(b"tok"), b"R\x00\x00\x00\x0b\x00\x00\x00\x08tok"),
    (AuthenticationSSPI(), b"R\x00\x00\x00\x08\x00\x00\x00\x09"),
    (
        AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")),
        b"R\x00\x00\x00\x2a\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00",
    ),
    (
        AuthenticationSASLContinue(b"r=abc,s=c2FsdA==,i=4096"),
        b"R\x00\x00\x00\x1f\x00\x00\x00\x0br=abc,s=c2FsdA==,i=4096",
    ),
    (AuthenticationSASLFinal(b"v=xyz"), b"R\x00\x00\x00\x0d\x00\x00\x00\x0cv=xyz"),
    (AuthenticationOther(6, b"\x00"), b"R\x00\x00\x00\x09\x00\x00\x00\x06\x00"),  # SCM
    (
        BackendKeyData(4242, b"\xde\xad\xbe\xef"),
        b"K\x00\x00\x00\x0c\x00\x00\x10\x92\xde\xad\xbe\xef",
    ),
    (BackendKeyData(4242, KEY32), b"K\x00\x00\x00\x28\x00\x00\x10\x92" + KEY32),
    (
        ParameterStatus("client_encoding", "UTF8"),
        b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00",
    ),
    (ReadyForQuery("I"), b"Z\x00\x00\x00\x05I"),
    (ReadyForQuery("T"), b"Z\x00\x00\x00\x05T"),
    (ReadyForQuery("E"), b"Z\x00\x00\x00\x05E"),
    (ParseComplete(), b"1\x00\x00\x00\x04"),
    (BindComplete(), b"2\x00\x00\x00\x04"),
    (CloseComplete(), b"3\x00\x00\x00\x04"),
    (NoData(), b"n\x00\x00\x00\x04"),
    (PortalSuspended(), b"s\x00\x00\x00\x04"),
    (EmptyQueryResponse(), b"I\x00\x00\x00\x04"),
    (CommandComplete("SELECT 1"), b"C\x00\x00\x00\x0dSELECT 1\x00"),
    (
        RowDescription(
            (
                FieldDescription("one", 0, 0, 23, 4, -1, 0),
                FieldDescription("name", 16384, 2, 25, -1, -1, 1),
            )
        ),
        b"T\x00\x00\x00\x33"
        b"\x00\x02"
        b"one\x00"
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"
        b"name\x00"
        b"\x00\x00\x40\x00\x00\x02\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x01",
    ),
    (
        DataRow((b"1", None, b"")),
        b"D\x00\x00\x00\x13\x00\x03\x00\x00\x00\x011\xff\xff\xff\xff\x00\x00\x00\x00",
    ),
    (DataRow(()), b"D\x00\x00\x00\x06\x00\x00"),
    (
        ParameterDescription((23, 25)),
        b"t\x00\x00\x00\x0e\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19",
    ),
    (
        ErrorResponse({"S": "ERROR", "V": "ERROR", "C": "42P01", "M": "boom"}),
        b"E\x00\x00\x00\x20SERROR\x00VERROR\x00C42P01\x00Mboom\x00\x00",
    ),
    (
        NoticeResponse({"S": "NOTICE", "M": "hi"}),
        b"N\x00\x00\x00\x11SNOTICE\x00Mhi\x00\x00",
    ),
    (
        NotificationResponse(77, "chan", "hello"),
        b"A\x00\x00\x00\x13\x00\x00\x00\x4dchan\x00hello\x00",
    ),
    (FunctionCallResponse(b"ok"), b"V\x00\x00\x00\x0a\x00\x00\x00\x02ok"),
    (FunctionCallResponse(None), b"V\x00\x00\x00\x08\xff\xff\xff\xff"),
    (CopyInResponse(0, (0, 0)), b"G\x00\x00\x00\x0b\x00\x00\x02\x00\x00\x00\x00"),
    (CopyOutResponse(1, (1,)), b"H\x00\x00\x00\x09\x01\x00\x01\x00\x01"),
    (CopyBothResponse(0, ()), b"W\x00\x00\x00\x07\x00\x00\x00"),
    (CopyData(b"1\tx\n"), b"d\x00\x00\x00\x081\tx\n"),
    (CopyDone(), b"c\x00\x00\x00\x04"),
    (
        NegotiateProtocolVersion(PROTOCOL_3_0, ("_pq_.foo",)),
        b"v\x00\x00\x00\x15\x00\x03\x00\x00\x00\x00\x00\x01_pq_.foo\x00",
    ),
    (Unknown(b"!", b"xyz"), b"!\x00\x00\x00\x07xyz"),
]


def _ids(fixtures: Sequence[tuple[object, ...]]) -> list[str]:
    return [f"{i}-{type(f[0]).__name__}" for i, f in enumerate(fixtures)]


def typed_frontend(**kwargs: int) -> FrontendDecoder:
    """A FrontendDecoder past the startup phase."""
    decoder = FrontendDecoder(**kwargs)  # type: ignore[arg-type]
    decoder.feed(StartupMessage({"user": "u"}).encode())
    assert isinstance(decoder.next_message(), StartupMessage)
    assert decoder.phase is FrontendPhase.MESSAGES
    return decoder


def drain(decoder: FrontendDecoder | BackendDecoder) -> list[Message]:
    return list(decoder.messages())


def pieces(data: bytes, cuts: Iterable[int]) -> Iterator[bytes]:
    """``data`` cut at ``cuts`` (in order), as the feeds of a socket would bring it."""
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        yield data[start:cut]
        start = cut


def feed_in_chunks(
    decoder: FrontendDecoder | BackendDecoder, data: bytes, cuts: Iterable[int]
) -> list[Message]:
    out: list[Message] = []
    for piece in pieces(data, cuts):
        decoder.feed(piece)
        out += drain(decoder)
    return out


# ============================================================================
# Byte-exact fixtures
# ============================================================================


@pytest.mark.parametrize(("message", "wire"), STARTUP_FIXTURES, ids=_ids(STARTUP_FIXTURES))
def test_startup_messages_are_byte_exact(message: Message, wire: bytes) -> None:
    assert message.encode() == wire
    decoded = decode_frontend(wire, startup=True)
    assert decoded == message
    assert decoded.raw == wire
    assert decoded.encode() == wire


@pytest.mark.parametrize(("message", "wire"), FRONTEND_FIXTURES, ids=_ids(FRONTEND_FIXTURES))
def test_frontend_messages_are_byte_exact(message: Message, wire: bytes) -> None:
    assert message.encode() == wire
    decoded = decode_frontend(wire)
    assert decoded == message
    assert type(decoded) is type(message)
    assert decoded.raw == wire
    assert decoded.encode() == wire


@pytest.mark.parametrize(("message", "wire"), BACKEND_FIXTURES, ids=_ids(BACKEND_FIXTURES))
def test_backend_messages_are_byte_exact(message: Message, wire: bytes) -> None:
    assert message.encode() == wire
    decoded = decode_backend(wire)
    assert decoded == message
    assert type(decoded) is type(message)
    assert decoded.raw == wire
    assert decoded.encode() == wire
    assert decoded.wire() == wire


@pytest.mark.parametrize(("message", "kind", "wire"), AUTH_FIXTURES, ids=_ids(AUTH_FIXTURES))
def test_auth_responses_are_byte_exact_given_the_expected_kind(
    message: Message, kind: AuthResponseKind, wire: bytes
) -> None:
    assert message.encode() == wire
    assert decode_frontend(wire, auth=kind) == message
    generic = decode_frontend(wire)  # no hint: the payload, uninterpreted
    assert isinstance(generic, PasswordLike)
    assert generic.data == wire[5:]
    assert generic.encode() == wire
    assert parse_password_like(generic, kind) == message


def test_encryption_responses_are_single_unframed_bytes() -> None:
    for code in ("S", "N", "G"):
        decoder = BackendDecoder()
        decoder.expect_encryption_response()
        decoder.feed(code.encode())
        response = decoder.next_message()
        assert response == EncryptionResponse(code)  # type: ignore[arg-type]
        assert response.encode() == code.encode()
        assert response.accepted is (code != "N")


# ============================================================================
# Hypothesis: generated messages round-trip
# ============================================================================

_text_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
# Protocol Strings: any text without NUL, and any bytes without NUL as read from the wire
# (UTF-8 with surrogateescape), so invalid UTF-8 round-trips too.
pg_text = st.one_of(
    st.text(_text_chars, max_size=12),
    st.binary(max_size=12).map(
        lambda b: b.replace(b"\x00", b"").decode("utf-8", "surrogateescape")
    ),
)
i16 = st.integers(-(2**15), 2**15 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
u32 = st.integers(0, 2**32 - 1)
int16s = st.lists(i16, max_size=4).map(tuple)
oids = st.lists(u32, max_size=4).map(tuple)
values = st.lists(st.none() | st.binary(max_size=12), max_size=5).map(tuple)
blob = st.binary(max_size=24)
cancel_key = st.binary(min_size=4, max_size=256)
kind = st.sampled_from(["S", "P"])

_FRONTEND_TYPES = set(b"QPBDECSHXFdcfp")
_BACKEND_TYPES = set(b"RKSZ123nsICTDtENAVGHWdcv")

frontend_typed = st.one_of(
    st.builds(Query, pg_text),
    st.builds(Parse, pg_text, pg_text, oids),
    st.builds(Bind, pg_text, pg_text, int16s, values, int16s),
    st.builds(Describe, kind, pg_text),
    st.builds(Execute, pg_text, i32),
    st.builds(Close, kind, pg_text),
    st.sampled_from([Sync(), Flush(), Terminate(), CopyDone()]),
    st.builds(FunctionCall, u32, int16s, values, i16),
    st.builds(CopyData, blob),
    st.builds(CopyFail, pg_text),
    st.builds(PasswordLike, blob),
    st.builds(
        Unknown,
        st.sampled_from(sorted(set(range(256)) - _FRONTEND_TYPES)).map(lambda b: bytes([b])),
        blob,
    ),
)

startup_message = st.builds(
    StartupMessage,
    st.dictionaries(pg_text.filter(bool), pg_text, max_size=4),
    st.sampled_from([PROTOCOL_3_0, PROTOCOL_3_2]) | st.integers(3 << 16, (3 << 16) | 0xFFFF),
)
startup_phase = startup_message | st.builds(CancelRequest, i32, cancel_key)

notice_fields = st.dictionaries(
    st.characters(min_codepoint=1, max_codepoint=255), pg_text, max_size=5
)

backend_typed = st.one_of(
    st.sampled_from(
        [
            AuthenticationOk(),
            AuthenticationCleartextPassword(),
            AuthenticationGSS(),
            AuthenticationSSPI(),
            ParseComplete(),
            BindComplete(),
            CloseComplete(),
            NoData(),
            PortalSuspended(),
            EmptyQueryResponse(),
            CopyDone(),
        ]
    ),
    st.builds(AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    st.builds(AuthenticationGSSContinue, blob),
    st.builds(AuthenticationSASL, st.lists(pg_text.filter(bool), max_size=3).map(tuple)),
    st.builds(AuthenticationSASLContinue, blob),
    st.builds(AuthenticationSASLFinal, blob),
    st.builds(
        AuthenticationOther, st.integers(13, 2**31 - 1) | st.sampled_from([1, 2, 4, 6]), blob
    ),
    st.builds(BackendKeyData, i32, cancel_key),
    st.builds(ParameterStatus, pg_text, pg_text),
    st.builds(ReadyForQuery, st.sampled_from(["I", "T", "E"])),
    st.builds(CommandComplete, pg_text),
    st.builds(
        RowDescription,
        st.lists(
            st.builds(FieldDescription, pg_text, u32, i16, u32, i16, i32, i16), max_size=4
        ).map(tuple),
    ),
    st.builds(DataRow, values),
    st.builds(ParameterDescription, oids),
    st.builds(ErrorResponse, notice_fields),
    st.builds(NoticeResponse, notice_fields),
    st.builds(NotificationResponse, i32, pg_text, pg_text),
    st.builds(FunctionCallResponse, st.none() | blob),
    st.builds(CopyInResponse, st.integers(0, 255), int16s),
    st.builds(CopyOutResponse, st.integers(0, 255), int16s),
    st.builds(CopyBothResponse, st.integers(0, 255), int16s),
    st.builds(CopyData, blob),
    st.builds(NegotiateProtocolVersion, u32, st.lists(pg_text, max_size=3).map(tuple)),
    st.builds(
        Unknown,
        st.sampled_from(sorted(set(range(256)) - _BACKEND_TYPES)).map(lambda b: bytes([b])),
        blob,
    ),
)

auth_response = st.one_of(
    st.builds(PasswordMessage, pg_text).map(lambda m: (m, AuthResponseKind.PASSWORD)),
    st.builds(SASLInitialResponse, pg_text, st.none() | blob).map(
        lambda m: (m, AuthResponseKind.SASL_INITIAL)
    ),
    st.builds(SASLResponse, blob).map(lambda m: (m, AuthResponseKind.SASL)),
    st.builds(GSSResponse, blob).map(lambda m: (m, AuthResponseKind.GSS)),
)


@given(frontend_typed)
def test_generated_frontend_messages_round_trip(message: Message) -> None:
    wire = message.encode()
    decoded = decode_frontend(wire)
    assert decoded == message
    assert decoded.encode() == wire


@given(startup_phase)
def test_generated_startup_messages_round_trip(message: Message) -> None:
    wire = message.encode()
    decoded = decode_frontend(wire, startup=True)
    assert decoded == message
    assert decoded.encode() == wire


@given(backend_typed)
def test_generated_backend_messages_round_trip(message: Message) -> None:
    wire = message.encode()
    decoded = decode_backend(wire)
    assert decoded == message
    assert type(decoded) is type(message)
    assert decoded.encode() == wire


@given(auth_response)
def test_generated_auth_responses_round_trip(case: tuple[Message, AuthResponseKind]) -> None:
    message, expected = case
    wire = message.encode()
    assert decode_frontend(wire, auth=expected) == message
    generic = decode_frontend(wire)
    assert isinstance(generic, PasswordLike)
    assert parse_password_like(generic, expected) == message


# ============================================================================
# Streams: many messages in a chunk, and every split
# ============================================================================

FRONTEND_STREAM = STARTUP_FIXTURES[0][1] + b"".join(wire for _, wire in FRONTEND_FIXTURES)
FRONTEND_STREAM_MESSAGES = [STARTUP_FIXTURES[0][0]] + [m for m, _ in FRONTEND_FIXTURES]
BACKEND_STREAM = b"".join(wire for _, wire in BACKEND_FIXTURES)
BACKEND_STREAM_MESSAGES = [m for m, _ in BACKEND_FIXTURES]


def test_one_chunk_holding_every_message() -> None:
    frontend = FrontendDecoder()
    frontend.feed(FRONTEND_STREAM)
    assert drain(frontend) == FRONTEND_STREAM_MESSAGES
    assert frontend.buffered == 0
    backend = BackendDecoder()
    backend.feed(BACKEND_STREAM)
    decoded = drain(backend)
    assert decoded == BACKEND_STREAM_MESSAGES
    assert b"".join(m.raw or b"" for m in decoded) == BACKEND_STREAM


def test_byte_by_byte() -> None:
    frontend = FrontendDecoder()
    assert feed_in_chunks(frontend, FRONTEND_STREAM, range(1, len(FRONTEND_STREAM))) == (
        FRONTEND_STREAM_MESSAGES
    )
    backend = BackendDecoder()
    decoded = feed_in_chunks(backend, BACKEND_STREAM, range(1, len(BACKEND_STREAM)))
    assert decoded == BACKEND_STREAM_MESSAGES
    assert b"".join(m.raw or b"" for m in decoded) == BACKEND_STREAM


def test_every_split_point() -> None:
    for cut in range(len(FRONTEND_STREAM) + 1):
        assert feed_in_chunks(FrontendDecoder(), FRONTEND_STREAM, [cut]) == (
            FRONTEND_STREAM_MESSAGES
        ), cut
    for cut in range(len(BACKEND_STREAM) + 1):
        assert feed_in_chunks(BackendDecoder(), BACKEND_STREAM, [cut]) == (
            BACKEND_STREAM_MESSAGES
        ), cut


@given(st.lists(backend_typed, max_size=12), st.data())
def test_generated_backend_streams_in_random_chunks(
    messages: list[Message], data: st.DataObject
) -> None:
    wire = b"".join(m.encode() for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=10))
    decoded = feed_in_chunks(BackendDecoder(), wire, cuts)
    assert decoded == messages
    assert b"".join(m.raw or b"" for m in decoded) == wire


@given(startup_message, st.lists(frontend_typed, max_size=12), st.data())
def test_generated_frontend_streams_in_random_chunks(
    startup: Message, messages: list[Message], data: st.DataObject
) -> None:
    wire = startup.encode() + b"".join(m.encode() for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=10))
    assert feed_in_chunks(FrontendDecoder(), wire, cuts) == [startup, *messages]


def test_partial_messages_wait_for_more_bytes() -> None:
    decoder = BackendDecoder()
    wire = DataRow((b"abc",)).encode()
    decoder.feed(wire[:3])
    assert decoder.next_message() is None
    assert decoder.buffered == 3
    decoder.feed(wire[3:-1])
    assert decoder.next_message() is None
    decoder.feed(wire[-1:] + ReadyForQuery().encode()[:2])
    assert decoder.next_message() == DataRow((b"abc",))
    assert decoder.next_message() is None
    assert decoder.buffered == 2
    decoder.feed(b"")  # allowed, changes nothing
    decoder.feed(bytearray(ReadyForQuery().encode()[2:]))  # any bytes-like object
    assert decoder.next_message() == ReadyForQuery("I")


@pytest.mark.timeout(60)
def test_a_large_message_fed_in_small_chunks_is_linear() -> None:
    # 32 MiB in 1 KiB chunks: re-joining the buffer on every feed would copy ~500 GiB.
    value = bytes(range(256)) * (32 * 4096)
    wire = DataRow((value, None)).encode() + CommandComplete("SELECT 1").encode()
    decoder = BackendDecoder()
    started = time.monotonic()
    messages: list[Message] = []
    for start in range(0, len(wire), 1024):
        decoder.feed(wire[start : start + 1024])
        messages += drain(decoder)
    assert time.monotonic() - started < 20
    assert messages == [DataRow((value, None)), CommandComplete("SELECT 1")]


def test_many_messages_in_one_chunk_are_linear() -> None:
    rows = [DataRow((str(i).encode(), b"Alice", None)) for i in range(100_000)]
    decoder = BackendDecoder(keep_raw=False)
    decoder.feed(b"".join(r.encode() for r in rows))
    started = time.monotonic()
    decoded = drain(decoder)
    assert time.monotonic() - started < 20
    assert decoded == rows
    assert decoded[0].raw is None  # keep_raw=False


# ============================================================================
# The startup phase and the encryption handshake
# ============================================================================


def test_ssl_refused_then_startup_continues_in_cleartext() -> None:
    wire = SSLRequest().encode() + StartupMessage({"user": "u"}).encode() + Query("x").encode()
    decoder = FrontendDecoder()
    decoder.feed(wire)
    assert decoder.next_message() == SSLRequest()
    assert decoder.phase is FrontendPhase.ENCRYPTION_PENDING
    assert decoder.next_message() is None  # waits for the session's answer
    decoder.startup_continues()
    assert drain(decoder) == [StartupMessage({"user": "u"}), Query("x")]


def test_gssenc_refused_then_ssl_requested_byte_by_byte() -> None:
    decoder = FrontendDecoder()
    out = feed_in_chunks(decoder, GSSENCRequest().encode(), range(1, 8))
    assert out == [GSSENCRequest()]
    decoder.startup_continues()
    out = feed_in_chunks(decoder, SSLRequest().encode(), range(1, 8))
    assert out == [SSLRequest()]
    decoder.encryption_started()
    assert decoder.phase is FrontendPhase.STARTUP
    # what now arrives is the decrypted stream
    out = feed_in_chunks(decoder, STARTUP_FIXTURES[0][1], range(1, 35))
    assert out == [STARTUP_FIXTURES[0][0]]
    assert decoder.phase is FrontendPhase.MESSAGES


def test_cleartext_after_ssl_request_is_refused_when_tls_starts() -> None:
    # CVE-2021-23214: bytes sent before the handshake must not pass as encrypted ones.
    decoder = FrontendDecoder()
    decoder.feed(SSLRequest().encode() + Query("injected").encode())
    assert decoder.next_message() == SSLRequest()
    with pytest.raises(ProtocolError, match="unencrypted data"):
        decoder.encryption_started()
    with pytest.raises(ProtocolError):
        decoder.next_message()


def test_encryption_calls_out_of_order_are_state_errors() -> None:
    decoder = FrontendDecoder()
    with pytest.raises(CodecStateError):
        decoder.startup_continues()
    decoder = typed_frontend()
    with pytest.raises(CodecStateError):
        decoder.encryption_started()


def test_backend_ssl_answer_and_messages_after_n() -> None:
    decoder = BackendDecoder()
    decoder.expect_encryption_response()
    wire = b"N" + AuthenticationOk().encode() + ReadyForQuery().encode()
    out = feed_in_chunks(decoder, wire, range(1, len(wire)))
    assert out == [EncryptionResponse("N"), AuthenticationOk(), ReadyForQuery("I")]


def test_backend_cleartext_after_s_is_refused() -> None:
    # CVE-2021-23222: a man in the middle appending a response after 'S'.
    decoder = BackendDecoder()
    decoder.expect_encryption_response()
    decoder.feed(b"S" + ErrorResponse({"M": "x"}).encode())
    assert decoder.next_message() == EncryptionResponse("S")
    with pytest.raises(ProtocolError, match="unencrypted data"):
        decoder.encryption_started()
    again = BackendDecoder()
    again.expect_encryption_response()
    again.feed(b"S" + ErrorResponse({"M": "x"}).encode())
    assert again.next_message() == EncryptionResponse("S")
    with pytest.raises(ProtocolError, match="unencrypted data"):
        again.next_message()
    # ... also when it comes in a later read, before the handshake is done
    later = BackendDecoder()
    later.expect_encryption_response()
    later.feed(b"S")
    assert later.next_message() == EncryptionResponse("S")
    assert later.next_message() is None
    later.feed(b"E")
    with pytest.raises(ProtocolError, match="unencrypted data"):
        later.next_message()


def test_backend_after_the_handshake_reads_the_decrypted_stream() -> None:
    decoder = BackendDecoder()
    with pytest.raises(CodecStateError):
        decoder.encryption_started()
    decoder.expect_encryption_response()
    decoder.feed(b"G")
    assert decoder.next_message() == EncryptionResponse("G")
    decoder.encryption_started()
    decoder.feed(AuthenticationOk().encode())
    assert decoder.next_message() == AuthenticationOk()


def test_backend_refusing_an_encryption_request_with_an_error() -> None:
    error = error_response("08P01", "unsupported frontend protocol", severity="FATAL")
    decoder = BackendDecoder()
    decoder.expect_encryption_response()
    wire = error.encode()
    assert feed_in_chunks(decoder, wire, range(1, len(wire))) == [error]
    decoder.feed(ReadyForQuery().encode())  # framed messages again
    assert decoder.next_message() == ReadyForQuery()


def test_backend_garbage_answer_to_an_encryption_request() -> None:
    decoder = BackendDecoder()
    decoder.expect_encryption_response()
    decoder.feed(b"X")
    with pytest.raises(ProtocolError):
        decoder.next_message()


def test_direct_tls_is_recognised_and_refused() -> None:
    decoder = FrontendDecoder()
    decoder.feed(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a TLS ClientHello
    assert decoder.direct_tls
    with pytest.raises(ProtocolError, match="sslnegotiation"):
        decoder.next_message()
    short = FrontendDecoder()
    short.feed(b"\x16\x03")
    assert short.direct_tls
    with pytest.raises(ProtocolError, match="sslnegotiation"):
        short.next_message()
    assert not typed_frontend().direct_tls


def test_nothing_may_follow_a_cancel_request() -> None:
    decoder = FrontendDecoder()
    decoder.feed(STARTUP_FIXTURES[5][1])
    assert decoder.next_message() == CancelRequest(7, KEY32)
    assert decoder.phase is FrontendPhase.CANCELLED
    assert decoder.next_message() is None
    decoder.feed(b"Q")
    with pytest.raises(ProtocolError):
        decoder.next_message()


def test_startup_message_versions_and_parameters() -> None:
    message = decode_frontend(STARTUP_FIXTURES[1][1], startup=True)
    assert isinstance(message, StartupMessage)
    assert (message.major, message.minor) == (3, 2)
    assert dict(message.parameters) == {"user": "u"}
    # A newer minor decodes: the session answers NegotiateProtocolVersion.
    future = StartupMessage({"user": "u", "_pq_.x": "1"}, (3 << 16) | 9999)
    assert decode_frontend(future.encode(), startup=True) == future


@pytest.mark.parametrize(
    ("wire", "sqlstate"),
    [
        (b"\x00\x00\x00\x09\x00\x02\x00\x00\x00", "0A000"),  # protocol 2.0
        (b"\x00\x00\x00\x09\x00\x04\x00\x00\x00", "0A000"),  # protocol 4.0
        (b"\x00\x00\x00\x08\x04\xd2\x16\x31", "0A000"),  # an unknown 1234.x request
        (b"\x00\x00\x00\x08\x00\x03\x00\x00", "08P01"),  # no terminator
        (b"\x00\x00\x00\x0e\x00\x03\x00\x00user\x00\x00", "08P01"),  # name, no value
        (b"\x00\x00\x00\x0e\x00\x03\x00\x00a\x00b\x00\x00X", "08P01"),  # after terminator
        (b"\x00\x00\x00\x11\x00\x03\x00\x00a\x00b\x00a\x00c\x00\x00", "08P01"),  # dup
        (b"\x00\x00\x00\x0c\x04\xd2\x16\x2f\x00\x00\x00\x00", "08P01"),  # long SSLRequest
        (b"\x00\x00\x00\x0f\x04\xd2\x16\x2e\x00\x00\x00\x01\x01\x02\x03", "08P01"),  # key 3
        (b"\x00\x00\x01\x0d\x04\xd2\x16\x2e" + bytes(261), "08P01"),  # key 257
        (b"\x00\x00\x00\x07\x00\x03\x00", "08P01"),  # length below 8
        (b"\x00\x00\x27\x15", "08P01"),  # 10005: a payload over the startup limit
        (b"\xff\xff\xff\xf0", "08P01"),  # negative
    ],
)
def test_bad_startup_packets(wire: bytes, sqlstate: str) -> None:
    decoder = FrontendDecoder()
    decoder.feed(wire + bytes(8))  # padding: the length, not a short read, must decide
    with pytest.raises(ProtocolError) as caught:
        decoder.next_message()
    assert caught.value.sqlstate == sqlstate


# ============================================================================
# Limits and malformed messages: always ProtocolError, raised early
# ============================================================================


def test_an_oversized_length_fails_at_the_header_without_waiting() -> None:
    decoder = BackendDecoder()
    decoder.feed(b"D\x40\x00\x00\x05")  # a payload of 1 GiB + 1: only the header is in
    with pytest.raises(ProtocolError, match="over the limit"):
        decoder.next_message()
    small = BackendDecoder(max_message_size=1000)
    small.feed(b"D\x00\x00\x03\xec")  # a payload of exactly 1000: allowed, waits
    assert small.next_message() is None
    smaller = BackendDecoder(max_message_size=1000)
    smaller.feed(b"d\x00\x00\x03\xed")
    with pytest.raises(ProtocolError):
        smaller.next_message()
    frontend = typed_frontend(max_message_size=100)
    frontend.feed(b"Q\x00\x00\x00\x69")
    with pytest.raises(ProtocolError):
        frontend.next_message()


@given(st.integers(0, 255), st.integers(-2, 2000), st.sampled_from([None, 0, 10, 1000]))
def test_sizes_are_the_lengths_that_fit(code: int, size: int, limit: int | None) -> None:
    """`sizes` (kept by a batch's shape) says what `fits` says, for either side."""
    for decoder in (
        BackendDecoder() if limit is None else BackendDecoder(max_message_size=limit),
        typed_frontend() if limit is None else typed_frontend(max_message_size=limit),
    ):
        assert (size in decoder.sizes(code)) == decoder.fits(code, size)


def test_limits_at_the_edge_are_allowed() -> None:
    # (each would wait for its payload rather than fail)
    for header in (b"D\x00\x00\x27\x14", b"p\x00\x01\x00\x03"):
        frontend = typed_frontend()
        frontend.feed(header)
        assert frontend.next_message() is None
    startup = FrontendDecoder()
    startup.feed(b"\x00\x00\x27\x14\x00\x03\x00\x00")  # a payload of exactly 10,000
    assert startup.next_message() is None
    key = BackendDecoder()
    key.feed(BackendKeyData(1, bytes(256)).encode())
    assert key.next_message() == BackendKeyData(1, bytes(256))


@pytest.mark.parametrize(
    "header",
    [
        b"D\xff\xff\xff\xff",  # negative
        b"D\x80\x00\x00\x00",  # negative
        b"D\x00\x00\x00\x03",  # shorter than the length itself
        b"Z\x00\x00\x00\x06",  # ReadyForQuery is exactly 5
        b"1\x00\x00\x00\x05",  # ParseComplete is exactly 4
        b"K\x00\x00\x01\x09",  # a BackendKeyData key over 256 bytes
        b"K\x00\x00\x00\x0b",  # ... or under 4
    ],
)
def test_bad_backend_lengths(header: bytes) -> None:
    decoder = BackendDecoder()
    decoder.feed(header)
    with pytest.raises(ProtocolError):
        decoder.next_message()


@pytest.mark.parametrize(
    "header",
    [
        b"S\x00\x00\x00\x05",  # Sync is exactly 4
        b"D\x00\x00\x27\x15",  # Describe over the 10,000-byte small-message limit
        b"E\x00\x00\x27\x15",
        b"C\x00\x00\x27\x15",
        b"f\x00\x00\x27\x15",
        b"p\x00\x01\x00\x04",  # 65,536: over the authentication limit
        b"Q\x00\x00\x00\x04",  # a Query needs at least its NUL
    ],
)
def test_bad_frontend_lengths(header: bytes) -> None:
    decoder = typed_frontend()
    decoder.feed(header)
    with pytest.raises(ProtocolError):
        decoder.next_message()


@pytest.mark.parametrize(
    "wire",
    [
        b"D\x00\x00\x00\x0c\x00\x01\x00\x00\x00\x05ab",  # column past the end
        b"D\x00\x00\x00\x0a\x00\x01\xff\xff\xff\xfe",  # column length -2
        b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x00\x00",  # a byte after the columns
        b"D\x00\x00\x00\x06\x00\x09",  # nine columns announced, none there
        b"C\x00\x00\x00\x08abcd",  # a String without its NUL
        b"C\x00\x00\x00\x08ab\x00d",  # data after the String
        b"Z\x00\x00\x00\x05X",  # unknown transaction status
        b"R\x00\x00\x00\x0c\x00\x00\x00\x00abcd",  # AuthenticationOk with content
        b"R\x00\x00\x00\x0a\x00\x00\x00\x05ab",  # an MD5 salt of 2 bytes
        b"R\x00\x00\x00\x0e\x00\x00\x00\x0aSCRAM\x00",  # mechanisms without terminator
        b"K\x00\x00\x00\x0b\x00\x00\x00\x01abc",  # a 3-byte cancel key
        b"E\x00\x00\x00\x0bSa\x00Sb\x00\x00",  # a field twice
        b"E\x00\x00\x00\x07Sa\x00",  # fields without terminator
        b"T\x00\x00\x00\x0a\x00\x01ab\x00\x00",  # a field description cut short
        b"t\x00\x00\x00\x0a\x00\x02\x00\x00\x00\x17",  # two OIDs announced, one there
        b"V\x00\x00\x00\x0a\x00\x00\x00\x05ab",  # function result past the end
        b"V\x00\x00\x00\x08\xff\xff\xff\xfe",  # function result length -2
        b"G\x00\x00\x00\x07\x00\x00\x01",  # one column format announced, none there
        b"A\x00\x00\x00\x0a\x00\x00\x00\x01a\x00",  # notification without payload
        b"v\x00\x00\x00\x0c\x00\x03\x00\x00\x00\x00\x00\x02",  # two options, none there
        b"S\x00\x00\x00\x08ab\x00c",  # parameter value without NUL
    ],
)
def test_malformed_backend_messages(wire: bytes) -> None:
    decoder = BackendDecoder()
    decoder.feed(wire + ReadyForQuery().encode())  # a valid message follows: never read into
    with pytest.raises(ProtocolError) as caught:
        decoder.next_message()
    assert caught.value.sqlstate == "08P01"


@pytest.mark.parametrize(
    "wire",
    [
        b"D\x00\x00\x00\x07Xa\x00",  # Describe kind neither S nor P
        b"C\x00\x00\x00\x06\x00\x00",  # Close kind NUL
        b"E\x00\x00\x00\x08a\x00\x00\x00",  # Execute cut short
        b"B\x00\x00\x00\x0e\x00\x00\x00\x00\x00\x01\x00\x00\x00\x09",  # a value past the end
        b"B\x00\x00\x00\x0c\x00\x00\x00\x03\x00\x00\x00\x00",  # 3 formats announced, 2 there
        b"P\x00\x00\x00\x0b\x00q\x00\x00\x05\x00\x00",  # OIDs announced, absent
        b"F\x00\x00\x00\x0d\x00\x00\x00\x01\x00\x00\x00\x00\x00",  # result format cut
        b"f\x00\x00\x00\x06ab",  # CopyFail without NUL
        b"Q\x00\x00\x00\x07a\x00b",  # data after the query
    ],
)
def test_malformed_frontend_messages(wire: bytes) -> None:
    decoder = typed_frontend()
    decoder.feed(wire + Sync().encode())
    with pytest.raises(ProtocolError):
        decoder.next_message()


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"secret", AuthResponseKind.PASSWORD),  # no NUL
        (b"secret\x00x", AuthResponseKind.PASSWORD),  # data after it
        (b"SCRAM-SHA-256\x00\x00\x00\x00\x09abc", AuthResponseKind.SASL_INITIAL),  # short
        (b"SCRAM-SHA-256\x00\xff\xff\xff\xfe", AuthResponseKind.SASL_INITIAL),  # -2
        (b"SCRAM-SHA-256", AuthResponseKind.SASL_INITIAL),  # no NUL, no length
    ],
)
def test_malformed_auth_responses(payload: bytes, kind: AuthResponseKind) -> None:
    with pytest.raises(ProtocolError):
        parse_password_like(PasswordLike(payload), kind)
    decoder = typed_frontend()
    decoder.expect_auth_response(kind)
    decoder.feed(PasswordLike(payload).encode())
    with pytest.raises(ProtocolError):
        decoder.next_message()


def test_a_broken_decoder_stays_broken() -> None:
    decoder = BackendDecoder()
    decoder.feed(b"Z\x00\x00\x00\x05X" + ReadyForQuery().encode())
    with pytest.raises(ProtocolError) as first:
        decoder.next_message()
    assert decoder.broken
    with pytest.raises(ProtocolError) as again:
        decoder.next_message()
    assert again.value is first.value
    with pytest.raises(ProtocolError):
        decoder.feed(b"more")


def test_protocol_error_is_a_project_error_that_becomes_a_fatal_response() -> None:
    error = ProtocolError("bad message")
    assert isinstance(error, TokenProxyError)
    assert error.sqlstate == "08P01"
    response = error.to_error_response()
    assert response.fields["S"] == "FATAL"
    assert response.sqlstate == "08P01"
    assert response.message == "bad message"


# ============================================================================
# Fuzzing: arbitrary bytes give messages or ProtocolError, nothing else
# ============================================================================


def _outcome(
    make: Callable[[], FrontendDecoder | BackendDecoder], data: bytes, cuts: Iterable[int]
) -> tuple[list[Message], bool]:
    """The messages a decoder gives for ``data`` fed in pieces, and whether it then failed:
    only ProtocolError may escape."""
    decoder = make()
    out: list[Message] = []
    try:
        for piece in pieces(data, cuts):
            decoder.feed(piece)
            while (message := decoder.next_message()) is not None:
                out.append(message)
    except ProtocolError as exc:
        assert isinstance(exc.sqlstate, str)
        return out, True
    return out, False


def _fuzz(
    make: Callable[[], FrontendDecoder | BackendDecoder], data: bytes, cuts: list[int]
) -> None:
    out, failed = _outcome(make, data, cuts)
    # Whatever was accepted re-encodes to exactly the bytes it came from, in order.
    for message in out:
        assert message.raw is not None
        assert message.encode() == message.raw
    assert data.startswith(b"".join(m.raw or b"" for m in out))
    # ... and the same comes out fed whole or byte by byte.
    assert _outcome(make, data, []) == (out, failed)
    assert _outcome(make, data, range(1, len(data))) == (out, failed)


def _auth_decoder(kind: AuthResponseKind) -> Callable[[], FrontendDecoder]:
    def make() -> FrontendDecoder:
        decoder = typed_frontend()
        decoder.expect_auth_response(kind)
        return decoder

    return make


def _passthrough_decoder() -> FrontendDecoder:
    decoder = typed_frontend()
    decoder.passthrough = {b"Q", b"d"}
    return decoder


def _memo_decoders() -> tuple[FrontendDecoder, BackendDecoder]:
    front = typed_frontend()
    front.memoize({b"P", b"D", b"E", b"C"}, limit=3)
    back = BackendDecoder()
    back.memoize({b"T", b"t", b"C"}, limit=3)
    back.passthrough = {b"D"}
    return front, back


def _encryption_decoder() -> BackendDecoder:
    decoder = BackendDecoder()
    decoder.expect_encryption_response()
    return decoder


_FUZZ = settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)


@_FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=5))
def test_fuzz_random_bytes_into_every_decoder_state(data: bytes, cuts: list[int]) -> None:
    cuts = [c for c in cuts if c <= len(data)]
    _fuzz(FrontendDecoder, data, cuts)
    _fuzz(typed_frontend, data, cuts)
    _fuzz(_passthrough_decoder, data, cuts)
    _fuzz(lambda: _memo_decoders()[0], data, cuts)
    _fuzz(lambda: _memo_decoders()[1], data, cuts)
    for kind in AuthResponseKind:
        _fuzz(_auth_decoder(kind), data, cuts)
    _fuzz(BackendDecoder, data, cuts)
    _fuzz(_encryption_decoder, data, cuts)


def _mutate(wire: bytes, rnd: random.Random) -> bytes:
    data = bytearray(wire)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(4)
        if not data:
            data += bytes([rnd.randrange(256)])
        elif op == 0:
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        elif op == 1:
            del data[rnd.randrange(len(data)) :]
        elif op == 2:
            data.insert(rnd.randrange(len(data) + 1), rnd.randrange(256))
        else:
            del data[rnd.randrange(len(data))]
    return bytes(data)


@_FUZZ
@given(st.lists(backend_typed, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_fuzz_mutated_backend_streams(messages: list[Message], rnd: random.Random) -> None:
    data = _mutate(b"".join(m.encode() for m in messages), rnd)
    _fuzz(BackendDecoder, data, [rnd.randrange(len(data) + 1)])


@_FUZZ
@given(
    startup_phase,
    st.lists(frontend_typed, min_size=1, max_size=6),
    st.randoms(use_true_random=False),
)
def test_fuzz_mutated_frontend_streams(
    startup: Message, messages: list[Message], rnd: random.Random
) -> None:
    data = _mutate(startup.encode() + b"".join(m.encode() for m in messages), rnd)
    _fuzz(FrontendDecoder, data, [rnd.randrange(len(data) + 1)])
    _fuzz(typed_frontend, data, [])


# ============================================================================
# raw, wire(), passthrough
# ============================================================================


def test_raw_is_the_wire_and_replace_drops_it() -> None:
    wire = DataRow((b"Alice", b"+62812")).encode()
    row = decode_backend(wire)
    assert isinstance(row, DataRow)
    assert row.raw == wire
    assert row.wire() is row.raw
    changed = dataclasses.replace(row, columns=(b"TOKEN", b"+62812"))
    assert changed.raw is None  # a rewritten message cannot leak its original bytes
    assert changed.wire() == changed.encode() != wire
    assert DataRow((b"x",)).raw is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.columns = ()  # type: ignore[misc]


def test_mappings_are_read_only_and_keep_wire_order() -> None:
    wire = b"E\x00\x00\x00\x19Mboom\x00C42P01\x00SERROR\x00\x00"
    error = decode_backend(wire)
    assert isinstance(error, ErrorResponse)
    assert list(error.fields) == ["M", "C", "S"]
    assert error.encode() == wire
    with pytest.raises(TypeError):
        error.fields["M"] = "leak"  # type: ignore[index]
    fields = {"user": "u"}
    startup = StartupMessage(fields)
    fields["user"] = "changed"
    assert startup.parameters["user"] == "u"


def test_keep_raw_false() -> None:
    decoder = BackendDecoder(keep_raw=False)
    decoder.feed(CommandComplete("SELECT 1").encode() + DataRow((b"1",)).encode())
    complete, row = drain(decoder)
    assert complete.raw is None
    assert row.raw is None
    assert row.wire() == DataRow((b"1",)).encode()


def test_passthrough_switches_between_messages() -> None:
    rows = [DataRow((str(i).encode(), None)) for i in range(3)]
    wire = (
        RowDescription((FieldDescription("a"), FieldDescription("b"))).encode()
        + b"".join(r.encode() for r in rows)
        + CommandComplete("SELECT 3").encode()
        + rows[0].encode()
    )
    decoder = BackendDecoder()
    decoder.feed(wire)
    assert isinstance(decoder.next_message(), RowDescription)
    decoder.passthrough = {b"D"}  # nothing protected in this result
    frames = [decoder.next_message() for _ in range(3)]
    assert all(isinstance(f, Passthrough) for f in frames)
    assert [f.wire() for f in frames if f] == [r.encode() for r in rows]
    assert frames[0] and frames[0].type == b"D"
    assert decoder.next_message() == CommandComplete("SELECT 3")
    decoder.passthrough = set()
    assert decoder.next_message() == rows[0]
    with pytest.raises(CodecStateError):
        decoder.passthrough = {b"DD"}


def test_memoized_messages_are_parsed_once_per_distinct_frame() -> None:
    front, _ = _memo_decoders()
    sent = [
        Parse("", "SELECT 1", ()),
        Execute("", 0),
        Parse("", "SELECT 1", ()),
        Parse("s", "SELECT 1", (23,)),
        Query("SELECT 1"),  # not memoized
        Query("SELECT 1"),
        Execute("", 0),
    ]
    wire = b"".join(m.encode() for m in sent)
    for cut in range(len(wire) + 1):  # split anywhere: the same messages
        decoder, _ = _memo_decoders()
        decoder.feed(wire[:cut])
        decoder.feed(wire[cut:])
        got = list(decoder.messages())
        assert got == sent
        assert [m.wire() for m in got] == [m.encode() for m in sent]
        assert got[0] is got[2] and got[1] is got[6]  # the same instance, found by bytes
        assert got[3] is not got[0] and got[4] is not got[5]
    # Bounded: a full memo is emptied, and a frame parsed again is equal, not the same.
    for i in range(3):
        front.feed(Describe("P", f"p{i}").encode())
        front.next_message()
    front.feed(Describe("P", "p3").encode() + Describe("P", "p0").encode())
    assert front.next_message() == Describe("P", "p3")
    assert front.next_message() == Describe("P", "p0")


def test_a_malformed_memoized_message_is_refused_every_time() -> None:
    bad = b"E\x00\x00\x00\x09abcde"  # an Execute whose portal name never ends
    for _ in range(2):
        decoder, _ = _memo_decoders()
        decoder.feed(bad)
        with pytest.raises(ProtocolError):
            decoder.next_message()
    decoder, back = _memo_decoders()
    with pytest.raises(CodecStateError):
        back.memoize({b"TT"})


def test_memoized_backend_descriptions_and_framed_rows() -> None:
    _, back = _memo_decoders()
    description = RowDescription((FieldDescription("a"),))
    row = DataRow((b"1",))
    back.feed((description.encode() + row.encode() + CommandComplete("SELECT 1").encode()) * 2)
    first = [back.next_message() for _ in range(3)]
    again = [back.next_message() for _ in range(3)]
    assert first[0] == description and first[0] is again[0]
    assert first[2] is again[2]
    assert first[1] == again[1] == Passthrough(row.encode())  # rows are never memoized
    assert first[1] is not again[1]


def test_passthrough_of_password_messages_wins_over_the_auth_hint() -> None:
    decoder = typed_frontend()
    decoder.expect_auth_response(AuthResponseKind.SASL)
    decoder.passthrough = {b"p"}
    wire = SASLResponse(b"x").encode()
    decoder.feed(wire)
    assert decoder.next_message() == Passthrough(wire)


def test_auth_response_kind_follows_the_request() -> None:
    assert auth_response_kind(AuthenticationCleartextPassword()) is AuthResponseKind.PASSWORD
    assert auth_response_kind(AuthenticationMD5Password(b"salt")) is AuthResponseKind.PASSWORD
    assert auth_response_kind(AuthenticationSASL(("SCRAM-SHA-256",))) is (
        AuthResponseKind.SASL_INITIAL
    )
    assert auth_response_kind(AuthenticationSASLContinue(b"")) is AuthResponseKind.SASL
    assert auth_response_kind(AuthenticationGSS()) is AuthResponseKind.GSS
    assert auth_response_kind(AuthenticationSSPI()) is AuthResponseKind.GSS
    assert auth_response_kind(AuthenticationGSSContinue(b"")) is AuthResponseKind.GSS
    assert auth_response_kind(AuthenticationOk()) is None
    assert auth_response_kind(AuthenticationSASLFinal(b"")) is None


def test_a_scram_exchange_decoded_with_hints() -> None:
    decoder = typed_frontend()
    decoder.expect_auth_response(auth_response_kind(AuthenticationSASL(("SCRAM-SHA-256",))))
    decoder.feed(SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc").encode())
    assert decoder.next_message() == SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc")
    decoder.expect_auth_response(auth_response_kind(AuthenticationSASLContinue(b"r=abc")))
    assert decoder.auth_response_kind is AuthResponseKind.SASL
    decoder.feed(SASLResponse(b"c=biws").encode())
    assert decoder.next_message() == SASLResponse(b"c=biws")
    decoder.expect_auth_response(None)
    decoder.feed(PasswordMessage("pw").encode())
    assert decoder.next_message() == PasswordLike(b"pw\x00")


# ============================================================================
# Runs of DataRows (take_data_rows)
# ============================================================================


def _frames(run: bytes) -> list[bytes]:
    """The DataRow frames of a run, each checked to be one."""
    out, p = [], 0
    while p < len(run):
        assert run[p] == 0x44
        end = p + 1 + int.from_bytes(run[p + 1 : p + 5], "big")
        out.append(run[p:end])
        p = end
    assert p == len(run)
    return out


def drain_runs(decoder: BackendDecoder, out: list[bytes] | None = None) -> list[bytes]:
    """Everything buffered, as a session reads it: runs of DataRows first, then one message
    at a time. Each item is a run or one other message's wire bytes (added to ``out``)."""
    out = [] if out is None else out
    while True:
        run = decoder.take_data_rows()
        if run is not None:
            assert run
            out.append(run)
            continue
        message = decoder.next_message()
        if message is None:
            return out
        out.append(message.wire())


def feed_runs(decoder: BackendDecoder, data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`feed_in_chunks` with `drain_runs`: the frames, runs split back into rows."""
    out: list[bytes] = []
    for piece in pieces(data, cuts):
        decoder.feed(piece)
        for item in drain_runs(decoder):
            out += _frames(item) if item[0] == 0x44 else [item]
    return out


ROWS = [DataRow((str(i).encode(), b"Alice" * i, None)) for i in range(4)]
RESULT = [
    RowDescription((FieldDescription("id"), FieldDescription("name"), FieldDescription("n"))),
    *ROWS,
    NoticeResponse({"S": "NOTICE", "M": "mid-result"}),
    *ROWS[:2],
    CommandComplete("SELECT 6"),
    ReadyForQuery("I"),
    DataRow(()),
]
RESULT_WIRE = b"".join(m.encode() for m in RESULT)


def test_runs_fed_whole_are_the_longest_runs() -> None:
    decoder = BackendDecoder()
    decoder.feed(RESULT_WIRE)
    rows = b"".join(r.encode() for r in ROWS)
    assert drain_runs(decoder) == [
        RESULT[0].encode(),
        rows,
        RESULT[5].encode(),
        rows[: len(ROWS[0].encode() + ROWS[1].encode())],
        CommandComplete("SELECT 6").encode(),
        ReadyForQuery("I").encode(),
        DataRow(()).encode(),
    ]
    assert decoder.buffered == 0
    only_rows = BackendDecoder()
    only_rows.feed(rows)
    assert only_rows.take_data_rows() is rows  # a whole chunk of rows: not copied
    assert only_rows.take_data_rows() is None


def test_runs_at_every_split_point_and_byte_by_byte() -> None:
    expected = [m.encode() for m in RESULT]
    for cut in range(len(RESULT_WIRE) + 1):
        assert feed_runs(BackendDecoder(), RESULT_WIRE, [cut]) == expected, cut
    assert feed_runs(BackendDecoder(), RESULT_WIRE, range(1, len(RESULT_WIRE))) == expected


def test_a_row_split_across_feeds_waits_then_joins_its_run() -> None:
    one, two, three = (r.encode() for r in ROWS[1:])
    decoder = BackendDecoder()
    decoder.feed(one + two[:3])
    assert decoder.take_data_rows() == one
    assert decoder.take_data_rows() is None  # two is not complete
    assert decoder.next_message() is None
    assert decoder.buffered == 3
    decoder.feed(two[3:-1])
    assert decoder.take_data_rows() is None
    decoder.feed(two[-1:] + three[:7])  # fed in pieces, never drained between them
    decoder.feed(three[7:])
    decoder.feed(one)
    assert decoder.take_data_rows() == two + three + one
    assert decoder.buffered == 0
    # Rows in the buffer, then a row completed only by a later feed: one run.
    decoder.feed(one + two + three[:5])
    decoder.feed(three[5:])
    assert decoder.take_data_rows() == one + two + three


@given(st.lists(backend_typed | st.builds(DataRow, values), max_size=16), st.data())
def test_generated_streams_in_runs(messages: list[Message], data: st.DataObject) -> None:
    wire = b"".join(m.encode() for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=10))
    assert feed_runs(BackendDecoder(), wire, cuts) == [m.encode() for m in messages]


@pytest.mark.parametrize(
    "header",
    [b"D\xff\xff\xff\xff", b"D\x00\x00\x00\x05", b"D\x40\x00\x00\x05"],  # -1, 4, 1 GiB + 1
)
def test_a_bad_data_row_length_ends_the_run_then_fails(header: bytes) -> None:
    rows = b"".join(r.encode() for r in ROWS)
    decoder = BackendDecoder()
    decoder.feed(rows + header)
    expected = BackendDecoder()
    expected.feed(header)
    with pytest.raises(ProtocolError) as reference:
        expected.next_message()
    assert decoder.take_data_rows() == rows  # the rows before it are good
    with pytest.raises(ProtocolError) as first:
        decoder.take_data_rows()
    assert str(first.value) == str(reference.value)
    assert decoder.broken
    with pytest.raises(ProtocolError) as again:
        decoder.take_data_rows()
    assert again.value is first.value
    with pytest.raises(ProtocolError) as then:
        decoder.next_message()
    assert then.value is first.value


def test_data_row_limits_are_the_decoders() -> None:
    small = BackendDecoder(max_message_size=1000)
    small.feed(b"D\x00\x00\x03\xec")  # a payload of exactly 1000: allowed, waits
    assert small.take_data_rows() is None
    assert small.buffered == 5
    smaller = BackendDecoder(max_message_size=1000)
    smaller.feed(DataRow((b"x",)).encode() + b"D\x00\x00\x03\xed")
    assert smaller.take_data_rows() == DataRow((b"x",)).encode()
    with pytest.raises(ProtocolError, match="over the limit"):
        smaller.take_data_rows()


def test_runs_respect_the_decoder_state() -> None:
    broken = BackendDecoder()
    broken.feed(b"Z\x00\x00\x00\x06" + ROWS[0].encode())
    with pytest.raises(ProtocolError) as first:
        broken.next_message()
    with pytest.raises(ProtocolError) as again:
        broken.take_data_rows()
    assert again.value is first.value
    # An encryption answer is due: not a DataRow, whatever the bytes say.
    decoder = BackendDecoder()
    decoder.expect_encryption_response()
    decoder.feed(b"N" + ROWS[0].encode())
    assert decoder.take_data_rows() is None
    assert decoder.next_message() == EncryptionResponse("N")
    assert decoder.take_data_rows() == ROWS[0].encode()
    accepted = BackendDecoder()
    accepted.expect_encryption_response()
    accepted.feed(b"S")
    assert accepted.next_message() == EncryptionResponse("S")
    accepted.feed(ROWS[0].encode())  # injected cleartext: next_message refuses it
    assert accepted.take_data_rows() is None
    with pytest.raises(ProtocolError):
        accepted.next_message()
    with pytest.raises(ProtocolError):
        accepted.take_data_rows()


def _run_outcome(data: bytes, cuts: Iterable[int]) -> tuple[bytes, bool]:
    """What a session reading runs accepts of ``data`` (in order), and whether it failed."""
    decoder = BackendDecoder()
    out: list[bytes] = []
    try:
        for piece in pieces(data, cuts):
            decoder.feed(piece)
            drain_runs(decoder, out)
    except ProtocolError:
        return b"".join(out), True
    return b"".join(out), False


def _framed_outcome(data: bytes, cuts: Iterable[int]) -> tuple[bytes, bool]:
    """The same through next_message alone, DataRows framed only (as runs are)."""

    def make() -> BackendDecoder:
        decoder = BackendDecoder()
        decoder.passthrough = {b"D"}
        return decoder

    messages, failed = _outcome(make, data, cuts)
    return b"".join(m.wire() for m in messages), failed


@_FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=5))
def test_fuzz_runs_accept_what_framing_accepts(data: bytes, cuts: list[int]) -> None:
    cuts = [c for c in cuts if c <= len(data)]
    expected = _framed_outcome(data, cuts)
    assert _run_outcome(data, cuts) == expected
    assert _run_outcome(data, range(1, len(data))) == expected


@_FUZZ
@given(
    st.lists(st.builds(DataRow, values) | backend_typed, min_size=1, max_size=8),
    st.randoms(use_true_random=False),
)
def test_fuzz_mutated_streams_of_rows(messages: list[Message], rnd: random.Random) -> None:
    data = _mutate(b"".join(m.encode() for m in messages), rnd)
    cuts = [rnd.randrange(len(data) + 1) for _ in range(3)]
    assert _run_outcome(data, cuts) == _framed_outcome(data, cuts)


# ============================================================================
# Encoders refuse what the wire cannot carry
# ============================================================================


@pytest.mark.parametrize(
    "build",
    [
        lambda: Query("SELECT '\x00'"),
        lambda: Query("\ud800"),  # a lone surrogate that is not an escaped byte
        lambda: StartupMessage({"": "x"}),
        lambda: StartupMessage({"user": "a\x00b"}),
        lambda: CancelRequest(1, b"abc"),
        lambda: CancelRequest(1, bytes(257)),
        lambda: BackendKeyData(1, b""),
        lambda: AuthenticationMD5Password(b"12345"),
        lambda: AuthenticationSASL(("",)),
        lambda: Describe("X"),  # type: ignore[arg-type]
        lambda: Close("s"),  # type: ignore[arg-type]
        lambda: ReadyForQuery("Q"),  # type: ignore[arg-type]
        lambda: EncryptionResponse("Y"),  # type: ignore[arg-type]
        lambda: ErrorResponse({"MM": "x"}),
        lambda: ErrorResponse({"\x00": "x"}),
        lambda: ErrorResponse({"\u0100": "x"}),
        lambda: Unknown(b"ab", b""),
        lambda: AuthenticationOther(0, b"x"),
    ],
)
def test_encoders_refuse_unencodable_messages(build: Callable[[], Message]) -> None:
    with pytest.raises(InvalidInputError):
        build().encode()


def test_error_response_helper() -> None:
    error = error_response(
        "23505", "duplicate key", detail="Key (id)=(1) already exists.", hint="Retry."
    )
    assert list(error.fields.items()) == [
        ("S", "ERROR"),
        ("V", "ERROR"),
        ("C", "23505"),
        ("M", "duplicate key"),
        ("D", "Key (id)=(1) already exists."),
        ("H", "Retry."),
    ]
    assert (error.severity, error.sqlstate, error.message) == ("ERROR", "23505", "duplicate key")
    assert (error.detail, error.hint) == ("Key (id)=(1) already exists.", "Retry.")
    assert decode_backend(error.encode()) == error
    fatal = error_response("08P01", "bye", severity="FATAL")
    assert fatal.encode() == b"E\x00\x00\x00\x1fSFATAL\x00VFATAL\x00C08P01\x00Mbye\x00\x00"
    notice = notice_response("01000", "careful", severity="WARNING")
    assert isinstance(notice, NoticeResponse)
    assert notice.severity == "WARNING"
    assert notice != ErrorResponse(notice.fields)
    for bad in (
        lambda: error_response("4250", "short sqlstate"),
        lambda: error_response("42p01", "lower case"),
        lambda: error_response("42P01", "x", severity="NOTICE"),
        lambda: notice_response("01000", "x", severity="ERROR"),
    ):
        with pytest.raises(InvalidInputError):
            bad()


# ------------------------------------------------- a Query's text read from its frame alone


def _frames_beginning_with_q() -> st.SearchStrategy[bytes]:
    """Query frames, well formed or a little off: NULs in the text, another length, bytes
    after it, a frame cut short."""
    text = st.text(alphabet=st.sampled_from("SELECT 1;é'\udcff "), max_size=40)

    def frame(sql: str, nul: int | None, skew: int, tail: bytes, cut: int) -> bytes:
        if nul is not None:
            sql = sql[:nul] + "\x00" + sql[nul:]
        body = sql.encode("utf-8", "surrogateescape") + b"\x00"
        whole = b"Q" + (len(body) + 4 + skew).to_bytes(4, "big", signed=True) + body + tail
        return whole[: len(whole) - cut]

    return st.builds(frame, text, st.none() | st.integers(0, 40),
                     st.sampled_from([0, 0, 0, -1, 1, -10]),
                     st.sampled_from([b"", b"", b"Q", Sync().encode()]),
                     st.sampled_from([0, 0, 0, 1, 6]))


@given(_frames_beginning_with_q(), st.sampled_from([20, 1 << 30]))
def test_a_query_text_is_what_the_decoder_reads_from_the_frame(frame: bytes, limit: int) -> None:
    """`query_text` gives a text only for bytes the decoder reads as exactly one Query
    (the same text, nothing left over), and None for every other: never a text the
    decoder would refuse, cut, or read another way."""
    decoder = typed_frontend(max_message_size=limit)
    text = decoder.query_text(frame)
    decoder.feed(frame)
    try:
        messages = drain(decoder)
    except ProtocolError:
        messages = None
    one_query = (
        messages is not None and len(messages) == 1 and isinstance(messages[0], Query)
        and not decoder.buffered
    )
    assert (text is not None) == one_query
    if text is not None:
        assert messages is not None and messages[0] == Query(text)
        assert messages[0].encode() == frame  # (the text sent on is the text received)


def test_no_query_text_before_typed_messages_or_over_the_limit() -> None:
    frame = Query("SELECT 1").encode()
    assert FrontendDecoder().query_text(frame) is None  # (still in start-up)
    assert typed_frontend().query_text(frame) == "SELECT 1"
    long = Query("SELECT 1 " * 5).encode()
    assert typed_frontend(max_message_size=40).query_text(long) is None
    decoder = typed_frontend(max_message_size=40)
    decoder.feed(long)
    with pytest.raises(ProtocolError, match="over the limit"):
        drain(decoder)
