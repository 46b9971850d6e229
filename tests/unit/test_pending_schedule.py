"""The questions waiting for their vector, and the one embed task scheduled for them, on the
tests' own Redis (database 2): no question may be left waiting with no task on its way."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from redis import Redis

from rag.records.jobs import JobStore, Stage, new_job_id
from rag.records.pending import PendingQuestions


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url.rsplit("/", 1)[0] + "/2", decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


def job(jobs: JobStore, question: str = "Who?") -> str:
    job_id = new_job_id()
    jobs.create(
        job_id=job_id,
        tenant="t",
        question=question,
        top_k=3,
        corpus_version=0,
        answer_cache_key="k",
    )
    return job_id


def test_only_the_first_submit_schedules_a_task_until_the_task_starts(redis: Redis) -> None:
    pending = PendingQuestions(redis, max_age_s=300)
    assert pending.schedule()
    assert not pending.schedule() and not pending.schedule()
    # The task has started: whatever is added from now on needs a task of its own.
    pending.unschedule()
    assert pending.schedule()


def test_a_schedule_whose_task_never_starts_lapses(redis: Redis) -> None:
    pending = PendingQuestions(redis, max_age_s=300)
    assert pending.schedule(ttl_s=1.0)
    assert not pending.schedule(ttl_s=1.0)  # a stall of a second would end it first
    time.sleep(1.1)
    assert pending.schedule()


@pytest.mark.parametrize("added_before_take", [True, False])
def test_no_question_is_left_waiting_without_a_task(redis: Redis, added_before_take: bool) -> None:
    """Both orders of a submit (add, then schedule) against a task (unschedule, then take):
    the question is either in the task's take, or its submit schedules the next task."""
    jobs = JobStore(redis, ttl_s=600)
    pending = PendingQuestions(redis, max_age_s=300)
    first = job(jobs)
    pending.add(first)
    assert pending.schedule()  # the first submit sends the task

    pending.unschedule()  # the task starts
    late = job(jobs, "Why?")
    if added_before_take:
        pending.add(late)
        scheduled_again = pending.schedule()
        taken = {w.job_id for w in pending.take(None, limit=32)}
        assert late in taken or scheduled_again
    else:
        taken = {w.job_id for w in pending.take(None, limit=32)}
        pending.add(late)
        assert late not in taken
        assert pending.schedule(), "a question after the take must schedule the next task"


def test_take_gives_the_oldest_first_and_forgets_finished_jobs(redis: Redis) -> None:
    jobs = JobStore(redis, ttl_s=600)
    pending = PendingQuestions(redis, max_age_s=300)
    ids = [job(jobs, f"Question {n}?") for n in range(4)]
    for job_id in ids:
        pending.add(job_id)
        time.sleep(0.002)
    jobs.cancel(ids[1])
    taken = pending.take(None, limit=2)
    # The two oldest, less the cancelled one, which is forgotten.
    assert [w.job_id for w in taken] == [ids[0]]
    assert pending.waiting() == 3  # a taken one stays until its vector is attached
    pending.attach({w.job_id: "AAAA" for w in taken}, model="m")
    assert pending.waiting() == 2
    assert [w.job_id for w in pending.take(None, limit=10)] == ids[2:]


def test_jobs_embedded_by_a_batch_are_recorded_and_then_marked_sent_on(redis: Redis) -> None:
    jobs = JobStore(redis, ttl_s=600)
    ids = [job(jobs) for _ in range(3)]
    jobs.cancel(ids[2])
    moved = jobs.embedded_elsewhere(ids)
    assert moved == ids[:2]
    record = jobs.get(ids[0])
    assert record is not None and record.stage is Stage.EMBED
    assert {"embed", "embed_wait"} <= set(record.timings_ms())
    assert not record.handed_on
    jobs.handed_on(moved)
    after = jobs.get(ids[0])
    assert after is not None and after.handed_on
    # Its stream says it started embedding, once.
    kinds = [(e.kind, e.data.get("stage")) for e in jobs.events(ids[0])]
    assert kinds == [("stage", "queued"), ("stage", "embed")]
