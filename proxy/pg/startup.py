"""The start of a PostgreSQL session through the proxy: encryption, authentication, cancels.

`establish` takes a freshly accepted client socket and returns an `Established` session
stopped right before the server's first ReadyForQuery, or None when the connection ended
(a CancelRequest, an authentication failure, a client that went away, garbage...)::

    est = await establish(sock, settings, cancels)
    if est is not None:
        await relay_plain(est)          # or the query-rewriting session

What happens before that, in order:

1. Encryption, on the raw socket. A client opening with a TLS ClientHello (PostgreSQL 17's
   ``sslnegotiation=direct``) is seen by peeking at the first byte, so TLS starts on bytes
   nothing has read yet; it needs a certificate and the ALPN protocol "postgresql". An
   SSLRequest gets 'S' and TLS with a certificate, else 'N'; a GSSENCRequest always 'N'
   (each at most once, in any order). Cleartext bytes sent after an SSLRequest are refused
   (CVE-2021-23214, by the codec).
2. A CancelRequest: the key is looked up in the `CancelRegistry` (the secret compared in
   constant time; with a shared table, also the keys other proxies issued) and the real one
   sent upstream on a new connection; an unknown key is dropped. The client gets nothing
   back but the close, as from PostgreSQL.
3. A StartupMessage: the upstream is connected (with ``upstream_tls``, by SSLRequest, and an
   'N' is refused: fail closed), the StartupMessage forwarded as received, and the
   authentication exchange relayed: trust, password, md5 and SCRAM-SHA-256. The proxy
   cannot honour SCRAM channel binding (the client's TLS ends here): SCRAM-SHA-256-PLUS is
   struck from the mechanisms the client sees, and a client that asks for channel binding
   anyway gets an error that says so. GSSAPI, SSPI and other methods are refused.
4. After AuthenticationOk, ParameterStatus and NoticeResponse are relayed; BackendKeyData is
   replaced by a key the proxy issues (the real pid when free, a random secret of the same
   length: protocol 3.2's long keys included), registered in the CancelRegistry until the
   session closes.

Errors reach the client as a FATAL ErrorResponse where the protocol allows one, then the
connection closes; no traceback, and no password or other payload in a log or a message.
The whole start-up is bounded by ``startup_timeout``, the upstream connect by
``connect_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, NoReturn

import structlog

from proxy.pg.cancels import CancelRegistry, CancelTarget
from proxy.pg.codec import (
    AuthResponseKind,
    BackendDecoder,
    FrontendDecoder,
    ProtocolError,
)
from proxy.pg.messages import (
    PROTOCOL_3_0,
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationMessage,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    BackendMessage,
    CancelRequest,
    ErrorResponse,
    FrontendMessage,
    GSSENCRequest,
    NegotiateProtocolVersion,
    NoticeResponse,
    ParameterStatus,
    PasswordMessage,
    ReadyForQuery,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    StartupMessage,
    Terminate,
    error_response,
)

__all__ = [
    "ALPN_PROTOCOL",
    "Established",
    "PgSettings",
    "client_tls_context",
    "establish",
    "forward_cancel",
    "upstream_tls_context",
]

log = structlog.get_logger("tokenproxy.pg")

ALPN_PROTOCOL: Final = "postgresql"
SCRAM_PLUS: Final = "SCRAM-SHA-256-PLUS"
_READ_SIZE: Final = 65_536
_TLS_HANDSHAKE: Final = 0x16
_CLOSE_TIMEOUT: Final = 2.0
_LINGER_TIMEOUT: Final = 0.5
_LINGER_BYTES: Final = 1 << 20
_FALSE_WORDS: Final = frozenset({"", "0", "false", "off", "no", "f", "n"})


# ============================================================================
# Settings and TLS contexts
# ============================================================================


def client_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The server-side TLS context for clients: TLS 1.2+, ALPN "postgresql"."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols([ALPN_PROTOCOL])
    return context


def upstream_tls_context(ca_file: str = "") -> ssl.SSLContext:
    """The client-side TLS context for the upstream: without ``ca_file`` no certificate
    check (libpq's sslmode=require); with one, the chain and host name are verified
    (sslmode=verify-full)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols([ALPN_PROTOCOL])
    return context


@dataclass(frozen=True, slots=True)
class PgSettings:
    """How the front end reaches the upstream and talks to clients.

    ``client_tls``: the context from `client_tls_context`, or None (SSLRequest answered
    'N', direct TLS refused). ``upstream_tls``: TLS to the upstream (see
    `upstream_tls_context` for ``upstream_ca_file``); a server that declines is refused.
    """

    upstream_host: str
    upstream_port: int = 5432
    upstream_tls: bool = False
    upstream_ca_file: str = ""
    client_tls: ssl.SSLContext | None = None
    connect_timeout: float = 10.0
    startup_timeout: float = 60.0
    _upstream_context: ssl.SSLContext | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.upstream_tls:
            object.__setattr__(
                self, "_upstream_context", upstream_tls_context(self.upstream_ca_file)
            )

    @property
    def upstream(self) -> str:
        """``host:port`` of the upstream, for messages and logs."""
        return f"{self.upstream_host}:{self.upstream_port}"

    @property
    def upstream_context(self) -> ssl.SSLContext | None:
        return self._upstream_context


# ============================================================================
# Cancels
# ============================================================================


async def forward_cancel(target: CancelTarget, connect_timeout: float) -> bool:
    """Send the real CancelRequest to ``target`` on a new connection (over TLS when the
    session's upstream used it) and wait for the server to close; False on failure."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(connect_timeout):
            if target.tls_context is None:
                reader, writer = await asyncio.open_connection(target.host, target.port)
            else:
                sock = await _connect_socket(target.host, target.port)
                reader, writer = await _upstream_tls(sock, target.host, target.tls_context)
            writer.write(CancelRequest(target.pid, target.secret_key).encode())
            await writer.drain()
            while await reader.read(_READ_SIZE):
                pass
        return True
    except (OSError, TimeoutError, _Refused):
        return False
    finally:
        if writer is not None:
            await _close_writer(writer)


# ============================================================================
# The established session
# ============================================================================


@dataclass(eq=False, slots=True)
class Established:
    """A session past authentication, stopped before the first ReadyForQuery.

    The decoders are positioned after what was relayed: ``client_decoder`` in the message
    phase, ``server_decoder`` after the ReadyForQuery in ``ready``. Bytes that arrived
    beyond that are already fed to the decoders, and also kept raw in ``client_leftover``
    and ``server_leftover`` for a pump that forwards bytes without decoding.
    ``params``: the startup parameters as the client sent them (``startup`` the message);
    ``user``: the authenticated database user (the agent), ``database`` (the user's name
    when not given); ``parameter_status``: the server's ParameterStatus values as relayed;
    ``protocol_version``: as negotiated (NegotiateProtocolVersion). ``cancel_key``: the key
    the client holds (proxy-issued), ``backend_pid``: the server's real pid.
    """

    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    server_reader: asyncio.StreamReader
    server_writer: asyncio.StreamWriter
    client_decoder: FrontendDecoder
    server_decoder: BackendDecoder
    client_leftover: bytes = field(repr=False)
    server_leftover: bytes = field(repr=False)
    startup: StartupMessage
    params: dict[str, str]
    user: str
    database: str
    parameter_status: dict[str, str]
    ready: ReadyForQuery
    protocol_version: int
    cancel_key: BackendKeyData | None
    backend_pid: int | None
    peer: str
    client_tls: bool
    upstream_tls: bool
    _release: Callable[[], None] | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Close both connections and forget the cancel key. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        release, self._release = self._release, None
        if release is not None:
            release()
        await asyncio.gather(_close_writer(self.server_writer), _close_writer(self.client_writer))


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    """Close, flushing for a bounded time; then abort."""
    with contextlib.suppress(Exception):
        writer.close()
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await writer.wait_closed()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
    except Exception:  # closing: whatever the transport says, abort
        writer.transport.abort()


# ============================================================================
# Start-up
# ============================================================================


class _Refused(Exception):
    """End the start-up with this ErrorResponse to the client."""

    def __init__(self, response: ErrorResponse) -> None:
        super().__init__(response.message)
        self.response = response


class _Ended(Exception):
    """The start-up is over and the client was told (or is gone): just close."""


def _fatal(sqlstate: str, message: str, hint: str | None = None) -> _Refused:
    return _Refused(error_response(sqlstate, message, "FATAL", hint=hint))


class _Tail:
    """A raw copy of the bytes a decoder holds undecoded (the leftovers of start-up)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, data: bytes) -> None:
        self.data += data

    def trim(self, buffered: int) -> None:
        if buffered < len(self.data):
            del self.data[: len(self.data) - buffered]


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Client:
    """The client connection: a raw socket until streams are attached (with or without
    TLS), so that TLS can start on bytes nothing has read."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.tls = False
        self.loop = asyncio.get_running_loop()

    async def first_byte(self) -> bytes:
        """The first byte the client sent, left unread (b"": it closed)."""
        sock = self.sock
        while True:
            try:
                return sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                pass
            ready: asyncio.Future[None] = self.loop.create_future()
            fd = sock.fileno()
            self.loop.add_reader(fd, _wake, ready)
            try:
                await ready
            finally:
                self.loop.remove_reader(fd)

    async def attach(self, context: ssl.SSLContext | None, handshake_timeout: float) -> None:
        """Wrap the socket in streams (TLS with ``context``: the handshake happens here)."""
        reader = asyncio.StreamReader(limit=_READ_SIZE)
        protocol = asyncio.StreamReaderProtocol(reader)
        if context is None:
            transport, _ = await self.loop.connect_accepted_socket(lambda: protocol, self.sock)
        else:
            transport, _ = await self.loop.connect_accepted_socket(
                lambda: protocol,
                self.sock,
                ssl=context,
                ssl_handshake_timeout=max(handshake_timeout, 0.1),
            )
            self.tls = True
        self.reader = reader
        self.writer = asyncio.StreamWriter(transport, protocol, reader, self.loop)

    async def recv(self) -> bytes:
        if self.reader is None:
            return await self.loop.sock_recv(self.sock, _READ_SIZE)
        return await self.reader.read(_READ_SIZE)

    def write(self, data: bytes) -> None:
        """Queue bytes for a client with streams (only those get more than one byte)."""
        assert self.writer is not None
        self.writer.write(data)

    async def send(self, data: bytes) -> None:
        if self.writer is None:
            await self.loop.sock_sendall(self.sock, data)
        else:
            self.writer.write(data)
            await self.writer.drain()

    async def fail(self, response: ErrorResponse | None) -> None:
        """Send ``response`` if any, then close gracefully: the client reads the error
        before the connection goes (what it still sends is drained for a moment)."""
        try:
            async with asyncio.timeout(_LINGER_TIMEOUT):
                if response is not None:
                    await self.send(response.encode())
                if self.writer is None:
                    self.sock.shutdown(socket.SHUT_WR)
                elif self.writer.can_write_eof():
                    self.writer.write_eof()
                drained = 0
                while drained < _LINGER_BYTES and (data := await self.recv()):
                    drained += len(data)
        except (OSError, TimeoutError):
            pass
        finally:
            await self.close()

    async def close(self) -> None:
        if self.writer is not None:
            await _close_writer(self.writer)
        else:
            self.sock.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        else:
            self.sock.close()


def _peer(sock: socket.socket) -> str:
    try:
        address = sock.getpeername()
    except OSError:
        return "?"
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address) or "local"


async def _connect_socket(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket (each resolved address in turn)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"{host} did not resolve")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise error


async def _upstream_tls(
    sock: socket.socket, host: str, context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """SSLRequest on ``sock``, then TLS; a server that declines is refused (fail closed).
    Exactly one byte is read before the handshake, so nothing injected in cleartext after
    the answer can pass for TLS data (CVE-2021-23222)."""
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, SSLRequest().encode())
        answer = await loop.sock_recv(sock, 1)
    except BaseException:
        sock.close()
        raise
    if answer != b"S":
        sock.close()
        what = "closed the connection" if not answer else "does not accept TLS"
        raise _fatal(
            "08006",
            f"the upstream database {what} (TLS was asked for)",
            hint="check [pg] upstream_tls and the upstream's ssl setting",
        )
    try:
        return await asyncio.open_connection(
            sock=sock, ssl=context, server_hostname=host, limit=_READ_SIZE
        )
    except BaseException:
        sock.close()
        raise


class _Handshake:
    """One connection's start-up (see the module doc); `run` returns the session."""

    def __init__(self, sock: socket.socket, settings: PgSettings, cancels: CancelRegistry):
        self.settings = settings
        self.cancels = cancels
        self.client = _Client(sock)
        self.peer = _peer(sock)
        self.cdecoder = FrontendDecoder()
        self.ctail = _Tail()
        self.sdecoder = BackendDecoder()
        self.stail = _Tail()
        self.server_reader: asyncio.StreamReader | None = None
        self.server_writer: asyncio.StreamWriter | None = None
        self.upstream_tls = False
        self.version = PROTOCOL_3_0
        self.user = ""
        self.database = ""
        self.issued: BackendKeyData | None = None
        self.mechanisms: tuple[str, ...] = ()

    # ---- client side

    async def next_client_message(self) -> FrontendMessage | None:
        """The next message from the client, or None if it closed."""
        decoder = self.cdecoder
        while (message := decoder.next_message()) is None:
            data = await self.client.recv()
            if not data:
                if decoder.buffered:
                    log.info("pg.client_gone", peer=self.peer, during="startup")
                return None
            decoder.feed(data)
            self.ctail.add(data)
        self.ctail.trim(decoder.buffered)
        return message

    async def negotiate(self) -> StartupMessage | CancelRequest | None:
        """Encryption requests, up to the StartupMessage or CancelRequest."""
        settings = self.settings
        client = self.client
        context = settings.client_tls
        if context is not None:
            first = await client.first_byte()
            if not first:
                return None
            if first[0] == _TLS_HANDSHAKE:
                await client.attach(context, settings.startup_timeout)
                assert client.writer is not None
                ssl_object = client.writer.get_extra_info("ssl_object")
                if ssl_object is None or ssl_object.selected_alpn_protocol() != ALPN_PROTOCOL:
                    raise _fatal(
                        "08P01",
                        'direct TLS connections need the ALPN protocol "postgresql"',
                    )
        ssl_asked = gss_asked = False
        while True:
            message = await self.next_client_message()
            match message:
                case None:
                    return None
                case SSLRequest() if not ssl_asked and not client.tls:
                    ssl_asked = True
                    if context is None:
                        await client.send(b"N")
                        self.cdecoder.startup_continues()
                    else:
                        await client.send(b"S")
                        self.cdecoder.encryption_started()
                        await client.attach(context, settings.startup_timeout)
                case GSSENCRequest() if not gss_asked and not client.tls:
                    gss_asked = True
                    await client.send(b"N")
                    self.cdecoder.startup_continues()
                case StartupMessage() | CancelRequest():
                    if client.writer is None:
                        await client.attach(None, settings.startup_timeout)
                    return message
                case _:
                    raise ProtocolError(
                        f"unexpected {type(message).__name__} during connection start-up"
                    )

    async def flush_client(self) -> None:
        writer = self.client.writer
        assert writer is not None
        await writer.drain()

    async def relay_error(self, message: ErrorResponse, event: str) -> NoReturn:
        """Pass the server's refusal (wrong password, no such database...) on, and end."""
        self.client.write(message.wire())
        log.info(
            event,
            peer=self.peer,
            user=self.user,
            database=self.database,
            sqlstate=message.sqlstate,
        )
        await self.flush_client()
        raise _Ended

    # ---- server side

    async def next_server_message(self) -> BackendMessage:
        decoder = self.sdecoder
        reader = self.server_reader
        assert reader is not None
        try:
            while (message := decoder.next_message()) is None:
                data = await reader.read(_READ_SIZE)
                if not data:
                    raise _fatal(
                        "08006", "the upstream database closed the connection during start-up"
                    )
                decoder.feed(data)
                self.stail.add(data)
        except ProtocolError as exc:
            log.warning("pg.upstream_protocol_error", peer=self.peer, error=str(exc))
            raise _fatal(
                "08P01", "the upstream database sent an invalid message during start-up"
            ) from None
        self.stail.trim(decoder.buffered)
        return message

    def to_server(self, data: bytes) -> None:
        assert self.server_writer is not None
        self.server_writer.write(data)

    async def connect_upstream(self) -> None:
        settings = self.settings
        reason = ""
        try:
            async with asyncio.timeout(settings.connect_timeout):
                context = settings.upstream_context
                if context is None:
                    reader, writer = await asyncio.open_connection(
                        settings.upstream_host, settings.upstream_port, limit=_READ_SIZE
                    )
                else:
                    sock = await _connect_socket(settings.upstream_host, settings.upstream_port)
                    reader, writer = await _upstream_tls(sock, settings.upstream_host, context)
                    self.upstream_tls = True
        except TimeoutError:
            reason = "timed out"
        except ssl.SSLError as exc:
            reason = f"TLS failed: {exc.reason or type(exc).__name__}"
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        except _Refused:
            log.warning("pg.upstream_refused_tls", peer=self.peer, upstream=settings.upstream)
            raise
        if reason:
            log.warning(
                "pg.upstream_unreachable",
                peer=self.peer,
                upstream=settings.upstream,
                reason=reason,
                user=self.user,
                database=self.database,
            )
            raise _fatal(
                "08006",
                f"tokenproxy could not reach the upstream database at {settings.upstream}: "
                f"{reason} (check [pg] upstream)",
            )
        self.server_reader, self.server_writer = reader, writer

    # ---- the exchange

    async def run(self) -> Established | None:
        message = await self.negotiate()
        if message is None:
            return None
        if isinstance(message, CancelRequest):
            await self.cancel(message)
            return None
        return await self.start(message)

    async def cancel(self, request: CancelRequest) -> None:
        target = await self.cancels.find(request.pid, request.secret_key, self._cancel_tls)
        if target is None:
            log.warning("pg.cancel_unknown_key", peer=self.peer)
            return
        done = await forward_cancel(target, self.settings.connect_timeout)
        log.info("pg.cancel_forwarded", peer=self.peer, pid=request.pid, delivered=done)

    def _cancel_tls(self) -> ssl.SSLContext:
        """The TLS context for the upstream of a session another proxy holds."""
        settings = self.settings
        return settings.upstream_context or upstream_tls_context(settings.upstream_ca_file)

    async def start(self, startup: StartupMessage) -> Established:
        params = dict(startup.parameters)
        self.user = params.get("user", "")
        self.database = params.get("database") or self.user
        self.version = startup.version
        if not self.user:
            raise _fatal("28000", "no PostgreSQL user name specified in startup packet")
        if params.get("replication", "").lower() not in _FALSE_WORDS:
            raise _fatal("0A000", "tokenproxy does not relay replication connections")
        await self.connect_upstream()
        self.to_server(startup.wire())
        await self.authenticate()
        return await self.finish(startup, params)

    async def authenticate(self) -> None:
        client = self.client
        decoder = self.cdecoder
        while True:
            message = await self.next_server_message()
            match message:
                case NegotiateProtocolVersion():
                    self.version = message.version
                    client.write(message.wire())
                case NoticeResponse():
                    client.write(message.wire())
                case AuthenticationOk():
                    decoder.expect_auth_response(None)
                    client.write(message.wire())
                    return
                case AuthenticationSASL():
                    offered = tuple(m for m in message.mechanisms if m != SCRAM_PLUS)
                    if not offered:
                        raise _fatal(
                            "28000",
                            "the upstream database offers SCRAM only with channel binding, "
                            "which cannot pass through tokenproxy",
                        )
                    self.mechanisms = offered
                    changed = offered != message.mechanisms
                    client.write(
                        AuthenticationSASL(offered).encode() if changed else message.wire()
                    )
                    await self.relay_auth_response(AuthResponseKind.SASL_INITIAL)
                case AuthenticationSASLContinue():
                    client.write(message.wire())
                    await self.relay_auth_response(AuthResponseKind.SASL)
                case AuthenticationSASLFinal():
                    decoder.expect_auth_response(None)
                    client.write(message.wire())
                case AuthenticationCleartextPassword() | AuthenticationMD5Password():
                    client.write(message.wire())
                    await self.relay_auth_response(AuthResponseKind.PASSWORD)
                case AuthenticationMessage():
                    raise _fatal(
                        "28000",
                        f"the upstream database asks for {type(message).__name__}, an "
                        "authentication method tokenproxy does not relay",
                    )
                case ErrorResponse():
                    await self.relay_error(message, "pg.auth_failed")
                case _:
                    raise _fatal(
                        "08P01",
                        f"the upstream database sent {type(message).__name__} during "
                        "authentication",
                    )

    async def relay_auth_response(self, kind: AuthResponseKind) -> None:
        """Flush the request to the client, read its answer, check it, forward it."""
        await self.flush_client()
        self.cdecoder.expect_auth_response(kind)
        message = await self.next_client_message()
        match message:
            case None | Terminate():
                log.info("pg.client_gone", peer=self.peer, during="authentication")
                raise _Ended
            case SASLInitialResponse():
                self.check_sasl_initial(message)
            case PasswordMessage() | SASLResponse():
                pass
            case _:
                raise ProtocolError(
                    f"expected an authentication response, got {type(message).__name__}"
                )
        self.to_server(message.wire())
        assert self.server_writer is not None
        await self.server_writer.drain()

    def check_sasl_initial(self, message: SASLInitialResponse) -> None:
        """Refuse channel binding, which the proxy cannot honour, with a clear message."""
        gs2 = message.data or b""
        if message.mechanism == SCRAM_PLUS or gs2.startswith(b"p"):
            raise _fatal(
                "28000",
                "SCRAM channel binding cannot pass through tokenproxy, which terminates "
                "the client's TLS",
                hint="connect with channel_binding=disable (or prefer)",
            )
        if gs2.startswith(b"y") and self.upstream_tls:
            raise _fatal(
                "28000",
                "the client supports SCRAM channel binding, which cannot pass through "
                "tokenproxy, and the upstream database (over TLS) would take its absence "
                "for a downgrade attack",
                hint="connect with channel_binding=disable",
            )

    async def finish(self, startup: StartupMessage, params: dict[str, str]) -> Established:
        client = self.client
        parameters: dict[str, str] = {}
        backend_pid: int | None = None
        while True:
            message = await self.next_server_message()
            match message:
                case ParameterStatus():
                    parameters[message.name] = message.value
                    client.write(message.wire())
                case NoticeResponse() | NegotiateProtocolVersion():
                    client.write(message.wire())
                case BackendKeyData() if self.issued is None:
                    backend_pid = message.pid
                    target = CancelTarget(
                        self.settings.upstream_host,
                        self.settings.upstream_port,
                        message.pid,
                        message.secret_key,
                        self.settings.upstream_context if self.upstream_tls else None,
                    )
                    self.issued = await self.cancels.issue(target)
                    client.write(self.issued.encode())
                case ReadyForQuery():
                    ready = message
                    break
                case ErrorResponse():
                    await self.relay_error(message, "pg.startup_refused")
                case _:
                    raise _fatal(
                        "08P01",
                        f"the upstream database sent {type(message).__name__} during start-up",
                    )
        await self.flush_client()
        assert client.reader is not None and client.writer is not None
        assert self.server_reader is not None and self.server_writer is not None
        issued, cancels = self.issued, self.cancels
        established = Established(
            client_reader=client.reader,
            client_writer=client.writer,
            server_reader=self.server_reader,
            server_writer=self.server_writer,
            client_decoder=self.cdecoder,
            server_decoder=self.sdecoder,
            client_leftover=bytes(self.ctail.data),
            server_leftover=bytes(self.stail.data),
            startup=startup,
            params=params,
            user=self.user,
            database=self.database,
            parameter_status=parameters,
            ready=ready,
            protocol_version=self.version,
            cancel_key=issued,
            backend_pid=backend_pid,
            peer=self.peer,
            client_tls=client.tls,
            upstream_tls=self.upstream_tls,
            _release=None if issued is None else (lambda: cancels.release(issued)),
        )
        self.issued = None  # the session owns it now
        log.info(
            "pg.session_started",
            peer=self.peer,
            user=self.user,
            database=self.database,
            client_tls=client.tls,
            upstream_tls=self.upstream_tls,
            protocol=f"{self.version >> 16}.{self.version & 0xFFFF}",
        )
        return established

    # ---- endings

    def release(self) -> None:
        if self.issued is not None:
            self.cancels.release(self.issued)
            self.issued = None

    async def close_server(self) -> None:
        if self.server_writer is not None:
            await _close_writer(self.server_writer)

    async def fail(self, response: ErrorResponse | None) -> None:
        self.release()
        await asyncio.gather(self.close_server(), self.client.fail(response))

    def abort(self) -> None:
        self.release()
        if self.server_writer is not None:
            self.server_writer.transport.abort()
        self.client.abort()


