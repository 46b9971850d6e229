"""The usage ledger against a real Redis, and `GET /v1/usage` on the session cluster."""

from __future__ import annotations

import threading
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis

from rag.records.jobs import JobFinished, JobStore, Stage, new_job_id
from rag.records.usage import DAY_TTL_S, UsageLedger
from rag.types import Answer, Failure, Usage
from tests.cluster import Cluster
from tests.fake_anthropic import FakeAnthropic
from tests.integration.conftest import ALICE_KEY, BOB_KEY
from tests.integration.test_question_path import MUSTARD, ask, ingest, unique

MODEL = "claude-sonnet-4-6"


def answered(
    tenant: str, cost: str | None, *, model: str = MODEL, tokens: int = 0, cache: str = "miss"
) -> JobFinished:
    usage = Usage(
        input_tokens=tokens,
        output_tokens=2 * tokens,
        cache_read_input_tokens=3 * tokens,
        cache_creation_input_tokens=4 * tokens,
        cost_usd=None if cost is None else Decimal(cost),
    )
    answer = Answer("an answer", model=model, usage=usage)
    return JobFinished(new_job_id(), tenant, "answered", cache, 0.5, answer)


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_ten_thousand_small_costs_add_up_exactly(ledger_redis: redis.Redis) -> None:
    ledger = UsageLedger(ledger_redis)
    when = at("2026-03-14T12:00:00")
    for _ in range(10_000):
        assert ledger.record(answered("alice", "0.000003", tokens=1), at=when)

    # What doubles would have made of it: the reason the script adds decimal strings.
    assert sum(0.000003 for _ in range(10_000)) != 0.03
    assert ledger_redis.hget("scribes:usage:alice:2026-03-14", "cost") == "0.030000000"
    assert ledger_redis.hget("scribes:usage:alice:2026-03-14", f"cost:{MODEL}") == "0.030000000"
    assert ledger_redis.get("scribes:usage:alice:month:2026-03") == "0.030000000"
    day = ledger.day("alice", date(2026, 3, 14))
    assert day.totals.cost_usd == Decimal("0.03") and day.totals.questions == 10_000
    assert day.totals.tokens == {
        "input": 10_000,
        "output": 20_000,
        "cache_read": 30_000,
        "cache_write": 40_000,
    }
    assert 0 < ledger_redis.ttl("scribes:usage:alice:2026-03-14") <= DAY_TTL_S


def test_dollars_stay_exact_past_what_a_double_can_hold(ledger_redis: redis.Redis) -> None:
    ledger = UsageLedger(ledger_redis)
    when = at("2026-03-14T12:00:00")
    # 2^53 nano-dollars is about nine million dollars; a decimal string has no such limit.
    ledger.record(answered("alice", "99999999999999.999999999"), at=when)
    ledger.record(answered("alice", "0.000000001"), at=when)
    ledger.record(answered("alice", "12345678.00000001"), at=when)
    assert (
        ledger_redis.hget("scribes:usage:alice:2026-03-14", "cost") == "100000012345678.000000010"
    )


