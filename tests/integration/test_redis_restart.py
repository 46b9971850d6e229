"""Redis killed (-9) and started again mid-load, on its append-only file: every accepted job
ends well, no indexed document is lost, the API reconnects by itself, and every pool is up
again (reconnected, or exited and restarted by the supervisor where Celery gave up)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from scribes.localredis import LocalRedis, free_port
from tests.cluster import Cluster, running_cluster
from tests.integration.test_question_path import MUSTARD, ingest, wait_job


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path / "redis", free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster_on_own_redis(tmp_path: Path, own_redis: LocalRedis) -> Iterator[Cluster]:
    with running_cluster(tmp_path / "data", own_redis.url, {}) as cluster:
        yield cluster


def test_a_redis_restart_mid_load_loses_no_accepted_job(
    cluster_on_own_redis: Cluster, own_redis: LocalRedis
) -> None:
    cluster = cluster_on_own_redis
    cluster.supervisor.supervise_in_background()  # as `scribes up` does
    pids = {name: process.pid for name, process in cluster.supervisor.children.items()}
    with cluster.client() as http:
        ingest(http, "mustard", "Mustard seed", MUSTARD)
    accepted: list[str] = []
    refused: list[int] = []
    stop = threading.Event()
    tag = uuid.uuid4().int % 100_000

    def ask(client_index: int) -> None:
        with httpx.Client(base_url=cluster.api_url, timeout=10) as http:
            n = client_index
            while not stop.is_set():
                question = f"How many mustard seeds were in the jar, asked {tag + n}?"
                try:
                    response = http.post("/v1/questions", json={"question": question})
                except httpx.TransportError:
                    continue
                if response.status_code == 202:
                    accepted.append(response.json()["id"])
                else:
                    refused.append(response.status_code)
                n += 4
                stop.wait(0.05)

    # A client holding a long poll across the outage.
    held: list[httpx.Response] = []

    def hold() -> None:
        with httpx.Client(base_url=cluster.api_url, timeout=60) as http:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # Redis may already be down: ask again
                submitted = http.post(
                    "/v1/questions", json={"question": f"Who planted mustard, held {tag}?"}
                )
                if submitted.status_code == 202:
                    held.append(http.get(submitted.json()["poll"], params={"wait": 30}))
                    return
                time.sleep(0.2)

    askers = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    holder = threading.Thread(target=hold)
    for thread in askers:
        thread.start()
    try:
        time.sleep(1.5)
        holder.start()
        time.sleep(0.5)
        assert own_redis.process is not None
        own_redis.process.kill()  # kill -9: no chance to save anything on the way out
        own_redis.process.wait()
        time.sleep(2)
        # The same port, folder and append-only file, as a supervisor or systemd restarts it.
        own_redis.start()
        time.sleep(3)
    finally:
        stop.set()
        for thread in [*askers, holder]:
            if thread.ident is not None:
                thread.join()

    with cluster.client() as http:
        try:
            finished = [wait_job(http, job_id, timeout_s=180) for job_id in accepted]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_diagnosis(cluster, own_redis)}") from exc
        documents = http.get("/v1/documents").json()["documents"]
    # The held long poll came through the outage: answered, or its wait ran out (or, if
    # it only began while Redis was down, a 503 that says so); never an error or a hang.
    # Waiting works again after it: the API's pub/sub connection came back by itself.
    [response] = held
    assert response.status_code in (200, 503), response.text
    with cluster.client() as http:
        after = http.post(
            "/v1/questions",
            json={"question": f"How many mustard seeds, after {tag}?"},
            headers={"Prefer": "wait=30"},
        )
        assert after.status_code in (200, 202), after.text
        # A pool that Celery gave up on may still be warming up: then the wait runs out.
        job = after.json()
        if job["status"] != "succeeded":
            job = wait_job(http, job["id"], timeout_s=180)
    assert job["status"] == "succeeded", job
    api_log = (cluster.data_dir / "logs" / "api.log").read_text()
    assert "job notifications interrupted" in api_log
    assert "job notifications back" in api_log
    assert len(accepted) > 20 and refused  # load on both sides of the outage
    assert set(refused) <= {503}
    bad = [(job["status"], job["error"]) for job in finished if job["status"] != "succeeded"]
    assert not bad, bad
    assert [d["id"] for d in documents if d["status"] == "indexed"] == ["mustard"]
    # The API reconnected on its own. A pool reconnects on its own too, unless Celery gives
    # up on its consumer: kombu 5.7 can raise "Unrecoverable error: AttributeError ...
    # 'hostname'" in the event loop after the lost connection was closed, and the worker
    # exits with code 1. The supervisor (or systemd, or Kubernetes) starts it again. Either
    # way every pool is up at the end.
    assert cluster.supervisor.children["api"].pid == pids["api"]
    assert cluster.supervisor.gave_up is None
    assert cluster.supervisor.not_yet_up() == []


def _diagnosis(cluster: Cluster, server: LocalRedis) -> str:
    """What the broker and the stall sweep saw, and the pools' last warnings: for a failure."""
    client = redis.Redis.from_url(server.url, decode_responses=True)
    pools = client.keys("scribes:pool:*")
    lines = [
        f"queues: { {q: client.llen(q) for q in ('embed', 'retrieve', 'generate', 'index')} }",
        f"unacked: {client.hlen('unacked')}, index: {client.zcard('unacked_index')}",
        f"active jobs: {client.zrange('scribes:jobs:active', 0, 20, withscores=True)}",
        f"heartbeats: { {k: client.zrange(k, 0, -1, withscores=True) for k in pools} }",
        f"now: {time.time()}",
    ]
    for log in sorted((cluster.data_dir / "logs").glob("*.log")):
        tail = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if "WARNING" in line or "ERROR" in line
        ]
        lines.append(f"--- {log.name}: last warnings\n" + "\n".join(tail[-25:]))
    return "\n".join(lines)
