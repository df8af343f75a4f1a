"""Reveals: only the cited ticket's customer, only under an open ticket assigned to the
asking agent, within budget, audited and committed before the response; everything else
stays tokenized and the response says why."""

from __future__ import annotations

from typing import Any

import orjson
from http_env import COOKIE_SECRET, Env, EnvFactory

from proxy.embedded_pg import EmbeddedPostgres
from proxy.http.justify import CookieSigner
from proxy.store.budget import BudgetLimits


async def audit_rows(env: Env, request_id: str) -> list[dict[str, Any]]:
    rows = await env.pool.fetch(
        "SELECT action, agent, ticket, customer_ids, fields, detail FROM audit_log"
        " WHERE request_id = $1 ORDER BY seq",
        request_id,
    )
    return [dict(r) for r in rows]


async def test_the_tickets_customer_is_revealed_and_his_neighbour_is_not(http_env: Env) -> None:
    await http_env.add_ticket("T-100", "alice", [1002])
    resp, body = await http_env.get("/customers?limit=15", headers=http_env.auth("alice", "T-100"))
    assert resp.status == 200
    assert resp.headers["X-Tokenproxy-Reveal"] == (
        "partial; customers=1; denied=14; reason=customer-not-on-ticket"
    )
    assert resp.headers["Cache-Control"] == "private, no-store"
    doc = orjson.loads(body)
    rows = {r["id"]: r for r in await http_env.all_customers()}
    for customer in doc["customers"]:
        row = rows[customer["id"]]
        if customer["id"] == 1002:
            assert customer["full_name"] == row["full_name"]
            assert customer["phone"] == row["phone"]
            assert customer["notes"] == row["notes"]
        else:
            assert customer["full_name"] != row["full_name"]
            assert row["full_name"] not in body.decode()
            assert row["phone"] not in body.decode()
    audit = await audit_rows(http_env, resp.headers["X-Request-Id"])
    assert (audit[0]["action"], audit[0]["customer_ids"]) == ("reveal", ["1002"])
    assert audit[0]["agent"] == "alice" and audit[0]["ticket"] == "T-100"
    assert set(audit[0]["fields"]) == {"full_name", "phone", "notes"}
    deny = audit[1]
    assert deny["action"] == "deny" and len(deny["customer_ids"]) == 14
    assert deny["detail"] == {"reason": "customer_not_on_ticket"}


async def test_revealed_single_record_keeps_the_upstream_bytes(http_env: Env) -> None:
    await http_env.add_ticket("T-101", "alice", [1007])
    resp, body = await http_env.get("/customers/1007", headers=http_env.auth("alice", "T-101"))
    assert resp.headers["X-Tokenproxy-Reveal"] == "allowed; customers=1"
    assert resp.headers["X-Tokenproxy-Tokens"] == "0"
    assert resp.headers["ETag"] == '"c1007"'  # nothing rewritten: the upstream's body as is
    assert resp.headers["Cache-Control"] == "private, no-store"
    row = await http_env.customer_row(1007)
    assert orjson.loads(body)["full_name"] == row["full_name"]


async def denied(env: Env, headers: dict[str, str], cid: int = 1001) -> str:
    resp, body = await env.get(f"/customers/{cid}", headers=headers)
    assert resp.status == 200
    row = await env.customer_row(cid)
    text = body.decode()
    assert row["full_name"] not in text and row["phone"] not in text
    return resp.headers["X-Tokenproxy-Reveal"]


async def test_closed_ticket(http_env: Env) -> None:
    await http_env.add_ticket("T-102", "alice", [1001])
    await http_env.tickets.close("T-102")
    resp, _ = await http_env.get("/customers/1001", headers=http_env.auth("alice", "T-102"))
    assert resp.headers["X-Tokenproxy-Reveal"] == "denied; reason=closed"
    audit = await audit_rows(http_env, resp.headers["X-Request-Id"])
    assert [(a["action"], a["detail"]) for a in audit] == [("deny", {"reason": "closed"})]


