"""A sample customer API to put tokenproxy in front of (the ``upstream`` of docker-compose.yml).

A stand-in for a helpdesk's backend: a few fictional customers held in memory, served as
the JSON shapes that ``tokenproxy.example.toml`` and ``examples/tokenproxy.compose.toml``
route. It has no database, no authentication and forgets every change at exit: a demo,
never a template for a real service.

    GET  /customers?q=&limit=   {"customers": [...], "count": n}   (q: a case-insensitive
                                                                   substring of the name)
    GET  /customers/{id}        one customer, 404 if unknown
    PUT  /customers/{id}        save full_name, phone and notes from a JSON object
    GET  /health                text/plain "ok"

Errors are JSON too (``{"error": "..."}``): tokenproxy refuses a body it cannot read on a
route that may carry customer data, so a text/plain 404 would reach the client as a 502.

Run it with ``python -m examples.sample_upstream --port 9000`` from the repository root
(aiohttp is a dependency of tokenproxy, so the tokenproxy image and venv both have it).
"""

from __future__ import annotations

import argparse
import copy
import json
from typing import Any

from aiohttp import web

SAMPLE_CUSTOMERS: tuple[dict[str, Any], ...] = (
    {"id": 1001, "full_name": "Budi Santoso", "phone": "+62 812-3456-789"},
    {"id": 1002, "full_name": "Siti Nurhaliza", "phone": "+62 813-9876-5432"},
    {"id": 1003, "full_name": "Zoë O'Brien-Łukasz", "phone": "+44 20 7946 0958"},
    {"id": 1004, "full_name": "Иван Петров", "phone": "+7 912 345-67-89"},
    {"id": 1005, "full_name": "Sukarno", "phone": "0812 1010 1945"},
)
EDITABLE = ("full_name", "phone", "notes")
CUSTOMERS: web.AppKey[dict[int, dict[str, Any]]] = web.AppKey("customers", dict)


def sample_data() -> dict[int, dict[str, Any]]:
    """A fresh copy of the sample customers, each with a note naming them."""
    out = {}
    for customer in copy.deepcopy(SAMPLE_CUSTOMERS):
        customer["notes"] = (
            f"Called {customer['full_name']} back on {customer['phone']} about the router."
        )
        out[customer["id"]] = customer
    return out


def _error(status: type[web.HTTPError], message: str) -> web.HTTPError:
    return status(text=json.dumps({"error": message}), content_type="application/json")


def _customer(request: web.Request) -> dict[str, Any]:
    try:
        key = int(request.match_info["id"])
    except ValueError:
        raise _error(web.HTTPNotFound, "no such customer") from None
    customer = request.app[CUSTOMERS].get(key)
    if customer is None:
        raise _error(web.HTTPNotFound, "no such customer")
    return customer


async def list_customers(request: web.Request) -> web.Response:
    q = request.query.get("q", "").casefold()
    try:
        limit = max(0, int(request.query.get("limit", "100")))
    except ValueError:
        raise _error(web.HTTPBadRequest, "limit must be a number") from None
    found = [c for c in request.app[CUSTOMERS].values() if q in c["full_name"].casefold()]
    return web.json_response({"customers": found[:limit], "count": len(found)})


async def get_customer(request: web.Request) -> web.Response:
    return web.json_response(_customer(request))


async def put_customer(request: web.Request) -> web.Response:
    customer = _customer(request)
    try:
        body = await request.json()
    except ValueError:
        raise _error(web.HTTPBadRequest, "the body is not JSON") from None
    if not isinstance(body, dict) or not all(
        isinstance(body[k], str) for k in EDITABLE if k in body
    ):
        raise _error(web.HTTPBadRequest, f"send a JSON object of strings: {', '.join(EDITABLE)}")
    customer.update({k: body[k] for k in EDITABLE if k in body})
    return web.json_response(customer)


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_app() -> web.Application:
    app = web.Application()
    app[CUSTOMERS] = sample_data()
    app.router.add_get("/customers", list_customers)
    app.router.add_get("/customers/{id}", get_customer)
    app.router.add_put("/customers/{id}", put_customer)
    app.router.add_get("/health", health)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A sample customer API (in memory).")
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument("--port", type=int, default=9000, help="default: %(default)s")
    args = parser.parse_args(argv)
    web.run_app(build_app(), host=args.host, port=args.port, access_log=None,
                print=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
    main()
