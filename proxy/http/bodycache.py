"""A bounded cache of tokenized bodies, for requests that cite no ticket.

Tokenizing is a pure function of the upstream's bytes once the settings snapshot and the
engine (keyring snapshot) are fixed, *when nothing may be revealed*: the same list fetched
again gives byte for byte the same tokenized list. A support tool polls the same lists and
records all day, so the proxy keeps the last results, keyed by a digest of the upstream's
(still encoded) body, its encoding, media kind and route.

Only for requests that cite no ticket (no reveal to decide or audit) and whose own tokens
resolved to nothing (no echo to scrub); only results whose tokens were all durably recorded
(a result made while the database was away is not kept). The cache empties itself when the
settings or the engine change (reload, key rotation) and when the vault loses a race
(``clear``). Bounded in total bytes (LRU).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["BodyCache", "CachedBody"]

DEFAULT_BYTES = 32 * 1024 * 1024
MAX_ENTRY = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CachedBody:
    """A tokenized, re-encoded body and what producing it did (for headers and logs)."""

    body: bytes
    changed: bool
    tokenized: dict[str, int]
    records: int
    etag: str | None = None  # the weak ETag of ``body`` when it was rewritten


CacheKey = tuple[bytes, str, str, str]


class BodyCache:
    """Tokenized bodies by upstream body digest (module docstring)."""

    def __init__(self, max_bytes: int = DEFAULT_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[CacheKey, CachedBody] = OrderedDict()
        self._bytes = 0
        self._owner: tuple[object, object] | None = None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(raw: bytes, encoding: str, kind: str, route: str) -> CacheKey:
        return (hashlib.blake2b(raw, digest_size=16).digest(), encoding, kind, route)

    def _check_owner(self, settings: object, engine: object) -> None:
        owner = self._owner
        if owner is None or owner[0] is not settings or owner[1] is not engine:
            self.clear()
            self._owner = (settings, engine)

    def get(self, key: CacheKey, settings: object, engine: object) -> CachedBody | None:
        if self.max_bytes <= 0:
            return None
        self._check_owner(settings, engine)
        hit = self._entries.get(key)
        if hit is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return hit

    def put(self, key: CacheKey, value: CachedBody, settings: object, engine: object) -> None:
        size = len(value.body)
        if self.max_bytes <= 0 or size > min(MAX_ENTRY, self.max_bytes):
            return
        self._check_owner(settings, engine)
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old.body)
        self._entries[key] = value
        self._bytes += size
        while self._bytes > self.max_bytes and self._entries:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= len(dropped.body)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)
