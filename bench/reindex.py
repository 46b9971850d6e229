"""`--only reindex`: an unchanged reindex (every vector copied) against a full re-embedding.

One system of its own, with an operator's key: (a) the baseline, a reindex to a saved copy
of the bundled model, whose other name misses the chunk-vector cache, so every chunk is
embedded; (b) right after it a reindex with no model, the live one (the copy), so every
vector is copied; (c) a second unchanged reindex while 8 clients ask questions with the
caches bypassed, beside the same load just before it with no reindex. Each run is watched
from its POST to phase `done` by polling `GET /v1/admin/reindex`, which also gives the time
spent in each phase (to the polling's granularity). A question asked before (a) and after
(c) must find the same notes: the system is left as usable as it was found.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.notes import bench_notes, unique_questions
from bench.report import BenchResult, SummaryRow, print_table
from bench.stats import Summary, format_ratio, ratio, summarise
from bench.system import BENCH_API_KEY, BenchSystem, progress, running_system
from tasks.reindex import SETTLE_AFTER_S

__all__ = [
    "LoadSample",
    "ReindexTiming",
    "phase_durations",
    "run_reindex",
    "split_load",
]

BENCH_ADMIN_KEY = "bench-admin-0123456789"
# The target for an unchanged reindex against a full re-embedding.
TARGET_SPEEDUP = 20.0
POLL_S = 0.05  # the run's phases are timed to this
LOAD_CLIENTS = 8
LOAD_POLL_S = 0.05
REINDEX_TIMEOUT_S = 900.0
# Asked before and after: the notes it finds must not change with a copy of the same model.
CHECK_QUESTION = "Why was it undignified for the father to run to the prodigal son?"
PHASES = ("prepare", "build", "catch_up", "optimize", "verify", "switch", "settle")
_ENDED = ("done", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class ReindexTiming:
    """One run as the operator saw it: its final record and where its time went."""

    label: str
    run: dict[str, Any]  # the run's record once it ended
    wall_s: float  # POST to phase `done`, as polled
    phases_s: dict[str, float]

    @property
    def total(self) -> int:
        return int(self.run["total"])

    @property
    def chunks_per_s(self) -> float:
        return self.total / self.wall_s

    @property
    def s_per_10k(self) -> float:
        return self.wall_s / self.total * 10_000

    @property
    def build_chunks_per_s(self) -> float:
        build = self.phases_s.get("build", 0.0)
        return self.total / build if build > 0 else float("inf")

    @property
    def server_s(self) -> float:
        return float(self.run["finished_at"]) - float(self.run["started_at"])

    @property
    def live_s(self) -> float:
        """From the start to the switch: when questions began to be answered from it."""
        return float(self.run["checks"]["switched_at"]) - float(self.run["started_at"])

    @property
    def optimize_s(self) -> float | None:
        value = self.run["checks"].get("optimize_s")
        return float(value) if value is not None else None

    def as_dict(self) -> dict[str, Any]:
        run = self.run
        return {
            "model": run["model"],
            "total": self.total,
            "copied": run["copied"],
            "embedded": run["embedded"],
            "cached": run["cached"],
            "wall_s": round(self.wall_s, 3),
            "server_s": round(self.server_s, 3),
            "live_s": round(self.live_s, 3),
            "chunks_per_s": round(self.chunks_per_s, 2),
            "s_per_10k_chunks": round(self.s_per_10k, 2),
            "build_chunks_per_s": round(self.build_chunks_per_s, 2),
            "rate_per_s": run["rate_per_s"],
            "phases_s": {k: round(v, 3) for k, v in self.phases_s.items()},
            "checks": run["checks"],
        }


def phase_durations(start: float, seen: Sequence[tuple[float, str]]) -> dict[str, float]:
    """Seconds in each phase from polled (time, phase) samples of one run begun at `start`.

    A phase runs from the first sample that shows it to the first that shows another; the
    first one seen began at `start`. A phase shorter than the polling may never be seen:
    its time goes to the one before it. A phase entered twice adds up.
    """
    spent: dict[str, float] = {}
    current: str | None = None
    since = start
    for at, phase in seen:
        if phase == current:
            continue
        if current is not None:
            spent[current] = spent.get(current, 0.0) + at - since
            since = at
        if phase in _ENDED:
            break
        current = phase
    return spent


@dataclass(frozen=True, slots=True)
class LoadSample:
    started: float
    ended: float
    ok: bool

    @property
    def latency_ms(self) -> float:
        return (self.ended - self.started) * 1000


def split_load(
    samples: Sequence[LoadSample], reindex_from: float, reindex_to: float
) -> tuple[list[LoadSample], list[LoadSample]]:
    """The questions answered before the reindex began, and those asked while it ran."""
    before = [s for s in samples if s.ended < reindex_from]
    during = [s for s in samples if reindex_from <= s.started <= reindex_to]
    return before, during


def run_reindex(work_dir: Path, *, synthetic_notes: int, load_s: float) -> BenchResult:
    notes = bench_notes(synthetic_notes)
    copy_dir = _save_model_copy(work_dir / "model-copy")
    env = {"SCRIBES_ADMIN_KEYS": BENCH_ADMIN_KEY}
    with running_system(work_dir, notes, env) as system:
        status = _status(system)
        if status["run"] is not None or status["live"]["number"] != 1:
            raise RuntimeError(f"a fresh system should have no reindex yet: {status}")
        first_model = str(status["live"]["model"])
        found_before = _found_notes(system)
        full = _reindex(system, "(a) full re-embedding", model=str(copy_dir))
        if full.run["embedded"] != full.total:
            raise RuntimeError(f"(a) should embed every chunk: {full.as_dict()}")
        found_between = _found_notes(system)  # also loads the new model into the embed pool
        unchanged = _reindex(system, "(b) unchanged", model=None)
        if unchanged.run["copied"] != unchanged.total:
            raise RuntimeError(f"(b) should copy every chunk: {unchanged.as_dict()}")
        loaded, without, during = _reindex_under_load(system, load_s=load_s)
        found_after = _found_notes(system)
        final = _status(system)
    if not found_before or found_after != found_before:
        raise RuntimeError(
            f"the check question found {sorted(found_before)} before the reindexes and "
            f"{sorted(found_after)} after: the system was not left as it was"
        )
    return _report(
        system,
        copy_dir=copy_dir,
        first_model=first_model,
        runs=(full, unchanged, loaded),
        without=without,
        during=during,
        load_s=load_s,
        stable=found_between == found_before,
        final=final,
    )


def _save_model_copy(directory: Path) -> Path:
    """The bundled model saved under another name: a model the chunk-vector cache never saw."""
    from sentence_transformers import SentenceTransformer

    from rag.tokens import resolve_model_path

    bundled = resolve_model_path("all-MiniLM-L6-v2")
    SentenceTransformer(str(bundled), device="cpu").save(str(directory))
    return directory


def _admin(system: BenchSystem) -> httpx.Client:
    return httpx.Client(
        base_url=system.cluster.api_url,
        headers={"Authorization": f"Bearer {BENCH_ADMIN_KEY}"},
        timeout=30,
    )


def _status(system: BenchSystem) -> dict[str, Any]:
    with _admin(system) as admin:
        response = admin.get("/v1/admin/reindex")
    if response.status_code != 200:
        raise RuntimeError(
            f"GET /v1/admin/reindex answered {response.status_code}: {response.text}"
        )
    body: dict[str, Any] = response.json()
    return body


def _reindex(system: BenchSystem, label: str, *, model: str | None) -> ReindexTiming:
    """POST a reindex, poll it to its end; a run that does not end `done` is an error."""
    body = {"model": model} if model is not None else {}
    seen: list[tuple[float, str]] = []
    with _admin(system) as admin:
        started = time.perf_counter()
        response = admin.post("/v1/admin/reindex", json=body)
        if response.status_code != 202:
            raise RuntimeError(
                f"POST /v1/admin/reindex answered {response.status_code}: {response.text}"
            )
        run_id = response.json()["run"]["run_id"]
        while True:
            run: dict[str, Any] = admin.get("/v1/admin/reindex").json()["run"]
            now = time.perf_counter()
            if run["run_id"] != run_id:
                raise RuntimeError(f"another reindex ({run['run_id']}) replaced {run_id}")
            seen.append((now, str(run["phase"])))
            if run["phase"] in _ENDED:
                break
            if now - started > REINDEX_TIMEOUT_S:
                raise RuntimeError(f"reindex {label} not done in {REINDEX_TIMEOUT_S:.0f} s: {run}")
            time.sleep(POLL_S)
    if run["phase"] != "done":
        raise RuntimeError(f"reindex {label} ended {run['phase']}: {run.get('error')}")
    timing = ReindexTiming(label, run, seen[-1][0] - started, phase_durations(started, seen))
    progress(
        f"reindex {label}: {timing.total} chunks ({run['copied']} copied, {run['embedded']} "
        f"embedded, {run['cached']} cached) in {timing.wall_s:.1f} s"
    )
    return timing


def _found_notes(system: BenchSystem) -> frozenset[str]:
    """The notes the check question's answer cites, the caches bypassed."""
    with system.client() as http:
        response = http.post("/v1/questions", json={"question": CHECK_QUESTION, "cache": "bypass"})
        if response.status_code != 202:
            raise RuntimeError(f"asking answered {response.status_code}: {response.text}")
        poll = response.json()["poll"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job: dict[str, Any] = http.get(poll).json()
            if job["status"] == "failed":
                raise RuntimeError(f"the check question failed: {job.get('error')}")
            if job["status"] == "succeeded":
                return frozenset(str(s["document_id"]) for s in job["sources"])
            time.sleep(0.05)
    raise RuntimeError("the check question was not answered in 120 s")


@dataclass
class _Load:
    """Clients asking in a closed loop, on a thread of their own, until stopped."""

    questions: Iterator[str]
    samples: list[LoadSample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    async def run(self, api_url: str) -> None:
        limits = httpx.Limits(max_connections=LOAD_CLIENTS)
        async with httpx.AsyncClient(
            base_url=api_url,
            headers={"Authorization": f"Bearer {BENCH_API_KEY}"},
            timeout=30,
            limits=limits,
        ) as http:
            await asyncio.gather(*(self._client(http) for _ in range(LOAD_CLIENTS)))

    async def _client(self, http: httpx.AsyncClient) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                ok = await _ask(http, next(self.questions))
            except httpx.HTTPError:
                ok = False
            self.samples.append(LoadSample(started, time.perf_counter(), ok))


async def _ask(http: httpx.AsyncClient, question: str) -> bool:
    response = await http.post("/v1/questions", json={"question": question, "cache": "bypass"})
    if response.status_code != 202:
        return False
    poll = response.json()["poll"]
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline:
        await asyncio.sleep(LOAD_POLL_S)
        job = (await http.get(poll)).json()
        if job.get("status") in ("succeeded", "failed"):
            return bool(job["status"] == "succeeded")
    return False


def _reindex_under_load(
    system: BenchSystem, *, load_s: float
) -> tuple[ReindexTiming, list[LoadSample], list[LoadSample]]:
    """`load_s` of questions alone, then an unchanged reindex under the same load."""
    questions = unique_questions(500, seed=5, tag=f"reindex-{time.time_ns() % 10**6}")
    load = _Load(itertools.cycle(questions))
    thread = threading.Thread(
        target=lambda: asyncio.run(load.run(system.cluster.api_url)), name="reindex-load"
    )
    thread.start()
    try:
        time.sleep(load_s)
        began = time.perf_counter()
        timing = _reindex(system, "(c) unchanged, under load", model=None)
        ended = time.perf_counter()
    finally:
        load.stop.set()
        thread.join(180)
    without, during = split_load(load.samples, began, ended)
    progress(f"reindex (c): {len(without)} questions before the reindex, {len(during)} during it")
    return timing, without, during


def _report(
    system: BenchSystem,
    *,
    copy_dir: Path,
    first_model: str,
    runs: tuple[ReindexTiming, ReindexTiming, ReindexTiming],
    without: Sequence[LoadSample],
    during: Sequence[LoadSample],
    load_s: float,
    stable: bool,
    final: dict[str, Any],
) -> BenchResult:
    full, unchanged = runs[0], runs[1]
    speedup = ratio(full.wall_s, unchanged.wall_s)
    live_speedup = ratio(full.live_s, unchanged.live_s)
    build_speedup = ratio(full.phases_s.get("build", 0.0), unchanged.phases_s.get("build", 0.0))
    settings = system.settings
    print()
    print("== reindex: an unchanged reindex (vectors copied) vs a full re-embedding ==")
    print(
        f"  corpus: {len(system.notes)} notes = {system.chunks:,} chunks; "
        f"batches of {settings.reindex_batch_size}; Qdrant Edge; POST to phase done, "
        f"polled every {POLL_S * 1000:.0f} ms"
    )
    print(
        f"  (a) model {copy_dir} (a saved copy of {first_model}: another name, so no cached "
        "vector; every chunk embedded)"
    )
    print("  (b) right after it, no model: the live one (the copy), every vector copied")
    print(f"  (c) as (b), while {LOAD_CLIENTS} clients ask questions (caches bypassed)")
    print_table(
        [
            "run",
            "chunks",
            "copied",
            "embedded",
            "wall s",
            "live at s",
            "chunks/s",
            "s per 10k",
            "build chunks/s",
            "optimize s",
        ],
        [
            [
                t.label,
                f"{t.total:,}",
                f"{t.run['copied']:,}",
                f"{t.run['embedded']:,}",
                f"{t.wall_s:.2f}",
                f"{t.live_s:.2f}",
                f"{t.chunks_per_s:.1f}",
                f"{t.s_per_10k:.1f}",
                f"{t.build_chunks_per_s:.1f}",
                f"{t.optimize_s:.2f}" if t.optimize_s is not None else "-",
            ]
            for t in runs
        ],
    )
    print(
        f"  speed-up (a)/(b): wall {format_ratio(speedup)} (issue target: at least "
        f"{TARGET_SPEEDUP:.0f}x: {'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}); "
        f"to the switch {format_ratio(live_speedup)}; build phase alone "
        f"{format_ratio(build_speedup)}"
    )
    print(
        "  wall: POST to phase done as polled; live at: the run's start to its switch, by its "
        f"record; after the switch, settle waits a fixed {SETTLE_AFTER_S:.0f} s before it "
        "copies writes that raced the switch"
    )
    print(
        "  seconds in each phase, as polled (a phase shorter than the polling counts in the "
        "one before):"
    )
    print_table(
        ["run", *PHASES],
        [[t.label, *(f"{t.phases_s.get(p, 0.0):.2f}" for p in PHASES)] for t in runs],
        indent=4,
    )
    rows = [
        SummaryRow(
            "reindex",
            "chunks/s, unchanged",
            unchanged.chunks_per_s,
            full.chunks_per_s,
            "chunks/s",
            "full re-embedding",
        ),
        SummaryRow(
            "reindex",
            "build chunks/s, unchanged",
            unchanged.build_chunks_per_s,
            full.build_chunks_per_s,
            "chunks/s",
            "full re-embedding",
        ),
    ]
    latency: dict[str, Any] = {"load_s": load_s}
    failed = {
        "without": sum(not s.ok for s in without),
        "during": sum(not s.ok for s in during),
    }
    latency["failed"] = failed
    if [s for s in without if s.ok] and [s for s in during if s.ok]:
        quiet = summarise([s.latency_ms for s in without if s.ok])
        busy = summarise([s.latency_ms for s in during if s.ok])
        latency["without_ms"] = quiet.as_dict()
        latency["during_ms"] = busy.as_dict()
        print(
            f"  (c) question latency, {LOAD_CLIENTS} clients, polling every "
            f"{LOAD_POLL_S * 1000:.0f} ms: {load_s:.0f} s without a reindex, then during (c)"
        )
        print_table(
            ["latency (ms)", "n", "failed", "p50", "p99", "questions/s"],
            [
                _latency_row("without a reindex", quiet, failed["without"], without),
                _latency_row("during (c)", busy, failed["during"], during),
                [
                    "ratio during/without",
                    "",
                    "",
                    format_ratio(ratio(busy.p50, quiet.p50)),
                    format_ratio(ratio(busy.p99, quiet.p99)),
                    "",
                ],
            ],
            indent=4,
        )
        rows += [
            SummaryRow(
                "reindex",
                f"question {p}, during unchanged",
                getattr(busy, p),
                getattr(quiet, p),
                "ms",
                "no reindex",
            )
            for p in ("p50", "p99")
        ]
    else:
        print(f"  (c) too few questions answered to compare: {failed} failed")
    live = final["live"]
    kept = [f"{g['number']}:{g['state']}" for g in final["generations"]]
    print(
        f"  left: generation {live['number']} live ({live['model']}); generations {kept}; "
        f"the check question found the same notes before and after"
        f"{'' if stable else ' (but other notes right after (a))'}"
    )
    return BenchResult(
        "reindex",
        rows=rows,
        details={
            "chunks": system.chunks,
            "notes": len(system.notes),
            "batch_size": settings.reindex_batch_size,
            "speedup_wall": round(speedup, 3),
            "speedup_build": round(build_speedup, 3),
            "speedup_to_switch": round(live_speedup, 3),
            "target_speedup": TARGET_SPEEDUP,
            "runs": {t.label: t.as_dict() for t in runs},
            "latency": latency,
            "live_after": live,
        },
    )


def _latency_row(
    label: str, summary: Summary, failed: int, samples: Sequence[LoadSample]
) -> list[str]:
    span = max(s.ended for s in samples) - min(s.started for s in samples)
    return [
        label,
        str(summary.n),
        str(failed),
        f"{summary.p50:.0f}",
        f"{summary.p99:.0f}",
        f"{summary.n / span:.2f}" if span > 0 else "-",
    ]
