"""Forwarding to the upstream: one pooled client session, header hygiene, streaming, timeouts.

What this module owns, and nothing else (no policy, no body rewriting):

- the upstream URL of a request: the configured base URL (scheme, host, port and an
  optional path prefix) followed by the request's path and query *as received* (still
  percent-encoded: nothing is decoded and re-encoded on the way);
- the headers sent upstream: hop-by-hop headers (RFC 9110 7.6.1, and every header the
  ``Connection`` header names) are dropped, ``Host`` becomes the upstream's,
  ``X-Forwarded-For`` gets the peer appended, ``X-Forwarded-Proto``/``-Host`` are set, and
  whatever the caller asks to drop (the proxy's own cookie, an untrusted identity header) is
  removed;
- the headers sent back: hop-by-hop dropped, everything else kept;
- streaming a body that is not rewritten, both ways, without holding it in memory;
- failures: an upstream that cannot be reached, resets the connection or sends garbage is a
  **502**, one that does not answer in time a **504**. The reason given is a fixed short
  phrase: never the exception's text, which can hold the upstream URL, and the URL can hold
  a customer's real name once tokens in a query were resolved.

One idempotent request without a body (GET, HEAD, OPTIONS) is retried once when a pooled
keep-alive connection turns out to have been closed by the upstream before it answered.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

__all__ = [
    "HOP_BY_HOP",
    "Forwarder",
    "UpstreamError",
    "hop_by_hop",
    "response_headers",
]

HOP_BY_HOP = frozenset(
    istr(h)
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)

# Never forwarded upstream whatever the client sent: the proxy sets them itself, or the
# server already acted on them (Expect: 100-continue is answered by aiohttp's server).
_NOT_FORWARDED = frozenset(istr(h) for h in ("Host", "Expect", "Content-Length"))

_NOT_FORWARDED_XFF = _NOT_FORWARDED | {istr("X-Forwarded-For")}  # rebuilt below
_IDEMPOTENT_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS"})


@functools.lru_cache(maxsize=1024)
def _peer(remote: str | None) -> str:
    """The peer address as X-Forwarded-For writes it (cached: a few peers send it all)."""
    try:
        return str(ipaddress.ip_address(remote or ""))
    except ValueError:
        return "unknown"


STREAM_CHUNK = 64 * 1024


class UpstreamError(Exception):
    """The upstream failed: ``status`` is 502 or 504, ``code`` a stable token, ``reason`` a
    short phrase for the client. Neither ever carries a URL, a header or a body."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.status = status
        self.code = code
        self.reason = reason


