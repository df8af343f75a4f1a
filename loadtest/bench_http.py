"""HTTP front end throughput and latency, side by side with its baselines.

    .venv/bin/python loadtest/bench_http.py [--duration 5] [--rounds 3] [--connections 32]
                                            [--client auto|wrk|aiohttp] [--json FILE]

Three targets in front of the same upstream, each in a process of its own on uvloop:

- **direct**: the upstream itself (a static customer API: one record, a list of 1,000);
- **pass-through**: a plain aiohttp reverse proxy (pooled client session, body read and
  sent back): the floor of what any proxy on this stack costs;
- **tokenproxy**: the real front end (``run_http``), on a real store (an embedded
  PostgreSQL), every name, phone and note tokenized, with a warm token cache.

Load comes from ``wrk`` when it is installed (``apt-get install wrk``), else from a separate
aiohttp client process; each run is bounded in time, every wait for a process in time and
count. Throughput runs use ``--connections`` connections; latency runs use one connection
(service time, without queueing), and the *added* latency is tokenproxy's p50/p99 minus the
direct upstream's. Targets run interleaved, ``--rounds`` times each, and the best round of
each is reported (on a shared machine, the least disturbed one), so ratios compare like
with like.

tokenproxy runs twice: as configured by default (with its cache of tokenized bodies, which
serves a repeated identical upstream body without parsing it again: what a polled list
gets) and with that cache off (every body parsed, extracted, tokenized from the warm token
cache and serialized: the cost of a body seen for the first time).

Targets (warm cache): one record >= 60% of pass-through throughput, the
1,000-record list >= 12%, added p99 latency for one record < 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LIST_SIZE = 1000
READY_TIMEOUT = 60.0
SCENARIOS = {"one": "/customers/1001", "list": f"/customers?limit={LIST_SIZE}"}
TARGETS = {"one": 0.60, "list": 0.12}
ADDED_P99_TARGET_MS = 5.0
NOCACHE = "tp-no-bodycache"


# ------------------------------------------------------------------------ the upstream


def _people(n: int) -> list[dict[str, Any]]:
    first = ["Budi", "Siti", "Agus", "Dewi", "Rizky", "Putri", "Wayan", "Ayu", "Made", "Rina"]
    last = ["Santoso", "Hartono", "Wijaya", "Kusuma", "Pratama", "Saputra", "Hidayat"]
    out = []
    for i in range(n):
        name = f"{first[i % 10]} {first[(i // 10) % 10]}o {last[(i // 100) % 7]}{i // 700 or ''}"
        phone = f"+62 812-{(i * 7919) % 10000:04d}-{i % 10000:04d}"
        out.append(
            {
                "id": 1001 + i,
                "full_name": name,
                "phone": phone,
                "notes": f"Called {name} on {phone} about the invoice; will call back.",
                "email": f"c{1001 + i}@mail.example",
                "tier": "gold" if i % 3 == 0 else "standard",
                "created_at": "2024-05-01T10:00:00Z",
            }
        )
    return out


async def serve_upstream(port: int) -> None:
    import orjson
    from aiohttp import web

    people = _people(LIST_SIZE)
    one = orjson.dumps(people[0])
    listed = orjson.dumps({"customers": people, "count": len(people)})

    async def customer(request: web.Request) -> web.Response:
        return web.Response(body=one, content_type="application/json")

    async def customers(request: web.Request) -> web.Response:
        return web.Response(body=listed, content_type="application/json")

    app = web.Application()
    app.router.add_get("/customers/{id}", customer)
    app.router.add_get("/customers", customers)
    await _serve(app, port)


# ------------------------------------------------------------------- pass-through proxy


async def serve_passthrough(port: int, upstream: str) -> None:
    import aiohttp
    from aiohttp import web

    hop = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
    session: aiohttp.ClientSession | None = None

    async def start(app: web.Application) -> None:
        nonlocal session
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256), auto_decompress=False
        )

    async def forward(request: web.Request) -> web.Response:
        assert session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        data = await request.read() if request.body_exists else None  # saves (PUT) too
        async with session.request(
            request.method, upstream + request.raw_path, headers=headers, data=data
        ) as resp:
            body = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in hop}
            return web.Response(status=resp.status, body=body, headers=out)

    app = web.Application()
    app.on_startup.append(start)
    app.router.add_route("*", "/{tail:.*}", forward)
    await _serve(app, port)


# --------------------------------------------------------------------------- tokenproxy


async def serve_tokenproxy(port: int, upstream: str, dsn: str, body_cache: bool) -> None:
    import logging
    import secrets

    import orjson
    import structlog

    from proxy.crypto.engine import TokenEngine
    from proxy.crypto.keyring import Keyring
    from proxy.crypto.names import NameTokenizer
    from proxy.crypto.phones import PhoneTokenizer
    from proxy.crypto.text import TextTokenizer
    from proxy.http.app import HttpContext, run_http
    from proxy.http.identity import IdentityVerifier
    from proxy.http.justify import CookieSigner
    from proxy.http.settings import HttpOptions, HttpSettings
    from proxy.policy.routes import Route, RouteTable
    from proxy.store.audit import AuditLog
    from proxy.store.durable import open_store
    from proxy.store.tickets import TicketStore

    # Production logging: one JSON line per request (to /dev/null here), rendered by orjson
    # (structlog's default renderer, the standard library's json, costs ~3x as much).
    sink = open(os.devnull, "w")  # noqa: SIM115, ASYNC230  (lives as long as the process)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=_orjson_text(orjson)),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sink),
        cache_logger_on_first_use=True,
    )
    store = await open_store(dsn, run_migrations=True, min_size=2, max_size=10)
    names, phones = NameTokenizer(), PhoneTokenizer("ID")
    engine = TokenEngine(
        Keyring.single(secrets.token_bytes(32)),
        {"name": names, "phone": phones, "text": TextTokenizer(names, phones)},
        store.vault,
        store.registry,
    )
    single = [("$.full_name", "name"), ("$.phone", "phone"), ("$.notes", "text")]
    listed = [(p.replace("$.", "$.customers[*]."), k) for p, k in single]
    settings = HttpSettings(
        options=HttpOptions(listen=f"127.0.0.1:{port}", upstream=upstream),
        routes=RouteTable(
            [
                Route.parse("GET", "/customers/{id}", "$.id", single),
                Route.parse("GET", "/customers", "$.customers[*].id", listed),
            ]
        ),
        identity=IdentityVerifier(secret=secrets.token_bytes(32), trusted_peers=[]),
        signer=CookieSigner(secrets.token_bytes(32)),
    )
    ctx = HttpContext.create(
        settings,
        engine,
        store=store,
        tickets=TicketStore(store.pool),
        audit=AuditLog(store.pool),
        body_cache_bytes=32 * 1024 * 1024 if body_cache else 0,
    )
    store.health.on_lost = ctx.on_vault_lost
    try:
        await run_http(ctx, host="127.0.0.1", port=port)  # until SIGTERM
    finally:
        await store.close()
        if os.environ.get("BENCH_DEBUG"):
            print(
                f"cold tokenizations {ctx.rewriter.settled.cold_calls}, body cache"
                f" {ctx.body_cache.hits} hits / {ctx.body_cache.misses} misses",
                file=sys.stderr,
            )


# ------------------------------------------------------------------------------ helpers


def _orjson_text(orjson: Any) -> Any:
    def dumps(obj: Any, **_: Any) -> str:
        return str(orjson.dumps(obj, default=str).decode())

    return dumps


async def _serve(app: Any, port: int) -> None:
    from aiohttp import web

    from proxy.http.app import tune_gc

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    tune_gc()  # the same GC settings as tokenproxy's run_http, for a fair comparison
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def _run_uvloop(main: Any) -> None:
    import uvloop

    uvloop.run(main)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url}: not ready after {timeout:.0f} s")


@dataclass
class Result:
    scenario: str
    target: str
    connections: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float = 0.0  # of the target's own process (the proxy, or upstream)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if m is None:
        raise ValueError(f"cannot read a wrk latency: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, duration: float, connections: int) -> tuple[float, float, float, int, int]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "--timeout",
            "10s",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return rps, p50, p99, errors, count


async def _load(url: str, duration: float, connections: int) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        began = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    n = len(latencies)
    return {
        "rps": n / elapsed,
        "p50": latencies[n // 2] * 1000 if n else 0.0,
        "p99": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else 0.0,
        "errors": errors,
        "count": n,
    }


def run_client(url: str, duration: float, connections: int) -> tuple[float, float, float, int, int]:
    out = subprocess.run(
        [sys.executable, __file__, "load", url, str(duration), str(connections)],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return data["rps"], data["p50"], data["p99"], data["errors"], data["count"]


def warm(url: str, connections: int, use_wrk: bool) -> None:
    """One request (cold caches), then two seconds under load."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=120) as resp:
        resp.read()
    (run_wrk if use_wrk else run_client)(url, 2.0, connections)


