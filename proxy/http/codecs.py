"""Body codecs: content encodings, JSON and NDJSON, and the headers a rewrite invalidates.

Pure functions over bytes and header multidicts; no I/O.

**Content encodings.** ``gzip`` (and ``x-gzip``), ``deflate`` (zlib-wrapped, or raw as some
servers send it), ``br`` and ``identity``, stacked in the order ``Content-Encoding`` lists
them. Decoding is bounded: a body that inflates past ``limit`` bytes is refused (a
decompression bomb must not take the proxy down). An unknown encoding cannot be read, so on
a protected route it cannot be checked: :class:`BodyError`. A rewritten body is encoded
again with the same encodings, so the client gets what it negotiated.

**JSON.** orjson both ways. orjson reads integers beyond 64 bits as floats, which would
change the upstream's data on the way through; a body with a run of 19 or more digits is
read (and written) by the standard library instead, which keeps such integers exact.
NDJSON: one JSON value per non-blank line; the output ends with a newline.

**Headers after a rewrite.** ``Content-Length`` is recomputed (aiohttp does it from the new
bytes), ``Content-MD5``/``Digest``/``Repr-Digest`` go (they describe the old bytes), the
``ETag`` becomes a *weak* ETag derived from the new bytes (the same tokenized body gets the
same ETag; a body with a reveal gets a different one), and the response is marked to vary on
everything that changes what the proxy sends (identity, ticket, cookie). A response that
revealed anything is ``Cache-Control: private, no-store``: no shared or browser cache keeps
a customer's real name. **Conditional requests** on a protected route: the client's
``If-None-Match`` holds *our* ETag, meaningless upstream, and a 304 from upstream would give
us nothing to check; so conditional and range headers are dropped on the way up (the
upstream always sends a whole body) and ``If-None-Match`` is answered here against the ETag
of the rewritten body.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from enum import Enum
from typing import Any

import brotli  # type: ignore[import-untyped]
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "BodyError",
    "BodyKind",
    "body_kind",
    "decode_body",
    "dump_json",
    "dump_ndjson",
    "encode_body",
    "etag_matches",
    "fix_rewritten_headers",
    "parse_content_encoding",
    "parse_json",
    "parse_ndjson",
    "strip_conditional_headers",
    "weak_etag",
]

SUPPORTED_ENCODINGS = ("gzip", "deflate", "br")
ACCEPT_ENCODING = "gzip, deflate, br"

_CONDITIONAL = (
    "If-None-Match",
    "If-Modified-Since",
    "If-Match",
    "If-Unmodified-Since",
    "If-Range",
    "Range",
)
_STALE = (
    "Content-MD5",
    "Digest",
    "Repr-Digest",
    "Content-Digest",
    "ETag",
    "Content-Length",
    "Accept-Ranges",
)
# Digits to "0", everything else to " ": a run of 19 zeros is a run of 19 digits. Two C
# passes over the body, ten times faster than a regular expression on digit-heavy JSON.
_DIGITS_TO_ZERO = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_RUN = b"0" * 19
_BROTLI_BOUNDED = "output_buffer_limit" in (brotli.Decompressor.process.__doc__ or "")


class BodyError(Exception):
    """A body the proxy cannot read: ``code`` is a stable token, ``reason`` a short phrase
    with no content of the body in it."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class BodyKind(Enum):
    """What a body is, by its media type."""

    JSON = "json"
    NDJSON = "ndjson"
    OTHER = "other"


_NDJSON_TYPES = frozenset(
    {
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
        "application/json-lines",
    }
)


def body_kind(content_type: str | None) -> BodyKind:
    """JSON for ``application/json`` and any ``+json`` type, NDJSON for the line formats."""
    if not content_type:
        return BodyKind.OTHER
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _NDJSON_TYPES:
        return BodyKind.NDJSON
    if media == "application/json" or media.endswith("+json") or media == "text/json":
        return BodyKind.JSON
    return BodyKind.OTHER


# ---------------------------------------------------------------------- encodings


def parse_content_encoding(value: str | None) -> list[str]:
    """The encodings applied, in order, without ``identity``; lower-case."""
    if not value:
        return []
    out = []
    for token in value.split(","):
        name = token.strip().lower()
        if name == "x-gzip":
            name = "gzip"
        if name and name != "identity":
            out.append(name)
    return out


def _inflate(decoder: Any, data: bytes, limit: int) -> bytes:
    out = bytearray()
    while data:
        out += decoder.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise BodyError("body-too-large", "the decoded body is too large to check")
        data = decoder.unconsumed_tail
    out += decoder.flush()
    if len(out) > limit:
        raise BodyError("body-too-large", "the decoded body is too large to check")
    return bytes(out)


def _gunzip(data: bytes, limit: int) -> bytes:
    out = bytearray()
    while data:  # gzip allows several members back to back
        decoder = zlib.decompressobj(wbits=31)
        out += _inflate(decoder, data, limit - len(out))
        if not decoder.eof:
            raise BodyError("bad-encoding", "the gzip body is truncated")
        data = decoder.unused_data
    return bytes(out)


def _brotli(data: bytes, limit: int) -> bytes:
    decoder = brotli.Decompressor()
    out = bytearray()
    if not _BROTLI_BOUNDED:  # brotli < 1.2: no output bound, checked after the fact
        out += decoder.process(data)
        if len(out) > limit:
            raise BodyError("body-too-large", "the decoded body is too large to check")
        if not decoder.is_finished():
            raise BodyError("bad-encoding", "the brotli body is truncated")
        return bytes(out)
    out += decoder.process(data, output_buffer_limit=limit + 1)
    while len(out) <= limit and not decoder.is_finished():
        if decoder.can_accept_more_data():
            break
        out += decoder.process(b"", output_buffer_limit=limit + 1 - len(out))
    if len(out) > limit:
        raise BodyError("body-too-large", "the decoded body is too large to check")
    if not decoder.is_finished():
        raise BodyError("bad-encoding", "the brotli body is truncated")
    return bytes(out)


