"""Cancel keys shared by proxies: a cancel that reaches another proxy than its session's.

Two front ends share one store (`proxy.store.cancel_keys`), behind a real TCP load
balancer (round robin, as a TCP one in front of several proxies): a client's session runs
through the first, the new connection its cancel opens lands on the second.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import asyncpg
import pytest
from pg_env import ProxyEnv, eventually, proxy_env, with_address
from store_fixtures import close_pool, migrated_pool  # noqa: F401  (the pool fixture)

from proxy.pg.cancels import CancelRegistry, CancelTarget
from proxy.pg.messages import CancelRequest
from proxy.store.cancel_keys import CancelKeyTable, SharedCancelKey
from proxy.store.db import DatabaseUnavailableError

pytestmark = pytest.mark.timeout(60)

T = 20.0  # an upper bound for any single step


class RoundRobin:
    """A TCP load balancer: each new connection to the next backend, bytes piped both ways."""

    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        self.chosen: list[int] = []  # the backend of each connection, in order
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> RoundRobin:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.chosen) % len(self.backends)
        self.chosen.append(index)
        up_reader, up_writer = await asyncio.open_connection(*self.backends[index])
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()
                self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@dataclass
class Pair:
    first: ProxyEnv
    second: ProxyEnv
    balancer: RoundRobin
    dsn: str  # through the balancer
    pool: asyncpg.Pool


@pytest.fixture
async def pair(module_dsn: str, pool: asyncpg.Pool) -> AsyncIterator[Pair]:
    async with AsyncExitStack() as stack:
        envs = [
            await stack.enter_async_context(
                proxy_env(module_dsn, cancels=CancelRegistry(shared=CancelKeyTable(pool)))
            )
            for _ in range(2)
        ]
        balancer = await stack.enter_async_context(
            RoundRobin([(e.host, e.port) for e in envs])
        )
        yield Pair(envs[0], envs[1], balancer,
                   with_address(module_dsn, "127.0.0.1", balancer.port), pool)


async def rows(pool: asyncpg.Pool) -> dict[int, asyncpg.Record]:
    return {r["pid"]: r for r in await pool.fetch("SELECT * FROM pg_cancel_keys")}


async def send_cancel(host: str, port: int, pid: int, secret: bytes) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(CancelRequest(pid, secret).encode())
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), T) == b""  # closed, no answer
    writer.close()


async def test_a_cancel_through_another_proxy_cancels_the_query(pair: Pair) -> None:
    victim = await asyncpg.connect(pair.dsn, timeout=T)  # through the first proxy
    try:
        pid = victim.get_server_pid()
        assert pid in pair.first.frontend.cancels._entries
        assert pid not in pair.second.frontend.cancels._entries
        secret = pair.first.frontend.cancels._entries[pid][0]
        assert bytes((await rows(pair.pool))[pid]["secret"]) == secret
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):  # asyncpg cancels it on a new connection
            await victim.fetchval("SELECT pg_sleep(30)", timeout=0.5)
        assert await victim.fetchval("SELECT 1") == 1  # usable: the query was cancelled
        assert asyncio.get_running_loop().time() - started < 10
        assert pair.balancer.chosen == [0, 1]  # the cancel went to the second proxy
    finally:
        await victim.close()
    await eventually(lambda: not pair.first.frontend.cancels._entries)
    for _ in range(100):  # the session's row goes when it ends (the proxies still running)
        if pid not in await rows(pair.pool):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the ended session's cancel key is still in the table")


async def test_a_wrong_secret_cancels_nothing_through_either_proxy(pair: Pair) -> None:
    conn = await asyncpg.connect(pair.first.dsn, timeout=T)
    try:
        pid = conn.get_server_pid()
        slow = asyncio.create_task(conn.fetchval("SELECT 1 FROM pg_sleep(1)"))
        await asyncio.sleep(0.2)
        for env in (pair.second, pair.first):
            for size in (4, 32):
                await send_cancel(env.host, env.port, pid, secrets.token_bytes(size))
        assert await asyncio.wait_for(slow, T) == 1  # ran to the end
    finally:
        await conn.close()


async def test_a_pid_another_session_holds_gets_a_random_key(pair: Pair) -> None:
    """The upstream's pid is taken in the table by a live session of another upstream
    (another proxy's row): the key issued is another pid, recorded as such."""
    other = CancelKeyTable(pair.pool)
    assert await other.put(4242, b"xxxx", SharedCancelKey("elsewhere", 5432, 1, b"yyyy"))
    registry = pair.first.frontend.cancels
    target = CancelTarget("upstream.example", 5432, 4242, secrets.token_bytes(4))
    key = await registry.issue(target)
    assert key.pid != 4242 and len(key.secret_key) == 4
    assert registry.lookup(key.pid, key.secret_key) == target
    stored = await rows(pair.pool)
    assert (stored[key.pid]["upstream_host"], stored[key.pid]["upstream_pid"]) == (
        "upstream.example", 4242)
    assert bytes(stored[key.pid]["upstream_secret"]) == target.secret_key
    assert bytes(stored[4242]["secret"]) == b"xxxx"  # left alone
    found = await pair.second.frontend.cancels.find(key.pid, key.secret_key, _no_tls)
    assert found == target
    registry.release(key)
    await registry.close()
    assert key.pid not in await rows(pair.pool)


def _no_tls() -> ssl.SSLContext:
    raise AssertionError("no TLS context is needed for an upstream reached in plain")


async def test_the_table_replaces_a_dead_sessions_row_only(pool: asyncpg.Pool) -> None:
    first, second = CancelKeyTable(pool), CancelKeyTable(pool)
    real = SharedCancelKey("db", 5432, 4242, b"real", tls=True)
    assert await first.put(4242, b"aaaa", real)
    assert await first.find(4242, b"aaaa") == real
    assert await first.find(4242, b"aaab") is None
    assert await second.find(4243, b"aaaa") is None
    # The upstream reused pid 4242: the backend of the first row has ended.
    reused = SharedCancelKey("db", 5432, 4242, b"new!")
    assert await second.put(4242, b"bbbb", reused)
    assert await first.find(4242, b"aaaa") is None
    assert await first.find(4242, b"bbbb") == reused
    # Another upstream's session under the same pid: a live one, kept.
    assert not await first.put(4242, b"cccc", SharedCancelKey("db", 5432, 777, b"othr"))
    assert await first.find(4242, b"bbbb") == reused
    await second.drop(4242, b"zzzz")  # a wrong secret drops nothing
    assert await first.find(4242, b"bbbb") == reused
    assert await first.put(1, b"dddd", real) and await first.put(2, b"eeee", real)
    assert await first.drop_instance() == 2  # its own rows only
    assert await second.find(4242, b"bbbb") == reused
    await second.drop(4242, b"bbbb")
    assert await pool.fetchval("SELECT count(*) FROM pg_cancel_keys") == 0


async def test_a_lost_store_leaves_sessions_and_their_own_cancels_working(
    module_dsn: str,
) -> None:
    """The state database does not answer (a server that accepts and never replies): the
    first session waits the table's timeout once, the next ones not; cancels through the
    session's own proxy still work."""

    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lost = await asyncpg.create_pool(f"postgresql://nobody@127.0.0.1:{port}/state",
                                     min_size=0, max_size=2)
    table = CancelKeyTable(lost, timeout=2.0)
    loop = asyncio.get_running_loop()
    try:
        with pytest.raises(DatabaseUnavailableError):
            await table.find(1, b"aaaa")
        async with proxy_env(module_dsn, cancels=CancelRegistry(shared=table)) as env:
            started = loop.time()
            victim = await asyncpg.connect(env.dsn, timeout=T)
            assert loop.time() - started >= 1.9  # the table's timeout, once
            started = loop.time()
            other = await asyncpg.connect(env.dsn, timeout=T)
            assert loop.time() - started < 1.5  # not again
            await other.close()
            try:
                started = loop.time()
                with pytest.raises(TimeoutError):
                    await victim.fetchval("SELECT pg_sleep(30)", timeout=0.5)
                assert await victim.fetchval("SELECT 1") == 1
                assert loop.time() - started < 10
                # an unknown key: the look-up fails, the cancel is dropped, nothing breaks
                await send_cancel(env.host, env.port, 12345, b"abcd")
            finally:
                await victim.close()
    finally:
        await close_pool(lost)
        server.close()
        for writer in held:
            writer.close()


async def test_a_flood_of_unknown_keys_takes_at_most_four_connections(
    pair: Pair,
) -> None:
    registry = pair.second.frontend.cancels
    async with pair.pool.acquire() as locker, locker.transaction():
        await locker.execute("LOCK TABLE pg_cancel_keys IN ACCESS EXCLUSIVE MODE")
        finds = [asyncio.create_task(registry.find(1000 + i, b"abcd", _no_tls))
                 for i in range(6)]
        done, _ = await asyncio.wait(finds, timeout=1.0)
        assert len(done) == 2 and all(t.result() is None for t in done)  # dropped at once
        for _ in range(100):  # the four look-ups reach the table (new connections first)
            waiting = await pair.pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%FROM pg_cancel_keys WHERE pid%'")
            if waiting >= 4:
                break
            await asyncio.sleep(0.1)
        assert waiting == 4 and sum(t.done() for t in finds) == 2
    assert all(r is None for r in await asyncio.wait_for(asyncio.gather(*finds), T))


async def test_keys_of_sessions_open_at_close_are_dropped(pair: Pair) -> None:
    conns = [await asyncpg.connect(pair.first.dsn, timeout=T) for _ in range(2)]
    try:
        pids = {c.get_server_pid() for c in conns}
        assert pids <= set(await rows(pair.pool))
        await pair.first.frontend.cancels.close()  # (the listener's close, sessions open)
        assert not pids & set(await rows(pair.pool))
    finally:
        for conn in conns:
            await conn.close()
