"""The PostgreSQL listener: accepts clients, runs the start-up, hands sessions to a hook.

    frontend = PgFrontEnd(PgSettings("db.internal", 5432))
    frontend.session = my_session             # default: relay_plain
    addresses = await frontend.start("127.0.0.1", 6432)   # port 0: a free one
    ...
    await frontend.close(timeout=10)

The accept loop is its own (``loop.sock_accept``) rather than ``asyncio.start_server``:
`proxy.pg.startup.establish` needs the raw socket, to see a direct TLS ClientHello before
anything reads it. ``settings`` may be replaced while running (a reload): new connections
use the new value.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from proxy.pg.cancels import CancelRegistry
from proxy.pg.relay import relay_plain
from proxy.pg.startup import Established, PgSettings, establish

__all__ = ["PgFrontEnd", "SessionHook"]

log = structlog.get_logger("tokenproxy.pg")

SessionHook = Callable[[Established], Awaitable[None]]

_ACCEPT_BACKOFF: Final = 0.1


class PgFrontEnd:
    """Listens for PostgreSQL clients and runs one task per connection."""

    def __init__(
        self,
        settings: PgSettings,
        *,
        session: SessionHook = relay_plain,
        cancels: CancelRegistry | None = None,
        backlog: int = 128,
    ) -> None:
        self.settings = settings
        self.session: SessionHook = session
        self.cancels = cancels if cancels is not None else CancelRegistry()
        self._backlog = backlog
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._addresses: list[tuple[str, int]] = []
        self._closing = False

    @property
    def connections(self) -> int:
        """Client connections open now (in start-up or in a session)."""
        return len(self._connections)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where it listens: (host, port) per socket."""
        return list(self._addresses)

    async def start(self, host: str, port: int) -> list[tuple[str, int]]:
        """Listen on every address ``host`` resolves to; returns the bound addresses."""
        if self._listeners or self._closing:
            raise RuntimeError("this PgFrontEnd was already started")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen: set[tuple[int, object]] = set()
        try:
            for family, kind, proto, _, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                sock = socket.socket(family, kind, proto)
                self._listeners.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(self._backlog)
                sock.setblocking(False)
                bound = sock.getsockname()
                self._addresses.append((str(bound[0]), int(bound[1])))
        except BaseException:
            for sock in self._listeners:
                sock.close()
            self._listeners.clear()
            self._addresses.clear()
            raise
        for sock in self._listeners:
            self._accepting.append(asyncio.create_task(self._accept(sock)))
        log.info(
            "pg.listening",
            addresses=[f"{h}:{p}" for h, p in self._addresses],
            upstream=self.settings.upstream,
            client_tls=self.settings.client_tls is not None,
            upstream_tls=self.settings.upstream_tls,
        )
        return list(self._addresses)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE, ECONNABORTED...: back off, go on
                log.warning("pg.accept_failed", error=exc.strerror or type(exc).__name__)
                await asyncio.sleep(_ACCEPT_BACKOFF)
                continue
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:
                sock.close()
                continue
            task = asyncio.create_task(self._serve(sock))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve(self, sock: socket.socket) -> None:
        established = await establish(sock, self.settings, self.cancels)
        if established is None:
            return
        try:
            await self.session(established)
        except Exception as exc:  # the type only: a message could carry a payload
            log.error(
                "pg.session_failed",
                peer=established.peer,
                user=established.user,
                database=established.database,
                error=type(exc).__name__,
            )
        finally:
            await established.close()

    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109  (a grace period)
        """Stop accepting, let sessions end for up to ``timeout`` s, then cancel them (and
        forget their cancel keys)."""
        self._closing = True
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        self._accepting.clear()
        for sock in self._listeners:
            sock.close()
        self._listeners.clear()
        pending = set(self._connections)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)
        await self.cancels.close()
        log.info("pg.closed", cancelled_sessions=len(pending))
