"""The vector store every pool talks to: one small interface, two adapters, one factory.

`open_vector_store(url=None, …)` gives the embedded Qdrant Edge shard (`rag.vectorstore_edge`);
a URL gives a Qdrant server, or qdrant-client's in-process mode for `:memory:` and `path:DIR`
(`rag.vectorstore_qdrant`). Both store one point per chunk with the payload keys in
`PAYLOAD_KEYS`, compare vectors by cosine similarity, and filter every search by tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from rag.types import ChunkHit, ChunkPoint

__all__ = [
    "PAYLOAD_KEYS",
    "VectorStore",
    "VectorStoreError",
    "canonical_point_id",
    "hit_from_payload",
    "open_vector_store",
    "payload_of",
    "vector_as_floats",
]

PAYLOAD_KEYS = ("tenant", "document_id", "revision", "chunk_index", "title", "text")


class VectorStoreError(RuntimeError):
    """The vector store cannot serve; the message says what happened and what to do."""


class VectorStore(Protocol):
    def upsert(self, points: Sequence[ChunkPoint]) -> None:
        """Write points; a point whose id exists is replaced, so repeating a write is harmless."""
        ...

    def search(
        self,
        *,
        tenant: str,
        vector: Sequence[float],
        limit: int,
        score_threshold: float | None = None,
    ) -> list[ChunkHit]:
        """The tenant's chunks nearest to `vector` by cosine similarity, best first."""
        ...

    def delete_revisions(self, *, tenant: str, document_id: str, up_to_revision: int) -> None:
        """Delete the document's points whose revision is `up_to_revision` or older."""
        ...

    def count(self, *, tenant: str | None = None, document_id: str | None = None) -> int:
        """Exact number of points, optionally only the tenant's and/or the document's."""
        ...

    def close(self) -> None:
        """Release the store; calling it twice is harmless, any other call afterwards fails."""
        ...


def open_vector_store(
    *, url: str | None, api_key: str | None, path: Path, collection: str, dimension: int
) -> VectorStore:
    """The Qdrant Edge shard at `path` when `url` is None, else qdrant-client on `url`.

    `url` is an http(s) URL of a Qdrant server, `:memory:`, or `path:DIR` for qdrant-client's
    in-process mode. `collection` names the qdrant-client collection; the Edge shard is one
    collection, stored at `path` itself.
    """
    # Imported here so that importing the interface loads neither engine.
    if url is None:
        from rag.vectorstore_edge import EdgeVectorStore

        return EdgeVectorStore(path=path, dimension=dimension)
    from rag.vectorstore_qdrant import QdrantVectorStore

    return QdrantVectorStore(url=url, api_key=api_key, collection=collection, dimension=dimension)


def canonical_point_id(point_id: str) -> str:
    """`point_id` in the form both engines give back (lower-case, hyphenated UUID)."""
    try:
        return str(uuid.UUID(point_id))
    except ValueError:
        raise ValueError(
            f"point id {point_id!r} is not a UUID; derive chunk ids with uuid5"
        ) from None


def vector_as_floats(vector: Sequence[float], dimension: int) -> list[float]:
    """`vector` as plain floats (numpy arrays included), checked against the store's dimension."""
    tolist = getattr(vector, "tolist", None)
    values: list[float] = [float(x) for x in (tolist() if callable(tolist) else vector)]
    if len(values) != dimension:
        raise ValueError(
            f"vector has {len(values)} dimensions but the store holds {dimension}-d vectors; "
            "embed with the model the store was built with"
        )
    return values


def payload_of(point: ChunkPoint) -> dict[str, Any]:
    return {
        "tenant": point.tenant,
        "document_id": point.document_id,
        "revision": point.revision,
        "chunk_index": point.chunk_index,
        "title": point.title,
        "text": point.text,
    }


def hit_from_payload(point_id: object, score: float, payload: Mapping[str, Any] | None) -> ChunkHit:
    """A search result as a `ChunkHit`; `point_id` may come back as a `uuid.UUID`."""
    data = payload or {}
    return ChunkHit(
        id=str(point_id),
        score=float(score),
        tenant=str(data["tenant"]),
        document_id=str(data["document_id"]),
        revision=int(data["revision"]),
        chunk_index=int(data["chunk_index"]),
        title=str(data.get("title", "")),
        text=str(data.get("text", "")),
    )
