"""Responses: JSON, NDJSON, compressed bodies, nested objects under an unconfigured route,
big lists, and the headers a rewrite changes."""

from __future__ import annotations

import gzip

import aiohttp
import orjson
import pytest
from http_env import Env

from proxy.http import codecs


def raw_values(rows: list[dict]) -> list[str]:  # type: ignore[type-arg]
    """Every name and phone (and the phone's digits) of the customers."""
    out: list[str] = []
    for row in rows:
        out.append(row["full_name"])
        out.append(row["phone"])
        out.append("".join(c for c in row["phone"] if c.isdigit()))
        out.extend(w for w in row["full_name"].split() if len(w) > 3)
    return out


def assert_no_pii(blob: bytes | str, rows: list[dict]) -> None:  # type: ignore[type-arg]
    text = blob if isinstance(blob, str) else blob.decode("utf-8", "replace")
    leaked = [v for v in raw_values(rows) if v and v in text]
    # Where each sits: a value of its own record passed raw, or (the keys are random) a
    # token that happens to hold another customer's name word.
    where = [text[max(0, i - 80) : i + len(v) + 40] for v in leaked[:3] if (i := text.find(v)) >= 0]
    assert not leaked, f"raw values leaked: {leaked[:5]} in {where}"


async def test_single_record_is_tokenized_format_preserving(http_env: Env) -> None:
    resp, body = await http_env.get("/customers/1001")
    assert resp.status == 200
    doc = orjson.loads(body)
    row = await http_env.customer_row(1001)
    assert doc["id"] == 1001 and doc["email"] == row["email"] and doc["tier"] == "standard"
    assert doc["full_name"] != row["full_name"]
    assert len(doc["full_name"]) == len(row["full_name"])
    assert doc["full_name"].count(" ") == row["full_name"].count(" ")
    assert doc["phone"] != row["phone"] and doc["phone"].startswith("+62 812-")
    assert len(doc["phone"]) == len(row["phone"])
    # the note carries exactly the structured fields' tokens
    assert doc["full_name"] in doc["notes"] and doc["phone"] in doc["notes"]
    assert_no_pii(body, [row])
    assert resp.headers["X-Tokenproxy-Reveal"] == "none"
    assert resp.headers["X-Tokenproxy-Tokens"] == "3"


async def test_tokens_are_stable_and_registered_before_the_body_leaves(http_env: Env) -> None:
    _, first = await http_env.get("/customers/1005")
    _, again = await http_env.get("/customers/1005")
    assert first == again
    token = orjson.loads(first)["full_name"]
    rows = await http_env.pool.fetch(
        "SELECT kind, version FROM token_registry WHERE token = $1", token
    )
    assert [(r["kind"], r["version"]) for r in rows] == [("name", 1)]


async def test_every_script_is_tokenized(http_env: Env) -> None:
    rows = await http_env.all_customers()
    seeded = [r for r in rows if r["id"] < 5000]
    resp, body = await http_env.get("/customers?limit=15")
    assert resp.status == 200
    doc = orjson.loads(body)
    assert doc["count"] == 15
    for got, row in zip(doc["customers"], seeded, strict=True):
        assert got["id"] == row["id"]
        assert got["full_name"] != row["full_name"]
        assert len(got["full_name"]) == len(row["full_name"])
    assert_no_pii(body, seeded)