async def test_other_refusals(http_env: Env) -> None:
    await http_env.add_ticket("T-103", "bob", [1001])
    await http_env.add_ticket("T-104", "alice", [1001], status="pending")
    await http_env.add_ticket("T-105", "alice", [1001], expires_in=-60)
    await http_env.add_ticket("T-106", None, [1001])
    auth = http_env.auth
    assert await denied(http_env, auth("alice", "T-103")) == "denied; reason=not-assigned"
    assert await denied(http_env, auth("alice", "T-104")) == "denied; reason=pending"
    assert await denied(http_env, auth("alice", "T-105")) == "denied; reason=expired"
    assert await denied(http_env, auth("alice", "T-106")) == "denied; reason=not-assigned"
    assert await denied(http_env, auth("alice", "NO-SUCH")) == "denied; reason=unknown-ticket"
    assert await denied(http_env, auth("alice")) == "none"
    assert await denied(http_env, {"X-Ticket-Id": "T-103"}) == "denied; reason=no-identity"


async def test_no_ticket_writes_no_audit_row(http_env: Env) -> None:
    resp, _ = await http_env.get("/customers/1001", headers=http_env.auth("alice"))
    assert resp.headers["X-Tokenproxy-Reveal"] == "none"
    assert await audit_rows(http_env, resp.headers["X-Request-Id"]) == []


async def test_the_budget_stops_reveals(http_env: Env) -> None:
    proxy = await http_env.start_proxy(budget=BudgetLimits(per_hour=1, per_day=10))
    await http_env.add_ticket("T-107", "budgie", [1004, 1005])
    headers = http_env.auth("budgie", "T-107")
    seen = []
    for cid in (1004, 1005, 1004):
        async with http_env.session.get(f"{proxy}/customers/{cid}", headers=headers) as resp:
            seen.append(resp.headers["X-Tokenproxy-Reveal"])
    assert seen == [
        "allowed; customers=1",
        "denied; reason=budget-exceeded",
        "allowed; customers=1",  # a customer already seen this hour needs no budget
    ]
    alerts = await http_env.pool.fetch(
        "SELECT 1 FROM audit_log WHERE action = 'alert' AND agent = 'budgie'"
    )
    assert len(alerts) == 1


async def test_the_agent_page_cookie_justifies_like_the_header(http_env: Env) -> None:
    await http_env.add_ticket("T-108", "carol", [1006])
    signer = CookieSigner(COOKIE_SECRET)
    cookie = {"Cookie": f"tokenproxy_ticket={signer.sign('carol', 'T-108', 60)}"}
    resp, body = await http_env.get("/customers/1006", headers={**http_env.auth("carol"), **cookie})
    assert resp.headers["X-Tokenproxy-Reveal"] == "allowed; customers=1"
    assert orjson.loads(body)["full_name"] == (await http_env.customer_row(1006))["full_name"]
    # someone else's cookie, a forged one, an expired one
    assert await denied(http_env, {**http_env.auth("dave"), **cookie}, 1006) == (
        "denied; reason=cookie-agent-mismatch"
    )
    forged = {"Cookie": "tokenproxy_ticket=" + signer.sign("carol", "T-108", 60)[:-4] + "AAAA"}
    assert await denied(http_env, {**http_env.auth("carol"), **forged}, 1006) == (
        "denied; reason=bad-ticket-cookie"
    )
    old = {"Cookie": "tokenproxy_ticket=" + signer.sign("carol", "T-108", -1)}
    assert await denied(http_env, {**http_env.auth("carol"), **old}, 1006) == (
        "denied; reason=bad-ticket-cookie"
    )


async def test_database_down_denies_reveals_and_keeps_tokenizing(
    http_env_factory: EnvFactory, restartable_pg: EmbeddedPostgres
) -> None:
    env = await http_env_factory()
    await env.add_ticket("T-109", "alice", [1001])
    _, warm = await env.get("/snapshot/customers/1001")
    restartable_pg.stop_server("immediate")
    try:
        resp, body = await env.get("/snapshot/customers/1001", headers=env.auth("alice", "T-109"))
        assert resp.status == 200
        assert resp.headers["X-Tokenproxy-Reveal"] == "denied; reason=store-unavailable"
        assert body == warm  # the same tokens, from the keys in memory
        # a customer never tokenized before: tokens made from the keys, queued for the store
        resp, body = await env.get("/snapshot/customers/1002")
        assert resp.status == 200
        assert b"Siti" not in body and b"9876" not in body
        assert env.store.health.pending > 0
    finally:
        restartable_pg.start_server()
