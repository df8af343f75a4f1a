"""The upstream of the HTTP tests: a small customer API over a real PostgreSQL table.

What a support tool's backend looks like to tokenproxy: JSON lists and records, a search, a
save, nested objects under an endpoint nobody configured, an NDJSON export, compressed
bodies, and the misbehaviours the proxy must survive (malformed JSON, a slow endpoint, a
non-JSON page).

    GET  /customers?q=&limit=            {"customers": [...], "count": n}
    GET  /customers/{id}                 one customer (404 if unknown)
    PUT  /customers/{id}                 save full_name, phone, notes, email from a JSON body
    GET  /customers/by-phone/{phone}     one customer by exact phone number
    GET  /customers/{id}/calls           {"customer_id", "calls": [{"caller": {name, msisdn}}]}
    GET  /export.ndjson                  every customer, one JSON per line
    GET  /compressed/{gzip|deflate|br}/customers   the list, compressed that way
    GET  /snapshot/customers/{id}        one customer from memory (works with PG down)
    GET  /malformed                      truncated JSON holding a name
    GET  /slow                           answers after 3 s
    GET  /page                           an HTML page with a name in it
    GET  /health                         text/plain "ok"
    GET  /search-redirect?q=             302 to /customers?q=..., the term echoed
    *    /echo/{tail:.*}                 what the upstream received: method, path, query,
                                         headers and body (for the forwarding tests)
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from typing import Any
from urllib.parse import quote

import asyncpg
import brotli
import orjson
from aiohttp import web

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    id bigint PRIMARY KEY,
    full_name text NOT NULL,
    phone text NOT NULL,
    notes text NOT NULL DEFAULT '',
    email text NOT NULL DEFAULT ''
)
"""

# Realistic people across scripts and countries. Mononyms go through the vault.
SEED: list[tuple[int, str, str]] = [
    (1001, "Budi Santoso", "+62 812-3456-789"),
    (1002, "Siti Nurhaliza Rahmawati", "+62 813-9876-5432"),
    (1003, "Dewi Lestari", "081234567890"),
    (1004, "Agus Salim Wibowo", "+62 21 5795 1234"),
    (1005, "Zoë O'Brien-Łukasz", "+44 20 7946 0958"),
    (1006, "Иван Петрович Сидоров", "+7 912 345-67-89"),
    (1007, "Γιώργος Παπαδόπουλος", "+30 691 234 5678"),
    (1008, "محمد عبد الرحمن", "+966 50 123 4567"),
    (1009, "Nguyễn Thị Minh Khai", "+84 91 234 56 78"),
    (1010, "José María García", "+34 612 34 56 78"),
    (1011, "Sukarno", "+62 811-1010-1945"),
    (1012, "田中太郎", "+81 90-1234-5678"),
    (1013, "Priya Venkataraman", "+91 98765 43210"),
    (1014, "Wayan Sudirta", "+62 361 222 333"),
    (1015, "Rina Kusumawardani", "+62 857-1122-3344"),
]


def notes_for(name: str, phone: str) -> str:
    return f"Called {name} back on {phone} about the router; customer confirmed the address."


def seed_rows() -> list[tuple[int, str, str, str, str]]:
    return [(i, n, p, notes_for(n, p), f"c{i}@mail.example") for i, n, p in SEED]


_SYLLABLES = ("ba", "di", "ko", "ra", "su", "ti", "wa", "ni", "lo", "me", "ha", "yu")


