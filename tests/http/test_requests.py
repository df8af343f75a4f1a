"""Requests: tokens in the path, the query and JSON bodies are resolved before forwarding;
anything else passes as typed."""

from __future__ import annotations

from urllib.parse import quote

import orjson
from customer_api import RECEIVED
from http_env import Env, EnvFactory


async def tokenized(env: Env, cid: int) -> dict:  # type: ignore[type-arg]
    resp, body = await env.get(f"/customers/{cid}")
    assert resp.status == 200
    return orjson.loads(body)  # type: ignore[no-any-return]


async def test_search_by_name_token_finds_the_customer(http_env: Env) -> None:
    record = await tokenized(http_env, 1004)
    resp, body = await http_env.get("/customers", params={"q": record["full_name"]})
    assert resp.status == 200
    found = orjson.loads(body)["customers"]
    assert [c["id"] for c in found] == [1004]
    assert found[0]["full_name"] == record["full_name"]  # and it comes back tokenized


async def test_search_by_phone_token_finds_the_customer(http_env: Env) -> None:
    record = await tokenized(http_env, 1009)
    _, body = await http_env.get("/customers", params={"q": record["phone"]})
    assert [c["id"] for c in orjson.loads(body)["customers"]] == [1009]


async def test_token_in_a_path_segment(http_env: Env) -> None:
    record = await tokenized(http_env, 1013)
    resp, body = await http_env.get("/customers/by-phone/" + quote(record["phone"], safe=""))
    assert resp.status == 200
    assert orjson.loads(body)["id"] == 1013
    upstream_saw = http_env.upstream_app[RECEIVED]
    assert not upstream_saw or "by-phone" not in upstream_saw[-1]["path"]


async def test_a_typed_value_passes_as_typed(http_env: Env) -> None:
    row = await http_env.customer_row(1014)
    _, body = await http_env.get("/customers", params={"q": row["full_name"]})
    found = orjson.loads(body)["customers"]
    assert [c["id"] for c in found] == [1014]
    assert found[0]["full_name"] != row["full_name"]  # the answer is still tokenized
    _, body = await http_env.get("/customers", params={"q": "Nobody Anywhere"})
    assert orjson.loads(body)["count"] == 0


async def test_save_back_of_a_tokenized_record_leaves_the_database_unchanged(
    http_env: Env,
) -> None:
    before = await http_env.customer_row(1002)
    record = await tokenized(http_env, 1002)
    assert record["full_name"] != before["full_name"]
    resp, body = await http_env.request("PUT", "/customers/1002", json=record)
    assert resp.status == 200, body
    assert await http_env.customer_row(1002) == before
    assert orjson.loads(body) == record  # the saved record comes back tokenized again


async def test_save_back_of_every_script(http_env: Env) -> None:
    for cid in (1005, 1006, 1008, 1011, 1012):
        before = await http_env.customer_row(cid)
        resp, _ = await http_env.request(
            "PUT", f"/customers/{cid}", json=await tokenized(http_env, cid)
        )
        assert resp.status == 200
        assert await http_env.customer_row(cid) == before, cid


async def test_save_back_with_a_typed_change(http_env_factory: EnvFactory) -> None:
    env = await http_env_factory()
    before = await env.customer_row(1001)
    record = await tokenized(env, 1001)
    record["phone"] = "+62 811-2222-3333"  # typed by the agent: a real value
    record["notes"] = record["notes"] + " Prefers WhatsApp."
    resp, _ = await env.request("PUT", "/customers/1001", json=record)
    assert resp.status == 200
    after = await env.customer_row(1001)
    assert after["phone"] == "+62 811-2222-3333"
    assert after["full_name"] == before["full_name"]
    assert after["notes"] == before["notes"] + " Prefers WhatsApp."


async def test_query_and_body_tokens_never_reach_the_upstream(http_env: Env) -> None:
    record = await tokenized(http_env, 1015)
    row = await http_env.customer_row(1015)
    resp, body = await http_env.request(
        "POST",
        "/echo/search?phone=" + quote(record["phone"], safe="") + "&page=2",
        json={"customer": {"id": 1015, "full_name": record["full_name"]}, "limit": 5},
    )
    assert resp.status == 200
    seen = http_env.upstream_app[RECEIVED][-1]
    assert seen["query"] == {"phone": [row["phone"]], "page": ["2"]}
    assert orjson.loads(seen["body"])["customer"]["full_name"] == row["full_name"]
    # and the echo of the real values comes back tokenized
    assert row["full_name"] not in body.decode() and row["phone"] not in body.decode()


async def test_a_resolved_term_echoed_in_a_redirect_goes_back_as_the_token(
    http_env: Env,
) -> None:
    record = await tokenized(http_env, 1003)
    row = await http_env.customer_row(1003)
    async with http_env.session.get(
        http_env.proxy_url + "/search-redirect",
        params={"q": record["full_name"]},
        allow_redirects=False,
    ) as resp:
        body = await resp.read()
        assert resp.status == 302
        location = resp.headers["Location"]
    assert quote(row["full_name"]) not in location and row["full_name"] not in location
    assert quote(record["full_name"]) in location
    assert orjson.loads(body) == {"message": f"searching for {record['full_name']}"}