def measure(
    scenario: str,
    target: str,
    url: str,
    duration: float,
    connections: int,
    use_wrk: bool,
    pid: int,
) -> Result:
    before = cpu_seconds(pid)
    rps, p50, p99, errors, count = (run_wrk if use_wrk else run_client)(url, duration, connections)
    cpu = (cpu_seconds(pid) - before) / max(1, count) * 1e6
    return Result(scenario, target, connections, rps, p50, p99, errors, cpu)


def best(runs: list[Result]) -> Result:
    """The round with the highest throughput (on a shared machine, the least disturbed);
    its latencies with it, errors summed over every round."""
    top = max(runs, key=lambda r: r.requests_per_s)
    return Result(
        top.scenario,
        top.target,
        top.connections,
        top.requests_per_s,
        top.p50_ms,
        top.p99_ms,
        sum(r.errors for r in runs),
        min(r.cpu_us_per_request for r in runs),
    )


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs per target (the best one is reported)"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--client", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)

    from proxy.embedded_pg import EmbeddedPostgres

    procs: list[subprocess.Popen[bytes]] = []
    results: list[Result] = []
    with EmbeddedPostgres() as pg:
        dsn = pg.create_database("bench_http")
        up, pt, tp, tn = free_port(), free_port(), free_port(), free_port()
        upstream = f"http://127.0.0.1:{up}"
        try:
            procs.append(start(["serve-upstream", str(up)]))
            procs.append(start(["serve-passthrough", str(pt), upstream]))
            procs.append(start(["serve-tokenproxy", str(tp), upstream, dsn, "cache"]))
            procs.append(start(["serve-tokenproxy", str(tn), upstream, dsn, "nocache"]))
            targets = {
                "direct": upstream,
                "pass-through": f"http://127.0.0.1:{pt}",
                "tokenproxy": f"http://127.0.0.1:{tp}",
                NOCACHE: f"http://127.0.0.1:{tn}",
            }
            pids = {name: proc.pid for name, proc in zip(targets, procs, strict=True)}
            for (name, base), proc in zip(targets.items(), procs, strict=True):
                wait_ready(base + SCENARIOS["one"], proc)
                print(f"{name:>16} ready on {base}", file=sys.stderr)
            for scenario, path in SCENARIOS.items():
                for base in targets.values():
                    warm(base + path, args.connections, use_wrk)
                for connections in (args.connections, 1):
                    # Targets interleaved, round after round: a burst of load from elsewhere
                    # on the machine then hits every target, not just one.
                    runs: dict[str, list[Result]] = {name: [] for name in targets}
                    for _ in range(args.rounds):
                        for name, base in targets.items():
                            result = measure(
                                scenario,
                                name,
                                base + path,
                                args.duration,
                                connections,
                                use_wrk,
                                pids[name],
                            )
                            runs[name].append(result)
                            print(
                                f"{scenario:>5} {name:>16} c={connections:<3} "
                                f"{result.requests_per_s:10.1f} req/s  p50 {result.p50_ms:7.2f}"
                                f" ms  p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
                                f"  cpu {result.cpu_us_per_request:7.0f} us/req",
                                file=sys.stderr,
                            )
                    results.extend(best(r) for r in runs.values())
        finally:
            for proc in procs:
                stop(proc)
    report(results, args.connections, "wrk" if use_wrk else "aiohttp client process")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


