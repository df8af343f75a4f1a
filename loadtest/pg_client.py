"""A PostgreSQL client for the pg scenarios, in a process of its own (the harness pins it
to the load core): ``python -m loadtest.pg_client MODE DSN QUERY [--seconds S] [--max N]``.

- ``bulk``: ``cursor.execute(QUERY)`` again and again for S seconds (at least once, at most
  N times), each read timed from sending the query until libpq holds the whole result; the
  rows are not turned into Python objects. psycopg 3 on libpq, text format.
- ``select``: QUERY once, streamed (``Cursor.stream`` in chunks of 1,000 rows, libpq's
  chunked-rows mode), every chunk dropped as it comes.
- ``copy``: ``COPY (QUERY) TO STDOUT`` once, every block counted and dropped.

Prints one JSON line: the rows of each read and its seconds. Never a value.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import psycopg

CHUNK = 1000


def bulk(conn: psycopg.Connection[tuple[object, ...]], query: str, seconds: float,
         most: int) -> tuple[list[int], list[float]]:
    rows: list[int] = []
    times: list[float] = []
    began = time.monotonic()
    with conn.cursor() as cur:
        while len(times) < most and (not times or time.monotonic() - began < seconds):
            t0 = time.perf_counter()
            cur.execute(query.encode())
            times.append(time.perf_counter() - t0)
            rows.append(cur.rowcount)
    return rows, times


def stream(conn: psycopg.Connection[tuple[object, ...]], query: str) -> int:
    n = 0
    with conn.cursor() as cur:
        for _ in cur.stream(query.encode(), size=CHUNK):
            n += 1
    return n


def copy(conn: psycopg.Connection[tuple[object, ...]], query: str) -> int:
    n = 0
    with conn.cursor() as cur, cur.copy(f"COPY ({query}) TO STDOUT".encode()) as out:
        for block in out:
            n += bytes(block).count(b"\n")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.pg_client")
    parser.add_argument("mode", choices=["bulk", "select", "copy"])
    parser.add_argument("dsn")
    parser.add_argument("query")
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--max", type=int, default=1000)
    args = parser.parse_args(argv)
    with psycopg.connect(args.dsn, connect_timeout=10, autocommit=True) as conn:
        if args.mode == "bulk":
            rows, times = bulk(conn, args.query, args.seconds, max(1, args.max))
        else:
            t0 = time.perf_counter()
            n = stream(conn, args.query) if args.mode == "select" else copy(conn, args.query)
            rows, times = [n], [time.perf_counter() - t0]
    print(json.dumps({"rows": rows, "seconds": times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
