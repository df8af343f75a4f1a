"""The codec against a real PostgreSQL: raw asyncio sockets, nothing but proxy.pg's codec.

Every message the server sends must decode, re-encode to exactly the bytes it came in, and
account for every byte received; what we send must decode back with the FrontendDecoder.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import pytest

from proxy.pg.codec import BackendDecoder, FrontendDecoder
from proxy.pg.messages import (
    PROTOCOL_3_0,
    PROTOCOL_3_2,
    AuthenticationCleartextPassword,
    AuthenticationOk,
    BackendKeyData,
    BackendMessage,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    CopyData,
    CopyDone,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    EncryptionResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    FunctionCall,
    FunctionCallResponse,
    GSSENCRequest,
    Message,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
)

TIMEOUT = 20.0
INT4, TEXT = 23, 25


@dataclass
class Server:
    host: str
    port: int
    user: str
    password: str | None
    database: str


@pytest.fixture
def server(pg_server: object) -> Server:
    url = urlsplit(pg_server.dsn)  # type: ignore[attr-defined]
    return Server(
        host=url.hostname or "127.0.0.1",
        port=url.port or 5432,
        user=unquote(url.username or "postgres"),
        password=unquote(url.password) if url.password else None,
        database=url.path.lstrip("/") or "postgres",
    )


@dataclass
class Wire:
    """One raw connection: what we sent and received, and the decoded replies."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    decoder: BackendDecoder = field(default_factory=BackendDecoder)
    sent: list[Message] = field(default_factory=list)
    sent_bytes: bytearray = field(default_factory=bytearray)
    received_bytes: bytearray = field(default_factory=bytearray)
    received: list[Message] = field(default_factory=list)

    async def send(self, *messages: Message) -> None:
        data = b"".join(m.encode() for m in messages)
        self.sent += messages
        self.sent_bytes += data
        self.writer.write(data)
        await self.writer.drain()

    async def recv_until(
        self,
        done: Callable[[BackendMessage], bool] = lambda m: isinstance(m, ReadyForQuery),
        wait: float = TIMEOUT,
    ) -> list[BackendMessage]:
        out: list[BackendMessage] = []
        while True:
            while (message := self.decoder.next_message()) is not None:
                self._check(message)
                out.append(message)
                if done(message):
                    return out
            chunk = await asyncio.wait_for(self.reader.read(65536), wait)
            if not chunk:
                raise AssertionError(f"connection closed after {out}")
            self.received_bytes += chunk
            self.decoder.feed(chunk)

    def _check(self, message: Message) -> None:
        assert message.raw is not None
        assert message.encode() == message.raw, message  # byte for byte
        self.received.append(message)

    async def closed_by_server(self) -> None:
        assert await asyncio.wait_for(self.reader.read(65536), TIMEOUT) == b""

    def assert_every_byte_accounted_for(self) -> None:
        assert self.decoder.buffered == 0
        assert b"".join(m.raw or b"" for m in self.received) == bytes(self.received_bytes)
        frontend = FrontendDecoder()
        frontend.feed(bytes(self.sent_bytes))
        decoded: list[Message] = []
        for message in self.sent:
            if isinstance(message, SSLRequest | GSSENCRequest):
                decoded += frontend.messages()
                frontend.startup_continues()
        decoded += frontend.messages()
        assert decoded == self.sent


@asynccontextmanager
async def connect(server: Server) -> AsyncIterator[Wire]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(server.host, server.port), TIMEOUT
    )
    try:
        yield Wire(reader, writer)
    finally:
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


async def start(
    wire: Wire, server: Server, version: int = PROTOCOL_3_0, **extra: str
) -> list[BackendMessage]:
    """Startup and authentication, up to the first ReadyForQuery."""
    params = {"user": server.user, "database": server.database, **extra}
    await wire.send(StartupMessage(params, version))
    first = await wire.recv_until(lambda m: not isinstance(m, NegotiateProtocolVersion))
    if isinstance(first[-1], AuthenticationCleartextPassword) and server.password:
        await wire.send(PasswordMessage(server.password))
    elif not isinstance(first[-1], AuthenticationOk):
        pytest.skip(f"this test speaks trust or cleartext authentication, not {first[-1]}")
    return first + await wire.recv_until()


def of(messages: list[BackendMessage], kind: type[Message]) -> list[Message]:
    return [m for m in messages if isinstance(m, kind)]


