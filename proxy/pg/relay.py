"""The transparent session: bytes both ways, unchanged, once start-up is done.

`relay_plain` is the default session of `proxy.pg.server.PgFrontEnd` and the test vehicle
of the connection layer; the query-rewriting session takes its place with the same
`Established`. It decodes nothing: it sends the first ReadyForQuery and whatever
start-up left over (``client_leftover``/``server_leftover``), then forwards chunks as
they arrive, with backpressure (``drain``) in each direction, until either side closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import structlog

from proxy.pg.startup import Established

__all__ = ["relay_plain"]

log = structlog.get_logger("tokenproxy.pg")

_CHUNK: Final = 256 * 1024


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of file or a connection error."""
    read, write, drain = reader.read, writer.write, writer.drain
    with contextlib.suppress(OSError, EOFError):  # (ssl.SSLError, ConnectionError too)
        while data := await read(_CHUNK):
            write(data)
            await drain()


async def relay_plain(est: Established) -> None:
    """Send the first ReadyForQuery, then pump bytes both ways until a side closes;
    closes the session."""
    try:
        est.client_writer.write(est.ready.wire() + est.server_leftover)
        if est.client_leftover:
            est.server_writer.write(est.client_leftover)
        upward = asyncio.create_task(_pump(est.client_reader, est.server_writer))
        downward = asyncio.create_task(_pump(est.server_reader, est.client_writer))
        try:
            await asyncio.wait((upward, downward), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (upward, downward):
                task.cancel()
            await asyncio.gather(upward, downward, return_exceptions=True)
    finally:
        await est.close()
        log.info("pg.session_ended", peer=est.peer, user=est.user, database=est.database)
