"""The tenant's live passages nearest to a query vector, numbered for citation."""

from __future__ import annotations

from collections.abc import Sequence

from rag.records.documents import DocumentRegistry
from rag.store import VectorStore
from rag.types import ChunkHit, Passage

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
    live = registry.live_revisions(tenant, sorted({hit.payload.document_id for hit in hits}))
    kept: list[ChunkHit] = [
        hit for hit in hits if live.get(hit.payload.document_id) == hit.payload.revision
    ]
    return [Passage.of_hit(number, hit) for number, hit in enumerate(kept[:top_k], start=1)]
