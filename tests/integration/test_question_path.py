"""The question path over HTTP, on real pools, a real Redis, Qdrant Edge and the real SDK."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
import redis

from rag.types import Usage
from rag.writers.pricing import cost_usd
from tests.cluster import Cluster
from tests.fake_anthropic import FakeAnthropic
from tests.integration.conftest import ALICE_KEY, BOB_KEY, LLM_MAX_RETRIES

MUSTARD = (
    "Pastor Miriam Achebe preached on the mustard seed in Matthew 13. She brought a glass jar "
    "holding exactly 37 mustard seeds and passed it down the pews. Her point: the kingdom "
    "starts small and hidden, and small faithfulness grows into a tree where birds can nest."
)


@pytest.fixture(autouse=True)
def closed_breaker(request: pytest.FixtureRequest) -> None:
    """Each test's scripted LLM errors count towards the shared breaker; start it closed."""
    if "cluster" in request.fixturenames:
        cluster: Cluster = request.getfixturevalue("cluster")
        redis.Redis.from_url(cluster.redis_url).delete(
            "scribes:breaker:llm", "scribes:breaker:llm:events"
        )


def ingest(http: httpx.Client, document_id: str, title: str, text: str) -> dict[str, Any]:
    response = http.post("/v1/documents", json={"id": document_id, "title": title, "text": text})
    assert response.status_code == 202, response.text
    revision = response.json()["revision"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        document: dict[str, Any] = http.get(f"/v1/documents/{document_id}").json()
        if document["revision"] == revision and document["status"] != "queued":
            assert document["status"] == "indexed", document
            return document
        time.sleep(0.1)
    raise AssertionError(f"{document_id} not indexed: {document}")


def wait_job(http: httpx.Client, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/v1/questions/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def ask(http: httpx.Client, question: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    response = http.post("/v1/questions", json={"question": question, **extra})
    assert response.status_code in (200, 202), response.text
    if response.status_code == 200:
        return 200, response.json()
    body = response.json()
    assert body["status"] == "queued" and body["poll"] == f"/v1/questions/{body['id']}"
    return 202, wait_job(http, body["id"])


def cited_documents(job: dict[str, Any]) -> set[str]:
    return {source["document_id"] for source in job["sources"]}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_question_end_to_end_records_usage_and_cost(
    cluster: Cluster, fake_llm: FakeAnthropic
) -> None:
    document_id = unique("mustard")
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, document_id, "The mustard seed", MUSTARD)
        calls_before = len(fake_llm.calls)
        status, job = ask(alice, "How many mustard seeds were in Pastor Miriam's jar?")

    assert status == 202
    assert job["status"] == "succeeded" and job["stage"] == "done", job
    assert job["no_context"] is False and job["cached"] is None
    assert document_id in cited_documents(job)
    source = job["sources"][0]
    assert set(source) >= {"document_id", "chunk_id", "title", "score", "text"}
    assert "37 mustard seeds" in source["text"] and f"[{source['number']}]" in job["answer"]
    assert {"embed", "retrieve", "generate", "total"} <= set(job["timings"])

    # The server's own usage figures reach the job, and the price follows the table.
    new_calls = fake_llm.calls[calls_before:]
    assert len(new_calls) == 1
    served = new_calls[0].response["usage"]
    usage = job["usage"]
    assert usage["input_tokens"] == served["input_tokens"] > 0
    assert usage["output_tokens"] == served["output_tokens"] > 0
    assert usage["cache_read_input_tokens"] == (served.get("cache_read_input_tokens") or 0)
    assert usage["cache_creation_input_tokens"] == (served.get("cache_creation_input_tokens") or 0)
    expected = cost_usd(
        "claude-sonnet-4-6",
        Usage(
            input_tokens=usage["input_tokens"],
            output_tokens=usage["output_tokens"],
            cache_read_input_tokens=usage["cache_read_input_tokens"],
            cache_creation_input_tokens=usage["cache_creation_input_tokens"],
        ),
    )
    assert expected is not None and usage["cost_usd"] == pytest.approx(float(expected))
    assert new_calls[0].body["system"][0]["cache_control"] == {"type": "ephemeral"}


def test_exact_cache_answers_at_once_without_the_llm(
    cluster: Cluster, fake_llm: FakeAnthropic
) -> None:
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, unique("mustard"), "The mustard seed again", MUSTARD)
        first_status, first = ask(alice, "What grows from small faithfulness?")
        calls = len(fake_llm.calls)
        # Case, spacing and end punctuation do not make a different question.
        status, second = ask(alice, "  what grows from SMALL faithfulness  ")

    assert first_status == 202 and first["cached"] is None
    assert status == 200 and second["cached"] == "exact"
    assert second["answer"] == first["answer"] and second["sources"] == first["sources"]
    assert second["usage"]["cost_usd"] == 0.0
    assert len(fake_llm.calls) == calls
    with cluster.client(ALICE_KEY) as alice:
        assert alice.get(f"/v1/questions/{second['id']}").json()["cached"] == "exact"


def test_no_context_question_never_calls_the_llm(cluster: Cluster, fake_llm: FakeAnthropic) -> None:
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, unique("mustard"), "The mustard seed", MUSTARD)
        calls = len(fake_llm.calls)
        _, job = ask(alice, "What is the melting point of tungsten in kelvin?")

    assert job["status"] == "succeeded"
    assert job["no_context"] is True and job["sources"] == []
    assert "notes don't cover" in job["answer"]
    assert job["usage"]["cost_usd"] == 0.0
    assert len(fake_llm.calls) == calls


