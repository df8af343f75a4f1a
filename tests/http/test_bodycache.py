"""The tokenized-body cache: bounded, and emptied when settings or engine change."""

from __future__ import annotations

from proxy.http.bodycache import BodyCache, CachedBody


def entry(size: int) -> CachedBody:
    return CachedBody(b"x" * size, True, {"name": 1}, 1)


def test_lru_bound_and_owner_change() -> None:
    settings, engine = object(), object()
    cache = BodyCache(max_bytes=250)
    keys = [BodyCache.key(bytes([i]), "", "json", "GET /x") for i in range(4)]
    for key in keys[:2]:
        cache.put(key, entry(100), settings, engine)
    assert cache.get(keys[0], settings, engine) is not None  # now most recent
    cache.put(keys[2], entry(100), settings, engine)  # evicts keys[1]
    assert cache.get(keys[1], settings, engine) is None
    assert cache.get(keys[0], settings, engine) is not None
    cache.put(keys[3], entry(1000), settings, engine)  # larger than the whole cache: skipped
    assert cache.get(keys[3], settings, engine) is None
    assert cache.get(keys[0], object(), engine) is None  # other settings: emptied
    assert len(cache) == 0
    assert BodyCache(max_bytes=0).get(keys[0], settings, engine) is None
