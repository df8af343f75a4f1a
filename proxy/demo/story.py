"""The demo's machinery and its story.

:class:`DemoStack` starts, in one temporary directory: an embedded PostgreSQL with two
databases (``support``, the customers; ``tokenproxy``, the proxy's state), a KEK and a
keyring for the demo only, the sample support API over ``support``, and tokenproxy in
front of it through :class:`~proxy.admin.runtime.Runtime` (the same wiring as
``tokenproxy serve``). :meth:`DemoStack.close` stops everything and removes the directory.

:func:`run_story` walks through the story with real requests through the proxy and real
SQL against the demo databases; each step prints ``[ok]`` or ``[FAILED]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import click
from aiohttp import web
from tqdm import tqdm

from proxy import keystore
from proxy.admin.runtime import Runtime, RuntimeOptions
from proxy.demo import seed as seeding
from proxy.demo.support_api import build_app
from proxy.embedded_pg import EmbeddedPostgres
from proxy.errors import TokenProxyError
from proxy.store.audit import verify

AGENT = "alice"
TICKET = "T-1001"
HOST = "127.0.0.1"
ROUTE_FIELDS = """fields = [
  {{ path = "{p}full_name", kind = "name" }},
  {{ path = "{p}phone", kind = "phone" }},
  {{ path = "{p}notes", kind = "text" }},
]"""


class DemoError(TokenProxyError):
    """The demo cannot start (a port in use, PostgreSQL missing...): a clear message."""


@dataclass(frozen=True)
class Ports:
    """Where to listen; 0: any free port."""

    http: int = 8080
    admin: int = 8081
    api: int = 9000
    pg: int = 6432


def check_ports(ports: Ports) -> None:
    """Refuse a fixed port already in use, before anything starts."""
    for port, option in ((ports.http, "--http-port"), (ports.admin, "--admin-port"),
                         (ports.api, "--api-port"), (ports.pg, "--pg-port")):
        if port == 0:
            continue
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise DemoError(
                        f"port {port} is in use: pass {option} (another port, or 0 for any "
                        "free port)"
                    ) from None
                raise


def _config_toml(
    upstream: str, dsn: str, keys_dir: Path, token_sha256: str, support_dsn: str
) -> str:
    routes = []
    for method, path, cid, prefix in (
        ("GET", "/customers/{id}", "$.id", "$."),
        ("PUT", "/customers/{id}", "$.id", "$."),
        ("GET", "/customers", "$.customers[*].id", "$.customers[*]."),
    ):
        routes.append(
            f'[[http.routes]]\nmethod = "{method}"\npath = "{path}"\ncustomer_id = "{cid}"\n'
            + ROUTE_FIELDS.format(p=prefix)
        )
    routes.append('[[http.routes]]\nmethod = "GET"\npath = "/health"\non_unparseable = "pass"')
    pg = urlsplit(support_dsn)
    return f"""# tokenproxy demo: written by `tokenproxy demo`, removed at exit
[keys]
dir = "{keys_dir}"

[database]
url = "{dsn}"
pool_min = 1
pool_max = 10
migrate_on_start = true

[tickets]
cache_ttl = 0.5

[identity]
trusted_header = "X-Authenticated-User"
trusted_peers = ["127.0.0.1/32", "::1/128"]

[http]
listen = "{HOST}:8080"  # the demo passes the real one
upstream = "{upstream}"

{chr(10).join(routes)}

[admin]
listen = "{HOST}:8081"
tokens = [{{ name = "demo-helpdesk", sha256 = "{token_sha256}" }}]

[pg]
enabled = true
listen = "{HOST}:6432"  # the demo passes the real one
upstream = "{pg.hostname}:{pg.port}"
catalog_user = "{pg.username}"

