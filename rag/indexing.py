"""Batch indexing: chunks of a document revision become points with content-derived ids."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from redis import Redis

from rag.chunking import Chunk
from rag.keys import staged_chunks_key
from rag.types import ChunkPoint

__all__ = ["ChunkStaging", "build_points", "chunk_point_id"]

_NAMESPACE = uuid.UUID("6f1c8a52-3d0e-4b8e-9a57-5c3b2f0d7e11")


def chunk_point_id(tenant: str, document_id: str, chunk_index: int, text: str) -> str:
    """Same tenant, document, place and words: same id, so a re-ingest overwrites, never adds."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    return str(uuid.uuid5(_NAMESPACE, f"{tenant}\x1f{document_id}\x1f{chunk_index}\x1f{digest}"))


def build_points(
    *,
    tenant: str,
    document_id: str,
    revision: int,
    title: str,
    chunks: Sequence[Chunk],
    vectors: npt.NDArray[np.float32],
) -> list[ChunkPoint]:
    return [
        ChunkPoint(
            id=chunk_point_id(tenant, document_id, chunk.index, chunk.text),
            vector=vector.tolist(),
            tenant=tenant,
            document_id=document_id,
            revision=revision,
            chunk_index=chunk.index,
            title=title,
            text=chunk.text,
        )
        for chunk, vector in zip(chunks, vectors, strict=True)
    ]


class ChunkStaging:
    """Embedded chunks parked in Redis between the index pool and the store's owner.

    Messages stay small (ids only) however long the document is.
    """

    def __init__(self, redis: Redis, *, ttl_s: int = 86_400) -> None:
        self._redis = redis
        self._ttl_s = ttl_s

    def save(self, points: Sequence[ChunkPoint]) -> None:
        first = points[0]
        vectors = np.asarray([p.vector for p in points], dtype="<f4")
        body = {
            "tenant": first.tenant,
            "document_id": first.document_id,
            "revision": first.revision,
            "title": first.title,
            "dimension": int(vectors.shape[1]),
            "vectors": base64.b64encode(vectors.tobytes()).decode(),
            "chunks": [[p.id, p.chunk_index, p.text] for p in points],
        }
        key = staged_chunks_key(first.tenant, first.document_id, first.revision)
        self._redis.set(key, json.dumps(body), ex=self._ttl_s)

    def load(self, tenant: str, document_id: str, revision: int) -> list[ChunkPoint] | None:
        raw = self._redis.get(staged_chunks_key(tenant, document_id, revision))
        if raw is None:
            return None
        body = json.loads(raw)
        vectors = np.frombuffer(base64.b64decode(body["vectors"]), dtype="<f4").reshape(
            -1, body["dimension"]
        )
        return [
            ChunkPoint(
                id=point_id,
                vector=vector.tolist(),
                tenant=tenant,
                document_id=document_id,
                revision=revision,
                chunk_index=index,
                title=body["title"],
                text=text,
            )
            for (point_id, index, text), vector in zip(body["chunks"], vectors, strict=True)
        ]

    def drop(self, tenant: str, document_id: str, revision: int) -> None:
        self._redis.delete(staged_chunks_key(tenant, document_id, revision))
