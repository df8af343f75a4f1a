"""The PostgreSQL session tests' environment: a real upstream database with customers, the
tokenproxy store on the same server, tokenproxy's PostgreSQL front end in front, and a tap
between the clients and tokenproxy that keeps every byte sent to a client (the leak scans).

    env.dsn            connect here: tap -> tokenproxy -> upstream
    env.direct_dsn     the upstream itself
    env.sent           every byte tokenproxy sent to any client so far
    env.assert_no_leak(since, except_ids=())
                       no seeded name or phone (nor a word of a name) in the bytes sent
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from proxy.crypto.engine import TokenEngine
from proxy.crypto.keyring import Keyring
from proxy.crypto.tokens import Kind
from proxy.pg.catalog import Catalogs
from proxy.pg.server import PgFrontEnd
from proxy.pg.session import PgContext, run_session
from proxy.pg.startup import PgSettings
from proxy.policy.columns import ColumnPolicy, ProtectedTable
from proxy.policy.tickets import Ticket
from proxy.store.audit import AuditLog
from proxy.store.durable import Store, open_store
from proxy.store.tickets import TicketStore

AGENT = "postgres"  # the embedded server's superuser: the agent of these sessions

SCHEMA = """
CREATE TABLE customers (
    id integer PRIMARY KEY,
    full_name text NOT NULL,
    phone text UNIQUE,
    notes text,
    email text,
    phone_digits bigint
);
CREATE TABLE orders (id serial PRIMARY KEY, customer_id integer REFERENCES customers(id),
                     total numeric NOT NULL, item text);
CREATE TABLE plain_items (id serial PRIMARY KEY, label text NOT NULL);
"""


@dataclass(frozen=True)
class Customer:
    id: int
    full_name: str
    phone: str
    notes: str
    email: str
    phone_digits: int


SEED = [
    Customer(1, "Budi Santoso Wijaya", "+62 812-3456-7801", "Budi asked about a refund",
             "budi@mail.example", 6281234567801),
    Customer(2, "Siti Nurhaliza Putri", "+62 813-9876-5402", "call Siti on +62 813-9876-5402",
             "siti@mail.example", 6281398765402),
    Customer(3, "Ahmad Fauzi Rahman", "+62 811-2233-4403", "VIP customer",
             "ahmad@mail.example", 6281122334403),
    Customer(4, "Dewi Lestari Kusuma", "+62 857-1122-3304", "", "dewi@mail.example",
             6285711223304),
    Customer(5, "Rizky Pratama Hidayat", "+62 878-5566-7705", "prefers WhatsApp",
             "rizky@mail.example", 6287855667705),
    Customer(6, "Margaretha Octaviani", "+62 821-4455-6606", "Margaretha moved to Bandung",
             "marga@mail.example", 6282144556606),
]

POLICY = ColumnPolicy(
    [
        ProtectedTable(
            "public",
            "customers",
            "id",
            {"full_name": Kind.NAME, "phone": Kind.PHONE, "notes": Kind.TEXT,
             "phone_digits": Kind.PHONE},
        )
    ]
)


def with_port(dsn: str, host: str, port: int, **query: str) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    extra = "&".join(f"{k}={v}" for k, v in query.items())
    return urlunsplit((parts.scheme, f"{auth}{host}:{port}", parts.path, extra, ""))


class Tap:
    """A TCP relay that records what the server side sends to clients."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sent = bytearray()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bool) -> None:
            try:
                while data := await src.read(65536):
                    if keep:
                        self.sent.extend(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await asyncio.gather(pipe(reader, up_w, False), pipe(up_r, writer, True))
        except asyncio.CancelledError:
            pass  # `close`: end quietly (asyncio logs a cancelled connection handler)
        finally:
            self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()


@dataclass
class PgEnv:
    direct_dsn: str
    dsn: str
    pool: asyncpg.Pool
    store: Store
    tickets: TicketStore
    audit: AuditLog
    ctx: PgContext
    tap: Tap
    frontend: PgFrontEnd
    tap_address: tuple[str, int] = ("127.0.0.1", 0)
    database: str = ""
    customers: list[Customer] = field(default_factory=lambda: list(SEED))

    @property
    def sent(self) -> bytes:
        return bytes(self.tap.sent)

    def mark(self) -> int:
        return len(self.tap.sent)

    def leaks(self, since: int = 0, except_ids: Iterable[int] = ()) -> list[str]:
        """Seeded names, name words and phones found in bytes sent since ``since``
        (described by customer id and field: never the value)."""
        data = bytes(self.tap.sent[since:])
        skip = set(except_ids)
        found = []
        for c in self.customers:
            if c.id in skip:
                continue
            probes = {"full_name": c.full_name, "phone": c.phone,
                      "phone_digits": str(c.phone_digits)}
            for word in c.full_name.split():
                probes[f"name word {word[:1]}..."] = word
            for what, value in probes.items():
                if value.encode() in data:
                    found.append(f"customer {c.id} {what}")
        return found

    def assert_no_leak(self, since: int = 0, except_ids: Iterable[int] = ()) -> None:
        leaks = self.leaks(since, except_ids)
        assert not leaks, f"raw values reached the client: {leaks}"

    async def add_ticket(
        self, ticket_id: str, customers: list[int], *, agent: str | None = AGENT,
        status: str = "open",
    ) -> Ticket:
        now = datetime.now(UTC)
        ticket = Ticket(ticket_id, agent, customers, status, now + timedelta(hours=1), now)
        await self.tickets.upsert(ticket)
        return ticket

    def new_ticket_id(self) -> str:
        return f"SUP-{secrets.randbelow(10**9)}"

    async def connect(self, **kwargs: Any) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn, **kwargs)

    async def direct(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.direct_dsn)


