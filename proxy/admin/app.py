"""The admin HTTP API: health, metrics, the helpdesk's tickets webhook, reloads, audit status.

It listens on its own address (``admin.listen``, 127.0.0.1:8081 by default), never on the
front end's. Every answer is small JSON (``/metrics`` excepted) with ``Cache-Control:
no-store``; errors are ``{"error": code, "message": text}``.

=====================================  ======  ============================================
endpoint                               auth    what
=====================================  ======  ============================================
``GET /healthz``                       none    200 while the process runs; the state, the
                                               store's health and queues, the keyring
``GET /readyz``                        none    200 when serving (keyring loaded, upstream
                                               configured), 503 while starting or draining;
                                               ``"store": "ok"`` or ``"degraded"``
``GET /metrics``                       [1]     Prometheus text exposition
``PUT /tickets/{id}``                  bearer  create or update a ticket (the helpdesk
                                               webhook); 201 created, 200 otherwise
``POST /tickets/{id}/close``           bearer  close it: no reveal under it from the commit
``GET /keyring``                       bearer  versions, states, the active one (no material)
``POST /keyring/reload``               bearer  re-read keys/ and swap the keyring in
``POST /policy/reload``                bearer  re-read the config file; 400 with the problems
                                               if it has any (the running policy stays)
``GET /audit/status``                  bearer  the chain head and row count; ``?verify=1``
                                               walks the whole chain (``&anchor=SEQ:HASH``)
=====================================  ======  ============================================

[1] none while ``admin.metrics_public = true`` (the default: Prometheus scrapers usually
carry no token), bearer otherwise. The metrics carry no value (see
:mod:`proxy.admin.metrics`).

**Readiness with the database away.** Tokenization goes on without the database (from the
keys in memory, issued tokens queued), so the proxy still serves and ``/readyz`` stays 200,
with ``"store": "degraded"`` and ``"reveals": "denied"``: a load balancer must not take
every proxy out because the shared state database is down, which would stop the support
tools as well. Monitoring alerts on ``tokenproxy_store_healthy == 0`` (or the ``store``
field) instead. ``/healthz`` carries the details (queue lengths, outages, whether the
tickets listener is up).

**Bearer tokens.** ``Authorization: Bearer <token>``; the SHA-256 of the token is compared
with every ``admin.tokens`` entry with :func:`hmac.compare_digest` (the config holds only
hashes: ``tokenproxy admin hash-token``). No header, or not a bearer one: 401 with
``WWW-Authenticate``; a token that matches no entry: 403. The matching entry's ``name`` is
the actor in the audit log (ticket changes, key and policy reloads) and in the admin log.
Tokens reload with the policy, so a leaked token is revoked without a restart.

**The tickets webhook body**::

    {"agent": "alice" | null, "customer_ids": ["1001", 1002], "status": "open",
     "expires_at": "2024-05-01T18:00:00Z", "updated_at": "2024-05-01T09:00:00Z"}

``status`` is open, pending or closed; times are ISO 8601 with a zone. ``updated_at`` (the
helpdesk's time of the change) is optional: without it, the database's clock now. An update
older than the stored ticket is ignored and answered ``"result": "stale"`` (a late,
reordered webhook cannot reopen a closed ticket). Unknown keys are refused (a typo must not
drop a field silently).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import structlog
from aiohttp import web

from proxy.admin.metrics import CONTENT_TYPE
from proxy.admin.runtime import ReloadError, Runtime, RuntimeState
from proxy.config import AdminToken
from proxy.errors import InvalidInputError
from proxy.policy.tickets import Ticket, TicketStatus
from proxy.store.audit import Anchor
from proxy.store.db import is_unavailable
from proxy.store.tickets import UnknownTicketError, UpsertResult

__all__ = ["RUNTIME", "TicketUpdate", "authenticate", "build_admin_app", "parse_ticket_body"]

log = structlog.get_logger("tokenproxy.admin")

MAX_BODY = 64 * 1024
TICKET_KEYS = frozenset({"agent", "customer_ids", "status", "expires_at", "updated_at"})
REQUIRED_TICKET_KEYS = ("agent", "customer_ids", "status", "expires_at")

RUNTIME = web.AppKey("tokenproxy_admin_runtime", Runtime)
ACTOR = web.RequestKey("tokenproxy_admin_actor", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ProtectedHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------- answers


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    out = {"Cache-Control": "no-store"}
    out.update(headers or {})
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=out
    )


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="tokenproxy-admin"'
    return _json({"error": code, "message": message, **extra}, status, headers)


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


# ------------------------------------------------------------------------------ auth


def authenticate(header: str | None, tokens: tuple[AdminToken, ...]) -> AdminToken:
    """The admin token an ``Authorization`` header carries; raises :class:`_Refused` with
    the 401 (no bearer token) or 403 (unknown token) answer."""
    if not header:
        raise _Refused(_error(401, "unauthorized", "send Authorization: Bearer <admin token>"))
    scheme, _, credential = header.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise _Refused(_error(401, "unauthorized", "send Authorization: Bearer <admin token>"))
    digest = hashlib.sha256(credential.encode("utf-8", "surrogateescape")).hexdigest()
    found: AdminToken | None = None
    for token in tokens:  # every entry is compared: the time does not say which matched
        if hmac.compare_digest(digest, token.sha256):
            found = token
    if found is None:
        raise _Refused(_error(403, "forbidden", "this token is not an admin token here"))
    return found


def protected(handler: ProtectedHandler) -> Handler:
    """A handler that needs an admin bearer token; it gets the token's name (the actor)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        runtime = request.app[RUNTIME]
        try:
            token = authenticate(request.headers.get("Authorization"), runtime.admin.tokens)
        except _Refused as refused:
            log.warning(
                "admin.auth_refused",
                endpoint=_endpoint(request),
                peer=request.remote,
                status=refused.response.status,
            )
            return refused.response
        request[ACTOR] = token.name
        return await handler(request, token.name)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def _endpoint(request: web.Request) -> str:
    """The matched pattern (a label: never the path, which holds ticket ids)."""
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return "(unmatched)"
    return f"{request.method} {resource.canonical}"


