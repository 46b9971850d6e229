"""Benchmark `throughput`: questions/s under concurrent load vs the model's batched embedding."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.pipeline import STAGES
from bench.report import BenchResult, SummaryRow, print_table
from bench.stats import format_ratio, ratio, summarise
from bench.system import (
    BENCH_API_KEY,
    FINISHED_STATUSES,
    LONG_POLL_S,
    ROLES,
    BenchSystem,
    cpu_by_role,
    progress,
)
from rag.embedding import load_embedder

__all__ = ["LoadOutcome", "closed_loop_load", "run_throughput"]

_JOB_TIMEOUT_S = 120.0
_BASELINE_REPEATS = 2


@dataclass
class LoadOutcome:
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    stages_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    succeeded: int = 0
    failed: int = 0
    cached: int = 0
    timed_out: int = 0
    polls: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed


def run_throughput(
    system: BenchSystem,
    *,
    questions: Sequence[str],
    levels: Sequence[int],
    poll_s: float | None,
    max_s: float,
) -> BenchResult:
    """One closed-loop load per concurrency level, each with its own share of `questions`."""
    per_level = len(questions) // len(levels)
    # Before and after the load, best of all: the ceiling, least disturbed by anything else.
    best = _batched_embedding_rate(system, questions[:per_level], repeats=_BASELINE_REPEATS)
    outcomes: dict[int, LoadOutcome] = {}
    cpu: dict[int, dict[str, float]] = {}
    for number, concurrency in enumerate(levels):
        chunk = questions[number * per_level : (number + 1) * per_level]
        with cpu_by_role(system) as cpu[concurrency]:
            outcome = asyncio.run(
                closed_loop_load(
                    system.cluster.api_url,
                    chunk,
                    concurrency=concurrency,
                    poll_s=poll_s,
                    max_s=max_s,
                )
            )
        cpu[concurrency]["all"] = sum(cpu[concurrency].values())
        if outcome.succeeded == 0:
            raise RuntimeError(f"no question succeeded with {concurrency} clients: {outcome}")
        progress(
            f"throughput: {concurrency} clients, {outcome.finished} questions in "
            f"{outcome.elapsed_s:.1f} s"
        )
        outcomes[concurrency] = outcome
    after = _batched_embedding_rate(system, questions[:per_level], repeats=_BASELINE_REPEATS)
    embed_qps = max(best, after)

    print()
    print("== throughput: questions/s under concurrent load vs batched embedding in one process ==")
    print(
        f"  per level: {per_level} distinct questions or {max_s:.0f} s of asking; each client "
        f"asks, {_waits(poll_s)} until answered, asks again (asyncio + httpx, one process)"
    )
    print(
        "  note: 2 cores here are shared by the load generator, the API, four pools and Redis; "
        "the load generator's CPU comes out of the system's"
    )
    print(
        f"  baseline: Embedder.embed(questions, batch_size=64) in one process, best of "
        f"{2 * _BASELINE_REPEATS} (half before the load, half after): {embed_qps:.1f} questions/s"
    )
    rows: list[list[str]] = []
    for concurrency, outcome in outcomes.items():
        qps = outcome.succeeded / outcome.elapsed_s
        latency = summarise(outcome.latencies_ms)
        rows.append(
            [
                f"{concurrency} clients",
                f"{outcome.succeeded}/{outcome.finished + outcome.timed_out + outcome.cached}",
                f"{outcome.elapsed_s:.1f}",
                f"{qps:.2f}",
                format_ratio(ratio(qps, embed_qps)),
                f"{latency.p50:.0f} / {latency.p95:.0f}",
                f"{outcome.polls / outcome.elapsed_s:.0f}",
            ]
        )
    print_table(
        [
            "load",
            "succeeded",
            "s",
            "questions/s",
            "vs baseline",
            "latency p50/p95 ms",
            "GETs/s after the submit",
        ],
        rows,
    )
    print("  job timings under load, p50 / p95 (ms):")
    stage_rows = [
        [
            stage,
            *(
                f"{summarise(o.stages_ms[stage]).p50:.1f} / {summarise(o.stages_ms[stage]).p95:.1f}"
                if o.stages_ms[stage]
                else "-"
                for o in outcomes.values()
            ),
        ]
        for stage in STAGES
    ]
    print_table(["stage", *(f"{c} clients" for c in outcomes)], stage_rows, indent=4)
    print("  CPU per answered question, by process (ms; the load generator is this benchmark):")
    print_table(
        ["process", *(f"{c} clients" for c in outcomes)],
        [
            [role, *(f"{_per_question_ms(cpu[c][role], o):.1f}" for c, o in outcomes.items())]
            for role in [*ROLES, "all"]
        ],
        indent=4,
    )
    return BenchResult(
        "throughput",
        rows=[
            SummaryRow(
                "throughput",
                f"questions/s, {concurrency} clients",
                outcome.succeeded / outcome.elapsed_s,
                embed_qps,
                "q/s",
                "batched embedding",
            )
            for concurrency, outcome in outcomes.items()
        ],
        details={
            "questions_per_level": per_level,
            "poll_ms": None if poll_s is None else poll_s * 1000,
            "batched_embedding_qps": round(embed_qps, 3),
            "batched_embedding_qps_before_after": [round(best, 3), round(after, 3)],
            "levels": {
                str(c): {
                    **_outcome_details(o),
                    "cpu_ms_per_question": {
                        role: round(_per_question_ms(seconds, o), 2)
                        for role, seconds in cpu[c].items()
                    },
                }
                for c, o in outcomes.items()
            },
        },
    )


def _per_question_ms(seconds: float, outcome: LoadOutcome) -> float:
    return 1000 * seconds / max(outcome.succeeded, 1)


def _waits(poll_s: float | None) -> str:
    if poll_s is None:
        return "submits with `Prefer: wait=30` (then long-polls if need be)"
    return f"polls every {poll_s * 1000:.0f} ms"


def _outcome_details(outcome: LoadOutcome) -> dict[str, Any]:
    return {
        "elapsed_s": round(outcome.elapsed_s, 3),
        "succeeded": outcome.succeeded,
        "failed": outcome.failed,
        "timed_out": outcome.timed_out,
        "cached": outcome.cached,
        "polls": outcome.polls,
        "questions_per_s": round(outcome.succeeded / outcome.elapsed_s, 3),
        "latency_ms": summarise(outcome.latencies_ms).as_dict(),
        "stages_ms": {k: summarise(v).as_dict() for k, v in outcome.stages_ms.items() if v},
    }


async def closed_loop_load(
    api_url: str,
    questions: Sequence[str],
    *,
    concurrency: int,
    poll_s: float | None,
    max_s: float,
) -> LoadOutcome:
    """`concurrency` clients, each asking, waiting for its answer, then asking the next."""
    outcome = LoadOutcome()
    pending: Iterator[str] = iter(questions)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=api_url,
        headers={"Authorization": f"Bearer {BENCH_API_KEY}"},
        timeout=30,
        limits=limits,
    ) as http:
        started = time.perf_counter()
        stop_issuing = started + max_s

        async def client() -> None:
            # Each client asks, waits for its answer, then asks the next: a closed loop.
            for question in pending:
                if time.perf_counter() > stop_issuing:
                    return
                await _ask(http, question, poll_s, outcome)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        outcome.elapsed_s = time.perf_counter() - started
    return outcome


async def _ask(
    http: httpx.AsyncClient, question: str, poll_s: float | None, out: LoadOutcome
) -> None:
    try:
        await _ask_once(http, question, poll_s, out)
    except httpx.HTTPError:
        # A refused or timed-out request under load is a result, not a reason to stop.
        out.failed += 1


async def _ask_once(
    http: httpx.AsyncClient, question: str, poll_s: float | None, out: LoadOutcome
) -> None:
    started = time.perf_counter()
    # With the long poll, the submit itself waits first (`Prefer: wait`).
    headers = {"Prefer": f"wait={LONG_POLL_S}"} if poll_s is None else {}
    response = await http.post("/v1/questions", json={"question": question}, headers=headers)
    job: dict[str, Any] = response.json() if response.status_code in (200, 202) else {}
    if response.status_code == 200 and job.get("cached"):
        out.cached += 1
        return
    if response.status_code not in (200, 202):
        out.failed += 1
        return
    poll = job["poll"] if response.status_code == 202 else ""
    while job.get("status") not in FINISHED_STATUSES:
        if time.perf_counter() - started >= _JOB_TIMEOUT_S:
            out.timed_out += 1
            return
        if poll_s is None:
            job = (await http.get(poll, params={"wait": LONG_POLL_S})).json()
        else:
            await asyncio.sleep(poll_s)
            job = (await http.get(poll)).json()
        out.polls += 1
    if job["status"] != "succeeded":
        out.failed += 1
        return
    out.succeeded += 1
    out.latencies_ms.append((time.perf_counter() - started) * 1000)
    for stage in STAGES:
        if stage in job["timings"]:
            out.stages_ms[stage].append(job["timings"][stage])


def _batched_embedding_rate(
    system: BenchSystem, questions: Sequence[str], *, repeats: int
) -> float:
    """Questions/s of the model alone, batched as the index pool batches: the ceiling."""
    embedder = load_embedder(system.settings.embedding_model)
    texts = list(questions)
    embedder.embed(texts[:64], batch_size=64)  # warm: the first call allocates
    elapsed: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        embedder.embed(texts, batch_size=64)
        elapsed.append(time.perf_counter() - started)
    return len(texts) / min(elapsed)
