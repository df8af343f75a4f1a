"""A session's connection, taken over from start-up's streams as an asyncio protocol.

Start-up runs on streams (simple, once per connection); a session runs on protocol
callbacks: the bytes that arrive are handed to the session and handled there, with no
stream buffer and no task switch in between (what most of a point select's time went
to); ``data_received`` is the session's own callable itself (`Link.deliver`), not a
method that calls it. Flow control both ways: when a link's transport holds too
much unsent, reading from its peer pauses until it drains. A link may also be paused for
a reason of the session's own (a backlog while a message waits on I/O); reading resumes
when no reason is left.

What a session sends on is written at the end of the loop's iteration (`Link.send`, an
`Outbox` shared by the listener's sessions), once every read the iteration brought is
handled. Written at once, each query sent to the database wakes its backend, which tends
to run on the proxy's core and take it over before the next read is handled; the
handling of each read then starts with cold caches. Sent together after them, the reads
are handled back to back (as Redis does its replies, before it waits for events). The
database's link writes last: the answers to clients leave before a woken backend can take
the core.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import cast

__all__ = ["Link", "Outbox"]

FLOW = "flow"  # the peer's transport is full
# Bytes sent in one iteration past which they are written at once: a big result's rows
# must not wait for the rest of the iteration's reads (uvloop reads a busy socket up to
# 32 times in one go), or the client would sit idle while the proxy works.
WRITE_NOW = 16 * 1024


class Outbox:
    """Bytes to write, written once the loop has handled this iteration's reads (see the
    module docstring), or at once past `WRITE_NOW` bytes. One loop's: a listener's
    sessions share one."""

    def __init__(self) -> None:
        self._first: list[tuple[asyncio.Transport, bytes]] = []
        self._last: list[tuple[asyncio.Transport, bytes]] = []
        self._due = False  # a flush is scheduled for the end of the iteration
        self._size = 0  # bytes sent and not written
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it was first used in

    def send(self, transport: asyncio.Transport, last: bool, data: bytes) -> None:
        """Write ``data`` to ``transport`` at the end of this iteration (``last``: after
        the bytes sent without it; a transport always sent the same way keeps its bytes'
        order). (``data`` last: what a link binds the rest of, `Link.use`.)"""
        if not self._due:
            self._due = True
            loop = self._loop
            if loop is None or not loop.is_running():
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._flush_due)
        (self._last if last else self._first).append((transport, data))
        self._size += len(data)
        if self._size >= WRITE_NOW:
            self.flush()

    def flush(self) -> None:
        """Write everything sent so far now (to a transport closing, nothing: its session
        is ending)."""
        first, last = self._first, self._last
        self._first, self._last, self._size = [], [], 0
        for pending in (first, last):
            for transport, data in pending:
                if not transport.is_closing():
                    transport.write(data)

    def _flush_due(self) -> None:
        """The flush scheduled for the end of the iteration (one at a time, however
        often `flush` ran before it)."""
        self._due = False
        self.flush()


class Link(asyncio.Protocol):
    """One connection of a session (see the module docstring)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_lost: Callable[[], None],
        outbox: Outbox | None = None,
        last: bool = False,
    ) -> None:
        self.transport = cast(asyncio.Transport, writer.transport)
        self.last = last  # its bytes written after the other links' (`Outbox.send`)
        self.use(outbox if outbox is not None else Outbox())
        self._reader = reader
        self._streams = self.transport.get_protocol()  # start-up's: told when the link ends
        self._on_lost = on_lost
        self.peer: Link | None = None
        self._paused: set[str] = set()

    def take_over(self) -> bytes:
        """Become the transport's protocol; the bytes start-up's stream had read and not
        handed out (rare: the peer spoke before it was answered). `deliver` comes first."""
        if "data_received" not in vars(self):
            raise RuntimeError("a link takes over only once told where its bytes go")
        buffered = getattr(self._reader, "_buffer", None)  # StreamReader keeps no public view
        left = bytes(buffered) if buffered else b""
        if buffered:
            buffered.clear()
        self.transport.set_protocol(self)
        self.transport.resume_reading()  # the stream may have paused it
        if self._reader.at_eof():
            self._on_lost()
        return left

    def use(self, outbox: Outbox, transport: asyncio.Transport | None = None) -> None:
        """Send through ``outbox`` (to ``transport`` from now on, when given)."""
        if transport is not None:
            self.transport = transport
        self.outbox = outbox
        # Write ``data`` at the end of the loop's iteration (`Outbox.send`, with no call
        # in between; bound positionally: a partial's keywords are copied at each call).
        self.send: Callable[[bytes], None] = partial(outbox.send, self.transport, self.last)

    def write(self, data: bytes) -> None:
        """Write ``data`` now (after every byte sent before it)."""
        self.outbox.flush()
        self.transport.write(data)

    def pause(self, reason: str) -> None:
        """Stop reading for ``reason`` (until `resume` with the same reason)."""
        if not self._paused:
            self.transport.pause_reading()
        self._paused.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused:
                self.transport.resume_reading()

    def deliver(self, on_data: Callable[[bytes], None]) -> None:
        """Hand the bytes that arrive to ``on_data`` (itself: no call in between)."""
        self.data_received = on_data  # type: ignore[method-assign, assignment]

    # ---- asyncio.Protocol (data_received: the callable given)

    def eof_received(self) -> bool:
        self._on_lost()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._streams.connection_lost(exc)  # start-up's wait_closed() returns
        self._on_lost()

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause(FLOW)

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume(FLOW)
