"""The state database goes away: the proxy keeps tokenizing, says so in /readyz, /healthz and
/metrics, denies reveals, and recovers; it also starts while the database is down."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from admin_env import AdminEnv, record, wait_for

from proxy.embedded_pg import EmbeddedPostgres


async def readiness(env: AdminEnv) -> tuple[int, dict[str, object]]:
    status, body, _ = await env.admin("GET", "/readyz", token=None)
    return status, body


async def store_is(env: AdminEnv, state: str) -> bool:
    status, body = await readiness(env)
    return status == 200 and body["store"] == state


async def test_readyz_degraded_while_the_database_is_stopped(
    admin_env: AdminEnv, restartable_pg: EmbeddedPostgres
) -> None:
    real = record(1001)
    assert real is not None
    assert (await admin_env.ticket("T-O1", [1001]))[0] == 201
    resp, doc = await admin_env.get("/customers/1001", agent="alice", ticket="T-O1")
    assert doc["full_name"] == real["full_name"]

    restartable_pg.stop_server()
    await wait_for(lambda: store_is(admin_env, "degraded"), what="store degraded")
    status, body = await readiness(admin_env)
    assert status == 200 and body["ready"] is True and body["reveals"] == "denied"
    status, health, _ = await admin_env.admin("GET", "/healthz", token=None)
    assert health["store"]["database"] == "unavailable" and health["store"]["outages"] == 1

    # tokenization goes on; the reveal is denied (its audit row cannot be written)
    resp, doc = await admin_env.get("/customers/1001", agent="alice", ticket="T-O1")
    assert resp.status == 200
    assert doc["full_name"] != real["full_name"] and doc["phone"] != real["phone"]
    assert "store-unavailable" in resp.headers["X-Tokenproxy-Reveal"]
    resp, doc = await admin_env.get("/customers/1004")
    assert resp.status == 200 and doc["full_name"] != record(1004)["full_name"]  # type: ignore[index]
    _, text, _ = await admin_env.admin("GET", "/metrics", token=None)
    assert "tokenproxy_store_healthy 0.0" in text
    # the webhook cannot write: 503, so the helpdesk retries
    status, body = await admin_env.ticket("T-O2", [1002])
    assert (status, body["error"]) == (503, "store-unavailable")

    restartable_pg.start_server()
    await wait_for(lambda: store_is(admin_env, "ok"), what="store ok again")
    status, health, _ = await admin_env.admin("GET", "/healthz", token=None)
    assert health["store"]["pending"] == 0  # the queue was written
    resp, doc = await admin_env.get("/customers/1001", agent="alice", ticket="T-O1")
    assert doc["full_name"] == real["full_name"]


async def test_starts_while_the_database_is_down_and_catches_up(
    env_factory: Callable[..., Awaitable[AdminEnv]], restartable_pg: EmbeddedPostgres
) -> None:
    restartable_pg.stop_server()
    env = await env_factory()
    status, body = await readiness(env)
    assert status == 200 and body["store"] == "degraded" and body["reveals"] == "denied"
    status, health, _ = await env.admin("GET", "/healthz", token=None)
    assert health["store"]["schema_checked"] is False

    resp, listing = await env.get("/customers")
    assert resp.status == 200
    tokens = {c["full_name"] for c in listing["customers"]}
    assert not tokens & {record(i)["full_name"] for i in range(1001, 1006)}  # type: ignore[index]
    pending = env.runtime.store.health.pending
    assert pending > 0  # issued while away: queued

    restartable_pg.start_server()
    await wait_for(lambda: store_is(env, "ok"), within=15, what="store ok after start")
    status, health, _ = await env.admin("GET", "/healthz", token=None)
    assert health["store"]["schema_checked"] is True and health["store"]["pending"] == 0
    stored = await env.runtime.store.pool.fetch(
        "SELECT token FROM token_registry WHERE kind = 'name'"
    )
    assert tokens <= {r["token"] for r in stored}
    # and now the webhook and reveals work
    assert (await env.ticket("T-O3", [1003]))[0] == 201
    resp, doc = await env.get("/customers/1003", agent="alice", ticket="T-O3")
    assert doc["full_name"] == record(1003)["full_name"]  # type: ignore[index]


async def test_stopping_with_the_database_away_reports_the_rows_left(
    env_factory: Callable[..., Awaitable[AdminEnv]], restartable_pg: EmbeddedPostgres
) -> None:
    env = await env_factory()
    restartable_pg.stop_server()
    await wait_for(lambda: store_is(env, "degraded"), what="store degraded")
    resp, _ = await env.get("/customers")
    assert resp.status == 200 and env.runtime.store.health.pending > 0
    assert await env.runtime.shutdown() is False  # `serve` exits 1: tokens were not recorded
    status = await env.runtime.shutdown()  # idempotent
    assert status is False
