"""The HTTP front end: the aiohttp application, its context, and the server entry point.

Entry points (the CLI's ``tokenproxy serve`` wires them):

- :class:`HttpContext`: everything a running front end needs: the reloadable settings
  (:class:`HttpSettings`, swapped atomically on reload), the token engine (swapped
  atomically on key rotation), the store handles, metrics hooks and a reload callback;
- :func:`build_app`: the :class:`aiohttp.web.Application` for a context;
- :func:`run_http`: serve it until stopped, with SIGHUP calling the context's reload;
- :func:`serve`: run a coroutine on uvloop (where available);
- :func:`tune_gc`: the garbage-collector settings for a long-running proxy (``run_http``
  applies them; a caller serving ``build_app`` itself should call it once started).

Settings come from :func:`proxy.http.settings.settings_from_config`.

One request, in order (see :func:`handle`): identify the agent (401 on refused
credentials), read the cited ticket, match the route, resolve tokens in the path, query and
JSON body, forward, then either stream the response (nothing to rewrite) or buffer, decode,
tokenize what may not be revealed (reveals audited and committed first) and re-encode. Every
request takes **one** settings snapshot and **one** engine (keyring) snapshot at its start.
A request that cites no ticket may be answered from the cache of tokenized bodies
(:mod:`proxy.http.bodycache`) when the upstream sent the same bytes before.

Response headers say what happened, with no value in them: ``X-Tokenproxy-Reveal``
(``none``; ``allowed; customers=N``; ``denied; reason=closed``; ``partial; customers=1;
denied=14; reason=customer-not-on-ticket``), ``X-Tokenproxy-Tokens`` (values tokenized),
``X-Tokenproxy-Error`` (the code of a 502/504/503/413), ``X-Tokenproxy-Denied`` (the code
of a 401), and ``X-Request-Id`` (taken from the request when well-formed, else made; sent
upstream too).

Failures never pass the original body: an upstream failure is a 502/504, a body the proxy
cannot check on a protected route a 502 (unless its route says ``on_unparseable =
"pass"``), and any unexpected exception in the pipeline a 502. Error bodies are small JSON
with a code, a phrase and the request id; no value, path or exception text.

**What reloads.** Routes, default fields, identity, justification and budget settings
(:meth:`HttpContext.apply_settings`) and the keyring (:meth:`HttpContext.swap_engine`).
``listen``, ``upstream``, the timeouts and TLS are read at start-up: changing them needs a
restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import secrets
import signal
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog
from aiohttp import web
from multidict import CIMultiDict

from proxy.crypto.engine import TokenEngine
from proxy.http import agent_page, codecs
from proxy.http.bodycache import DEFAULT_BYTES, BodyCache, CachedBody
from proxy.http.codecs import BodyError, BodyKind
from proxy.http.forward import Forwarder, UpstreamError, response_headers
from proxy.http.identity import Identity, IdentityError
from proxy.http.justify import Citation, cite
from proxy.http.metrics import NULL_METRICS, HttpMetrics
from proxy.http.rewrite import (
    ResponseResult,
    RewriteError,
    Rewriter,
    no_reveal,
    scrub_header_echoes,
)
from proxy.http.settings import HttpOptions, HttpSettings
from proxy.http.state import STATE, RequestState, state
from proxy.policy.routes import Route
from proxy.store.audit import AuditLog
from proxy.store.durable import Store
from proxy.store.tickets import TicketStore

__all__ = [
    "CTX",
    "Holder",
    "HttpContext",
    "HttpOptions",
    "HttpSettings",
    "build_app",
    "run_http",
    "serve",
    "tune_gc",
]

log = structlog.get_logger("tokenproxy.http")

T = TypeVar("T")

REQUEST_ID_HEADER = "X-Request-Id"
REVEAL_HEADER = "X-Tokenproxy-Reveal"
TOKENS_HEADER = "X-Tokenproxy-Tokens"
ERROR_HEADER = "X-Tokenproxy-Error"
DENIED_HEADER = "X-Tokenproxy-Denied"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")
_READ_CHUNK = 64 * 1024


class Holder(Generic[T]):
    """One value swapped atomically (a single attribute store on the event loop): readers
    take ``current`` once per request and keep that snapshot to the end."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    @property
    def current(self) -> T:
        return self._value

    def swap(self, value: T) -> T:
        """Install ``value``; returns the previous one."""
        old, self._value = self._value, value
        return old


