"""Python cost of a point select through a live session (not a test; run it by hand):

    .venv/bin/python tests/pg/bench_session.py [--prepared] [--rounds 100] [--opcodes]

A real session (tokenproxy's PostgreSQL front end before the embedded PostgreSQL of the
suite, `session_env`) serves a psycopg client; one ``SELECT id, full_name, phone FROM
customers WHERE id = $1`` exchange is recorded (what the client sent in one network read,
what the server answered in one), then replayed into the session's two pumps again and
again, with what they would send thrown away. So it measures the session's Python work a
query (decoding, the handlers, the rows' rewrite; the same messages as ``pgbench -M
extended``, or ``-M prepared`` with ``--prepared``) without sockets, system calls or the
event loop: CPU time of this thread, best of ``--rounds`` rounds of 2,000 queries.
``--opcodes`` also counts the bytecodes a query runs, by function (a steadier figure on a
noisy machine, though not the whole cost: C calls and cache misses are not counted).

Under load the same work costs about twice as much (other processes take the core's
caches in between; see loadtest/RESULTS.md): compare figures of this bench with each other.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import uvloop
from session_env import pg_env  # (run from tests/pg: the suite's environment)

from proxy.embedded_pg import EmbeddedPostgres
from proxy.pg.link import Link, Outbox
from proxy.pg.messages import Parse

SQL = "SELECT id, full_name, phone FROM customers WHERE id = %s"
QUERIES = 2_000  # a round


class Recorder:
    """Every session link and the bytes it received, through `Link.deliver`."""

    def __init__(self) -> None:
        self.links: list[Link] = []
        self.received: list[tuple[Link, bytes]] = []
        self.feeds: dict[Link, Any] = {}
        deliver = Link.deliver

        def recording(link: Link, on_data: Any) -> None:
            self.links.append(link)
            self.feeds[link] = on_data

            def feed(data: bytes) -> None:
                self.received.append((link, bytes(data)))
                on_data(data)

            deliver(link, feed)

        Link.deliver = recording  # type: ignore[method-assign]

    def of(self, link: Link) -> bytes:
        return b"".join(data for who, data in self.received if who is link)


class Discard:
    """A transport that sends nothing (the rest of the link's transport as it was)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Flushed(Outbox):
    """An outbox the replay flushes itself after each read (as the loop does at the end
    of the read's iteration: with many sessions, once for several reads)."""

    def send(self, transport: Any, data: bytes) -> None:
        self._pending.append((transport, data))


async def bench(dsn: str, args: argparse.Namespace) -> None:
    recorder = Recorder()
    async with pg_env(dsn) as env:
        conn = await psycopg.AsyncConnection.connect(env.dsn, autocommit=True)
        for _ in range(3):  # warm: analysis, plan, tokens, memos
            await conn.execute(SQL, (1,), prepare=args.prepared)
        client, server = recorder.links[-2], recorder.links[-1]
        recorder.received.clear()
        await conn.execute(SQL, (2,), prepare=args.prepared)
        asked, answered = recorder.of(client), recorder.of(server)
        client.transport = Discard(client.transport)  # type: ignore[assignment]
        server.transport = Discard(server.transport)  # type: ignore[assignment]
        to_session, to_client = recorder.feeds[client], recorder.feeds[server]
        session = to_session.__self__.handlers[Parse].__self__
        clock, outbox = time.thread_time, Flushed()
        client.outbox = server.outbox = outbox

        async def replay(queries: int) -> float:
            """CPU seconds of ``queries`` exchanges (waits, if any, not counted)."""
            spent = 0.0
            for _ in range(queries):
                began = clock()
                to_session(asked)
                while (waiting := session._client.waiting) is not None:
                    await waiting
                outbox.flush()
                to_client(answered)
                outbox.flush()
                spent += clock() - began
                while (waiting := session._server.waiting) is not None:
                    await waiting
            return spent

        await replay(QUERIES)
        assert not (session.expect or session._client.stopped or session._server.stopped)
        best = min([await replay(QUERIES) for _ in range(args.rounds)])
        mode = "-M prepared" if args.prepared else "-M extended"
        print(f"{mode}: {best / QUERIES * 1e6:.1f} us of Python a query (best of {args.rounds})")
        if args.opcodes:
            counts: Counter[str] = Counter()

            def trace(frame: FrameType, event: str, arg: Any) -> Any:
                frame.f_trace_opcodes = True
                if event == "opcode":
                    code = frame.f_code
                    counts[f"{code.co_qualname} ({Path(code.co_filename).name})"] += 1
                return trace

            sys.settrace(trace)
            await replay(100)
            sys.settrace(None)
            print(f"{sum(counts.values()) / 100:,.0f} bytecodes a query; the most:")
            for name, count in counts.most_common(25):
                print(f"{count / 100:8.1f}  {name}")
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", action="store_true", help="as pgbench -M prepared")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--opcodes", action="store_true")
    args = parser.parse_args()
    with EmbeddedPostgres() as pg:
        uvloop.run(bench(pg.dsn, args))
    os._exit(0)  # (the session's connections are left open on purpose)


if __name__ == "__main__":
    main()
