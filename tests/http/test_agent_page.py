"""The agent page, over plain HTTP: who is signed in, the open tickets, the CSRF-protected
form, and the cookie it sets (see test_browser.py for the same in headless Chromium)."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie

import orjson
from http_env import Env

PAGE = "/_tokenproxy/"


def as_agent(agent: str) -> dict[str, str]:
    return {"X-Authenticated-User": agent}


async def page(env: Env, agent: str) -> tuple[int, str]:
    resp, body = await env.get(PAGE, headers=as_agent(agent))
    return resp.status, body.decode()


def csrf_of(html: str) -> str:
    match = re.search(r"name=csrf value='([^']+)'", html)
    assert match, html
    return match.group(1)


async def choose(
    env: Env, agent: str, ticket: str, csrf: str, **headers: str
) -> tuple[int, dict[str, str], SimpleCookie]:
    async with env.session.post(
        env.proxy_url + PAGE + "ticket",
        data={"ticket": ticket, "csrf": csrf},
        headers={**as_agent(agent), **headers},
        allow_redirects=False,
    ) as resp:
        jar: SimpleCookie = SimpleCookie()
        for value in resp.headers.getall("Set-Cookie", []):
            jar.load(value)
        return resp.status, dict(resp.headers), jar


async def test_page_lists_only_the_agents_open_tickets(http_env: Env) -> None:
    await http_env.add_ticket("T-PAGE-1", "erin", [1008])
    await http_env.add_ticket("T-PAGE-2", "erin", [1009], status="closed")
    await http_env.add_ticket("T-PAGE-3", "frank", [1009])
    await http_env.add_ticket("T-PAGE-4", "erin", [1009], expires_in=-5)
    status, html = await page(http_env, "erin")
    assert status == 200
    assert "T-PAGE-1" in html
    for other in ("T-PAGE-2", "T-PAGE-3", "T-PAGE-4"):
        assert other not in html
    row = await http_env.customer_row(1008)
    assert row["full_name"] not in html
    resp, _ = await http_env.get(PAGE, headers=as_agent("erin"))
    assert resp.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]


async def test_anonymous_and_untrusted_visitors_are_refused(http_env: Env) -> None:
    resp, body = await http_env.get(PAGE)
    assert resp.status == 401 and b"Sign in" in body
    proxy = await http_env.start_proxy(trusted_peers=["10.0.0.0/8"])
    async with http_env.session.get(proxy + PAGE, headers=as_agent("erin")) as resp:
        assert resp.status == 401


async def test_choosing_a_ticket_sets_a_cookie_that_justifies(http_env: Env) -> None:
    await http_env.add_ticket("T-PAGE-5", "gina", [1011])
    _, html = await page(http_env, "gina")
    status, headers, jar = await choose(http_env, "gina", "T-PAGE-5", csrf_of(html))
    assert status == 303 and headers["Location"] == PAGE
    morsel = jar["tokenproxy_ticket"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert not morsel["secure"]  # plain HTTP here; Secure over TLS
    assert morsel["path"] == "/"
    assert int(morsel["max-age"]) == 900
    cookie = {"Cookie": f"tokenproxy_ticket={morsel.value}"}
    resp, body = await http_env.get("/customers/1011", headers={**as_agent("gina"), **cookie})
    assert resp.headers["X-Tokenproxy-Reveal"] == "allowed; customers=1"
    assert orjson.loads(body)["full_name"] == (await http_env.customer_row(1011))["full_name"]
    # the page now says which ticket is cited; the status endpoint too
    resp, body = await http_env.get(PAGE + "status", headers={**as_agent("gina"), **cookie})
    assert orjson.loads(body) == {
        "agent": "gina",
        "ticket": "T-PAGE-5",
        "open_tickets": ["T-PAGE-5"],
    }
    # the cookie does not travel to the upstream
    resp, body = await http_env.get("/echo/x", headers={**as_agent("gina"), **cookie})
    assert "tokenproxy_ticket" not in body.decode()
    # clearing deletes it
    async with http_env.session.post(
        http_env.proxy_url + PAGE + "clear",
        data={"csrf": csrf_of(html)},
        headers={**as_agent("gina"), **cookie},
        allow_redirects=False,
    ) as resp:
        cleared: SimpleCookie = SimpleCookie()
        cleared.load(resp.headers["Set-Cookie"])
        assert cleared["tokenproxy_ticket"].value == ""


async def test_forms_need_csrf_and_the_same_origin(http_env: Env) -> None:
    await http_env.add_ticket("T-PAGE-6", "hana", [1012])
    _, html = await page(http_env, "hana")
    token = csrf_of(html)
    status, _, jar = await choose(http_env, "hana", "T-PAGE-6", "123.forged")
    assert status == 403 and not jar
    status, _, jar = await choose(http_env, "ivan", "T-PAGE-6", token)  # hana's token
    assert status == 403 and not jar
    status, _, jar = await choose(
        http_env, "hana", "T-PAGE-6", token, Origin="https://evil.example"
    )
    assert status == 403 and not jar
    status, _, jar = await choose(
        http_env, "hana", "T-PAGE-6", token, **{"Sec-Fetch-Site": "cross-site"}
    )
    assert status == 403 and not jar


async def test_only_the_agents_open_tickets_can_be_cited(http_env: Env) -> None:
    await http_env.add_ticket("T-PAGE-7", "jack", [1013])
    await http_env.add_ticket("T-PAGE-8", "kate", [1014])
    _, html = await page(http_env, "jack")
    status, headers, jar = await choose(http_env, "jack", "T-PAGE-8", csrf_of(html))
    assert status == 303 and "error=" in headers["Location"]
    assert not jar
