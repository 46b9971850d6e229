"""The index pool on a real cluster: notes queued together are embedded in one batch and
written by one store task, and the embedding uses every core while no question waits and
one thread while any does (counted by `scribes_index_embedded_chunks_total`)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
from celery import Celery

from rag.ingest_pace import available_cores
from rag.records.jobs import JobStore
from tests.cluster import Cluster
from tests.integration.conftest import ALICE_KEY
from tests.integration.test_question_path import ingest, unique, wait_job
from tests.metrics_scrape import Scrape, eventually, scrape
from workers.pools import POOLS

NOTE = "Elder {n} kept the church keys on a red ribbon and opened the hall at six."


def _metrics(cluster: Cluster) -> Scrape:
    return scrape(f"{cluster.api_url}/metrics")


@contextmanager
def paused(cluster: Cluster, pool: str) -> Iterator[None]:
    """The pool stops taking messages from its queue (Celery's remote control), so that they
    wait on the broker; it takes them again at the end."""
    (queue,) = POOLS[pool].queues
    # An app of its own: remote control publishes through the app's broker, not through the
    # connection it is given, and this process's settings name no broker of the cluster's.
    # Not made the current app: the tasks of later tests would be sent through it, with
    # none of tasks.app's routes, to a queue no pool reads.
    control = Celery("scribes-test-control", broker=cluster.redis_url, set_as_current=False).control
    # A reply is awaited up to `timeout` (Celery's default, 1 s, is short on a loaded
    # machine); with a destination, the call returns at its first reply. The pool takes its
    # queue back even when the cancel's reply is late: a pool left deaf stalls later tests.
    options: dict[str, Any] = {
        "destination": [f"{pool}@{socket.gethostname()}"],
        "reply": True,
        "timeout": 10,
    }
    try:
        replies = control.cancel_consumer(queue.value, **options)
        assert "no longer consuming" in str(replies), replies
        yield
    finally:
        replies = control.add_consumer(queue.value, **options)
        control.app.close()
        assert "add consumer" in str(replies), replies


def _submit(http: httpx.Client, document_id: str, text: str) -> int:
    response = http.post("/v1/documents", json={"id": document_id, "title": "Keys", "text": text})
    assert response.status_code == 202, response.text
    return int(response.json()["revision"])


def _indexed(http: httpx.Client, revisions: dict[str, int]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 90
    while True:
        documents = [http.get(f"/v1/documents/{d}").json() for d in revisions]
        if all(d["revision"] == revisions[d["id"]] and d["status"] != "queued" for d in documents):
            return documents
        assert time.monotonic() < deadline, documents
        time.sleep(0.2)


def _no_question_in_flight(cluster: Cluster) -> None:
    jobs = JobStore(redis.Redis.from_url(cluster.redis_url, decode_responses=True), ttl_s=60)

    def drained() -> None:
        assert jobs.unfinished_since(time.time() - 300) == 0

    eventually(drained, timeout_s=60)


def test_queued_notes_are_embedded_together_and_written_by_one_store_task(
    cluster: Cluster,
) -> None:
    before = _metrics(cluster)
    with cluster.client(ALICE_KEY) as alice:
        with paused(cluster, "index"):
            revisions = {
                (document_id := unique("keys")): _submit(
                    alice, document_id, NOTE.format(n=unique(str(n)))
                )
                for n in range(6)
            }
        documents = _indexed(alice, revisions)
    assert all(d["status"] == "indexed" and d["chunks"] == 1 for d in documents), documents

    def batched() -> None:
        after = _metrics(cluster)

        def delta(name: str, **labels: str) -> float:
            return after.value(name, labels) - before.value(name, labels)

        notes = delta("scribes_index_batch_documents_sum")
        batches = delta("scribes_index_batch_documents_count")
        # Six notes in fewer embedding batches than notes: the first task took the others.
        assert notes == 6 and batches < 6, (notes, batches)
        writes = delta("scribes_tasks_total", task="scribes.store.upsert_batch")
        assert writes >= 1 and delta("scribes_tasks_total", task="scribes.store.upsert") < 6

    eventually(batched)


def test_index_embedding_uses_every_core_when_idle_and_one_thread_while_questions_wait(
    cluster: Cluster,
) -> None:
    cores = available_cores()
    if cores < 2:
        pytest.skip("one core: idle and yielding both embed on one thread")
    index_pool = psutil.Process(cluster.supervisor.children["pool:index"].pid)
    for child in index_pool.children():
        assert child.nice() >= 10, "index pool not niced"
        autogroup = Path(f"/proc/{child.pid}/autogroup")  # its session's niceness, if any
        assert not autogroup.exists() or autogroup.read_text().split()[-1] == "10"
    with cluster.client(ALICE_KEY) as alice:
        _no_question_in_flight(cluster)
        before = _metrics(cluster)
        ingest(alice, unique("idle"), "Keys", NOTE.format(n=unique("Hannah")))
        idle = eventually(lambda: _embedded(cluster, before, cores=cores, one=0))

        with paused(cluster, "embed"):
            response = alice.post(
                "/v1/questions", json={"question": f"Who kept the keys? {unique('q')}"}
            )
            assert response.status_code == 202, response.text
            ingest(alice, unique("busy"), "Keys", NOTE.format(n=unique("Miriam")))
            eventually(lambda: _embedded(cluster, idle, cores=0, one=1))
        # The question waited only for its embed pool, and is answered once it is back.
        assert wait_job(alice, response.json()["id"])["status"] == "succeeded"


def _embedded(cluster: Cluster, before: Scrape, *, cores: int, one: int) -> Scrape:
    """The chunks embedded since `before`: `cores` on every core, `one` on one thread."""
    after = _metrics(cluster)
    name = "scribes_index_embedded_chunks_total"
    all_cores = after.value(name, {"threads": str(cores)}) - before.value(
        name, {"threads": str(cores)}
    )
    on_one = after.value(name, {"threads": "1"}) - before.value(name, {"threads": "1"})
    total = after.value(name) - before.value(name)
    assert (total, on_one) == (1, one), (total, on_one, after.series(name))
    if cores:
        assert all_cores == 1, after.series(name)
    return after
