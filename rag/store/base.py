"""The vector-store interface and what its adapters share; it imports no adapter.

Every adapter stores one point per chunk with a `ChunkPayload` beside its vector, compares
vectors by cosine similarity, and filters every search by tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from rag.types import ChunkHit, ChunkPayload, ChunkPoint, QuestionEntry, QuestionMatch

__all__ = [
    "QuestionIndex",
    "VectorStore",
    "VectorStoreError",
    "canonical_point_id",
    "hit_from_payload",
    "point_from_record",
    "vector_as_floats",
]


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
        document_ids: Sequence[str] | None = None,
    ) -> list[ChunkHit]:
        """The tenant's chunks nearest to `vector` by cosine similarity, best first; only
        those of `document_ids` when given."""
        ...

    def delete_revisions(self, *, tenant: str, document_id: str, up_to_revision: int) -> None:
        """Delete the document's points whose revision is `up_to_revision` or older."""
        ...

    def count(self, *, tenant: str | None = None, document_id: str | None = None) -> int:
        """Exact number of points, optionally only the tenant's and/or the document's."""
        ...

    def scroll(
        self,
        *,
        after: str | None,
        limit: int,
        with_vectors: bool,
        tenant: str | None = None,
        document_ids: Sequence[str] | None = None,
    ) -> tuple[list[ChunkPoint], str | None]:
        """Up to `limit` points in id order from `after` (a cursor this returned, or None
        for the first), and the cursor of the next page (None at the end). Without
        `with_vectors` each point's vector is empty."""
        ...

    def drop(self) -> None:
        """Delete the whole collection and close the store: a generation no longer kept."""
        ...

    def close(self) -> None:
        """Release the store; calling it twice is harmless, any other call afterwards fails."""
        ...


class QuestionIndex(Protocol):
    """The semantic cache's index of answered questions: a collection of its own, beside
    the chunks, in the same engine and owned by the same process."""

    def add(self, entries: Sequence[QuestionEntry]) -> None:
        """Write entries; an entry whose id exists is replaced."""
        ...

    def nearest(
        self,
        *,
        tenant: str,
        vector: Sequence[float],
        corpus_version: int,
        fingerprint: str,
        now: float,
        limit: int,
        min_score: float,
    ) -> list[QuestionMatch]:
        """The tenant's unexpired questions at this corpus version or an older one, with these
        answer settings, at least `min_score` similar to `vector`, most similar first, each
        with its own vector."""
        ...

    def purge_expired(self, *, tenant: str, now: float) -> None:
        """Delete the tenant's expired entries."""
        ...

    def clear(self, *, tenant: str) -> None:
        """Delete every entry of the tenant."""
        ...

    def count(self, *, tenant: str | None = None) -> int:
        """Exact number of entries, optionally only the tenant's."""
        ...

    def sample(self, *, limit: int) -> list[tuple[str, list[float]]]:
        """Up to `limit` stored questions as (tenant, vector): probes for a reindex's check."""
        ...

    def drop(self) -> None:
        """Delete the whole index and close it."""
        ...

    def close(self) -> None:
        """Release the index; calling it twice is harmless."""
        ...


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


def point_from_record(
    point_id: object, vector: Sequence[float] | None, payload: Mapping[str, Any] | None
) -> ChunkPoint:
    """A scrolled point as a `ChunkPoint` (empty vector when none was asked for)."""
    return ChunkPoint(
        id=str(point_id), vector=list(vector or ()), payload=ChunkPayload.from_json(payload or {})
    )


def hit_from_payload(point_id: object, score: float, payload: Mapping[str, Any] | None) -> ChunkHit:
    """A search result as a `ChunkHit`; `point_id` may come back as a `uuid.UUID`."""
    return ChunkHit(
        id=str(point_id), score=float(score), payload=ChunkPayload.from_json(payload or {})
    )
