"""The demo's sample support API: a helpdesk backend over the demo's customers table.

    GET  /customers?q=&limit=   {"customers": [...], "count": n}  (q: an exact name or phone,
                                                                   or part of a name)
    GET  /customers/{id}        one customer, 404 if unknown
    PUT  /customers/{id}        save full_name, phone, notes (those given) from a JSON object
    GET  /health                text/plain "ok"

It knows nothing of tokens: tokenproxy in front of it does. Errors are JSON.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from aiohttp import web

POOL: web.AppKey[asyncpg.Pool] = web.AppKey("pool", asyncpg.Pool)
EDITABLE = ("full_name", "phone", "notes")
_COLUMNS = "id, full_name, phone, notes, email, city"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _record(row: asyncpg.Record) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "full_name", "phone", "notes", "email", "city")}


def _id(request: web.Request) -> int | None:
    try:
        return int(request.match_info["id"])
    except ValueError:
        return None


async def list_customers(request: web.Request) -> web.Response:
    try:
        limit = max(0, min(1000, int(request.query.get("limit", "20"))))
    except ValueError:
        return _json({"error": "limit must be a number"}, 400)
    q = request.query.get("q", "")
    pool = request.app[POOL]
    if q:
        rows = await pool.fetch(
            "SELECT id, full_name, phone, notes, email, city FROM customers"
            " WHERE full_name = $1 OR phone = $1"
            " OR full_name ILIKE '%' || $1 || '%' ORDER BY id LIMIT $2",
            q,
            limit,
        )
    else:
        rows = await pool.fetch(
            "SELECT id, full_name, phone, notes, email, city FROM customers ORDER BY id LIMIT $1",
            limit,
        )
    return _json({"customers": [_record(r) for r in rows], "count": len(rows)})


async def get_customer(request: web.Request) -> web.Response:
    cid = _id(request)
    row = None if cid is None else await request.app[POOL].fetchrow(
        "SELECT id, full_name, phone, notes, email, city FROM customers WHERE id = $1", cid
    )
    if row is None:
        return _json({"error": "no such customer"}, 404)
    return _json(_record(row))


async def put_customer(request: web.Request) -> web.Response:
    cid = _id(request)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _json({"error": "the body is not JSON"}, 400)
    if not isinstance(body, dict) or not all(
        isinstance(body[k], str) for k in EDITABLE if k in body
    ):
        return _json({"error": f"send a JSON object of strings: {', '.join(EDITABLE)}"}, 400)
    fields = [k for k in EDITABLE if k in body]
    row = None
    if cid is not None:
        sets = ", ".join(f"{k} = ${n}" for n, k in enumerate(fields, start=2)) or "id = id"
        row = await request.app[POOL].fetchrow(
            f"UPDATE customers SET {sets} WHERE id = $1 RETURNING {_COLUMNS}",  # noqa: S608
            cid,
            *(body[k] for k in fields),
        )
    if row is None:
        return _json({"error": "no such customer"}, 404)
    return _json(_record(row))


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_app(pool: asyncpg.Pool) -> web.Application:
    app = web.Application()
    app[POOL] = pool
    app.router.add_get("/customers", list_customers)
    app.router.add_get("/customers/{id}", get_customer)
    app.router.add_put("/customers/{id}", put_customer)
    app.router.add_get("/health", health)
    return app