async def test_list_of_a_thousand_records(http_env: Env) -> None:
    resp, body = await http_env.get("/customers?limit=1000")
    assert resp.status == 200
    doc = orjson.loads(body)
    assert doc["count"] == 1000 and len(doc["customers"]) == 1000
    assert int(resp.headers["X-Tokenproxy-Tokens"]) == 3000
    rows = await http_env.all_customers()
    assert_no_pii(body, rows[:1000])
    # the same customer gets the same token in the list as on its own
    _, one = await http_env.get("/customers/1003")
    listed = next(c for c in doc["customers"] if c["id"] == 1003)
    assert listed["full_name"] == orjson.loads(one)["full_name"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_compressed_upstream_bodies(http_env: Env, encoding: str) -> None:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as raw_session,
        raw_session.get(
            f"{http_env.proxy_url}/compressed/{encoding}/customers",
            headers={"Accept-Encoding": "gzip, deflate, br"},
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Encoding"] == encoding
        wire = await resp.read()
        assert int(resp.headers["Content-Length"]) == len(wire)
    plain = codecs.decode_body(wire, [encoding], 10_000_000)
    doc = orjson.loads(plain)
    assert doc["count"] == 100
    rows = await http_env.all_customers()
    assert_no_pii(plain, rows[:100])
    assert_no_pii(wire, rows[:100])


async def test_ndjson_export(http_env: Env) -> None:
    resp, body = await http_env.get("/export.ndjson")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in body.splitlines()]
    rows = await http_env.all_customers()
    assert len(lines) == len(rows)
    assert_no_pii(body, rows)
    _, one = await http_env.get("/customers/1010")
    assert next(x for x in lines if x["id"] == 1010)["phone"] == orjson.loads(one)["phone"]


async def test_unconfigured_route_is_protected_by_field_names(http_env: Env) -> None:
    resp, body = await http_env.get("/customers/1006/calls")
    assert resp.status == 200
    assert resp.headers["X-Tokenproxy-Reveal"] == "none"
    doc = orjson.loads(body)
    me, neighbour = await http_env.customer_row(1006), await http_env.customer_row(1007)
    assert_no_pii(body, [me, neighbour])
    caller = doc["calls"][0]["caller"]
    assert len(caller["name"]) == len(me["full_name"]) and caller["name"] != me["full_name"]
    assert caller["msisdn"] != me["phone"]
    assert doc["calls"][0]["seconds"] == 312  # everything else untouched


async def test_etag_conditional_request_and_stale_headers(http_env: Env) -> None:
    resp, body = await http_env.get("/customers/1002")
    etag = resp.headers["ETag"]
    assert etag.startswith('W/"tp-') and etag == codecs.weak_etag(body)
    assert "Content-MD5" not in resp.headers
    assert resp.headers["Cache-Control"] == "max-age=60"  # tokenized: cacheable as before
    assert "X-Ticket-Id" in resp.headers["Vary"] and "Authorization" in resp.headers["Vary"]
    assert int(resp.headers["Content-Length"]) == len(body)
    again, empty = await http_env.get("/customers/1002", headers={"If-None-Match": etag})
    assert again.status == 304 and empty == b""
    assert again.headers["ETag"] == etag
    # the upstream's own ETag means nothing here: a full, tokenized body comes back
    other, body2 = await http_env.get("/customers/1002", headers={"If-None-Match": '"c1002"'})
    assert other.status == 200 and body2 == body


async def test_gzip_request_from_client_is_answered_gzip(http_env: Env) -> None:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as raw_session,
        raw_session.get(
            f"{http_env.proxy_url}/compressed/gzip/customers",
            headers={"Accept-Encoding": "gzip"},
        ) as resp,
    ):
        body = gzip.decompress(await resp.read())
    assert orjson.loads(body)["count"] == 100


async def test_body_cache_serves_repeats_but_never_a_request_citing_a_ticket(
    http_env: Env,
) -> None:
    cache = http_env.ctx.body_cache
    _, first = await http_env.get("/customers/1013")
    hits = cache.hits
    resp, again = await http_env.get("/customers/1013", headers=http_env.auth("zed"))
    assert again == first and cache.hits == hits + 1
    assert resp.headers["X-Tokenproxy-Tokens"] == "3"
    await http_env.add_ticket("T-CACHE", "zed", [1013])
    resp, revealed = await http_env.get("/customers/1013", headers=http_env.auth("zed", "T-CACHE"))
    assert cache.hits == hits + 1
    assert resp.headers["X-Tokenproxy-Reveal"] == "allowed; customers=1"
    assert orjson.loads(revealed)["full_name"] == (await http_env.customer_row(1013))["full_name"]
    # a new keyring snapshot empties it
    engine = http_env.ctx.engines.current
    http_env.ctx.swap_engine(engine.with_keyring(engine.keyring))
    try:
        _, other = await http_env.get("/customers/1013")
        assert cache.hits == hits + 1 and other == first  # same key: same tokens, recomputed
    finally:
        http_env.ctx.swap_engine(engine)
