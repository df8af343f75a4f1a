"""The session's pump over real sockets: order kept through messages that wait, reading
paused behind a backlog and while the peer's transport is full, a clean end."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from proxy.pg.codec import BackendDecoder
from proxy.pg.link import WRITE_NOW, Link, Outbox
from proxy.pg.messages import CommandComplete
from proxy.pg.pump import BACKLOG, Ended, Handled, Pump

pytestmark = pytest.mark.timeout(30)


async def _streams(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(sock=sock)


@dataclass
class Rig:
    """source client -> [source link | pump | sink link] -> sink client"""

    feeder: asyncio.StreamWriter  # writes what the pump reads
    drain: asyncio.StreamReader  # reads what the pump writes
    source: Link
    sink: Link
    pump: Pump
    ended: list[BaseException] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    handled: list[str] = field(default_factory=list)

    async def read_tags(self, count: int) -> list[str]:
        data = b""
        while data.count(b";") < count:
            chunk = await asyncio.wait_for(self.drain.read(65536), 10)
            assert chunk, "the pump's side closed"
            data += chunk
        return data.decode().split(";")[:-1]


@contextlib.asynccontextmanager
async def rig() -> AsyncIterator[Rig]:
    a_out, a_in = socket.socketpair()  # feeder -> source link
    b_in, b_out = socket.socketpair()  # sink link -> drain
    _, feeder = await _streams(a_out)
    src_r, src_w = await _streams(a_in)
    snk_r, snk_w = await _streams(b_in)
    drain, drain_w = await _streams(b_out)
    source = Link(src_r, src_w, lambda: None)
    sink = Link(snk_r, snk_w, lambda: None)
    source.peer, sink.peer = sink, source
    box: list[Rig] = []

    def handle(msg: Any) -> Handled:
        tag = msg.tag
        r = box[0]
        r.handled.append(tag)
        if tag == "FAIL":
            raise RuntimeError("a handler failed")
        if tag == "END":
            raise Ended(b"END;")
        if tag.startswith("WAIT"):
            return later(r, tag)
        return f"{tag};".encode()

    async def later(r: Rig, tag: str) -> bytes:
        await r.release.wait()
        return f"{tag};".encode()

    decoder = BackendDecoder()
    pump = Pump(decoder, handle, source, sink, lambda exc: box[0].ended.append(exc))
    source.deliver(pump.feed)
    sink.deliver(lambda data: None)
    r = Rig(feeder, drain, source, sink, pump)
    box.append(r)
    source.take_over()
    sink.take_over()
    try:
        yield r
    finally:
        for w in (feeder, src_w, snk_w, drain_w):
            w.close()
        if pump.waiting is not None:
            pump.waiting.cancel()


def cc(tag: str) -> bytes:
    return CommandComplete(tag).encode()


async def test_messages_keep_their_order_through_one_that_waits() -> None:
    async with rig() as r:
        r.feeder.write(cc("A") + cc("WAIT1") + cc("B") + cc("C"))
        assert await r.read_tags(1) == ["A"]
        await asyncio.sleep(0.05)
        assert r.handled == ["A", "WAIT1"]  # B and C wait their turn
        r.feeder.write(cc("D"))
        await asyncio.sleep(0.05)
        assert r.handled == ["A", "WAIT1"]
        r.release.set()
        assert await r.read_tags(4) == ["WAIT1", "B", "C", "D"]


async def test_reading_pauses_behind_a_backlog_and_resumes() -> None:
    async with rig() as r:
        r.feeder.write(cc("WAIT"))
        await asyncio.sleep(0.05)
        filler = cc("x" * 1000) * (2 * BACKLOG // 1000)
        r.feeder.write(filler)
        for _ in range(100):
            if not r.source.transport.is_reading():
                break
            await asyncio.sleep(0.02)
        assert not r.source.transport.is_reading()
        assert r.pump.decoder.buffered <= BACKLOG + 4 * 65536  # (what one read adds)
        r.release.set()
        tags = await r.read_tags(1 + 2 * BACKLOG // 1000)
        assert tags[0] == "WAIT" and len(tags) == 1 + 2 * BACKLOG // 1000
        assert r.source.transport.is_reading()


async def test_a_full_sink_pauses_the_source() -> None:
    async with rig() as r:
        r.sink.transport.set_write_buffer_limits(high=4096)
        r.feeder.write(cc("y" * 2000) * 4000)  # ~8 MB the drain does not read yet
        for _ in range(100):
            if not r.source.transport.is_reading():
                break
            await asyncio.sleep(0.02)
        assert not r.source.transport.is_reading()
        tags = await r.read_tags(4000)  # reading the drain lets everything through
        assert len(tags) == 4000
        for _ in range(100):
            if r.source.transport.is_reading():
                break
            await asyncio.sleep(0.02)
        assert r.source.transport.is_reading()


async def test_a_failing_handler_ends_the_pump_after_what_came_before() -> None:
    async with rig() as r:
        r.feeder.write(cc("A") + cc("FAIL") + cc("B"))
        assert await r.read_tags(1) == ["A"]
        await asyncio.sleep(0.05)
        assert [type(e) for e in r.ended] == [RuntimeError]
        assert r.handled == ["A", "FAIL"]  # nothing after it
        r.feeder.write(cc("C"))
        await asyncio.sleep(0.05)
        assert r.handled == ["A", "FAIL"] and len(r.ended) == 1


async def test_a_failing_wait_ends_the_pump() -> None:
    async with rig() as r:
        r.feeder.write(cc("WAIT") + cc("B"))
        await asyncio.sleep(0.05)
        assert r.pump.waiting is not None
        r.pump.waiting.cancel()  # the session ending under it
        await asyncio.sleep(0.05)
        assert r.handled == ["WAIT"]


async def test_ended_sends_its_last_bytes() -> None:
    async with rig() as r:
        r.feeder.write(cc("A") + cc("END") + cc("B"))
        assert await r.read_tags(2) == ["A", "END"]
        assert [type(e) for e in r.ended] == [Ended]
        assert r.handled == ["A", "END"]


async def test_handlers_by_type_and_a_take_switched_on_mid_batch() -> None:
    """A message type with its own handler goes to it, the rest to ``handle``; a ``take``
    a handler switches on is looked at before the very next message of the same batch,
    and the decoder's messages are read again once it gives nothing."""
    async with rig() as r:
        pump = r.pump
        taken: list[bytes] = []

        def take() -> Handled | None:
            if taken:
                pump.take = None  # switched off: the rest are decoded
                return None
            taken.append(pump.decoder.take_run(ord("C")) or b"")
            return b"TAKEN;"

        def own(msg: CommandComplete) -> Handled:
            if msg.tag == "START":
                pump.take = take
            return f"own-{msg.tag};".encode()

        pump.handlers[CommandComplete] = own
        r.feeder.write(cc("A") + cc("START") + cc("B") + cc("C"))
        assert await r.read_tags(3) == ["own-A", "own-START", "TAKEN"]
        assert taken == [cc("B") + cc("C")]  # the run after START, taken whole
        assert r.handled == []  # ``handle`` saw none of them
        r.feeder.write(cc("D"))
        assert await r.read_tags(1) == ["own-D"]
        assert pump.take is None