def generated_person(n: int) -> tuple[str, str]:
    """A unique, name-like name and an Indonesian mobile number for person ``n``."""
    s = _SYLLABLES
    k = len(s)
    first = (s[n % k] + s[n // k % k] + s[n // k // k % k]).capitalize()
    last = (s[(n * 7 + 3) % k] + s[(n // k * 5 + 1) % k] + s[n // k // k % k] + "no").capitalize()
    return f"{first} {last}", f"+62 812-{n // 10000 % 10000:04d}-{n % 10000:04d}"


async def create_and_seed(pool: asyncpg.Pool, extra: int = 0) -> None:
    """The customers table with SEED, plus ``extra`` generated customers (for big lists)."""
    rows = seed_rows()
    for n in range(extra):
        i = 5000 + n
        name, phone = generated_person(n)
        rows.append((i, name, phone, notes_for(name, phone), f"c{i}@mail.example"))
    async with pool.acquire() as conn:
        await conn.execute(SCHEMA)
        await conn.executemany(
            "INSERT INTO customers (id, full_name, phone, notes, email)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
            rows,
        )


POOL = web.AppKey("pool", asyncpg.Pool)
RECEIVED = web.AppKey("received", list)
SNAPSHOT = web.AppKey("snapshot", dict)

_COLUMNS = "id, full_name, phone, notes, email"


def _json(data: Any, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def _record(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "full_name": row["full_name"],
        "phone": row["phone"],
        "notes": row["notes"],
        "email": row["email"],
        "tier": "gold" if row["id"] % 3 == 0 else "standard",
    }


async def _customers(pool: asyncpg.Pool, q: str | None, limit: int) -> list[dict[str, Any]]:
    if q:
        rows = await pool.fetch(
            f"SELECT {_COLUMNS} FROM customers WHERE full_name = $1 OR phone = $1"
            " OR full_name ILIKE '%' || $1 || '%' ORDER BY id LIMIT $2",
            q,
            limit,
        )
    else:
        rows = await pool.fetch(f"SELECT {_COLUMNS} FROM customers ORDER BY id LIMIT $1", limit)
    return [_record(r) for r in rows]


async def list_customers(request: web.Request) -> web.Response:
    limit = int(request.query.get("limit", "100"))
    found = await _customers(request.app[POOL], request.query.get("q"), limit)
    return _json({"customers": found, "count": len(found)}, ETag='"list-v1"')


async def get_customer(request: web.Request) -> web.Response:
    row = await request.app[POOL].fetchrow(
        f"SELECT {_COLUMNS} FROM customers WHERE id = $1", int(request.match_info["id"])
    )
    if row is None:
        return _json({"error": "not found"}, status=404)
    return _json(
        _record(row),
        ETag=f'"c{row["id"]}"',
        **{"Cache-Control": "max-age=60", "Content-MD5": "bm90LWEtcmVhbC1tZDU="},
    )


async def by_phone(request: web.Request) -> web.Response:
    row = await request.app[POOL].fetchrow(
        f"SELECT {_COLUMNS} FROM customers WHERE phone = $1", request.match_info["phone"]
    )
    if row is None:
        return _json({"error": "not found"}, status=404)
    return _json(_record(row))


async def put_customer(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    cid = int(request.match_info["id"])
    pool = request.app[POOL]
    row = await pool.fetchrow(
        "UPDATE customers SET full_name = $2, phone = $3, notes = $4, email = $5"
        f" WHERE id = $1 RETURNING {_COLUMNS}",
        cid,
        body["full_name"],
        body["phone"],
        body.get("notes", ""),
        body.get("email", ""),
    )
    if row is None:
        return _json({"error": "not found"}, status=404)
    return _json(_record(row))


async def calls(request: web.Request) -> web.Response:
    cid = int(request.match_info["id"])
    rows = await request.app[POOL].fetch(
        f"SELECT {_COLUMNS} FROM customers WHERE id = $1 OR id = $2 ORDER BY id", cid, cid + 1
    )
    if not rows:
        return _json({"error": "not found"}, status=404)
    me = rows[0]
    other = rows[-1]
    return _json(
        {
            "customer_id": me["id"],
            "calls": [
                {
                    "at": "2024-05-01T10:00:00Z",
                    "seconds": 312,
                    "caller": {"name": me["full_name"], "msisdn": me["phone"]},
                },
                {
                    "at": "2024-05-02T09:30:00Z",
                    "seconds": 45,
                    "caller": {"name": other["full_name"], "msisdn": other["phone"]},
                    "transferred_to": {"id": "agent-7", "display_name": "Support desk"},
                },
            ],
        }
    )


async def export(request: web.Request) -> web.Response:
    rows = await request.app[POOL].fetch(f"SELECT {_COLUMNS} FROM customers ORDER BY id")
    body = b"".join(orjson.dumps(_record(r)) + b"\n" for r in rows)
    return web.Response(body=body, content_type="application/x-ndjson")


async def compressed(request: web.Request) -> web.Response:
    encoding = request.match_info["encoding"]
    found = await _customers(request.app[POOL], None, 100)
    raw = orjson.dumps({"customers": found, "count": len(found)})
    if encoding == "gzip":
        body = gzip.compress(raw)
    elif encoding == "deflate":
        body = zlib.compress(raw)
    elif encoding == "br":
        body = brotli.compress(raw)
    else:
        raise web.HTTPNotFound()
    return web.Response(
        body=body,
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    )


async def malformed(request: web.Request) -> web.Response:
    row = await request.app[POOL].fetchrow("SELECT full_name, phone FROM customers WHERE id = 1001")
    body = b'{"customers": [{"id": 1001, "full_name": ' + orjson.dumps(row["full_name"])
    body += b', "phone": "' + row["phone"].encode() + b'", '
    return web.Response(body=body, content_type="application/json")


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(3)
    return _json({"ok": True})


async def page(request: web.Request) -> web.Response:
    row = await request.app[POOL].fetchrow("SELECT full_name FROM customers WHERE id = 1001")
    return web.Response(text=f"<h1>{row['full_name']}</h1>", content_type="text/html")


async def snapshot(request: web.Request) -> web.Response:
    """The customer from a copy taken at start-up: answers while PostgreSQL is down (the
    upstream's own database is not the proxy's store)."""
    found = request.app[SNAPSHOT].get(int(request.match_info["id"]))
    return _json(found) if found else _json({"error": "not found"}, status=404)


async def _load_snapshot(app: web.Application) -> None:
    rows = await app[POOL].fetch(f"SELECT {_COLUMNS} FROM customers WHERE id < 5000")
    app[SNAPSHOT].update({r["id"]: _record(r) for r in rows})


async def search_redirect(request: web.Request) -> web.Response:
    """Redirects to the list search, echoing the term in Location (and in a message)."""
    q = request.query.get("q", "")
    return web.json_response(
        {"message": f"searching for {q}"},
        status=302,
        headers={"Location": "/customers?q=" + quote(q)},
    )


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    seen = {
        "method": request.method,
        "path": request.raw_path.split("?", 1)[0],
        "raw_path": request.raw_path,
        "query": {k: request.query.getall(k) for k in request.query},
        "headers": {str(k): request.headers.getall(k) for k in request.headers},
        "body": body.decode("utf-8", "replace"),
        "body_length": len(body),
    }
    request.app[RECEIVED].append(seen)
    return _json({"echo": seen, "id": "echo"}, **{"X-Upstream": "yes", "Keep-Alive": "timeout=5"})


def make_app(pool: asyncpg.Pool) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[POOL] = pool
    app[RECEIVED] = []
    app[SNAPSHOT] = {}
    app.on_startup.append(_load_snapshot)
    app.router.add_get("/customers", list_customers)
    app.router.add_get("/customers/by-phone/{phone}", by_phone)
    app.router.add_get("/customers/{id:\\d+}", get_customer)
    app.router.add_put("/customers/{id:\\d+}", put_customer)
    app.router.add_get("/customers/{id:\\d+}/calls", calls)
    app.router.add_get("/snapshot/customers/{id:\\d+}", snapshot)
    app.router.add_get("/export.ndjson", export)
    app.router.add_get("/compressed/{encoding}/customers", compressed)
    app.router.add_get("/malformed", malformed)
    app.router.add_get("/slow", slow)
    app.router.add_get("/page", page)
    app.router.add_get("/health", health)
    app.router.add_get("/search-redirect", search_redirect)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    return app