def test_threads_adding_at_once_lose_nothing(ledger_redis: redis.Redis) -> None:
    ledger = UsageLedger(ledger_redis)
    when = at("2026-03-14T12:00:00")
    threads, each = 8, 250
    costs = [f"0.{n:08d}" for n in range(1, each + 1)]  # a different cost every time
    start = threading.Barrier(threads)

    def add() -> None:
        start.wait()
        for cost in costs:
            ledger.record(answered("alice", cost, tokens=7), at=when)

    workers = [threading.Thread(target=add) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    expected = threads * sum(Decimal(cost) for cost in costs)
    day = ledger.day("alice", date(2026, 3, 14))
    assert day.totals.questions == threads * each
    assert day.totals.cost_usd == expected
    assert day.models[MODEL].answers == threads * each
    assert day.models[MODEL].tokens["input"] == threads * each * 7
    assert ledger.spent(["alice"], at=when) == {"alice": (expected, expected)}


def test_days_and_months_roll_over_at_utc_midnight(ledger_redis: redis.Redis) -> None:
    ledger = UsageLedger(ledger_redis)
    last_of_year, first_of_year = at("2025-12-31T23:59:59.900"), at("2026-01-01T00:00:00")
    ledger.record(answered("alice", "0.5"), at=last_of_year)
    ledger.record(answered("alice", "0.25"), at=first_of_year)
    ledger.record(answered("bob", "1"), at=first_of_year)

    assert ledger.spent(["alice"], at=last_of_year) == {"alice": (Decimal("0.5"), Decimal("0.5"))}
    assert ledger.spent(["alice", "bob"], at=first_of_year) == {
        "alice": (Decimal("0.25"), Decimal("0.25")),
        "bob": (Decimal(1), Decimal(1)),
    }
    report = ledger.report("alice", date(2025, 12, 30), date(2026, 1, 2))
    assert [(d.day.isoformat(), d.totals.cost_usd) for d in report.days] == [
        ("2025-12-30", 0),
        ("2025-12-31", Decimal("0.5")),
        ("2026-01-01", Decimal("0.25")),
        ("2026-01-02", 0),
    ]
    assert report.totals.cost_usd == Decimal("0.75") and report.totals.questions == 2
    assert ledger.tenants(at=last_of_year) == {"alice"}
    assert ledger.tenants(at=first_of_year) == {"alice", "bob"}


def test_cache_hits_failures_and_models_are_counted_apart(ledger_redis: redis.Redis) -> None:
    ledger = UsageLedger(ledger_redis)
    when = at("2026-03-14T12:00:00")
    bedrock = "anthropic.claude-sonnet-4-6-v1:0"  # a model name with a colon
    ledger.record(answered("alice", "0.002", tokens=10), at=when)
    ledger.record(answered("alice", "0.001", model=bedrock, tokens=5), at=when)
    ledger.record(answered("alice", None, model="claude-new", tokens=1), at=when)
    # A cached answer's usage is zero (its original job paid), but its question counts.
    ledger.record(answered("alice", "0", tokens=0, cache="exact"), at=when)
    failure = Failure("llm_rejected", "no")
    ledger.record(JobFinished(new_job_id(), "alice", "failed", "miss", 1, error=failure), at=when)
    no_context = Answer("not in your notes", no_context=True)
    ledger.record(JobFinished(new_job_id(), "alice", "no_context", "miss", 1, no_context), at=when)

    report = ledger.report("alice", date(2026, 3, 14), date(2026, 3, 14)).to_json()
    totals = report["totals"]
    assert totals["questions"] == 6 and totals["cache_hits"] == {"exact": 1}
    assert totals["failed"] == 1 and totals["no_context"] == 1
    assert totals["cost_usd"] == "0.003000000" and totals["unpriced_answers"] == 1
    assert totals["tokens"] == {"input": 16, "output": 32, "cache_read": 48, "cache_write": 64}
    by_model = report["by_model"]
    assert set(by_model) == {MODEL, bedrock, "claude-new"}
    assert by_model[bedrock] == {
        "answers": 1,
        "tokens": {"input": 5, "output": 10, "cache_read": 15, "cache_write": 20},
        "cost_usd": "0.001000000",
        "unpriced_answers": 0,
    }
    assert by_model["claude-new"]["unpriced_answers"] == 1
    assert by_model["claude-new"]["cost_usd"] == "0.000000000"


def test_a_job_enters_the_ledger_once(ledger_redis: redis.Redis) -> None:
    ledger = UsageLedger(ledger_redis)
    event = answered("alice", "0.002", tokens=10)
    assert ledger.record(event)
    assert not ledger.record(event)  # the same finish reported again adds nothing
    today = ledger.today("alice")
    assert today.totals.questions == 1 and today.totals.cost_usd == Decimal("0.002")


def test_finished_jobs_reach_the_ledger_through_the_job_store(ledger_redis: redis.Redis) -> None:
    ledger = UsageLedger(ledger_redis)

    def finished(event: JobFinished) -> None:
        ledger.record(event)

    jobs = JobStore(ledger_redis, ttl_s=60, on_finish=finished)
    job_id = new_job_id()
    jobs.create(
        job_id=job_id,
        tenant="alice",
        question="q?",
        top_k=3,
        corpus_version=0,
        answer_cache_key="k",
    )
    usage = Usage(input_tokens=100, output_tokens=20, cost_usd=Decimal("0.00060000"))
    answer = Answer("yes", model=MODEL, usage=usage)
    assert jobs.succeed(job_id, answer, last_stage=Stage.GENERATE)
    assert not jobs.succeed(job_id, answer, last_stage=Stage.GENERATE)  # a duplicate delivery
    jobs.create_finished(job_id=new_job_id(), tenant="alice", question="q?", top_k=3, answer=answer)

    today = ledger.today("alice").totals
    assert today.questions == 2 and today.cache_hits == {"exact": 1}
    assert today.cost_usd == Decimal("0.0006") and today.tokens["input"] == 100


# Through the API, on the session cluster.


def usage_of(http: httpx.Client, **params: str) -> dict[str, Any]:
    response = http.get("/v1/usage", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for_questions(http: httpx.Client, questions: int) -> dict[str, Any]:
    """Today's usage once the ledger holds `questions`: a worker adds a job just after the
    job's record says it finished, so a poll can be a moment ahead of the ledger."""
    deadline = time.monotonic() + 10
    while True:
        body = usage_of(http)
        if body["totals"]["questions"] >= questions or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def tokens_of(job: dict[str, Any]) -> dict[str, int]:
    usage = job["usage"]
    return {
        "input": usage["input_tokens"],
        "output": usage["output_tokens"],
        "cache_read": usage["cache_read_input_tokens"],
        "cache_write": usage["cache_creation_input_tokens"],
    }


def test_usage_is_the_sum_of_the_tenants_jobs_and_only_hers(cluster: Cluster) -> None:
    with cluster.client(ALICE_KEY) as alice, cluster.client(BOB_KEY) as bob:
        ingest(alice, unique("mustard"), "The mustard seed", MUSTARD)
        alice_before, bob_before = usage_of(alice)["totals"], usage_of(bob)["totals"]
        tag = unique("jar")
        jobs = [
            ask(alice, f"How many mustard seeds were in the jar ({tag})?")[1],
            ask(alice, f"What did Pastor Miriam pass down the pews ({tag})?")[1],
        ]
        status, cached = ask(alice, f"how many mustard seeds were in the jar ({tag})")
        after = wait_for_questions(alice, alice_before["questions"] + 3)
        bob_after = usage_of(bob)
        # Naming another tenant does nothing: the key decides whose usage this is.
        sneaky = alice.get("/v1/usage", params={"tenant": "bob"}).json()

    assert status == 200 and cached["cached"] == "exact"
    assert all(job["status"] == "succeeded" and job["model"] == MODEL for job in jobs), jobs
    totals = after["totals"]
    assert after["tenant"] == "alice" and after["from"] == after["to"] == today()
    assert totals["questions"] - alice_before["questions"] == 3
    assert totals["cache_hits"]["exact"] - alice_before["cache_hits"]["exact"] == 1
    for kind in ("input", "output", "cache_read", "cache_write"):
        spent = sum(tokens_of(job)[kind] for job in jobs)
        assert totals["tokens"][kind] - alice_before["tokens"][kind] == spent, kind
    # Jobs show dollars as JSON numbers; the ledger's exact string is their exact sum.
    cost = sum(Decimal(str(job["usage"]["cost_usd"])) for job in jobs)
    assert cost > 0
    assert Decimal(totals["cost_usd"]) - Decimal(alice_before["cost_usd"]) == cost
    assert isinstance(totals["cost_usd"], str) and "." in totals["cost_usd"]
    assert Decimal(after["by_model"][MODEL]["cost_usd"]) >= cost
    assert after["by_day"] == [{"date": today(), **totals}]
    assert after["budget"] is None  # the session cluster sets no budget

    assert bob_after["tenant"] == "bob" and bob_after["totals"] == bob_before
    assert sneaky["tenant"] == "alice" and sneaky["totals"] == totals


def test_a_model_call_broken_off_part_way_is_counted_beside_its_retry(
    cluster: Cluster, fake_llm: FakeAnthropic
) -> None:
    # The model read the prompt, wrote two pieces and broke off (overloaded). Anthropic bills
    # what it read and wrote, so the ledger counts that call too, not only the retry.
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, unique("mustard"), "The mustard seed", MUSTARD)
        before = usage_of(alice)["totals"]
        calls = len(fake_llm.calls)
        fake_llm.break_next_stream(after_pieces=2)
        _, job = ask(alice, f"How many mustard seeds were in the jar ({unique('broken')})?")
        after = wait_for_questions(alice, before["questions"] + 1)["totals"]
    broken, answered = fake_llm.wait_calls(calls + 2)[calls:]

    assert job["status"] == "succeeded", job
    assert broken.streamed and broken.pieces_sent == 2 and not broken.completed
    assert answered.completed
    assert tokens_of(job)["input"] == answered.response["usage"]["input_tokens"]
    assert after["questions"] - before["questions"] == 1
    for kind, field in (("input", "input_tokens"), ("cache_read", "cache_read_input_tokens")):
        both = broken.response["usage"][field] + answered.response["usage"][field]
        assert after["tokens"][kind] - before["tokens"][kind] == both, kind
    # The broken call's output is the two pieces' estimate: more than the answer's alone.
    assert after["tokens"]["output"] - before["tokens"]["output"] > tokens_of(job)["output"]
    spent = Decimal(after["cost_usd"]) - Decimal(before["cost_usd"])
    assert spent > Decimal(str(job["usage"]["cost_usd"])) > 0


def test_status_shows_the_tenants_questions_and_dollars_today(cluster: Cluster) -> None:
    with cluster.client(ALICE_KEY) as alice:
        usage = alice.get("/v1/status").json()["usage"]
        totals = usage_of(alice)["totals"]
    assert usage == {
        "date": today(),
        "questions": totals["questions"],
        "cost_usd": totals["cost_usd"],
    }


def test_a_range_of_days_reports_every_day(cluster: Cluster) -> None:
    with cluster.client(BOB_KEY) as bob:
        body = usage_of(bob, **{"from": "2026-02-27", "to": "2026-03-02"})
    assert [day["date"] for day in body["by_day"]] == [
        "2026-02-27",
        "2026-02-28",
        "2026-03-01",
        "2026-03-02",
    ]
    assert body["from"] == "2026-02-27" and body["to"] == "2026-03-02"


@pytest.mark.parametrize(
    "params",
    [
        {"from": "2026-13-01"},
        {"from": "2026-02-30", "to": "2026-03-01"},
        {"from": "yesterday"},
        {"from": "20260101", "to": "20260102"},
        {"to": "2026-03-01T00:00:00"},
        {"from": "2026-03-02", "to": "2026-03-01"},
        {"from": "2025-01-01", "to": "2026-02-05"},  # 401 days
    ],
)
def test_bad_dates_and_ranges_are_422s(cluster: Cluster, params: dict[str, str]) -> None:
    with cluster.client(ALICE_KEY) as alice:
        response = alice.get("/v1/usage", params=params)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["message"]


def test_usage_needs_a_key(cluster: Cluster) -> None:
    with cluster.client() as anonymous:
        response = anonymous.get("/v1/usage")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def today() -> str:
    return datetime.now(UTC).date().isoformat()
