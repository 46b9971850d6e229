"""The question path's own steps called in one process: the baseline for the distributed one.

Same chunking, same embedded text, same model, the same Qdrant Edge engine (a shard of its own
in a temporary folder), the same registry check on the same Redis, the same writer. What it
leaves out is everything the distribution adds: HTTP, job records, the broker, three hops.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from redis import Redis

from bench.notes import BenchNote
from rag.answering import compose_answer
from rag.chunking import chunk_text
from rag.embedding import Embedder, load_embedder
from rag.indexing import build_points, embedded_text
from rag.records.documents import DocumentRegistry
from rag.retrieval import retrieve_passages
from rag.settings import Settings
from rag.store import VectorStore, open_vector_store
from rag.tokens import load_token_counter
from rag.writers.extractive import ExtractiveWriter

__all__ = ["LOCAL_TENANT", "InProcessPipeline", "StageTimes", "open_inprocess_pipeline"]

# A tenant of its own: its registry entries share the cluster's Redis but never its corpus.
LOCAL_TENANT = "bench-local"


@dataclass(frozen=True, slots=True)
class StageTimes:
    embed_ms: float
    retrieve_ms: float
    generate_ms: float
    no_context: bool

    @property
    def total_ms(self) -> float:
        return self.embed_ms + self.retrieve_ms + self.generate_ms


class InProcessPipeline:
    def __init__(
        self, settings: Settings, embedder: Embedder, store: VectorStore, registry: DocumentRegistry
    ) -> None:
        self._settings = settings
        self._embedder = embedder
        self._store = store
        self._registry = registry
        self._writer = ExtractiveWriter()

    def index(self, notes: Sequence[BenchNote]) -> int:
        """Chunk, embed and store `notes` as the index pool does; returns the chunks stored."""
        counter = load_token_counter(self._settings.embedding_model)
        stored = 0
        for note in notes:
            chunks = chunk_text(
                note.text,
                counter=counter,
                max_tokens=self._settings.chunk_tokens,
                overlap_tokens=self._settings.chunk_overlap_tokens,
            )
            record = self._registry.submit(
                tenant=LOCAL_TENANT,
                document_id=note.id,
                title=note.title,
                text=note.text,
                metadata={},
            )
            vectors = self._embedder.embed(
                [embedded_text(note.title, chunk.text) for chunk in chunks],
                batch_size=self._settings.embedding_batch_size,
            )
            self._store.upsert(
                build_points(
                    tenant=LOCAL_TENANT,
                    document_id=note.id,
                    revision=record.revision,
                    title=note.title,
                    chunks=chunks,
                    vectors=vectors,
                )
            )
            self._registry.mark_indexed(LOCAL_TENANT, note.id, record.revision, chunks=len(chunks))
            stored += len(chunks)
        return stored

    def answer(self, question: str, *, top_k: int | None = None) -> StageTimes:
        settings = self._settings
        started = time.perf_counter()
        vector = self._embedder.embed([question], batch_size=settings.embedding_batch_size)[0]
        embedded = time.perf_counter()
        passages = retrieve_passages(
            self._store,
            self._registry,
            tenant=LOCAL_TENANT,
            vector=vector.tolist(),
            top_k=top_k or settings.top_k,
            score_threshold=settings.score_threshold,
        )
        retrieved = time.perf_counter()
        # No passages: the retrieve pool answers "not in your notes" and skips the writer.
        if passages:
            compose_answer(question, passages, self._writer)
        written = time.perf_counter()
        return StageTimes(
            embed_ms=(embedded - started) * 1000,
            retrieve_ms=(retrieved - embedded) * 1000,
            generate_ms=(written - retrieved) * 1000,
            no_context=not passages,
        )


@contextmanager
def open_inprocess_pipeline(
    settings: Settings, redis_url: str, store_dir: Path
) -> Iterator[InProcessPipeline]:
    client = Redis.from_url(
        redis_url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5
    )
    store = open_vector_store(
        url=None,
        api_key=None,
        path=store_dir,
        collection=settings.qdrant_collection,
        dimension=settings.embedding_dimension,
    )
    try:
        yield InProcessPipeline(
            settings, load_embedder(settings.embedding_model), store, DocumentRegistry(client)
        )
    finally:
        store.close()
        client.close()
