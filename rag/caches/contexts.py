"""The context cache: the passages a search found, reused for an hour.

Keyed by tenant, the tenant's corpus version as it is NOW (read in the same round trip as
the entry), a hash of the query vector, `top_k` and the score threshold. Every indexed or
deleted document bumps the corpus version, so a changed or deleted document can never come
back from here: its old entries are unreachable, not merely stale.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from redis import Redis

from rag.keys import context_cache_prefix, corpus_version_key
from rag.types import Passage

__all__ = ["ContextCache", "ContextLookup"]

# The version and the entry in one round trip: the key needs the version.
_LOOKUP = """
local version = redis.call('GET', KEYS[1]) or '0'
local key = ARGV[1] .. version .. ':' .. ARGV[2]
return {key, redis.call('GET', key)}
"""


class ContextLookup:
    __slots__ = ("key", "passages")

    def __init__(self, key: str, passages: tuple[Passage, ...] | None) -> None:
        self.key = key
        self.passages = passages  # None: a miss (an empty tuple is never stored)


class ContextCache:
    def __init__(self, redis: Redis, *, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._lookup = redis.register_script(_LOOKUP)

    def lookup(
        self, *, tenant: str, query_vector: str, top_k: int, score_threshold: float
    ) -> ContextLookup:
        digest = hashlib.sha1(
            f"{query_vector}\x1f{top_k}\x1f{score_threshold!r}".encode(), usedforsecurity=False
        ).hexdigest()
        key, raw = self._lookup(
            keys=[corpus_version_key(tenant)], args=[context_cache_prefix(tenant), digest]
        )
        key = key.decode() if isinstance(key, bytes) else str(key)
        if not raw:
            return ContextLookup(key, None)
        return ContextLookup(key, tuple(Passage.from_json(p) for p in json.loads(raw)))

    def put(self, key: str, passages: Sequence[Passage]) -> None:
        """Keep `passages` under the key its lookup made (nothing relevant is not kept: the
        no-context answer itself is in the exact cache)."""
        if passages:
            self._redis.set(key, json.dumps([p.to_json() for p in passages]), ex=self._ttl_s)
