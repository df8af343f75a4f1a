"""The Python floor of a PostgreSQL proxy: a relay on uvloop that decodes every message.

``python -m loadtest _serve pg-relay PORT UPSTREAM_PORT`` listens on 127.0.0.1:PORT and
relays each connection to the database on 127.0.0.1:UPSTREAM_PORT, decoding what passes
both ways into message objects with tokenproxy's own codec (`FrontendDecoder`,
`BackendDecoder`) and forwarding each message's wire bytes: the "bare Python relay on
uvloop that parses every message" the PostgreSQL front end's issue measures against,
run beside tokenproxy as a reference (no policy, no rewriting, no state). An SSLRequest
or GSSENCRequest is answered 'N', as tokenproxy without TLS answers it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.pg.codec import BackendDecoder, FrontendDecoder
from proxy.pg.messages import GSSENCRequest, SSLRequest

__all__ = ["serve_pg_relay"]


def _relay(decoder: Any, sink: asyncio.Transport, back: asyncio.Transport | None) -> Any:
    """What to do with the bytes that arrive: every message decoded, its bytes sent on
    (an encryption request answered 'N' on ``back``, the client's side)."""

    def feed(data: bytes) -> None:
        decoder.feed(data)
        out = []
        for message in decoder.messages():
            if back is not None and isinstance(message, SSLRequest | GSSENCRequest):
                back.write(b"N")
                decoder.startup_continues()
                continue
            out.append(message.raw)
        if out:
            sink.write(b"".join(out))

    return feed


class _Server(asyncio.Protocol):
    """The database's side of one relayed connection."""

    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client
        self.feed = _relay(BackendDecoder(), client, None)

    def data_received(self, data: bytes) -> None:
        self.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    """The client's side: reading waits until the database's side is connected."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.early: list[bytes] = []
        self.server: asyncio.Transport | None = None
        self.feed: Any = self.early.append

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.connecting = asyncio.ensure_future(self._connect())  # (kept: not collected)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            server, _ = await loop.create_connection(
                lambda: _Server(self.transport), "127.0.0.1", self.upstream_port
            )
        except OSError:
            self.transport.close()
            return
        self.server = server
        self.feed = _relay(FrontendDecoder(), server, self.transport)
        for data in self.early:
            self.feed(data)

    def data_received(self, data: bytes) -> None:
        self.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.server is not None:
            self.server.close()


async def serve_pg_relay(port: int, upstream_port: int) -> None:
    """Relay 127.0.0.1:``port`` to 127.0.0.1:``upstream_port`` until cancelled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(upstream_port), "127.0.0.1", port)
    async with server:
        await server.serve_forever()