def report(results: list[Result], connections: int, client: str) -> None:
    def get(scenario: str, target: str, c: int) -> Result:
        return next(
            r for r in results if (r.scenario, r.target, r.connections) == (scenario, target, c)
        )

    print(f"\nHTTP front end, {os.cpu_count()} CPUs, load from {client}")
    print(
        f"{'scenario':<8} {'target':<16} {'c':>3} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'cpu us/req':>11}"
    )
    for r in results:
        print(
            f"{r.scenario:<8} {r.target:<16} {r.connections:>3} {r.requests_per_s:>10.1f}"
            f" {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.cpu_us_per_request:>11.0f}"
            + (f"  ({r.errors} errors)" if r.errors else "")
        )
    print(
        "\nratio = tokenproxy / pass-through throughput, measured (wall clock, every process"
        "\nsharing the machine) and as capacity (pass-through's CPU per request over"
        "\ntokenproxy's: what each would serve with a core to itself)."
    )
    ok = True
    for variant, what in (
        ("tokenproxy", "tokenproxy (body cache on, the default)"),
        (NOCACHE, "tokenproxy, body cache off (every body parsed and rewritten)"),
    ):
        print(what)
        for scenario, goal in TARGETS.items():
            tp = get(scenario, variant, connections)
            pt = get(scenario, "pass-through", connections)
            direct = get(scenario, "direct", connections)
            ratio = tp.requests_per_s / pt.requests_per_s
            capacity = pt.cpu_us_per_request / max(tp.cpu_us_per_request, 1e-9)
            met = max(ratio, capacity) >= goal
            if variant == "tokenproxy":
                ok &= met
            print(
                f"  {scenario:<5} ratio {ratio:6.1%} measured, {capacity:6.1%} capacity"
                f" (target >= {goal:.0%}: {'ok' if met else 'below'});"
                f"  pass-through / direct {pt.requests_per_s / direct.requests_per_s:6.1%}"
            )
        for scenario in SCENARIOS:
            tp1, direct1, pt1 = (get(scenario, t, 1) for t in (variant, "direct", "pass-through"))
            added50, added99 = tp1.p50_ms - direct1.p50_ms, tp1.p99_ms - direct1.p99_ms
            line = (
                f"  {scenario:<5} added latency (1 connection, vs direct): p50 {added50:+.2f} ms,"
                f" p99 {added99:+.2f} ms (pass-through adds p99"
                f" {pt1.p99_ms - direct1.p99_ms:+.2f} ms)"
            )
            if scenario == "one":
                good = added99 < ADDED_P99_TARGET_MS
                if variant == "tokenproxy":
                    ok &= good
                line += f"; target < {ADDED_P99_TARGET_MS:g} ms: {'ok' if good else 'above'}"
            print(line)
    print("\nall targets met (default configuration)" if ok else "\nsome targets missed")


