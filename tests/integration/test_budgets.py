"""Budgets: the settings, the policy over a real ledger, the generate task's check, and both
actions end to end on real clusters (one per action) with the real SDK and the fake model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
import redis

from rag.breaker import Breaker
from rag.budgets import Budgets, resets_at
from rag.caches.answers import AnswerCache
from rag.records.jobs import JobFinished, JobStatus, JobStore, Stage, new_job_id
from rag.records.usage import UsageLedger
from rag.settings import ConfigurationError, Settings
from rag.types import Answer, Passage, Usage
from rag.writers.anthropic import AnthropicWriter
from tasks.generate import write_answer
from tests.cluster import Cluster, running_cluster
from tests.fake_anthropic import FakeAnthropic
from tests.integration.conftest import ALICE_KEY, BOB_KEY, LLM_KEY
from tests.integration.test_question_path import MUSTARD, ingest, wait_job
from tests.metrics_scrape import scrape

MODEL = "claude-sonnet-4-6"
# The fake model's answers over the mustard note cost about $0.0007 each ($0.0016 when the
# prompt's cached prefix is first written): two or three fit in this before it is spent.
REJECT_BUDGET = Decimal("0.002")
# Less than one answer: the first question spends it.
DEGRADE_BUDGET = Decimal("0.0005")


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def spend(ledger: UsageLedger, tenant: str, dollars: str, when: float) -> None:
    answer = Answer("paid", model=MODEL, usage=Usage(input_tokens=1, cost_usd=Decimal(dollars)))
    assert ledger.record(JobFinished(new_job_id(), tenant, "answered", "miss", 1, answer), at=when)


# The settings.


def test_tenant_budgets_override_the_global_limits(ledger_redis: redis.Redis) -> None:
    settings = Settings(
        SCRIBES_BUDGET_DAILY_USD="1",
        SCRIBES_BUDGET_MONTHLY_USD="10",
        SCRIBES_TENANT_BUDGETS='{"alice": {"daily_usd": 0.1}, "bob": {"monthly_usd": null}}',
    )
    settings.check()
    budgets = Budgets(settings, UsageLedger(ledger_redis))
    # JSON numbers are read as decimals: 0.1 is a tenth of a dollar, not a double near it.
    assert budgets.budget_for("alice").limits() == {
        "daily": Decimal("0.1"),
        "monthly": Decimal(10),
    }
    assert budgets.budget_for("bob").limits() == {"daily": Decimal(1)}
    assert budgets.budget_for("carol").limits() == {"daily": Decimal(1), "monthly": Decimal(10)}
    assert Budgets(Settings(), UsageLedger(ledger_redis)).budget_for("alice").limits() == {}


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        '["alice"]',
        '{"alice": 5}',
        '{"alice": {"daily": "5"}}',
        '{"alice": {"daily_usd": "0"}}',
        '{"alice": {"daily_usd": "-1"}}',
        '{"alice": {"daily_usd": "lots"}}',
        '{"alice": {"daily_usd": "NaN"}}',
        '{"alice": {"daily_usd": true}}',
        '{"no such tenant!": {"daily_usd": "1"}}',
    ],
)
def test_a_bad_tenant_budget_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="SCRIBES_TENANT_BUDGETS"):
        Settings(SCRIBES_TENANT_BUDGETS=raw).check()


@pytest.mark.parametrize(
    "env",
    [
        {"SCRIBES_BUDGET_DAILY_USD": "0"},
        {"SCRIBES_BUDGET_MONTHLY_USD": "-5"},
        {"SCRIBES_BUDGET_DAILY_USD": "a lot"},
        {"SCRIBES_BUDGET_ACTION": "shrug"},
    ],
)
def test_bad_global_budget_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(pydantic.ValidationError, match=next(iter(env))):
        Settings(**env)  # type: ignore[arg-type]


def test_budgets_reset_at_utc_midnight_and_on_the_first_of_the_month() -> None:
    assert resets_at("daily", at("2026-03-14T12:30:00")).isoformat() == "2026-03-15T00:00:00+00:00"
    assert resets_at("daily", at("2026-03-15T00:00:00")).isoformat() == "2026-03-16T00:00:00+00:00"
    assert resets_at("monthly", at("2026-03-14T12:30:00")) == datetime(2026, 4, 1, tzinfo=UTC)
    assert resets_at("monthly", at("2026-12-31T23:59:59")) == datetime(2027, 1, 1, tzinfo=UTC)


# The policy over a real ledger.


def test_a_budget_is_spent_once_the_ledger_reaches_it_and_resets(ledger_redis: redis.Redis) -> None:
    ledger = UsageLedger(ledger_redis)
    clock = Clock(at("2026-03-31T10:00:00"))
    settings = Settings(SCRIBES_BUDGET_DAILY_USD="0.01", SCRIBES_BUDGET_MONTHLY_USD="0.015")
    budgets = Budgets(settings, ledger, clock=clock)

    spend(ledger, "alice", "0.004", clock.now)
    spend(ledger, "alice", "0.004", clock.now)
    daily, monthly = budgets.states("alice")
    assert budgets.exceeded("alice") is None
    assert daily.remaining_usd == Decimal("0.002") and monthly.remaining_usd == Decimal("0.007")
    spend(ledger, "alice", "0.002", clock.now)  # exactly the daily limit: spent
    spent = budgets.exceeded("alice")
    assert spent is not None and spent.period == "daily" and spent.remaining_usd == 0
    assert spent.resets_at_iso == "2026-04-01T00:00:00Z"
    assert spent.retry_after_s == 14 * 3600
    assert "resets at 2026-04-01T00:00:00Z" in spent.message
    assert budgets.exceeded("bob") is None  # another tenant's spend is not hers

    clock.now = at("2026-04-01T00:00:01")  # a new day, and a new month
    assert budgets.exceeded("alice") is None
    spend(ledger, "alice", "0.009", clock.now)
    spend(ledger, "alice", "0.007", clock.now)
    # Both are spent now; questions can go on only when the later of the two resets.
    spent = budgets.exceeded("alice")
    assert spent is not None and spent.period == "monthly"
    assert spent.resets_at_iso == "2026-05-01T00:00:00Z"


def test_only_tenants_with_a_budget_have_a_remaining_gauge(ledger_redis: redis.Redis) -> None:
    ledger = UsageLedger(ledger_redis)
    clock = Clock(at("2026-03-14T10:00:00"))
    overrides = '{"carol": {"daily_usd": null}, "dave": {"monthly_usd": "5"}}'
    for tenant, dollars in (("alice", "0.25"), ("carol", "0.5"), ("dave", "2")):
        spend(ledger, tenant, dollars, clock.now)
    spend(ledger, "erin", "0.125", at("2026-02-27T10:00:00"))  # not this month

    with_global = Settings(SCRIBES_BUDGET_DAILY_USD="1", SCRIBES_TENANT_BUDGETS=overrides)
    assert Budgets(with_global, ledger, clock=clock).remaining() == [
        ("alice", "daily", Decimal("0.75")),
        ("dave", "daily", Decimal(0)),
        ("dave", "monthly", Decimal(3)),
    ]
    only_overrides = Settings(SCRIBES_TENANT_BUDGETS=overrides)
    assert Budgets(only_overrides, ledger, clock=clock).remaining() == [
        ("dave", "monthly", Decimal(3))
    ]


# The generate task's check, called as the generate pool calls it.


def passages_job(jobs: JobStore, question: str) -> str:
    job_id = new_job_id()
    jobs.create(
        job_id=job_id,
        tenant="alice",
        question=question,
        top_k=3,
        corpus_version=0,
        answer_cache_key=f"scribes:answer:alice:{job_id}",
    )
    passage = Passage(1, "c1", "mustard", "Mustard seed", MUSTARD, 0.8)
    assert jobs.finish_stage(job_id, Stage.RETRIEVE, passages=[passage])
    return job_id


@pytest.fixture
def writer(fake_llm: FakeAnthropic) -> Iterator[AnthropicWriter]:
    with AnthropicWriter(
        api_key=LLM_KEY,
        model=MODEL,
        base_url=fake_llm.base_url,
        timeout_s=10,
        max_output_tokens=200,
        context_max_tokens=1000,
        count_tokens=lambda text: len(text.split()),
    ) as opened:
        yield opened


@pytest.mark.parametrize("action", ["reject", "degrade"])
def test_generate_checks_the_budget_before_each_model_call(
    ledger_redis: redis.Redis, fake_llm: FakeAnthropic, writer: AnthropicWriter, action: str
) -> None:
    ledger = UsageLedger(ledger_redis)

    def finished(event: JobFinished) -> None:
        ledger.record(event)

    jobs = JobStore(ledger_redis, ttl_s=600, on_finish=finished)
    answers = AnswerCache(ledger_redis, ttl_s=600)
    settings = Settings(SCRIBES_BUDGET_DAILY_USD="0.000001", SCRIBES_BUDGET_ACTION=action)
    budgets = Budgets(settings, ledger)
    guard: dict[str, Any] = {
        "jobs": jobs,
        "writer": writer,
        "answers": answers,
        "breaker": Breaker(ledger_redis, "llm"),
        "budgets": budgets,
    }

    first = passages_job(jobs, "How many mustard seeds were in the jar?")
    calls = fake_llm.received
    assert write_answer(first, **guard)  # nothing spent yet: the model is called
    assert fake_llm.received == calls + 1
    paid = jobs.get(first)
    assert paid is not None and paid.answer is not None and paid.answer.usage.cost_usd
    assert budgets.exceeded("alice") is not None  # that one call spent it

    second = passages_job(jobs, "What did Pastor Miriam pass down the pews?")
    assert write_answer(second, **guard)
    assert fake_llm.received == calls + 1  # no call past a spent budget
    job = jobs.get(second)
    assert job is not None
    if action == "reject":
        assert job.status is JobStatus.FAILED and job.error is not None
        assert job.error.code == "budget_exceeded" and "resets at" in job.error.message
    else:
        assert job.status is JobStatus.SUCCEEDED and job.answer is not None
        assert job.answer.degraded and job.answer.model == "extractive"
        assert job.answer.usage == Usage() and "37 mustard seeds" in job.answer.text
        assert answers.get(job.answer_cache_key) is None  # never cached
    today = ledger.today("alice").totals
    assert today.cost_usd == paid.answer.usage.cost_usd  # the refused job cost nothing
    assert today.failed == (1 if action == "reject" else 0)
    assert today.degraded == (1 if action == "degrade" else 0)


# End to end, one cluster per action.


def budget_cluster(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    fake_llm: FakeAnthropic,
    database: int,
    env: dict[str, str],
) -> Iterator[Cluster]:
    data_dir: Path = tmp_path_factory.mktemp(f"budget{database}")
    url = redis_url.rsplit("/", 1)[0] + f"/{database}"
    redis.Redis.from_url(url).flushdb()
    env = {
        "REDIS_URL": url,
        "SCRIBES_API_KEYS": f"{ALICE_KEY}=alice,{BOB_KEY}=bob",
        "ANTHROPIC_API_KEY": LLM_KEY,
        "ANTHROPIC_BASE_URL": fake_llm.base_url,
        "SCRIBES_LLM_MODEL": MODEL,
        **env,
    }
    with running_cluster(data_dir, url, env) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def reject_cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, fake_llm: FakeAnthropic
) -> Iterator[Cluster]:
    env = {
        "SCRIBES_BUDGET_DAILY_USD": str(REJECT_BUDGET),
        "SCRIBES_BUDGET_ACTION": "reject",
        # Bob's override lifts the daily limit: no budget at all for him.
        "SCRIBES_TENANT_BUDGETS": '{"bob": {"daily_usd": null}}',
    }
    yield from budget_cluster(tmp_path_factory, redis_url, fake_llm, 6, env)


@pytest.fixture(scope="module")
def degrade_cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, fake_llm: FakeAnthropic
) -> Iterator[Cluster]:
    env = {"SCRIBES_BUDGET_DAILY_USD": str(DEGRADE_BUDGET), "SCRIBES_BUDGET_ACTION": "degrade"}
    yield from budget_cluster(tmp_path_factory, redis_url, fake_llm, 7, env)


def question(n: int) -> str:
    # Distinct questions, so that none is answered from the exact cache.
    return f"How many mustard seeds were in Pastor Miriam's jar, count {n}?"


def usage_once_counted(http: httpx.Client, questions: int) -> dict[str, Any]:
    """`/v1/usage` once the ledger has the job just polled: the worker adds it to the ledger
    a moment after the job's record says it finished."""
    deadline = time.monotonic() + 10
    while True:
        body: dict[str, Any] = http.get("/v1/usage").json()
        if body["totals"]["questions"] >= questions or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def next_midnight() -> str:
    return resets_at("daily", time.time()).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_reject_answers_until_the_budget_is_spent_then_402s_new_questions(
    reject_cluster: Cluster, fake_llm: FakeAnthropic
) -> None:
    with reject_cluster.client(ALICE_KEY) as alice:
        ingest(alice, "mustard", "Mustard seed", MUSTARD)
        spent, answered = Decimal(0), 0
        for n in range(12):
            response = alice.post("/v1/questions", json={"question": question(n)})
            if response.status_code != 202:
                break
            assert spent < REJECT_BUDGET  # admitted only while the budget was not spent
            job = wait_job(alice, response.json()["id"])
            assert job["status"] == "succeeded" and job["model"] == MODEL, job
            spent += Decimal(str(job["usage"]["cost_usd"]))
            answered += 1
            usage = usage_once_counted(alice, answered)
            assert Decimal(usage["totals"]["cost_usd"]) == spent
        calls = fake_llm.received
        cached = alice.post("/v1/questions", json={"question": question(0)})
        calls_over_budget = fake_llm.received - calls
        usage = alice.get("/v1/usage").json()
        metrics = scrape(f"{reject_cluster.api_url}/metrics")
    with reject_cluster.client(BOB_KEY) as bob:
        ingest(bob, "mustard", "Mustard seed", MUSTARD)
        bobs = bob.post("/v1/questions", json={"question": question(0)})
        bobs_job = wait_job(bob, bobs.json()["id"]) if bobs.status_code == 202 else bobs.json()
        bobs_usage = bob.get("/v1/usage").json()

    assert answered >= 2 and spent >= REJECT_BUDGET
    assert response.status_code == 402, response.text
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded" and error["period"] == "daily"
    assert error["resets_at"] == next_midnight() and next_midnight() in error["message"]
    assert 0 < int(response.headers["retry-after"]) <= 86_400
    # A cached answer is still served over budget, and costs nothing.
    assert cached.status_code == 200 and cached.json()["cached"] == "exact"
    assert calls_over_budget == 0
    daily = usage["budget"]["daily"]
    assert usage["budget"]["action"] == "reject" and "monthly" not in usage["budget"]
    assert daily["exceeded"] is True and daily["remaining_usd"] == "0.000000000"
    assert Decimal(daily["spent_usd"]) == spent and Decimal(daily["limit_usd"]) == REJECT_BUDGET
    assert usage["totals"]["questions"] == answered + 1
    assert usage["totals"]["cache_hits"]["exact"] == 1
    # The gauge: alice's budget is spent; bob, whose override lifts it, has no series.
    assert metrics.series("scribes_budget_remaining_usd") == [
        {"tenant": "alice", "period": "daily"}
    ]
    assert metrics.value("scribes_budget_remaining_usd", {"tenant": "alice"}) == 0
    # Another tenant's spend is not his: bob is answered by the model as before.
    assert bobs.status_code == 202 and bobs_job["status"] == "succeeded"
    assert bobs_job["model"] == MODEL and bobs_usage["budget"] is None


