"""HTTP scenarios: tokenproxy (``tokenproxy serve``) against a plain pass-through proxy.

Each scenario starts, on 127.0.0.1, in processes of their own:

- **the upstream**: a customer API over the demo's seeded customers (``proxy.demo.seed``:
  names of nine locales, phones of their countries, notes that mention both), held in
  memory: ``GET /customers/{id}``, ``GET /customers?limit=&offset=``, and ``PUT
  /customers/{id}``, which answers 422 unless every saved field equals the customer's real
  value (so a save through tokenproxy proves its tokens were resolved);
- **the baseline**: the aiohttp pass-through proxy of ``loadtest/bench_http.py``;
- **tokenproxy**: ``tokenproxy serve`` on a generated config (routes for the three
  endpoints, the trusted identity header from 127.0.0.1, info-level JSON logs to a file),
  a fresh keyring under a fresh KEK, its state in a database of the embedded PostgreSQL.

Every request names an agent with the trusted header, as a support tool behind an
authenticating proxy does.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from loadtest.harness import (
    Env,
    LoadResult,
    LoadSpec,
    Scenario,
    Target,
    finish_wrk,
    free_port,
    python_argv,
    run_wrk,
    start_wrk,
    tokenproxy_argv,
    wrk_argv,
)

if TYPE_CHECKING:
    from proxy.demo.seed import Customer

WRK = Path(__file__).resolve().parent / "wrk"
CUSTOMERS = 10_000  # the customers a support desk works on (fits the token cache)
COLD_CUSTOMERS = 100_000
AGENT = "X-Authenticated-User: agent-1"
FIELDS = ("full_name", "phone", "notes")


# ----------------------------------------------------------------------- the upstream


def _record(c: Customer) -> dict[str, Any]:
    return {"id": c.id, "full_name": c.full_name, "phone": c.phone, "notes": c.notes,
            "email": c.email, "city": c.city}


async def serve_upstream(port: int, count: int) -> None:
    """The customer API of :mod:`loadtest.scenarios.http` on ``port``, until SIGTERM."""
    import orjson
    from aiohttp import web

    from loadtest.bench_http import _serve
    from proxy.demo.seed import generate

    people = generate(count)
    records = [_record(c) for c in people]
    bodies = [orjson.dumps(r) for r in records]
    saves = {"ok": 0, "wrong": 0}

    @functools.lru_cache(maxsize=512)
    def page(offset: int, limit: int) -> bytes:
        chunk = records[offset:offset + limit]
        return orjson.dumps({"customers": chunk, "count": len(chunk)})

    def index(request: web.Request) -> int | None:
        try:
            i = int(request.match_info["id"]) - 1
        except ValueError:
            return None
        return i if 0 <= i < count else None

    async def get_one(request: web.Request) -> web.Response:
        i = index(request)
        if i is None:
            return web.json_response({"error": "no such customer"}, status=404)
        return web.Response(body=bodies[i], content_type="application/json")

    async def get_list(request: web.Request) -> web.Response:
        try:
            limit = max(0, min(1000, int(request.query.get("limit", "20"))))
            offset = max(0, int(request.query.get("offset", "0")))
        except ValueError:
            return web.json_response({"error": "limit and offset are numbers"}, status=400)
        return web.Response(body=page(offset, limit), content_type="application/json")

    async def put_one(request: web.Request) -> web.Response:
        i = index(request)
        if i is None:
            return web.json_response({"error": "no such customer"}, status=404)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.json_response({"error": "not JSON"}, status=400)
        wrong = [k for k in FIELDS if k in body and body[k] != records[i][k]]
        if not isinstance(body, dict) or wrong:
            saves["wrong"] += 1  # field names only: never a value
            return web.json_response({"error": "not the stored values", "fields": wrong},
                                     status=422)
        saves["ok"] += 1
        return web.Response(body=orjson.dumps({"saved": i + 1}),
                            content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"saves": saves})

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/customers/{id}", get_one)
    app.router.add_put("/customers/{id}", put_one)
    app.router.add_get("/customers", get_list)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/health", health)
    await _serve(app, port)


# ------------------------------------------------------------------------ the stack


_ROUTE = """
[[http.routes]]
method = "{method}"
path = "{path}"
customer_id = "{cid}"
fields = [
  {{ path = "{p}full_name", kind = "name" }},
  {{ path = "{p}phone", kind = "phone" }},
  {{ path = "{p}notes", kind = "text" }},
]
"""


def config_toml(*, keys_dir: Path, dsn: str, listen: str, upstream: str, admin: str) -> str:
    """tokenproxy's config for the benchmarks: production defaults except the addresses."""
    routes = "".join(
        _ROUTE.format(method=m, path=p, cid=c, p=prefix)
        for m, p, c, prefix in (
            ("GET", "/customers/{id}", "$.id", "$."),
            ("PUT", "/customers/{id}", "$.id", "$."),
            ("GET", "/customers", "$.customers[*].id", "$.customers[*]."),
        )
    )
    return f"""# written by python -m loadtest, removed at exit
[keys]
dir = "{keys_dir}"

[database]
url = "{dsn}"
migrate_on_start = true

[identity]
trusted_header = "X-Authenticated-User"
trusted_peers = ["127.0.0.1/32", "::1/128"]

[http]
listen = "{listen}"
upstream = "{upstream}"
{routes}
[[http.routes]]
method = "GET"
path = "/health"
on_unparseable = "pass"

[admin]
listen = "{admin}"

[logging]
level = "info"
format = "json"
"""


