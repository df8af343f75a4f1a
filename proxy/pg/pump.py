"""One direction of a session: messages handled in order, synchronously until one waits.

A handler returns the bytes to send on (``bytes`` or a list of them) when it can answer
without I/O: on a warm cache that is every message of a query, handled in the callback
that received it, with no task switch. Otherwise it returns a coroutine (a catalog to
reload, a token not cached, a reveal to audit), which runs in a task; the messages after
it wait their turn (reading pauses if they pile up): their order never changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

from proxy.pg.link import Link

__all__ = ["Ended", "Pump", "Taken"]

BACKLOG = 1 << 20  # bytes buffered behind a waiting message before reading pauses
_BACKLOG = "backlog"

Handled = bytes | list[bytes] | Coroutine[Any, Any, bytes | list[bytes]]
# What a `Pump`'s ``whole`` takes from the start of a read: the bytes to send on, and where
# in the read what it took ends.
Taken = tuple[bytes, int]


class Decoder(Protocol):
    def feed(self, data: bytes) -> None: ...
    def next_message(self) -> Any: ...
    @property
    def buffered(self) -> int: ...


class Ended(Exception):
    """The session ends after ``last`` is sent on (a Terminate, say)."""

    def __init__(self, last: bytes = b"") -> None:
        super().__init__()
        self.last = last


class Pump:
    """Messages from ``source`` decoded, handled, and their bytes written to ``sink``.

    ``handlers``: the handler of each message type that has its own; ``handle`` takes the
    others. ``take``: an optional look before each message (the server side takes a whole
    run of DataRows there), which the owner may set and clear at any time (it is read
    before each message); None to decode one message. ``whole``: an optional look at a
    read that arrives with nothing buffered or waiting before it, which may take what it
    begins with straight from it (a whole batch, a whole answer: no buffering, no loop);
    the rest goes through the decoder. ``end`` is called once, with the exception that
    ended the pump (`Ended` for a normal end).
    """

    def __init__(
        self,
        decoder: Decoder,
        handle: Callable[[Any], Handled],
        source: Link,
        sink: Link,
        end: Callable[[BaseException], None],
        take: Callable[[], Handled | None] | None = None,
        handlers: Mapping[type, Callable[[Any], Handled]] | None = None,
        whole: Callable[[bytes], Taken | None] | None = None,
    ) -> None:
        self.decoder = decoder
        self.handle = handle
        self.handlers = dict(handlers or {})
        self.source = source
        self.sink = sink
        self.end = end
        self.take = take
        self.whole = whole
        self.waiting: asyncio.Task[None] | None = None
        self.stopped = False
        self._clear = True  # nothing buffered in the decoder (as of the last `run`)

    def feed(self, data: bytes) -> None:
        if self.stopped:
            return
        whole = self.whole
        if whole is not None and self.waiting is None and self._clear:
            try:
                taken = whole(data)
            except BaseException as exc:
                self._stop(exc)
                return
            if taken is not None:
                self.sink.send(taken[0])
                end = taken[1]
                if end == len(data):
                    return
                data = data[end:]
        self._clear = False
        try:
            self.decoder.feed(data)
        except Exception as exc:  # a decoder that failed before: the session is ending
            self._stop(exc)
            return
        if self.waiting is None:
            self.run()
        elif self.decoder.buffered > BACKLOG:
            self.source.pause(_BACKLOG)

    def run(self) -> None:
        """Handle every complete message buffered, until one waits or none is left."""
        if self.stopped:  # (nothing in the loop stops it but an exception)
            return
        out: list[bytes] = []
        next_message, handle, handler_of = (
            self.decoder.next_message, self.handle, self.handlers.get
        )
        try:
            while True:
                take = self.take
                result = take() if take is not None else None
                if result is None:
                    msg = next_message()
                    if msg is None:
                        break
                    result = handler_of(type(msg), handle)(msg)
                kind = type(result)
                if kind is bytes:
                    out.append(result)  # type: ignore[arg-type]
                    continue
                if kind is list:
                    out.extend(result)  # type: ignore[arg-type]
                    continue
                self.waiting = asyncio.ensure_future(self._later(result))  # type: ignore[arg-type]
                break
        except BaseException as exc:
            self._write(out)
            self._stop(exc)
            return
        self._clear = not self.decoder.buffered
        self._write(out)

    async def _later(self, coro: Coroutine[Any, Any, bytes | list[bytes]]) -> None:
        """Run a handler that may wait, send its bytes, then go on with the rest."""
        try:
            value = await coro
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._stop(exc)
            return
        out: list[bytes] = []
        _add(out, value)
        self._write(out)
        self.waiting = None
        self.source.resume(_BACKLOG)
        self.run()

    def _write(self, out: list[bytes]) -> None:
        if out and not self.stopped:
            self.sink.send(b"".join(out) if len(out) > 1 else out[0])

    def _stop(self, exc: BaseException) -> None:
        if self.stopped:
            return
        if isinstance(exc, Ended) and exc.last:
            self.sink.write(exc.last)
        self.stopped = True
        self.end(exc)


def _add(out: list[bytes], value: bytes | list[bytes]) -> None:
    if isinstance(value, bytes):
        out.append(value)
    else:
        out.extend(value)
