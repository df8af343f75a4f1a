"""Body codecs, without sockets: encodings, JSON/NDJSON, and headers after a rewrite."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
from multidict import CIMultiDict

from proxy.http import codecs
from proxy.http.codecs import BodyError, BodyKind

DOC = b'{"customers":[{"id":1,"full_name":"Budi Santoso"}],"count":1}'


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("application/json", BodyKind.JSON),
        ("application/json; charset=utf-8", BodyKind.JSON),
        ("application/problem+json", BodyKind.JSON),
        ("application/vnd.api+json", BodyKind.JSON),
        ("Application/JSON", BodyKind.JSON),
        ("application/x-ndjson", BodyKind.NDJSON),
        ("application/jsonl", BodyKind.NDJSON),
        ("text/html", BodyKind.OTHER),
        ("text/plain", BodyKind.OTHER),
        (None, BodyKind.OTHER),
    ],
)
def test_body_kind(content_type: str | None, kind: BodyKind) -> None:
    assert codecs.body_kind(content_type) is kind


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("gzip", gzip.compress(DOC)),
        ("deflate", zlib.compress(DOC)),
        ("deflate", zlib.compress(DOC)[2:-4]),  # raw deflate, as some servers send it
        ("br", brotli.compress(DOC)),
    ],
    ids=["gzip", "deflate", "raw-deflate", "br"],
)
def test_decode_each_encoding(name: str, encoded: bytes) -> None:
    assert codecs.decode_body(encoded, [name], 1 << 20) == DOC


def test_stacked_and_multi_member_gzip() -> None:
    body = gzip.compress(DOC[:10]) + gzip.compress(DOC[10:])
    assert codecs.decode_body(body, ["gzip"], 1 << 20) == DOC
    stacked = brotli.compress(gzip.compress(DOC))
    assert codecs.decode_body(stacked, ["gzip", "br"], 1 << 20) == DOC
    assert codecs.parse_content_encoding("x-gzip, identity, BR") == ["gzip", "br"]


@pytest.mark.parametrize("name", ["gzip", "deflate", "br"])
def test_encode_round_trip(name: str) -> None:
    assert codecs.decode_body(codecs.encode_body(DOC, [name]), [name], 1 << 20) == DOC


@pytest.mark.parametrize("name", ["gzip", "deflate", "br"])
def test_decompression_bomb_is_refused(name: str) -> None:
    bomb = codecs.encode_body(b"0" * 5_000_000, [name])
    with pytest.raises(BodyError) as err:
        codecs.decode_body(bomb, [name], 100_000)
    assert err.value.code == "body-too-large"


def test_broken_and_unknown_encodings() -> None:
    with pytest.raises(BodyError) as err:
        codecs.decode_body(gzip.compress(DOC)[:-12], ["gzip"], 1 << 20)
    assert err.value.code == "bad-encoding"
    with pytest.raises(BodyError) as err:
        codecs.decode_body(b"garbage", ["br"], 1 << 20)
    assert err.value.code == "bad-encoding"
    with pytest.raises(BodyError) as err:
        codecs.decode_body(DOC, ["zstd"], 1 << 20)
    assert err.value.code == "unsupported-encoding"


def test_json_keeps_big_integers_exact() -> None:
    body = b'{"id": 123456789012345678901234567890, "n": -9223372036854775809, "f": 1.5}'
    doc = codecs.parse_json(body)
    assert doc["id"] == 123456789012345678901234567890
    assert codecs.dump_json(doc) == (
        b'{"id":123456789012345678901234567890,"n":-9223372036854775809,"f":1.5}'
    )


def test_malformed_json_error_holds_no_content() -> None:
    with pytest.raises(BodyError) as err:
        codecs.parse_json(b'{"full_name": "Budi Santoso", ')
    assert "Budi" not in str(err.value)
    assert err.value.code == "malformed-json"


def test_ndjson() -> None:
    docs = codecs.parse_ndjson(b'{"a":1}\n\n{"a":2}\r\n{"a":3}')
    assert docs == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert codecs.dump_ndjson(docs) == b'{"a":1}\n{"a":2}\n{"a":3}\n'
    with pytest.raises(BodyError):
        codecs.parse_ndjson(b'{"a":1}\n{"a":')


def test_etags() -> None:
    etag = codecs.weak_etag(DOC)
    assert etag.startswith('W/"tp-') and etag == codecs.weak_etag(DOC)
    assert etag != codecs.weak_etag(DOC + b" ")
    assert codecs.etag_matches(etag, etag)
    assert codecs.etag_matches(f'"other", {etag.removeprefix("W/")}', etag)
    assert codecs.etag_matches("*", etag)
    assert not codecs.etag_matches('"other"', etag)
    assert not codecs.etag_matches(None, etag)


def test_conditional_and_range_headers_are_dropped() -> None:
    headers = CIMultiDict(
        {
            "If-None-Match": '"abc"',
            "If-Modified-Since": "Wed, 21 Oct 2015 07:28:00 GMT",
            "Range": "bytes=0-10",
            "If-Range": '"abc"',
            "Accept-Encoding": "gzip;q=1.0, zstd, br;q=0, deflate",
            "Accept": "application/json",
        }
    )
    codecs.strip_conditional_headers(headers)
    assert dict(headers) == {"Accept-Encoding": "gzip, deflate", "Accept": "application/json"}
    only_unknown = CIMultiDict({"Accept-Encoding": "zstd"})
    codecs.strip_conditional_headers(only_unknown)
    assert only_unknown["Accept-Encoding"] == "identity"


def test_rewritten_headers() -> None:
    upstream = CIMultiDict(
        {
            "Content-Type": "application/json",
            "Content-Length": "999",
            "Content-MD5": "xxx",
            "ETag": '"strong"',
            "Cache-Control": "max-age=60",
            "Expires": "Thu, 01 Dec 2094 16:00:00 GMT",
            "Vary": "Accept-Encoding",
            "Accept-Ranges": "bytes",
        }
    )
    vary = ("Authorization", "X-Ticket-Id", "Cookie")
    out = codecs.fix_rewritten_headers(upstream, b"new", revealed=False, vary=vary)
    assert out["ETag"] == codecs.weak_etag(b"new")
    assert "Content-Length" not in out and "Content-MD5" not in out
    assert "Accept-Ranges" not in out
    assert out["Cache-Control"] == "max-age=60"
    assert out["Vary"] == "Accept-Encoding, Authorization, X-Ticket-Id, Cookie"
    private = codecs.fix_rewritten_headers(upstream, b"new", revealed=True, vary=vary)
    assert private["Cache-Control"] == "private, no-store"
    assert "Expires" not in private
