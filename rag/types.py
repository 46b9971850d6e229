"""Plain values that cross module boundaries, each defined once with its JSON form.

A chunk's payload (`ChunkPayload`) is the one schema both store adapters, the staging area
and retrieval share; `Passage` is a retrieved chunk numbered for citation; `Usage` is what a
model call consumed and cost; `Answer` is what a job finally says. The API serialises from
these, so the JSON a client sees has one definition too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from rag.quality import Quality

__all__ = [
    "Answer",
    "ChunkHit",
    "ChunkPayload",
    "ChunkPoint",
    "Draft",
    "Failure",
    "Passage",
    "QuestionEntry",
    "QuestionMatch",
    "Source",
    "Usage",
]


@dataclass(frozen=True, slots=True)
class ChunkPayload:
    """What the vector store keeps beside each chunk's vector."""

    tenant: str
    document_id: str
    revision: int
    chunk_index: int
    title: str
    text: str

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "document_id": self.document_id,
            "revision": self.revision,
            "chunk_index": self.chunk_index,
            "title": self.title,
            "text": self.text,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChunkPayload:
        return cls(
            tenant=str(data["tenant"]),
            document_id=str(data["document_id"]),
            revision=int(data["revision"]),
            chunk_index=int(data["chunk_index"]),
            title=str(data.get("title", "")),
            text=str(data.get("text", "")),
        )


@dataclass(frozen=True, slots=True)
class ChunkPoint:
    """One chunk as written to the vector store; `id` is a UUID derived from its content."""

    id: str
    vector: Sequence[float]
    payload: ChunkPayload


@dataclass(frozen=True, slots=True)
class ChunkHit:
    """One chunk found by a search, with its cosine similarity to the query."""

    id: str
    score: float
    payload: ChunkPayload


@dataclass(frozen=True, slots=True)
class QuestionEntry:
    """An answered question in the semantic cache's index, beside its query vector.

    It holds no answer: `answer_key` is where the exact cache keeps it, so an answer that
    expired or was emptied there can never be served from here either.
    """

    id: str
    vector: Sequence[float]
    tenant: str
    corpus_version: int
    fingerprint: str  # the answer settings (`rag.caches.answers.pipeline_fingerprint`)
    question: str
    answer_key: str
    expires_at: float
    # What its answer was written from: (document, chunk id) of every passage retrieved,
    # and the score a passage had to beat to be among them. Chunk ids come from the chunk's
    # words, so a later search that finds these same chunks and none other above `floor`
    # finds exactly these passages.
    passages: tuple[tuple[str, str], ...] = ()
    floor: float = 0.0

    def payload(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "corpus_version": self.corpus_version,
            "fingerprint": self.fingerprint,
            "question": self.question,
            "answer_key": self.answer_key,
            "expires_at": self.expires_at,
            "passages": [list(passage) for passage in self.passages],
            "floor": self.floor,
        }


@dataclass(frozen=True, slots=True)
class QuestionMatch:
    """An earlier question found near a new one, with its cosine similarity."""

    score: float
    question: str
    answer_key: str
    corpus_version: int
    passages: tuple[tuple[str, str], ...]  # (document, chunk id)
    floor: float
    vector: tuple[float, ...]  # the earlier question's own

    @classmethod
    def of_point(
        cls, score: float, payload: Mapping[str, Any] | None, vector: Sequence[float] | None
    ) -> QuestionMatch:
        payload = payload or {}
        return cls(
            score=float(score),
            question=str(payload.get("question", "")),
            answer_key=str(payload.get("answer_key", "")),
            corpus_version=int(payload.get("corpus_version", 0)),
            passages=tuple((str(d), str(c)) for d, c in payload.get("passages", ())),
            floor=float(payload.get("floor", 0.0)),
            vector=tuple(float(x) for x in vector or ()),
        )


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved chunk as the writer sees it; `number` is its citation mark, [1] upwards.

    The sources of an answer are the passages it cites, in this same form (`Source`).
    """

    number: int
    chunk_id: str
    document_id: str
    title: str
    text: str
    score: float

    @classmethod
    def of_hit(cls, number: int, hit: ChunkHit) -> Passage:
        return cls(
            number=number,
            chunk_id=hit.id,
            document_id=hit.payload.document_id,
            title=hit.payload.title,
            text=hit.payload.text,
            score=round(hit.score, 4),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "document_id": self.document_id,
            "chunk_id": self.chunk_id,
            "title": self.title,
            "score": self.score,
            "text": self.text,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Passage:
        return cls(
            number=int(data["number"]),
            chunk_id=str(data["chunk_id"]),
            document_id=str(data["document_id"]),
            title=str(data["title"]),
            text=str(data["text"]),
            score=float(data["score"]),
        )


Source = Passage


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one answer consumed, as the model reported them, and their price.

    `cost_usd` is None for a model with no known price, never a guess.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cost_usd: Decimal | None = Decimal(0)

    def priced(self, cost_usd: Decimal | None) -> Usage:
        return replace(self, cost_usd=cost_usd)

    def to_json(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cost_usd": None if self.cost_usd is None else float(self.cost_usd),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Usage:
        cost = data.get("cost_usd", 0)
        return cls(
            input_tokens=int(data.get("input_tokens", 0)),
            output_tokens=int(data.get("output_tokens", 0)),
            cache_read_input_tokens=int(data.get("cache_read_input_tokens", 0)),
            cache_creation_input_tokens=int(data.get("cache_creation_input_tokens", 0)),
            # Through str: Decimal(0.1) would carry the float's binary error.
            cost_usd=None if cost is None else Decimal(str(cost)),
        )


@dataclass(frozen=True, slots=True)
class Draft:
    """What a writer produced, before post-processing; its usage is not priced yet."""

    text: str
    model: str
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a finished question says: the text, the passages it cites, what it cost."""

    text: str
    sources: tuple[Passage, ...] = ()
    model: str = ""
    usage: Usage = field(default_factory=Usage)
    no_context: bool = False
    # Written by the fallback writer while the language model is unavailable.
    degraded: bool = False
    # False when nothing usable was left, e.g. the leak filter removed every sentence.
    usable: bool = True
    # How well it is grounded (rag.quality); None when nothing measured it.
    quality: Quality | None = None

    @property
    def cacheable(self) -> bool:
        """Only a full, usable answer may be served again from the cache."""
        return self.usable and not self.degraded

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "sources": [source.to_json() for source in self.sources],
            "no_context": self.no_context,
            "model": self.model,
            "usage": self.usage.to_json(),
            "degraded": self.degraded,
            "usable": self.usable,
            "quality": self.quality.to_json() if self.quality else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Answer:
        return cls(
            text=str(data["answer"]),
            sources=tuple(Passage.from_json(s) for s in data.get("sources", ())),
            model=str(data.get("model") or ""),
            usage=Usage.from_json(data.get("usage") or {}),
            no_context=bool(data.get("no_context")),
            degraded=bool(data.get("degraded")),
            usable=bool(data.get("usable", True)),
            quality=Quality.from_json(data["quality"]) if data.get("quality") else None,
        )


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a job or a document failed: a stable code for programs, a message for people."""

    code: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Failure:
        return cls(code=str(data["code"]), message=str(data["message"]))
