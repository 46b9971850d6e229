"""The Python client and `scribes ask` against the live API: real pools, Redis, the SDK.

The tests of cancel, batches, reading many jobs, idempotent replays and the event stream
need those endpoints (issue 10, points 1, 2, 4, 5, 6) on the API they run against.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from click.testing import CliRunner

from scribes.cli import main
from scribes.client import (
    ApiError,
    AsyncScribes,
    Document,
    Job,
    JobEvent,
    Question,
    Scribes,
    StageEvent,
    TextEvent,
    Timeout,
)
from tests.cluster import Cluster
from tests.fake_anthropic import FakeAnthropic
from tests.integration.conftest import ALICE_KEY
from tests.integration.test_index_pace import paused

GARDEN = (
    "Deacon Ruth Okafor planted the church's herb garden in March. She set out exactly 14 "
    "rosemary bushes along the south wall, because rosemary stands for remembrance, and "
    "watered them from the blue rain barrel by the hall door."
)
QUESTION = "How many rosemary bushes did Deacon Ruth plant along the south wall?"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Scribes]:
    with Scribes(cluster.api_url, api_key=ALICE_KEY) as scribes:
        yield scribes


@pytest.fixture(scope="module")
def garden(cluster: Cluster) -> str:
    """A note of this module's own, indexed once through the client."""
    with Scribes(cluster.api_url, api_key=ALICE_KEY) as scribes:
        return indexed(scribes, unique("garden"), "The herb garden", GARDEN).id


def indexed(client: Scribes, document_id: str, title: str, text: str) -> Document:
    submitted = client.ingest(title, text, document_id=document_id, metadata={"by": "client"})
    assert (submitted.id, submitted.status) == (document_id, "queued")
    deadline = time.monotonic() + 60
    while (document := client.document(document_id)).status == "queued":
        assert time.monotonic() < deadline, document
        time.sleep(0.1)
    assert document.status == "indexed" and document.revision == submitted.revision, document
    assert document.title == title and document.chunks and document.chunks >= 1
    return document


def fresh(question: str) -> str:
    """The question with a tag that keeps it out of the exact cache of earlier runs."""
    return f"{question} ({uuid.uuid4().hex[:6]})"


def test_ask_returns_a_typed_answer_with_sources_usage_and_cost(
    client: Scribes, garden: str, fake_llm: FakeAnthropic
) -> None:
    calls = len(fake_llm.calls)
    job = client.ask(fresh(QUESTION), timeout_s=60)

    assert job.status == "succeeded" and job.stage == "done" and job.finished, job
    assert garden in {source.document_id for source in job.sources}
    source = next(s for s in job.sources if s.document_id == garden)
    assert "14 rosemary bushes" in source.text and f"[{source.number}]" in (job.answer or "")
    served = fake_llm.calls[calls]
    assert job.usage.input_tokens == served.response["usage"]["input_tokens"] > 0
    assert isinstance(job.usage.cost_usd, Decimal) and job.usage.cost_usd > 0
    assert job.model == "claude-sonnet-4-6" and job.cached is None
    assert {"embed", "retrieve", "generate", "total"} <= set(job.timings)
    # The same job read again, typed the same way.
    assert client.get(job.id) == job


def test_an_exact_cache_hit_returns_from_submit_finished(client: Scribes, garden: str) -> None:
    question = fresh("Which barrel watered the rosemary by the hall door?")
    first = client.ask(question, timeout_s=60)
    again = client.submit(question)
    assert first.cached is None and again.finished and again.cached == "exact"
    assert again.answer == first.answer and again.usage.cost_usd == 0
    assert client.ask(question, cache="bypass", timeout_s=60).cached is None


