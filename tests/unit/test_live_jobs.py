"""A waiting request's reads of its job, on the tests' own Redis (database 2): it reads the
record when the job may have ended, not at each stage or piece of streamed text."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from api_shim.notify import JobWatcher, LiveJobs
from rag.records.jobs import JobRecord, JobStatus, JobStore, Stage, new_job_id
from rag.types import Answer


@pytest.fixture
def db_url(redis_url: str) -> Iterator[str]:
    url = redis_url.rsplit("/", 1)[0] + "/2"
    client = Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


class CountedReads(LiveJobs):
    reads = 0

    async def get(self, job_id: str) -> JobRecord | None:
        self.reads += 1
        return await super().get(job_id)


def held_job(jobs: JobStore) -> str:
    job_id = new_job_id()
    jobs.create(
        job_id=job_id,
        tenant="t",
        question="When is the lens polished?",
        top_k=3,
        corpus_version=0,
        answer_cache_key="k",
    )
    return job_id


async def wait_while(
    db_url: str, move: threading.Thread | None, job_id: str, timeout_s: float
) -> tuple[JobRecord | None, int]:
    client = AsyncRedis.from_url(db_url, decode_responses=True)
    watcher = JobWatcher(client)
    await watcher.start()
    live = CountedReads(client, watcher)
    try:
        waiting = asyncio.create_task(live.wait_finished(job_id, timeout_s=timeout_s))
        while not live.reads:  # subscribed, and read once, before anything moves
            await asyncio.sleep(0.01)
        if move is not None:
            move.start()
        job = await waiting
        return job, live.reads
    finally:
        await watcher.close()
        await client.aclose()


def test_a_long_poll_reads_its_job_when_it_ends_not_at_every_move(db_url: str) -> None:
    jobs = JobStore(Redis.from_url(db_url, decode_responses=True), ttl_s=600)
    job_id = held_job(jobs)

    def stream_an_answer() -> None:
        for stage in (Stage.EMBED, Stage.RETRIEVE, Stage.GENERATE):
            jobs.start_stage(job_id, stage)
        for word in ("The ", "lens ", "is ", "polished ", "on ", "Thursdays."):
            jobs.add_text(job_id, word)
        jobs.succeed(
            job_id, Answer("The lens is polished on Thursdays."), last_stage=Stage.GENERATE
        )

    job, reads = asyncio.run(
        wait_while(db_url, threading.Thread(target=stream_an_answer), job_id, 10)
    )

    assert job is not None and job.status is JobStatus.SUCCEEDED
    assert job.answer is not None and job.answer.text == "The lens is polished on Thursdays."
    # The first read, then one at the end: nine moves, none of them read for.
    assert reads == 2


def test_a_wait_that_runs_out_returns_the_job_as_it_is_now(db_url: str) -> None:
    jobs = JobStore(Redis.from_url(db_url, decode_responses=True), ttl_s=600)
    job_id = held_job(jobs)

    def start() -> None:
        jobs.start_stage(job_id, Stage.EMBED)
        jobs.start_stage(job_id, Stage.RETRIEVE)

    job, _ = asyncio.run(wait_while(db_url, threading.Thread(target=start), job_id, 0.5))

    assert job is not None and job.status is JobStatus.RUNNING
    assert job.stage is Stage.RETRIEVE
