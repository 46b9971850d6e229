"""What every task gets from its base, seen through a real worker on a real Redis broker:
queue wait and run time, ids on its log lines, and a final failure written where the user
looks. The worker is Celery's in-process test worker, consuming the same queues as the pools.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar

import pytest
from celery.contrib.testing.worker import start_worker
from redis import Redis

from rag.records.documents import DocumentStatus
from rag.records.jobs import JobStatus, new_job_id
from rag.services import Services, process_services
from rag.settings import get_settings
from tasks.app import app
from tasks.base import TaskTiming, observe_timings
from tasks.context import REQUEST_ID_HEADER, TENANT_HEADER
from tasks.index import index_document
from tasks.retrieve import retrieve_context
from tasks.store import store_purge

TENANT = "base-tenant"
T = TypeVar("T")


@pytest.fixture(scope="module")
def services(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    url = redis_url.rsplit("/", 1)[0] + "/12"
    Redis.from_url(url).flushdb()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REDIS_URL", url)
        env.setenv("SCRIBES_DATA_DIR", str(tmp_path_factory.mktemp("base")))
        get_settings.cache_clear()
        process_services.cache_clear()
        before = {"broker_url": app.conf.broker_url, "result_backend": app.conf.result_backend}
        app.conf.update(broker_url=url, result_backend=url)
        try:
            yield process_services()
        finally:
            process_services().close()
            app.conf.update(before)
            get_settings.cache_clear()
            process_services.cache_clear()


@pytest.fixture(scope="module")
def timings(services: Services) -> Iterator[list[TaskTiming]]:
    seen: list[TaskTiming] = []
    observe_timings(seen.append)
    with start_worker(
        app,
        pool="solo",
        queues=["retrieve", "index"],
        perform_ping_check=False,
        shutdown_timeout=30,
        loglevel="WARNING",
    ):
        yield seen


def wait_for(timings: list[TaskTiming], task: str, count: int = 1) -> list[TaskTiming]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [t for t in timings if t.task == task]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{task} did not run: {timings}")


def eventually(probe: Callable[[], T | Literal[False] | None]) -> T:
    """What `probe` returns once it is truthy: a failure is written by `on_failure`, which
    Celery calls just after the run's timing is reported."""
    deadline = time.monotonic() + 10
    while not (found := probe()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert found, "the condition never held"
    return found


def test_a_task_reports_its_queue_wait_and_run_time(
    timings: list[TaskTiming], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tasks.base")
    store_purge.apply_async(kwargs={"tenant": TENANT, "document_id": "d1", "up_to_revision": 1})
    [timing] = wait_for(timings, "scribes.store.purge")
    assert timing.outcome == "succeeded" and timing.queue == "retrieve"
    assert timing.wait_s is not None and 0 <= timing.wait_s < 10
    assert timing.run_s > 0
    # Its log line names what it worked on.
    lines = [r for r in caplog.records if r.getMessage().startswith("scribes.store.purge")]
    assert lines and getattr(lines[0], "scribes_ids", None) == f" tenant={TENANT} document=d1"


def test_a_countdown_is_not_counted_as_queue_wait(timings: list[TaskTiming]) -> None:
    sent = time.time()
    store_purge.apply_async(
        kwargs={"tenant": TENANT, "document_id": "d2", "up_to_revision": 1}, countdown=1.5
    )
    [*_, timing] = wait_for(timings, "scribes.store.purge", count=2)
    assert time.time() - sent >= 1.5
    assert timing.wait_s is not None and timing.wait_s < 1.0


def test_a_question_task_that_gives_up_fails_its_job_with_a_reason(
    services: Services, timings: list[TaskTiming], caplog: pytest.LogCaptureFixture
) -> None:
    job_id = new_job_id()
    services.jobs.create(
        job_id=job_id, tenant=TENANT, question="q?", top_k=3, corpus_version=0, answer_cache_key="k"
    )
    # A vector that is not base64: the retrieve task cannot go on, and must not hang.
    services.redis.hset(f"scribes:job:{job_id}", "query_vector", "%%%")
    retrieve_context.apply_async(
        kwargs={"job_id": job_id}, headers={TENANT_HEADER: TENANT, REQUEST_ID_HEADER: "req-7"}
    )
    [timing] = wait_for(timings, "scribes.retrieve.context")
    assert timing.outcome == "failed"
    # The timing is reported as the run ends; Celery calls on_failure just after it.
    warned = eventually(
        lambda: [r for r in caplog.records if r.getMessage().startswith("job failed in")]
    )
    job = services.jobs.get(job_id)
    assert job is not None and job.status is JobStatus.FAILED and job.error is not None
    assert job.error.code == "internal_error" and "Error" in job.error.message
    ids = getattr(warned[0], "scribes_ids", None) if warned else None
    assert ids == f" job={job_id} tenant={TENANT} request=req-7"


def test_an_index_task_is_retried_then_fails_its_document_with_the_reason(
    services: Services, timings: list[TaskTiming]
) -> None:
    record = services.documents.submit(
        tenant=TENANT, document_id="broken", title="Broken", text="words", metadata={}
    )
    services.redis.set(f"scribes:doctext:{TENANT}:broken:{record.revision}", "{not json")
    index_document.apply_async(
        kwargs={"tenant": TENANT, "document_id": "broken", "revision": record.revision}
    )
    runs = wait_for(timings, "scribes.index.document", count=4)
    failed = eventually(
        lambda: (d := services.documents.get(TENANT, "broken")) and d.error is not None and d
    )
    # Three retries with backoff, then it gives up and says why.
    assert [t.outcome for t in runs] == ["retried", "retried", "retried", "failed"]
    assert failed is not None and failed.status is DocumentStatus.FAILED
    assert failed.error is not None and failed.error.code == "internal_error"
    assert "JSONDecodeError" in failed.error.message


def test_the_sweep_enqueues_a_stalled_job_again_from_its_stage(
    services: Services, timings: list[TaskTiming]
) -> None:
    from rag.records.jobs import Stage
    from rag.types import Answer
    from tasks.pipeline import requeue_stalled

    jobs, client = services.jobs, services.redis
    stuck, done, expired = (new_job_id() for _ in range(3))
    for job_id in (stuck, done, expired):
        jobs.create(
            job_id=job_id,
            tenant=TENANT,
            question="q?",
            top_k=3,
            corpus_version=0,
            answer_cache_key="k",
        )
    jobs.start_stage(stuck, Stage.GENERATE)  # its generate message was then lost
    jobs.succeed(done, Answer("yes"), last_stage=Stage.GENERATE)
    client.hset(f"scribes:job:{expired}", "created_at", time.time() - 3600)
    # A record that cannot be read (half written by hand, say) must not stop the sweep.
    client.hset("scribes:job:unreadable", mapping={"id": "unreadable", "stage": "nonsense"})
    client.zadd("scribes:jobs:active", {"unreadable": time.time() - 3600})
    before = client.llen("generate") + client.llen("embed")

    assert requeue_stalled(jobs, stall_s=60, deadline_s=300) == []  # nothing quiet for 60 s
    requeued = requeue_stalled(jobs, stall_s=0, deadline_s=300)

    assert requeued == [stuck]
    assert client.zscore("scribes:jobs:active", "unreadable") is None
    # Its own stage again, not the whole chain; the expired one is left to fail on its poll.
    assert client.llen("generate") + client.llen("embed") == before + 1
    assert client.llen("generate") >= 1
    assert jobs.stalled(quiet_since=time.time()) == [stuck]  # still watched, clock reset
    assert requeue_stalled(jobs, stall_s=30, deadline_s=300) == []
    client.delete("generate")


def test_the_sweep_sends_a_job_embedded_in_a_batch_on_to_retrieve_not_back_to_embed(
    services: Services, timings: list[TaskTiming]
) -> None:
    """Its batch's task embedded it, sent it on and marked it so; then its retrieve message
    was lost (a Redis killed before its append-only file had it). Its own embed task would
    stop at the mark: the sweep must send it to retrieve."""
    from tasks.pipeline import requeue_stalled

    jobs, client = services.jobs, services.redis
    job_id = new_job_id()
    jobs.create(
        job_id=job_id, tenant=TENANT, question="q?", top_k=3, corpus_version=0, answer_cache_key="k"
    )
    services.pending.add(job_id)
    services.pending.attach({job_id: "%%%"}, model="m")  # a vector retrieve cannot read
    assert jobs.embedded_elsewhere([job_id]) == [job_id]
    jobs.handed_on([job_id])
    runs = len([t for t in timings if t.task == "scribes.retrieve.context"])
    embed_before = client.llen("embed")

    assert job_id in requeue_stalled(jobs, stall_s=0, deadline_s=300)

    wait_for(timings, "scribes.retrieve.context", count=runs + 1)
    assert client.llen("embed") == embed_before
    job = eventually(lambda: (j := jobs.get(job_id)) and j.finished and j)
    assert job.stamps.get("retrieve_started_at") is not None


def test_the_sweep_indexes_a_document_whose_message_was_lost(
    services: Services, timings: list[TaskTiming]
) -> None:
    from tasks.pipeline import requeue_stalled_documents

    documents = services.documents
    # Submitted, but its index message never reached the broker.
    documents.submit(
        tenant=TENANT, document_id="lost", title="Lost", text="Manna fell.", metadata={}
    )
    quiet = requeue_stalled_documents(documents, services.staging, stall_s=60, index_backlog=0)
    busy = requeue_stalled_documents(documents, services.staging, stall_s=0, index_backlog=3)
    assert quiet == [] and busy == []  # too soon, and then a backlog that may hold it

    assert requeue_stalled_documents(documents, services.staging, stall_s=0, index_backlog=0) == [
        (TENANT, "lost")
    ]
    deadline = time.monotonic() + 60
    record = documents.get(TENANT, "lost")
    while record is not None and record.status is DocumentStatus.QUEUED:
        assert time.monotonic() < deadline, "never indexed"
        time.sleep(0.1)
        record = documents.get(TENANT, "lost")
    assert record is not None and record.status is DocumentStatus.INDEXED
    assert documents.stalled(quiet_since=time.time()) == []
