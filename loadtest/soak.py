"""``python -m loadtest soak``: the mixed support workload under faults, then the checks.

Starts on 127.0.0.1: an embedded PostgreSQL for tokenproxy's state (durable, restarted by
the fault schedule), a second one holding the customer database (the PostgreSQL front
end's upstream, and the store of the upstream API; never restarted, so that restarting the
state database is a fault of tokenproxy's own store alone), the upstream customer API over that
database (:mod:`loadtest.soak_upstream`, its own process, restarted by the schedule) and
``tokenproxy serve`` with HTTP and ``[pg]`` on a fresh keyring.

The workload: HTTP clients (90% lookups, 8% list pages of 50, 2% saves of loaded records
with their tokens; 5% of all requests cite a valid ticket) and PostgreSQL clients (asyncpg:
point selects, list pages, saves by ``UPDATE`` with the tokens read, 5% citing a ticket by
``/*ticket='...'*/``). Each client talks through its own recording tap
(:class:`~loadtest.soak_wire.Tap`) that scans every byte against the seed; fault clients
scan what they read themselves. The schedule cycles: malformed HTTP requests, HTTP clients
killed mid-list, a key rotation (SIGHUP or ``POST /keyring/reload``, alternately), an
upstream restart, malformed PostgreSQL messages, PostgreSQL clients killed mid-result, a
ticket closed mid-session (then probed: it must not reveal), a state-database restart (fast
and immediate, alternately), a state database frozen (SIGSTOP) for 5 s.

Phases: warm-up (no faults; the RSS and fd baseline), faults, cool-down (no faults; the final
RSS and fds). Errors are acceptable only from an upstream or state-database restart until
:data:`GRACE` seconds after it came back (HTTP 502/503/504, connection errors, SQLSTATE
57P03/08xxx), and a save refused after the key rotation because a token it sends back was
issued under both keys for different values (:data:`AMBIGUOUS`, counted apart); any other
error counts as unexpected. A response with raw values outside a valid ticket is never
acceptable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtest import procstat
from loadtest.harness import Env, Proc, free_port, tokenproxy_argv
from loadtest.soak_seed import Hit, Scanner, generate
from loadtest.soak_wire import (
    MALFORMED_HTTP,
    MALFORMED_PG,
    Tap,
    abort,
    pg_ready,
    query,
    read_some,
)

if TYPE_CHECKING:
    import aiohttp
    import asyncpg

    from proxy.embedded_pg import EmbeddedPostgres

CUSTOMERS = 1000
HTTP_CLIENTS = 4
PG_CLIENTS = 2
SAVERS = HTTP_CLIENTS + PG_CLIENTS  # customer c is saved only by client c % SAVERS
TICKET_SHARE = 0.05
GRACE = 15.0  # seconds after a restart during which errors are acceptable
REQUEST_TIMEOUT = 20.0
RSS_SLACK_MIB, RSS_SLACK_SHARE = 48.0, 0.30  # final RSS <= warm + max(48 MiB, 30%)
FD_SLACK = 16
SAMPLE_EVERY = 2.0
FAULTS = ("malformed-http", "kill-http", "rotate-keys", "restart-upstream", "malformed-pg",
          "kill-pg", "close-ticket", "restart-state-db", "pause-state-db")
RESTARTS = ("restart-upstream", "restart-state-db", "pause-state-db")
ACCEPTABLE = ("http-502", "http-503", "http-504", "http-conn", "pg-57P03", "pg-conn",
              "pg-08006", "pg-08001", "pg-57P01")
# After a rotation the new key's token of one value may be the old key's token of another
# (FF1 under two keys: two permutations of one domain; one rotation in 10 to 30 here, by a
# phone). The value then takes its version's alternate token; only a token issued where
# the old one could not be seen (the state database away) stays ambiguous, and a save
# that sends it back is refused, never guessed: fail closed, counted apart.
AMBIGUOUS = "-ambiguous-token"
COLS = "id, full_name, phone, notes, email, city"
SELECT_ONE = f"SELECT {COLS} FROM customers WHERE id = $1"
SELECT_PAGE = f"SELECT {COLS} FROM customers ORDER BY id LIMIT 50 OFFSET $1"
UPDATE = "UPDATE customers SET full_name = $1, phone = $2, notes = $3, city = $4 WHERE id = $5"


@dataclass
class Ticket:
    id: str
    agent: str
    customers: frozenset[int]
    front: str  # "http" or "pg"
    closed: bool = False  # set when the close was answered: no reveal from then on


@dataclass
class Edit:
    value: str
    ok: bool  # answered as saved; otherwise it may or may not have been stored


@dataclass
class Row:
    check: str
    ok: bool | None  # None: information, not a check
    detail: str


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    reveals: Counter[tuple[str, int]] = field(default_factory=Counter)
    reveal_at: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    ticketed_tokenized: int = 0
    revealed_after_close: int = 0
    probes_after_close: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    fault_failures: list[str] = field(default_factory=list)
    fault_log: list[str] = field(default_factory=list)
    windows: list[tuple[float, float]] = field(default_factory=list)
    rotated: bool = False  # a key rotation has begun
    ambiguous: int = 0  # tokens refused as ambiguous after it
    samples: list[tuple[float, str, int, int]] = field(default_factory=list)
    fuzz_answers: Counter[str] = field(default_factory=Counter)


class Soak:
    """One soak run: :meth:`setup`, :meth:`workload`, :meth:`checks`, :meth:`close`."""

    state_durable = True  # fsync and synchronous_commit on the state database

    def __init__(self, *, duration: float, quick: bool, seed: int = 1) -> None:
        self.duration, self.quick = duration, quick
        self.warm = max(4.0, duration * 0.12)
        self.cool = max(5.0, duration * 0.15)
        self.outage = min(3.0, duration / 20)  # seconds the state database stays down
        self.freeze = min(5.0, duration / 10)  # seconds it stays frozen
        self.rng = random.Random(seed)
        self.customers = generate(CUSTOMERS)
        self.by_id = {c.id: c for c in self.customers}
        self.scanner = Scanner(self.customers)
        self.stats = Stats()
        self.edits: dict[int, list[Edit]] = {}
        self.tickets: list[Ticket] = []
        self.closed: list[Ticket] = []
        self._ticket_n = 0
        self.env = Env(quick=quick)
        self.state_pg: EmbeddedPostgres | None = None
        self.cust_pg: EmbeddedPostgres | None = None
        self.procs: dict[str, Proc] = {}
        self.started = 0.0
        self.fault_end = 0.0
        self.end = 0.0
        self.faults_done = False

    # ------------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Both PostgreSQL servers, the seed, keys, config, upstream and tokenproxy."""
        from proxy import keystore
        from proxy.embedded_pg import EmbeddedPostgres

        d = self.env.tmp / "soak"
        d.mkdir(mode=0o700)
        # durable: a reveal's audit row is committed before the bytes leave, and a commit
        # of a non-durable server (synchronous_commit off) is lost in a crash-like restart
        self.state_pg = EmbeddedPostgres(durable=self.state_durable).start()
        self.state_dsn = self.state_pg.create_database("tokenproxy_state")
        self.cust_pg = EmbeddedPostgres().start()
        self.cust_dsn = self.cust_pg.create_database("customers")
        roles = [f"soak_pg{i + 1}" for i in range(PG_CLIENTS + 1)]
        self.cust_pg.psql("".join(f"CREATE ROLE {r} LOGIN;" for r in roles))
        asyncio.run(self._seed(roles))
        self.keys_dir, self.kek_file = d / "keys", d / "kek"
        kek = keystore.generate_kek()
        keystore.init_keyring(self.keys_dir, kek)
        keystore.write_kek_file(self.kek_file, kek, keys_dir=self.keys_dir)
        up, http, admin, pg = free_port(), free_port(), free_port(), free_port()
        self.upstream_url = f"http://127.0.0.1:{up}"
        self.http_port, self.pg_port = http, pg
        self.admin_url = f"http://127.0.0.1:{admin}"
        self.admin_token = secrets.token_urlsafe(32)
        config = d / "tokenproxy.toml"
        config.write_text(self._config(http, admin, pg))
        self.procs["upstream"] = self.env.spawn(
            "soak-upstream", [sys.executable, "-m", "loadtest.soak_upstream", str(up),
                              self.cust_dsn], role="other")
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TOKENPROXY_")}
        self.procs["tokenproxy"] = self.env.spawn(
            "soak-tokenproxy",
            tokenproxy_argv("serve", "--config", str(config), "--kek-file", str(self.kek_file)),
            role="proxy",
            environ={**clean, "TOKENPROXY_COOKIE_SECRET": secrets.token_urlsafe(32)},
        )
        self.procs["upstream"].wait_ready(self.upstream_url + "/health")
        self.procs["tokenproxy"].wait_ready(
            self.admin_url + "/readyz", accept=lambda b: json.loads(b).get("store") == "ok")
        self.procs["tokenproxy"].wait_ready(f"http://127.0.0.1:{http}/customers/1")

    async def _seed(self, roles: list[str]) -> None:
        import asyncpg

        from proxy.demo.seed import SCHEMA

        conn = await asyncpg.connect(self.cust_dsn, timeout=30)
        try:
            await conn.execute(SCHEMA)
            await conn.copy_records_to_table(
                "customers", records=[c.row() for c in self.customers],
                columns=["id", "full_name", "phone", "notes", "email", "city"])
            await conn.execute(f"GRANT SELECT, UPDATE ON customers TO {', '.join(roles)}")
        finally:
            await conn.close()

    def _config(self, http: int, admin: int, pg: int) -> str:
        from urllib.parse import urlsplit

        from loadtest.scenarios.http import config_toml

        text = config_toml(keys_dir=self.keys_dir, dsn=self.state_dsn,
                           listen=f"127.0.0.1:{http}", upstream=self.upstream_url,
                           admin=f"127.0.0.1:{admin}")
        digest = hashlib.sha256(self.admin_token.encode()).hexdigest()
        marker = f'listen = "127.0.0.1:{admin}"\n'
        assert marker in text
        tokens = f'tokens = [{{ name = "soak", sha256 = "{digest}" }}]\n'
        text = text.replace(marker, marker + tokens)
        u = urlsplit(self.cust_dsn)
        return text + f"""
[pg]
enabled = true
listen = "127.0.0.1:{pg}"
upstream = "{u.hostname}:{u.port}"
catalog_user = "{u.username}"

[[pg.tables]]
table = "public.customers"
customer_id = "id"
columns = {{ full_name = "name", phone = "phone", notes = "text" }}
"""

    def keep_logs(self) -> Path:
        """Copy the processes' logs out of the temporary directory (before :meth:`close`)."""
        import shutil
        import tempfile

        dest = Path(tempfile.mkdtemp(prefix="tokenproxy-soak-logs-"))
        for log in self.env.tmp.glob("*.log"):
            shutil.copy(log, dest / log.name)
        for pg, name in ((self.state_pg, "state-pg"), (self.cust_pg, "customer-pg")):
            with contextlib.suppress(Exception):
                if pg is not None:
                    shutil.copy(pg.log_path, dest / f"{name}.log")
        return dest

    def close(self) -> None:
        self.env.stop_all()
        for pg in (self.state_pg, self.cust_pg):
            if pg is not None:
                pg.stop()
        self.env.close()

    # ----------------------------------------------------------------------- helpers

    def now(self) -> float:
        return time.monotonic() - self.started

    def phase(self) -> str:
        if self.now() < self.warm:
            return "warm"
        return "cool" if self.faults_done else "faults"

    def report(self, hits: list[Hit]) -> None:
        self.stats.hits.extend(hits)

    def error(self, kind: str) -> None:
        """Count an error; unexpected unless acceptable and inside a restart's window, or
        a token refused as ambiguous after a key rotation (`AMBIGUOUS`)."""
        self.stats.errors[kind] += 1
        if kind.endswith(AMBIGUOUS) and self.stats.rotated:
            self.stats.ambiguous += 1
            return
        t = self.now()
        in_window = any(a - 1.0 <= t <= b + GRACE for a, b in self.stats.windows)
        if not (in_window and (kind in ACCEPTABLE or kind.startswith("pg-57P"))):
            self.stats.unexpected[kind] += 1

    def http_error(self, resp: Any) -> None:
        """`error` for an HTTP answer; a refusal below 500 names the proxy's error code
        (`http-409-stale-token`), so that a failed run says which one it was."""
        code = resp.headers.get("X-Tokenproxy-Error", "") if resp.status < 500 else ""
        self.error(f"http-{resp.status}" + (f"-{code}" if code else ""))

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        def call() -> tuple[int, Any]:
            data = None if body is None else json.dumps(body).encode()
            req = urllib.request.Request(
                self.admin_url + path, data=data, method=method,
                headers={"Authorization": f"Bearer {self.admin_token}",
                         "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=15) as resp:
                    return resp.status, json.loads(resp.read() or b"null")
            except urllib.error.HTTPError as e:
                return e.code, None
            except OSError:
                return 0, None

        return await asyncio.to_thread(call)

    async def open_ticket(self, front: str, agent: str) -> Ticket | None:
        """A new open ticket for three customers (bounded retries while the store is away)."""
        self._ticket_n += 1
        tid = f"SOAK-{self._ticket_n}"
        customers = frozenset(self.rng.sample(range(1, CUSTOMERS + 1), 3))
        expires = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        for _ in range(30):
            status, _ = await self.admin("PUT", f"/tickets/{tid}", {
                "agent": agent, "customer_ids": sorted(customers), "status": "open",
                "expires_at": expires})
            if status in (200, 201):
                ticket = Ticket(tid, agent, customers, front)
                self.tickets.append(ticket)
                return ticket
            await asyncio.sleep(1.0)
        self.stats.fault_failures.append(f"ticket {tid} could not be opened")
        return None

    def pick_ticket(self, front: str, agent: str | None = None) -> Ticket | None:
        """An open ticket of this front end (and agent), or now and then a closed one."""
        pool = [t for t in self.tickets if t.front == front and not t.closed
                and agent in (None, t.agent)]
        closed = [t for t in self.closed if t.front == front and agent in (None, t.agent)]
        if closed and (not pool or self.rng.random() < 0.1):
            return self.rng.choice(closed)
        return self.rng.choice(pool) if pool else None

    def note_reveal(self, ticket: Ticket, allowed: frozenset[int], cid: int,
                    name: str | None) -> None:
        """Count a ticketed answer: a reveal (for the audit check) or tokens."""
        if name == self.by_id[cid].full_name:
            if not allowed:
                self.stats.revealed_after_close += 1
            else:
                self.stats.reveals[(ticket.id, cid)] += 1
                self.stats.reveal_at.setdefault((ticket.id, cid), []).append(self.now())
        elif allowed:
            self.stats.ticketed_tokenized += 1

    def save_value(self, cid: int, who: str) -> str:
        n = len(self.edits.setdefault(cid, []))
        return f"Town-{cid}-{who}-{n}"

    # ---------------------------------------------------------------------- workload

    async def workload(self) -> None:
        """Clients, the sampler and the fault schedule, until the end (bounded)."""
        import aiohttp

        for i in range(6):
            await self.open_ticket("http", f"agent-{i + 1}")
        for i in range(PG_CLIENTS):
            await self.open_ticket("pg", f"soak_pg{i + 1}")
        self.started = time.monotonic()
        self.fault_end = self.duration - self.cool
        self.end = self.duration
        taps: list[Tap] = []
        try:
            async with aiohttp.ClientSession() as probe:
                self.probe_session = probe
                await self._prime(taps)
                tasks = [asyncio.create_task(self.http_client(i, taps))
                         for i in range(HTTP_CLIENTS)]
                tasks += [asyncio.create_task(self.pg_client(i, taps))
                          for i in range(PG_CLIENTS)]
                tasks.append(asyncio.create_task(self.sampler()))
                await self.faults()
                hard_stop = time.monotonic() + self.duration * 3 + 600
                await asyncio.wait_for(asyncio.gather(*tasks),
                                       max(1.0, hard_stop - time.monotonic()))
        finally:
            for tap in taps:
                await tap.close()

    async def _prime(self, taps: list[Tap]) -> None:
        """Every customer once through tokenproxy (list pages of 1,000): a warm cache."""
        import aiohttp

        tap = await Tap("prime", ("127.0.0.1", self.http_port), self.scanner,
                        self.report).start()
        taps.append(tap)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{tap.port}") as s:
            for offset in range(0, CUSTOMERS, 1000):
                async with s.get(f"/customers?limit=1000&offset={offset}",
                                 headers={"X-Authenticated-User": "agent-prime"}) as r:
                    await r.read()
        tap.flush()

    def running(self) -> bool:
        return not self.faults_done or self.now() < self.end

    async def http_client(self, i: int, taps: list[Tap]) -> None:
        """One support tool: sequential requests through its own tap until the end."""
        import aiohttp

        tap = await Tap(f"http-{i}", ("127.0.0.1", self.http_port), self.scanner,
                        self.report).start()
        taps.append(tap)
        rng = random.Random(100 + i)
        kept: dict[int, dict[str, Any]] = {}
        agent = {"X-Authenticated-User": f"agent-{i + 1}"}
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        conn = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{tap.port}", connector=conn,
                                         timeout=timeout) as s:
            for _ in range(10_000_000):
                if not self.running():
                    break
                r = rng.random()
                try:
                    if r < TICKET_SHARE:
                        await self._http_ticketed(s, tap)
                    elif r < 0.90:
                        cid = rng.randint(1, CUSTOMERS)
                        tap.allow(frozenset())
                        rec = await self._http_get(s, f"/customers/{cid}", agent, "lookup")
                        if rec is not None and cid % SAVERS == i:
                            kept[cid] = rec
                    elif r < 0.98 or not kept:
                        tap.allow(frozenset())
                        page = rng.randint(0, CUSTOMERS // 50 - 1)
                        await self._http_get(s, f"/customers?limit=50&offset={page * 50}",
                                             agent, "list")
                    else:
                        await self._http_save(s, tap, kept, rng, agent, i)
                except (aiohttp.ClientError, TimeoutError, OSError):
                    self.error("http-conn")
                    await asyncio.sleep(0.2)
            tap.flush()

    async def _http_get(self, s: aiohttp.ClientSession, path: str, headers: dict[str, str],
                        what: str) -> dict[str, Any] | None:
        self.stats.requests[f"http {what}"] += 1
        async with s.get(path, headers=headers) as resp:
            body = await resp.read()
            if resp.status != 200:
                self.http_error(resp)
                return None
        data: dict[str, Any] = json.loads(body)
        return data

    async def _http_ticketed(self, s: aiohttp.ClientSession, tap: Tap) -> None:
        ticket = self.pick_ticket("http")
        if ticket is None:
            return
        cid = self.rng.choice(sorted(ticket.customers))
        allowed = frozenset() if ticket.closed else ticket.customers
        tap.allow(allowed)
        rec = await self._http_get(s, f"/customers/{cid}", {
            "X-Authenticated-User": ticket.agent, "X-Ticket-Id": ticket.id}, "ticketed lookup")
        if rec is not None:
            self.note_reveal(ticket, allowed, cid, rec.get("full_name"))

    async def _http_save(self, s: aiohttp.ClientSession, tap: Tap,
                         kept: dict[int, dict[str, Any]], rng: random.Random,
                         agent: dict[str, str], i: int) -> None:
        cid = rng.choice(sorted(kept))
        rec = dict(kept.pop(cid))
        tap.allow(frozenset())
        value = self.save_value(cid, f"h{i}")
        rec["city"] = value
        edit = Edit(value, ok=False)
        self.edits[cid].append(edit)
        self.stats.requests["http save"] += 1
        async with s.put(f"/customers/{cid}", json=rec,
                         headers={**agent, "Content-Type": "application/json"}) as resp:
            await resp.read()
            if resp.status == 200:
                edit.ok = True
            else:
                self.http_error(resp)

    async def pg_client(self, i: int, taps: list[Tap]) -> None:
        """One SQL client as role soak_pg{i+1}, through its own tap, reconnecting as needed."""
        import asyncpg

        tap = await Tap(f"pg-{i}", ("127.0.0.1", self.pg_port), self.scanner,
                        self.report).start()
        taps.append(tap)
        rng = random.Random(200 + i)
        role = f"soak_pg{i + 1}"
        kept: dict[int, asyncpg.Record] = {}
        conn: asyncpg.Connection | None = None
        for _ in range(10_000_000):
            if not self.running():
                break
            try:
                if conn is None or conn.is_closed():
                    tap.allow(frozenset())
                    conn = await asyncpg.connect(host="127.0.0.1", port=tap.port, user=role,
                                                 database="customers", timeout=10)
                await self._pg_step(conn, tap, rng, kept, HTTP_CLIENTS + i, role)
            except asyncpg.PostgresError as e:
                ambiguous = "two key versions for different values" in str(e)
                self.error(f"pg-{e.sqlstate}" + (AMBIGUOUS if ambiguous else ""))
                await asyncio.sleep(0.1)
            except (OSError, TimeoutError, asyncpg.InterfaceError, ConnectionError):
                self.error("pg-conn")
                if conn is not None:
                    conn.terminate()
                conn = None
                await asyncio.sleep(0.5)
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
        tap.flush()

    async def _pg_step(self, conn: asyncpg.Connection, tap: Tap, rng: random.Random,
                       kept: dict[int, asyncpg.Record], saver: int, role: str) -> None:
        r = rng.random()
        if r < TICKET_SHARE:
            ticket = self.pick_ticket("pg", role)
            if ticket is None:
                return
            cid = self.rng.choice(sorted(ticket.customers))
            allowed = frozenset() if ticket.closed else ticket.customers
            tap.allow(allowed)
            self.stats.requests["pg ticketed select"] += 1
            row = await conn.fetchrow(SELECT_ONE + f" /*ticket='{ticket.id}'*/", cid,
                                      timeout=REQUEST_TIMEOUT)
            if row is not None:
                self.note_reveal(ticket, allowed, cid, row["full_name"])
        elif r < 0.90:
            cid = rng.randint(1, CUSTOMERS)
            tap.allow(frozenset())
            self.stats.requests["pg select"] += 1
            row = await conn.fetchrow(SELECT_ONE, cid, timeout=REQUEST_TIMEOUT)
            if row is not None and cid % SAVERS == saver:
                kept[cid] = row
        elif r < 0.98 or not kept:
            tap.allow(frozenset())
            self.stats.requests["pg list"] += 1
            await conn.fetch(SELECT_PAGE, rng.randint(0, CUSTOMERS // 50 - 1) * 50,
                             timeout=REQUEST_TIMEOUT)
        else:
            cid = rng.choice(sorted(kept))
            row = kept.pop(cid)
            tap.allow(frozenset())
            value = self.save_value(cid, f"p{saver}")
            edit = Edit(value, ok=False)
            self.edits[cid].append(edit)
            self.stats.requests["pg save"] += 1
            status = await conn.execute(UPDATE, row["full_name"], row["phone"], row["notes"],
                                        value, cid, timeout=REQUEST_TIMEOUT)
            edit.ok = status == "UPDATE 1"

    async def sampler(self) -> None:
        """tokenproxy's RSS and open fds every :data:`SAMPLE_EVERY` seconds."""
        pid = self.procs["tokenproxy"].pid
        for _ in range(1_000_000):
            if not self.running():
                break
            with contextlib.suppress(OSError):
                self.stats.samples.append((self.now(), self.phase(), procstat.rss_kib(pid),
                                           procstat.open_fds(pid)))
            await asyncio.sleep(SAMPLE_EVERY)

    # ------------------------------------------------------------------------ faults

    async def faults(self) -> None:
        """The schedule: every kind at least once, spread over the fault phase."""
        await asyncio.sleep(max(0.0, self.warm - self.now()))
        span = self.fault_end - self.warm
        cycles = max(1, int(span // (len(FAULTS) * 12.0)))  # a fault every ~12 s at most
        plan = [kind for _ in range(cycles) for kind in FAULTS]
        every = span / len(plan)
        for n, kind in enumerate(plan):
            await asyncio.sleep(max(0.0, self.warm + n * every - self.now()))
            began = self.now()
            try:
                await asyncio.wait_for(self._fault(kind, n), 180)
            except Exception as e:
                self.stats.fault_failures.append(f"{kind} at {began:.0f} s: {type(e).__name__}"
                                                 f" {str(e)[:200]}")
            self.stats.faults[kind] += 1
            self.stats.fault_log.append(f"{began:6.1f}-{self.now():6.1f} s {kind}")
            print(f"  fault {n + 1}/{len(plan)} {kind} at {began:.1f} s,"
                  f" {self.now() - began:.1f} s", file=sys.stderr)
        # the cool-down runs after the last fault, however late it finished
        self.end = max(self.duration, self.now() + self.cool)
        self.faults_done = True

    async def _fault(self, kind: str, n: int) -> None:
        if kind in RESTARTS:
            window = (self.now(), float("inf"))
            self.stats.windows.append(window)
            idx = len(self.stats.windows) - 1
            try:
                if kind == "restart-upstream":
                    await asyncio.to_thread(self._restart_upstream)
                elif kind == "pause-state-db":
                    await self._pause_state_db()
                else:
                    await self._restart_state_db(n)
            finally:
                self.stats.windows[idx] = (window[0], self.now())
        elif kind == "malformed-http":
            await self._malformed_http()
        elif kind == "malformed-pg":
            await self._malformed_pg()
        elif kind == "kill-http":
            await asyncio.gather(*(self._kill_http(k) for k in range(4)))
        elif kind == "kill-pg":
            await asyncio.gather(*(self._kill_pg(k) for k in range(3)))
        elif kind == "rotate-keys":
            self.stats.rotated = True
            await self._rotate(n)
        elif kind == "close-ticket":
            await self._close_ticket(n)

    def _restart_upstream(self) -> None:
        up = self.procs["upstream"]
        up.restart()
        up.wait_ready(self.upstream_url + "/health", timeout=60)

    async def _restart_state_db(self, n: int) -> None:
        assert self.state_pg is not None
        mode = "immediate" if (n // len(FAULTS)) % 2 else "fast"
        await asyncio.to_thread(self.state_pg.stop_server, mode)  # type: ignore[arg-type]
        await asyncio.sleep(self.outage)  # the proxy runs without its store for a while
        await asyncio.to_thread(self.state_pg.start_server)
        await self._wait_store_ok(90.0)

    async def _pause_state_db(self) -> None:
        """The state database hangs (SIGSTOP) for a while: nothing may hang for good."""
        assert self.state_pg is not None
        await asyncio.to_thread(self.state_pg.pause_server)
        try:
            await asyncio.sleep(self.freeze)
        finally:
            await asyncio.to_thread(self.state_pg.resume_server)
        await self._wait_store_ok(90.0)

    async def _wait_store_ok(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                async with self.probe_session.get(self.admin_url + "/readyz") as r:
                    if (await r.json()).get("store") == "ok":
                        return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"the store was not ok {seconds:.0f} s after the restart")

    async def _raw(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)

    async def _malformed_http(self) -> None:
        """Every malformed request on its own connection, at once, plus a flood of
        half-sent requests held open for a while (slowloris)."""

        async def one(what: str, data: bytes, hold: float) -> None:
            reader, writer = await self._raw(self.http_port)
            got = b""
            try:
                writer.write(data)
                await writer.drain()
                got = await read_some(reader, 256 * 1024, seconds=hold)
            except (OSError, ConnectionError):
                pass
            finally:
                abort(writer)
            self.report(self.scanner.scan(got, frozenset(), f"malformed-http {what}"))
            status = got[9:12].decode("ascii", "replace") if got.startswith(b"HTTP/") else "-"
            self.stats.fuzz_answers[f"http {status}"] += 1

        half = b"GET /customers/9 HTTP/1.1\r\nHost: x\r\nX-Authent"
        await asyncio.gather(*(one(w, d, 3.0) for w, d in MALFORMED_HTTP),
                             *(one("half-sent", half, 4.0) for _ in range(30)))

    async def _malformed_pg(self) -> None:
        """Every malformed message on its own connection, at once."""

        async def one(what: str, before: bytes, after: bytes | None) -> None:
            reader, writer = await self._raw(self.pg_port)
            got = b""
            try:
                if after is None:
                    writer.write(before)
                else:
                    got = await pg_ready(reader, writer, "soak_pg3", "customers")
                    writer.write(after)
                await writer.drain()
                got += await read_some(reader, 256 * 1024, seconds=3.0)
            except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
                pass
            finally:
                abort(writer)
            self.report(self.scanner.scan(got, frozenset(), f"malformed-pg {what}"))
            self.stats.fuzz_answers["pg error" if b"E" in got[:1] or b"\0E" in got
                                    else "pg no error"] += 1

        await asyncio.gather(*(one(*case) for case in MALFORMED_PG))

    async def _kill_http(self, k: int) -> None:
        reader, writer = await self._raw(self.http_port)
        got = b""
        try:
            writer.write(f"GET /customers?limit=1000&offset=0 HTTP/1.1\r\nHost: x\r\n"
                         f"X-Authenticated-User: agent-kill-{k}\r\n\r\n".encode())
            await writer.drain()
            got = await read_some(reader, self.rng.randint(1, 64) * 1024)
        finally:
            abort(writer) if k % 2 else writer.close()
        self.report(self.scanner.scan(got, frozenset(), "kill-http"))

    async def _kill_pg(self, k: int) -> None:
        reader, writer = await self._raw(self.pg_port)
        got = b""
        try:
            got = await pg_ready(reader, writer, "soak_pg3", "customers")
            writer.write(query("SELECT id, full_name, phone, notes FROM customers"))
            await writer.drain()
            got += await read_some(reader, self.rng.randint(1, 64) * 1024)
        except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            abort(writer) if k % 2 else writer.close()
        self.report(self.scanner.scan(got, frozenset(), "kill-pg"))

    async def _rotate(self, n: int) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TOKENPROXY_")}
        done = await asyncio.to_thread(
            subprocess.run,
            tokenproxy_argv("keys", "rotate", "--keys", str(self.keys_dir), "--kek-file",
                            str(self.kek_file)),
            capture_output=True, text=True, timeout=120, env=clean, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"keys rotate failed: {done.stderr.strip()[-300:]}")
        if n % 2:
            status, _ = await self.admin("POST", "/keyring/reload")
            if status != 200:
                raise RuntimeError(f"POST /keyring/reload answered {status}")
        else:
            self.procs["tokenproxy"].signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            _, body = await self.admin("GET", "/keyring")
            with contextlib.suppress(Exception):
                versions = [int(v["version"]) for v in body["versions"]]
                if int(body["active"]) == max(versions) and len(versions) >= 2:
                    return
            await asyncio.sleep(0.3)
        raise TimeoutError("the rotated key did not become active within 15 s")

    async def _close_ticket(self, n: int) -> None:
        front = "http" if n % 2 == 0 else "pg"
        open_ = [t for t in self.tickets if t.front == front and not t.closed]
        if not open_:
            raise RuntimeError(f"no open {front} ticket to close")
        ticket = self.rng.choice(open_)
        status, _ = await self.admin("POST", f"/tickets/{ticket.id}/close")
        if status != 200:
            raise RuntimeError(f"closing a ticket answered {status}")
        ticket.closed = True
        self.tickets.remove(ticket)
        self.closed.append(ticket)
        await self._probe_closed(ticket)
        await self.open_ticket(front, ticket.agent)

    async def _probe_closed(self, ticket: Ticket) -> None:
        """The next ticketed request under a closed ticket must not reveal."""
        import asyncpg

        for cid in sorted(ticket.customers):
            self.stats.probes_after_close += 1
            name: str | None = None
            if ticket.front == "http":
                async with self.probe_session.get(
                        f"http://127.0.0.1:{self.http_port}/customers/{cid}",
                        headers={"X-Authenticated-User": ticket.agent,
                                 "X-Ticket-Id": ticket.id}) as r:
                    body = await r.read()
                self.report(self.scanner.scan(body, frozenset(), "closed-ticket probe"))
                if r.status == 200:
                    name = json.loads(body).get("full_name")
            else:
                conn = await asyncpg.connect(host="127.0.0.1", port=self.pg_port,
                                             user=ticket.agent, database="customers",
                                             timeout=10)
                try:
                    row = await conn.fetchrow(SELECT_ONE + f" /*ticket='{ticket.id}'*/", cid)
                finally:
                    await conn.close()
                name = None if row is None else row["full_name"]
            if name == self.by_id[cid].full_name:
                self.stats.revealed_after_close += 1

    # ------------------------------------------------------------------------ checks

    def checks(self) -> list[Row]:
        """Every check of the soak, as table rows."""
        rows: list[Row] = []
        s = self.stats
        leaks, collisions = asyncio.run(self._classify_hits())
        rows.append(Row(
            "no raw name/phone outside a valid ticket",
            not leaks and (self.scanner.allowed > 0 or not s.reveals),  # the scanner sees
            f"{self.scanner.bytes_scanned / 2**20:.1f} MiB scanned, {self.scanner.allowed}"
            f" sightings under valid tickets; {len(leaks)} leaks"
            + (f" (customers {sorted({h.customer for h in leaks})[:10]},"
               f" kinds {dict(Counter(h.kind for h in leaks))},"
               f" where {dict(Counter(h.where.split()[0] for h in leaks))})" if leaks else "")
            + (f"; {collisions} token collisions" if collisions else "")))
        rows.append(Row(
            "closed tickets do not reveal", s.revealed_after_close == 0 and s.probes_after_close
            > 0, f"{s.probes_after_close} probes after close, {s.revealed_after_close} reveals"
            f" after close; {len(self.closed)} tickets closed"))
        rows.append(self._check_saves())
        rows += asyncio.run(self._check_audit())
        rows += self._check_resources()
        rows.append(asyncio.run(self._check_serves()))
        total = sum(s.requests.values())
        rows.append(Row("requests", None, f"{total}: " + ", ".join(
            f"{k} {v}" for k, v in sorted(s.requests.items()))))
        rows.append(Row("reveals seen by clients", None,
                        f"{sum(s.reveals.values())}; ticketed answers with tokens"
                        f" (store away or ticket just closed): {s.ticketed_tokenized}"))
        expected = s.errors - s.unexpected
        rows.append(Row("errors during restarts (acceptable)", None,
                        ", ".join(f"{k} {v}" for k, v in sorted(expected.items())) or "none"))
        rows.append(Row("ambiguous tokens refused after the rotation", None,
                        f"{s.ambiguous} (a save refused, never guessed)"))
        rows.append(Row("no unexpected errors", not s.unexpected,
                        ", ".join(f"{k} {v}" for k, v in sorted(s.unexpected.items()))
                        or "none"))
        rows.append(Row("malformed input answered", None,
                        ", ".join(f"{k} {v}" for k, v in sorted(s.fuzz_answers.items()))))
        rows.append(Row(
            "every fault ran and recovered",
            not s.fault_failures and all(s.faults[k] for k in FAULTS),
            ", ".join(f"{k} {s.faults[k]}" for k in FAULTS)
            + ("; FAILED: " + "; ".join(s.fault_failures) if s.fault_failures else "")))
        return rows

    async def _classify_hits(self) -> tuple[list[Hit], int]:
        """Hits that are registered tokens (a token equal to a real word by chance) are
        collisions, not leaks."""
        import asyncpg

        if not self.stats.hits:
            return [], 0
        conn = await asyncpg.connect(self.state_dsn, timeout=10)
        leaks, collisions = [], 0
        try:
            for hit in self.stats.hits[:1000]:
                found = await conn.fetchval(
                    "SELECT count(*) FROM token_registry WHERE $1 = ANY("
                    "regexp_split_to_array(token, '[^[:alpha:][:digit:]]+'))"
                    if hit.kind == "name" else
                    "SELECT count(*) FROM token_registry WHERE token = $1", hit.text)
                if found:
                    collisions += 1
                else:
                    leaks.append(hit)
        finally:
            await conn.close()
        return leaks + self.stats.hits[1000:], collisions

    def _check_saves(self) -> Row:
        rows = asyncio.run(self._customer_rows())
        wrong_real, wrong_edit, lost = 0, 0, 0
        examples: list[int] = []
        for c in self.customers:
            row = rows.get(c.id)
            if row is None:
                wrong_real += 1
                examples.append(c.id)
                continue
            if (row["full_name"], row["phone"], row["notes"], row["email"]) != (
                    c.full_name, c.phone, c.notes, c.email):
                wrong_real += 1
                examples.append(c.id)
            edits = self.edits.get(c.id, [])
            last_ok = max((n for n, e in enumerate(edits) if e.ok), default=-1)
            possible = {e.value for e in edits[max(0, last_ok):]}
            if last_ok < 0:
                possible.add(c.city)
            if row["city"] not in possible:
                if last_ok >= 0 and row["city"] in {e.value for e in edits[:last_ok]}:
                    lost += 1
                else:
                    wrong_edit += 1
                examples.append(c.id)
        saves = sum(len(v) for v in self.edits.values())
        ok = sum(e.ok for v in self.edits.values() for e in v)
        http_ok = self.stats.requests["http save"] and any(
            e.ok and "-h" in e.value for v in self.edits.values() for e in v)
        pg_ok = self.stats.requests["pg save"] and any(
            e.ok and "-p" in e.value for v in self.edits.values() for e in v)
        good = not (wrong_real or wrong_edit or lost) and bool(http_ok) and bool(pg_ok)
        return Row("every save stored real values", good,
                   f"{CUSTOMERS} rows compared; {saves} saves ({ok} answered ok; http"
                   f" {self.stats.requests['http save']}, pg {self.stats.requests['pg save']});"
                   f" {wrong_real} rows not the real values, {wrong_edit} edits wrong,"
                   f" {lost} saves lost"
                   + (f"; customers {sorted(set(examples))[:10]}" if examples else ""))

    async def _customer_rows(self) -> dict[int, Any]:
        import asyncpg

        conn = await asyncpg.connect(self.cust_dsn, timeout=10)
        try:
            return {r["id"]: r for r in await conn.fetch(f"SELECT {COLS} FROM customers")}
        finally:
            await conn.close()

    async def _check_audit(self) -> list[Row]:
        import asyncpg

        conn = await asyncpg.connect(self.state_dsn, timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT ticket, cid, count(*) AS n FROM audit_log, unnest(customer_ids) cid"
                " WHERE action = 'reveal' GROUP BY ticket, cid")
        finally:
            await conn.close()
        audited = {(r["ticket"], int(r["cid"])): int(r["n"]) for r in rows}
        missing = {k: n - audited.get(k, 0) for k, n in self.stats.reveals.items()
                   if n > audited.get(k, 0)}
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TOKENPROXY_")}
        done = await asyncio.to_thread(
            subprocess.run, tokenproxy_argv("audit", "verify", "--database", self.state_dsn,
                                            "--no-progress"),
            capture_output=True, text=True, timeout=300, env=clean, check=False)
        last = (done.stdout.strip() or done.stderr.strip()).splitlines()[:1] or [""]
        where = "; ".join(
            f"{t}/customer {c} ({self._front(t)}), {n} of"
            f" {self.stats.reveals[(t, c)]} reveals at "
            + ",".join(f"{x:.0f}" for x in self.stats.reveal_at[(t, c)][-5:]) + " s"
            for (t, c), n in sorted(missing.items())[:5])
        return [
            Row("every reveal has its audit row", not missing and bool(self.stats.reveals),
                f"{sum(self.stats.reveals.values())} reveals seen, {sum(audited.values())}"
                f" reveal rows; {sum(missing.values())} reveals without a row"
                + (f" ({where})" if where else "")),
            Row("`tokenproxy audit verify` holds", done.returncode == 0,
                f"exit {done.returncode}: {last[0][:120]}"),
        ]

    def _front(self, ticket_id: str) -> str:
        for t in self.tickets + self.closed:
            if t.id == ticket_id:
                return t.front
        return "?"

    def _check_resources(self) -> list[Row]:
        samples = self.stats.samples
        warm = [x for x in samples if x[1] == "warm"]
        warm = warm[len(warm) // 2:] or warm
        cool = [x for x in samples if x[1] == "cool"]
        cool = cool[len(cool) // 2:] or cool
        if not warm or not cool:
            return [Row("RSS back near its warm-up level", False, "too few samples")]
        med = sorted
        w_rss = med(x[2] for x in warm)[len(warm) // 2] / 1024
        c_rss = med(x[2] for x in cool)[len(cool) // 2] / 1024
        peak = max(x[2] for x in samples) / 1024
        w_fd = med(x[3] for x in warm)[len(warm) // 2]
        c_fd = med(x[3] for x in cool)[len(cool) // 2]
        max_fd = max(x[3] for x in samples)
        limit = w_rss + max(RSS_SLACK_MIB, w_rss * RSS_SLACK_SHARE)
        return [
            Row("RSS back near its warm-up level", c_rss <= limit,
                f"warm {w_rss:.0f} MiB, after {c_rss:.0f} MiB (limit {limit:.0f}),"
                f" peak {peak:.0f} MiB"),
            Row("open fds back near their warm-up level", c_fd <= w_fd + FD_SLACK,
                f"warm {w_fd}, after {c_fd} (limit {w_fd + FD_SLACK}), peak {max_fd}"),
        ]

    async def _check_serves(self) -> Row:
        """A lookup and a select answer with tokens; a fresh ticket reveals on both."""
        import aiohttp
        import asyncpg

        problems: list[str] = []
        c = self.by_id[1]
        async with aiohttp.ClientSession() as s:
            self.probe_session = s
            try:
                await self._wait_store_ok(60)
            except TimeoutError as e:
                problems.append(str(e))
            url = f"http://127.0.0.1:{self.http_port}/customers/1"
            async with s.get(url, headers={"X-Authenticated-User": "agent-1"}) as r:
                body = await r.read()
            self.report(self.scanner.scan(body, frozenset(), "final"))
            if r.status != 200 or json.loads(body)["full_name"] == c.full_name:
                problems.append(f"http lookup: {r.status}")
            t_http = await self.open_ticket("http", "agent-final")
            t_pg = await self.open_ticket("pg", "soak_pg1")
            if t_http is not None:
                cid = min(t_http.customers)
                async with s.get(f"http://127.0.0.1:{self.http_port}/customers/{cid}",
                                 headers={"X-Authenticated-User": "agent-final",
                                          "X-Ticket-Id": t_http.id}) as r:
                    got = await r.json() if r.status == 200 else {}
                if got.get("full_name") != self.by_id[cid].full_name:
                    problems.append(f"http ticket did not reveal ({r.status})")
        conn = await asyncpg.connect(host="127.0.0.1", port=self.pg_port, user="soak_pg1",
                                     database="customers", timeout=10)
        try:
            row = await conn.fetchrow(SELECT_ONE, 1)
            if row is None or row["full_name"] == c.full_name:
                problems.append("pg select did not answer tokens")
            if t_pg is not None:
                cid = min(t_pg.customers)
                row = await conn.fetchrow(SELECT_ONE + f" /*ticket='{t_pg.id}'*/", cid)
                if row is None or row["full_name"] != self.by_id[cid].full_name:
                    problems.append("pg ticket did not reveal")
        finally:
            await conn.close()
        alive = self.procs["tokenproxy"].alive()
        if not alive:
            problems.append("tokenproxy exited")
        return Row("the proxy still serves both front ends", not problems,
                   "; ".join(problems) or "HTTP and PostgreSQL: tokens, and a new ticket"
                   " reveals")


# ---------------------------------------------------------------------------- running


def format_table(rows: list[Row]) -> str:
    width = max(len(r.check) for r in rows)
    lines = [f"{'check':<{width}}  {'result':<6}  detail", "-" * (width + 60)]
    for r in rows:
        verdict = "info" if r.ok is None else ("PASS" if r.ok else "FAIL")
        lines.append(f"{r.check:<{width}}  {verdict:<6}  {r.detail}")
    return "\n".join(lines)


def main(duration: float | None, quick: bool, json_path: Path | None, command: str) -> int:
    """Run a soak; print the table; 1 if a check failed (or the soak could not run)."""
    import logging

    import structlog

    from loadtest.harness import machine

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    seconds = duration if duration is not None else (60.0 if quick else 600.0)
    soak = Soak(duration=seconds, quick=quick)
    began = time.monotonic()
    logs: Path | None = None
    try:
        print(f"soak: setting up ({CUSTOMERS} customers)", file=sys.stderr)
        soak.setup()
        print(f"soak: {seconds:.0f} s of load (warm-up {soak.warm:.0f} s, cool-down"
              f" {soak.cool:.0f} s)", file=sys.stderr)
        asyncio.run(soak.workload())
        rows = soak.checks()
        if any(r.ok is False for r in rows):
            logs = soak.keep_logs()
    except BaseException:
        with contextlib.suppress(Exception):
            print(f"soak: logs kept in {soak.keep_logs()}", file=sys.stderr)
        raise
    finally:
        soak.close()
    info = machine()
    print(f"machine: {info['nproc']} CPUs, {info['cpu_model']}, {info['mem_gib']} GiB,"
          f" Python {info['python']}")
    print(f"command: {command}; ran {soak.now():.0f} s of load,"
          f" {time.monotonic() - began:.0f} s in all")
    print(format_table(rows))
    print("faults: " + "; ".join(soak.stats.fault_log))
    failed = [r.check for r in rows if r.ok is False]
    print("soak: " + ("FAILED: " + "; ".join(failed) if failed else "every check passed"))
    if logs is not None:
        print(f"soak: the processes' logs are kept in {logs}")
    if json_path is not None:
        json_path.write_text(json.dumps({
            "command": command, "machine": info, "duration_s": seconds,
            "rows": [{"check": r.check, "ok": r.ok, "detail": r.detail} for r in rows],
            "faults": soak.stats.fault_log,
        }, indent=2) + "\n")
    return 1 if failed else 0