@web.middleware
async def _admin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """JSON for aiohttp's own errors, one log line and one metric per request."""
    start = time.perf_counter()
    runtime = request.app[RUNTIME]
    status = 500
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                response = _error(exc.status, exc.reason.lower().replace(" ", "-"), exc.reason)
            else:
                raise
        except Exception as exc:
            log.exception("admin.unexpected_error", error=type(exc).__name__)
            response = _error(500, "internal-error", "the admin API failed; see the proxy log")
        status = response.status
        return response
    finally:
        endpoint = _endpoint(request)
        runtime.metrics.admin_request(endpoint, status)
        if endpoint not in _QUIET:
            log.info(
                "admin.request",
                endpoint=endpoint,
                status=status,
                actor=request.get(ACTOR),
                ms=round((time.perf_counter() - start) * 1000, 2),
            )


_QUIET = frozenset({"GET /healthz", "GET /readyz", "GET /metrics"})


# ---------------------------------------------------------------------------- health


def _keyring_summary(runtime: Runtime) -> dict[str, Any]:
    keyring = runtime.keyring
    return {
        "active": keyring.active.version,
        "versions": len(keyring.keys),
        "loaded_at": runtime.keyring_loaded_at.isoformat(),
    }


async def healthz(request: web.Request) -> web.StreamResponse:
    """Alive: 200 while the event loop runs, with the details."""
    runtime = request.app[RUNTIME]
    return _json(
        {
            "status": "ok",
            "state": str(runtime.state),
            "uptime_seconds": round(time.time() - runtime.started_at.timestamp(), 1),
            "store": runtime.store_status(),
            "keyring": _keyring_summary(runtime),
            "policy_loaded_at": runtime.policy_loaded_at.isoformat(),
        }
    )


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready to serve: 200 (store ok or degraded), 503 while starting or draining."""
    runtime = request.app[RUNTIME]
    state = runtime.state
    upstream = runtime.settings.options.upstream
    store_ok = runtime.store_ok
    body = {
        "ready": state is RuntimeState.READY and bool(upstream),
        "state": str(state),
        "keyring": {"active": runtime.keyring.active.version},
        "upstream": "configured" if upstream else "missing",
        "store": "ok" if store_ok else "degraded",
        "reveals": "enabled" if store_ok else "denied",
        "tokenization": "ok",
    }
    return _json(body, 200 if body["ready"] else 503)


async def metrics(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    if not runtime.admin.metrics_public:
        try:
            authenticate(request.headers.get("Authorization"), runtime.admin.tokens)
        except _Refused as refused:
            return refused.response
    return web.Response(
        body=runtime.metrics.render(),
        headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
    )


# --------------------------------------------------------------------------- tickets


def _time(body: Mapping[str, Any], key: str) -> datetime:
    value = body[key]
    if not isinstance(value, str):
        raise InvalidInputError(f"{key} must be an ISO 8601 time string with a zone")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(
            f"{key} is not an ISO 8601 time: write it like 2024-05-01T18:00:00Z"
        ) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidInputError(f"{key} has no time zone: add Z (UTC) or an offset like +07:00")
    return when


@dataclass(frozen=True, slots=True)
class TicketUpdate:
    """A checked webhook body; :meth:`ticket` makes the :class:`Ticket`."""

    agent: str | None
    customer_ids: tuple[str | int, ...]
    status: str
    expires_at: datetime
    updated_at: datetime | None  # None: the database's clock at the upsert

    def ticket(self, ticket_id: str, now: datetime) -> Ticket:
        """The ticket (``now`` stands in for a missing ``updated_at``); raises
        :class:`InvalidInputError` for a bad id or customer id (the message names no value)."""
        return Ticket(
            ticket_id, self.agent, self.customer_ids, self.status, self.expires_at,
            self.updated_at or now,
        )


def parse_ticket_body(raw: bytes) -> TicketUpdate:
    """The update a webhook body describes. Raises :class:`InvalidInputError` with a message
    that names keys, never a customer value."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidInputError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidInputError("the body must be a JSON object")
    unknown = sorted(set(body) - TICKET_KEYS)
    if unknown:
        raise InvalidInputError(
            f"unknown keys: {', '.join(unknown)} (a ticket has {', '.join(sorted(TICKET_KEYS))})"
        )
    missing = [k for k in REQUIRED_TICKET_KEYS if k not in body]
    if missing:
        raise InvalidInputError(f"missing keys: {', '.join(missing)}")
    agent = body["agent"]
    if agent is not None and not isinstance(agent, str):
        raise InvalidInputError("agent must be a string, or null for a ticket nobody holds")
    customers = body["customer_ids"]
    if not isinstance(customers, list) or not all(
        isinstance(c, str | int) and not isinstance(c, bool) for c in customers
    ):
        raise InvalidInputError("customer_ids must be a list of ids (strings or integers)")
    status = body["status"]
    if not isinstance(status, str) or status not in {s.value for s in TicketStatus}:
        raise InvalidInputError(
            f"status must be one of {', '.join(s.value for s in TicketStatus)}"
        )
    return TicketUpdate(
        agent,
        tuple(customers),
        status,
        _time(body, "expires_at"),
        None if body.get("updated_at") is None else _time(body, "updated_at"),
    )