@dataclass
class HttpContext:
    """What a running HTTP front end holds. Build it, then :func:`build_app`/:func:`run_http`.

    ``store``, ``tickets`` and ``audit`` may be ``None`` (no database): tokens then come
    from the engine's own registry and vault and no reveal is ever allowed.
    ``reload`` is called on SIGHUP (and may be called by the admin API): it re-reads the
    config and keys and calls :meth:`apply_settings` / :meth:`swap_engine`.
    """

    settings: Holder[HttpSettings]
    engines: Holder[TokenEngine]
    store: Store | None = None
    tickets: TicketStore | None = None
    audit: AuditLog | None = None
    metrics: HttpMetrics = NULL_METRICS
    reload: Callable[[], Awaitable[None]] | None = None
    body_cache_bytes: int = DEFAULT_BYTES
    rewriter: Rewriter = field(init=False)
    body_cache: BodyCache = field(init=False)

    def __post_init__(self) -> None:
        self.rewriter = Rewriter(store=self.store, tickets=self.tickets, audit=self.audit)
        self.body_cache = BodyCache(self.body_cache_bytes)

    def store_settled(self) -> bool:
        """Whether tokens issued just now are durably recorded (the database answers)."""
        return self.store is None or self.store.health.healthy

    @classmethod
    def create(
        cls,
        settings: HttpSettings,
        engine: TokenEngine,
        **kwargs: Any,
    ) -> HttpContext:
        return cls(Holder(settings), Holder(engine), **kwargs)

    def apply_settings(self, settings: HttpSettings) -> None:
        """Install reloaded settings (requests already running keep their snapshot)."""
        self.settings.swap(settings)

    def swap_engine(self, engine: TokenEngine) -> None:
        """Install an engine on a new keyring snapshot (after rotation or reload)."""
        self.engines.swap(engine)

    def on_vault_lost(self, lost: set[tuple[str, str]]) -> None:
        """The store's ``on_lost`` hook: vault races lost to another proxy."""
        engine = self.engines.current
        for kind, value in lost:
            engine.forget(kind, value)
        self.rewriter.settled.forget(lost)
        self.body_cache.clear()


CTX = web.AppKey("tokenproxy_http_context", HttpContext)
FORWARDER = web.AppKey("tokenproxy_http_forwarder", Forwarder)


# -------------------------------------------------------------------------- responses


def error_response(
    status: int, code: str, reason: str, request_id: str, *, header: str = ERROR_HEADER
) -> web.Response:
    """A short JSON error: code, phrase, request id. Never a value."""
    body = codecs.dump_json({"error": code, "message": reason, "request_id": request_id})
    headers = {
        header: code,
        REQUEST_ID_HEADER: request_id,
        "Cache-Control": "no-store",
        "Content-Type": "application/json",
    }
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return web.Response(status=status, body=body, headers=headers)


def _request_id(request: web.BaseRequest) -> str:
    incoming = request.headers.get(REQUEST_ID_HEADER)
    if incoming and _REQUEST_ID.match(incoming):
        return incoming
    return secrets.token_hex(8)