async def test_whole_takes_the_start_of_a_read_with_nothing_before_it() -> None:
    """``whole`` sees a read only when nothing is buffered or waiting before it; what it
    takes is sent as it says, the rest of the read goes through the decoder, in order;
    a ``whole`` that fails ends the pump."""
    async with rig() as r:
        seen: list[bytes] = []

        def whole(data: bytes) -> tuple[bytes, int] | None:
            seen.append(data)
            if data.startswith(cc("BOOM")):
                raise RuntimeError("whole failed")
            if not data.startswith(cc("X")):
                return None
            return b"whole-X;", len(cc("X"))

        r.pump.whole = whole
        r.feeder.write(cc("X") + cc("A"))
        assert await r.read_tags(2) == ["whole-X", "A"]
        r.feeder.write(cc("WAIT"))
        await asyncio.sleep(0.05)
        r.feeder.write(cc("X"))  # behind a message that waits: through the decoder
        await asyncio.sleep(0.05)
        assert seen == [cc("X") + cc("A"), cc("WAIT")]
        r.release.set()
        assert await r.read_tags(2) == ["WAIT", "X"]
        r.feeder.write(cc("B")[:3])  # half a message buffered: the next read is not whole's
        await asyncio.sleep(0.05)
        r.feeder.write(cc("B")[3:] + cc("X"))
        assert await r.read_tags(2) == ["B", "X"]
        assert len(seen) == 3
        r.feeder.write(cc("BOOM") + cc("C"))
        await asyncio.sleep(0.05)
        assert [type(e) for e in r.ended] == [RuntimeError]
        assert r.handled == ["A", "WAIT", "X", "B", "X"]  # not C: nothing after the failure


