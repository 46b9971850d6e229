"""What a request may ask of the caches, and emptying a tenant's caches.

`"cache": "use"` (the default) reads and writes every cache; `"refresh"` reads none but
writes what it computes, replacing what was there; `"bypass"` neither reads nor writes.
The mode is kept in the job record, so every stage of the job honours it.
"""

from __future__ import annotations

from enum import StrEnum

from redis import Redis

from rag.keys import (
    answer_cache_prefix,
    chunk_vector_cache_prefix,
    context_cache_prefix,
    query_vector_cache_prefix,
)

__all__ = ["CacheMode", "clear_tenant_caches"]


class CacheMode(StrEnum):
    USE = "use"
    REFRESH = "refresh"
    BYPASS = "bypass"

    @property
    def reads(self) -> bool:
        return self is CacheMode.USE

    @property
    def writes(self) -> bool:
        return self is not CacheMode.BYPASS


def clear_tenant_caches(redis: Redis, tenant: str) -> dict[str, int]:
    """Delete the tenant's exact answers, query vectors, contexts and chunk vectors; how
    many of each. Without chunk vectors, the next ingest of each note embeds it whole.

    Every such key starts with a prefix that ends in the tenant and a colon, so another
    tenant's keys (even one whose name starts with this one's) never match.
    """
    removed: dict[str, int] = {}
    for cache, prefix in (
        ("exact", answer_cache_prefix(tenant)),
        ("embedding", query_vector_cache_prefix(tenant)),
        ("context", context_cache_prefix(tenant)),
        ("chunk_embedding", chunk_vector_cache_prefix(tenant)),
    ):
        count = 0
        batch: list[str] = []
        for key in redis.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                count += int(redis.unlink(*batch))
                batch.clear()
        if batch:
            count += int(redis.unlink(*batch))
        removed[cache] = count
    return removed
