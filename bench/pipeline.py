"""Benchmark `pipeline`: one uncached question end to end vs the same steps in one process."""

from __future__ import annotations

from collections.abc import Sequence

from bench.inprocess import InProcessPipeline, StageTimes
from bench.report import BenchResult, SummaryRow, print_table
from bench.stats import Summary, format_ratio, ratio, summarise
from bench.system import BenchSystem, ask_and_wait

__all__ = ["STAGES", "run_pipeline"]

# The job record's timings, in the order a question meets them.
STAGES = ("embed_wait", "embed", "retrieve_wait", "retrieve", "generate_wait", "generate")


def run_pipeline(
    system: BenchSystem,
    inprocess: InProcessPipeline,
    *,
    questions: Sequence[str],
    warmup: int,
    poll_s: float,
) -> BenchResult:
    measured = questions[warmup:]
    # Three ways to wait, in turn question by question: the submit that waits (`Prefer:
    # wait`), a long poll after a plain submit, and, for comparison, polling every `poll_s`.
    waited_ms: list[float] = []
    client_ms: list[float] = []
    polled_ms: list[float] = []
    total_ms: list[float] = []
    stage_ms: dict[str, list[float]] = {stage: [] for stage in STAGES}
    distributed_no_context = 0
    local_times: list[StageTimes] = []
    with system.client() as http:
        for number, question in enumerate(questions):
            way = number % 3
            answered = ask_and_wait(
                http, question, poll_s=poll_s if way == 2 else None, submit_waits=way == 0
            )
            # Alternated, question by question: whatever else loads the machine meanwhile
            # weighs on both sides alike. The cluster is idle while this runs.
            local = inprocess.answer(question)
            job = answered.job
            if job.get("cached"):
                raise RuntimeError(f"a distinct question was answered from a cache: {job}")
            if job["status"] != "succeeded":
                raise RuntimeError(f"question failed: {job.get('error')}")
            if number < warmup:
                continue
            local_times.append(local)
            timings: dict[str, float] = job["timings"]
            (waited_ms, client_ms, polled_ms)[way].append(answered.latency_ms)
            total_ms.append(timings["total"])
            for stage in STAGES:
                if stage in timings:
                    stage_ms[stage].append(timings[stage])
            distributed_no_context += bool(job["no_context"])
    local_total = summarise([t.total_ms for t in local_times])
    local_stage = {
        "embed": summarise([t.embed_ms for t in local_times]),
        "retrieve": summarise([t.retrieve_ms for t in local_times]),
        "generate": summarise([t.generate_ms for t in local_times if not t.no_context] or [0.0]),
    }
    client, total = summarise(client_ms), summarise(total_ms)
    polled, waited = summarise(polled_ms), summarise(waited_ms)
    distributed_stage = {stage: summarise(v) for stage, v in stage_ms.items() if v}

    print()
    print("== pipeline: one uncached question end to end, distributed vs in one process ==")
    print(
        f"  {len(measured)} distinct questions, one at a time, after {warmup} warm-up; "
        "in turn: submitted with `Prefer: wait=30`, submitted then long-polled (?wait=30), "
        f"submitted then polled every {poll_s * 1000:.0f} ms; each question asked of the "
        "cluster, then run in-process"
    )
    print_table(
        ["latency (ms)", "p50", "p95", "mean"],
        [
            _row("distributed, client-observed, submit that waits (POST → answer)", waited),
            _row("distributed, client-observed, long poll (POST, GET → answer)", client),
            _row(f"distributed, client-observed, polling every {poll_s * 1000:.0f} ms", polled),
            _row("distributed, job timings.total (created → finished)", total),
            _row("in-process embed + retrieve + write", local_total),
            _ratio_row("ratio client-observed (submit waits) / in-process", waited, local_total),
            _ratio_row("ratio client-observed (long poll) / in-process", client, local_total),
            _ratio_row(
                f"ratio client-observed ({poll_s * 1000:.0f} ms polling) / in-process",
                polled,
                local_total,
            ),
            _ratio_row("ratio timings.total / in-process", total, local_total),
        ],
    )
    print("  per stage, distributed (job timings) vs in-process; ms, p50 / p95")
    stage_rows: list[list[str]] = []
    for stage in STAGES:
        remote = distributed_stage.get(stage)
        here = local_stage.get(stage)
        stage_rows.append(
            [
                stage,
                f"{remote.p50:.2f} / {remote.p95:.2f}" if remote else "-",
                f"{here.p50:.2f} / {here.p95:.2f}" if here else "(no hop)",
            ]
        )
    accounted = sum(s.p50 for s in distributed_stage.values())
    stage_rows.append(["sum of stage p50s", f"{accounted:.2f}", f"{_sum_p50(local_stage):.2f}"])
    print_table(["stage", "distributed", "in-process"], stage_rows, indent=4)
    local_no_context = sum(t.no_context for t in local_times)
    print(
        f"  'not in your notes' answers (no generate step): distributed "
        f"{distributed_no_context}/{len(measured)}, in-process {local_no_context}/{len(measured)}"
    )
    return BenchResult(
        "pipeline",
        rows=[
            SummaryRow(
                "pipeline",
                "p50 client-observed, submit that waits",
                waited.p50,
                local_total.p50,
                "ms",
                "same steps in-process",
            ),
            SummaryRow(
                "pipeline",
                "p50 client-observed, long poll",
                client.p50,
                local_total.p50,
                "ms",
                "same steps in-process",
            ),
            SummaryRow(
                "pipeline",
                f"p50 client-observed, polling every {poll_s * 1000:.0f} ms",
                polled.p50,
                local_total.p50,
                "ms",
                "same steps in-process",
            ),
            SummaryRow(
                "pipeline",
                "p95 client-observed",
                client.p95,
                local_total.p95,
                "ms",
                "same steps in-process",
            ),
            SummaryRow(
                "pipeline",
                "p50 job timings.total",
                total.p50,
                local_total.p50,
                "ms",
                "same steps in-process",
            ),
        ],
        details={
            "questions": len(measured),
            "warmup": warmup,
            "poll_ms": poll_s * 1000,
            "client_observed_submit_waits_ms": waited.as_dict(),
            "client_observed_ms": client.as_dict(),
            "client_observed_polling_ms": polled.as_dict(),
            "job_total_ms": total.as_dict(),
            "inprocess_total_ms": local_total.as_dict(),
            "distributed_stages_ms": {k: v.as_dict() for k, v in distributed_stage.items()},
            "inprocess_stages_ms": {k: v.as_dict() for k, v in local_stage.items()},
            "no_context": {"distributed": distributed_no_context, "inprocess": local_no_context},
        },
    )


def _row(label: str, summary: Summary) -> list[str]:
    return [label, f"{summary.p50:.2f}", f"{summary.p95:.2f}", f"{summary.mean:.2f}"]


def _ratio_row(label: str, measured: Summary, baseline: Summary) -> list[str]:
    return [
        label,
        *(
            format_ratio(ratio(getattr(measured, f), getattr(baseline, f)))
            for f in ("p50", "p95", "mean")
        ),
    ]


def _sum_p50(stages: dict[str, Summary]) -> float:
    return sum(summary.p50 for summary in stages.values())