def _store_failed(runtime: Runtime, exc: Exception, what: str) -> web.Response:
    if is_unavailable(exc):
        runtime.store.health.report_failure(exc)
        log.warning("admin.store_unavailable", what=what, error=type(exc).__name__)
        return _error(503, "store-unavailable", "the state database is unavailable; retry later")
    log.error("admin.store_failed", what=what, error=type(exc).__name__)
    return _error(500, "store-failed", f"the {what} failed; see the proxy log")


@protected
async def put_ticket(request: web.Request, actor: str) -> web.StreamResponse:
    """Create or update a ticket (the helpdesk webhook)."""
    runtime = request.app[RUNTIME]
    ticket_id = request.match_info["id"]
    try:
        update = parse_ticket_body(await request.read())
        ticket = update.ticket(ticket_id, update.expires_at)  # checks the ids before any I/O
    except InvalidInputError as exc:
        return _error(400, "invalid-ticket", str(exc))
    try:
        if update.updated_at is None:  # the database's clock: newer than a close just done
            ticket = update.ticket(
                ticket_id, await runtime.store.pool.fetchval("SELECT clock_timestamp()")
            )
        result = await runtime.tickets.upsert(ticket, actor=actor)
    except Exception as exc:
        return _store_failed(runtime, exc, "ticket upsert")
    return _json(
        {
            "ticket": ticket.id,
            "result": str(result),
            "status": str(ticket.status),
            "customers": len(ticket.customer_ids),
        },
        201 if result is UpsertResult.CREATED else 200,
    )


