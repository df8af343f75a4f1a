"""The admin API against a running proxy: auth, tickets, keyring and policy reloads, audit
status. Real PostgreSQL, real keys on disk, real upstream, real HTTP clients."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

from admin_env import (
    ADMIN_TOKEN,
    OTHER_TOKEN,
    SEED,
    TOKEN_NAME,
    AdminEnv,
    record,
    sha256,
)

from proxy import keystore


async def audit_rows(env: AdminEnv, action: str) -> list[dict[str, object]]:
    rows = await env.runtime.store.pool.fetch(
        "SELECT action, agent, ticket, customer_ids, detail FROM audit_log"
        " WHERE action = $1 ORDER BY seq",
        action,
    )
    return [dict(r) for r in rows]


# ------------------------------------------------------------------------ health, auth


async def test_health_and_readiness_need_no_token(admin_env: AdminEnv) -> None:
    status, body, resp = await admin_env.admin("GET", "/healthz", token=None)
    assert status == 200 and body["status"] == "ok" and body["state"] == "ready"
    assert body["store"]["database"] == "ok" and body["store"]["pending"] == 0
    assert body["keyring"]["active"] == 1
    assert "reason" not in body["store"]  # the reason text (with the DB address) is logged
    assert resp.headers["Cache-Control"] == "no-store"
    status, body, _ = await admin_env.admin("GET", "/readyz", token=None)
    assert status == 200
    assert body == {
        "ready": True,
        "state": "ready",
        "keyring": {"active": 1},
        "upstream": "configured",
        "store": "ok",
        "reveals": "enabled",
        "tokenization": "ok",
    }


async def test_bearer_tokens(admin_env: AdminEnv) -> None:
    status, body, resp = await admin_env.admin("GET", "/keyring", token=None)
    assert status == 401 and body["error"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    status, _, _ = await admin_env.admin(
        "GET", "/keyring", token=None, headers={"Authorization": f"Basic {ADMIN_TOKEN}"}
    )
    assert status == 401
    status, _, _ = await admin_env.admin(
        "GET", "/keyring", token=None, headers={"Authorization": "Bearer"}
    )
    assert status == 401
    status, body, _ = await admin_env.admin("GET", "/keyring", token=OTHER_TOKEN)
    assert status == 403 and body["error"] == "forbidden"
    status, _, _ = await admin_env.admin("GET", "/keyring", token=sha256(ADMIN_TOKEN))
    assert status == 403  # the hash in the config is not itself a token
    for method, path in (
        ("PUT", "/tickets/T-1"),
        ("POST", "/tickets/T-1/close"),
        ("POST", "/keyring/reload"),
        ("POST", "/policy/reload"),
        ("GET", "/audit/status"),
    ):
        assert (await admin_env.admin(method, path, token=None))[0] == 401, path
        assert (await admin_env.admin(method, path, token=OTHER_TOKEN))[0] == 403, path

    status, body, _ = await admin_env.admin("GET", "/keyring")
    assert status == 200
    assert body["active"] == 1
    assert body["versions"] == [
        {"version": 1, "state": "active", "created_at": body["versions"][0]["created_at"]}
    ]
    assert body["kek_id"] == keystore.kek_id(admin_env.kek)
    key = admin_env.runtime.keyring.active.material
    text = str(body)
    for form in (key.hex(), keystore.encode_kek(key), keystore.encode_kek(admin_env.kek)):
        assert form not in text


async def test_unknown_endpoints_answer_json(admin_env: AdminEnv) -> None:
    status, body, _ = await admin_env.admin("GET", "/nothing-here")
    assert status == 404 and body["error"] == "not-found"
    status, body, _ = await admin_env.admin("DELETE", "/keyring")
    assert status == 405


# ---------------------------------------------------------------------------- tickets


async def test_ticket_upsert_reveals_and_close_tokenizes_again(admin_env: AdminEnv) -> None:
    real = record(1001)
    assert real is not None
    resp, doc = await admin_env.get("/customers/1001", agent="alice", ticket="T-100")
    assert resp.status == 200 and doc["full_name"] != real["full_name"]
    assert "unknown-ticket" in resp.headers["X-Tokenproxy-Reveal"]

    # (one expiry for both upserts: one computed at each could straddle a second)
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    status, body = await admin_env.ticket("T-100", [1001, "1002"], expires_at=expires)
    assert status == 201
    assert body == {"ticket": "T-100", "result": "created", "status": "open", "customers": 2}
    resp, doc = await admin_env.get("/customers/1001", agent="alice", ticket="T-100")
    assert resp.headers["X-Tokenproxy-Reveal"] == "allowed; customers=1"
    assert doc["full_name"] == real["full_name"] and doc["phone"] == real["phone"]
    # the same ticket again: nothing changes, no audit row
    status, body = await admin_env.ticket("T-100", [1001, "1002"], expires_at=expires)
    assert (status, body["result"]) == (200, "unchanged")
    # someone else's view of the same customer stays tokenized
    resp, doc = await admin_env.get("/customers/1001", agent="bob", ticket="T-100")
    assert doc["full_name"] != real["full_name"]

    status, body, _ = await admin_env.admin("POST", "/tickets/T-100/close")
    assert (status, body) == (200, {"ticket": "T-100", "status": "closed"})
    resp, doc = await admin_env.get("/customers/1001", agent="alice", ticket="T-100")
    assert doc["full_name"] != real["full_name"] and doc["phone"] != real["phone"]
    assert resp.headers["X-Tokenproxy-Reveal"] == "denied; reason=closed"
    # closing again is idempotent; an unknown ticket is a 404
    assert (await admin_env.admin("POST", "/tickets/T-100/close"))[0] == 200
    status, body, _ = await admin_env.admin("POST", "/tickets/NOPE/close")
    assert (status, body["error"]) == (404, "unknown-ticket")

    # a late webhook dated before the close cannot reopen it
    status, body = await admin_env.ticket(
        "T-100", [1001], updated_at="2020-01-01T00:00:00Z"
    )
    assert (status, body["result"]) == (200, "stale")
    resp, doc = await admin_env.get("/customers/1001", agent="alice", ticket="T-100")
    assert doc["full_name"] != real["full_name"]

    changes = await audit_rows(admin_env, "ticket_change")
    assert [(r["agent"], r["ticket"], r["detail"]["change"]) for r in changes] == [  # type: ignore[index]
        (TOKEN_NAME, "T-100", "created"),
        (TOKEN_NAME, "T-100", "closed"),
    ]


async def test_ticket_bodies_are_checked(admin_env: AdminEnv) -> None:
    good = {"agent": "alice", "customer_ids": [1001], "status": "open",
            "expires_at": "2999-01-01T00:00:00Z"}
    cases: list[tuple[object, str]] = [
        ("not json", "not JSON"),
        ([1, 2], "JSON object"),
        ({**good, "customers": [1]}, "unknown keys: customers"),
        ({k: v for k, v in good.items() if k != "status"}, "missing keys: status"),
        ({**good, "status": "solved"}, "status must be one of"),
        ({**good, "agent": 7}, "agent must be a string"),
        ({**good, "customer_ids": "1001"}, "customer_ids must be a list"),
        ({**good, "customer_ids": [True]}, "customer_ids must be a list"),
        ({**good, "customer_ids": [1.5]}, "customer_ids must be a list"),
        ({**good, "customer_ids": []}, "names no customer"),
        ({**good, "expires_at": "2999-01-01T00:00:00"}, "no time zone"),
        ({**good, "expires_at": "tomorrow"}, "not an ISO 8601 time"),
        ({**good, "updated_at": 5}, "updated_at must be"),
    ]
    for body, expected in cases:
        kwargs = {"data": body} if isinstance(body, str) else {"json": body}
        status, answer, _ = await admin_env.admin("PUT", "/tickets/T-BAD", **kwargs)
        assert status == 400, body
        assert answer["error"] == "invalid-ticket"
        assert expected in answer["message"], (expected, answer["message"])
    # an id the ticket store refuses
    status, answer, _ = await admin_env.admin(
        "PUT", "/tickets/" + quote("T\u0007", safe=""), json=good
    )
    assert status == 400 and "ticket id" in answer["message"]
    assert await admin_env.runtime.tickets.get("T-BAD") is None


# ---------------------------------------------------------------------------- keyring


async def test_keyring_reload_after_rotation_on_disk(admin_env: AdminEnv) -> None:
    resp, before = await admin_env.get("/customers/1005")
    real = record(1005)
    assert real is not None and before["phone"] != real["phone"]

    change = keystore.rotate_keys(admin_env.keys_dir, admin_env.kek)
    assert change.created == 2
    # not reloaded yet: the proxy still makes v1 tokens
    _, same = await admin_env.get("/customers/1005")
    assert same["phone"] == before["phone"]

    status, body, _ = await admin_env.admin("POST", "/keyring/reload")
    assert status == 200
    assert body == {
        "changed": True,
        "action": "key_rotate",
        "active": 2,
        "previous_active": 1,
        "added": [2],
        "retired": [],
        "versions": {"1": "decrypt-only", "2": "active"},
        "audited": True,
    }
    _, after = await admin_env.get("/customers/1005")
    assert after["phone"] != before["phone"] and after["full_name"] != before["full_name"]
    assert after["phone"] != real["phone"]
    # a v1 token coming back still resolves (the upstream finds the customer by it)
    resp, found = await admin_env.get("/customers/by-phone/" + quote(before["phone"], safe=""))
    assert resp.status == 200 and found["id"] == 1005
    resp, found = await admin_env.get("/customers/by-phone/" + quote(after["phone"], safe=""))
    assert resp.status == 200 and found["id"] == 1005

    status, body, _ = await admin_env.admin("GET", "/keyring")
    assert [(v["version"], v["state"]) for v in body["versions"]] == [
        (1, "decrypt-only"), (2, "active")
    ]
    status, body, _ = await admin_env.admin("POST", "/keyring/reload")
    assert (status, body["changed"], body["action"]) == (200, False, None)

    # retiring v1: its tokens stop resolving, at once
    keystore.retire_key(admin_env.keys_dir, admin_env.kek, 1)
    status, body, _ = await admin_env.admin("POST", "/keyring/reload")
    assert (body["action"], body["retired"]) == ("key_retire", [1])
    resp, _ = await admin_env.get("/customers/by-phone/" + quote(before["phone"], safe=""))
    # refused, not passed on as typed: a token must never reach the upstream as data
    assert resp.status == 409
    assert resp.headers["X-Tokenproxy-Error"] == "stale-token"

    rows = await audit_rows(admin_env, "key_rotate") + await audit_rows(admin_env, "key_retire")
    assert [(r["action"], r["agent"]) for r in rows] == [
        ("key_rotate", TOKEN_NAME), ("key_retire", TOKEN_NAME)
    ]
    assert rows[0]["detail"]["active"] == 2  # type: ignore[index]


async def test_a_keyring_that_does_not_load_keeps_the_old_one(admin_env: AdminEnv) -> None:
    path = admin_env.keys_dir / keystore.key_file_name(1)
    path.write_text(path.read_text().replace('"active"', '"retired"'))
    status, body, _ = await admin_env.admin("POST", "/keyring/reload")
    assert status == 400 and body["error"] == "keyring-invalid"
    assert "fails authentication" in body["problems"][0]
    resp, _ = await admin_env.get("/customers/1001")
    assert resp.status == 200
    assert admin_env.runtime.keyring.active.version == 1


async def test_a_replaced_keys_directory_is_refused(admin_env: AdminEnv, tmp_path: Path) -> None:
    # another keyring under the same KEK: v1 there is another key
    other = tmp_path / "other-keys"
    keystore.init_keyring(other, admin_env.kek)
    path = admin_env.keys_dir / keystore.key_file_name(1)
    path.write_bytes((other / keystore.key_file_name(1)).read_bytes())
    path.chmod(0o600)
    status, body, _ = await admin_env.admin("POST", "/keyring/reload")
    assert status == 400 and "other key material" in body["problems"][0]
    path.unlink()
    status, body, _ = await admin_env.admin("POST", "/keyring/reload")
    assert status == 400 and "no key files" in body["problems"][0]
    assert admin_env.runtime.keyring.active.version == 1


# ----------------------------------------------------------------------------- policy


async def test_policy_reload_applies_and_a_broken_file_keeps_the_old(
    admin_env: AdminEnv,
) -> None:
    status, body, _ = await admin_env.admin("POST", "/policy/reload")
    assert (status, body["changed"], body["restart_required"]) == (200, False, [])

    # a second admin token, metrics behind a token, a restart-only change
    admin_env.write_config(
        tokens=((TOKEN_NAME, ADMIN_TOKEN), ("ops", OTHER_TOKEN)),
        metrics_public=False,
        admin_port=18999,
    )
    status, body, _ = await admin_env.admin("POST", "/policy/reload")
    assert status == 200
    assert body["applied"] == ["admin.tokens", "admin.metrics_public"]
    assert body["restart_required"] == ["admin.listen"]
    assert body["audited"] is True
    assert (await admin_env.admin("GET", "/keyring", token=OTHER_TOKEN))[0] == 200
    assert (await admin_env.admin("GET", "/metrics", token=None))[0] == 401
    assert (await admin_env.admin("GET", "/metrics", token=OTHER_TOKEN))[0] == 200

    good = admin_env.config_path.read_text()
    admin_env.config_path.write_text(good + "\n[http\nlisten = 1\n")
    status, body, _ = await admin_env.admin("POST", "/policy/reload", token=OTHER_TOKEN)
    assert status == 400 and body["error"] == "config-invalid"
    assert "TOML syntax error" in body["problems"][0]
    admin_env.config_path.write_text(good.replace('kind = "phone"', 'kind = "telephone"', 1))
    status, body, _ = await admin_env.admin("POST", "/policy/reload", token=OTHER_TOKEN)
    assert status == 400
    assert any("kind must be one of" in p and ":" in p for p in body["problems"])
    # still serving, under the old policy, with the old tokens
    resp, doc = await admin_env.get("/customers/1001")
    assert resp.status == 200 and doc["full_name"] != record(1001)["full_name"]  # type: ignore[index]
    assert (await admin_env.admin("GET", "/keyring", token=OTHER_TOKEN))[0] == 200

    # a route removed: its field is still protected by the default field names
    admin_env.write_config(tokens=((TOKEN_NAME, ADMIN_TOKEN),), routes="")
    status, body, _ = await admin_env.admin("POST", "/policy/reload")
    assert body["applied"] == ["http.routes", "admin.tokens", "admin.metrics_public"]
    assert (await admin_env.admin("GET", "/keyring", token=OTHER_TOKEN))[0] == 403
    resp, doc = await admin_env.get("/customers/1001")
    assert doc["full_name"] != record(1001)["full_name"]  # type: ignore[index]
    assert len(await audit_rows(admin_env, "policy_reload")) == 2


# ------------------------------------------------------------------------------ audit


async def test_audit_status_and_verify(admin_env: AdminEnv) -> None:
    await admin_env.ticket("T-A1", [1001])
    await admin_env.get("/customers/1001", agent="alice", ticket="T-A1")
    status, body, _ = await admin_env.admin("GET", "/audit/status")
    assert status == 200 and body["rows"] == body["seq"] == 2  # ticket_change, reveal
    assert body["head"].startswith("2:") and "verify" not in body
    anchor = body["head"]
    status, body, _ = await admin_env.admin(
        "GET", "/audit/status", params={"verify": "1", "anchor": anchor}
    )
    assert body["verify"]["ok"] is True and body["verify"]["rows"] == 2
    status, body, _ = await admin_env.admin("GET", "/audit/status", params={"anchor": "x"})
    assert status == 400 and body["error"] == "invalid-anchor"
    bogus = "1:" + "00" * 32
    status, body, _ = await admin_env.admin(
        "GET", "/audit/status", params={"verify": "yes", "anchor": bogus}
    )
    assert body["verify"]["ok"] is False and body["verify"]["problem"] == "rewritten"


# ---------------------------------------------------------------------------- metrics


async def test_metrics_move_and_never_carry_a_value(admin_env: AdminEnv) -> None:
    await admin_env.ticket("T-M1", [1002])
    await admin_env.get("/customers")
    await admin_env.get("/customers/1002", agent="alice", ticket="T-M1")  # revealed
    await admin_env.get("/customers/1003", agent="alice", ticket="T-M1")  # not on ticket
    resp, _ = await admin_env.get("/malformed")
    assert resp.status == 502
    await admin_env.get("/customers/1001?x=" + quote("Budi Santoso"))

    status, text, resp = await admin_env.admin("GET", "/metrics", token=None)
    assert status == 200 and resp.headers["Content-Type"].startswith("text/plain")

    def value(line_start: str) -> float:
        for line in text.splitlines():
            if line.startswith(line_start + " ") or line.startswith(line_start + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no {line_start} in /metrics")

    requests = "tokenproxy_http_requests_total"
    assert value(requests + '{method="GET",route="/customers",status="2xx"}') == 1
    assert value(
        'tokenproxy_http_requests_total{method="GET",route="/customers/{id}",status="2xx"}'
    ) == 3
    assert value('tokenproxy_tokens_issued_total{kind="name"}') >= 5
    assert value('tokenproxy_tokens_issued_total{kind="phone"}') >= 5
    assert value("tokenproxy_reveals_total") == 1
    assert value('tokenproxy_reveal_denials_total{reason="customer-not-on-ticket"}') == 1
    assert value("tokenproxy_upstream_errors_total") >= 1
    assert value("tokenproxy_store_healthy") == 1
    assert value('tokenproxy_store_pending_rows{queue="registry"}') == 0
    assert value("tokenproxy_keyring_active_version") == 1
    assert value('tokenproxy_up_state{state="ready"}') == 1
    latency = "tokenproxy_http_request_duration_seconds_count"
    assert value(latency + '{method="GET",route="/customers"}') == 1
    assert 'endpoint="PUT /tickets/{id}"' in text

    # no value, no token, no path, no ticket id
    _, listing = await admin_env.get("/customers")
    tokens = [c[key] for c in listing["customers"] for key in ("full_name", "phone")]
    secrets = [s for _, name, phone in SEED for s in (name, phone, *name.split(), quote(name))]
    # (a sample's value is a number, a creation time among them: 1.7959781002e+09 holds
    # "1002" by chance; the names, labels and help text are what could carry one)
    described = "\n".join(line.rsplit(" ", 1)[0] if not line.startswith("#") else line
                          for line in text.splitlines())
    for needle in [*secrets, *tokens, "T-M1", "/customers/1002", "1002", "Budi"]:
        assert needle not in described, needle


async def test_metrics_registries_are_independent(admin_env: AdminEnv) -> None:
    from proxy.admin.metrics import ProxyMetrics

    one, two = ProxyMetrics(process=False), ProxyMetrics(process=False)
    one.tokens_issued("name", 3)
    one.request_done("POST /customers/{id}", "POST", 201, 0.01)
    one.request_done("BREW (default)", "BREW", 405, 0.01)
    one.reveals("denied", "Budi Santoso", 1)  # not a code: never a label value
    assert b'tokenproxy_tokens_issued_total{kind="name"} 3.0' in one.render()
    assert b"tokenproxy_tokens_issued_total{" not in two.render()
    assert b'route="/customers/{id}"' in one.render()
    assert b'method="OTHER",route="(default)",status="4xx"' in one.render()
    assert b"Budi" not in one.render() and b'reason="other"' in one.render()


async def test_requests_in_flight_and_latency_are_labelled_by_pattern(admin_env: AdminEnv) -> None:
    started = time.perf_counter()
    resp, _ = await admin_env.get("/slow?s=0.2")
    assert resp.status == 200 and time.perf_counter() - started >= 0.2
    _, text, _ = await admin_env.admin("GET", "/metrics", token=None)
    assert 'route="(default)"' in text and "/slow" not in text
