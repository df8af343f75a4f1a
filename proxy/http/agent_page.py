"""The agent page: how a browser tool cites a ticket without adding a header.

Under the reserved prefix (``/_tokenproxy/`` by default; nothing under it is forwarded):

- ``GET  {prefix}``        the page: who is signed in, the ticket cited now, and a form
                           listing the agent's open, unexpired tickets;
- ``POST {prefix}ticket``  cite one of them: sets the signed ticket cookie (303 back);
- ``POST {prefix}clear``   stop citing: deletes the cookie (303 back);
- ``GET  {prefix}status``  the same facts as JSON (ids only), for scripts and tests.

The agent is identified exactly as for proxied requests (a JWT, or the trusted header of an
authenticating proxy in front: the usual set-up for browsers). The cookie
(:mod:`proxy.http.justify`) is ``HttpOnly``, ``SameSite=Strict``, ``Secure`` when the
request came over TLS (directly, or ``X-Forwarded-Proto: https`` from a trusted peer),
``Path=/`` and lives ``cookie_ttl`` seconds. It only *cites* the ticket: every record is
still decided live against the ticket store, so closing the ticket ends the reveals.

Forms carry a CSRF token (HMAC of the agent and the time, 1 hour) and are refused when
``Origin``/``Sec-Fetch-Site`` say the post came from another site. The page lists ticket
ids, customer ids and expiry times only: never a name or a phone number. It sends
``Cache-Control: no-store`` and a strict Content-Security-Policy (no script at all).
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from proxy.http.identity import Identity, IdentityError
from proxy.http.justify import cite, valid_ticket
from proxy.http.state import state
from proxy.policy.tickets import Ticket, TicketStatus
from proxy.store.db import is_unavailable

if TYPE_CHECKING:
    from proxy.http.app import HttpContext, HttpSettings


__all__ = ["dispatch"]

log = structlog.get_logger("tokenproxy.http.agent_page")

_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}

_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:2rem auto;max-width:44rem;color:#222}
h1{font-size:1.3rem} .muted{color:#666} table{border-collapse:collapse;width:100%}
td,th{padding:.35rem .5rem;border-bottom:1px solid #ddd;text-align:left}
.now{background:#eef7ee;padding:.6rem .8rem;border-radius:.3rem} button{padding:.35rem .8rem}
.err{background:#fbeaea;padding:.6rem .8rem;border-radius:.3rem}
"""


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )
    return web.Response(
        text=text, status=status, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS
    )


def _secure(request: web.Request, settings: HttpSettings) -> bool:
    if request.secure:
        return True
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return forwarded == "https" and settings.identity.peer_trusted(request.remote)


