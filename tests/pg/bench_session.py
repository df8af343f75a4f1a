"""Python cost of a point select through a live session (not a test; run it by hand):

    .venv/bin/python tests/pg/bench_session.py [--prepared | --simple] [--rounds 100]
        [--opcodes] [--customers 100000]

A real session (tokenproxy's PostgreSQL front end before the embedded PostgreSQL of the
suite, `session_env`) serves a psycopg client; one ``SELECT id, full_name, phone FROM
customers WHERE id = $1`` exchange is recorded (what the client sent in one network read,
what the server answered in one), then replayed into the session's two pumps again and
again, with what they would send thrown away. So it measures the session's Python work a
query (decoding, the handlers, the rows' rewrite; the same messages as ``pgbench -M
extended``, ``-M prepared`` with ``--prepared``, ``-M simple`` with ``--simple``: the id
written in the text, as psycopg's client-side binding cursor sends it) without sockets,
system calls or the event loop: CPU time of this thread, best of ``--rounds`` rounds of
2,000 queries.
``--opcodes`` also counts the bytecodes a query runs, by function (a steadier figure on a
noisy machine, though not the whole cost: C calls and cache misses are not counted).

One exchange replayed is one row seen again and again (its values from the value memos,
its bytes in the CPU's caches). ``--customers N`` adds N customers (`proxy.demo.seed`),
reads them all once through the session (a warm token cache, as the load test's),
records the exchanges of min(N, 20,000) of them in random order and replays those in
turn: the first pass (each row new to the row memo, which a point select's row spliced
into its answer does not use, and to the CPU's caches) is printed apart from the rounds
after it.

Under load the same work costs two to four times as much (other processes take the core's
caches in between; see loadtest/RESULTS.md): compare figures of this bench with each other.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import asyncpg
import psycopg
import uvloop
from session_env import pg_env  # (run from tests/pg: the suite's environment)

from proxy.demo.seed import generate
from proxy.embedded_pg import EmbeddedPostgres
from proxy.http.app import tune_gc
from proxy.pg import results
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

    def send(self, transport: Any, last: bool, data: bytes) -> None:
        (self._last if last else self._first).append((transport, data))


async def bench(dsn: str, args: argparse.Namespace) -> None:
    recorder = Recorder()
    async with pg_env(dsn) as env:
        ids = [2]
        if args.customers:
            ids = await add_customers(dsn, args.customers)
        conn = await psycopg.AsyncConnection.connect(env.dsn, autocommit=True)
        if args.customers:
            await conn.execute("SELECT id, full_name, phone FROM customers")  # (every token)
        ask = (
            psycopg.AsyncClientCursor(conn).execute
            if args.simple
            else partial(conn.execute, prepare=args.prepared)
        )
        for _ in range(3):  # warm: analysis, plan, tokens, memos
            await ask(SQL, (1,))
        client, server = recorder.links[-2], recorder.links[-1]
        exchanges: list[tuple[bytes, bytes]] = []
        for customer in ids:
            recorder.received.clear()
            await ask(SQL, (customer,))
            exchanges.append((recorder.of(client), recorder.of(server)))
        clock, outbox = time.thread_time, Flushed()
        for link in (client, server):
            link.use(outbox, Discard(link.transport))  # type: ignore[arg-type]
        to_session, to_client = recorder.feeds[client], recorder.feeds[server]
        session = to_session.__self__.handlers[Parse].__self__

        turn = 0

        async def replay(queries: int) -> float:
            """CPU seconds of the next ``queries`` exchanges (waits, if any, not counted)."""
            nonlocal turn
            spent = 0.0
            for _ in range(queries):
                asked, answered = exchanges[turn % len(exchanges)]
                turn += 1
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

        tune_gc()  # (as `tokenproxy serve`)
        if args.customers:  # (recording rewrote them: the row memo forgets them)
            for _, memos, counts in results._MEMOS.values():
                for key, memo in memos.items():
                    if key[0] == "rows":
                        counts[1] -= len(memo)
                        memo.clear()
        warm = len(exchanges) if args.customers else QUERIES
        first = await replay(warm)
        assert not (session.expect or session._client.stopped or session._server.stopped)
        mode = "-M simple" if args.simple else "-M prepared" if args.prepared else "-M extended"
        if args.customers:
            print(f"{mode}: {first / warm * 1e6:.1f} us of Python a query, a first"
                  f" pass over {warm:,} rows")
        best = min([await replay(QUERIES) for _ in range(args.rounds)])
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


async def add_customers(dsn: str, count: int) -> list[int]:
    """``count`` more customers (ids after the suite's); the ids of up to 20,000 of them,
    in random order."""
    people = generate(count)
    conn = await asyncpg.connect(dsn)
    try:
        first = await conn.fetchval("SELECT max(id) + 1 FROM customers")
        await conn.execute("ALTER TABLE customers DROP CONSTRAINT customers_phone_key")
        await conn.copy_records_to_table(
            "customers",
            records=[(first + i, c.full_name, c.phone, c.email) for i, c in enumerate(people)],
            columns=["id", "full_name", "phone", "email"],
        )
    finally:
        await conn.close()
    ids = list(range(first, first + count))
    random.Random(62).shuffle(ids)
    return ids[:20_000]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    protocol = parser.add_mutually_exclusive_group()
    protocol.add_argument("--prepared", action="store_true", help="as pgbench -M prepared")
    protocol.add_argument("--simple", action="store_true", help="as pgbench -M simple")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--opcodes", action="store_true")
    parser.add_argument("--customers", type=int, default=0, help="replay this many rows")
    args = parser.parse_args()
    with EmbeddedPostgres() as pg:
        uvloop.run(bench(pg.dsn, args))
    os._exit(0)  # (the session's connections are left open on purpose)


if __name__ == "__main__":
    main()