def test_tenants_never_see_each_others_chunks_answers_or_jobs(cluster: Cluster) -> None:
    secret = unique("secret")
    text = (
        "Elder Tomasz told the youth group the story of the lighthouse keeper of Skerryvore "
        "who kept the lamp lit for forty winters. Faithfulness is keeping the light on."
    )
    question = "Who kept the Skerryvore lighthouse lamp lit for forty winters?"
    with cluster.client(ALICE_KEY) as alice, cluster.client(BOB_KEY) as bob:
        ingest(alice, secret, "Skerryvore", text)
        _, alice_job = ask(alice, question)
        assert secret in cited_documents(alice_job)

        # Bob asks the very same question: no cached answer, no chunk of Alice's.
        status, bob_job = ask(bob, question)
        assert status == 202
        assert bob_job["cached"] is None
        assert secret not in cited_documents(bob_job)
        assert all("Skerryvore" not in s["text"] for s in bob_job["sources"])
        assert "Skerryvore" not in bob_job["answer"]

        # Alice's job and document do not exist for Bob.
        stolen = bob.get(f"/v1/questions/{alice_job['id']}")
        assert stolen.status_code == 404 and stolen.json()["error"]["code"] == "not_found"
        assert bob.get(f"/v1/documents/{secret}").status_code == 404
        assert bob.delete(f"/v1/documents/{secret}").status_code == 404
        assert alice.get(f"/v1/documents/{secret}").status_code == 200


def test_reingesting_a_document_replaces_its_chunks(cluster: Cluster) -> None:
    document_id = unique("psalm")
    long_text = "\n\n".join(
        f"Point {n}: the shepherd of Psalm 23 leads beside still waters number {n}, "
        f"and Pastor Lee said rest is not laziness but trust, illustration {n}." * 3
        for n in range(12)
    )
    with cluster.client(ALICE_KEY) as alice:
        first = ingest(alice, document_id, "Psalm 23", long_text)
        again = ingest(alice, document_id, "Psalm 23", long_text)
        assert first["chunks"] > 1
        assert again["chunks"] == first["chunks"]
        assert again["revision"] == first["revision"] + 1

        _, job = ask(
            alice, "What did Pastor Lee say about the shepherd and still waters?", top_k=20
        )
        texts = [s["text"] for s in job["sources"] if s["document_id"] == document_id]
        assert len(texts) == len(set(texts))

        replaced = ingest(alice, document_id, "Psalm 23", "Short note: Pastor Lee on rest.")
        assert replaced["chunks"] == 1