class HttpStack:
    """The upstream, the pass-through proxy and tokenproxy, each in a process of its own."""

    def __init__(self, env: Env, name: str, customers: int) -> None:
        from proxy import keystore

        self.env, self.customers = env, customers
        self.dir = env.tmp / name
        self.dir.mkdir(mode=0o700)
        self.dsn = env.database(name.replace("-", "_"))
        self.keys_dir = self.dir / "keys"
        self.kek_file = self.dir / "kek"
        kek = keystore.generate_kek()
        keystore.init_keyring(self.keys_dir, kek)
        keystore.write_kek_file(self.kek_file, kek, keys_dir=self.keys_dir)
        up, pt, tp, admin = free_port(), free_port(), free_port(), free_port()
        self.upstream_url = f"http://127.0.0.1:{up}"
        self.passthrough_url = f"http://127.0.0.1:{pt}"
        self.tokenproxy_url = f"http://127.0.0.1:{tp}"
        self.admin_url = f"http://127.0.0.1:{admin}"
        self.config = self.dir / "tokenproxy.toml"
        self.config.write_text(config_toml(
            keys_dir=self.keys_dir, dsn=self.dsn, listen=f"127.0.0.1:{tp}",
            upstream=self.upstream_url, admin=f"127.0.0.1:{admin}",
        ))
        self.upstream = env.spawn(f"{name}-upstream",
                                  python_argv("_serve", "upstream", str(up), str(customers)),
                                  role="other")
        self.passthrough = env.spawn(
            f"{name}-pass-through",
            python_argv("_serve", "passthrough", str(pt), self.upstream_url), role="proxy",
        )
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TOKENPROXY_")}
        self.tokenproxy = env.spawn(
            f"{name}-tokenproxy",
            tokenproxy_argv("serve", "--config", str(self.config), "--kek-file",
                            str(self.kek_file)),
            role="proxy",
            environ={**clean, "TOKENPROXY_COOKIE_SECRET": secrets.token_urlsafe(32)},
        )
        self.upstream.wait_ready(self.upstream_url + "/customers/1")
        self.passthrough.wait_ready(self.passthrough_url + "/customers/1")
        self.wait_tokenproxy()

    def wait_tokenproxy(self) -> None:
        """Until the admin API says ready with the store up, and a lookup answers."""
        self.tokenproxy.wait_ready(
            self.admin_url + "/readyz", accept=lambda b: json.loads(b).get("store") == "ok"
        )
        self.tokenproxy.wait_ready(self.tokenproxy_url + "/customers/1")

    def prime(self) -> None:
        """Every customer once through tokenproxy, a list page of 1,000 at a time: a warm
        token cache (and registry), as a proxy that has served the desk for a while has."""
        for offset in range(0, self.customers, 1000):
            self.get(f"/customers?limit=1000&offset={offset}")

    def targets(self) -> tuple[Target, Target]:
        return (Target("pass-through", self.passthrough_url, self.passthrough),
                Target("tokenproxy", self.tokenproxy_url, self.tokenproxy))

    def get(self, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """A JSON GET through tokenproxy (or of the upstream with a full URL)."""
        url = path if path.startswith("http") else self.tokenproxy_url + path
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=30) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def tokenproxy_cli(self, *args: str, stdin: str = "") -> str:
        """Run a ``tokenproxy`` command on this stack's keys (bounded)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENPROXY_")}
        done = subprocess.run(
            tokenproxy_argv(*args, "--keys", str(self.keys_dir), "--kek-file",
                            str(self.kek_file)),
            input=stdin, capture_output=True, text=True, timeout=120, env=env, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"tokenproxy {args[0]} failed: {done.stderr.strip()[-500:]}")
        return done.stdout


class HttpScenario(Scenario):
    """One HTTP pair on a fresh :class:`HttpStack`; subclasses say what load to drive."""

    customers: ClassVar[int] = CUSTOMERS
    path: ClassVar[str] = "/"
    script: ClassVar[str | None] = None
    prime: ClassVar[bool] = False  # every customer through tokenproxy once before warm-up

    def setup(self, env: Env) -> None:
        self.env = env
        self.stack = HttpStack(env, self.name, self.customers)
        if self.prime:
            self.stack.prime()

    def targets(self) -> tuple[Target, Target]:
        return self.stack.targets()

    def script_args(self, target: Target, spec: LoadSpec) -> list[str]:
        return []

    def wrk(self, target: Target, spec: LoadSpec) -> list[str]:
        return wrk_argv(
            self.env, target.url + self.path, spec,
            script=WRK / self.script if self.script else None,
            script_args=self.script_args(target, spec), headers=[AGENT],
        )

    def load(self, target: Target, spec: LoadSpec) -> LoadResult:
        return finish_wrk(start_wrk(self.wrk(target, spec)), spec)


class HttpRecord(HttpScenario):
    name = "http-record"
    summary = "one customer record, again and again (GET /customers/1001)"
    path = "/customers/1001"


class HttpList(HttpScenario):
    name = "http-list"
    summary = "a list of 1,000 records (GET /customers?limit=1000)"
    path = "/customers?limit=1000"


class HttpMixed(HttpScenario):
    """90% lookups, 8% list pages, 2% saves; 5% of requests cite a valid ticket."""

    name = "http-mixed"
    summary = ("mixed support workload: 90% lookups, 8% list pages of 50, 2% saves;"
               " 5% with a valid ticket")
    script = "mixed.lua"
    prime = True
    TICKETS = 20
    PER_TICKET = 5

    def setup(self, env: Env) -> None:
        super().setup(env)
        lines = asyncio.run(self._open_tickets())
        self.tickets_file = self.stack.dir / "tickets.txt"
        self.tickets_file.write_text("".join(f"{a} {t} {c}\n" for a, t, c in lines))
        agent, ticket, customer = lines[0]
        seen = {
            "cited": self.stack.get(f"/customers/{customer}",
                                    {"X-Authenticated-User": agent, "X-Ticket-Id": ticket}),
            "plain": self.stack.get(f"/customers/{customer}", {"X-Authenticated-User": agent}),
            "real": self.stack.get(f"{self.stack.upstream_url}/customers/{customer}"),
        }
        revealed = seen["cited"]["full_name"] == seen["real"]["full_name"]
        tokenized = seen["plain"]["full_name"] != seen["real"]["full_name"]
        if not (revealed and tokenized):
            raise SystemExit(f"{self.name}: a ticket does not reveal (revealed {revealed},"
                             f" tokenized without {tokenized}): the workload would be wrong")
        self.notes["tickets"] = f"{self.TICKETS} open, {self.PER_TICKET} customers each"

    async def _open_tickets(self) -> list[tuple[str, str, int]]:
        from proxy.store import admin_ops
        from proxy.store.db import connect_pool

        lines: list[tuple[str, str, int]] = []
        pool = await connect_pool(self.stack.dsn, min_size=1, max_size=2)
        try:
            for t in range(self.TICKETS):
                agent, ticket = f"agent-{t + 1}", f"LT-{t + 1}"
                ids = [1 + (t * self.PER_TICKET + j) * 97 % self.customers
                       for j in range(self.PER_TICKET)]
                await admin_ops.tickets_add(pool, ticket_id=ticket, agent=agent,
                                            customer_ids=ids, out=io.StringIO())
                lines += [(agent, ticket, i) for i in ids]
        finally:
            await pool.close()
        return lines

    def script_args(self, target: Target, spec: LoadSpec) -> list[str]:
        return [str(self.customers), str(self.tickets_file), str(spec.round + 1)]

    def check(self) -> list[str]:
        saves = self.stack.get(self.stack.upstream_url + "/_stats")["saves"]
        reveals = asyncio.run(self._audited_reveals())
        self.notes["saves checked by the upstream"] = f"{saves['ok']} right, {saves['wrong']} wrong"
        self.notes["reveals in the audit log"] = reveals
        problems = []
        if saves["wrong"]:
            problems.append(f"{saves['wrong']} saves stored other values than the real ones")
        if not saves["ok"]:
            problems.append("no save reached the upstream")
        if not reveals:
            problems.append("no reveal was audited: the ticketed requests revealed nothing")
        return problems

    async def _audited_reveals(self) -> int:
        import asyncpg

        conn = await asyncpg.connect(self.stack.dsn, timeout=10)
        try:
            n: int = await conn.fetchval(
                "SELECT count(*) FROM audit_log WHERE ticket IS NOT NULL")
            return n
        finally:
            await conn.close()


class HttpCold(HttpScenario):
    """Both proxies restarted before every round: an empty token cache; each request of
    tokenproxy's rounds a customer it has not seen (disjoint id ranges per round)."""

    name = "http-cold"
    summary = ("cold start: restarted, empty token cache, each request a different one of"
               " 100,000 customers")
    customers = COLD_CUSTOMERS
    script = "walk.lua"
    sweep = False
    warm_up = False

    def before_round(self, target: Target, spec: LoadSpec) -> None:
        target.proc.restart()
        if target.name == "tokenproxy":
            self.stack.wait_tokenproxy()
        else:
            target.proc.wait_ready(target.url + "/health")

    def script_args(self, target: Target, spec: LoadSpec) -> list[str]:
        span = self.customers // max(1, self.options.rounds)
        return [str(1 + spec.round * span), str(span)]