def hop_by_hop(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[istr]:
    """Every header that must not cross the proxy: the fixed set and those ``Connection``
    names."""
    if "Connection" not in headers:
        return HOP_BY_HOP
    named = {
        istr(token.strip())
        for value in headers.getall("Connection", ())
        for token in value.split(",")
        if token.strip()
    }
    return HOP_BY_HOP | named


def response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream's response headers minus the hop-by-hop ones."""
    drop = hop_by_hop(headers)
    return CIMultiDict((k, v) for k, v in headers.items() if k not in drop)


def _host_header(request: web.BaseRequest) -> str:
    return request.headers.get("Host") or request.host


@dataclass(frozen=True, slots=True)
class Upstream:
    """The parsed upstream base URL."""

    origin: URL  # scheme://host:port
    prefix: str  # the base URL's path without a trailing slash ("" or "/api")

    @classmethod
    def parse(cls, base: str) -> Upstream:
        url = URL(base)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("the upstream must be an http:// or https:// URL with a host")
        return cls(url.origin(), url.raw_path.rstrip("/"))

    def url(self, raw_path_qs: str) -> URL:
        """The upstream URL of a request path and query, kept percent-encoded as given."""
        if not raw_path_qs.startswith("/"):
            raw_path_qs = "/" + raw_path_qs
        return URL(str(self.origin) + self.prefix + raw_path_qs, encoded=True)


class Forwarder:
    """The upstream client: a pooled session and the header rules. ``start`` before use,
    ``close`` at shutdown (the app's cleanup context does both)."""

    def __init__(
        self,
        upstream: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int = 256,
    ) -> None:
        self.upstream = Upstream.parse(upstream)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Forwarder.start() was not awaited")
        return self._session

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self.pool_size, keepalive_timeout=30.0, ttl_dns_cache=60
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self.connect_timeout, sock_read=self.read_timeout
            ),
            auto_decompress=False,  # the codecs decode what they rewrite; the rest streams
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            requote_redirect_url=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- headers ---------------------------------------------------------------------------

    def request_headers(
        self, request: web.BaseRequest, *, drop: Iterable[str] = ()
    ) -> CIMultiDict[str]:
        """The headers to send upstream for ``request`` (module docstring)."""
        dropped = hop_by_hop(request.headers) | _NOT_FORWARDED_XFF
        if drop:
            dropped = dropped | {istr(d) for d in drop}
        headers = request.headers
        out: CIMultiDict[str] = CIMultiDict(
            [(k, v) for k, v in headers.items() if k not in dropped]
        )
        peer = _peer(request.remote)
        chain = ", ".join(headers.getall("X-Forwarded-For", ()))
        out["X-Forwarded-For"] = f"{chain}, {peer}" if chain else peer
        out["X-Forwarded-Proto"] = request.scheme
        out["X-Forwarded-Host"] = _host_header(request)
        return out

    # -- sending ---------------------------------------------------------------------------

    async def send(
        self,
        method: str,
        raw_path_qs: str,
        headers: CIMultiDict[str],
        body: bytes | aiohttp.StreamReader | None,
    ) -> aiohttp.ClientResponse:
        """Send one request upstream; returns the response with its body unread.

        Raises :class:`UpstreamError` (502/504) on every failure before a response arrives.
        """
        url = self.upstream.url(raw_path_qs)
        retry = method in _IDEMPOTENT_NO_BODY and body is None
        for attempt in (1, 2):
            try:
                return await self.session.request(
                    method,
                    url,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    compress=None,
                    chunked=None,
                )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if retry and attempt == 1 and not isinstance(exc, aiohttp.ClientConnectorError):
                    continue  # a pooled keep-alive connection the upstream had closed
                raise translate(exc) from None
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                raise translate(exc) from None
        raise UpstreamError(502, "upstream-disconnected", "the upstream closed the connection")

    async def read_body(self, resp: aiohttp.ClientResponse, limit: int) -> bytes:
        """The whole (still encoded) body, at most ``limit`` bytes, else a 502."""
        length = resp.content_length
        if length is not None and length > limit:
            raise UpstreamError(502, "body-too-large", "the upstream body is too large to check")
        if length is not None:  # announced and within the limit: one read
            try:
                return await resp.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise translate(exc) from None
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in resp.content.iter_chunked(STREAM_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise UpstreamError(
                        502, "body-too-large", "the upstream body is too large to check"
                    )
                chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise translate(exc) from None
        return b"".join(chunks)

    async def stream_response(
        self,
        request: web.BaseRequest,
        resp: aiohttp.ClientResponse,
        headers: CIMultiDict[str],
    ) -> web.StreamResponse:
        """Send the upstream's response on as it arrives (status, headers, raw body)."""
        out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
        if resp.content_length is None and "Content-Length" in out.headers:
            del out.headers["Content-Length"]
        await out.prepare(request)
        if request.method == "HEAD" or resp.status in (204, 304):
            await out.write_eof()
            return out
        try:
            async for chunk in resp.content.iter_chunked(STREAM_CHUNK):
                await out.write(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError):
            # The status line is gone: all that is left is to cut the connection, so the
            # client sees a truncated body rather than a complete-looking one.
            out.force_close()
            if request.transport is not None:
                request.transport.abort()
            return out
        await out.write_eof()
        return out


def translate(exc: BaseException) -> UpstreamError:
    """The 502/504 of a client-side exception (its text is never used)."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamError(504, "upstream-connect-timeout", "the upstream did not accept in time")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return UpstreamError(504, "upstream-timeout", "the upstream did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(502, "upstream-unreachable", "the upstream is unreachable")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamError(502, "upstream-disconnected", "the upstream closed the connection")
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return UpstreamError(502, "upstream-bad-response", "the upstream sent an invalid response")
    return UpstreamError(502, "upstream-error", "the upstream request failed")
