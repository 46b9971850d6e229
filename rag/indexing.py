"""Batch indexing: chunks of a document revision become points with content-derived ids."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from rag.chunking import Chunk
from rag.types import ChunkPayload, ChunkPoint

__all__ = ["TITLE_PREFIX_CHARS", "build_points", "chunk_point_id", "embedded_text"]

_NAMESPACE = uuid.UUID("6f1c8a52-3d0e-4b8e-9a57-5c3b2f0d7e11")
# The title rides along in the embedded text (notes are often asked about by title), cut
# short so that title and a 224-token chunk stay inside the model's 256-token window.
TITLE_PREFIX_CHARS = 80


def embedded_text(title: str, chunk_text: str) -> str:
    """The text whose vector stands for a chunk: a short title, then the chunk."""
    return f"{title[:TITLE_PREFIX_CHARS]}\n{chunk_text}"


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
            payload=ChunkPayload(
                tenant=tenant,
                document_id=document_id,
                revision=revision,
                chunk_index=chunk.index,
                title=title,
                text=chunk.text,
            ),
        )
        for chunk, vector in zip(chunks, vectors, strict=True)
    ]
