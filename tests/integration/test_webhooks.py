"""Webhooks on a real cluster: the finished job POSTed to a receiver on loopback, which
checks the signature as any receiver would (`rag.webhooks.verify_signature`); retries while
it fails; a refusal; failed, cancelled and cached jobs delivered too; the outbox's sweep
delivering a job whose task was never sent."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from rag.records.jobs import JobStore
from rag.webhooks import InvalidSignature, verify_signature
from tests.cluster import Cluster, running_cluster
from tests.fake_anthropic import FakeAnthropic
from tests.integration.conftest import ALICE_KEY, LLM_KEY
from tests.integration.test_question_path import MUSTARD, ingest

SECRET = "whsec-test-5f1d0c2a9b8e7d6c"
BACKOFF_S = 0.3
# Long enough that a delivery the API sends at once can never be taken for a resend.
RESEND_AFTER_S = 8.0


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    verified: bool
    answered: int


@dataclass
class Receiver:
    """An HTTP server that checks each delivery's signature and answers as it is told: the
    status for each request in turn from `script`, then 200."""

    server: ThreadingHTTPServer
    deliveries: list[Delivery] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/scribes"

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        try:
            verify_signature(SECRET, headers.get("Scribes-Signature"), body)
            verified = True
        except InvalidSignature:
            verified = False
        with self.lock:
            status = self.script.pop(0) if self.script else 200
            if not verified:
                status = 400
            self.deliveries.append(Delivery(headers, body, verified, status))
        return status

    def of_job(self, job_id: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.headers.get("Scribes-Event-Id") == job_id]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = holder[0].answer(dict(self.headers.items()), body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(Receiver(server))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def webhook_redis_url(redis_url: str) -> str:
    """Database 7 of the session's Redis: this module's cluster, apart from the shared one."""
    url = redis_url.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="module")
def hooked(session_dir: Path, webhook_redis_url: str, fake_llm: FakeAnthropic) -> Iterator[Cluster]:
    """A cluster with webhooks on, loopback allowed by name, and a short backoff."""
    env = {
        "SCRIBES_API_KEYS": f"{ALICE_KEY}=alice",
        "ANTHROPIC_API_KEY": LLM_KEY,
        "ANTHROPIC_BASE_URL": fake_llm.base_url,
        "SCRIBES_LLM_MAX_RETRIES": "0",
        "SCRIBES_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "SCRIBES_WEBHOOK_SECRET": SECRET,
        "SCRIBES_WEBHOOK_BACKOFF_S": str(BACKOFF_S),
        "SCRIBES_WEBHOOK_MAX_ATTEMPTS": "4",
        "SCRIBES_WEBHOOK_TIMEOUT_S": "2",
        "SCRIBES_WEBHOOK_RESEND_AFTER_S": str(RESEND_AFTER_S),
    }
    with running_cluster(session_dir / "webhooks", webhook_redis_url, env) as cluster:
        with cluster.client(ALICE_KEY) as alice:
            ingest(alice, "mustard", "Mustard seed", MUSTARD)
        yield cluster


@pytest.fixture
def alice(hooked: Cluster) -> Iterator[httpx.Client]:
    with hooked.client(ALICE_KEY) as client:
        yield client


def eventually(probe: Callable[[], Any], timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {probe()}")


def submit(alice: httpx.Client, receiver: Receiver, question: str | None = None) -> str:
    question = question or f"How many mustard seeds were in the jar? ({uuid.uuid4().hex[:8]})"
    response = alice.post(
        "/v1/questions", json={"question": question, "callback_url": receiver.url}
    )
    assert response.status_code in (200, 202), response.text
    job_id: str = response.json()["id"]
    return job_id


def settled_webhook(alice: httpx.Client, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    """The job once its webhook is delivered or given up."""

    def probe() -> dict[str, Any] | None:
        job: dict[str, Any] = alice.get(f"/v1/questions/{job_id}").json()
        return job if job["webhook"] and job["webhook"]["state"] != "pending" else None

    found: dict[str, Any] = eventually(probe, timeout_s)
    return found


def test_the_finished_job_is_posted_signed_and_the_job_says_so(
    alice: httpx.Client, receiver: Receiver
) -> None:
    job_id = submit(alice, receiver)
    job = settled_webhook(alice, job_id)
    assert job["status"] == "succeeded"
    [delivery] = receiver.of_job(job_id)
    assert delivery.verified and delivery.answered == 200
    assert delivery.headers["Scribes-Delivery-Attempt"] == "1"
    assert delivery.headers["Content-Type"] == "application/json"
    # The body is the job as a poll shows it, less its webhook field.
    sent = json.loads(delivery.body)
    assert sent == {name: value for name, value in job.items() if name != "webhook"}
    assert "mustard seed" in sent["answer"]
    webhook = job["webhook"]
    assert webhook["url"] == receiver.url and webhook["state"] == "delivered"
    [attempt] = webhook["attempts"]
    assert attempt["attempt"] == 1 and attempt["status"] == 200 and attempt["error"] is None


def test_a_failing_receiver_is_retried_with_backoff_until_it_takes_it(
    alice: httpx.Client, receiver: Receiver
) -> None:
    receiver.script[:] = [503, 503]
    job_id = submit(alice, receiver)
    job = settled_webhook(alice, job_id)
    attempts = job["webhook"]["attempts"]
    assert job["webhook"]["state"] == "delivered"
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, 503), (2, 503), (3, 200)]
    assert [d.answered for d in receiver.of_job(job_id)] == [503, 503, 200]
    # Every attempt carries the same event, body and a valid signature.
    deliveries = receiver.of_job(job_id)
    assert all(d.verified for d in deliveries) and len({d.body for d in deliveries}) == 1
    gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(attempts)]
    # base × 2^(n-1) ±20 %, each gap also holding the attempt before it.
    assert gaps[0] >= 0.8 * BACKOFF_S and gaps[1] >= 0.8 * 2 * BACKOFF_S


def test_a_receiver_that_refuses_is_not_tried_again_and_a_dead_one_is_given_up(
    alice: httpx.Client, receiver: Receiver
) -> None:
    receiver.script[:] = [410]
    refused = submit(alice, receiver)
    job = settled_webhook(alice, refused)
    assert job["webhook"]["state"] == "failed"
    assert [a["status"] for a in job["webhook"]["attempts"]] == [410]
    # Four attempts (this cluster's limit) all failing: given up after the fourth.
    receiver.script[:] = [500, 502, 503, 504]
    failing = submit(alice, receiver)
    job = settled_webhook(alice, failing)
    assert job["webhook"]["state"] == "failed"
    assert [a["status"] for a in job["webhook"]["attempts"]] == [500, 502, 503, 504]
    time.sleep(4 * BACKOFF_S)
    assert len(receiver.of_job(refused)) == 1 and len(receiver.of_job(failing)) == 4


def test_a_failed_job_and_an_exact_cache_hit_are_delivered_too(
    alice: httpx.Client, receiver: Receiver, fake_llm: FakeAnthropic
) -> None:
    fake_llm.fail_next(400)
    failed = submit(alice, receiver)
    job = settled_webhook(alice, failed)
    assert job["status"] == "failed" and job["error"]["code"] == "llm_rejected"
    [delivery] = receiver.of_job(failed)
    assert delivery.verified and json.loads(delivery.body)["error"]["code"] == "llm_rejected"
    # Asked twice: the second is answered from the exact cache at once, and delivered.
    question = f"How many mustard seeds did Pastor Miriam bring? ({uuid.uuid4().hex[:8]})"
    settled_webhook(alice, submit(alice, receiver, question))
    response = alice.post(
        "/v1/questions", json={"question": question, "callback_url": receiver.url}
    )
    assert response.status_code == 200 and response.json()["cached"] == "exact"
    assert response.json()["webhook"]["state"] == "pending"
    hit = settled_webhook(alice, response.json()["id"])
    assert hit["webhook"]["state"] == "delivered"
    assert json.loads(receiver.of_job(hit["id"])[0].body)["cached"] == "exact"


def test_a_job_finished_where_no_task_could_be_sent_is_delivered_by_the_sweep(
    hooked: Cluster, alice: httpx.Client, receiver: Receiver
) -> None:
    """A job cancelled by a process that then sends nothing (as one that dies right after
    the write): the outbox entry the write made is all there is, and the sweep finds it."""
    client = redis.Redis.from_url(hooked.redis_url, decode_responses=True)
    jobs = JobStore(client, ttl_s=600)
    job_id = uuid.uuid4().hex
    jobs.create(
        job_id=job_id,
        tenant="alice",
        question="Never asked of the pools?",
        top_k=3,
        corpus_version=0,
        answer_cache_key="",
        callback_url=receiver.url,
    )
    jobs.forget(job_id)  # not for the stall sweep to enqueue: no pool ever sees this job
    assert jobs.cancel(job_id)
    cancelled_at = time.monotonic()
    job = settled_webhook(alice, job_id, timeout_s=RESEND_AFTER_S + 20)
    # Overdue by RESEND_AFTER_S, then found within one heartbeat (5 s).
    assert time.monotonic() - cancelled_at >= RESEND_AFTER_S
    assert job["status"] == "cancelled" and job["webhook"]["state"] == "delivered"
    [delivery] = receiver.of_job(job_id)
    assert delivery.verified and json.loads(delivery.body)["status"] == "cancelled"


@pytest.mark.parametrize(
    "callback_url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:8000/v1/admin/reindex",
        "http://10.0.0.5/hook",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_FLUSHALL",
        "http://user:pw@127.0.0.1/hook",
    ],
)
def test_a_callback_url_not_allowed_is_a_422_and_nothing_is_written(
    hooked: Cluster, alice: httpx.Client, callback_url: str
) -> None:
    client = redis.Redis.from_url(hooked.redis_url)
    before = len(list(client.scan_iter("scribes:job:*", count=1000)))
    question = f"How many mustard seeds were in the jar? ({uuid.uuid4().hex[:8]})"
    response = alice.post(
        "/v1/questions", json={"question": question, "callback_url": callback_url}
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and "callback_url" in error["message"]
    assert len(list(client.scan_iter("scribes:job:*", count=1000))) == before


def test_a_cancel_through_the_api_is_delivered_at_once(
    hooked: Cluster, alice: httpx.Client, receiver: Receiver
) -> None:
    client = redis.Redis.from_url(hooked.redis_url, decode_responses=True)
    jobs = JobStore(client, ttl_s=600)
    job_id = uuid.uuid4().hex
    jobs.create(
        job_id=job_id,
        tenant="alice",
        question="Cancelled before any pool saw it?",
        top_k=3,
        corpus_version=0,
        answer_cache_key="",
        callback_url=receiver.url,
    )
    jobs.forget(job_id)
    began = time.monotonic()
    assert alice.delete(f"/v1/questions/{job_id}").status_code == 200
    job = settled_webhook(alice, job_id)
    # Sent by the API process as it cancelled, not left for the sweep.
    assert time.monotonic() - began < RESEND_AFTER_S
    assert job["webhook"]["state"] == "delivered"
    assert json.loads(receiver.of_job(job_id)[0].body)["status"] == "cancelled"


def test_a_batch_checks_every_callback_and_delivers_each_job(
    alice: httpx.Client, receiver: Receiver
) -> None:
    tag = uuid.uuid4().hex[:8]
    questions = [
        f"Where did Pastor Miriam preach on the mustard seed? ({tag}-{n})" for n in range(2)
    ]
    refused = alice.post(
        "/v1/questions:batch",
        json={
            "questions": [
                {"question": questions[0], "callback_url": receiver.url},
                {"question": questions[1], "callback_url": "http://10.1.2.3/hook"},
            ]
        },
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["message"].startswith("questions[1]: callback_url")
    accepted = alice.post(
        "/v1/questions:batch",
        json={"questions": [{"question": q, "callback_url": receiver.url} for q in questions]},
    )
    assert accepted.status_code == 202, accepted.text
    for job in accepted.json()["jobs"]:
        assert settled_webhook(alice, job["id"])["webhook"]["state"] == "delivered"
        assert len(receiver.of_job(job["id"])) == 1