@protected
async def close_ticket(request: web.Request, actor: str) -> web.StreamResponse:
    """Close a ticket: from the commit on, it justifies no reveal anywhere."""
    runtime = request.app[RUNTIME]
    ticket_id = request.match_info["id"]
    try:
        ticket = await runtime.tickets.close(ticket_id, actor=actor)
    except UnknownTicketError:
        return _error(404, "unknown-ticket", "no ticket has this id")
    except Exception as exc:
        return _store_failed(runtime, exc, "ticket close")
    return _json({"ticket": ticket.id, "status": str(ticket.status)})


# ----------------------------------------------------------------------- keys, policy


@protected
async def keyring(request: web.Request, actor: str) -> web.StreamResponse:
    """Versions, states and the active version; never any material."""
    runtime = request.app[RUNTIME]
    ring = runtime.keyring
    return _json(
        {
            "active": ring.active.version,
            "versions": [
                {"version": k.version, "state": str(k.state), "created_at": k.created_at}
                for k in sorted(ring.keys, key=lambda k: k.version)
            ],
            "kek_id": runtime.kek_id,
            "keys_dir": str(runtime.keys_dir),
            "loaded_at": runtime.keyring_loaded_at.isoformat(),
        }
    )


@protected
async def keyring_reload(request: web.Request, actor: str) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    try:
        result = await runtime.reload_keyring(actor=actor, trigger="admin")
    except ReloadError as exc:
        return _error(400, "keyring-invalid", "the keyring did not load; the old one stays",
                      problems=exc.problems)
    return _json(result.as_dict())


@protected
async def policy_reload(request: web.Request, actor: str) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    try:
        result = await runtime.reload_policy(actor=actor, trigger="admin")
    except ReloadError as exc:
        return _error(400, "config-invalid", "the config has problems; the old policy stays",
                      problems=exc.problems)
    return _json(result.as_dict())


# ----------------------------------------------------------------------------- audit

_TRUE = frozenset({"1", "true", "yes", "on"})


@protected
async def audit_status(request: web.Request, actor: str) -> web.StreamResponse:
    """The chain head (an anchor to keep elsewhere), the row count, optionally a verify."""
    runtime = request.app[RUNTIME]
    try:
        anchors = [Anchor.parse(a) for a in request.query.getall("anchor", [])]
    except InvalidInputError as exc:
        return _error(400, "invalid-anchor", str(exc))
    try:
        head = await runtime.audit.head()
        rows = await runtime.store.pool.fetchval("SELECT count(*) FROM audit_log")
        body: dict[str, Any] = {"head": str(head), "seq": head.seq, "rows": rows}
        if request.query.get("verify", "").lower() in _TRUE:
            report = await runtime.audit.verify(progress=False, anchors=anchors)
            body["verify"] = {
                "ok": report.ok,
                "rows": report.rows,
                "head": str(report.head) if report.head else None,
                "first_bad_seq": report.first_bad_seq,
                "problem": str(report.problem) if report.problem else None,
                "message": report.message,
            }
    except Exception as exc:
        return _store_failed(runtime, exc, "audit status")
    return _json(body)


# ------------------------------------------------------------------------------- app


def build_admin_app(runtime: Runtime) -> web.Application:
    """The admin API of ``runtime`` (see the module docstring)."""
    app = web.Application(middlewares=[_admin_middleware], client_max_size=MAX_BODY)
    app[RUNTIME] = runtime
    r = app.router
    r.add_get("/healthz", healthz, allow_head=True)
    r.add_get("/readyz", readyz, allow_head=True)
    r.add_get("/metrics", metrics)
    r.add_put("/tickets/{id}", put_ticket)
    r.add_post("/tickets/{id}/close", close_ticket)
    r.add_get("/keyring", keyring)
    r.add_post("/keyring/reload", keyring_reload)
    r.add_post("/policy/reload", policy_reload)
    r.add_get("/audit/status", audit_status)
    return app