[[pg.tables]]
table = "public.customers"
customer_id = "id"
columns = {{ full_name = "name", phone = "phone", notes = "text" }}
"""


def _make_tmp() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="tokenproxy-demo-")).resolve()
    tmp.chmod(0o711)  # as root, PostgreSQL runs as an unprivileged user below it
    return tmp


@dataclass
class DemoStack:
    """Everything the demo started; :meth:`close` stops it all and removes :attr:`tmp`."""

    tmp: Path
    customers_count: int
    pg: EmbeddedPostgres | None = None
    support_pool: asyncpg.Pool | None = None
    api_runner: web.AppRunner | None = None
    runtime: Runtime | None = None
    kek: bytes = b""
    keys_dir: Path = Path()
    admin_token: str = ""
    api_url: str = ""
    proxy_url: str = ""
    admin_url: str = ""
    support_dsn: str = ""
    state_dsn: str = ""
    pg_dsn: str = ""  # the support database through tokenproxy, as agent alice
    customers: list[seeding.Customer] = field(default_factory=list)

    @classmethod
    async def start(cls, ports: Ports, *, customers: int = 10_000) -> DemoStack:
        check_ports(ports)
        tmp = await asyncio.to_thread(_make_tmp)
        stack = cls(tmp, customers)
        try:
            await stack._start(ports)
        except BaseException:
            await stack.close()
            raise
        return stack

    async def _start(self, ports: Ports) -> None:
        click.echo(f"temporary directory: {self.tmp}")
        click.echo("starting an embedded PostgreSQL ...")
        self.pg = EmbeddedPostgres(base_dir=str(self.tmp))
        await asyncio.to_thread(self.pg.start)
        self.support_dsn = await asyncio.to_thread(self.pg.create_database, "support")
        self.state_dsn = await asyncio.to_thread(self.pg.create_database, "tokenproxy")

        self.support_pool = await asyncpg.create_pool(self.support_dsn, min_size=1, max_size=8)
        with tqdm(total=self.customers_count, desc="seeding customers", unit="row",
                  file=sys.stderr, mininterval=0.2) as bar:
            self.customers = await seeding.seed(
                self.support_pool, self.customers_count, progress=bar.update
            )

        self.api_runner = web.AppRunner(build_app(self.support_pool), access_log=None,
                                        handle_signals=False)
        await self.api_runner.setup()
        site = web.TCPSite(self.api_runner, HOST, ports.api)
        try:
            await site.start()
        except OSError as exc:
            raise DemoError(f"port {ports.api} is in use: pass --api-port ({exc.strerror})"
                            ) from None
        api_port = int(self.api_runner.addresses[0][1])
        self.api_url = f"http://{HOST}:{api_port}"

        self.kek = keystore.generate_kek()
        self.keys_dir = self.tmp / "keys"
        keystore.init_keyring(self.keys_dir, self.kek)
        kek_file = self.tmp / "kek"
        keystore.write_kek_file(kek_file, self.kek, keys_dir=self.keys_dir)
        self.admin_token = secrets.token_urlsafe(24)
        digest = hashlib.sha256(self.admin_token.encode()).hexdigest()
        config_path = self.tmp / "tokenproxy.toml"
        config_path.write_text(
            _config_toml(self.api_url, self.state_dsn, self.keys_dir, digest, self.support_dsn)
        )
        # The agent's own database role: through the PostgreSQL front end, alice is alice.
        await self.support_pool.execute(
            f"CREATE ROLE {AGENT} LOGIN; GRANT SELECT, UPDATE ON customers TO {AGENT}"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENPROXY_")}
        env["TOKENPROXY_COOKIE_SECRET"] = secrets.token_urlsafe(32)  # for the agent page
        self.runtime = await Runtime.open(
            RuntimeOptions(
                config_path=config_path,
                keys_dir=self.keys_dir,
                kek_file=kek_file,
                env=env,
                http_listen=(HOST, ports.http),
                admin_listen=(HOST, ports.admin),
                pg_listen=(HOST, ports.pg),
                handle_signals=False,
                drain_timeout=2.0,
            )
        )
        try:
            addresses = await self.runtime.start()
        except TokenProxyError as exc:
            which = (
                "--admin-port" if "admin.listen" in str(exc)
                else "--pg-port" if "pg.listen" in str(exc) else "--http-port"
            )
            raise DemoError(f"{exc} (pass {which})") from None
        self.proxy_url = "http://{}:{}".format(*addresses["http"][0])
        self.admin_url = "http://{}:{}".format(*addresses["admin"][0])
        pg_host, pg_port = addresses["pg"][0]
        self.pg_dsn = f"postgresql://{AGENT}@{pg_host}:{pg_port}/support"

    async def close(self) -> None:
        """Stop everything started (in reverse order) and remove the directory."""
        if self.runtime is not None:
            runtime, self.runtime = self.runtime, None
            with contextlib.suppress(Exception):
                await runtime.shutdown()
        if self.api_runner is not None:
            runner, self.api_runner = self.api_runner, None
            with contextlib.suppress(Exception):
                await runner.cleanup()
        if self.support_pool is not None:
            pool, self.support_pool = self.support_pool, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 5)
        if self.pg is not None:
            pg, self.pg = self.pg, None
            await asyncio.to_thread(pg.stop)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- for the story

    def psql_command(self) -> str:
        assert self.pg is not None
        return f"{self.pg.bin_dir / 'psql'} {self.support_dsn}"


# ---------------------------------------------------------------------- printing


def _width(text: str) -> int:
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def _cut(text: str, width: int) -> str:
    if _width(text) <= width:
        return text
    out = ""
    for c in text:
        if _width(out + c) > width - 1:
            break
        out += c
    return out + "…"


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def table(rows: Sequence[Sequence[str]], max_width: int = 34, *, header: bool = True) -> None:
    cells = [[_cut(c, max_width) for c in row] for row in rows]
    widths = [max(_width(r[c]) for r in cells) for c in range(len(cells[0]))]
    for n, row in enumerate(cells):
        click.echo("  " + " | ".join(_pad(c, w) for c, w in zip(row, widths, strict=True)))
        if n == 0 and header:
            click.echo("  " + "-+-".join("-" * w for w in widths))


class Story:
    """Each check prints a line and remembers whether it held."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.held = 0

    def check(self, what: str, held: bool, detail: str = "") -> bool:
        click.echo(f"  [{'ok' if held else 'FAILED'}] {what}" + (f"  ({detail})" if detail
                                                                   and not held else ""))
        if held:
            self.held += 1
        else:
            self.failed.append(what)
        return held

    def step(self, n: int, title: str) -> None:
        click.echo(f"\n{n}. {title}\n")