@web.middleware
async def request_context(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Request id, structured log line, metrics, and the last line of fail-closed."""
    request_id = _request_id(request)
    st = RequestState(request_id)
    request[STATE] = st
    ctx = request.app[CTX]
    start = time.perf_counter()
    status = 500
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = request_id
            return response
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            status = 499
            raise
        except Exception as exc:
            log.error("http.unexpected_error", error=type(exc).__name__)
            status = 502
            ctx.metrics.upstream_error("internal-error")
            return error_response(
                502, "internal-error", "the proxy could not process this response", request_id
            )
        finally:
            seconds = time.perf_counter() - start
            ctx.metrics.request_done(st.route, request.method, status, seconds)
            log.info(
                "http.request",
                request_id=request_id,
                method=request.method,
                route=st.route,
                status=status,
                ms=round(seconds * 1000, 2),
                **st.log,
            )


# --------------------------------------------------------------------------- handling


async def handle(request: web.Request) -> web.StreamResponse:
    """Every request that is not the agent page: forward, and rewrite what must be."""
    ctx = request.app[CTX]
    settings = ctx.settings.current
    engine = ctx.engines.current
    st = state(request)
    request_id = st.request_id

    if request.path.startswith(settings.options.reserved_prefix) or (
        request.path + "/" == settings.options.reserved_prefix
    ):
        return await agent_page.dispatch(request, ctx, settings)

    try:
        identity = settings.identity.identify(request.headers, request.remote)
    except IdentityError as exc:
        st.log["denied"] = exc.code
        log.warning("http.identity_refused", code=exc.code)
        return error_response(401, exc.code, exc.reason, request_id, header=DENIED_HEADER)

    citation = cite(
        header_value=request.headers.get(settings.ticket_header),
        cookie_header=request.headers.get("Cookie"),
        cookie_name=settings.cookie_name,
        signer=settings.signer,
        agent=identity.agent,
    )
    route, params = settings.routes.match(request.method, request.path)
    label = f"{request.method} {route.pattern if route is not None else '(default)'}"
    st.route = label
    info = st.log
    info.update(
        agent=identity.agent,
        identity=identity.source,
        ticket=citation.ticket,
        ticket_source=citation.source,
    )

    forwarder = request.app[FORWARDER]
    try:
        raw_path, _, raw_query = request.raw_path.partition("?")
        echoes: dict[str, str] = {}
        path, query, resolved = await ctx.rewriter.resolve_target(
            raw_path,
            raw_query,
            route=route,
            params=params,
            defaults=settings.defaults,
            engine=engine,
            echoes=echoes,
            safe=request.method in ("GET", "HEAD", "OPTIONS"),
        )
        info["resolved"] = resolved
        headers = forwarder.request_headers(request, drop=_client_only_headers(settings))
        headers[REQUEST_ID_HEADER] = request_id
        _drop_cookie(headers, settings.cookie_name)
        codecs.strip_conditional_headers(headers)
        body, body_resolved = await _request_body(
            request, headers, ctx, settings, route, engine, echoes
        )
        info["resolved"] = resolved + body_resolved
        target = path + ("?" + query if query else "")
        upstream = await forwarder.send(request.method, target, headers, body)
    except UpstreamError as exc:
        return _upstream_failed(ctx, exc, request_id)
    except RewriteError as exc:
        return _refused(ctx, exc, st)
    except BodyError as exc:
        return error_response(400, exc.code, exc.reason, request_id)

    try:
        return await _respond(
            request, upstream, ctx, settings, engine, identity, citation, route, label, echoes
        )
    except UpstreamError as exc:
        return _upstream_failed(ctx, exc, request_id)
    except RewriteError as exc:
        return _refused(ctx, exc, st)
    finally:
        upstream.release()


def _refused(ctx: HttpContext, exc: RewriteError, st: RequestState) -> web.Response:
    """A request or response the proxy would not pass: its code goes in the request's log
    line, so that an admin can tell a stale token from an ambiguous one."""
    ctx.metrics.upstream_error(exc.code)
    st.log["refused"] = exc.code
    return error_response(exc.status, exc.code, exc.reason, st.request_id)


def _upstream_failed(ctx: HttpContext, exc: UpstreamError, request_id: str) -> web.Response:
    ctx.metrics.upstream_error(exc.code)
    log.warning("http.upstream_failed", code=exc.code, status=exc.status)
    return error_response(exc.status, exc.code, exc.reason, request_id)


def _client_only_headers(settings: HttpSettings) -> list[str]:
    """Headers that stop at the proxy: our own response headers, echoed back by a client."""
    return [REVEAL_HEADER, TOKENS_HEADER, ERROR_HEADER, DENIED_HEADER]


def _drop_cookie(headers: CIMultiDict[str], name: str) -> None:
    """Remove the ticket cookie from ``Cookie`` (it is the proxy's, not the upstream's)."""
    values = headers.getall("Cookie", [])
    if not values:
        return
    kept = []
    for value in values:
        for part in value.split(";"):
            if part.strip() and part.split("=", 1)[0].strip() != name:
                kept.append(part.strip())
    headers.popall("Cookie")
    if kept:
        headers["Cookie"] = "; ".join(kept)


async def _read_limited(request: web.BaseRequest, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise RewriteError(413, "body-too-large", "the request body is too large to check")
    chunks = []
    size = 0
    async for chunk in request.content.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise RewriteError(413, "body-too-large", "the request body is too large to check")
        chunks.append(chunk)
    return b"".join(chunks)


async def _request_body(
    request: web.Request,
    headers: CIMultiDict[str],
    ctx: HttpContext,
    settings: HttpSettings,
    route: Route | None,
    engine: TokenEngine,
    echoes: dict[str, str],
) -> tuple[bytes | Any, int]:
    """The body to forward: JSON with its tokens resolved, or the client's stream."""
    if not request.body_exists:
        return None, 0
    kind = codecs.body_kind(request.headers.get("Content-Type"))
    if kind is BodyKind.OTHER:
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        return request.content, 0
    limit = settings.options.max_body_bytes
    raw = await _read_limited(request, limit)
    if not raw.strip():
        return raw, 0
    encodings = codecs.parse_content_encoding(request.headers.get("Content-Encoding"))
    try:
        plain = codecs.decode_body(raw, encodings, limit)
        doc = codecs.parse_json(plain) if kind is BodyKind.JSON else codecs.parse_ndjson(plain)
    except BodyError:
        # Not JSON after all: it cannot hold a token we could find; pass it as sent.
        return raw, 0
    if kind is BodyKind.JSON:
        doc, count = await ctx.rewriter.resolve_body(
            doc, route=route, defaults=settings.defaults, engine=engine, echoes=echoes
        )
        if not count:
            return raw, 0
        return codecs.encode_body(codecs.dump_json(doc), encodings), count
    total = 0
    for i, line in enumerate(doc):
        doc[i], count = await ctx.rewriter.resolve_body(
            line, route=route, defaults=settings.defaults, engine=engine, echoes=echoes
        )
        total += count
    if not total:
        return raw, 0
    return codecs.encode_body(codecs.dump_ndjson(doc), encodings), total


def _no_body(request: web.BaseRequest, status: int) -> bool:
    return request.method == "HEAD" or status in (204, 304) or 100 <= status < 200


async def _respond(
    request: web.Request,
    upstream: Any,
    ctx: HttpContext,
    settings: HttpSettings,
    engine: TokenEngine,
    identity: Identity,
    citation: Citation,
    route: Route | None,
    label: str,
    echoes: dict[str, str],
) -> web.StreamResponse:
    forwarder = request.app[FORWARDER]
    request_id = state(request).request_id
    headers = response_headers(upstream.headers)
    headers[REQUEST_ID_HEADER] = request_id
    scrub_header_echoes(headers, echoes)
    kind = codecs.body_kind(upstream.headers.get("Content-Type"))
    passable = route is not None and route.on_unparseable == "pass"

    if _no_body(request, upstream.status):
        if kind is not BodyKind.OTHER:  # describes a body we would have rewritten
            for name in ("ETag", "Content-MD5", "Digest", "Content-Length"):
                headers.popall(name, None)
        return await forwarder.stream_response(request, upstream, headers)

    if kind is BodyKind.OTHER:
        if upstream.content_length == 0 or passable:
            if (
                passable
                and codecs.etag_matches(
                    request.headers.get("If-None-Match"), headers.get("ETag", "")
                )
                and "ETag" in headers
            ):
                return _not_modified(headers)
            return await forwarder.stream_response(request, upstream, headers)
        if upstream.content_length is None:  # chunked: an empty body may still pass
            with contextlib.suppress(UpstreamError):
                if not await forwarder.read_body(upstream, settings.options.max_body_bytes):
                    return web.Response(status=upstream.status, headers=headers, body=b"")
        return _unparseable(ctx, request_id, "unparseable-body", "the upstream body is not JSON")

    limit = settings.options.max_body_bytes
    raw = await forwarder.read_body(upstream, limit)
    if not raw:
        return web.Response(status=upstream.status, reason=upstream.reason, headers=headers)
    info = state(request).log
    cache_key = None
    if citation.ticket is None and not echoes:
        cache_key = BodyCache.key(
            raw, upstream.headers.get("Content-Encoding", ""), kind.value, label
        )
        hit = ctx.body_cache.get(cache_key, settings, engine)
        if hit is not None:
            reveal_header = no_reveal(citation.ticket, citation.problem, identity.agent).header
            info.update(records=hit.records, tokenized=sum(hit.tokenized.values()), cached=True)
            for kind_name, count in hit.tokenized.items():
                ctx.metrics.tokens_issued(kind_name, count)
            return _rewritten(
                request, upstream, headers, settings, hit.body, hit.changed,
                revealed=False, reveal_header=reveal_header, tokens=sum(hit.tokenized.values()),
                etag=hit.etag,
            )  # fmt: skip
    encodings = codecs.parse_content_encoding(upstream.headers.get("Content-Encoding"))
    try:
        plain = codecs.decode_body(raw, encodings, limit)
        doc = codecs.parse_json(plain) if kind is BodyKind.JSON else codecs.parse_ndjson(plain)
    except BodyError as exc:
        if passable:
            return web.Response(
                status=upstream.status, reason=upstream.reason, headers=headers, body=raw
            )
        return _unparseable(ctx, request_id, exc.code, exc.reason)

    result: ResponseResult = await ctx.rewriter.rewrite_response(
        doc,
        ndjson=kind is BodyKind.NDJSON,
        route=route,
        defaults=settings.defaults,
        engine=engine,
        agent=identity.agent,
        ticket=citation.ticket,
        citation_problem=citation.problem,
        route_label=label,
        request_id=request_id,
        budget=settings.budget,
        echoes=echoes,
    )
    revealed = bool(result.reveal.revealed)
    tokens = sum(result.tokenized.values())
    info.update(
        records=result.records,
        tokenized=tokens,
        revealed_customers=sorted(result.reveal.revealed),
        reveal=result.reveal.header,
    )
    for kind_name, count in result.tokenized.items():
        ctx.metrics.tokens_issued(kind_name, count)
    if result.reveal.revealed:
        ctx.metrics.reveals("allowed", "allowed", len(result.reveal.revealed))
    for reason, count in result.reveal.denied.items():
        ctx.metrics.reveals("denied", reason, count)

    body = raw
    etag = None
    if result.changed:
        new = (
            codecs.dump_json(result.doc)
            if kind is BodyKind.JSON
            else codecs.dump_ndjson(result.doc)
        )
        body = codecs.encode_body(new, encodings)
        etag = codecs.weak_etag(body)
    if cache_key is not None and not revealed and ctx.store_settled():
        ctx.body_cache.put(
            cache_key,
            CachedBody(body, result.changed, dict(result.tokenized), result.records, etag),
            settings,
            engine,
        )
    return _rewritten(
        request, upstream, headers, settings, body, result.changed,
        revealed=revealed, reveal_header=result.reveal.header, tokens=tokens, etag=etag,
    )  # fmt: skip


def _rewritten(
    request: web.Request,
    upstream: Any,
    headers: CIMultiDict[str],
    settings: HttpSettings,
    body: bytes,
    changed: bool,
    *,
    revealed: bool,
    reveal_header: str,
    tokens: int,
    etag: str | None = None,
) -> web.Response:
    """The response for a checked body: headers made right, 304 against our ETag."""
    if changed:
        headers = codecs.fix_rewritten_headers(
            headers, body, revealed=revealed, vary=settings.vary, etag=etag
        )
    else:  # nothing replaced: the upstream's bytes and validators stand
        codecs.add_vary(headers, settings.vary)
        if revealed:
            codecs.mark_private(headers)
    headers[REVEAL_HEADER] = reveal_header
    headers[TOKENS_HEADER] = str(tokens)
    if (
        upstream.status == 200
        and "ETag" in headers
        and codecs.etag_matches(request.headers.get("If-None-Match"), headers["ETag"])
    ):
        return _not_modified(headers)
    headers.popall("Content-Length", None)
    return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)


