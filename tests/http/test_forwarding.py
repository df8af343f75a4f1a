"""Forwarding: method, path, query, headers and bodies reach the upstream; failures are
502/504 with a short reason and nothing of the body."""

from __future__ import annotations

import os

import orjson
from customer_api import RECEIVED, SEED
from http_env import Env, EnvFactory, free_port


async def test_everything_is_forwarded_and_hop_by_hop_headers_dropped(http_env: Env) -> None:
    resp, _ = await http_env.request(
        "PATCH",
        "/echo/a%20b/c?x=1&x=2&y=%C3%A9",
        data=b"plain bytes",
        headers={
            "Content-Type": "application/octet-stream",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "must not pass",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic secret",
            "X-Custom": "passes",
            "X-Forwarded-For": "203.0.113.9",
            "Cookie": "session=abc; tokenproxy_ticket=v1.x.y; theme=dark",
            "X-Request-Id": "req-123",
        },
    )
    assert resp.status == 200
    seen = http_env.upstream_app[RECEIVED][-1]
    assert seen["method"] == "PATCH"
    assert seen["raw_path"] == "/echo/a%20b/c?x=1&x=2&y=%C3%A9"
    assert seen["query"] == {"x": ["1", "2"], "y": ["é"]}
    assert seen["body"] == "plain bytes"
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    for hop in ("x-hop", "keep-alive", "te", "proxy-authorization"):
        assert hop not in headers
    assert headers["x-custom"] == ["passes"]
    assert headers["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == [http_env.proxy_url.removeprefix("http://")]
    assert headers["host"] == [http_env.upstream_url.removeprefix("http://")]
    assert headers["cookie"] == ["session=abc; theme=dark"]  # the proxy's cookie stays here
    assert headers["x-request-id"] == ["req-123"]
    assert resp.headers["X-Request-Id"] == "req-123"
    assert resp.headers["X-Upstream"] == "yes"
    assert "Keep-Alive" not in resp.headers


async def test_large_non_json_request_body_is_streamed_intact(http_env: Env) -> None:
    payload = os.urandom(3 * 1024 * 1024)

    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(payload), 256 * 1024):
            yield payload[i : i + 256 * 1024]

    resp, body = await http_env.request(
        "POST", "/echo/upload", data=chunks(), headers={"Content-Type": "application/zip"}
    )
    assert resp.status == 200
    assert orjson.loads(body)["echo"]["body_length"] == len(payload)


async def test_pass_route_streams_a_non_json_body(http_env: Env) -> None:
    resp, body = await http_env.get("/health")
    assert resp.status == 200
    assert body == b"ok"
    assert resp.headers["Content-Type"].startswith("text/plain")


async def test_upstream_down_is_502_without_details(http_env_factory: EnvFactory) -> None:
    env = await http_env_factory(upstream_url=f"http://127.0.0.1:{free_port()}")
    resp, body = await env.get("/customers/1001")
    assert resp.status == 502
    assert resp.headers["X-Tokenproxy-Error"] == "upstream-unreachable"
    error = orjson.loads(body)
    assert error["error"] == "upstream-unreachable"
    assert error["request_id"] == resp.headers["X-Request-Id"]
    assert "127.0.0.1" not in body.decode()


async def test_slow_upstream_is_504(http_env: Env) -> None:
    resp, _ = await http_env.get("/slow")
    assert resp.status == 504
    assert resp.headers["X-Tokenproxy-Error"] == "upstream-timeout"


async def test_malformed_json_is_502_and_never_passed(http_env: Env) -> None:
    resp, body = await http_env.get("/malformed")
    assert resp.status == 502
    assert resp.headers["X-Tokenproxy-Error"] == "malformed-json"
    name, phone = SEED[0][1], SEED[0][2]
    assert name.encode() not in body and phone.encode() not in body
    assert b"Budi" not in body


async def test_non_json_body_on_a_protected_route_is_502(http_env: Env) -> None:
    resp, body = await http_env.get("/page")
    assert resp.status == 502
    assert resp.headers["X-Tokenproxy-Error"] == "unparseable-body"
    assert b"Budi" not in body


async def test_body_over_the_limit_is_refused(http_env_factory: EnvFactory) -> None:
    env = await http_env_factory(extra_customers=300, max_body_bytes=20_000)
    resp, body = await env.get("/customers?limit=300")
    assert resp.status == 502
    assert resp.headers["X-Tokenproxy-Error"] == "body-too-large"
    assert b"Budi" not in body


async def test_unknown_path_404_passes_through_rewritten(http_env: Env) -> None:
    resp, body = await http_env.get("/customers/999999")
    assert resp.status == 404
    assert orjson.loads(body) == {"error": "not found"}


async def test_reserved_prefix_is_never_forwarded(http_env: Env) -> None:
    before = len(http_env.upstream_app[RECEIVED])
    resp, _ = await http_env.get("/_tokenproxy/anything")
    assert resp.status in (401, 404)
    assert len(http_env.upstream_app[RECEIVED]) == before
