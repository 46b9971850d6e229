"""Embedded chunks parked in Redis between the index pool and the store's owner.

Messages stay small (ids only) however long the document is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from redis import Redis

from rag.embedding import decode_vectors, encode_vectors
from rag.keys import staged_chunks_key
from rag.types import ChunkPayload, ChunkPoint

__all__ = ["ChunkStaging"]


class ChunkStaging:
    """One document revision's points, with their vectors packed in one string."""

    def __init__(self, redis: Redis, *, ttl_s: int = 86_400) -> None:
        self._redis = redis
        self._ttl_s = ttl_s

    def save(self, points: Sequence[ChunkPoint], *, model: str | None = None) -> None:
        """Park a revision's points, with the name of the model that embedded them."""
        first = points[0].payload
        vectors = np.asarray([p.vector for p in points], dtype=np.float32)
        body = {
            "tenant": first.tenant,
            "document_id": first.document_id,
            "revision": first.revision,
            "title": first.title,
            "dimension": int(vectors.shape[1]),
            "vectors": encode_vectors(vectors),
            "chunks": [[p.id, p.payload.chunk_index, p.payload.text] for p in points],
            "model": model,
        }
        key = staged_chunks_key(first.tenant, first.document_id, first.revision)
        self._redis.set(key, json.dumps(body), ex=self._ttl_s)

    def load(self, tenant: str, document_id: str, revision: int) -> list[ChunkPoint] | None:
        found = self.load_with_model(tenant, document_id, revision)
        return found[0] if found is not None else None

    def load_with_model(
        self, tenant: str, document_id: str, revision: int
    ) -> tuple[list[ChunkPoint], str | None] | None:
        """The parked points and the model that embedded them (None if not recorded)."""
        raw = self._redis.get(staged_chunks_key(tenant, document_id, revision))
        if raw is None:
            return None
        body = json.loads(raw)
        return self._points(tenant, document_id, revision, body), body.get("model")

    @staticmethod
    def _points(
        tenant: str, document_id: str, revision: int, body: dict[str, Any]
    ) -> list[ChunkPoint]:
        vectors = decode_vectors(body["vectors"], body["dimension"])
        return [
            ChunkPoint(
                id=point_id,
                vector=vector.tolist(),
                payload=ChunkPayload(
                    tenant=tenant,
                    document_id=document_id,
                    revision=revision,
                    chunk_index=index,
                    title=body["title"],
                    text=text,
                ),
            )
            for (point_id, index, text), vector in zip(body["chunks"], vectors, strict=True)
        ]

    def exists(self, tenant: str, document_id: str, revision: int) -> bool:
        return bool(self._redis.exists(staged_chunks_key(tenant, document_id, revision)))

    def drop(self, tenant: str, document_id: str, revision: int) -> None:
        self._redis.delete(staged_chunks_key(tenant, document_id, revision))
