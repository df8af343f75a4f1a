"""CPU cost of rewriting a bulk result's rows (not a test; run it by hand):

    .venv/bin/python tests/pg/bench_rows.py [--rows 200000] [--distinct 20000] [--repeat 5]

A result of ``--rows`` DataRows (id int4, full_name text, phone varchar; text format,
UTF-8), ``--distinct`` customers among them, every token already in the engine's cache
(sized for them: at least the default), fed in 256 KiB chunks as a socket would give
them. CPU time of one core, best of ``--repeat`` rounds:

- frames: ``next_message`` with DataRows as Passthrough frames, then ``rewrite_frames``
  (the session's former path; ``rewrite_frames`` is now a wrapper of ``rewrite_run``);
- run: ``take_data_rows``, then ``rewrite_run`` on each run, a new result of one plan
  each round (as a session runs a statement again: the rows seen before come from the
  plan's row memo);
- the same with a new plan (the row memo empty, each value from the wire-value memo);
- the same with every memo empty (every value decoded and looked up once).

On a busy machine, use fewer rows and more rounds (--rows 50000 --repeat 20).
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from test_results import framed_rewriter  # (run from tests/pg: the suite's helper)

from proxy.crypto.engine import CACHE_SIZE, TokenEngine
from proxy.crypto.keyring import Keyring
from proxy.crypto.registry import MemoryRegistry
from proxy.crypto.tokens import Kind
from proxy.crypto.vault import MemoryVault
from proxy.pg import results
from proxy.pg.codec import BackendDecoder
from proxy.pg.messages import Passthrough
from proxy.pg.results import RowRewriter, _encode_row

CHUNK = 256 * 1024
_T = TypeVar("_T")

FIRST = ["Budi", "Siti", "Agus", "Dewi", "Rina", "Joko", "Putri", "Zoë", "Łukasz", "Иван", "Nguyen"]
SYLLABLES = ["ka", "ri", "ma", "su", "to", "ne", "la", "wi", "ra", "di", "an", "go", "be", "yu"]


def customers(n: int, seed: int = 7) -> list[tuple[str, str]]:
    """``n`` distinct (name, phone) pairs."""
    rnd = random.Random(seed)
    names: set[str] = set()
    while len(names) < n:
        last = "".join(rnd.choice(SYLLABLES) for _ in range(rnd.randint(2, 4))).capitalize()
        names.add(f"{rnd.choice(FIRST)} {last}")
    phones = [f"+62 8{i % 100:02d}-{(i // 100) % 10000:04d}-{i % 9973:04d}" for i in range(n)]
    return list(zip(sorted(names), phones, strict=True))


def drive(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine that must not wait (every token is cached)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("the rewrite waited: a token was not cached")


def frames_path(engine: TokenEngine, chunks: list[bytes]) -> tuple[int, bytes]:
    decoder = BackendDecoder()
    decoder.passthrough = {b"D"}
    rows = framed_rewriter(engine)
    out: list[bytes] = []
    for chunk in chunks:
        decoder.feed(chunk)
        frames = [m.frame for m in decoder.messages() if type(m) is Passthrough]
        if frames:
            out.append(b"".join(drive(rows.rewrite_frames(frames))))
    return rows.rows, b"".join(out)


_PLANS: dict[int, RowRewriter] = {}  # one plan per engine, as a session keeps it


def run_path(engine: TokenEngine, chunks: list[bytes]) -> tuple[int, bytes]:
    decoder = BackendDecoder()
    first = _PLANS.get(id(engine))
    if first is None:
        first = _PLANS[id(engine)] = framed_rewriter(engine)
    rows = RowRewriter(first.plan, first.tokens)  # (a new result of the same plan)
    out: list[bytes] = []
    for chunk in chunks:
        decoder.feed(chunk)
        while (run := decoder.take_data_rows()) is not None:
            out.append(drive(rows.rewrite_run(run)))
    return rows.rows, b"".join(out)


def new_plan_path(engine: TokenEngine, chunks: list[bytes]) -> tuple[int, bytes]:
    """`run_path` of a plan never seen (its row memo empty; the wire-value memo warm)."""
    _PLANS.pop(id(engine), None)
    return run_path(engine, chunks)


def cold_run_path(engine: TokenEngine, chunks: list[bytes]) -> tuple[int, bytes]:
    """`run_path` with every memo emptied first (as after a key rotation)."""
    results._MEMOS.clear()
    return new_plan_path(engine, chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--distinct", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    people = customers(min(args.distinct, args.rows))
    engine = TokenEngine.standard(
        Keyring.single(bytes(range(32))),
        MemoryVault(),
        MemoryRegistry(),
        cache_size=max(CACHE_SIZE, 2 * len(people)),  # names and phones: all warm
    )
    started = time.process_time()
    engine.tokenize_many(Kind.NAME.value, [name for name, _ in people])
    engine.tokenize_many(Kind.PHONE.value, [phone for _, phone in people])
    print(
        f"warmed the engine cache with {len(people):,} customers in "
        f"{time.process_time() - started:.1f} s"
    )
    stream = b"".join(
        _encode_row([str(i + 1).encode(), *(v.encode() for v in people[i % len(people)])])
        for i in range(args.rows)
    )
    chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]
    print(f"{args.rows:,} rows, {len(stream) / args.rows:.1f} bytes a row, {len(chunks)} chunks")
    cases: list[tuple[str, Callable[[TokenEngine, list[bytes]], tuple[int, bytes]]]] = [
        ("next_message + rewrite_frames", frames_path),
        ("take_data_rows + rewrite_run", run_path),
        ("... row memo cold (new plan)", new_plan_path),
        ("... memos cold (cache warm)", cold_run_path),
    ]
    expected = run_path(engine, chunks)[1]  # (untimed: fills the memo)
    best: dict[str, float] = {}
    for _ in range(args.repeat):  # round robin: every case gets the machine's quiet moments
        for name, path in cases:
            gc.collect()  # (no case pays for the garbage of another)
            began = time.process_time()
            count, out = path(engine, chunks)
            seconds = time.process_time() - began
            assert count == args.rows and out == expected, name
            best[name] = min(best.get(name, seconds), seconds)
    for name, seconds in best.items():
        print(f"{name:32} {seconds / args.rows * 1e6:6.2f} us/row")


if __name__ == "__main__":
    main()
