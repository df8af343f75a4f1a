"""The entry points: settings from the config, run_http with SIGHUP reload, and what a
reload or a key rotation changes for the next request."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from dataclasses import replace
from pathlib import Path

import orjson
import structlog.testing
from http_env import Env

from proxy.config import load_config
from proxy.crypto.keyring import DataKey, Keyring, KeyState
from proxy.http.app import HttpContext, run_http
from proxy.http.settings import settings_from_config
from proxy.policy.fields import DefaultFields

EXAMPLE = Path(__file__).resolve().parents[2] / "tokenproxy.example.toml"


def test_settings_from_the_example_config() -> None:
    env = {"TOKENPROXY_JWT_SECRET": "s" * 32, "TOKENPROXY_COOKIE_SECRET": "c" * 32}
    settings = settings_from_config(load_config(EXAMPLE, env), env)
    assert settings.options.upstream == "http://127.0.0.1:9000"
    assert settings.options.reserved_prefix == "/_tokenproxy/"
    route, params = settings.routes.match("GET", "/customers/42")
    assert route is not None and route.pattern == "/customers/{id}" and params == {"id": "42"}
    assert settings.identity.jwt_enabled
    assert settings.ticket_header == "X-Ticket-Id" and settings.cookie_ttl == 900
    assert settings.signer is not None
    assert settings.budget.per_hour == 20
    assert settings.defaults.kind_of("msisdn") is not None
    # without secrets: header identity only, and a per-process cookie key
    bare = settings_from_config(load_config(EXAMPLE, {}), {})
    assert not bare.identity.jwt_enabled and bare.signer is not None


async def test_run_http_serves_and_sighup_reloads(http_env: Env) -> None:
    reloaded = asyncio.Event()

    async def reload() -> None:
        reloaded.set()

    ctx = HttpContext(
        http_env.ctx.settings,
        http_env.ctx.engines,
        store=http_env.store,
        tickets=http_env.tickets,
        audit=http_env.audit,
        reload=reload,
    )
    stop = asyncio.Event()
    bound: list[tuple[str, int]] = []
    task = asyncio.create_task(
        run_http(ctx, host="127.0.0.1", port=0, stop=stop, ready=bound.extend, gc_tuning=False)
    )
    try:
        for _ in range(100):
            if bound:
                break
            await asyncio.sleep(0.05)
        host, port = bound[0]
        async with http_env.session.get(f"http://{host}:{port}/customers/1001") as resp:
            assert resp.status == 200
            assert resp.headers["X-Tokenproxy-Tokens"] == "3"
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(reloaded.wait(), timeout=5)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def test_reloaded_settings_apply_to_the_next_request(http_env: Env) -> None:
    _, body = await http_env.get("/customers/1001")
    email = orjson.loads(body)["email"]
    assert email == "c1001@mail.example"
    ctx = http_env.ctx
    before = ctx.settings.current
    stricter = DefaultFields(name_fields=(*before.defaults.name_fields, "email"))
    ctx.apply_settings(replace(before, defaults=stricter))
    try:
        _, body = await http_env.get("/customers/1001")
        tokenized = orjson.loads(body)["email"]
        assert tokenized != email and len(tokenized) == len(email) and "@" in tokenized
    finally:
        ctx.apply_settings(before)
    _, body = await http_env.get("/customers/1001")
    assert orjson.loads(body)["email"] == email


async def test_key_rotation_swaps_the_engine_and_old_tokens_still_resolve(http_env: Env) -> None:
    ctx = http_env.ctx
    old_engine = ctx.engines.current
    _, body = await http_env.get("/customers/1012")
    old_token = orjson.loads(body)["full_name"]
    (v1,) = old_engine.keyring.keys
    rotated = Keyring(
        (v1.with_state(KeyState.DECRYPT_ONLY), DataKey(v1.version + 1, secrets.token_bytes(32)))
    )
    ctx.swap_engine(old_engine.with_keyring(rotated))
    try:
        _, body = await http_env.get("/customers/1012")
        new_token = orjson.loads(body)["full_name"]
        assert new_token != old_token
        _, found = await http_env.get("/customers", params={"q": old_token})
        assert [c["id"] for c in orjson.loads(found)["customers"]] == [1012]
    finally:
        ctx.swap_engine(old_engine)


async def test_a_token_two_key_versions_issued_for_different_values_is_refused(
    http_env: Env,
) -> None:
    """After a rotation the new key's token of one phone may be the old key's token of
    another (two permutations of one domain); a proxy that could not check the registry
    then (its database away) issued it all the same: its row is in the table. A save that
    sends the token back is refused with 409 ambiguous-token, never resolved by a guess;
    the request's log line names the refusal, and the database keeps its values."""
    ctx = http_env.ctx
    old_engine = ctx.engines.current
    before = await http_env.customer_row(1003)
    _, body = await http_env.get("/customers/1003")
    record = orjson.loads(body)
    (v1,) = old_engine.keyring.keys
    rotated = old_engine.with_keyring(Keyring(
        (v1.with_state(KeyState.DECRYPT_ONLY), DataKey(v1.version + 1, secrets.token_bytes(32)))
    ))
    other = rotated.tokenizer("phone").detokenize(record["phone"], rotated.keyring.active,
                                                  rotated.vault)
    assert other != before["phone"]  # the phone the other proxy's token stood for
    row = ("phone", record["phone"], v1.version + 1)
    await http_env.store.pool.execute(
        "INSERT INTO token_registry (kind, token, version, method) VALUES ($1, $2, $3, 'ff1')",
        *row)
    ctx.swap_engine(rotated)
    try:
        with structlog.testing.capture_logs() as logs:
            resp, body = await http_env.request("PUT", "/customers/1003", json=record)
    finally:
        ctx.swap_engine(old_engine)
        await http_env.store.pool.execute(
            "DELETE FROM token_registry WHERE kind = $1 AND token = $2 AND version = $3", *row)
    assert resp.status == 409 and resp.headers["X-Tokenproxy-Error"] == "ambiguous-token"
    answer = orjson.loads(body)
    assert answer["error"] == "ambiguous-token" and "cite a ticket" in answer["message"]
    assert await http_env.customer_row(1003) == before
    (line,) = [e for e in logs if e["event"] == "http.request"]
    assert line["status"] == 409 and line["refused"] == "ambiguous-token"