def _not_modified(headers: CIMultiDict[str]) -> web.Response:
    for name in ("Content-Length", "Content-Type", "Content-Encoding", "Content-MD5"):
        headers.popall(name, None)
    return web.Response(status=304, headers=headers)


def _unparseable(ctx: HttpContext, request_id: str, code: str, reason: str) -> web.Response:
    ctx.metrics.upstream_error(code)
    log.warning("http.unparseable_body", code=code)
    return error_response(502, code, reason, request_id)


# ----------------------------------------------------------------------- application


async def _forwarder_ctx(app: web.Application) -> AsyncIterator[None]:
    options = app[CTX].settings.current.options
    forwarder = Forwarder(
        options.upstream,
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
    )
    await forwarder.start()
    app[FORWARDER] = forwarder
    yield
    await forwarder.close()


def build_app(ctx: HttpContext) -> web.Application:
    """The aiohttp application of the HTTP front end for ``ctx``."""
    app = web.Application(middlewares=[request_context], handler_args={"max_field_size": 16384})
    app[CTX] = ctx
    app.cleanup_ctx.append(_forwarder_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


# ---------------------------------------------------------------------------- serving


def ssl_context_for(options: HttpOptions) -> ssl.SSLContext | None:
    if not options.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(options.tls_cert_file, options.tls_key_file)
    return context


async def _reload(ctx: HttpContext) -> None:
    if ctx.reload is None:
        log.warning("http.reload_unavailable", detail="no reload callback configured")
        return
    try:
        await ctx.reload()
    except Exception as exc:  # a bad config keeps the running one
        log.error("http.reload_failed", error=type(exc).__name__, detail=str(exc)[:300])
    else:
        log.info("http.reloaded")


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running proxy.

    A big list makes tens of thousands of short-lived objects per response, and CPython's
    default generation-0 threshold (700 allocations) then runs collections that walk the
    caches of the whole process (tokens, registry, vault) again and again: 20-30% of a big
    response's time. Objects alive after start-up are frozen out of collection and the
    young generation collects every 50,000 allocations.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


async def run_http(
    ctx: HttpContext,
    *,
    host: str | None = None,
    port: int | None = None,
    stop: asyncio.Event | None = None,
    ready: Callable[[list[tuple[str, int]]], None] | None = None,
    handle_signals: bool = True,
    shutdown_timeout: float = 10.0,
    gc_tuning: bool = True,
) -> None:
    """Serve ``ctx`` on ``[http] listen`` (or ``host``/``port``) until ``stop`` is set or
    SIGTERM/SIGINT arrives; SIGHUP runs ``ctx.reload``. ``ready`` gets the bound addresses."""
    options = ctx.settings.current.options
    default_host, default_port = options.host_port()
    app = build_app(ctx)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    pending: set[asyncio.Task[None]] = set()
    try:
        site = web.TCPSite(
            runner,
            host if host is not None else default_host,
            port if port is not None else default_port,
            ssl_context=ssl_context_for(options),
            backlog=1024,
        )
        await site.start()
        addresses = [(str(a[0]), int(a[1])) for a in runner.addresses]
        if handle_signals:

            def on_hup() -> None:
                task = loop.create_task(_reload(ctx))
                pending.add(task)
                task.add_done_callback(pending.discard)

            for sig, callback in (
                (signal.SIGHUP, on_hup),
                (signal.SIGTERM, stop.set),
                (signal.SIGINT, stop.set),
            ):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, callback)
                    installed.append(sig)
        if gc_tuning:
            tune_gc()
        log.info("http.listening", addresses=[f"{h}:{p}" for h, p in addresses], tls=options.tls)
        if ready is not None:
            ready(addresses)
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        log.info("http.stopped")


def serve(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop where it is installed (asyncio's loop elsewhere)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover (uvloop is a dependency off Windows)
        return asyncio.run(main)
    return uvloop.run(main)


def secrets_from_env(env: Mapping[str, str], name: str) -> bytes | None:
    """A secret from the environment variable ``name`` (None when unset or empty)."""
    value = env.get(name, "") if name else ""
    return value.encode() if value else None