async def test_a_session_on_a_real_server_byte_for_byte(server: Server) -> None:
    async with connect(server) as wire:
        startup = await start(wire, server, application_name="tokenproxy-codec")
        params = {m.name: m.value for m in startup if isinstance(m, ParameterStatus)}
        assert params["client_encoding"] == "UTF8"
        assert params["application_name"] == "tokenproxy-codec"
        (key,) = of(startup, BackendKeyData)
        assert isinstance(key, BackendKeyData)
        assert len(key.secret_key) == 4  # protocol 3.0
        assert startup[-1] == ReadyForQuery("I")

        # Simple query
        await wire.send(Query("SELECT 1 AS one, NULL::text AS n"))
        assert await wire.recv_until() == [
            RowDescription(
                (
                    FieldDescription("one", 0, 0, INT4, 4, -1, 0),
                    FieldDescription("n", 0, 0, TEXT, -1, -1, 0),
                )
            ),
            DataRow((b"1", None)),
            CommandComplete("SELECT 1"),
            ReadyForQuery("I"),
        ]

        # Extended protocol, unnamed statement and portal, pipelined up to Sync
        await wire.send(
            Parse("", "SELECT $1::int4 + 1 AS two, $2::text AS t", (INT4, TEXT)),
            Bind("", "", (0,), (b"41", None), (0,)),
            Describe("P", ""),
            Execute("", 0),
            Sync(),
        )
        assert await wire.recv_until() == [
            ParseComplete(),
            BindComplete(),
            RowDescription(
                (
                    FieldDescription("two", 0, 0, INT4, 4, -1, 0),
                    FieldDescription("t", 0, 0, TEXT, -1, -1, 0),
                )
            ),
            DataRow((b"42", None)),
            CommandComplete("SELECT 1"),
            ReadyForQuery("I"),
        ]

        # Named statement, binary results, a row limit, Close
        await wire.send(
            Parse("s1", "SELECT i FROM generate_series(1, $1) AS g(i)", (INT4,)),
            Describe("S", "s1"),
            Bind("p1", "s1", (1,), ((3).to_bytes(4, "big"),), (1,)),
            Execute("p1", 2),
            Execute("p1", 0),
            Close("P", "p1"),
            Close("S", "s1"),
            Sync(),
        )
        assert await wire.recv_until() == [
            ParseComplete(),
            ParameterDescription((INT4,)),
            RowDescription((FieldDescription("i", 0, 0, INT4, 4, -1, 0),)),
            BindComplete(),
            DataRow((b"\x00\x00\x00\x01",)),
            DataRow((b"\x00\x00\x00\x02",)),
            PortalSuspended(),
            DataRow((b"\x00\x00\x00\x03",)),
            CommandComplete("SELECT 1"),
            CloseComplete(),
            CloseComplete(),
            ReadyForQuery("I"),
        ]

        # A statement without rows, an empty query, an error, a notice
        await wire.send(Parse("", "SET search_path = public"), Describe("S"), Sync())
        assert await wire.recv_until() == [
            ParseComplete(),
            ParameterDescription(()),
            NoData(),
            ReadyForQuery("I"),
        ]
        await wire.send(Query(""))
        assert await wire.recv_until() == [EmptyQueryResponse(), ReadyForQuery("I")]
        await wire.send(Query("SELECT * FROM no_such_table_here"))
        error, ready = await wire.recv_until()
        assert isinstance(error, ErrorResponse)
        assert (error.severity, error.sqlstate) == ("ERROR", "42P01")
        assert error.fields["P"] == "15"  # the position, among the server's fields
        assert ready == ReadyForQuery("I")
        await wire.send(Query("DO $$BEGIN RAISE NOTICE 'codec says hi'; END$$"))
        notice, done, ready = await wire.recv_until()
        assert isinstance(notice, NoticeResponse)
        assert (notice.severity, notice.message) == ("NOTICE", "codec says hi")
        assert (done, ready) == (CommandComplete("DO"), ReadyForQuery("I"))

        # Transaction states
        await wire.send(Query("BEGIN"))
        assert await wire.recv_until() == [CommandComplete("BEGIN"), ReadyForQuery("T")]
        await wire.send(Query("SELECT 1/0"))
        error, ready = await wire.recv_until()
        assert isinstance(error, ErrorResponse)
        assert error.sqlstate == "22012"
        assert ready == ReadyForQuery("E")
        await wire.send(Query("ROLLBACK"))
        assert await wire.recv_until() == [CommandComplete("ROLLBACK"), ReadyForQuery("I")]

        # COPY out and in
        await wire.send(Query("COPY (SELECT i, 'x' || i FROM generate_series(1, 3) i) TO STDOUT"))
        assert await wire.recv_until() == [
            CopyOutResponse(0, (0, 0)),
            CopyData(b"1\tx1\n"),
            CopyData(b"2\tx2\n"),
            CopyData(b"3\tx3\n"),
            CopyDone(),
            CommandComplete("COPY 3"),
            ReadyForQuery("I"),
        ]
        await wire.send(Query("CREATE TEMP TABLE t (a int, b text)"))
        await wire.recv_until()
        await wire.send(Query("COPY t FROM STDIN"))
        assert await wire.recv_until(lambda m: isinstance(m, CopyInResponse)) == [
            CopyInResponse(0, (0, 0))
        ]
        await wire.send(CopyData(b"1\tone\n"), CopyData(b"2\t\\N\n"), CopyDone())
        assert await wire.recv_until() == [CommandComplete("COPY 2"), ReadyForQuery("I")]
        await wire.send(Query("SELECT a, b FROM t ORDER BY a"))
        assert of(await wire.recv_until(), DataRow) == [
            DataRow((b"1", b"one")),
            DataRow((b"2", None)),
        ]

        # LISTEN / NOTIFY to ourselves
        await wire.send(Query("LISTEN chan; NOTIFY chan, 'payload'"))
        replies = await wire.recv_until()
        assert of(replies, NotificationResponse) == [
            NotificationResponse(key.pid, "chan", "payload")
        ]

        # The fast-path function call: int4pl(2, 3) in binary
        await wire.send(Query("SELECT 'int4pl'::regproc::oid"))
        (row,) = of(await wire.recv_until(), DataRow)
        assert isinstance(row, DataRow) and row.columns[0] is not None
        oid = int(row.columns[0])
        two, three = (2).to_bytes(4, "big"), (3).to_bytes(4, "big")
        await wire.send(FunctionCall(oid, (1,), (two, three), 1))
        assert await wire.recv_until() == [
            FunctionCallResponse((5).to_bytes(4, "big")),
            ReadyForQuery("I"),
        ]

        await wire.send(Terminate())
        await wire.closed_by_server()
        wire.assert_every_byte_accounted_for()


