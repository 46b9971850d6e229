"""A total LLM outage under load, at the breaker's default settings: the breaker opens, the
model hears at most one probe per cooldown, no job fails, and every job finishes once the
model is back. With the extractive fallback, jobs are answered at once, marked degraded."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from rag.settings import Settings
from tests.cluster import Cluster, running_cluster
from tests.fake_anthropic import FakeAnthropic
from tests.integration.conftest import ALICE_KEY, BOB_KEY, LLM_KEY
from tests.integration.test_question_path import MUSTARD, ingest, wait_job

DEFAULTS = Settings()
# The load runs in Bob's corpus, so that it never crowds Alice's notes in other tests.
CLIENTS = 16


def reset_breaker(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.delete("scribes:breaker:llm", "scribes:breaker:llm:events")


def breaker_state(http: httpx.Client) -> dict[str, Any]:
    state: dict[str, Any] = http.get("/v1/status").json()["breakers"]["llm"]
    return state


def submit(http: httpx.Client, count: int) -> list[str]:
    # Distinct questions, so that none is answered from the exact cache.
    tag = uuid.uuid4().int % 10_000
    questions = [
        f"How many mustard seeds were in Pastor Miriam's glass jar, number {tag + n}?"
        for n in range(count)
    ]

    def one(question: str) -> str:
        response = http.post("/v1/questions", json={"question": question})
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(one, questions))


@pytest.fixture
def mustard(cluster: Cluster) -> Iterator[None]:
    reset_breaker(cluster.redis_url)
    with cluster.client(BOB_KEY) as bob:
        ingest(bob, f"mustard-{uuid.uuid4().hex[:6]}", "Mustard seed", MUSTARD)
    yield
    reset_breaker(cluster.redis_url)


def test_an_outage_opens_the_breaker_and_no_job_fails(
    cluster: Cluster, fake_llm: FakeAnthropic, mustard: None
) -> None:
    outage_s = DEFAULTS.breaker_cooldown_s * 1.5
    with cluster.client(BOB_KEY) as bob:
        before = fake_llm.received
        fake_llm.down(529)
        began = time.monotonic()
        try:
            jobs = submit(bob, 2 * CLIENTS)
            deadline = began + 20
            while breaker_state(bob)["state"] != "open" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert breaker_state(bob)["state"] == "open"
            opened_after = time.monotonic() - began
            calls_to_open = fake_llm.received - before
            waiting = bob.get(f"/v1/questions/{jobs[-1]}").json()
            printed = bob.get("/v1/status").json()
            time.sleep(max(0.0, outage_s - (time.monotonic() - began)))
            calls_in_outage = fake_llm.received - before
        finally:
            fake_llm.down(None)
        finished = [wait_job(bob, job_id, timeout_s=120) for job_id in jobs]

    # Opening took the breaker's failure count, plus the calls already in flight then.
    assert calls_to_open <= DEFAULTS.breaker_failures + CLIENTS
    # After that, at most one probe per cooldown reached the dead model.
    probes = math.ceil((outage_s - opened_after) / DEFAULTS.breaker_cooldown_s) + 1
    assert calls_in_outage - calls_to_open <= probes, (calls_to_open, calls_in_outage)
    assert waiting["status"] in ("queued", "running")
    assert printed["status"] == "degraded" and printed["checks"]["llm"] is False
    # Nobody failed: the outage was far shorter than the job deadline.
    assert [job["status"] for job in finished] == ["succeeded"] * len(jobs), [
        job["error"] for job in finished if job["status"] != "succeeded"
    ]
    assert all(not job["degraded"] and not job["no_context"] for job in finished)
    with cluster.client(BOB_KEY) as bob:
        assert breaker_state(bob)["state"] == "closed"


def test_waiting_jobs_say_they_wait_for_the_language_model(
    cluster: Cluster, fake_llm: FakeAnthropic, mustard: None
) -> None:
    with cluster.client(BOB_KEY) as bob:
        fake_llm.down(529)
        try:
            jobs = submit(bob, DEFAULTS.breaker_failures + 3)
            deadline = time.monotonic() + 20
            notes: list[str] = []
            while time.monotonic() < deadline and not notes:
                notes = [
                    note
                    for job_id in jobs
                    if (note := bob.get(f"/v1/questions/{job_id}").json()["note"])
                    and "waiting for the language model" in note
                ]
                time.sleep(0.1)
        finally:
            fake_llm.down(None)
        assert notes, "no job said it waits for the language model"
        assert all(wait_job(bob, j, timeout_s=120)["status"] == "succeeded" for j in jobs)


@pytest.fixture(scope="module")
def fallback_cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, fake_llm: FakeAnthropic
) -> Iterator[Cluster]:
    data_dir: Path = tmp_path_factory.mktemp("fallback")
    url = redis_url.rsplit("/", 1)[0] + "/4"
    redis.Redis.from_url(url).flushdb()
    env = {
        "REDIS_URL": url,
        "SCRIBES_API_KEYS": f"{ALICE_KEY}=alice",
        "ANTHROPIC_API_KEY": LLM_KEY,
        "ANTHROPIC_BASE_URL": fake_llm.base_url,
        "SCRIBES_LLM_FALLBACK": "extractive",
    }
    with running_cluster(data_dir, url, env) as cluster:
        yield cluster


def test_with_the_fallback_an_open_breaker_answers_at_once_degraded_and_uncached(
    fallback_cluster: Cluster, fake_llm: FakeAnthropic
) -> None:
    with fallback_cluster.client(ALICE_KEY) as alice:
        ingest(alice, "mustard", "Mustard seed", MUSTARD)
        fake_llm.down(529)
        try:
            opened = submit(alice, DEFAULTS.breaker_failures + 2)
            for job_id in opened:
                wait_job(alice, job_id, timeout_s=60)
            assert breaker_state(alice)["state"] == "open"
            calls = fake_llm.received
            question = "How many mustard seeds were in the glass jar?"
            first = alice.post("/v1/questions", json={"question": question}).json()
            degraded = wait_job(alice, first["id"], timeout_s=10)
            again = alice.post("/v1/questions", json={"question": question})
        finally:
            fake_llm.down(None)

    assert fake_llm.received == calls  # the open breaker let no call through
    assert degraded["status"] == "succeeded" and degraded["degraded"] is True
    assert degraded["model"] == "extractive" and "37 mustard seeds" in degraded["answer"]
    assert degraded["usage"]["cost_usd"] == 0.0
    # Never cached under the model's key: the same question is asked anew, not served.
    assert again.status_code == 202
