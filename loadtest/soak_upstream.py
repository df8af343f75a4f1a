"""The soak's upstream customer API, backed by the customer PostgreSQL database.

``python -m loadtest.soak_upstream PORT DSN``: the routes of the harness's upstream
(:mod:`loadtest.scenarios.http`) over the ``customers`` table instead of memory, so that a
save is stored where the PostgreSQL front end's saves go, and survives a restart of this
process: ``GET /customers/{id}``, ``GET /customers?limit=&offset=``, ``PUT /customers/{id}``
(stores full_name, phone, notes, email and city as received; answers the stored record),
``GET /health``. Runs until SIGTERM.
"""

from __future__ import annotations

import sys
from typing import Any

COLUMNS = ("id", "full_name", "phone", "notes", "email", "city")
EDITABLE = ("full_name", "phone", "notes", "email", "city")
_SELECT = "SELECT id, full_name, phone, notes, email, city FROM customers"


async def serve(port: int, dsn: str) -> None:
    """The API on 127.0.0.1:``port`` until SIGTERM."""
    import asyncpg
    import orjson
    from aiohttp import web

    from loadtest.bench_http import _serve

    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=8)

    def record(row: Any) -> dict[str, Any]:
        return {k: row[k] for k in COLUMNS}

    def ident(request: web.Request) -> int | None:
        try:
            return int(request.match_info["id"])
        except ValueError:
            return None

    async def get_one(request: web.Request) -> web.Response:
        cid = ident(request)
        row = None if cid is None else await pool.fetchrow(_SELECT + " WHERE id = $1", cid)
        if row is None:
            return web.json_response({"error": "no such customer"}, status=404)
        return web.Response(body=orjson.dumps(record(row)), content_type="application/json")

    async def get_list(request: web.Request) -> web.Response:
        try:
            limit = max(0, min(1000, int(request.query.get("limit", "20"))))
            offset = max(0, int(request.query.get("offset", "0")))
        except ValueError:
            return web.json_response({"error": "limit and offset are numbers"}, status=400)
        rows = await pool.fetch(_SELECT + " ORDER BY id LIMIT $1 OFFSET $2", limit, offset)
        body = {"customers": [record(r) for r in rows], "count": len(rows)}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def put_one(request: web.Request) -> web.Response:
        cid = ident(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.json_response({"error": "not JSON"}, status=400)
        if cid is None or not isinstance(body, dict) or not all(
                isinstance(body.get(k), str) for k in EDITABLE):
            return web.json_response({"error": "every editable field, as text"}, status=400)
        row = await pool.fetchrow(
            "UPDATE customers SET full_name = $2, phone = $3, notes = $4, email = $5,"
            " city = $6 WHERE id = $1 RETURNING " + ", ".join(COLUMNS),
            cid, *(body[k] for k in EDITABLE))
        if row is None:
            return web.json_response({"error": "no such customer"}, status=404)
        return web.Response(body=orjson.dumps(record(row)), content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/customers/{id}", get_one)
    app.router.add_put("/customers/{id}", put_one)
    app.router.add_get("/customers", get_list)
    app.router.add_get("/health", health)
    try:
        await _serve(app, port)
    finally:
        await pool.close()


def main(argv: list[str]) -> int:
    from loadtest.bench_http import _run_uvloop

    _run_uvloop(serve(int(argv[0]), argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