def _decode_one(encoding: str, data: bytes, limit: int) -> bytes:
    try:
        if encoding == "gzip":
            return _gunzip(data, limit)
        if encoding == "deflate":
            try:
                return _inflate(zlib.decompressobj(wbits=15), data, limit)
            except zlib.error:
                return _inflate(zlib.decompressobj(wbits=-15), data, limit)  # raw deflate
        if encoding == "br":
            return _brotli(data, limit)
    except (zlib.error, brotli.error):
        raise BodyError("bad-encoding", f"the {encoding} body cannot be decoded") from None
    raise BodyError("unsupported-encoding", "the body's content encoding is not supported")


def decode_body(data: bytes, encodings: list[str], limit: int) -> bytes:
    """The body with its content encodings undone (last applied, first undone)."""
    for encoding in reversed(encodings):
        data = _decode_one(encoding, data, limit)
    if len(data) > limit:
        raise BodyError("body-too-large", "the body is too large to check")
    return data


def encode_body(data: bytes, encodings: list[str]) -> bytes:
    """The body with ``encodings`` applied in order (fast levels: the proxy is in the path)."""
    for encoding in encodings:
        if encoding == "gzip":
            data = gzip.compress(data, compresslevel=5, mtime=0)
        elif encoding == "deflate":
            data = zlib.compress(data, 5)
        elif encoding == "br":
            data = brotli.compress(data, quality=4)
        else:  # decode_body refused it before a rewrite could happen
            raise BodyError("unsupported-encoding", "cannot encode the body")
    return data


# --------------------------------------------------------------------------- JSON


def parse_json(data: bytes) -> Any:
    """One JSON document (module docstring on large integers)."""
    try:
        if _LONG_RUN not in data.translate(_DIGITS_TO_ZERO):
            return orjson.loads(data)
        return json.loads(data)
    except (orjson.JSONDecodeError, ValueError, RecursionError):
        raise BodyError("malformed-json", "the body is not valid JSON") from None


def dump_json(doc: Any) -> bytes:
    """Compact JSON of ``doc``; integers beyond 64 bits stay exact."""
    try:
        return orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def parse_ndjson(data: bytes) -> list[Any]:
    """The JSON values of an NDJSON body, one per non-blank line."""
    out = []
    for line in data.split(b"\n"):
        if line.strip():
            out.append(parse_json(line))
    return out


def dump_ndjson(docs: list[Any]) -> bytes:
    """NDJSON of ``docs``, one per line, newline-terminated."""
    if not docs:
        return b""
    return b"\n".join(dump_json(d) for d in docs) + b"\n"


# ------------------------------------------------------------------------ headers


def weak_etag(body: bytes) -> str:
    """A weak ETag derived from the bytes the client gets."""
    return 'W/"tp-' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Weak comparison of ``If-None-Match`` against ``etag`` (RFC 9110 13.1.2)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    ours = etag.removeprefix("W/")
    return any(
        candidate.strip().removeprefix("W/") == ours
        for candidate in if_none_match.split(",")
        if candidate.strip()
    )


def strip_conditional_headers(headers: CIMultiDict[str]) -> None:
    """Drop conditional and range headers (a protected body must come back whole) and
    limit ``Accept-Encoding`` to what the codecs can read."""
    for name in _CONDITIONAL:
        headers.popall(name, None)
    if "Accept-Encoding" in headers:
        headers["Accept-Encoding"] = _acceptable(headers.getall("Accept-Encoding"))


def _acceptable(values: list[str]) -> str:
    wanted = []
    for value in values:
        for token in value.split(","):
            name = token.split(";", 1)[0].strip().lower()
            quality = token.split(";q=", 1)[1].strip() if ";q=" in token else "1"
            if name in SUPPORTED_ENCODINGS and quality not in ("0", "0.0", "0.00", "0.000"):
                wanted.append(name)
    return ", ".join(dict.fromkeys(wanted)) or "identity"


def fix_rewritten_headers(
    headers: CIMultiDict[str] | CIMultiDictProxy[str],
    body: bytes,
    *,
    revealed: bool,
    vary: tuple[str, ...],
    etag: str | None = None,
) -> CIMultiDict[str]:
    """The response headers for a rewritten ``body`` (module docstring); ``etag``: its
    :func:`weak_etag` if already known."""
    out = CIMultiDict(headers)
    for name in _STALE:
        if name in out:
            out.popall(name)
    out["ETag"] = etag or weak_etag(body)
    add_vary(out, vary)
    if revealed:
        mark_private(out)
    return out


def add_vary(headers: CIMultiDict[str], names: tuple[str, ...]) -> None:
    """Add ``names`` to ``Vary`` (once each)."""
    if "Vary" not in headers:
        headers["Vary"] = ", ".join(names)
        return
    present = [v.strip() for value in headers.getall("Vary", ()) for v in value.split(",")]
    if "*" in present:
        return
    lowered = {p.lower() for p in present if p}
    merged = [p for p in present if p] + [n for n in names if n.lower() not in lowered]
    headers.popall("Vary", None)
    if merged:
        headers["Vary"] = ", ".join(merged)


def mark_private(headers: CIMultiDict[str]) -> None:
    """No cache may keep this response (it carries a reveal)."""
    headers["Cache-Control"] = "private, no-store"
    headers.popall("Expires", None)
    headers.popall("Pragma", None)
    headers["Pragma"] = "no-cache"