async def seed(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute(SCHEMA)
        await conn.executemany(
            "INSERT INTO customers VALUES ($1, $2, $3, $4, $5, $6)",
            [(c.id, c.full_name, c.phone, c.notes, c.email, c.phone_digits) for c in SEED],
        )
        await conn.executemany(
            "INSERT INTO orders (customer_id, total, item) VALUES ($1, $2, $3)",
            [(c.id, 10 * c.id, f"item {c.id}") for c in SEED],
        )
        await conn.execute("INSERT INTO plain_items (label) VALUES ('alpha'), ('beta')")


@contextlib.asynccontextmanager
async def pg_env(
    dsn: str,
    *,
    connect_for: Callable[[str], Awaitable[asyncpg.Connection]] | None = None,
    seed_data: bool = True,
    state_dsn: str | None = None,
) -> AsyncIterator[PgEnv]:
    """Everything above on database ``dsn`` (customers and tokenproxy's state).
    ``connect_for``: how the catalog connects (default: to ``dsn``'s server);
    ``state_dsn``: tokenproxy's state elsewhere (default: ``dsn``)."""
    async with contextlib.AsyncExitStack() as stack:
        store = await open_store(state_dsn or dsn, run_migrations=True, min_size=1, max_size=5)
        stack.push_async_callback(store.close)
        if seed_data:
            data = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
            try:
                await seed(data)
            finally:
                await data.close()
        tickets = TicketStore(store.pool, cache_ttl=0.0)
        audit = AuditLog(store.pool)
        keyring = Keyring.single(secrets.token_bytes(32))
        engine = TokenEngine.standard(keyring, store.vault, store.registry, default_region="ID")

        async def catalog_connect(database: str) -> asyncpg.Connection:
            return await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/" + database)

        catalogs = Catalogs(POLICY, connect_for or catalog_connect, recheck_seconds=0.2,
                            timeout=2.0)
        stack.push_async_callback(catalogs.close)
        ctx = PgContext(
            engine=lambda: engine,
            store=store,
            tickets=tickets,
            audit=audit,
            catalogs=catalogs,
            policy=POLICY,
        )
        parts = urlsplit(dsn)
        settings = PgSettings(upstream_host=parts.hostname or "127.0.0.1",
                              upstream_port=parts.port or 5432)
        frontend = PgFrontEnd(settings)

        async def session(est: Any) -> None:
            await run_session(ctx, est)

        frontend.session = session
        bound = await frontend.start("127.0.0.1", 0)
        stack.push_async_callback(frontend.close, 2.0)
        tap = Tap(bound[0])
        tap_port = await tap.start()
        stack.push_async_callback(tap.close)
        yield PgEnv(
            direct_dsn=dsn,
            dsn=with_port(dsn, "127.0.0.1", tap_port),
            pool=store.pool,
            store=store,
            tickets=tickets,
            audit=audit,
            ctx=ctx,
            tap=tap,
            frontend=frontend,
            tap_address=("127.0.0.1", tap_port),
            database=parts.path.lstrip("/"),
        )