async def test_a_link_takes_over_only_once_told_where_its_bytes_go() -> None:
    a, b = socket.socketpair()
    reader, writer = await _streams(a)
    link = Link(reader, writer, lambda: None)
    try:
        with pytest.raises(RuntimeError):
            link.take_over()  # its bytes would be dropped
        link.deliver(lambda data: None)
        assert link.take_over() == b""
    finally:
        writer.close()
        b.close()


class Recorded:
    """A transport whose writes are listed (the rest of it as it was)."""

    def __init__(self, real: Any, name: str, writes: list[tuple[str, bytes]]) -> None:
        self.real, self.name, self.writes = real, name, writes

    def write(self, data: bytes) -> None:
        self.writes.append((self.name, data))
        self.real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_what_links_send_is_written_together_at_the_end_of_the_iteration() -> None:
    """Bytes sent through one outbox are written once the loop's iteration ends, in the
    order sent, each to its own link, a ``last`` link's after the others', or at once past
    `WRITE_NOW` bytes; a `Link.write` writes them first; bytes for a link closing are
    dropped without harm to the others."""
    outbox = Outbox()
    pairs = [socket.socketpair() for _ in range(2)]
    writers: list[asyncio.StreamWriter] = []
    links: list[Link] = []
    writes: list[tuple[str, bytes]] = []
    for (ours, _), name in zip(pairs, "ab", strict=True):
        reader, writer = await _streams(ours)
        writers.append(writer)
        link = Link(reader, writer, lambda: None, outbox, last=name == "b")
        link.use(outbox, Recorded(link.transport, name, writes))  # type: ignore[arg-type]
        links.append(link)
    peers = [theirs for _, theirs in pairs]
    for peer in peers:
        peer.setblocking(False)

    def received(peer: socket.socket) -> bytes:
        try:
            return peer.recv(65536)
        except BlockingIOError:
            return b""

    a, b = links
    try:
        b.send(b"x")
        a.send(b"1")
        a.send(b"2")
        assert received(peers[0]) == received(peers[1]) == b""  # not yet: same iteration
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        assert received(peers[0]) == b"12" and received(peers[1]) == b"x"
        assert writes == [("a", b"1"), ("a", b"2"), ("b", b"x")]  # the last link last

        a.send(b"3")
        a.write(b"4")  # now, after what was sent before it
        await asyncio.sleep(0.01)
        assert received(peers[0]) == b"34"

        del writes[:]
        b.send(b"y")
        a.send(b"z" * (WRITE_NOW - 1))  # (a big result's rows: written at once)
        assert writes == [("a", b"z" * (WRITE_NOW - 1)), ("b", b"y")]
        got = 0
        while got < WRITE_NOW - 1:
            await asyncio.sleep(0.01)
            got += len(received(peers[0]))
        assert received(peers[1]) == b"y"

        a.send(b"5")
        b.send(b"y")
        a.transport.close()  # (its session is ending)
        await asyncio.sleep(0.01)
        assert received(peers[1]) == b"y"
        assert peers[0].recv(65536) == b""  # closed, and the 5 dropped
    finally:
        for writer in writers:
            writer.close()
        for peer in peers:
            peer.close()


def test_an_outbox_serves_each_loop_it_is_used_in() -> None:
    """An outbox (a listener's) outlives the loop it was first used in: bytes sent in the
    next loop are written there."""
    outbox = Outbox()

    async def once(data: bytes) -> bytes:
        ours, theirs = socket.socketpair()
        reader, writer = await _streams(ours)
        peer, peer_writer = await _streams(theirs)
        try:
            Link(reader, writer, lambda: None, outbox).send(data)
            return await asyncio.wait_for(peer.read(100), 5)
        finally:
            writer.close()
            peer_writer.close()

    assert asyncio.run(once(b"first")) == b"first"
    assert asyncio.run(once(b"second")) == b"second"