class HttpRotation(HttpScenario):
    """A data-key rotation in the middle of every tokenproxy round: ``tokenproxy keys
    rotate``, then SIGHUP. Afterwards: no request failed, and a sample of the responses
    (every 20th) each resolves to its customer's real values under one key version."""

    name = "http-rotation"
    summary = "key rotation (keys rotate + SIGHUP) in the middle of the run, random lookups"
    script = "lookups.lua"
    prime = True
    sweep = False
    SAMPLE_EVERY = 20
    CHECK_AT_MOST = 300

    def setup(self, env: Env) -> None:
        super().setup(env)
        self.samples = self.stack.dir / "samples.jsonl"
        self.rotations: list[dict[str, Any]] = []

    def script_args(self, target: Target, spec: LoadSpec) -> list[str]:
        sample = (str(self.samples) if target.name == "tokenproxy" and spec.phase == "round"
                  else "-")
        return [str(self.customers), sample, str(self.SAMPLE_EVERY), str(spec.round + 1)]

    def load(self, target: Target, spec: LoadSpec) -> LoadResult:
        if target.name != "tokenproxy" or spec.phase != "round":
            return super().load(target, spec)
        began = time.monotonic()
        wrk = start_wrk(self.wrk(target, spec))
        try:
            time.sleep(spec.duration / 2)
            out = self.stack.tokenproxy_cli("keys", "rotate")
            version = int(out.split("v", 1)[1].split()[0])
            self.stack.tokenproxy.signal(signal.SIGHUP)
            self.stack.tokenproxy.wait_ready(
                self.stack.admin_url + "/readyz", timeout=10,
                accept=lambda b: json.loads(b)["keyring"]["active"] == version,
            )
            self.rotations.append({"version": version,
                                   "at_s": round(time.monotonic() - began, 2)})
        except BaseException:
            wrk.kill()
            wrk.communicate(timeout=15)
            raise
        return finish_wrk(wrk, spec)

    def check(self) -> list[str]:
        problems: list[str] = []
        lines = self.samples.read_text().splitlines() if self.samples.exists() else []
        step = max(1, -(-len(lines) // self.CHECK_AT_MOST))  # spread over every round
        records = [json.loads(line) for line in lines[::step]][: self.CHECK_AT_MOST]
        if not records:
            return ["no response was sampled"]
        versions = asyncio.run(self._versions(records))
        mixed, by_version = 0, dict[int, int]()
        for r in records:
            common = (versions.get(("name", r["full_name"]), set())
                      & versions.get(("phone", r["phone"]), set()))
            if not common:
                mixed += 1
            for v in common:
                by_version[v] = by_version.get(v, 0) + 1
        from proxy.demo.seed import generate

        real = {c.id: c for c in generate(self.customers)}
        wrong = 0
        for kind, field in (("name", "full_name"), ("phone", "phone")):
            values = self.stack.tokenproxy_cli(
                "detokenize", "--kind", kind, "--database", self.stack.dsn,
                stdin="".join(r[field] + "\n" for r in records),
            ).splitlines()
            wrong += sum(v != getattr(real[r["id"]], field)
                         for r, v in zip(records, values, strict=True))
        self.notes["rotations"] = ", ".join(f"v{r['version']} at {r['at_s']} s"
                                            for r in self.rotations)
        self.notes["sampled responses checked"] = (
            f"{len(records)}: by key version {dict(sorted(by_version.items()))},"
            f" {mixed} mixing versions, {wrong} fields resolving to another value")
        if mixed:
            problems.append(f"{mixed} sampled responses mix key versions")
        if wrong:
            problems.append(f"{wrong} sampled tokens resolve to another customer's values")
        if len(by_version) < 2:
            problems.append("the samples do not span the rotation (one key version only)")
        return problems

    async def _versions(self, records: list[dict[str, Any]]) -> dict[tuple[str, str], set[int]]:
        import asyncpg

        kinds = ["name"] * len(records) + ["phone"] * len(records)
        tokens = [r["full_name"] for r in records] + [r["phone"] for r in records]
        conn = await asyncpg.connect(self.stack.dsn, timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT kind, token, version FROM token_registry"
                " WHERE (kind, token) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
                kinds, tokens)
        finally:
            await conn.close()
        out: dict[tuple[str, str], set[int]] = {}
        for row in rows:
            out.setdefault((row["kind"], row["token"]), set()).add(row["version"])
        return out


SCENARIOS: tuple[type[Scenario], ...] = (HttpRecord, HttpList, HttpMixed, HttpCold,
                                         HttpRotation)
__all__ = ["SCENARIOS", "HttpStack", "run_wrk", "serve_upstream"]