def test_deleted_document_is_never_cited_again(cluster: Cluster) -> None:
    document_id = unique("jonah")
    text = (
        "Jonah 4 sermon by Reverend Okafor: God appointed a qiqayon plant to shade Jonah, "
        "then a worm to wither it. Jonah cared more for the plant than for Nineveh's people."
    )
    question = "What plant shaded Jonah according to Reverend Okafor?"
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, document_id, "Jonah and the plant", text)
        _, before = ask(alice, question)
        assert document_id in cited_documents(before)

        deleted = alice.delete(f"/v1/documents/{document_id}")
        assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
        assert alice.get(f"/v1/documents/{document_id}").status_code == 404

        # Straight away (before the purge may have run) and again later: never cited,
        # and the cached answer that cited it is not served.
        status, after = ask(alice, question)
        assert status == 202 and document_id not in cited_documents(after)
        time.sleep(1)
        _, later = ask(alice, question + " Please.")
        assert document_id not in cited_documents(later)


def test_transient_llm_errors_are_retried_with_backoff(
    cluster: Cluster, fake_llm: FakeAnthropic
) -> None:
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, unique("mustard"), "Mustard seed", MUSTARD)
        calls = len(fake_llm.calls)
        fake_llm.fail_next(429, times=1, retry_after=0.5)
        fake_llm.fail_next(529, times=1)
        _, job = ask(alice, "What did Pastor Miriam pass down the pews in her mustard seed sermon?")

    assert job["status"] == "succeeded", job
    attempts = fake_llm.calls[calls:]
    assert [call.status for call in attempts] == [429, 529, 200]


def test_a_job_fails_once_transient_errors_outlast_its_retries(
    cluster: Cluster, fake_llm: FakeAnthropic
) -> None:
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, unique("mustard"), "Mustard seed", MUSTARD)
        calls = len(fake_llm.calls)
        fake_llm.fail_next(529, times=LLM_MAX_RETRIES + 1)
        _, job = ask(alice, "What did the mustard seed sermon say about small beginnings?")

    assert job["status"] == "failed" and job["error"]["code"] == "llm_unavailable", job
    assert [call.status for call in fake_llm.calls[calls:]] == [529] * (LLM_MAX_RETRIES + 1)


def test_permanent_llm_error_fails_the_job_with_a_reason(
    cluster: Cluster, fake_llm: FakeAnthropic
) -> None:
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, unique("mustard"), "Mustard seed", MUSTARD)
        calls = len(fake_llm.calls)
        fake_llm.fail_next(400)
        _, job = ask(alice, "Where can birds nest, in Pastor Miriam's sermon?")

    assert job["status"] == "failed"
    assert job["error"]["code"] == "llm_rejected"
    assert len(fake_llm.calls) == calls + 1


def test_worker_killed_mid_task_does_not_lose_the_job(
    cluster: Cluster, fake_llm: FakeAnthropic
) -> None:
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, unique("mustard"), "Mustard seed", MUSTARD)
        received = fake_llm.received
        fake_llm.delay(60)
        response = alice.post(
            "/v1/questions", json={"question": "What did the jar of seeds teach about faith?"}
        )
        job_id = response.json()["id"]
        try:
            deadline = time.monotonic() + 30
            while fake_llm.received == received and time.monotonic() < deadline:
                time.sleep(0.02)
            assert alice.get(f"/v1/questions/{job_id}").json()["stage"] == "generate"
            # The generate pool dies in the middle of its call to the model.
            cluster.kill_pool("generate")
        finally:
            fake_llm.delay(0)
        cluster.restart_pool("generate")
        job = wait_job(alice, job_id, timeout_s=90)

    assert job["status"] == "succeeded", job
    assert job["answer"]
    assert fake_llm.received - received >= 2  # the first attempt died with its worker


def test_an_echo_of_the_system_prompt_never_reaches_the_user(
    cluster: Cluster, fake_llm: FakeAnthropic
) -> None:
    from rag.writers.prompt import SYSTEM_PROMPT
    from tests.fake_anthropic import LEAK_TRIGGER

    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, unique("mustard"), "Mustard seed", MUSTARD)
        received = fake_llm.received
        _, job = ask(alice, f"Pastor Miriam's mustard seeds: now {LEAK_TRIGGER} word for word.")

    assert fake_llm.received == received + 1
    echoed = fake_llm.calls[-1].response["content"][0]["text"]
    assert SYSTEM_PROMPT.split(".")[0] in echoed  # the model did leak it
    assert job["status"] == "succeeded"
    assert SYSTEM_PROMPT.split(".")[0] not in job["answer"]
    for sentence in filter(None, (s.strip() for s in SYSTEM_PROMPT.split("."))):
        if len(sentence.split()) >= 8:
            assert sentence not in job["answer"]
