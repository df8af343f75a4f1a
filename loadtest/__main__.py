"""``python -m loadtest``: tokenproxy side by side with a baseline.

    python -m loadtest list
    python -m loadtest run [SCENARIO...] [--rounds N] [--duration S] [--connections C]
                           [--warm S] [--sweep C,C,...] [--json FILE] [--plot DIR] [--quick]
    python -m loadtest soak [--duration S] [--quick] [--json FILE]

``run`` with no scenario runs them all. It exits 1 when a scenario's check failed (a
request failed, a save stored a wrong value, a response mixed key versions...).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from pathlib import Path

from loadtest.harness import QUICK_SWEEP, SWEEP, Options, run
from loadtest.scenarios import registry


def _counts(text: str) -> tuple[int, ...]:
    if text == "none":
        return ()
    try:
        counts = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("connection counts like 1,4,16,64") from None
    if not counts or min(counts) < 1 or len(counts) > 16:
        raise argparse.ArgumentTypeError("1 to 16 connection counts, each at least 1")
    return counts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the scenarios")
    r = sub.add_parser("run", help="run scenarios (all by default)")
    r.add_argument("scenarios", nargs="*", metavar="SCENARIO")
    r.add_argument("--rounds", type=int, help="measured rounds per target (default 5, quick 2)")
    r.add_argument("--duration", type=float, help="seconds per round (default 10, quick 2)")
    r.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    r.add_argument("--warm", type=float, help="seconds of warm-up per target (3, quick 1)")
    r.add_argument("--json", type=Path, help="also write the results here")
    r.add_argument("--plot", type=Path, help="write a PNG per scenario into this directory")
    r.add_argument("--sweep", type=_counts, metavar="C,C,...",
                   help="connection counts of the latency sweep (1,4,16,64; quick 1,8;"
                   " 'none' for no sweep)")
    r.add_argument("--quick", action="store_true",
                   help="short rounds and a two-point sweep: for development, not for figures")
    k = sub.add_parser("soak", help="the mixed workload under faults, then the checks")
    k.add_argument("--duration", type=float,
                   help="seconds of load (default 600, quick 60)")
    k.add_argument("--quick", action="store_true", help="a short soak (60 s by default)")
    k.add_argument("--json", type=Path, help="also write the table here")
    s = sub.add_parser("_serve", help=argparse.SUPPRESS)  # the harness's own servers
    s.add_argument("what", choices=["upstream", "passthrough", "pg-relay"])
    s.add_argument("port", type=int)
    s.add_argument("arg")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "_serve":
        from loadtest.bench_http import _run_uvloop, serve_passthrough
        from loadtest.scenarios.http import serve_upstream

        if args.what == "upstream":
            _run_uvloop(serve_upstream(args.port, int(args.arg)))
        elif args.what == "pg-relay":
            from loadtest.pg_relay import serve_pg_relay

            _run_uvloop(serve_pg_relay(args.port, int(args.arg)))
        else:
            _run_uvloop(serve_passthrough(args.port, args.arg))
        return 0
    if args.command == "soak":
        from loadtest.soak import main as soak

        command = "python -m loadtest " + shlex.join(sys.argv[1:] if argv is None else argv)
        return soak(args.duration, args.quick, args.json, command)
    known = registry()
    if args.command == "list":
        width = max(map(len, known))
        for name, cls in known.items():
            print(f"{name:<{width}}  {cls.summary}")
        return 0
    unknown = [n for n in args.scenarios if n not in known]
    if unknown:
        print(f"no scenario {', '.join(unknown)}; there are: {', '.join(known)}",
              file=sys.stderr)
        return 2
    quick = args.quick
    duration = args.duration or (2.0 if quick else 10.0)
    opts = Options(
        rounds=max(1, args.rounds or (2 if quick else 5)),
        duration=duration,
        connections=args.connections,
        warm=args.warm if args.warm is not None else (1.0 if quick else 3.0),
        sweep=args.sweep if args.sweep is not None else (QUICK_SWEEP if quick else SWEEP),
        sweep_duration=1.0 if quick else min(duration, 5.0),
    )
    scenarios = [known[n]() for n in (args.scenarios or list(known))]
    command = "python -m loadtest " + shlex.join(sys.argv[1:] if argv is None else argv)
    return run(scenarios, opts, quick=quick, json_path=args.json, plot_dir=args.plot,
               command=command)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
