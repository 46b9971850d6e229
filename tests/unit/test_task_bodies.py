"""Each task's body called directly, outside any worker: a real Redis, a real Qdrant Edge
shard in a temporary folder, the real embedding model, the real writers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY
from redis import Redis

from rag.caches.answers import AnswerCache
from rag.caches.chunks import ChunkVectorCache
from rag.chunking import chunk_text
from rag.embedding import Embedder, encode_vectors, load_embedder
from rag.indexing import embedded_text
from rag.records.documents import DocumentRegistry, DocumentStatus
from rag.records.jobs import JobStatus, JobStore, Stage, new_job_id
from rag.records.pending import PendingQuestions, WaitingQuestion
from rag.records.staging import ChunkStaging
from rag.settings import Settings
from rag.store import VectorStore, open_vector_store
from rag.tokens import TokenCounter, load_token_counter
from rag.types import Answer, ChunkPoint, Failure
from rag.writers.anthropic import AnthropicWriter
from rag.writers.base import TransientLLMError
from rag.writers.extractive import ExtractiveWriter
from tasks.embed import embed_question, embed_waiting
from tasks.generate import write_answer
from tasks.index import stage_revision
from tasks.retrieve import Retrieved, find_passages
from tasks.store import apply_staged, purge_revisions
from tests.fake_anthropic import FakeAnthropic

TENANT = "t1"
MANNA = (
    "Pastor Ruth preached on Exodus 16. Manna fell every morning except the Sabbath, and "
    "what was kept overnight bred worms. Her point: daily bread cannot be hoarded."
)
# Six paragraphs: eight chunks at 64 tokens, so that one edit leaves most of them as they were.
SERIES = "\n\n".join(
    (
        "Pastor Ruth began the series on Exodus 16 with the grumbling in the wilderness of Sin. "
        "The people had left Elim six weeks before and already missed the pots of meat in Egypt. "
        "She read the complaint aloud twice, once angry and once afraid, and asked which voice "
        "we use when we pray about money, health or the people we love.",
        "Manna fell every morning except the Sabbath. Each household gathered an omer a person, "
        "about two litres, and whoever gathered much had nothing over and whoever gathered "
        "little had no lack. Ruth said the measure was the point: enough, not more, and for "
        "everyone.",
        "What was kept overnight bred worms and stank. Her grandmother kept flour in tins under "
        "the bed through the hungry years, and Ruth did not mock her for it; fear of tomorrow "
        "is honest. But daily bread cannot be hoarded, and the worms are what hoarding costs us.",
        "On the sixth day they gathered twice as much, and that portion kept. Rest was built "
        "into the provision itself. Ruth asked the congregation to name one thing they would "
        "stop doing on Sunday afternoons for a month, and to write it on the card in the pew.",
        "Aaron put an omer of manna in a jar before the testimony, to be kept for the "
        "generations. The one thing that rotted overnight was kept for centuries when it was "
        "kept as a witness and not as a store. Memory, she said, is the one kind of saving that "
        "God commands.",
        "She closed with the Lord's Prayer and the line give us this day our daily bread, and "
        "the choir sang Guide Me, O Thou Great Jehovah, with the bread of heaven repeated four "
        "times as the tune demands. Coffee and bread rolls followed in the hall.",
    )
)
SMALL_CHUNKS, SMALL_OVERLAP = 64, 16
SETTINGS = Settings()


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url.rsplit("/", 1)[0] + "/14", decode_responses=True)
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


def index(
    redis: Redis,
    store: VectorStore,
    embedder: Embedder,
    counter: TokenCounter,
    document_id: str,
    text: str,
) -> int:
    """A document through both index bodies, as the index and retrieve pools run them."""
    documents, staging = DocumentRegistry(redis), ChunkStaging(redis)
    record = documents.submit(
        tenant=TENANT, document_id=document_id, title="Manna", text=text, metadata={}
    )
    assert stage_revision(
        TENANT,
        document_id,
        record.revision,
        documents=documents,
        staging=staging,
        cache=chunk_vectors(redis),
        embedder=embedder,
        counter=counter,
        chunk_tokens=SETTINGS.chunk_tokens,
        overlap_tokens=SETTINGS.chunk_overlap_tokens,
        batch_size=8,
    )
    chunks = apply_staged(
        TENANT, document_id, record.revision, documents=documents, staging=staging, store=store
    )
    assert chunks is not None
    return record.revision


def chunk_vectors(redis: Redis) -> ChunkVectorCache:
    return ChunkVectorCache(redis, model=SETTINGS.embedding_model, ttl_s=600)


def staged(
    redis: Redis, embedder: Embedder, counter: TokenCounter, tenant: str, text: str
) -> list[ChunkPoint]:
    """The points `stage_revision` staged for a new revision of the note "series"."""
    documents, staging = DocumentRegistry(redis), ChunkStaging(redis)
    record = documents.submit(
        tenant=tenant, document_id="series", title="Manna", text=text, metadata={}
    )
    assert stage_revision(
        tenant,
        "series",
        record.revision,
        documents=documents,
        staging=staging,
        cache=chunk_vectors(redis),
        embedder=embedder,
        counter=counter,
        chunk_tokens=SMALL_CHUNKS,
        overlap_tokens=SMALL_OVERLAP,
        batch_size=8,
    )
    points = staging.load(tenant, "series", record.revision)
    assert points is not None
    return points


def chunk_lookups() -> dict[str, float]:
    return {
        outcome: REGISTRY.get_sample_value(
            "scribes_cache_requests_total", {"cache": "chunk_embedding", "outcome": outcome}
        )
        or 0.0
        for outcome in ("hit", "miss")
    }


def cached_chunks(redis: Redis, tenant: str) -> int:
    return sum(1 for _ in redis.scan_iter(match=f"scribes:cvec:{tenant}:*"))


def new_job(redis: Redis, question: str) -> str:
    job_id = new_job_id()
    JobStore(redis, ttl_s=600).create(
        job_id=job_id,
        tenant=TENANT,
        question=question,
        top_k=3,
        corpus_version=0,
        answer_cache_key=f"scribes:answer:{TENANT}:{job_id}",
    )
    PendingQuestions(redis, max_age_s=600).add(job_id)
    return job_id


def embedded(redis: Redis, embedder: Embedder, job_id: str) -> None:
    assert embed_question(
        job_id,
        jobs=JobStore(redis, ttl_s=600),
        pending=PendingQuestions(redis, max_age_s=600),
        embedder=embedder,
        batch_size=32,
    )


def retrieved(redis: Redis, store: VectorStore, job_id: str) -> Retrieved:
    return find_passages(
        job_id,
        jobs=JobStore(redis, ttl_s=600),
        store=store,
        documents=DocumentRegistry(redis),
        answers=AnswerCache(redis, ttl_s=600),
        score_threshold=SETTINGS.score_threshold,
    )


def test_embed_gives_every_waiting_question_its_vector_in_one_batch(
    redis: Redis, embedder: Embedder
) -> None:
    jobs = JobStore(redis, ttl_s=600)
    first, second = new_job(redis, "What fell every morning?"), new_job(redis, "Who preached?")
    embedded(redis, embedder, first)

    one, other = jobs.get(first), jobs.get(second)
    assert one is not None and other is not None
    assert one.stage is Stage.EMBED and other.stage is Stage.QUEUED
    # The second question was embedded in the first one's batch, with the same vector its
    # own embedding gives.
    assert other.query_vector == encode_vectors(embedder.embed(["Who preached?"])[0])
    assert one.query_vector == encode_vectors(embedder.embed(["What fell every morning?"])[0])


def test_the_waiting_are_sent_on_batch_by_batch_beside_the_model_and_all_before_it_returns(
    redis: Redis, embedder: Embedder
) -> None:
    jobs = JobStore(redis, ttl_s=600)
    asked = [new_job(redis, q) for q in ("Who preached?", "What fell?", "What bred worms?")]
    sent: list[tuple[list[str], str]] = []

    def send_on(waiting: list[WaitingQuestion]) -> None:
        if not sent:
            sent.append(([], "failed"))
            raise ConnectionError("broker away")  # the first batch's send fails
        sent.append(([w.job_id for w in waiting], threading.current_thread().name))

    with pytest.raises(ConnectionError):
        embed_waiting(
            jobs=jobs,
            pending=PendingQuestions(redis, max_age_s=600),
            embedder=embedder,
            batch_size=1,
            send_on=send_on,
        )

    # A batch of one each: the failed send did not stop the others, which were all sent,
    # from the sending thread, before the failure was raised.
    assert [ids for ids, _ in sent[1:]] == [[asked[1]], [asked[2]]]
    assert all(name.startswith("scribes-send-on") for _, name in sent[1:])
    assert all((job := jobs.get(job_id)) and job.query_vector for job_id in asked)


def test_embed_skips_a_finished_job(redis: Redis, embedder: Embedder) -> None:
    jobs = JobStore(redis, ttl_s=600)
    job_id = new_job(redis, "Anything?")
    jobs.fail(job_id, Failure("deadline_exceeded", "too late"))
    assert not embed_question(
        job_id,
        jobs=jobs,
        pending=PendingQuestions(redis, max_age_s=600),
        embedder=embedder,
        batch_size=32,
    )


def test_the_index_bodies_stage_then_write_and_repeat_harmlessly(
    redis: Redis, store: VectorStore, embedder: Embedder, counter: TokenCounter
) -> None:
    revision = index(redis, store, embedder, counter, "manna", MANNA)
    documents = DocumentRegistry(redis)
    record = documents.get(TENANT, "manna")
    assert record is not None and record.status is DocumentStatus.INDEXED
    assert record.live_revision == revision and record.chunks == store.count(tenant=TENANT) == 1
    # A second delivery of the store write finds nothing staged and changes nothing.
    again = apply_staged(
        TENANT, "manna", revision, documents=documents, staging=ChunkStaging(redis), store=store
    )
    assert again is None and store.count() == 1


def test_an_expired_text_fails_the_document_with_a_code(
    redis: Redis, embedder: Embedder, counter: TokenCounter
) -> None:
    documents = DocumentRegistry(redis)
    record = documents.submit(tenant=TENANT, document_id="gone", title="T", text="x", metadata={})
    redis.delete(f"scribes:doctext:{TENANT}:gone:{record.revision}")
    staged = stage_revision(
        TENANT,
        "gone",
        record.revision,
        documents=documents,
        staging=ChunkStaging(redis),
        cache=chunk_vectors(redis),
        embedder=embedder,
        counter=counter,
        chunk_tokens=200,
        overlap_tokens=40,
        batch_size=8,
    )
    failed = documents.get(TENANT, "gone")
    assert not staged and failed is not None and failed.status is DocumentStatus.FAILED
    assert failed.error is not None and failed.error.code == "text_expired"


def test_a_reingest_embeds_only_the_chunks_that_changed(
    redis: Redis, embedder: Embedder, counter: TokenCounter
) -> None:
    def texts(note: str) -> set[str]:
        chunks = chunk_text(
            note, counter=counter, max_tokens=SMALL_CHUNKS, overlap_tokens=SMALL_OVERLAP
        )
        return {embedded_text("Manna", chunk.text) for chunk in chunks}

    before = chunk_lookups()
    first = staged(redis, embedder, counter, TENANT, SERIES)
    after = chunk_lookups()
    assert after["miss"] - before["miss"] == len(first) and after["hit"] == before["hit"]
    assert cached_chunks(redis, TENANT) == len(first)
    key = next(redis.scan_iter(match=f"scribes:cvec:{TENANT}:*"))
    assert 0 < redis.ttl(key) <= 600

    edited = SERIES.replace("about two litres", "about two quarts")
    changed, kept = texts(edited) - texts(SERIES), texts(edited) & texts(SERIES)
    assert len(changed) == 1 and len(kept) >= 6
    before = chunk_lookups()
    second = staged(redis, embedder, counter, TENANT, edited)
    after = chunk_lookups()
    assert after["miss"] - before["miss"] == len(changed)
    assert after["hit"] - before["hit"] == len(kept)
    assert cached_chunks(redis, TENANT) == len(first) + len(changed)
    # Reused or not, every point carries its own text's vector, in its own place.
    fresh = embedder.embed([embedded_text("Manna", p.payload.text) for p in second])
    assert np.allclose([p.vector for p in second], fresh, atol=1e-5)

    # A reused vector is the cached one, not a recomputed one: plant one and see it staged.
    planted = np.zeros(SETTINGS.embedding_dimension, dtype=np.float32)
    planted[0] = 1.0
    target = second[0].payload.text
    cache = chunk_vectors(redis)
    cache.put_many(TENANT, {embedded_text("Manna", target): planted})
    third = staged(redis, embedder, counter, TENANT, edited)
    assert [p.vector for p in third if p.payload.text == target] == [planted.tolist()]


def test_a_tenant_never_reuses_another_tenants_chunk_vectors(
    redis: Redis, embedder: Embedder, counter: TokenCounter
) -> None:
    staged(redis, embedder, counter, TENANT, SERIES)
    before = chunk_lookups()
    theirs = staged(redis, embedder, counter, "t2", SERIES)
    after = chunk_lookups()
    assert after["miss"] - before["miss"] == len(theirs) and after["hit"] == before["hit"]
    assert cached_chunks(redis, "t2") == cached_chunks(redis, TENANT) == len(theirs)
    # While each tenant's own note is all hits.
    before = chunk_lookups()
    staged(redis, embedder, counter, TENANT, SERIES)
    after = chunk_lookups()
    assert after["hit"] - before["hit"] == len(theirs) and after["miss"] == before["miss"]


def test_retrieve_hands_passages_on_or_answers_no_context(
    redis: Redis, store: VectorStore, embedder: Embedder, counter: TokenCounter
) -> None:
    index(redis, store, embedder, counter, "manna", MANNA)
    jobs = JobStore(redis, ttl_s=600)

    relevant = new_job(redis, "What happened to manna kept overnight?")
    embedded(redis, embedder, relevant)
    assert retrieved(redis, store, relevant) is Retrieved.PASSAGES
    job = jobs.get(relevant)
    assert job is not None and job.status is JobStatus.RUNNING
    assert [p.document_id for p in job.passages][:1] == ["manna"]

    unrelated = new_job(redis, "What is the boiling point of tungsten?")
    embedded(redis, embedder, unrelated)
    assert retrieved(redis, store, unrelated) is Retrieved.NO_CONTEXT
    done = jobs.get(unrelated)
    assert done is not None and done.status is JobStatus.SUCCEEDED
    assert done.answer is not None and done.answer.no_context
    # The answer is cached, and a redelivery of the finished job is skipped.
    assert AnswerCache(redis, ttl_s=60).get(done.answer_cache_key) == done.answer
    assert retrieved(redis, store, unrelated) is Retrieved.SKIPPED


def test_retrieve_embeds_again_a_question_whose_model_is_not_the_stores(
    redis: Redis, store: VectorStore, embedder: Embedder, counter: TokenCounter
) -> None:
    index(redis, store, embedder, counter, "manna", MANNA)
    jobs = JobStore(redis, ttl_s=600)
    question = "What happened to manna kept overnight?"
    job_id = new_job(redis, question)
    # Embedded by a model the store no longer holds (a reindex switched meanwhile): its
    # vector, here a useless one, must not be searched.
    PendingQuestions(redis, max_age_s=600).attach(
        {job_id: encode_vectors(np.zeros(embedder.dimension, np.float32))}, model="old-model"
    )
    asked: list[str] = []

    def reembed(text: str) -> str:
        asked.append(text)
        return encode_vectors(embedder.embed([text])[0])

    def search(job_id: str) -> Retrieved:
        return find_passages(
            job_id,
            jobs=jobs,
            store=store,
            documents=DocumentRegistry(redis),
            answers=AnswerCache(redis, ttl_s=600),
            score_threshold=SETTINGS.score_threshold,
            model=embedder.model_name,
            reembed=reembed,
        )

    assert search(job_id) is Retrieved.PASSAGES
    assert asked == [question]
    job = jobs.get(job_id)
    assert job is not None and [p.document_id for p in job.passages][:1] == ["manna"]

    # A job embedded by the store's own model is searched as it is.
    same = new_job(redis, question)
    embedded(redis, embedder, same)
    recorded = jobs.get(same)
    assert recorded is not None and recorded.query_model == embedder.model_name
    assert search(same) is Retrieved.PASSAGES
    assert asked == [question]


class _WatchedJobs(JobStore):
    """Real job records that note, as each job is seen finished, whether its answer is
    in the exact cache yet."""

    def __init__(self, redis: Redis, answers: AnswerCache) -> None:
        super().__init__(redis, ttl_s=600)
        self.answers = answers
        self.cached_when_finished: list[bool] = []

    def succeed(self, job_id: str, answer: Answer, **kwargs: Any) -> bool:
        job = self.get(job_id)
        assert job is not None
        self.cached_when_finished.append(self.answers.get(job.answer_cache_key) is not None)
        return super().succeed(job_id, answer, **kwargs)


def test_an_answer_is_in_the_exact_cache_before_its_job_is_seen_finished(
    redis: Redis, store: VectorStore, embedder: Embedder, counter: TokenCounter
) -> None:
    # A client that reads the answer and asks again at once gets it from the cache; it
    # must not find the cache a step behind and pay for a second model call.
    answers = AnswerCache(redis, ttl_s=600)
    index(redis, store, embedder, counter, "manna", MANNA)
    written = new_job(redis, "What happened to manna kept overnight?")
    embedded(redis, embedder, written)
    assert retrieved(redis, store, written) is Retrieved.PASSAGES
    jobs = _WatchedJobs(redis, answers)
    assert write_answer(written, jobs=jobs, writer=ExtractiveWriter(), answers=answers)

    # The plain "nothing relevant" answer, written by retrieve, too.
    unanswerable = new_job(redis, "Which harbour did the whaling fleet winter in?")
    embedded(redis, embedder, unanswerable)
    outcome = find_passages(
        unanswerable,
        jobs=jobs,
        store=store,
        documents=DocumentRegistry(redis),
        answers=answers,
        score_threshold=SETTINGS.score_threshold,
    )
    assert outcome is Retrieved.NO_CONTEXT
    assert jobs.cached_when_finished == [True, True]


def test_generate_writes_caches_and_prices_the_answer(
    redis: Redis, store: VectorStore, embedder: Embedder, counter: TokenCounter
) -> None:
    index(redis, store, embedder, counter, "manna", MANNA)
    job_id = new_job(redis, "What happened to manna kept overnight?")
    embedded(redis, embedder, job_id)
    assert retrieved(redis, store, job_id) is Retrieved.PASSAGES
    jobs, answers = JobStore(redis, ttl_s=600), AnswerCache(redis, ttl_s=600)

    assert write_answer(job_id, jobs=jobs, writer=ExtractiveWriter(), answers=answers)

    job = jobs.get(job_id)
    assert job is not None and job.status is JobStatus.SUCCEEDED and job.answer is not None
    assert "worms" in job.answer.text and job.answer.sources[0].document_id == "manna"
    assert job.answer.model == "extractive" and job.answer.usage.cost_usd == 0
    assert answers.get(job.answer_cache_key) == job.answer
    assert not write_answer(job_id, jobs=jobs, writer=ExtractiveWriter(), answers=answers)


def test_generate_leaves_a_job_running_when_the_model_is_unavailable(
    redis: Redis, store: VectorStore, embedder: Embedder, counter: TokenCounter
) -> None:
    index(redis, store, embedder, counter, "manna", MANNA)
    job_id = new_job(redis, "What happened to manna kept overnight?")
    embedded(redis, embedder, job_id)
    retrieved(redis, store, job_id)
    jobs = JobStore(redis, ttl_s=600)
    with (
        FakeAnthropic(api_key="k") as fake,
        AnthropicWriter(
            api_key="k",
            model="claude-sonnet-4-6",
            base_url=fake.base_url,
            timeout_s=5,
            max_output_tokens=100,
            context_max_tokens=1000,
            count_tokens=counter.count,
        ) as writer,
    ):
        fake.fail_next(529)
        with pytest.raises(TransientLLMError):
            write_answer(job_id, jobs=jobs, writer=writer, answers=AnswerCache(redis, ttl_s=60))
        job = jobs.get(job_id)
        assert job is not None and job.status is JobStatus.RUNNING  # for the retry to finish
        assert write_answer(job_id, jobs=jobs, writer=writer, answers=AnswerCache(redis, ttl_s=60))
    finished = jobs.get(job_id)
    assert finished is not None and finished.answer is not None
    usage = finished.answer.usage
    assert usage.input_tokens > 0 and usage.cost_usd is not None and usage.cost_usd > 0


def test_purge_removes_the_documents_chunks(
    redis: Redis, store: VectorStore, embedder: Embedder, counter: TokenCounter
) -> None:
    revision = index(redis, store, embedder, counter, "manna", MANNA)
    index(redis, store, embedder, counter, "other", "Another note about bread and Sabbath rest.")
    purge_revisions(TENANT, "manna", revision, documents=DocumentRegistry(redis), store=store)
    assert store.count(tenant=TENANT, document_id="manna") == 0
    assert store.count(tenant=TENANT, document_id="other") == 1
