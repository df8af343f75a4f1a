"""Fail closed: whatever breaks inside the pipeline, the original body never leaves."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from http_env import Env, EnvFactory

from proxy.errors import VaultMissError
from proxy.http.rewrite import Rewriter, SettledTokens


async def test_an_unexpected_error_is_a_502_without_the_body(
    http_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Rewriter, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Budi Santoso")  # even an exception's text must not leave

    monkeypatch.setattr(Rewriter, "rewrite_response", broken)
    resp, body = await http_env.get("/customers?limit=5")
    assert resp.status == 502
    assert resp.headers["X-Tokenproxy-Error"] == "internal-error"
    assert b"Budi" not in body and b"+62" not in body


async def test_a_tokenizer_failure_is_a_502(http_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    async def full(self: SettledTokens, *args: Any, **kwargs: Any) -> Any:
        raise VaultMissError("the vault queue is full")

    monkeypatch.setattr(SettledTokens, "tokens", full)
    resp, body = await http_env.get(
        "/customers/1008/calls",
        headers=http_env.auth("x", "NO-SUCH"),  # not from the cache
    )
    assert resp.status == 502
    assert orjson.loads(body)["error"] == "tokenize-failed"
    assert (await http_env.customer_row(1008))["full_name"].encode() not in body


async def test_a_request_body_over_the_limit_is_413(http_env_factory: EnvFactory) -> None:
    env = await http_env_factory(max_body_bytes=1000)
    resp, body = await env.request(
        "PUT", "/customers/1001", json={"full_name": "x" * 5000, "phone": "1"}
    )
    assert resp.status == 413
    assert orjson.loads(body)["error"] == "body-too-large"