def test_wait_times_out_while_no_pool_takes_the_job_then_finishes_it(
    cluster: Cluster, client: Scribes, garden: str
) -> None:
    with paused(cluster, "embed"):
        job = client.submit(fresh(QUESTION))
        assert job.status == "queued" and not job.finished
        started = time.monotonic()
        with pytest.raises(Timeout) as caught:
            client.wait(job.id, timeout_s=1.5)
        assert 1.5 <= time.monotonic() - started < 10  # the wait ran out; no 60 s hang
        assert caught.value.job.id == job.id and caught.value.job.status == "queued"
    assert client.wait(job.id, timeout_s=60).succeeded


def test_usage_reports_the_tenant_in_decimal_dollars(client: Scribes, garden: str) -> None:
    client.ask(fresh(QUESTION), timeout_s=60)
    today = datetime.now(UTC).date()
    report = client.usage()
    assert report.tenant == "alice" and report.start == report.end == today
    assert report.totals.questions >= 1 and report.totals.cost_usd > 0
    assert isinstance(report.totals.cost_usd, Decimal)
    assert [day.day for day in report.by_day] == [today]
    assert report.by_model["claude-sonnet-4-6"].answers >= 1
    assert report.by_model["claude-sonnet-4-6"].tokens["input"] > 0
    with pytest.raises(ApiError) as caught:
        client.usage(today, today.replace(year=today.year - 2))
    assert caught.value.status == 422 and caught.value.code == "invalid_request"


def test_an_unknown_document_or_job_is_a_404_api_error(client: Scribes) -> None:
    for read in (lambda: client.document("no-such-note"), lambda: client.get("nosuchjob")):
        with pytest.raises(ApiError) as caught:
            read()
        assert (caught.value.status, caught.value.code) == (404, "not_found")


def test_the_async_client_asks_and_reads_on_the_live_api(cluster: Cluster, garden: str) -> None:
    async def run() -> tuple[Job, Job, Document]:
        async with AsyncScribes(cluster.api_url, api_key=ALICE_KEY) as client:
            job = await client.ask(fresh(QUESTION), timeout_s=60)
            return job, await client.get(job.id), await client.document(garden)

    job, again, document = asyncio.run(run())
    assert job.succeeded and garden in {s.document_id for s in job.sources}
    assert again == job and document.status == "indexed"


def test_scribes_ask_prints_the_answer_sources_and_cost(cluster: Cluster, garden: str) -> None:
    env = {"SCRIBES_API_KEY": ALICE_KEY, "SCRIBES_API_URL": cluster.api_url}
    for flags in ([], ["--stream"]):
        result = CliRunner().invoke(main, ["ask", fresh(QUESTION), *flags], env=env)
        assert result.exit_code == 0, result.output
        answer, _, rest = result.output.partition("\nSources:\n")
        assert "Deacon Ruth" in answer and "[1]" in answer, result.output
        assert answer.count("[1]") == 1  # printed once, streamed or not
        assert f"({garden}, score " in rest and rest.rstrip().endswith(")")
        assert " in / " in rest and " out tokens, $0.0" in rest


def test_scribes_ask_says_when_the_model_begins_its_answer_again(
    cluster: Cluster, garden: str, fake_llm: FakeAnthropic
) -> None:
    # Printed text cannot be taken back: after a call broke off part-way, a line says the
    # answer follows again, whole.
    answer = (
        "Deacon Ruth planted rosemary along the south wall [1]. She set the bushes a "
        "stride apart, facing the morning sun [1]. The cuttings came from her own garden "
        "[1]. Your notes count them on the day of the planting [1]."
    )
    env = {"SCRIBES_API_KEY": ALICE_KEY, "SCRIBES_API_URL": cluster.api_url}
    fake_llm.answer_with(answer)
    fake_llm.break_next_stream(after_pieces=10)
    try:
        result = CliRunner().invoke(main, ["ask", fresh(QUESTION), "--stream"], env=env)
    finally:
        fake_llm.answer_with(None)
    assert result.exit_code == 0, result.output
    void, said, again = result.output.partition("\n(the model broke off; its answer again:)\n")
    assert said, result.output
    assert void and answer.startswith(void)
    assert again.startswith(answer + "\n")