async def establish(
    sock: socket.socket, settings: PgSettings, cancels: CancelRegistry
) -> Established | None:
    """Run the start-up of an accepted client connection (see the module doc).

    Takes ownership of ``sock``: on None everything is closed, else the `Established`
    owns both connections (close it with `Established.close`).
    """
    handshake = _Handshake(sock, settings, cancels)
    response: ErrorResponse | None = None
    try:
        async with asyncio.timeout(settings.startup_timeout):
            established = await handshake.run()
        if established is None:
            await handshake.fail(None)
        return established
    except TimeoutError:
        log.info("pg.startup_timeout", peer=handshake.peer, user=handshake.user or None)
        response = error_response("08006", "timeout during connection start-up", "FATAL")
    except ProtocolError as exc:
        log.info("pg.client_protocol_error", peer=handshake.peer, error=str(exc))
        response = exc.to_error_response()
    except _Refused as exc:
        log.info(
            "pg.connection_refused",
            peer=handshake.peer,
            user=handshake.user or None,
            database=handshake.database or None,
            sqlstate=exc.response.sqlstate,
            reason=exc.response.message,
        )
        response = exc.response
    except _Ended:
        pass
    except (OSError, EOFError) as exc:  # ssl.SSLError, ConnectionError, IncompleteReadError
        log.info("pg.client_connection_error", peer=handshake.peer, error=type(exc).__name__)
        handshake.abort()
        return None
    except asyncio.CancelledError:
        handshake.abort()
        raise
    except Exception as exc:  # a bug: no traceback (it could hold a payload), the type only
        log.error("pg.startup_failed", peer=handshake.peer, error=type(exc).__name__)
        response = error_response("XX000", "tokenproxy internal error during start-up", "FATAL")
    await handshake.fail(response)
    return None
