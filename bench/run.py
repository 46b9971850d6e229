"""`python -m bench.run`: start a whole Scribes system, run the benchmarks, print ratios.

Every figure is printed beside a baseline measured in the same run on the same machine, and
read as a ratio; nothing here passes or fails on an absolute number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from bench.cache import run_cache
from bench.faults import run_faults
from bench.ingest import run_ingest
from bench.inprocess import open_inprocess_pipeline
from bench.machine import cpu_share, wait_until_quiet
from bench.notes import bench_notes, unique_questions
from bench.pipeline import run_pipeline
from bench.reindex import run_reindex
from bench.replay import run_workload
from bench.report import BenchResult, summary_table
from bench.scale_out import run_scale_out
from bench.search_scale import run_search_scale
from bench.system import BenchSystem, progress, running_system
from bench.telemetry import run_telemetry
from bench.throughput import run_throughput

__all__ = ["FULL", "QUICK", "BenchSizes", "main"]

PIPELINE_POLL_S = 0.005  # tight, so that polling adds little to what the client sees
# Looser under load: 32 clients polling every 5 ms would be a load test of polling itself.
THROUGHPUT_POLL_S = 0.05
INGEST_CLIENTS = 8


@dataclass(frozen=True, slots=True)
class BenchSizes:
    synthetic_notes: int
    cache_requests: int
    cache_warmup: int
    pipeline_questions: int
    pipeline_warmup: int
    throughput_questions: int  # per concurrency level
    throughput_levels: tuple[int, ...]
    throughput_max_s: float
    reindex_notes: int  # synthetic notes of the reindex benchmark's own system
    reindex_load_s: float  # questions alone before the reindex under load
    ingest_notes: int  # per bulk ingest: one alone, one under the question load
    ingest_load_s: float  # per question load: before, during and after an ingest
    scale_rounds: int  # rounds of 1, 2 and 3 embed workers
    scale_level_s: float  # load per level and round


FULL = BenchSizes(
    synthetic_notes=200,
    cache_requests=500,
    cache_warmup=30,
    pipeline_questions=60,  # 20 for each way of waiting
    pipeline_warmup=5,
    throughput_questions=600,  # per level: 150 lasted 2.5 s, too short for a steady state
    throughput_levels=(8, 32),
    throughput_max_s=30,
    reindex_notes=600,
    reindex_load_s=15,
    ingest_notes=300,
    ingest_load_s=30,
    scale_rounds=4,
    scale_level_s=12,
)
QUICK = BenchSizes(
    synthetic_notes=30,
    cache_requests=100,
    cache_warmup=10,
    pipeline_questions=10,
    pipeline_warmup=2,
    throughput_questions=60,
    throughput_levels=(16,),
    throughput_max_s=20,
    reindex_notes=60,
    reindex_load_s=6,
    ingest_notes=120,
    ingest_load_s=15,
    scale_rounds=2,
    scale_level_s=6,
)


def _cache(system: BenchSystem, sizes: BenchSizes, tag: str) -> BenchResult:
    return run_cache(system, requests=sizes.cache_requests, warmup=sizes.cache_warmup)


def _pipeline(system: BenchSystem, sizes: BenchSizes, tag: str) -> BenchResult:
    questions = unique_questions(
        sizes.pipeline_warmup + sizes.pipeline_questions, seed=2, tag=f"pipeline-{tag}"
    )
    with open_inprocess_pipeline(
        system.settings, system.redis_url, system.work_dir / "local-vectors"
    ) as local:
        started = time.perf_counter()
        chunks = local.index(system.notes)
        elapsed = time.perf_counter() - started
        progress(f"pipeline: in-process store holds {chunks} chunks ({elapsed:.1f} s)")
        return run_pipeline(
            system, local, questions=questions, warmup=sizes.pipeline_warmup, poll_s=PIPELINE_POLL_S
        )


def _throughput(system: BenchSystem, sizes: BenchSizes, tag: str) -> BenchResult:
    return run_throughput(
        system,
        questions=unique_questions(
            sizes.throughput_questions * len(sizes.throughput_levels), seed=3, tag=f"load-{tag}"
        ),
        levels=sizes.throughput_levels,
        poll_s=None,
        max_s=sizes.throughput_max_s,
    )


def _faults(work_dir: Path, sizes: BenchSizes) -> BenchResult:
    return run_faults(work_dir)


def _telemetry(work_dir: Path, sizes: BenchSizes) -> BenchResult:
    return run_telemetry(work_dir)


def _workload(work_dir: Path, sizes: BenchSizes) -> BenchResult:
    return run_workload(work_dir)


def _reindex(work_dir: Path, sizes: BenchSizes) -> BenchResult:
    return run_reindex(work_dir, synthetic_notes=sizes.reindex_notes, load_s=sizes.reindex_load_s)


def _search_scale(work_dir: Path, sizes: BenchSizes) -> BenchResult:
    return run_search_scale(work_dir)


def _scale_out(work_dir: Path, sizes: BenchSizes) -> BenchResult:
    return run_scale_out(work_dir, rounds=sizes.scale_rounds, level_s=sizes.scale_level_s)


def _ingest(system: BenchSystem, sizes: BenchSizes, tag: str) -> BenchResult:
    return run_ingest(
        system,
        notes=sizes.ingest_notes,
        load_s=sizes.ingest_load_s,
        clients=INGEST_CLIENTS,
        poll_s=THROUGHPUT_POLL_S,
        tag=tag,
    )


BENCHMARKS: dict[str, Callable[[BenchSystem, BenchSizes, str], BenchResult]] = {
    "cache": _cache,
    "pipeline": _pipeline,
    "throughput": _throughput,
    # Last: it adds notes (of a tenant of their own) to the system the others measure.
    "ingest": _ingest,
}
# Benchmarks that start clusters of their own, as they break them on purpose, need a model
# to count or switch the whole store, or need none (search_scale: one Edge shard); run only
# when named with --only, since each takes minutes.
SEPARATE: dict[str, Callable[[Path, BenchSizes], BenchResult]] = {
    "faults": _faults,
    "telemetry": _telemetry,
    "workload": _workload,
    "reindex": _reindex,
    "search_scale": _search_scale,
    "scale_out": _scale_out,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Start a whole Scribes system on loopback (its own redis-server, the four "
        "worker pools, the API), ingest the sample notes plus synthetic ones, and run the "
        "benchmarks: cache, pipeline, throughput, ingest. Each prints its figures and a ratio "
        "against a baseline measured in the same run. `--only faults` (about 6 minutes, never "
        "in the default set) instead kills a pool and takes the model down on clusters of its own, "
        "each run with and without the feature that handles the fault. `--only workload` (about "
        "3.5 minutes) replays 2,000 labelled questions with note edits and deletes on a "
        "system of its own, caches on against every request bypassing them. `--only reindex` "
        "(about 5.5 minutes) times an unchanged reindex against a full re-embedding on a "
        "system of its own. `--only search_scale` needs no system: tenant-filtered search on a "
        "100k-point Edge shard before and after an offline HNSW build. `--only scale_out` "
        "(about 3.5 minutes) measures questions/s with 1, 2 and 3 embed workers on a system of "
        "its own.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller counts: a smoke run of about a minute"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted([*BENCHMARKS, *SEPARATE]),
        metavar="NAME",
        help="run only this benchmark (repeatable; one of "
        f"{', '.join([*BENCHMARKS, *SEPARATE])}; {', '.join(SEPARATE)} only when named)",
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    parser.add_argument(
        "--work-dir",
        type=Path,
        metavar="DIR",
        help="keep Redis data, the pools' logs and the vector stores here (default: a "
        "temporary folder, removed afterwards)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for other processes on the machine to go idle "
        "(default 0: start at once)",
    )
    args = parser.parse_args(argv)
    if args.wait_quiet > 0:
        progress(f"waiting up to {args.wait_quiet:.0f} s for the machine to be quiet")
        quiet = wait_until_quiet(args.wait_quiet)
        progress(f"other processes now use {quiet.others_share:.0%} of the machine; starting")
    sizes = QUICK if args.quick else FULL
    selected = [name for name in BENCHMARKS if not args.only or name in args.only]
    separate = [name for name in SEPARATE if args.only and name in args.only]
    tag = uuid.uuid4().hex[:6]
    notes = bench_notes(sizes.synthetic_notes)
    results: list[BenchResult] = []
    failures: dict[str, str] = {}
    started = time.perf_counter()
    with ExitStack() as stack:
        if args.work_dir is None:
            work_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="scribes-bench-"))
            )
        else:
            work_dir = args.work_dir.resolve()
            work_dir.mkdir(parents=True, exist_ok=True)
        runs: list[tuple[str, Callable[[], BenchResult], Path]] = []
        if selected:
            with cpu_share() as setup:
                system = stack.enter_context(running_system(work_dir, notes))
            _print_header(system, sizes, quick=args.quick)
            print(setup.describe())
            shared_logs = work_dir / "cluster" / "logs"
            runs += [(n, partial(BENCHMARKS[n], system, sizes, tag), shared_logs) for n in selected]
        else:
            _print_platform(quick=args.quick)
        runs += [(n, partial(SEPARATE[n], work_dir / n, sizes), work_dir / n) for n in separate]
        for name, run, logs in runs:
            try:
                with cpu_share() as share:
                    result = run()
                print(share.describe())
                result.details["machine"] = share.as_dict()
                results.append(result)
            except Exception as exc:  # one broken benchmark should not hide the others' figures
                failures[name] = f"{exc.__class__.__name__}: {exc}"
                print(f"\n== {name}: FAILED: {failures[name]} (logs: {logs})")
    kind = "quick" if args.quick else "full"
    print()
    print(f"== summary ({kind} run, {time.perf_counter() - started:.0f} s) ==")
    summary_table(results)
    for name, failure in failures.items():
        print(f"  {name}: FAILED: {failure}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "quick": args.quick,
                    "sizes": asdict(sizes),
                    "cpu_count": os.cpu_count(),
                    "results": {result.name: result.as_dict() for result in results},
                    "failures": failures,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"  results written to {args.json}")
    return 1 if failures else 0


def _print_platform(*, quick: bool) -> None:
    print(
        f"Scribes benchmarks ({'quick' if quick else 'full'}): {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, {platform.machine()}"
    )


def _print_header(system: BenchSystem, sizes: BenchSizes, *, quick: bool) -> None:
    settings = system.settings
    samples = len(system.notes) - sizes.synthetic_notes
    _print_platform(quick=quick)
    print(
        f"  corpus: {samples} sample + {sizes.synthetic_notes} synthetic notes = "
        f"{system.chunks} chunks, indexed by the cluster in {system.ingest_s:.1f} s"
    )
    print(
        f"  system: redis-server, pools embed/retrieve/generate/index, API (uvicorn) on loopback; "
        f"writer extractive; top_k {settings.top_k}; score threshold {settings.score_threshold}"
    )


if __name__ == "__main__":
    sys.exit(main())
