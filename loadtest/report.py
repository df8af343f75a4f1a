"""What the store benchmarks share: a result row, its table, and a database to run on.

``python loadtest/bench_store.py`` uses DATABASE_URL (or ``--dsn``) when given, and
otherwise starts a throwaway EmbeddedPostgres for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog


@dataclass
class Result:
    """One line of the table: ``ops`` per second against ``baseline_ops`` per second."""

    scenario: str
    ops: float
    baseline: str
    baseline_ops: float
    unit: str = "ops/s"

    @property
    def ratio(self) -> float:
        return self.ops / self.baseline_ops if self.baseline_ops else float("nan")


def table(results: list[Result]) -> str:
    """The results as a fixed-width table."""
    head = f"{'scenario':<38} {'rate':>12}  {'baseline':<22} {'baseline rate':>14} {'ratio':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.scenario:<38} {r.ops:>12,.0f}  {r.baseline:<22} {r.baseline_ops:>14,.0f} "
            f"{r.ratio:>6.2f}x"
        )
    return "\n".join(lines)


Work = Callable[[str, float], Awaitable[list[Result]]]


def main_on_database(
    description: str, name: str, work: Work, *, seconds: float, argv: list[str] | None
) -> int:
    """Parse ``--dsn``/``--seconds``, run ``work`` on a database, print the table."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--seconds", type=float, default=seconds, help="per measurement")
    args = parser.parse_args(argv)
    # Info lines (one per reveal, per flush) on stdout would be measured too.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    started = time.perf_counter()
    if args.dsn:
        results = asyncio.run(work(args.dsn, args.seconds))
        where = "DATABASE_URL"
    else:
        from proxy.embedded_pg import EmbeddedPostgres

        with EmbeddedPostgres() as pg:
            dsn = pg.create_database(name)
            where = f"EmbeddedPostgres (PostgreSQL {pg.binaries.version}, fsync off)"
            results = asyncio.run(work(dsn, args.seconds))
    print(f"tokenproxy {name} benchmark on {where}, {args.seconds:g} s per measurement")
    print(table(results))
    print("ratio = rate / baseline rate, measured side by side in the same run")
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0