# ---------------------------------------------------------------------- the story


class Client:
    """The support tool: requests through tokenproxy as an agent."""

    def __init__(self, stack: DemoStack, session: aiohttp.ClientSession) -> None:
        self.stack = stack
        self.session = session

    def _headers(self, ticket: str | None) -> dict[str, str]:
        headers = {"X-Authenticated-User": AGENT}
        if ticket is not None:
            headers["X-Ticket-Id"] = ticket
        return headers

    async def get(self, path: str, *, ticket: str | None = None,
                  params: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        async with self.session.get(self.stack.proxy_url + path, params=params,
                                    headers=self._headers(ticket)) as resp:
            return resp.status, await resp.json(content_type=None), dict(resp.headers)

    async def put(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        async with self.session.put(self.stack.proxy_url + path, json=body,
                                    headers=self._headers(None)) as resp:
            return resp.status, await resp.json(content_type=None)

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.stack.admin_token}"}
        async with self.session.request(method, self.stack.admin_url + path, json=body,
                                        headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


async def _eventually(
    probe: Callable[[], Awaitable[bool]], within: float = 5.0
) -> bool:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        if await probe():
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.2)


async def run_story(stack: DemoStack) -> Story:
    assert stack.support_pool is not None and stack.pg is not None
    story = Story()
    db = stack.support_pool
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        c = Client(stack, session)
        real = {r["id"]: r for r in await db.fetch(
            "SELECT id, full_name, phone, notes FROM customers WHERE id <= 5 ORDER BY id")}
        budi = real[1]

        # 1 -------------------------------------------------------------- no ticket
        click.echo(f"\nthe story: agent {AGENT!r} uses a support tool through tokenproxy"
                   f" ({stack.customers_count} customers in the support database)")
        story.step(1, f"Agent {AGENT} lists customers with no ticket: tokens only")
        _, plain, headers = await c.get("/customers", params={"limit": "5"})
        seen = {r["id"]: r for r in plain["customers"]}
        story.check(
            "no name, phone or note of the 5 customers reaches the agent in clear",
            len(seen) == 5 and all(
                seen[i]["full_name"] != real[i]["full_name"]
                and seen[i]["phone"] != real[i]["phone"]
                and real[i]["full_name"] not in seen[i]["notes"]
                and real[i]["phone"] not in seen[i]["notes"]
                for i in real
            ),
        )
        story.check(
            "every token keeps its value's length",
            all(len(seen[i]["full_name"]) == len(real[i]["full_name"])
                and len(seen[i]["phone"]) == len(real[i]["phone"]) for i in real),
        )

        # 2 -------------------------------------------------------------- open ticket
        story.step(2, f"Ticket {TICKET} opened for {AGENT} on customer 1 (helpdesk webhook):"
                      " that customer in clear, the neighbours still tokens")
        expires = (datetime.now(UTC) + timedelta(hours=8)).isoformat()
        status, _ = await c.admin("PUT", f"/tickets/{TICKET}", {
            "agent": AGENT, "customer_ids": [1], "status": "open", "expires_at": expires,
        })
        story.check(f"the admin API took ticket {TICKET}", status in (200, 201), f"{status}")
        _, with_ticket, headers = await c.get("/customers", ticket=TICKET,
                                              params={"limit": "5"})
        shown = {r["id"]: r for r in with_ticket["customers"]}
        rows: list[tuple[str, ...]] = [
            ("id", "in the database", "agent, no ticket", f"agent, ticket {TICKET}")
        ]
        for i in sorted(real):
            for key in ("full_name", "phone"):
                rows.append((str(i) if key == "full_name" else "", real[i][key],
                             seen[i][key], shown.get(i, {}).get(key, "?")))
        table(rows)
        click.echo("\n  customer 1's note:")
        table([("in the database", real[1]["notes"]),
               ("agent, no ticket", seen[1]["notes"]),
               (f"agent, ticket {TICKET}", shown.get(1, {}).get("notes", "?"))],
              max_width=90, header=False)
        click.echo()
        story.check(
            "customer 1 is shown in clear under the ticket",
            shown.get(1, {}).get("full_name") == budi["full_name"]
            and shown[1]["phone"] == budi["phone"] and shown[1]["notes"] == budi["notes"],
        )
        story.check(
            "customers 2-5 stay tokens (the same tokens as without a ticket)",
            all(shown.get(i) == seen[i] for i in (2, 3, 4, 5)),
        )
        story.check(
            "the response says what was revealed (X-Tokenproxy-Reveal)",
            "X-Tokenproxy-Reveal" in headers,
        )

        # 3 -------------------------------------------------------------- search by token
        token_name, token_phone = seen[1]["full_name"], seen[1]["phone"]
        story.step(3, "Searching by a token finds the customer (tokenproxy resolves it)")
        _, found, _ = await c.get("/customers", params={"q": token_name})
        _, by_phone, _ = await c.get("/customers", params={"q": token_phone})
        click.echo(f"  GET /customers?q={token_name}  ->  ids "
                   f"{[r['id'] for r in found['customers']]}")
        click.echo(f"  GET /customers?q={token_phone}  ->  ids "
                   f"{[r['id'] for r in by_phone['customers']]}\n")
        story.check("the name token finds customer 1 (and answers with tokens)",
                    any(r["id"] == 1 and r["full_name"] == token_name
                        for r in found["customers"]))
        story.check("the phone token finds customer 1",
                    [r["id"] for r in by_phone["customers"]][:1] == [1])

        # 4 -------------------------------------------------------------- save tokenized
        story.step(4, "Saving the tokenized record back changes nothing in the database")
        before = await db.fetchrow("SELECT full_name, phone, notes FROM customers WHERE id = 1")
        status, saved = await c.put("/customers/1", {
            k: seen[1][k] for k in ("full_name", "phone", "notes")
        })
        after = await db.fetchrow("SELECT full_name, phone, notes FROM customers WHERE id = 1")
        click.echo(f"  PUT /customers/1 {{full_name: {token_name!r}, phone: {token_phone!r},"
                   f" notes: ...}}  ->  {status}\n")
        story.check("the save went through", status == 200, f"{status} {saved}")
        story.check("the row in the database still holds the real values (SQL)",
                    dict(before) == dict(after) and after["full_name"] == budi["full_name"])

        # 5 -------------------------------------------------------------- close ticket
        story.step(5, f"Ticket {TICKET} is closed: customer 1 is tokens again")
        status, _ = await c.admin("POST", f"/tickets/{TICKET}/close")
        story.check(f"the admin API closed {TICKET}", status == 200, f"{status}")

        async def tokens_again() -> bool:
            _, body, _ = await c.get("/customers/1", ticket=TICKET)
            return bool(body.get("full_name") == token_name)

        story.check("under the closed ticket customer 1 is shown as tokens",
                    await _eventually(tokens_again))

        # 6 -------------------------------------------------------------- rotation
        story.step(6, "Key rotation: new tokens from now on, old tokens still resolve")
        change = await asyncio.to_thread(keystore.rotate_keys, stack.keys_dir, stack.kek)
        status, reloaded = await c.admin("POST", "/keyring/reload")
        _, fresh, _ = await c.get("/customers/1")
        table([("customer 1", "key v1", f"key v{change.created}"),
               ("full_name", token_name, fresh.get("full_name", "?")),
               ("phone", token_phone, fresh.get("phone", "?"))])
        click.echo()
        story.check("the proxy reloaded the keyring (POST /keyring/reload)",
                    status == 200 and reloaded.get("action") == "key_rotate", f"{reloaded}")
        story.check("the new key gives customer 1 new tokens",
                    fresh.get("full_name") not in (None, token_name, budi["full_name"])
                    and fresh.get("phone") not in (None, token_phone, budi["phone"]))
        _, old_search, _ = await c.get("/customers", params={"q": token_name})
        story.check("a search by the old (v1) token still finds customer 1",
                    any(r["id"] == 1 for r in old_search["customers"]))

        # 7 -------------------------------------------------------------- SQL clients
        story.step(7, f"SQL through tokenproxy's PostgreSQL front end, as database user {AGENT}")
        sql_ticket = "T-1002"
        expires = (datetime.now(UTC) + timedelta(hours=8)).isoformat()
        await c.admin("PUT", f"/tickets/{sql_ticket}", {
            "agent": AGENT, "customer_ids": [2], "status": "open", "expires_at": expires,
        })
        conn = await asyncpg.connect(stack.pg_dsn)
        try:
            query = "SELECT id, full_name, phone FROM customers WHERE id <= 3 ORDER BY id"
            no_ticket = {r["id"]: r for r in await conn.fetch(query)}
            cited = {r["id"]: r for r in await conn.fetch(
                f"{query} /*ticket='{sql_ticket}'*/")}
            try:
                await conn.fetch("SELECT upper(full_name) FROM customers WHERE id = 1")
                refused = ""
            except asyncpg.PostgresError as exc:
                refused = f"{exc.sqlstate}: {exc}"
            by_token = await conn.fetchval(
                "SELECT id FROM customers WHERE phone = $1", no_ticket[3]["phone"])
        finally:
            await conn.close()
        click.echo(f"  psql {stack.pg_dsn}")
        rows = [("id", "in the database", "SQL, no ticket", f"SQL /*ticket='{sql_ticket}'*/")]
        for i in (1, 2, 3):
            rows.append((str(i), real[i]["full_name"], no_ticket[i]["full_name"],
                         cited[i]["full_name"]))
        table(rows)
        click.echo(f"\n  SELECT upper(full_name) ...  ->  {_cut(refused, 100)}\n")
        story.check("SELECT returns tokens of the same length, ids in clear",
                    all(no_ticket[i]["full_name"] != real[i]["full_name"]
                        and len(no_ticket[i]["full_name"]) == len(real[i]["full_name"])
                        for i in (1, 2, 3)))
        story.check(f"the comment /*ticket='{sql_ticket}'*/ reveals customer 2 only",
                    cited[2]["full_name"] == real[2]["full_name"]
                    and cited[2]["phone"] == real[2]["phone"]
                    and cited[1]["full_name"] == no_ticket[1]["full_name"])
        story.check("a value computed from a protected column is refused (42501)",
                    refused.startswith("42501"), refused)
        story.check("WHERE phone = <token> finds the customer", by_token == 3, f"{by_token}")

        # 8 -------------------------------------------------------------- audit
        story.step(8, "The audit log: the chain holds, then a row edited by hand is caught")
        assert stack.runtime is not None
        pool = stack.runtime.store.pool
        report = await verify(pool, progress=False)
        click.echo(f"  tokenproxy audit verify  ->  {report.message}")
        story.check("audit verify: the chain holds", report.ok)
        count = await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'reveal'")
        story.check("the reveal under the ticket was audited", (count or 0) >= 1, f"{count}")
        seq = await pool.fetchval(
            "SELECT min(seq) FROM audit_log WHERE action = 'reveal'") or await pool.fetchval(
            "SELECT max(seq) FROM audit_log")
        conn = await asyncpg.connect(stack.state_dsn)
        try:
            async with conn.transaction():
                await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
                await conn.execute("UPDATE audit_log SET agent = 'mallory' WHERE seq = $1", seq)
                await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
        finally:
            await conn.close()
        click.echo(f"  (by hand, as the database superuser: agent := 'mallory' at seq {seq})")
        report = await verify(pool, progress=False)
        click.echo(f"  tokenproxy audit verify  ->  {report.message}\n")
        story.check(f"audit verify catches the edit at seq {seq}",
                    not report.ok and report.first_bad_seq == seq
                    and str(report.problem) == "modified", report.message)
    return story


def print_stay_up(stack: DemoStack) -> None:
    assert stack.pg is not None
    p, a, t = stack.proxy_url, stack.admin_url, stack.admin_token
    body = ('{"agent": "alice", "customer_ids": [2], "status": "open", '
            '"expires_at": "2099-01-01T00:00:00Z"}')
    click.echo(f"""
tokenproxy demo is up (Ctrl-C stops everything and removes {stack.tmp}):

  tokenproxy (HTTP)   {p}
  admin API           {a}    bearer token: {t}
  support API         {stack.api_url}    (direct, no tokenization: what the proxy hides)
  SQL via tokenproxy  psql {stack.pg_dsn}
  SQL direct          {stack.psql_command()}    (what the proxy hides)

Try:
  curl -s -H 'X-Authenticated-User: alice' '{p}/customers?limit=3'
  curl -s -H 'X-Authenticated-User: alice' '{p}/customers/2'
  curl -s -X PUT -H 'Authorization: Bearer {t}' -H 'Content-Type: application/json' \\
       -d '{body}' \\
       {a}/tickets/T-2002
  curl -s -H 'X-Authenticated-User: alice' -H 'X-Ticket-Id: T-2002' '{p}/customers/2'
  curl -s -X POST -H 'Authorization: Bearer {t}' {a}/tickets/T-2002/close
  curl -s '{a}/audit/status?verify=1' -H 'Authorization: Bearer {t}'
""")


async def run_demo(*, once: bool, ports: Ports, customers: int) -> int:
    """Start, tell the story, then (unless ``once``) stay up until SIGINT/SIGTERM.

    A signal while starting or telling the story cancels it (everything started is
    stopped); once up, it stops the demo. Returns the exit status (130: interrupted)."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    stop = asyncio.Event()
    up = False

    def on_signal() -> None:
        if stop.is_set():
            return
        stop.set()
        if not up and main is not None:
            main.cancel()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
    try:
        stack = await DemoStack.start(ports if not once else Ports(0, 0, 0, 0),
                                      customers=customers)
        try:
            started = loop.time()
            story = await run_story(stack)
            took = loop.time() - started
            if story.failed:
                click.echo(f"\n{len(story.failed)} step(s) did not hold:", err=True)
                for what in story.failed:
                    click.echo(f"  - {what}", err=True)
            else:
                click.echo(f"\nevery step held ({story.held} checks, {took:.1f} s).")
            if once:
                return 1 if story.failed else 0
            print_stay_up(stack)
            up = True
            await stop.wait()
            click.echo("\nstopping: tokenproxy, the support API, PostgreSQL ...")
            return 1 if story.failed else 0
        finally:
            await stack.close()
            click.echo(f"stopped; removed {stack.tmp}")
    except asyncio.CancelledError:
        if not stop.is_set():
            raise
        click.echo("interrupted: everything the demo started is stopped", err=True)
        return 130
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