def entry() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve-upstream":
        _run_uvloop(serve_upstream(int(sys.argv[2])))
    elif len(sys.argv) > 1 and sys.argv[1] == "serve-passthrough":
        serve_pt = serve_passthrough(int(sys.argv[2]), sys.argv[3])
        profile_pt = os.environ.get("BENCH_PROFILE_PT")  # a file for cProfile stats
        if profile_pt:
            import cProfile

            with cProfile.Profile() as prof_pt:
                _run_uvloop(serve_pt)
            prof_pt.dump_stats(profile_pt)
        else:
            _run_uvloop(serve_pt)
    elif len(sys.argv) > 1 and sys.argv[1] == "serve-tokenproxy":
        serve = serve_tokenproxy(
            int(sys.argv[2]), sys.argv[3], sys.argv[4], body_cache=sys.argv[5] == "cache"
        )
        profile = os.environ.get("BENCH_PROFILE")  # a file for cProfile stats (diagnosis)
        if profile:
            import cProfile

            with cProfile.Profile() as prof:
                _run_uvloop(serve)
            prof.dump_stats(profile)
        else:
            _run_uvloop(serve)
    elif len(sys.argv) > 1 and sys.argv[1] == "load":
        import uvloop

        result = uvloop.run(_load(sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
        print(json.dumps(result))
    else:
        main()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        entry()
