"""Batch indexing's bodies called directly: notes embedded together across documents,
paced by the questions in flight, written with one upsert; on a real Redis, a real Qdrant
Edge shard and the real model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from redis import Redis

from rag.caches.chunks import ChunkVectorCache
from rag.embedding import Embedder, load_embedder
from rag.ingest_pace import IndexPace, embed_yielding
from rag.records.documents import DocumentRegistry, DocumentRevision, DocumentStatus
from rag.records.index_claims import Claim, IndexClaims
from rag.records.staging import ChunkStaging
from rag.settings import Settings
from rag.store import VectorStore, open_vector_store
from rag.tokens import TokenCounter, load_token_counter
from tasks.index import stage_batch
from tasks.store_batch import apply_staged_batch

SETTINGS = Settings()
NOTES = {
    "manna": "Manna fell every morning except the Sabbath; what was kept overnight bred worms.",
    "jonah": "Jonah sat under the plant east of Nineveh, and God appointed a worm at dawn.",
    "ruth": "Ruth gleaned in the field of Boaz until the end of the barley harvest.",
    "elijah": "Ravens brought Elijah bread and meat by the brook Cherith, morning and evening.",
}


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url.rsplit("/", 1)[0] + "/12", decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder(SETTINGS.embedding_model)


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return load_token_counter(SETTINGS.embedding_model)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VectorStore]:
    opened = open_vector_store(
        url=None, api_key=None, path=tmp_path / "edge", collection="c", dimension=384
    )
    yield opened
    opened.close()


def submit(redis: Redis, tenant: str, document_id: str) -> DocumentRevision:
    text = NOTES[document_id]
    record = DocumentRegistry(redis).submit(
        tenant=tenant, document_id=document_id, title=document_id, text=text, metadata={}
    )
    return DocumentRevision(tenant, document_id, record.revision)


def batch(
    redis: Redis,
    embedder: Embedder,
    counter: TokenCounter,
    own: DocumentRevision,
    *,
    holder: str,
    alone: bool = False,
    batch_chunks: int = 100,
) -> list[DocumentRevision]:
    return stage_batch(
        own,
        holder=holder,
        alone=alone,
        claims=IndexClaims(redis),
        documents=DocumentRegistry(redis),
        staging=ChunkStaging(redis),
        cache=ChunkVectorCache(redis, model=SETTINGS.embedding_model, ttl_s=600),
        embedder=embedder,
        counter=counter,
        chunk_tokens=SETTINGS.chunk_tokens,
        overlap_tokens=SETTINGS.chunk_overlap_tokens,
        pace=IndexPace(lambda: False, idle_threads=2),
        batch_chunks=batch_chunks,
    )


def embedded_chunks(threads: int) -> float:
    labels = {"threads": str(threads)}
    return REGISTRY.get_sample_value("scribes_index_embedded_chunks_total", labels) or 0.0


def test_embed_yielding_steps_down_to_one_thread_while_questions_wait(
    embedder: Embedder,
) -> None:
    texts = [f"{note} (copy {n})" for n in range(3) for note in NOTES.values()]
    answers = iter([False, True, False])  # one look per step of 4: idle, busy, idle
    pace = IndexPace(lambda: next(answers), idle_threads=2, busy_threads=1, step=4)
    one, two = embedded_chunks(1), embedded_chunks(2)

    vectors = embed_yielding(embedder, texts, pace=pace)

    assert embedded_chunks(2) - two == 8 and embedded_chunks(1) - one == 4
    # In the order given, as one plain call embeds them (steps only change the padding).
    assert np.allclose(vectors, embedder.embed(texts), atol=1e-5)


def test_one_task_stages_other_queued_notes_and_one_upsert_writes_them(
    redis: Redis, embedder: Embedder, counter: TokenCounter, store: VectorStore
) -> None:
    manna, jonah = submit(redis, "t1", "manna"), submit(redis, "t1", "jonah")
    ruth = submit(redis, "t2", "ruth")  # another tenant's note rides along too
    claims, staging = IndexClaims(redis), ChunkStaging(redis)
    assert claims.take(manna, "task-1") is Claim.NEW

    staged = batch(redis, embedder, counter, manna, holder="task-1")
    claims.mark_sent(staged)

    assert sorted(staged) == sorted([manna, jonah, ruth])
    # Each passenger's own message finds it done; no other batch takes it again.
    assert claims.take(jonah, "task-2") is Claim.SENT
    assert not claims.take_passenger(ruth, "task-3")
    points = staging.load(*jonah)
    assert points is not None
    expected = embedder.embed([f"jonah\n{NOTES['jonah']}"])[0]
    assert np.allclose(points[0].vector, expected, atol=1e-5)

    documents = DocumentRegistry(redis)
    assert apply_staged_batch(staged, documents=documents, staging=staging, store=store) == []
    for tenant, document_id, _ in staged:
        record = documents.get(tenant, document_id)
        assert record is not None and record.status is DocumentStatus.INDEXED
        assert store.count(tenant=tenant, document_id=document_id) == record.chunks == 1
    # Again, as a redelivered store task would: nothing left to write, nothing added.
    assert apply_staged_batch(staged, documents=documents, staging=staging, store=store) == []
    assert store.count() == 3


def test_a_note_carried_by_a_task_that_died_is_embedded_alone_by_its_own_message(
    redis: Redis, embedder: Embedder, counter: TokenCounter
) -> None:
    claims = IndexClaims(redis, lease_s=15)
    manna, jonah, ruth = (submit(redis, "t1", n) for n in ("manna", "jonah", "ruth"))
    assert claims.take(manna, "task-1") is Claim.NEW
    assert claims.take_passenger(jonah, "task-1")
    # task-1 dies here, holding jonah. While its lease runs, jonah's own message waits.
    assert claims.take(jonah, "task-2") is Claim.HELD
    claims.give_up([manna, jonah], "task-1")  # as the lease running out does
    assert claims.take(jonah, "task-2") is Claim.AGAIN
    # Its redelivered message finds it taken before, by itself.
    assert claims.take(manna, "task-1") is Claim.AGAIN

    staged = batch(redis, embedder, counter, jonah, holder="task-2", alone=True)

    assert staged == [jonah]
    assert claims.take_passenger(ruth, "task-4")  # untouched by the lone run


def test_a_batch_stops_taking_notes_at_its_chunk_budget(
    redis: Redis, embedder: Embedder, counter: TokenCounter
) -> None:
    first, *others = (submit(redis, "t1", n) for n in NOTES)
    assert IndexClaims(redis).take(first, "task-1") is Claim.NEW

    staged = batch(redis, embedder, counter, first, holder="task-1", batch_chunks=2)

    assert len(staged) == 2  # one chunk each
    left = [r for r in others if r not in staged]
    assert len(left) == 2 and all(IndexClaims(redis).take_passenger(r, "t") for r in left)


def test_a_note_too_big_to_ride_along_is_left_to_its_own_message(
    redis: Redis, embedder: Embedder, counter: TokenCounter
) -> None:
    first = submit(redis, "t1", "manna")
    record = DocumentRegistry(redis).submit(
        tenant="t1", document_id="long", title="Long", text=NOTES["ruth"] * 60, metadata={}
    )
    long = DocumentRevision("t1", "long", record.revision)
    assert IndexClaims(redis).take(first, "task-1") is Claim.NEW

    staged = batch(redis, embedder, counter, first, holder="task-1", batch_chunks=3)

    assert staged == [first]
    assert IndexClaims(redis).take(long, "task-2") is Claim.NEW  # released, not carried


def test_a_revision_that_cannot_go_live_is_left_for_its_own_store_task(
    redis: Redis, embedder: Embedder, counter: TokenCounter, store: VectorStore
) -> None:
    manna, ruth = submit(redis, "t1", "manna"), submit(redis, "t2", "ruth")
    IndexClaims(redis).take(manna, "task-1")
    staged = batch(redis, embedder, counter, manna, holder="task-1")
    redis.set("scribes:corpus:t2", "not-a-number")  # marking ruth indexed fails

    documents, staging = DocumentRegistry(redis), ChunkStaging(redis)
    left = apply_staged_batch(staged, documents=documents, staging=staging, store=store)

    assert left == [ruth]
    manna_record, ruth_record = documents.get(*manna[:2]), documents.get(*ruth[:2])
    assert manna_record is not None and manna_record.status is DocumentStatus.INDEXED
    assert ruth_record is not None and ruth_record.status is DocumentStatus.QUEUED
    assert staging.exists(*ruth)  # still there for the one-revision task
