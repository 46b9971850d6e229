"""The chunk-vector cache: a note ingested again re-embeds only the chunks that changed.

Keyed by tenant, embedding model and a SHA-256 of the embedded text (`embedded_text`: the
cut title, then the chunk), so a changed title or model misses and another tenant's
identical note shares nothing. Every ingest reads it; there is no mode that bypasses it, as
a vector depends on nothing but these. Reuse renews an entry's TTL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from redis import Redis

from rag.embedding import decode_vector, encode_vectors
from rag.keys import chunk_vector_cache_key

__all__ = ["ChunkVectorCache"]

Vector = npt.NDArray[np.float32]


class ChunkVectorCache:
    def __init__(self, redis: Redis, *, model: str, ttl_s: int) -> None:
        self._redis = redis
        self._model = model
        self._ttl_s = ttl_s

    def _key(self, tenant: str, text: str) -> str:
        digest = hashlib.sha256(f"{self._model}\x1f{text}".encode()).hexdigest()
        return chunk_vector_cache_key(tenant, digest)

    def get_many(self, tenant: str, texts: Sequence[str]) -> dict[str, Vector]:
        """The cached vector of each of `texts` that has one, in one MGET."""
        if not texts:
            return {}
        found: list[str | None] = self._redis.mget(  # type: ignore[assignment]
            [self._key(tenant, text) for text in texts]
        )
        return {
            text: decode_vector(encoded)
            for text, encoded in zip(texts, found, strict=True)
            if encoded is not None
        }

    def put_many(
        self, tenant: str, fresh: Mapping[str, Vector], *, reused: Sequence[str] = ()
    ) -> None:
        """Keep the `fresh` vectors and renew the `reused` entries, in one round trip."""
        if not fresh and not reused:
            return
        with self._redis.pipeline(transaction=False) as pipe:
            for text, vector in fresh.items():
                pipe.set(self._key(tenant, text), encode_vectors(vector), ex=self._ttl_s)
            for text in reused:
                pipe.expire(self._key(tenant, text), self._ttl_s)
            pipe.execute()
