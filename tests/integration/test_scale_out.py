"""Scale-out on one machine: two "hosts", each a set of worker processes with a Celery hostname
and a data folder of its own, on one broker. Host A runs the four pools and the API; host B
runs embed, generate and index (the retrieve pool owns the embedded Edge store, so it stays on
A: beyond one host the store is a Qdrant server). Under load both hosts take work, a third
embed worker takes its share, and a host SIGKILLed under load loses no question, at the
settings a user runs."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery

from rag.keys import delivery_count_key
from rag.settings import Settings
from tasks.names import TaskName
from tests.cluster import (
    Cluster,
    WorkerHost,
    running_cluster,
    running_redis,
    running_worker_host,
    tasks_run,
)
from tests.fake_anthropic import FakeAnthropic
from tests.integration.conftest import BOB_KEY, LLM_KEY
from tests.integration.test_question_path import MUSTARD, ingest, wait_job

CLIENTS = 16
EMBED = TaskName.EMBED_PENDING.value
GENERATE = TaskName.GENERATE_ANSWER.value
# What a second machine runs when the vectors live in the embedded store on the first.
HOST_B_POOLS = ("embed", "generate", "index")
# Generous: on a loaded 2-core machine a caught job waits the visibility timeout (20 s), the
# restore interval (5 s) and then its turn; one the stall sweep resends, 90 s and its turn.
JOB_TIMEOUT_S = 240.0


@dataclass
class TwoHosts:
    a: Cluster
    b: WorkerHost
    redis_url: str
    env: dict[str, str]
    work_dir: Path
    llm: FakeAnthropic

    def a_node(self, pool: str) -> str:
        return f"{pool}@{socket.gethostname()}"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoHosts]:
    work_dir = tmp_path_factory.mktemp("scale-out")
    with (
        FakeAnthropic(api_key=LLM_KEY) as llm,
        running_redis(work_dir / "redis") as broker,
    ):
        # The same settings on every host, as one .env would give them; no timeout shortened.
        env = {
            "SCRIBES_API_KEYS": f"{BOB_KEY}=bob",
            "ANTHROPIC_API_KEY": LLM_KEY,
            "ANTHROPIC_BASE_URL": llm.base_url,
            "SCRIBES_LLM_MODEL": "claude-sonnet-4-6",
            "SCRIBES_LLM_TIMEOUT_S": "30",
        }
        with (
            running_cluster(work_dir / "host-a", broker.url, env) as a,
            running_worker_host("host-b", work_dir / "host-b", broker.url, env, HOST_B_POOLS) as b,
        ):
            with a.client(BOB_KEY) as bob:
                ingest(bob, "mustard-scale", "Mustard seed", MUSTARD)
            yield TwoHosts(a, b, broker.url, env, work_dir, llm)


def _ask_and_wait(http: httpx.Client, question: str, jobs: list[str]) -> dict[str, Any]:
    # Bypassing the caches, every question passes every stage: embed, retrieve, generate.
    response = http.post("/v1/questions", json={"question": question, "cache": "bypass"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    jobs.append(job_id)
    return wait_job(http, job_id, timeout_s=JOB_TIMEOUT_S)


def _load(hosts: TwoHosts, questions: int, tag: str) -> list[dict[str, Any]]:
    """`questions` distinct answerable questions from CLIENTS clients in a closed loop."""
    jobs: list[str] = []

    def client(index: int) -> list[dict[str, Any]]:
        with hosts.a.client(BOB_KEY) as http:
            return [
                _ask_and_wait(http, f"How many mustard seeds were in the jar, {tag} {n}?", jobs)
                for n in range(index, questions, CLIENTS)
            ]

    with ThreadPoolExecutor(CLIENTS) as pool:
        return [job for done in pool.map(client, range(CLIENTS)) for job in done]


def _ran(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], task: str
) -> dict[str, int]:
    """Runs of `task` on each node between two `tasks_run` readings."""
    return {node: after[node].get(task, 0) - before[node].get(task, 0) for node in after}


def _succeeded(jobs: list[dict[str, Any]]) -> None:
    failed = [(job["id"], job["error"]) for job in jobs if job["status"] != "succeeded"]
    assert not failed, failed


def test_both_hosts_take_work_under_load(hosts: TwoHosts) -> None:
    hosts.b.wait_ready()
    nodes = [hosts.a_node(p) for p in ("embed", "generate")] + [
        hosts.b.node(p) for p in ("embed", "generate")
    ]
    before = tasks_run(hosts.redis_url, nodes)
    jobs = _load(hosts, 64, f"both-{uuid.uuid4().hex[:6]}")
    after = tasks_run(hosts.redis_url, nodes)

    _succeeded(jobs)
    assert len(jobs) == 64
    embedded = _ran(before, after, EMBED)
    generated = _ran(before, after, GENERATE)
    # Each question's generate task ran once on one host or the other; its embedding, in
    # one of the batches that the embed tasks of both hosts took.
    assert 0 < embedded[hosts.a_node("embed")] + embedded[hosts.b.node("embed")] <= 64, embedded
    assert generated[hosts.a_node("generate")] + generated[hosts.b.node("generate")] >= 64
    for node in (hosts.a_node("embed"), hosts.b.node("embed")):
        assert embedded[node] > 0, embedded
    for node in (hosts.a_node("generate"), hosts.b.node("generate")):
        assert generated[node] > 0, generated


def test_a_third_embed_worker_takes_work(hosts: TwoHosts) -> None:
    hosts.b.wait_ready()
    with running_worker_host(
        "host-c", hosts.work_dir / "host-c", hosts.redis_url, hosts.env, ("embed",)
    ) as c:
        nodes = [hosts.a_node("embed"), hosts.b.node("embed"), c.node("embed")]
        before = tasks_run(hosts.redis_url, nodes)
        jobs = _load(hosts, 96, f"third-{uuid.uuid4().hex[:6]}")
        after = tasks_run(hosts.redis_url, nodes)
    _succeeded(jobs)
    embedded = _ran(before, after, EMBED)
    # Each embed task takes the questions waiting as it starts: every node took some.
    assert all(n > 0 for n in embedded.values()), embedded


def _just_started_on(hosts: TwoHosts, node: str, within_s: float) -> dict[str, str]:
    """Task id to job id of the tasks `node` is running now (Celery's `inspect active`) that
    started less than `within_s` ago, so that they are still running when the test acts: one
    caught near its end could finish between the reply and the kill, and never come back."""
    app = Celery("scribes-test-active", broker=hosts.redis_url, set_as_current=False)
    try:
        replies = app.control.inspect(destination=[node], timeout=5).active() or {}
    finally:
        app.close()
    now = time.time()  # `time_start` is the worker's wall clock: the same machine's
    return {
        str(task["id"]): str(task["kwargs"]["job_id"])
        for tasks in replies.values()
        for task in tasks
        if task.get("time_start") and now - float(task["time_start"]) < within_s
    }


def test_a_host_killed_under_load_loses_no_question(hosts: TwoHosts) -> None:
    # The defaults a user runs: nothing in the hosts' environment shortens them.
    settings = Settings(**hosts.env)  # type: ignore[arg-type]
    assert (settings.visibility_timeout_s, settings.stall_s) == (20, 90.0)
    hosts.b.wait_ready()
    tag = f"kill-{uuid.uuid4().hex[:6]}"
    # Each model call takes 3 s, and host B dies within a second of starting one: it is in
    # the middle of that call when it dies.
    hosts.llm.delay(3.0)
    jobs: list[str] = []
    finished: list[dict[str, Any]] = []
    stop = threading.Event()

    def client(index: int) -> None:
        with hosts.a.client(BOB_KEY) as http:
            n = index
            while not stop.is_set():
                finished.append(_ask_and_wait(http, f"How many seeds, {tag} {n}?", jobs))
                n += CLIENTS

    held: dict[str, str] = {}
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client, i) for i in range(CLIENTS)]
            try:
                deadline = time.monotonic() + 120
                while not held:
                    assert time.monotonic() < deadline, "host B never ran a question"
                    held = _just_started_on(hosts, hosts.b.node("generate"), within_s=1.0)
                hosts.b.kill()
                # Questions asked after the death go to host A alone.
                stop.wait(5.0)
            finally:
                stop.set()
            for future in futures:
                future.result()
    finally:
        hosts.llm.delay(0)

    try:
        assert len(finished) == len(jobs)
        _succeeded(finished)
        assert set(held.values()) <= {job["id"] for job in finished}
        # Host B's messages went back to the broker and host A ran them: kombu marks a
        # message it hands back as redelivered, and the task base counts such deliveries
        # (its poison check, `tasks.base`).
        broker = redis.Redis.from_url(hosts.redis_url)
        redelivered = [task for task in held if broker.exists(delivery_count_key(f"{task}:0"))]
        assert redelivered, held
        hosts.a.wait_ready()
    finally:
        hosts.b.restart()