async def test_protocol_3_2_long_cancel_key_cancels_a_query(server: Server) -> None:
    async with connect(server) as wire:
        startup = await start(wire, server, PROTOCOL_3_2)
        (key,) = of(startup, BackendKeyData)
        assert isinstance(key, BackendKeyData)
        assert len(key.secret_key) == 32  # PostgreSQL 18 on protocol 3.2
        await wire.send(Query("SELECT pg_sleep(60)"))
        started = time.monotonic()
        replies: list[BackendMessage] = []
        while not replies and time.monotonic() - started < TIMEOUT:
            # (a cancel that arrives before the query starts is lost: repeat until it lands)
            async with connect(server) as canceller:
                await canceller.send(CancelRequest(key.pid, key.secret_key))
                await canceller.closed_by_server()
                canceller.assert_every_byte_accounted_for()
            with suppress(TimeoutError):
                replies = await wire.recv_until(wait=0.5)
        *_, error, ready = replies  # (a RowDescription may come first)
        assert isinstance(error, ErrorResponse)
        assert error.sqlstate == "57014"  # query_canceled
        assert ready == ReadyForQuery("I")
        assert time.monotonic() - started < 30
        await wire.send(Terminate())
        await wire.closed_by_server()
        wire.assert_every_byte_accounted_for()


async def test_negotiate_protocol_version_for_a_future_minor_and_options(
    server: Server,
) -> None:
    async with connect(server) as wire:
        startup = await start(wire, server, (3 << 16) | 9999, **{"_pq_.tokenproxy_test": "1"})
        negotiate = startup[0]
        assert isinstance(negotiate, NegotiateProtocolVersion)
        assert negotiate.unrecognized_options == ("_pq_.tokenproxy_test",)
        # PostgreSQL 18 answers with the full version it will speak: 3.2
        assert negotiate.version == PROTOCOL_3_2
        assert startup[-1] == ReadyForQuery("I")
        await wire.send(Terminate())
        await wire.closed_by_server()
        wire.assert_every_byte_accounted_for()


async def test_encryption_requests_refused_then_cleartext_startup(server: Server) -> None:
    async with connect(server) as wire:
        await wire.send(GSSENCRequest())
        wire.decoder.expect_encryption_response()
        (gss,) = await wire.recv_until(lambda m: True)
        assert gss == EncryptionResponse("N")
        await wire.send(SSLRequest())
        wire.decoder.expect_encryption_response()
        (ssl,) = await wire.recv_until(lambda m: True)
        assert isinstance(ssl, EncryptionResponse)
        if ssl.accepted:
            pytest.skip("this server speaks TLS: the cleartext continuation is not testable")
        startup = await start(wire, server)
        assert startup[-1] == ReadyForQuery("I")
        await wire.send(Terminate())
        await wire.closed_by_server()
        wire.assert_every_byte_accounted_for()