# Endpoints of issue 10: they run once the API has them.


def test_cancel_stops_a_queued_job_and_a_finished_one_is_a_409(
    cluster: Cluster, client: Scribes, garden: str, fake_llm: FakeAnthropic
) -> None:
    calls = len(fake_llm.calls)
    with paused(cluster, "embed"):
        job = client.submit(fresh(QUESTION))
        cancelled = client.cancel(job.id)
        assert cancelled.id == job.id and cancelled.status == "cancelled" and cancelled.finished
    time.sleep(1)  # the pool takes the message again, and must not answer it
    assert client.get(job.id).status == "cancelled"
    assert client.wait(job.id, timeout_s=5).status == "cancelled"
    assert len(fake_llm.calls) == calls

    done = client.ask(fresh(QUESTION), timeout_s=60)
    with pytest.raises(ApiError) as caught:
        client.cancel(done.id)
    assert (caught.value.status, caught.value.code) == (409, "already_finished")


def test_submit_many_and_get_many_keep_the_order(client: Scribes, garden: str) -> None:
    cached = fresh(QUESTION)
    client.ask(cached, timeout_s=60)
    questions: list[str | Question] = [
        fresh(QUESTION),
        Question(cached),
        Question(fresh("What does rosemary stand for?"), top_k=2, cache="bypass"),
    ]
    jobs = client.submit_many(questions)
    assert len(jobs) == 3 and jobs[1].finished and jobs[1].cached == "exact"
    assert [j.question for j in jobs] == [str(questions[0]), cached, jobs[2].question]
    finished = [client.wait(j.id, timeout_s=60) for j in jobs]
    assert all(j.succeeded for j in finished)
    read = client.get_many([j.id for j in jobs] + ["nosuchjob"])
    assert [j.id for j in read] == [j.id for j in jobs]
    assert [j.answer for j in read] == [j.answer for j in finished]


def test_a_replayed_submit_returns_the_first_job_and_another_body_is_a_409(
    client: Scribes, garden: str
) -> None:
    key = unique("replay")
    question = fresh(QUESTION)
    first = client.submit(question, idempotency_key=key)
    again = client.submit(question, idempotency_key=key)
    assert again.id == first.id
    with pytest.raises(ApiError) as caught:
        client.submit(fresh(QUESTION), idempotency_key=key)
    assert (caught.value.status, caught.value.code) == (409, "idempotency_conflict")
    document_key = unique("replay-doc")
    one = client.ingest("Replay", GARDEN, document_id=unique("doc"), idempotency_key=document_key)
    two = client.ingest("Replay", GARDEN, document_id=one.id, idempotency_key=document_key)
    assert (two.id, two.revision) == (one.id, one.revision)


def test_stream_reads_stages_and_text_to_the_finished_job(
    client: Scribes, garden: str, fake_llm: FakeAnthropic
) -> None:
    fake_llm.delay(0.3)
    try:
        job = client.submit(fresh(QUESTION))
        events = list(client.stream(job.id, timeout_s=60))
    finally:
        fake_llm.delay(0)
    final = events[-1]
    assert isinstance(final, JobEvent) and final.job.succeeded and final.job.id == job.id
    stages = [e.stage for e in events if isinstance(e, StageEvent)]
    assert {"embed", "retrieve", "generate"} <= set(stages), stages
    text = "".join(e.text for e in events if isinstance(e, TextEvent))
    assert text == final.job.answer
    assert all(e.id for e in events)

    async def again() -> list[str]:
        async with AsyncScribes(client.base_url, api_key=ALICE_KEY) as aclient:
            return [type(e).__name__ async for e in aclient.stream(job.id)]

    # A finished job's stream replays what happened and ends with the job.
    assert asyncio.run(again())[-1] == "JobEvent"
