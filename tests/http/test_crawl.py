"""The crawl: every endpoint of the upstream, without a justification (and with every kind
of bad one), and no raw name or phone number in any body, header or error; and none in the
proxy's logs either."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog
from http_env import COOKIE_SECRET, Env

from proxy.http import codecs
from proxy.http.justify import CookieSigner

ENDPOINTS = [
    "/customers",
    "/customers?limit=1000",
    "/customers/{id}",
    "/customers/{id}/calls",
    "/customers/999999",
    "/snapshot/customers/{id}",
    "/export.ndjson",
    "/compressed/gzip/customers",
    "/compressed/deflate/customers",
    "/compressed/br/customers",
    "/malformed",
    "/page",
    "/health",
    "/echo/anything?x=1",
    "/no/such/endpoint",
]


def secrets_of(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in rows:
        out += [row["full_name"], row["phone"], re.sub(r"\D", "", row["phone"])]
        out += [w for w in row["full_name"].split() if len(w) >= 6]
    return [v for v in out if v]


def leaks(text: str, values: list[str]) -> list[str]:
    return [v for v in values if v in text]


async def crawl(env: Env, headers: dict[str, str]) -> list[tuple[str, int, str]]:
    """Every endpoint (every seeded customer for the {id} ones): (path, status, all text)."""
    seeded = [r["id"] for r in await env.all_customers() if r["id"] < 5000]
    seen = []
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        for template in ENDPOINTS:
            paths = [template.format(id=i) for i in seeded] if "{id}" in template else [template]
            for path in paths:
                async with session.get(
                    env.proxy_url + path, headers={"Accept-Encoding": "gzip, br", **headers}
                ) as resp:
                    wire = await resp.read()
                    encodings = codecs.parse_content_encoding(resp.headers.get("Content-Encoding"))
                    plain = (
                        codecs.decode_body(wire, encodings, 1 << 26) if resp.status == 200 else wire
                    )
                    text = "\n".join(
                        [
                            plain.decode("utf-8", "replace"),
                            wire.decode("utf-8", "replace"),
                            *(f"{k}: {v}" for k, v in resp.headers.items()),
                        ]
                    )
                    seen.append((path, resp.status, text))
    return seen


async def test_crawl_without_justification_finds_no_name_or_phone(http_env: Env) -> None:
    rows = await http_env.all_customers()
    # every seeded customer (all scripts) and a sample of the generated thousand: searching
    # every body for all 3,000 values would take longer than the crawl
    values = secrets_of([r for r in rows if r["id"] < 5000] + rows[15::40])
    await http_env.add_ticket("T-CRAWL", "someone-else", [1001, 1002])
    signer = CookieSigner(COOKIE_SECRET)
    forged_jwt = http_env.jwt("alice", secret="forged-secret-forged-secret-forged")
    variants: list[dict[str, str]] = [
        {},
        http_env.auth("alice"),
        http_env.auth("alice", "T-CRAWL"),  # someone else's ticket
        http_env.auth("alice", "NO-SUCH-TICKET"),
        {"X-Ticket-Id": "T-CRAWL"},  # a ticket without identity
        {"Authorization": f"Bearer {forged_jwt}", "X-Ticket-Id": "T-CRAWL"},
        {
            **http_env.auth("alice"),
            "Cookie": f"tokenproxy_ticket={signer.sign('someone-else', 'T-CRAWL', 60)}",
        },
    ]
    statuses: set[int] = set()
    with structlog.testing.capture_logs() as logs:
        for headers in variants:
            for path, status, text in await crawl(http_env, headers):
                statuses.add(status)
                found = leaks(text, values)
                assert not found, f"{path} {headers} leaked {found[:3]}"
        # typed real values in a search and in a path are not logged either
        real = rows[0]
        await http_env.get("/customers?q=" + quote(real["full_name"]))
        await http_env.get("/customers/by-phone/" + quote(real["phone"], safe=""))
    assert {200, 401, 404, 502} <= statuses
    log_text = "\n".join(repr(entry) for entry in logs)
    assert not leaks(log_text, values)
    requests = [e for e in logs if e["event"] == "http.request"]
    assert requests and all(e.get("request_id") for e in requests)
