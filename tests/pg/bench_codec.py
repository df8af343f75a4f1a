"""Throughput of the PostgreSQL codec on DataRows (not a test; run it by hand):

    .venv/bin/python tests/pg/bench_codec.py [--rows 200000] [--repeat 7]

200,000 rows of 5 short columns (one NULL), fed in 64 KiB chunks as a socket would give
them; CPU time of one core, best of --repeat rounds (on a busy machine, use fewer rows and
more rounds: --rows 20000 --repeat 60).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from proxy.pg.codec import BackendDecoder
from proxy.pg.messages import DataRow

ROW = DataRow((b"1042", b"Alice Smith", b"+62 812 3456 789", None, b"2024-01-31"))


def chunks_of(rows: int) -> list[bytes]:
    stream = ROW.encode() * rows
    return [stream[i : i + 65536] for i in range(0, len(stream), 65536)]


def decode(chunks: list[bytes], *, keep_raw: bool = True, passthrough: bool = False) -> int:
    decoder = BackendDecoder(keep_raw=keep_raw)
    if passthrough:
        decoder.passthrough = {b"D"}
    n = 0
    for chunk in chunks:
        decoder.feed(chunk)
        for _ in decoder.messages():
            n += 1
    return n


def decode_encode(chunks: list[bytes]) -> int:
    decoder = BackendDecoder()
    n = 0
    for chunk in chunks:
        decoder.feed(chunk)
        for row in decoder.messages():
            row.encode()
            n += 1
    return n


def decode_rewrite_encode(chunks: list[bytes]) -> int:
    """What the pump does to a row with a protected column: a new row, encoded."""
    decoder = BackendDecoder(keep_raw=False)
    n = 0
    for chunk in chunks:
        decoder.feed(chunk)
        for row in decoder.messages():
            assert isinstance(row, DataRow)
            columns = row.columns
            DataRow((columns[0], b"Xkcdq Vbnmw", *columns[2:])).encode()
            n += 1
    return n


def encode_only(built: list[DataRow]) -> int:
    for row in built:
        row.encode()
    return len(built)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    chunks = chunks_of(args.rows)
    built = [DataRow(ROW.columns) for _ in range(args.rows)]
    cases: list[tuple[str, Callable[[], int]]] = [
        ("decode (keep_raw)", lambda: decode(chunks)),
        ("decode (keep_raw=False)", lambda: decode(chunks, keep_raw=False)),
        ("passthrough (framing only)", lambda: decode(chunks, passthrough=True)),
        ("encode", lambda: encode_only(built)),
        ("decode + encode", lambda: decode_encode(chunks)),
        ("decode + new row + encode", lambda: decode_rewrite_encode(chunks)),
    ]
    best = dict.fromkeys((name for name, _ in cases), float("inf"))
    for _ in range(args.repeat):  # round robin: every case gets the machine's quiet moments
        for name, run in cases:
            started = time.process_time()
            assert run() == args.rows
            best[name] = min(best[name], time.process_time() - started)
    for name, seconds in best.items():
        rate, micros = args.rows / seconds, seconds / args.rows * 1e6
        print(f"{name:28} {rate:>12,.0f} rows/s  {micros:6.2f} us/row")


if __name__ == "__main__":
    main()
