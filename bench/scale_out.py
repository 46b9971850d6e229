"""`--only scale_out`: questions/s with 1, 2 and 3 embed workers, and where the CPU went.

One system of its own (its own redis-server, the four pools and the API, the extractive
writer, the semantic cache off so that every question is embedded, searched and written)
plus two more embed workers, each a separate worker process (prefork, concurrency 1) under
a Celery hostname and a data folder of its own, as another machine would run it: a worker
added by scale-out is a consumer of its own, not another child of an existing one. All three
load the model before the first round; a level of n workers is n of them consuming `embed`
and the others paused by Celery's remote control (`cancel_consumer`), idle. So levels can
alternate within each round, and a slow moment of the shared machine falls on all of them.

For every level: questions/s of a closed-loop load (`bench.throughput.closed_loop_load`),
its ratio to the 1-worker level of the same round, the queue wait in front of the embed pool,
and the CPU each process type used (psutil, over each process tree), which says what stops
the scaling on this machine.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery

from bench.machine import cpu_share
from bench.notes import bench_notes, unique_questions
from bench.report import BenchResult, SummaryRow, print_table
from bench.stats import format_ratio, ratio, summarise
from bench.system import ROLES, BenchSystem, cpu_by_role, progress, running_system
from bench.throughput import LoadOutcome, closed_loop_load
from tasks.names import QueueName, TaskName
from tests.cluster import WorkerHost, running_worker_host, tasks_run

__all__ = ["run_scale_out"]

LEVELS = (1, 2, 3)
CLIENTS = 16
WARMUP_QUESTIONS = CLIENTS * 2
# Process types, in the order the CPU table prints them.


@dataclass
class _Level:
    workers: int
    rates: list[float] = field(default_factory=list)
    outcomes: list[LoadOutcome] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ROLES, 0.0))
    ours_s: float = 0.0  # every process of this run, the bench's own included
    others_s: float = 0.0
    embed_runs: dict[str, int] = field(default_factory=dict)

    def cores(self, role: str) -> float:
        return self.cpu_s[role] / self.wall_s if self.wall_s else 0.0

    @property
    def mean_qps(self) -> float:
        return sum(self.rates) / len(self.rates)


def run_scale_out(work_dir: Path, *, rounds: int, level_s: float) -> BenchResult:
    notes = bench_notes(30)
    levels = {n: _Level(n) for n in LEVELS}
    with ExitStack() as stack:
        system = stack.enter_context(
            running_system(
                work_dir / "system",
                notes,
                # Three embed processes share two cores here: one torch thread each, as
                # the README says to set where several embed processes share a machine.
                {"SCRIBES_SEMANTIC_CACHE": "false", "SCRIBES_EMBEDDING_BATCH_THREADS": "1"},
            )
        )
        # The system's own pools' environment; each added host sets its own data folder.
        env = dict(system.cluster.supervisor.extra_env)
        extra = [
            stack.enter_context(
                running_worker_host(
                    f"scale-{n}", work_dir / f"scale-{n}", system.redis_url, env, ("embed",)
                )
            )
            for n in LEVELS[1:]
        ]
        progress(f"scale_out: {len(extra)} more embed workers up")
        embed_nodes = [f"embed@{socket.gethostname()}", *(host.node("embed") for host in extra)]
        control = Celery("scribes-bench-scale", broker=system.redis_url, set_as_current=False)
        stack.callback(control.close)
        for number in range(rounds):
            # Which level goes first alternates: the last of a round runs on a warmer machine.
            order = LEVELS if number % 2 == 0 else tuple(reversed(LEVELS))
            for workers in order:
                _consume(control, embed_nodes, workers)
                _measure(system, extra, embed_nodes, levels[workers], number, level_s)
        _consume(control, embed_nodes, len(embed_nodes))
    return _report(levels, rounds=rounds, level_s=level_s)


def _consume(control: Celery, nodes: Sequence[str], workers: int) -> None:
    """The first `workers` embed workers consume the embed queue; the others are paused."""
    queue = QueueName.EMBED.value
    on, off = list(nodes[:workers]), list(nodes[workers:])
    replies: list[Any] = []
    if on:
        replies += control.control.add_consumer(queue, destination=on, reply=True, timeout=10)
    if off:
        replies += control.control.cancel_consumer(queue, destination=off, reply=True, timeout=10)
    if len(replies) != len(nodes):
        raise RuntimeError(f"only {len(replies)} of {len(nodes)} embed workers answered: {replies}")


def _measure(
    system: BenchSystem,
    extra: Sequence[WorkerHost],
    embed_nodes: Sequence[str],
    level: _Level,
    number: int,
    level_s: float,
) -> None:
    tag = f"scale-{level.workers}w-{number}"
    questions = unique_questions(4000, seed=20 + number, tag=tag)
    # Distinct from the measured ones; it brings the newly consuming workers into the loop.
    asyncio.run(
        closed_loop_load(
            system.cluster.api_url,
            unique_questions(WARMUP_QUESTIONS, seed=90 + number, tag=f"{tag}-warm"),
            concurrency=CLIENTS,
            poll_s=None,
            max_s=level_s,
        )
    )
    before = tasks_run(system.redis_url, list(embed_nodes))
    with cpu_share() as share, cpu_by_role(system, extra) as cpu:
        outcome = asyncio.run(
            closed_loop_load(
                system.cluster.api_url,
                questions,
                concurrency=CLIENTS,
                poll_s=None,
                max_s=level_s,
            )
        )
    after = tasks_run(system.redis_url, list(embed_nodes))
    if outcome.succeeded == 0:
        raise RuntimeError(f"no question succeeded with {level.workers} embed workers: {outcome}")
    qps = outcome.succeeded / outcome.elapsed_s
    level.rates.append(qps)
    level.outcomes.append(outcome)
    level.wall_s += share.wall_s
    level.ours_s += share.ours_s
    level.others_s += share.others_s
    for role, seconds in cpu.items():
        level.cpu_s[role] += seconds
    task = TaskName.EMBED_PENDING.value
    for node in embed_nodes:
        ran = after[node].get(task, 0) - before[node].get(task, 0)
        level.embed_runs[node] = level.embed_runs.get(node, 0) + ran
    progress(f"scale_out round {number + 1}: {level.workers} embed workers: {qps:.1f} questions/s")


def _report(levels: dict[int, _Level], *, rounds: int, level_s: float) -> BenchResult:
    one = levels[1]
    # Each round's levels ran back to back; the median of their ratios resists a slow round.
    paired = {
        n: statistics.median(
            r / base for r, base in zip(level.rates, one.rates, strict=True) if base > 0
        )
        for n, level in levels.items()
    }
    cores = os.cpu_count() or 1
    print()
    print("== scale_out: questions/s with 1, 2 and 3 embed workers ==")
    print(
        f"  {rounds} rounds, each level {level_s:.0f} s of {CLIENTS} clients asking distinct "
        f"questions in a closed loop (each submit waits, `Prefer: wait`), levels in "
        "alternating order; semantic cache off, extractive writer"
    )
    print(
        "  workers: separate worker processes (prefork, concurrency 1, one torch thread), "
        "each its own Celery node; those not in a level paused by remote control"
    )
    rows: list[list[str]] = []
    for n, level in levels.items():
        latencies = [ms for o in level.outcomes for ms in o.latencies_ms]
        embed_wait = [ms for o in level.outcomes for ms in o.stages_ms["embed_wait"]]
        embed = [ms for o in level.outcomes for ms in o.stages_ms["embed"]]
        latency = summarise(latencies)
        rows.append(
            [
                f"{n} embed worker{'s' if n > 1 else ''}",
                " ".join(f"{r:.1f}" for r in level.rates),
                f"{level.mean_qps:.2f}",
                format_ratio(ratio(level.mean_qps, one.mean_qps)),
                format_ratio(paired[n]),
                f"{latency.p50:.0f} / {latency.p95:.0f}",
                f"{summarise(embed_wait).p50:.1f}",
                f"{summarise(embed).p50:.1f}",
            ]
        )
    print_table(
        [
            "level",
            "q/s by round",
            "mean q/s",
            "vs 1",
            "median of rounds' ratios",
            "latency p50/p95 ms",
            "embed_wait p50 ms",
            "embed p50 ms",
        ],
        rows,
    )
    print(f"  CPU by process type, cores in use on average ({cores} cores here):")
    print_table(
        ["level", *ROLES, "all ours", "others", "idle"],
        [
            [
                f"{n} embed worker{'s' if n > 1 else ''}",
                *(f"{level.cores(role):.2f}" for role in ROLES),
                f"{level.ours_s / level.wall_s:.2f}",
                f"{level.others_s / level.wall_s:.2f}",
                f"{_idle(level, cores):.2f}",
            ]
            for n, level in levels.items()
        ],
        indent=4,
    )
    # What one question costs the machine: with all cores busy, the ceiling is cores / this.
    print("  CPU per answered question, ms:")
    print_table(
        ["level", *ROLES, "all ours"],
        [
            [
                f"{n} embed worker{'s' if n > 1 else ''}",
                *(f"{_per_question_ms(level, level.cpu_s[role]):.1f}" for role in ROLES),
                f"{_per_question_ms(level, level.ours_s):.1f}",
            ]
            for n, level in levels.items()
        ],
        indent=4,
    )
    print("  embed tasks run by each worker, all rounds:")
    for n, level in levels.items():
        shares = ", ".join(f"{node} {runs}" for node, runs in level.embed_runs.items())
        print(f"    {n}: {shares}")
    return BenchResult(
        "scale_out",
        rows=[
            SummaryRow(
                "scale_out",
                f"questions/s, {n} embed workers, {CLIENTS} clients",
                level.mean_qps,
                one.mean_qps,
                "q/s",
                "1 embed worker",
            )
            for n, level in levels.items()
            if n > 1
        ],
        details={
            "rounds": rounds,
            "level_s": level_s,
            "clients": CLIENTS,
            "levels": {
                str(n): {
                    "questions_per_s": [round(r, 3) for r in level.rates],
                    "mean_questions_per_s": round(level.mean_qps, 3),
                    "median_paired_ratio": round(paired[n], 3),
                    "cores_by_role": {role: round(level.cores(role), 3) for role in ROLES},
                    "others_cores": round(level.others_s / level.wall_s, 3),
                    "idle_cores": round(_idle(level, cores), 3),
                    "cpu_ms_per_question": {
                        role: round(_per_question_ms(level, level.cpu_s[role]), 2) for role in ROLES
                    },
                    "embed_runs": level.embed_runs,
                    "failed": sum(o.failed + o.timed_out for o in level.outcomes),
                }
                for n, level in levels.items()
            },
        },
    )


def _idle(level: _Level, cores: int) -> float:
    return max(0.0, cores - (level.ours_s + level.others_s) / level.wall_s)


def _per_question_ms(level: _Level, cpu_s: float) -> float:
    answered = sum(o.succeeded for o in level.outcomes)
    return 1000 * cpu_s / answered if answered else 0.0
