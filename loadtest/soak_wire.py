"""Sockets of the soak: a recording TCP tap, raw PostgreSQL messages, malformed requests.

A :class:`Tap` sits between one client and tokenproxy and hands every byte tokenproxy sends
to the :class:`~loadtest.soak_seed.Scanner`, with the customers the client's current request
may see (``allowed``, set by the client before each request; its requests are sequential, so
every byte belongs to the request sent last).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable

from loadtest.soak_seed import Hit, Scanner

IO_TIMEOUT = 5.0  # seconds for one read of a fault client
FLUSH_AT = 256 * 1024  # bytes buffered by a tap before it scans
CARRY = 256  # bytes kept across a scan so that a value split between chunks is found


class Tap:
    """A TCP relay to ``target`` on a free port of 127.0.0.1 that scans what comes back."""

    def __init__(self, name: str, target: tuple[str, int], scanner: Scanner,
                 report: Callable[[list[Hit]], None]) -> None:
        self.name, self.target, self.scanner, self.report = name, target, scanner, report
        self.allowed: frozenset[int] = frozenset()
        self.bytes = 0
        self._buf = bytearray()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> Tap:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def allow(self, customers: frozenset[int]) -> None:
        """The customers the next request may see: scans what came before first."""
        self.flush()
        self.allowed = customers

    def flush(self, keep: int = 0) -> None:
        if len(self._buf) > keep:
            self.report(self.scanner.scan(bytes(self._buf), self.allowed, self.name))
            del self._buf[:len(self._buf) - keep]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self.flush()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*self.target), 10)
        except (OSError, TimeoutError):
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(self._pump(reader, up_w, scan=False),
                                 self._pump(up_r, writer, scan=True))
        finally:
            for w in (writer, up_w):
                with contextlib.suppress(Exception):
                    w.close()
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *,
                    scan: bool) -> None:
        try:
            while chunk := await src.read(65536):
                if scan:
                    self.bytes += len(chunk)
                    self._buf += chunk
                    if len(self._buf) > FLUSH_AT:
                        self.flush(keep=CARRY)
                dst.write(chunk)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()  # the other side's half goes too: as a client that hung up


# ------------------------------------------------------------------- raw PostgreSQL


def startup(user: str, database: str, version: int = 196608) -> bytes:
    body = struct.pack("!i", version) + b"".join(
        k.encode() + b"\0" + v.encode() + b"\0"
        for k, v in (("user", user), ("database", database))) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def query(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


async def read_some(reader: asyncio.StreamReader, limit: int, seconds: float = IO_TIMEOUT
                    ) -> bytes:
    """Up to ``limit`` bytes, until EOF or ``seconds`` have passed."""
    got = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    with contextlib.suppress(OSError, TimeoutError, ConnectionError):
        while len(got) < limit:
            left = deadline - loop.time()
            if left <= 0:
                break
            chunk = await asyncio.wait_for(reader.read(limit - len(got)), left)
            if not chunk:
                break
            got += chunk
    return bytes(got)


async def pg_ready(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, user: str,
                   database: str) -> bytes:
    """Start a session (trust authentication): the bytes until ReadyForQuery, or raises."""
    writer.write(startup(user, database))
    await writer.drain()
    got = bytearray()
    for _ in range(200):  # messages of the start-up, bounded
        head = await asyncio.wait_for(reader.readexactly(5), IO_TIMEOUT)
        (length,) = struct.unpack("!i", head[1:])
        body = await asyncio.wait_for(reader.readexactly(length - 4), IO_TIMEOUT)
        got += head + body
        if head[:1] == b"E":
            raise ConnectionError("the start-up was refused")
        if head[:1] == b"Z":
            return bytes(got)
    raise ConnectionError("no ReadyForQuery")


def abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (SO_LINGER 0): a client that died, not one that said goodbye."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


# ------------------------------------------------------------------- malformed input

HTTP_AGENT = b"X-Authenticated-User: agent-fuzz\r\n"
MALFORMED_HTTP: tuple[tuple[str, bytes], ...] = (
    ("truncated request line", b"GET /customers/1 HTT"),
    ("headers never end", b"GET /customers/1 HTTP/1.1\r\nHost: x\r\n" + HTTP_AGENT),
    ("body shorter than Content-Length",
     b"PUT /customers/2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
     + HTTP_AGENT + b"Content-Length: 1000\r\n\r\n{\"id\": 2, \"full"),
    ("binary garbage", b"\x00\xff\xfe\x16\x03\x01garbage\r\n\r\n"),
    ("negative Content-Length",
     b"PUT /customers/2 HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"),
    ("a 100 kB header", b"GET /customers/3 HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 100_000
     + b"\r\n\r\n"),
    ("bad chunk size", b"PUT /customers/4 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
     b"\r\n" + HTTP_AGENT + b"\r\nzz\r\n{}\r\n0\r\n\r\n"),
    ("malformed JSON body",
     b"PUT /customers/5 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
     + HTTP_AGENT + b"Content-Length: 18\r\n\r\n{\"full_name\": \"Xy"),
    ("Content-Length and chunked",
     b"PUT /customers/6 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /customers/6 HTTP/1.1\r\n\r\n"),
    ("bad percent escape", b"GET /customers/%ZZ HTTP/1.1\r\nHost: x\r\n" + HTTP_AGENT
     + b"\r\n"),
    ("a lookup, then half a request",
     b"GET /customers/7 HTTP/1.1\r\nHost: x\r\n" + HTTP_AGENT + b"\r\nGET /custo"),
)

# (what, bytes before a session, bytes after a session is ready or None for none)
MALFORMED_PG: tuple[tuple[str, bytes, bytes | None], ...] = (
    ("truncated startup", startup("soak_pg1", "customers")[:6], None),
    ("startup length 3", struct.pack("!i", 3) + b"\0\3\0\0", None),
    ("startup length 2^31-1", struct.pack("!ii", 0x7FFFFFFF, 196608) + b"user\0", None),
    ("startup of protocol 1.0", startup("soak_pg1", "customers", version=0x00010000), None),
    ("SSLRequest, then garbage", struct.pack("!ii", 8, 80877103) + b"\x16\x03\x01junk", None),
    ("random bytes", bytes(range(256)) * 4, None),
    ("unknown message type", b"", message(b"!", b"what")),
    ("Query of length 2", b"", b"Q" + struct.pack("!i", 2)),
    ("Query of length 1e9", b"", b"Q" + struct.pack("!i", 1_000_000_000) + b"SELECT"),
    ("truncated Query", b"", b"Q" + struct.pack("!i", 40) + b"SELECT id"),
    ("Parse without its terminator", b"", message(b"P", b"s1\0SELECT 1")),
    ("Bind of an unknown statement", b"", message(b"B", b"\0nope\0\0\0\0\0\0\0")
     + message(b"S", b"")),
)
