"""Steps 3 and 4: find the tenant's passages for a query vector and decide if any are relevant."""

from __future__ import annotations

from collections.abc import Sequence

from rag.documents import DocumentRegistry
from rag.types import ChunkHit, Passage
from rag.vectorstore import VectorStore

__all__ = ["retrieve_passages"]


def retrieve_passages(
    store: VectorStore,
    registry: DocumentRegistry,
    *,
    tenant: str,
    vector: Sequence[float],
    top_k: int,
    score_threshold: float,
) -> list[Passage]:
    """The top `top_k` live passages above the threshold, numbered for citation; [] means none."""
    # Over-fetch: hits of a deleted or replaced revision are dropped below.
    hits = store.search(
        tenant=tenant, vector=vector, limit=top_k * 2 + 4, score_threshold=score_threshold
    )
    live = registry.live_revisions(tenant, sorted({hit.document_id for hit in hits}))
    kept: list[ChunkHit] = [hit for hit in hits if live.get(hit.document_id) == hit.revision]
    return [
        Passage(
            number=number,
            chunk_id=hit.id,
            document_id=hit.document_id,
            title=hit.title,
            text=hit.text,
            score=round(hit.score, 4),
        )
        for number, hit in enumerate(kept[:top_k], start=1)
    ]
