"""The query-vector cache: a question asked again, by its tenant, skips the model.

Keyed by tenant, embedding model and the normalised question (the exact cache's
normalisation: case, spacing and end punctuation ignored), kept 7 days. The embed stage
still runs as a task; it only embeds the questions of its batch that are not here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from redis import Redis

from rag.caches.answers import normalise_question
from rag.keys import query_vector_cache_key

__all__ = ["QueryVectorCache"]


class QueryVectorCache:
    def __init__(self, redis: Redis, *, model: str, ttl_s: int) -> None:
        self._redis = redis
        self._model = model
        self._ttl_s = ttl_s

    def _key(self, tenant: str, question: str) -> str:
        digest = hashlib.sha1(
            f"{self._model}\x1f{normalise_question(question)}".encode(), usedforsecurity=False
        ).hexdigest()
        return query_vector_cache_key(tenant, digest)

    def get_many(self, asked: Sequence[tuple[str, str]]) -> list[str | None]:
        """The encoded vector of each (tenant, question), None where there is none."""
        if not asked:
            return []
        found: list[str | None] = self._redis.mget(  # type: ignore[assignment]
            [self._key(tenant, question) for tenant, question in asked]
        )
        return found

    def put_many(self, vectors: Mapping[tuple[str, str], str]) -> None:
        if not vectors:
            return
        with self._redis.pipeline(transaction=False) as pipe:
            for (tenant, question), encoded in vectors.items():
                pipe.set(self._key(tenant, question), encoded, ex=self._ttl_s)
            pipe.execute()
