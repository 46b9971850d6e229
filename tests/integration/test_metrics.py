"""Prometheus metrics from every process of a real cluster, through the API's /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from api_shim.app import create_app
from rag.settings import Settings
from scribes.localredis import free_port
from tasks.app import app
from tasks.generate import generate_answer
from tests.cluster import Cluster, running_redis
from tests.integration.conftest import ALICE_KEY, BOB_KEY
from tests.integration.test_question_path import MUSTARD, ask, ingest, unique
from tests.metrics_scrape import Scrape, eventually, scrape

QUEUES = {"embed", "retrieve", "generate", "index", "webhook"}
POOLS = {"embed", "retrieve", "generate", "index"}


def _metrics(cluster: Cluster) -> Scrape:
    return scrape(f"{cluster.api_url}/metrics")


def test_one_scrape_counts_every_process_and_the_cost_of_each_job(cluster: Cluster) -> None:
    document_id = unique("mustard")
    with cluster.client(ALICE_KEY) as alice:
        before = _metrics(cluster)
        ingest(alice, document_id, "The mustard seed", MUSTARD)
        jobs = [
            ask(alice, f"How many mustard seeds were in the jar, asked {unique('q')}?")[1]
            for _ in range(3)
        ]
        status, repeat = ask(alice, jobs[0]["question"])
        # Others ask alice about the same seed and expect their own copy of the note.
        assert alice.delete(f"/v1/documents/{document_id}").status_code == 200
    assert status == 200 and repeat["cached"] == "exact"
    assert all(job["status"] == "succeeded" for job in jobs), jobs
    cost = sum(Decimal(str(job["usage"]["cost_usd"])) for job in jobs)
    tokens = sum(job["usage"]["input_tokens"] for job in jobs)

    def counted() -> Scrape:
        after = _metrics(cluster)

        def delta(name: str, **labels: str) -> float:
            return after.value(name, labels) - before.value(name, labels)

        # Questions, by how they were answered: three computed, one from the exact cache.
        assert delta("scribes_questions_total", outcome="answered", cache="miss") == 3
        assert delta("scribes_questions_total", outcome="answered", cache="exact") == 1
        assert delta("scribes_question_duration_seconds_count", cache="miss") == 3
        # The embed pool is prefork: its counts come from a child process, not the one
        # that was started, and reach the same scrape.
        for queue, task in (
            ("embed", "scribes.embed.pending"),
            ("retrieve", "scribes.retrieve.context"),
            ("generate", "scribes.generate.answer"),
        ):
            assert delta("scribes_tasks_total", queue=queue, task=task, outcome="succeeded") >= 3
            assert delta("scribes_task_duration_seconds_count", queue=queue, task=task) >= 3
        assert delta("scribes_task_queue_wait_seconds_count", queue="generate") >= 3
        # What the model was paid, to the cent, and what it read.
        model = jobs[0]["model"]
        assert round(Decimal(str(delta("scribes_llm_cost_usd_total", model=model))), 2) == round(
            cost, 2
        )
        assert abs(delta("scribes_llm_cost_usd_total", model=model) - float(cost)) < 1e-9
        assert delta("scribes_llm_tokens_total", model=model, type="input") == tokens
        assert delta("scribes_llm_requests_total", model=model, outcome="ok") == 3
        assert delta("scribes_llm_request_duration_seconds_count", model=model) == 3
        assert delta("scribes_api_requests_total", route="/v1/questions", status="2xx") >= 4
        assert delta("scribes_documents_total", outcome="indexed") >= 1
        return after

    after = eventually(counted)
    # Read at scrape time: every queue, every pool up, the breaker closed.
    assert {labels["queue"] for labels in after.series("scribes_queue_depth")} == QUEUES
    assert {
        labels["queue"] for labels in after.series("scribes_queue_oldest_age_seconds")
    } == QUEUES
    up = {labels["pool"] for labels in after.series("scribes_pool_up")}
    assert up == POOLS
    for pool in POOLS:
        assert after.value("scribes_pool_up", {"pool": pool}) >= 1
    assert after.value("scribes_breaker_state", {"dependency": "llm"}) == 0
    assert after.value("scribes_redis_up") == 1 and after.value("scribes_broker_up") == 1
    # The tenant label is opt-in: off by default.
    assert all("tenant" not in labels for labels in after.series("scribes_questions_total"))


def test_metrics_token_is_required_when_set(redis_url: str, tmp_path: Path) -> None:
    settings = Settings(
        REDIS_URL=redis_url,
        SCRIBES_DATA_DIR=str(tmp_path),
        SCRIBES_API_KEYS=f"{ALICE_KEY}=alice,{BOB_KEY}=bob",
        SCRIBES_METRICS_TOKEN="scrape-secret-1",
    )
    with TestClient(create_app(settings)) as client:
        missing = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        # An API key is not a metrics token.
        tenant_key = client.get("/metrics", headers={"Authorization": f"Bearer {ALICE_KEY}"})
        right = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-1"})
    for refused in (missing, wrong, tenant_key):
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
    assert right.status_code == 200
    assert "scribes_queue_depth" in Scrape(right.text).names()


def test_a_worker_only_host_serves_its_own_metrics(tmp_path: Path) -> None:
    """`scribes worker POOL --metrics-port N`: no API on the host, its pool still scraped."""
    with running_redis(tmp_path / "redis") as lone_redis:
        _worker_host_metrics(lone_redis.url, tmp_path)


def _worker_host_metrics(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        "REDIS_URL": redis_url,
        "SCRIBES_DATA_DIR": str(tmp_path / "data"),
    }
    scribes = Path(sys.executable).with_name("scribes")
    worker = subprocess.Popen(
        [str(scribes), "worker", "generate", "--concurrency", "2", "--metrics-port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 60
        while True:
            try:
                scrape(url)
                break
            except httpx.HTTPError:
                assert worker.poll() is None, "the worker exited"
                assert time.monotonic() < deadline, "no metrics served"
                time.sleep(0.3)
        # A job that does not exist: the task runs, finds nothing to do, and is counted.
        with app.connection_for_write(redis_url) as connection:
            generate_answer.apply_async(kwargs={"job_id": "no-such-job"}, connection=connection)

        def ignored() -> None:
            seen = scrape(url).value(
                "scribes_tasks_total", {"task": "scribes.generate.answer", "outcome": "ignored"}
            )
            assert seen == 1

        eventually(ignored, timeout_s=30)
        # A worker host serves its own processes only: the system-wide series come from
        # the API (or `scribes exporter --cluster`), so none is scraped twice.
        assert "scribes_queue_depth" not in scrape(url).names()
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(30)


def test_the_exporter_serves_a_hosts_directory_and_the_system_wide_series(
    cluster: Cluster, tmp_path: Path
) -> None:
    """`scribes exporter --cluster` over the directory the cluster's processes write to."""
    scribes = str(Path(sys.executable).with_name("scribes"))
    base = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    refused = subprocess.run(
        [scribes, "exporter", "--port", str(free_port())],
        env={**base, "REDIS_URL": cluster.redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "scribes: set PROMETHEUS_MULTIPROC_DIR to the directory this host's processes write to"
    ]

    port = free_port()
    env = {
        **base,
        "REDIS_URL": cluster.redis_url,
        "SCRIBES_DATA_DIR": str(tmp_path),
        "PROMETHEUS_MULTIPROC_DIR": str(cluster.supervisor.metrics_dir),
    }
    exporter = subprocess.Popen(
        [scribes, "exporter", "--host", "127.0.0.1", "--port", str(port), "--cluster"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def served() -> Scrape:
            try:
                return scrape(url)
            except httpx.HTTPError as exc:
                assert exporter.poll() is None, "the exporter exited"
                raise AssertionError("not serving yet") from exc

        from_exporter = eventually(served, timeout_s=60)
        from_api = _metrics(cluster)
        # The same host's processes as the API's scrape, and the system-wide series.
        embedded = {"queue": "embed", "task": "scribes.embed.pending", "outcome": "succeeded"}
        assert from_exporter.value("scribes_tasks_total", embedded) >= 1
        assert from_exporter.value("scribes_tasks_total", embedded) <= from_api.value(
            "scribes_tasks_total", embedded
        )
        assert {labels["queue"] for labels in from_exporter.series("scribes_queue_depth")} == QUEUES
        assert from_exporter.value("scribes_pool_up", {"pool": "generate"}) >= 1
    finally:
        os.killpg(exporter.pid, 15)
        exporter.wait(30)
