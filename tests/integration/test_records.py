"""Job records and the document registry against a real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from rag.records.documents import DocumentRegistry, DocumentStatus
from rag.records.exact_hits import ExactLookup
from rag.records.jobs import JobFinished, JobStatus, JobStore, Stage, new_job_id
from rag.records.pending import PendingQuestions
from rag.records.usage import day_of
from rag.types import Answer, Failure, Usage


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    # A database of its own: the session cluster uses database 0 of the same server.
    connection = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/15", decode_responses=True)
    connection.flushdb()
    yield connection
    connection.flushdb()


def _new_job(jobs: JobStore) -> str:
    job_id = new_job_id()
    jobs.create(
        job_id=job_id, tenant="t", question="q?", top_k=3, corpus_version=0, answer_cache_key="k"
    )
    return job_id


def test_job_moves_forward_only(client: redis.Redis) -> None:
    jobs = JobStore(client, ttl_s=60)
    job_id = _new_job(jobs)
    assert jobs.start_stage(job_id, Stage.EMBED)
    assert jobs.start_stage(job_id, Stage.EMBED)  # a redelivery may repeat its own stage
    assert jobs.start_stage(job_id, Stage.RETRIEVE)
    assert not jobs.start_stage(job_id, Stage.EMBED)  # but never go back
    record = jobs.get(job_id)
    assert record is not None and record.stage is Stage.RETRIEVE
    assert record.status is JobStatus.RUNNING


def test_finished_job_is_final(client: redis.Redis) -> None:
    jobs = JobStore(client, ttl_s=60)
    job_id = _new_job(jobs)
    assert jobs.succeed(
        job_id, Answer("yes", usage=Usage(input_tokens=1)), last_stage=Stage.GENERATE
    )
    assert not jobs.fail(job_id, Failure("late", "a duplicate delivery failed"))
    assert not jobs.start_stage(job_id, Stage.GENERATE)
    record = jobs.get(job_id)
    assert record is not None
    assert record.status is JobStatus.SUCCEEDED and record.error is None
    assert record.answer == Answer("yes", usage=Usage(input_tokens=1))
    assert 0 < client.ttl(f"scribes:job:{job_id}") <= 60


def test_missing_job_is_never_created_by_a_stage(client: redis.Redis) -> None:
    jobs = JobStore(client, ttl_s=60)
    assert not jobs.start_stage("nope", Stage.EMBED)
    assert client.exists("scribes:job:nope") == 0


def test_newer_revision_wins_over_a_late_index(client: redis.Redis) -> None:
    registry = DocumentRegistry(client)
    first = registry.submit(tenant="t", document_id="d", title="T", text="one", metadata={})
    second = registry.submit(tenant="t", document_id="d", title="T", text="two", metadata={})
    assert second.revision == first.revision + 1
    assert not registry.mark_indexed("t", "d", first.revision, chunks=1)
    assert registry.mark_indexed("t", "d", second.revision, chunks=2)
    record = registry.get("t", "d")
    assert record is not None
    assert record.status is DocumentStatus.INDEXED and record.live_revision == second.revision
    assert registry.live_revisions("t", ["d", "other"]) == {"d": second.revision, "other": None}


def test_delete_is_immediate_and_bumps_the_corpus_version(client: redis.Redis) -> None:
    registry = DocumentRegistry(client)
    record = registry.submit(tenant="t", document_id="d", title="T", text="x", metadata={})
    registry.mark_indexed("t", "d", record.revision, chunks=1)
    version = registry.corpus_version("t")
    assert registry.delete("t", "d") == record.revision
    assert registry.get("t", "d") is None and registry.records("t") == []
    assert registry.live_revisions("t", ["d"]) == {"d": None}
    assert registry.corpus_version("t") == version + 1
    # Deleting what is not there changes nothing.
    assert registry.delete("t", "d") is None
    assert registry.corpus_version("t") == version + 1
    # A later ingest of the same id gets a higher revision than the deleted one.
    again = registry.submit(tenant="t", document_id="d", title="T", text="x", metadata={})
    assert again.revision > record.revision


def test_tenants_have_separate_documents(client: redis.Redis) -> None:
    registry = DocumentRegistry(client)
    registry.submit(tenant="a", document_id="d", title="A's", text="x", metadata={})
    assert registry.get("b", "d") is None and registry.records("b") == []
    assert registry.delete("b", "d") is None
    assert registry.get("a", "d") is not None


def test_waiting_questions_are_embedded_together_and_only_once(client: redis.Redis) -> None:
    jobs = JobStore(client, ttl_s=60)
    pending = PendingQuestions(client, max_age_s=60)
    first, second, done, gone = (_new_job(jobs) for _ in range(4))
    for job_id in (second, done, first, gone):
        pending.add(job_id)
    jobs.succeed(done, Answer("already answered"), last_stage=Stage.GENERATE)
    client.delete(f"scribes:job:{gone}")

    batch = pending.take(first, limit=10)
    assert [waiting.job_id for waiting in batch] == [first, second]
    assert all(waiting.question == "q?" for waiting in batch)

    pending.attach({first: "AAAA", second: "BBBB", done: "CCCC"}, model="m")
    assert client.hget(f"scribes:job:{second}", "query_vector") == "BBBB"
    # A finished job is not touched, and nothing is left waiting.
    assert client.hget(f"scribes:job:{done}", "query_vector") is None
    assert pending.take(first, limit=10) == []
    assert client.zcard("scribes:embed:pending") == 0


def test_a_batch_is_capped_and_the_asking_job_always_comes_first(client: redis.Redis) -> None:
    jobs = JobStore(client, ttl_s=60)
    pending = PendingQuestions(client, max_age_s=60)
    waiting = [_new_job(jobs) for _ in range(5)]
    for job_id in waiting:
        pending.add(job_id)
    batch = pending.take(waiting[-1], limit=3)
    assert [taken.job_id for taken in batch] == [waiting[-1], waiting[0], waiting[1]]


def test_the_cache_lookup_reads_version_and_answer_in_one_script(client: redis.Redis) -> None:
    from rag.caches.answers import AnswerCache
    from rag.records.exact_hits import ExactHits
    from rag.settings import Settings

    settings = Settings()
    cache = AnswerCache(client, ttl_s=60)
    jobs = JobStore(client, ttl_s=60)
    hits = ExactHits(client, jobs)
    registry = DocumentRegistry(client)

    def serve(tenant: str, question: str) -> ExactLookup:
        return hits.serve(
            settings,
            job_id=new_job_id(),
            tenant=tenant,
            question=question,
            top_k=3,
            request_id=None,
            reads=True,
        )

    miss = serve("t", "Why?")
    assert miss.job is None and miss.corpus_version == 0
    # Redis computes the key exactly as Python does.
    assert miss.key == cache.key_for(
        settings, tenant="t", question="why", top_k=3, corpus_version=0
    )

    cache.put(miss.key, Answer("Because.", usage=Usage(input_tokens=9)))
    hit = serve("t", "  WHY ")
    assert hit.key == miss.key and hit.job is not None
    # Born finished, with the answer at no cost, and pollable like any other job.
    assert hit.job.answer == Answer("Because.") and hit.job.cached == "exact"
    assert jobs.get(hit.job.id) == hit.job
    assert serve("u", "Why?").job is None

    # A new corpus version is a new key: the old answer is not served.
    record = registry.submit(tenant="t", document_id="d", title="T", text="x", metadata={})
    registry.mark_indexed("t", "d", record.revision, chunks=1)
    after = serve("t", "Why?")
    assert after.corpus_version == 1 and after.job is None and after.key != miss.key


def test_an_exact_hit_is_counted_as_the_ledger_counts_one(client: redis.Redis) -> None:
    from rag.caches.answers import AnswerCache
    from rag.records.exact_hits import ExactHits
    from rag.records.usage import UsageLedger
    from rag.settings import Settings

    settings = Settings()
    jobs = JobStore(client, ttl_s=60)
    ledger = UsageLedger(client)
    for answer in (Answer("Because.", model="m"), Answer("Not in your notes.", no_context=True)):
        for tenant in ("served", "recorded"):
            key = AnswerCache(client, ttl_s=60).key_for(
                settings, tenant=tenant, question="why", top_k=3, corpus_version=0
            )
            AnswerCache(client, ttl_s=60).put(key, answer)
        served = ExactHits(client, jobs).serve(
            settings,
            job_id=new_job_id(),
            tenant="served",
            question="Why?",
            top_k=3,
            request_id=None,
            reads=True,
        )
        assert served.job is not None
        recorded = jobs.create_finished(
            job_id=new_job_id(), tenant="recorded", question="Why?", top_k=3, answer=answer
        )
        outcome = "no_context" if answer.no_context else "answered"
        ledger.record(JobFinished(recorded.id, "recorded", outcome, "exact", 0.0, answer))
    today = day_of(time.time())
    assert (
        ledger.report("served", today, today).to_json()["totals"]
        == (ledger.report("recorded", today, today).to_json()["totals"])
    )
