"""What apps get beyond submit-and-poll, on the session's real cluster: long polls (a
thousand at once on one API process), server-sent events read to the end and resumed,
`Idempotency-Key`, cancel at each stage, batches and reading many jobs at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
from redis import Redis

from rag.records.jobs import JobStatus, JobStore, Stage, new_job_id
from rag.types import Answer
from scribes.localredis import free_port
from tasks.app import app
from tasks.embed import embed_query
from tasks.retrieve import retrieve_context
from tests.cluster import Cluster
from tests.fake_anthropic import FakeAnthropic
from tests.integration.conftest import ALICE_KEY, BOB_KEY

NOTE = (
    "The lighthouse keeper on Hollin Rock polishes the lamp lens every "
    "Thursday at dusk. She keeps the spare wicks in a tin marked with a blue heron."
)


@pytest.fixture(scope="module")
def alice(cluster: Cluster) -> Iterator[httpx.Client]:
    with cluster.client(ALICE_KEY) as client:
        response = client.post(
            "/v1/documents", json={"id": "lighthouse", "title": "Lighthouse", "text": NOTE}
        )
        assert response.status_code == 202, response.text
        deadline = time.monotonic() + 120
        while client.get("/v1/documents/lighthouse").json()["status"] != "indexed":
            assert time.monotonic() < deadline, "the note was not indexed"
            time.sleep(0.1)
        yield client


@pytest.fixture(scope="module")
def jobs(cluster: Cluster) -> JobStore:
    return JobStore(Redis.from_url(cluster.redis_url, decode_responses=True), ttl_s=3600)


def held_job(jobs: JobStore, tenant: str = "alice") -> str:
    """A job recorded but never enqueued: nothing moves it but the test."""
    job_id = new_job_id()
    jobs.create(
        job_id=job_id,
        tenant=tenant,
        question="When is the lens polished?",
        top_k=3,
        corpus_version=0,
        answer_cache_key="held",
    )
    # Off the stall sweep's watch: else, unfinished 90 s later, it is sent through the
    # pipeline in the middle of a later test, whose counters and model calls it moves.
    jobs.forget(job_id)
    return job_id


def read_sse(response: httpx.Response) -> Iterator[tuple[str | None, str, Any]]:
    """(id, event, data) of each event of a text/event-stream response."""
    event_id: str | None = None
    kind = "message"
    data: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event_id, kind, json.loads("\n".join(data))
            event_id, kind, data = None, "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                event_id = value
            elif name == "event":
                kind = value
            elif name == "data":
                data.append(value)


# Long poll


def test_a_long_poll_returns_as_soon_as_the_job_finishes(
    alice: httpx.Client, jobs: JobStore
) -> None:
    job_id = held_job(jobs)
    finish_after_s = 1.0
    timer = threading.Timer(
        finish_after_s, lambda: jobs.succeed(job_id, Answer("Thursdays."), last_stage=Stage.EMBED)
    )
    started = time.monotonic()
    timer.start()
    response = alice.get(f"/v1/questions/{job_id}", params={"wait": 20})
    waited = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert response.json()["answer"] == "Thursdays."
    # Held until the job finished, and not until the wait ran out.
    assert finish_after_s <= waited < 20


def test_a_long_poll_returns_the_unfinished_job_when_the_wait_runs_out(
    alice: httpx.Client, jobs: JobStore
) -> None:
    job_id = held_job(jobs)
    started = time.monotonic()
    response = alice.get(f"/v1/questions/{job_id}", params={"wait": 0.5})
    assert response.status_code == 200 and response.json()["status"] == "queued"
    assert time.monotonic() - started >= 0.5


@pytest.mark.parametrize("wait", ["31", "-1", "soon"])
def test_a_wait_out_of_range_is_a_422(alice: httpx.Client, jobs: JobStore, wait: str) -> None:
    response = alice.get(f"/v1/questions/{held_job(jobs)}", params={"wait": wait})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


def test_a_real_question_is_answered_through_a_long_poll(alice: httpx.Client) -> None:
    submitted = alice.post(
        "/v1/questions", json={"question": "When does the keeper polish the lamp lens?"}
    )
    assert submitted.status_code == 202
    job = alice.get(submitted.json()["poll"], params={"wait": 30}).json()
    assert job["status"] == "succeeded" and "Thursday" in job["answer"]


def test_a_thousand_long_polls_wait_on_one_api_process_without_a_thread_each(
    cluster: Cluster, jobs: JobStore
) -> None:
    api = psutil.Process(cluster.supervisor.children["api"].pid)
    held = [held_job(jobs) for _ in range(10)]
    polls = 1000
    threads_while_waiting: list[int] = []

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=polls, max_keepalive_connections=polls)
        async with httpx.AsyncClient(
            base_url=cluster.api_url,
            headers={"Authorization": f"Bearer {ALICE_KEY}"},
            limits=limits,
            timeout=60,
        ) as client:
            waiting = [
                asyncio.create_task(
                    client.get(f"/v1/questions/{held[n % len(held)]}", params={"wait": 30})
                )
                for n in range(polls)
            ]
            # Every request has reached the API and waits there.
            deadline = time.monotonic() + 30
            while len(api.net_connections()) < polls and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)
            threads_while_waiting.append(api.num_threads())
            assert not any(task.done() for task in waiting), "a long poll returned early"
            for job_id in held:
                jobs.succeed(job_id, Answer("Thursdays."), last_stage=Stage.EMBED)
            return await asyncio.gather(*waiting)

    responses = asyncio.run(run())
    assert len(responses) == polls
    assert all(response.json()["status"] == "succeeded" for response in responses)
    # Each returned when its job finished, inside its 30 s wait: a wait that ran out would
    # have held its request 30 s. (`elapsed` runs from the request's send, so it also holds
    # the time the 1,000 connections took to open, and never less than the wait itself.)
    assert max(response.elapsed.total_seconds() for response in responses) < 30
    # uvicorn's loop, anyio's worker threads and a few others; never one per request.
    assert threads_while_waiting[0] < 100


# Server-sent events


def test_the_event_stream_reads_each_stage_then_the_job_and_resumes_after_an_id(
    alice: httpx.Client,
) -> None:
    submitted = alice.post(
        "/v1/questions",
        json={"question": "What tin holds the spare wicks?", "cache": "bypass"},
    ).json()
    with alice.stream("GET", submitted["events"], timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(read_sse(response))
    kinds = [kind for _, kind, _ in events]
    stages = [data["stage"] for _, kind, data in events if kind == "stage"]
    assert stages == ["queued", "embed", "retrieve", "generate"]
    assert kinds[-1] == "job" and kinds.count("job") == 1
    final = events[-1][2]
    assert final["status"] == "succeeded" and "lens" in final["answer"]
    # Streamed text, when the writer streams, is the final answer.
    text = "".join(data["text"] for _, kind, data in events if kind == "text")
    assert text in ("", final["answer"])
    # Every event has an id, and they increase.
    ids = [event_id for event_id, _, _ in events]
    assert all(ids) and ids == sorted(ids, key=lambda i: tuple(map(int, str(i).split("-"))))

    # Reconnecting after the embed event gives exactly what came after it.
    at = next(n for n, (_, kind, data) in enumerate(events) if data.get("stage") == "embed")
    with alice.stream(
        "GET", submitted["events"], headers={"Last-Event-ID": str(events[at][0])}, timeout=60
    ) as response:
        resumed = list(read_sse(response))
    assert [(i, kind) for i, kind, _ in resumed] == [(i, kind) for i, kind, _ in events[at + 1 :]]


def test_the_event_stream_of_a_finished_job_is_the_job(alice: httpx.Client, jobs: JobStore) -> None:
    job_id = held_job(jobs)
    jobs.succeed(job_id, Answer("Thursdays."), last_stage=Stage.EMBED)
    with alice.stream("GET", f"/v1/questions/{job_id}/events") as response:
        events = list(read_sse(response))
    assert [kind for _, kind, _ in events][-1] == "job"
    assert events[-1][2]["answer"] == "Thursdays."
    with alice.stream(
        "GET", f"/v1/questions/{job_id}/events", headers={"Last-Event-ID": events[-1][0] or "0-0"}
    ) as response:
        again = list(read_sse(response))
    assert [kind for _, kind, _ in again] == ["job"]


def test_the_event_stream_waits_for_moves(alice: httpx.Client, jobs: JobStore) -> None:
    job_id = held_job(jobs)

    def move() -> None:
        jobs.start_stage(job_id, Stage.EMBED)
        jobs.note(job_id, Stage.EMBED, "waiting for something")
        jobs.succeed(job_id, Answer("Thursdays."), last_stage=Stage.EMBED)

    timer = threading.Timer(0.5, move)
    timer.start()
    with alice.stream("GET", f"/v1/questions/{job_id}/events", timeout=30) as response:
        events = [(kind, data) for _, kind, data in read_sse(response)]
    timer.join()
    assert [kind for kind, _ in events] == ["stage", "stage", "note", "job"]
    assert events[2][1] == {"note": "waiting for something"}


def test_another_tenants_event_stream_is_a_404(cluster: Cluster, jobs: JobStore) -> None:
    job_id = held_job(jobs)
    with cluster.client(BOB_KEY) as bob:
        assert bob.get(f"/v1/questions/{job_id}/events").status_code == 404
        assert bob.get(f"/v1/questions/{job_id}", params={"wait": 1}).status_code == 404
        assert bob.delete(f"/v1/questions/{job_id}").status_code == 404


def test_a_malformed_last_event_id_is_a_422(alice: httpx.Client, jobs: JobStore) -> None:
    response = alice.get(
        f"/v1/questions/{held_job(jobs)}/events", headers={"Last-Event-ID": "yesterday"}
    )
    assert response.status_code == 422


# Idempotency-Key


def test_a_repeated_idempotency_key_returns_the_first_response_and_makes_no_second_job(
    alice: httpx.Client, jobs: JobStore
) -> None:
    body = {"question": "Who polishes the lens?", "cache": "bypass"}
    key = {"Idempotency-Key": f"ask-{new_job_id()}"}
    first = alice.post("/v1/questions", json=body, headers=key)
    again = alice.post("/v1/questions", json=body, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    # The same body under another key is another job.
    other = alice.post("/v1/questions", json=body, headers={"Idempotency-Key": new_job_id()})
    assert other.json()["id"] != first.json()["id"]


def test_an_idempotency_key_reused_with_another_body_is_a_409(alice: httpx.Client) -> None:
    key = {"Idempotency-Key": f"ask-{new_job_id()}"}
    assert alice.post("/v1/questions", json={"question": "Who?"}, headers=key).status_code in (
        200,
        202,
    )
    conflict = alice.post("/v1/questions", json={"question": "Where?"}, headers=key)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_conflict"


def test_idempotency_keys_are_per_tenant(cluster: Cluster, alice: httpx.Client) -> None:
    key = {"Idempotency-Key": f"shared-{new_job_id()}"}
    body = {"question": "Who keeps the light?", "cache": "bypass"}
    mine = alice.post("/v1/questions", json=body, headers=key).json()
    with cluster.client(BOB_KEY) as bob:
        theirs = bob.post("/v1/questions", json=body, headers=key).json()
    assert mine["id"] != theirs["id"]


def test_a_refused_request_leaves_its_key_free(alice: httpx.Client) -> None:
    key = {"Idempotency-Key": f"ask-{new_job_id()}"}
    refused = alice.post("/v1/questions", json={"question": "Who?", "top_k": 0}, headers=key)
    assert refused.status_code == 422
    accepted = alice.post("/v1/questions", json={"question": "Who?", "top_k": 2}, headers=key)
    assert accepted.status_code in (200, 202)


def test_a_document_sent_twice_under_one_key_is_one_revision(alice: httpx.Client) -> None:
    key = {"Idempotency-Key": f"note-{new_job_id()}"}
    body = {"id": f"idem-{new_job_id()[:8]}", "title": "Gulls", "text": "Gulls nest on the rock."}
    first = alice.post("/v1/documents", json=body, headers=key)
    again = alice.post("/v1/documents", json=body, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and first.json()["revision"] == 1
    assert alice.get(f"/v1/documents/{body['id']}").json()["revision"] == 1
    changed = alice.post("/v1/documents", json={**body, "text": "Terns too."}, headers=key)
    assert changed.status_code == 409


# Cancel


def test_cancelling_a_queued_job_stops_it_before_any_stage(
    alice: httpx.Client, jobs: JobStore
) -> None:
    job_id = held_job(jobs)
    cancelled = alice.delete(f"/v1/questions/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    # A stage that then gets the job does not start.
    assert not jobs.start_stage(job_id, Stage.EMBED)
    # Cancelling again says the same; cancelling a finished job is a conflict.
    assert alice.delete(f"/v1/questions/{job_id}").json()["status"] == "cancelled"
    done = held_job(jobs)
    jobs.succeed(done, Answer("Thursdays."), last_stage=Stage.EMBED)
    refused = alice.delete(f"/v1/questions/{done}")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "already_finished"


@pytest.mark.parametrize("stage", [Stage.EMBED, Stage.RETRIEVE])
def test_a_job_cancelled_between_stages_is_not_taken_further_by_the_workers(
    alice: httpx.Client, jobs: JobStore, cluster: Cluster, stage: Stage
) -> None:
    """The job is cancelled while its chain waits for the `stage` worker; that worker, and
    every later one, leaves it as it is."""
    job_id = held_job(jobs)
    jobs.start_stage(job_id, Stage.EMBED)
    if stage is Stage.RETRIEVE:
        jobs.finish_stage(job_id, Stage.EMBED)
    assert alice.delete(f"/v1/questions/{job_id}").json()["status"] == "cancelled"
    task = embed_query if stage is Stage.EMBED else retrieve_context
    redis = Redis.from_url(cluster.redis_url, decode_responses=True)
    before = redis.hget(f"scribes:job:{job_id}", "stage_rank")
    with app.connection_for_write(cluster.redis_url) as connection:
        task.apply_async(kwargs={"job_id": job_id}, connection=connection)
    # The pool takes the message, finds the job cancelled and leaves it.
    deadline = time.monotonic() + 30
    while redis.llen(stage.value) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    job = alice.get(f"/v1/questions/{job_id}").json()
    assert job["status"] == "cancelled" and job["answer"] is None
    assert redis.hget(f"scribes:job:{job_id}", "stage_rank") == before
    assert redis.hget(f"scribes:job:{job_id}", "passages") is None


# Batches and many at once


def test_a_batch_enters_the_queues_at_once_and_is_embedded_together(
    alice: httpx.Client, cluster: Cluster
) -> None:
    questions = [
        {"question": f"What does the keeper do on day {n}?", "cache": "bypass"} for n in range(6)
    ]
    response = alice.post("/v1/questions:batch", json={"questions": questions})
    assert response.status_code == 202, response.text
    submitted = response.json()["jobs"]
    assert [job["status"] for job in submitted] == ["queued"] * 6
    ids = [job["id"] for job in submitted]
    deadline = time.monotonic() + 60
    while True:
        read = alice.get("/v1/questions", params={"ids": ",".join(ids)}).json()
        if all(job["status"] == "succeeded" for job in read["jobs"]):
            break
        assert time.monotonic() < deadline, read
        time.sleep(0.2)
    assert [job["id"] for job in read["jobs"]] == ids and read["missing"] == []
    # One embed task took every question of the batch...
    redis = Redis.from_url(cluster.redis_url, decode_responses=True)
    together = [int(redis.hget(f"scribes:job:{i}", "embedded_with") or 0) for i in ids]
    assert max(together) >= 6
    # ...and sent each on to retrieve itself.
    handed_on = [redis.hget(f"scribes:job:{i}", "handed_on") == "1" for i in ids]
    assert all(handed_on)
    assert all("embed" in job["timings"] for job in read["jobs"])


def test_a_batch_with_one_bad_question_is_refused_whole(
    alice: httpx.Client, cluster: Cluster
) -> None:
    redis = Redis.from_url(cluster.redis_url, decode_responses=True)
    before = len(list(redis.scan_iter("scribes:job:*", count=1000)))
    response = alice.post(
        "/v1/questions:batch",
        json={"questions": [{"question": "Who?"}, {"question": "Why?", "top_k": 99}]},
    )
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("questions[1]: top_k")
    assert len(list(redis.scan_iter("scribes:job:*", count=1000))) == before
    too_many = alice.post("/v1/questions:batch", json={"questions": [{"question": "Who?"}] * 101})
    assert too_many.status_code == 422
    assert alice.post("/v1/questions:batch", json={"questions": []}).status_code == 422


def test_reading_many_jobs_names_the_missing_and_hides_other_tenants(
    cluster: Cluster, alice: httpx.Client, jobs: JobStore
) -> None:
    mine, theirs = held_job(jobs), held_job(jobs, tenant="bob")
    read = alice.get("/v1/questions", params={"ids": f"{mine},{theirs},nosuchjob"}).json()
    assert [job["id"] for job in read["jobs"]] == [mine]
    assert read["missing"] == [theirs, "nosuchjob"]
    assert alice.get("/v1/questions").status_code == 422
    many = ",".join(new_job_id() for _ in range(101))
    assert alice.get("/v1/questions", params={"ids": many}).status_code == 422


def test_a_cancelled_question_is_counted_in_usage(alice: httpx.Client, jobs: JobStore) -> None:
    before = alice.get("/v1/usage").json()["totals"]
    alice.delete(f"/v1/questions/{held_job(jobs)}")
    after = alice.get("/v1/usage").json()["totals"]
    assert after["cancelled"] == before.get("cancelled", 0) + 1
    assert JobStatus.CANCELLED.value == "cancelled"


# The answer's text as the model writes it, and a cancel while it writes


# Sentences the leak filter clears early, each citing the lighthouse note.
LAMP_ANSWER = (
    "The keeper polishes the lens on Thursdays [1]. She does it at dusk, when the light "
    "is low over the water [1]. The spare wicks are kept in a tin by the door [1]. "
    "That tin is marked with a blue heron, as your notes say [1]."
)


@pytest.fixture
def slow_model(fake_llm: FakeAnthropic) -> Iterator[FakeAnthropic]:
    """The model writes its pieces 0.3 s apart, in sentences the leak filter clears early."""
    fake_llm.answer_with(LAMP_ANSWER)
    fake_llm.stream_delay(0.3)
    try:
        yield fake_llm
    finally:
        fake_llm.stream_delay(0)
        fake_llm.answer_with(None)


def test_the_answers_text_streams_as_the_model_writes_it_and_joins_to_the_answer(
    alice: httpx.Client, slow_model: FakeAnthropic
) -> None:
    submitted = alice.post(
        "/v1/questions", json={"question": "How is the lamp kept?", "cache": "bypass"}
    ).json()
    arrivals: list[tuple[float, str, Any]] = []
    with alice.stream("GET", submitted["events"], timeout=60) as response:
        for _, kind, data in read_sse(response):
            arrivals.append((time.monotonic(), kind, data))
    texts = [(at, data["text"]) for at, kind, data in arrivals if kind == "text"]
    final = arrivals[-1][2]
    assert arrivals[-1][1] == "job" and final["status"] == "succeeded"
    assert "".join(text for _, text in texts) == final["answer"]
    # Sentences came one by one while the model wrote, not all at the end.
    assert len(texts) >= 2
    assert arrivals[-1][0] - texts[0][0] >= 0.6


def test_an_answer_broken_off_mid_stream_says_restart_and_streams_whole_again(
    alice: httpx.Client, fake_llm: FakeAnthropic
) -> None:
    # The model writes ten pieces (two sentences cleared and sent), then breaks off
    # (overloaded); the job's retry writes the whole answer again.
    fake_llm.answer_with(LAMP_ANSWER)
    fake_llm.break_next_stream(after_pieces=10)
    try:
        submitted = alice.post(
            "/v1/questions",
            json={"question": "How is the lamp kept, and the wicks?", "cache": "bypass"},
        ).json()
        with alice.stream("GET", submitted["events"], timeout=60) as response:
            events = list(read_sse(response))
    finally:
        fake_llm.answer_with(None)
    kinds = [kind for _, kind, _ in events]
    final = events[-1][2]
    assert kinds[-1] == "job" and final["status"] == "succeeded", kinds
    assert kinds.count("restart") == 1
    restart = kinds.index("restart")
    assert kinds.index("note") < restart  # the retry was announced first
    void = "".join(data["text"] for _, kind, data in events[:restart] if kind == "text")
    again = "".join(data["text"] for _, kind, data in events[restart:] if kind == "text")
    assert void and final["answer"].startswith(void)
    # What follows the last restart is, joined, the answer: the reader drops what came before.
    assert again == final["answer"]


def test_a_cancel_while_the_model_writes_abandons_the_call_and_records_what_it_spent(
    alice: httpx.Client, slow_model: FakeAnthropic
) -> None:
    before = alice.get("/v1/usage").json()["totals"]
    calls = len(slow_model.calls)
    submitted = alice.post(
        "/v1/questions",
        json={
            "question": "Where does the lighthouse keeper keep the spare wicks?",
            "cache": "bypass",
        },
    ).json()
    with alice.stream("GET", submitted["events"], timeout=60) as response:
        for _, kind, data in read_sse(response):
            if kind == "stage" and data["stage"] == "generate":
                time.sleep(0.5)  # the model has begun writing
                cancelled = alice.delete(f"/v1/questions/{submitted['id']}")
                assert cancelled.status_code == 200
            if kind == "job":
                assert data["status"] == "cancelled" and data["answer"] is None
    [call] = slow_model.wait_calls(calls + 1, timeout_s=10)[calls:]
    assert call.streamed and call.disconnected and not call.completed
    # The call's spend reaches the ledger once the abandoned call has returned.
    deadline = time.monotonic() + 10
    after = alice.get("/v1/usage").json()["totals"]
    while after["cancelled"] == before["cancelled"] and time.monotonic() < deadline:
        time.sleep(0.1)
        after = alice.get("/v1/usage").json()["totals"]
    # No answer was written after the cancel.
    job = alice.get(f"/v1/questions/{submitted['id']}").json()
    assert job["status"] == "cancelled" and job["answer"] is None
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["tokens"]["input"] > before["tokens"]["input"]
    assert after["questions"] == before["questions"] + 1


# Submit and wait in one request


def test_prefer_wait_holds_the_submit_until_the_answer(alice: httpx.Client) -> None:
    response = alice.post(
        "/v1/questions",
        json={"question": "On which day is the lamp lens polished?", "cache": "bypass"},
        headers={"Prefer": "wait=20"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["preference-applied"] == "wait=20"
    job = response.json()
    assert job["status"] == "succeeded" and "lens" in job["answer"]


def test_prefer_wait_answers_202_with_the_queued_job_when_the_wait_runs_out(
    alice: httpx.Client, slow_model: FakeAnthropic
) -> None:
    started = time.monotonic()
    response = alice.post(
        "/v1/questions",
        json={"question": "Where does the keeper keep the spare wicks?", "cache": "bypass"},
        headers={"Prefer": "wait=1"},
    )
    assert response.status_code == 202 and time.monotonic() - started >= 1
    assert response.headers["preference-applied"] == "wait=1"
    assert response.headers["location"] == response.json()["poll"]
    job = alice.get(response.json()["poll"], params={"wait": 30}).json()
    assert job["status"] == "succeeded"


def test_a_stopping_api_cuts_open_event_streams_instead_of_waiting_for_them(
    cluster: Cluster, jobs: JobStore
) -> None:
    """An event stream lasts as long as its job, or for ever: a SIGTERMed API ends it after
    its graceful period (5 s) rather than hang, and the client can pick it up again."""
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": cluster.redis_url,
        "SCRIBES_API_KEYS": f"{ALICE_KEY}=alice",
        "SCRIBES_DATA_DIR": str(cluster.data_dir),
    }
    api = subprocess.Popen(
        [sys.executable, "-m", "api_shim.server", "--port", str(port), "--no-access-log"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and api.poll() is None, "the API did not start"
            time.sleep(0.2)
        job_id = held_job(jobs)
        headers = {"Authorization": f"Bearer {ALICE_KEY}"}
        with httpx.stream(
            "GET", f"{url}/v1/questions/{job_id}/events", headers=headers, timeout=60
        ) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("id: ")  # the stream is open and waiting
            stopped = time.monotonic()
            api.send_signal(signal.SIGTERM)
            # uvicorn shuts down, then dies of the signal it caught, as a process should.
            assert api.wait(15) in (0, -signal.SIGTERM)
            assert time.monotonic() - stopped < 15
    finally:
        if api.poll() is None:
            api.kill()
            api.wait()
