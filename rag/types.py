"""Plain values that cross module boundaries: chunks in the store, passages, drafts, usage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["ChunkHit", "ChunkPoint", "Draft", "Passage", "Usage"]


@dataclass(frozen=True, slots=True)
class ChunkPoint:
    """One chunk as written to the vector store; `id` is a UUID derived from its content."""

    id: str
    vector: Sequence[float]
    tenant: str
    document_id: str
    revision: int
    chunk_index: int
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class ChunkHit:
    """One chunk found by a search, with its cosine similarity to the query."""

    id: str
    score: float
    tenant: str
    document_id: str
    revision: int
    chunk_index: int
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved chunk as the writer sees it; `number` is its citation mark, [1] upwards."""

    number: int
    chunk_id: str
    document_id: str
    title: str
    text: str
    score: float


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Draft:
    """What a writer produced, before post-processing."""

    text: str
    model: str
    usage: Usage = field(default_factory=Usage)