def test_degrade_answers_from_the_notes_for_free_once_the_budget_is_spent(
    degrade_cluster: Cluster, fake_llm: FakeAnthropic
) -> None:
    with degrade_cluster.client(ALICE_KEY) as alice:
        ingest(alice, "mustard", "Mustard seed", MUSTARD)
        first = alice.post("/v1/questions", json={"question": question(0)})
        paid = wait_job(alice, first.json()["id"])
        spent = usage_once_counted(alice, 1)
        calls = fake_llm.received
        later = alice.post("/v1/questions", json={"question": question(1)})
        degraded = wait_job(alice, later.json()["id"])
        again = alice.post("/v1/questions", json={"question": question(1)})
        again_job = wait_job(alice, again.json()["id"]) if again.status_code == 202 else {}
        cached = alice.post("/v1/questions", json={"question": question(0)})
        usage = usage_once_counted(alice, 4)

    assert paid["status"] == "succeeded" and paid["model"] == MODEL and not paid["degraded"]
    assert spent["budget"]["daily"]["exceeded"] is True
    # Over budget, a new question is still accepted, and answered without the model.
    assert later.status_code == 202
    assert degraded["status"] == "succeeded" and degraded["degraded"] is True
    assert degraded["model"] == "extractive" and "37 mustard seeds" in degraded["answer"]
    assert degraded["usage"]["cost_usd"] == 0.0
    # A degraded answer is never cached: the same question is asked anew (and degraded again).
    assert again.status_code == 202 and again_job["degraded"] is True
    # The model's earlier answer is still served from the cache.
    assert cached.status_code == 200 and cached.json()["cached"] == "exact"
    assert fake_llm.received == calls
    totals = usage["totals"]
    assert totals["cost_usd"] == spent["totals"]["cost_usd"]  # it cost nothing more
    assert totals["degraded"] == 2 and totals["questions"] == 4
    assert usage["by_model"]["extractive"]["answers"] == 2
    assert usage["by_model"]["extractive"]["cost_usd"] == "0.000000000"