def _same_site(request: web.Request) -> bool:
    """Whether a form post came from this origin: ``Sec-Fetch-Site`` where the browser
    sends it, else ``Origin``; a client that sends neither is not a browser (the CSRF token
    is still required)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    host = request.headers.get("Host", request.host)
    return origin != "null" and origin.split("://", 1)[-1].rstrip("/") == host


async def _open_tickets(ctx: HttpContext, agent: str) -> list[Ticket]:
    if ctx.tickets is None:
        return []
    now = datetime.now(UTC)
    found = await ctx.tickets.list(status=TicketStatus.OPEN, agent=agent)
    return [t for t in found if t.expires_at > now]


async def dispatch(
    request: web.Request, ctx: HttpContext, settings: HttpSettings
) -> web.StreamResponse:
    """Serve a request under the reserved prefix."""
    prefix = settings.options.reserved_prefix
    sub = request.path[len(prefix) :] if request.path.startswith(prefix) else ""
    state(request).route = f"{request.method} {prefix}(agent page)"
    if settings.signer is None:
        return _page("Not available", "<p>The agent page is not configured.</p>", 503)
    try:
        identity = settings.identity.identify(request.headers, request.remote)
    except IdentityError as exc:
        return _page("Not signed in", f"<p class=err>{html.escape(exc.reason)}.</p>", 401)
    if identity.agent is None:
        return _page(
            "Not signed in",
            "<p class=err>Sign in through your company's single sign-on to choose a ticket.</p>",
            401,
        )
    route = (request.method, sub)
    try:
        if route == ("GET", ""):
            return await _show(request, ctx, settings, identity)
        if route == ("GET", "status"):
            return await _status(request, ctx, settings, identity)
        if route == ("POST", "ticket"):
            return await _choose(request, ctx, settings, identity)
        if route == ("POST", "clear"):
            return await _clear(request, settings, identity)
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        log.warning("agent_page.store_unavailable", error=type(exc).__name__)
        return _page("Unavailable", "<p class=err>The ticket store is unavailable.</p>", 503)
    return _page("Not found", "<p>Nothing here.</p>", 404)


def _current(request: web.Request, settings: HttpSettings, agent: str) -> str | None:
    citation = cite(
        header_value=None,
        cookie_header=request.headers.get("Cookie"),
        cookie_name=settings.cookie_name,
        signer=settings.signer,
        agent=agent,
    )
    return citation.ticket


async def _show(
    request: web.Request, ctx: HttpContext, settings: HttpSettings, identity: Identity
) -> web.Response:
    assert identity.agent is not None and settings.signer is not None
    agent = identity.agent
    prefix = html.escape(settings.options.reserved_prefix)
    tickets = await _open_tickets(ctx, agent)
    current = _current(request, settings, agent)
    csrf = html.escape(settings.signer.csrf_token(agent))
    parts = [
        f"<h1>Working on a ticket</h1><p class=muted>Signed in as <b>{html.escape(agent)}</b></p>"
    ]
    notice = request.query.get("error")
    if notice:
        parts.append(f"<p class=err id=error>{html.escape(notice[:200])}</p>")
    if current:
        parts.append(
            f"<p class=now id=current>Citing ticket <b>{html.escape(current)}</b>: its customers "
            "are shown in clear in your tools.</p>"
            f"<form method=post action='{prefix}clear'><input type=hidden name=csrf value='{csrf}'>"
            "<button id=clear type=submit>Stop citing</button></form>"
        )
    else:
        parts.append("<p id=current>No ticket cited: customer data is shown as tokens.</p>")
    if tickets:
        rows = []
        for t in tickets:
            tid = html.escape(t.id)
            checked = " checked" if t.id == current else ""
            expires = t.expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
            rows.append(
                f"<tr><td><label><input type=radio name=ticket value='{tid}'{checked}> {tid}"
                f"</label></td><td>{len(t.customer_ids)}</td>"
                f"<td>{expires}</td></tr>"
            )
        parts.append(
            f"<form method=post action='{prefix}ticket' id=choose>"
            f"<input type=hidden name=csrf value='{csrf}'>"
            "<table><tr><th>Open ticket</th><th>Customers</th><th>Expires</th></tr>"
            + "".join(rows)
            + "</table><p><button id=cite type=submit>Cite this ticket</button></p></form>"
        )
    else:
        parts.append("<p class=muted id=none>You have no open tickets.</p>")
    ttl = int(settings.cookie_ttl)
    parts.append(f"<p class=muted>A citation lasts {ttl // 60} minutes.</p>")
    return _page("tokenproxy: ticket", "".join(parts))


async def _status(
    request: web.Request, ctx: HttpContext, settings: HttpSettings, identity: Identity
) -> web.Response:
    assert identity.agent is not None
    tickets = await _open_tickets(ctx, identity.agent)
    return web.json_response(
        {
            "agent": identity.agent,
            "ticket": _current(request, settings, identity.agent),
            "open_tickets": [t.id for t in tickets],
        },
        headers={"Cache-Control": "no-store"},
    )


def _back(settings: HttpSettings, error: str | None = None) -> web.Response:
    location = settings.options.reserved_prefix
    if error:
        from urllib.parse import quote

        location += "?error=" + quote(error)
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


async def _form(request: web.Request, settings: HttpSettings, agent: str) -> dict[str, str] | None:
    if not _same_site(request):
        return None
    form = await request.post()
    token = form.get("csrf")
    if not isinstance(token, str) or settings.signer is None:
        return None
    if not settings.signer.csrf_ok(agent, token):
        return None
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def _choose(
    request: web.Request, ctx: HttpContext, settings: HttpSettings, identity: Identity
) -> web.Response:
    assert identity.agent is not None and settings.signer is not None
    agent = identity.agent
    form = await _form(request, settings, agent)
    if form is None:
        log.warning("agent_page.csrf_refused", agent=agent)
        return _page(
            "Refused", "<p class=err>This form has expired or came from elsewhere.</p>", 403
        )
    ticket = valid_ticket(form.get("ticket"))
    if ticket is None:
        return _back(settings, "Choose a ticket first.")
    if ticket not in {t.id for t in await _open_tickets(ctx, agent)}:
        log.warning("agent_page.ticket_refused", agent=agent, ticket=ticket)
        return _back(settings, "That ticket is not open and assigned to you.")
    response = _back(settings)
    response.set_cookie(
        settings.cookie_name,
        settings.signer.sign(agent, ticket, settings.cookie_ttl),
        max_age=int(settings.cookie_ttl),
        path="/",
        httponly=True,
        secure=_secure(request, settings),
        samesite="Strict",
    )
    log.info("agent_page.ticket_cited", agent=agent, ticket=ticket)
    return response


async def _clear(request: web.Request, settings: HttpSettings, identity: Identity) -> web.Response:
    assert identity.agent is not None
    if await _form(request, settings, identity.agent) is None:
        return _page(
            "Refused", "<p class=err>This form has expired or came from elsewhere.</p>", 403
        )
    response = _back(settings)
    response.del_cookie(
        settings.cookie_name, path="/", secure=_secure(request, settings), samesite="Strict"
    )
    log.info("agent_page.ticket_cleared", agent=identity.agent)
    return response
