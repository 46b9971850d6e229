"""Benchmark `faults`: a generate pool killed under load, and an outage of the language model,
each run twice on fresh clusters: with the feature that handles it, and the same run without.

- **kill**: the message leases and the stall sweep (`workers.leases`; visibility timeout 20 s,
  stall sweep 90 s) against what the system did before them, both at 3600 s: Celery's Redis
  transport handed a dead worker's messages back after an hour.
- **outage**: the shared circuit breaker (`rag.breaker`) against one that cannot open
  (`SCRIBES_BREAKER_FAILURES=1000000`), where every job retries on its own until it gives up.

Each run starts its own redis-server, four pools, API and fake model (`tests.fake_anthropic`)
on loopback. The shared bench system is not used: a killed pool or a tripped breaker would
disturb whatever benchmark ran on it next.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count, islice
from pathlib import Path
from typing import Any

import httpx

from bench.machine import CpuShare, cpu_share
from bench.notes import BenchNote, bench_notes
from bench.report import BenchResult, SummaryRow, print_table
from bench.stats import summarise
from bench.system import BENCH_API_KEY, BENCH_TENANT, ask_and_wait, ingest_notes, progress
from tests.cluster import Cluster, running_cluster, running_redis
from tests.fake_anthropic import DEFAULT_API_KEY, FakeAnthropic

__all__ = ["KillRun", "OutageRun", "run_faults"]

CLIENTS = 16
POLL_S = 0.1
# A job its client has stopped waiting for is still watched, less often.
SLOW_POLL_S = 0.5

KILL_QUESTIONS = 300
KILL_AFTER = 100  # questions asked when the generate pool is killed: about a third
RESTART_AFTER_S = 3.0
KILL_LLM_DELAY_S = 1.0
# A kill client waits this long for its answer, then leaves the job to its watcher and asks
# the next question: without the leases a caught job never comes back, and a client that
# waited for it would stop the load.
PATIENCE_S = 10.0
STRANDED_AFTER_S = 60.0

OUTAGE_LOAD_S = 45.0
OUTAGE_AT_S = 7.5
OUTAGE_S = 30.0
OUTAGE_STATUS = 529  # overloaded_error, answered at once
DRAIN_S = 150.0  # after the load, how long its last jobs get to finish

WITHOUT_LEASES = {"SCRIBES_VISIBILITY_TIMEOUT_S": "3600", "SCRIBES_STALL_S": "3600"}
WITHOUT_BREAKER = {"SCRIBES_BREAKER_FAILURES": "1000000"}
SAMPLE_NOTE_ID = "001-the-prodigal-son"
# About the sample note, so that retrieval finds passages and the model is called.
QUESTION_TOPICS = (
    "Why did the father run down the road to meet his younger son",
    "What did the robe, the ring and the sandals mean in the prodigal son story",
    "Why did the older brother refuse to go in when he heard the music",
    "What did asking for his share of the property early mean in that culture",
    "What did Pastor Ruth say about resentment and the older brother",
    "Why was the fattened calf a public party and not a private one",
    "How did the father interrupt the younger son's rehearsed speech",
    "Why did the older brother call him this son of yours and not my brother",
)


@dataclass
class _Asked:
    """One question as the load saw it; times are `time.time()`, as the job record's are."""

    submitted_at: float
    job_id: str = ""
    status: str = "unfinished"  # succeeded, failed, refused (the POST), unfinished
    total_s: float | None = None  # the job record's own end to end
    no_context: bool = False

    @property
    def finished_at(self) -> float | None:
        return None if self.total_s is None else self.submitted_at + self.total_s

    def unfinished_at(self, moment: float) -> bool:
        done = self.finished_at
        return self.submitted_at < moment and (done is None or done > moment)


@dataclass
class _Watch:
    stop_at: float = math.inf


@dataclass(frozen=True)
class _Rig:
    cluster: Cluster
    fake: FakeAnthropic


@dataclass
class KillRun:
    label: str
    settings: str
    asked: list[_Asked]
    killed_at: float
    load_s: float
    stop_at: float  # the end of the load plus STRANDED_AFTER_S
    machine: CpuShare = field(default_factory=CpuShare)

    @property
    def caught(self) -> list[_Asked]:
        return [a for a in self.asked if a.unfinished_at(self.killed_at)]

    @property
    def others_p50_s(self) -> float:
        others = [a for a in self.asked if not a.unfinished_at(self.killed_at)]
        return summarise([a.total_s for a in others if a.total_s is not None]).p50

    def count(self, status: str) -> int:
        return sum(a.status == status for a in self.asked)

    def extra_latency(self, q: float) -> tuple[float, bool]:
        """Percentile `q` of the caught jobs' extra latency; True when only a lower bound."""
        baseline = self.others_p50_s
        values = [
            (a.total_s - baseline, False)
            if a.total_s is not None
            else (self.stop_at - a.submitted_at - baseline, True)
            for a in self.caught
        ]
        return _censored_percentile(values, q)

    def as_dict(self) -> dict[str, Any]:
        p50, p50_bound = self.extra_latency(50)
        p99, p99_bound = self.extra_latency(99)
        return {
            "settings": self.settings,
            "asked": len(self.asked),
            "succeeded": self.count("succeeded"),
            "failed": self.count("failed") + self.count("refused"),
            "stranded": self.count("unfinished"),
            "no_context": sum(a.no_context for a in self.asked),
            "caught": len(self.caught),
            "others_p50_s": round(self.others_p50_s, 3),
            "extra_latency_p50_s": round(p50, 3),
            "extra_latency_p50_is_lower_bound": p50_bound,
            "extra_latency_p99_s": round(p99, 3),
            "extra_latency_p99_is_lower_bound": p99_bound,
            "load_s": round(self.load_s, 2),
            # To find a slow one in the pools' logs (`--work-dir`): they name every job.
            "caught_jobs": [
                {
                    "id": a.job_id,
                    "asked_s_before_kill": round(self.killed_at - a.submitted_at, 3),
                    "status": a.status,
                    "total_s": None if a.total_s is None else round(a.total_s, 3),
                }
                for a in self.caught
            ],
            "machine": self.machine.as_dict(),
        }


@dataclass
class OutageRun:
    label: str
    settings: str
    asked: list[_Asked]
    began_at: float
    ended_at: float
    calls_in_outage: int
    calls_total: int
    breaker_opened_at: float | None
    machine: CpuShare = field(default_factory=CpuShare)

    @property
    def waiting_at_end(self) -> list[_Asked]:
        return [a for a in self.asked if a.unfinished_at(self.ended_at)]

    def count(self, status: str) -> int:
        return sum(a.status == status for a in self.asked)

    @property
    def failed(self) -> int:
        return self.count("failed") + self.count("refused")

    @property
    def drained_s(self) -> float | None:
        """When the last job waiting at the end of the outage finished, after that end."""
        waiting = self.waiting_at_end
        ends = [a.finished_at for a in waiting]
        if not waiting or any(end is None for end in ends):
            return None
        return max(end for end in ends if end is not None) - self.ended_at

    def as_dict(self) -> dict[str, Any]:
        waiting = self.waiting_at_end
        return {
            "settings": self.settings,
            "asked": len(self.asked),
            "succeeded": self.count("succeeded"),
            "failed": self.failed,
            "unfinished": self.count("unfinished"),
            "no_context": sum(a.no_context for a in self.asked),
            "llm_calls_in_outage": self.calls_in_outage,
            "llm_calls_total": self.calls_total,
            "breaker_opened_s_into_outage": None
            if self.breaker_opened_at is None
            else round(self.breaker_opened_at - self.began_at, 2),
            "waiting_at_end": len(waiting),
            "waiting_then_succeeded": sum(a.status == "succeeded" for a in waiting),
            "drained_s": None if self.drained_s is None else round(self.drained_s, 2),
            "machine": self.machine.as_dict(),
        }


def run_faults(work_dir: Path) -> BenchResult:
    """Both benchmarks, each with and without its feature; four clusters, one after another."""
    note = next(n for n in bench_notes(0) if n.id == SAMPLE_NOTE_ID)
    kills = [
        _kill_run(work_dir / "kill-with", note, "with", "visibility 20 s, stall 90 s", {}),
        _kill_run(
            work_dir / "kill-without",
            note,
            "without",
            "visibility 3600 s, stall 3600 s",
            WITHOUT_LEASES,
        ),
    ]
    outages = [
        _outage_run(work_dir / "outage-with", note, "with", "breaker at 5 failures", {}),
        _outage_run(
            work_dir / "outage-without",
            note,
            "without",
            "breaker at 1000000 failures",
            WITHOUT_BREAKER,
        ),
    ]
    _print_kill(kills)
    _print_outage(outages)
    with_kill, without_kill = kills
    with_outage, without_outage = outages
    return BenchResult(
        "faults",
        rows=[
            SummaryRow(
                "faults",
                f"kill: stranded or failed of {KILL_QUESTIONS}",
                _lost(with_kill),
                _lost(without_kill),
                "jobs",
                "no leases, no sweep",
            ),
            *(
                SummaryRow(
                    "faults",
                    f"kill: extra latency p{q}, caught",
                    with_kill.extra_latency(q)[0],
                    without_kill.extra_latency(q)[0],
                    "s",
                    "no leases (>= if stranded)",
                )
                for q in (50, 99)
            ),
            SummaryRow(
                "faults",
                f"outage: model calls in {OUTAGE_S:.0f} s",
                with_outage.calls_in_outage,
                without_outage.calls_in_outage,
                "calls",
                "breaker cannot open",
            ),
            SummaryRow(
                "faults",
                "outage: jobs failed",
                with_outage.failed,
                without_outage.failed,
                "jobs",
                "breaker cannot open",
            ),
        ],
        details={
            "clients": CLIENTS,
            "kill": {run.label: run.as_dict() for run in kills},
            "outage": {run.label: run.as_dict() for run in outages},
        },
    )


def _lost(run: KillRun) -> int:
    return run.count("unfinished") + run.count("failed") + run.count("refused")


def _questions() -> Iterator[str]:
    """Distinct questions for ever, so that the exact-answer cache never serves one; each run
    asks the same ones, in the same order, on a cluster of its own."""
    for number in count():
        topic = QUESTION_TOPICS[number % len(QUESTION_TOPICS)]
        yield f"{topic} (asked as faults-{number})?"


@contextmanager
def _rig(work_dir: Path, note: BenchNote, env: Mapping[str, str]) -> Iterator[_Rig]:
    """Redis, the pools, the API and a fake model; the note indexed, every topic answered."""
    with FakeAnthropic() as fake, running_redis(work_dir / "redis") as redis_server:
        settings = {
            "SCRIBES_API_KEYS": f"{BENCH_API_KEY}={BENCH_TENANT}",
            "ANTHROPIC_API_KEY": DEFAULT_API_KEY,
            "ANTHROPIC_BASE_URL": fake.base_url,
            **env,
        }
        started = time.perf_counter()
        with running_cluster(work_dir / "cluster", redis_server.url, settings) as cluster:
            progress(f"faults: cluster ready in {time.perf_counter() - started:.1f} s")
            with httpx.Client(
                base_url=cluster.api_url,
                headers={"Authorization": f"Bearer {BENCH_API_KEY}"},
                timeout=30,
            ) as http:
                ingest_notes(http, [note])
                for topic in QUESTION_TOPICS:
                    calls = fake.received
                    asked = f"{topic} (asked as faults-check)?"
                    job = ask_and_wait(http, asked, poll_s=0.05).job
                    if job["no_context"] or job["status"] != "succeeded" or fake.received == calls:
                        raise RuntimeError(
                            f"the note {note.id} does not answer {asked!r} through the model: "
                            f"{job['status']}, no_context {job['no_context']}, {job['error']}"
                        )
            yield _Rig(cluster, fake)


def _kill_run(
    work_dir: Path,
    note: BenchNote,
    label: str,
    described: str,
    env: Mapping[str, str],
) -> KillRun:
    progress(f"faults: kill, {label} ({described}): starting a cluster")
    with _rig(work_dir, note, env) as rig:
        rig.fake.delay(KILL_LLM_DELAY_S)
        batch = list(islice(_questions(), KILL_QUESTIONS))
        with cpu_share() as share:
            run = asyncio.run(_kill_load(rig, batch, label, described))
        run.machine = share
    progress(
        f"faults: kill, {label}: {run.count('succeeded')} succeeded, "
        f"{run.count('unfinished')} stranded, {len(run.caught)} caught by the kill"
    )
    return run


async def _kill_load(rig: _Rig, questions: Sequence[str], label: str, described: str) -> KillRun:
    asked: list[_Asked] = []
    followers: list[asyncio.Task[None]] = []
    pending = iter(questions)
    watch = _Watch()
    reached = asyncio.Event()
    killed_at = 0.0
    async with _load_client(rig.cluster) as http:

        async def client() -> None:
            for question in pending:
                record = await _submit(http, question)
                asked.append(record)
                if len(asked) >= KILL_AFTER:
                    reached.set()
                if not record.job_id:
                    continue
                follower = asyncio.create_task(_follow(http, record, watch))
                followers.append(follower)
                await asyncio.wait({follower}, timeout=PATIENCE_S)

        async def kill() -> None:
            nonlocal killed_at
            await reached.wait()
            killed_at = time.time()
            await asyncio.to_thread(rig.cluster.kill_pool, "generate")
            progress(f"faults: kill, {label}: generate pool SIGKILLed after {len(asked)} asked")
            await asyncio.sleep(RESTART_AFTER_S)
            await asyncio.to_thread(rig.cluster.restart_pool, "generate")

        started = time.time()
        await asyncio.gather(*(client() for _ in range(CLIENTS)), kill())
        ended = time.time()
        watch.stop_at = ended + STRANDED_AFTER_S
        progress(
            f"faults: kill, {label}: all asked in {ended - started:.1f} s; watching the "
            f"unfinished for up to {STRANDED_AFTER_S:.0f} s"
        )
        await asyncio.gather(*followers)
    return KillRun(label, described, asked, killed_at, ended - started, watch.stop_at)


def _outage_run(
    work_dir: Path,
    note: BenchNote,
    label: str,
    described: str,
    env: Mapping[str, str],
) -> OutageRun:
    progress(f"faults: outage, {label} ({described}): starting a cluster")
    with _rig(work_dir, note, env) as rig:
        with cpu_share() as share:
            run = asyncio.run(_outage_load(rig, _questions(), label, described))
        run.machine = share
    progress(
        f"faults: outage, {label}: {run.calls_in_outage} model calls in the outage, "
        f"{run.failed} failed, {len(run.waiting_at_end)} waiting at its end"
    )
    return run


async def _outage_load(
    rig: _Rig, questions: Iterator[str], label: str, described: str
) -> OutageRun:
    asked: list[_Asked] = []
    started = time.time()
    stop_asking = started + OUTAGE_LOAD_S
    watch = _Watch(stop_at=stop_asking + DRAIN_S)
    window: list[float] = []
    calls: list[int] = []
    opened: list[float] = []
    async with _load_client(rig.cluster) as http:

        async def client() -> None:
            # A closed loop: ask, wait for the answer (or the failure), ask the next.
            while time.time() < stop_asking:
                record = await _submit(http, next(questions))
                asked.append(record)
                if record.job_id:
                    await _follow(http, record, watch)

        async def outage() -> None:
            await asyncio.sleep(OUTAGE_AT_S)
            before = rig.fake.received
            window.append(time.time())
            rig.fake.down(OUTAGE_STATUS)
            progress(f"faults: outage, {label}: the model answers {OUTAGE_STATUS} from now")
            await asyncio.sleep(OUTAGE_S)
            rig.fake.down(None)
            window.append(time.time())
            calls.append(rig.fake.received - before)
            progress(f"faults: outage, {label}: the model is back")

        async def breaker() -> None:
            # When the shared breaker first opened, as `GET /v1/status` reports it.
            while not opened and time.time() < stop_asking:
                await asyncio.sleep(0.25)
                try:
                    status = (await http.get("/v1/status")).json()
                except httpx.HTTPError:
                    continue
                if window and status["breakers"]["llm"]["state"] != "closed":
                    opened.append(time.time())

        await asyncio.gather(*(client() for _ in range(CLIENTS)), outage(), breaker())
    total = rig.fake.received
    return OutageRun(
        label,
        described,
        asked,
        window[0],
        window[1],
        calls[0],
        total,
        opened[0] if opened else None,
    )


def _load_client(cluster: Cluster) -> httpx.AsyncClient:
    connections = 2 * CLIENTS  # the clients, and the watchers of jobs they stopped waiting for
    return httpx.AsyncClient(
        base_url=cluster.api_url,
        headers={"Authorization": f"Bearer {BENCH_API_KEY}"},
        timeout=30,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


async def _submit(http: httpx.AsyncClient, question: str) -> _Asked:
    record = _Asked(submitted_at=time.time())
    try:
        response = await http.post("/v1/questions", json={"question": question})
    except httpx.HTTPError:
        record.status = "refused"
        return record
    if response.status_code != 202:
        # A distinct question is never cached (200); anything else is the API refusing it.
        record.status = "refused"
        return record
    record.job_id = str(response.json()["id"])
    return record


async def _follow(http: httpx.AsyncClient, record: _Asked, watch: _Watch) -> None:
    """Poll the job until it is finished, or until `watch.stop_at`."""
    while True:
        waited = time.time() - record.submitted_at
        await asyncio.sleep(POLL_S if waited < PATIENCE_S else SLOW_POLL_S)
        try:
            response = await http.get(f"/v1/questions/{record.job_id}")
        except httpx.HTTPError:
            response = None
        if response is not None and response.status_code == 200:
            job: dict[str, Any] = response.json()
            if job["status"] in ("succeeded", "failed"):
                record.status = job["status"]
                total_ms = job["timings"].get("total")
                record.total_s = (
                    total_ms / 1000 if total_ms is not None else time.time() - record.submitted_at
                )
                record.no_context = bool(job["no_context"])
                return
        if time.time() >= watch.stop_at:
            return


def _censored_percentile(values: Sequence[tuple[float, bool]], q: float) -> tuple[float, bool]:
    """Linear-interpolated percentile (as numpy's) of values some of which are lower bounds."""
    if not values:
        return 0.0, False
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low, high = ordered[math.floor(rank)], ordered[math.ceil(rank)]
    value = low[0] + (high[0] - low[0]) * (rank - math.floor(rank))
    return value, low[1] or high[1]


def _seconds(value: tuple[float, bool]) -> str:
    figure, lower_bound = value
    return f">= {figure:.1f} s" if lower_bound else f"{figure:.1f} s"


def _print_kill(runs: Sequence[KillRun]) -> None:
    print()
    print("== faults / kill: the generate pool SIGKILLed under load, with and without leases ==")
    print(
        f"  {KILL_QUESTIONS} distinct questions about a sample note from {CLIENTS} clients; the "
        f"fake model answers each call in {KILL_LLM_DELAY_S:.0f} s. After question {KILL_AFTER} "
        f"is asked the generate pool is SIGKILLed, and restarted {RESTART_AFTER_S:.0f} s later."
    )
    print(
        f"  a client waits up to {PATIENCE_S:.0f} s for its answer, then leaves the job to a "
        f"watcher and asks the next; stranded: not finished {STRANDED_AFTER_S:.0f} s after the "
        "last question was asked (the run waits no longer)"
    )
    print(
        "  caught: jobs in flight at the kill; extra latency: a caught job's end to end (its "
        "record's total) minus the p50 of the jobs not caught"
    )
    rows = [
        ["settings", *(r.settings for r in runs)],
        ["asked", *(str(len(r.asked)) for r in runs)],
        ["succeeded", *(str(r.count("succeeded")) for r in runs)],
        ["failed", *(str(r.count("failed") + r.count("refused")) for r in runs)],
        ["stranded", *(str(r.count("unfinished")) for r in runs)],
        ["answered with no context", *(str(sum(a.no_context for a in r.asked)) for r in runs)],
        ["caught by the kill", *(str(len(r.caught)) for r in runs)],
        ["  their extra latency p50", *(_seconds(r.extra_latency(50)) for r in runs)],
        ["  their extra latency p99", *(_seconds(r.extra_latency(99)) for r in runs)],
        ["p50 end to end, not caught", *(f"{r.others_p50_s:.2f} s" for r in runs)],
        ["all asked in", *(f"{r.load_s:.1f} s" for r in runs)],
    ]
    print_table(["", "with the feature", "without it"], rows)
    for run in runs:
        print(f"  {run.label}: {run.machine.describe().strip()}")


def _print_outage(runs: Sequence[OutageRun]) -> None:
    print()
    print("== faults / outage: the model down under load, with and without the breaker ==")
    print(
        f"  {CLIENTS} clients in a closed loop for {OUTAGE_LOAD_S:.0f} s, distinct questions; "
        f"from {OUTAGE_AT_S:.1f} s the fake model answers {OUTAGE_STATUS} at once to every call "
        f"for {OUTAGE_S:.0f} s; otherwise it answers at once"
    )
    rows = [
        ["settings", *(r.settings for r in runs)],
        ["asked", *(str(len(r.asked)) for r in runs)],
        ["succeeded", *(str(r.count("succeeded")) for r in runs)],
        ["failed", *(str(r.failed) for r in runs)],
        ["unfinished at the end", *(str(r.count("unfinished")) for r in runs)],
        ["answered with no context", *(str(sum(a.no_context for a in r.asked)) for r in runs)],
        [f"model calls in the {OUTAGE_S:.0f} s outage", *(str(r.calls_in_outage) for r in runs)],
        ["model calls in the whole run", *(str(r.calls_total) for r in runs)],
        [
            "breaker opened, into the outage",
            *(
                "never"
                if r.breaker_opened_at is None
                else f"{r.breaker_opened_at - r.began_at:.1f} s"
                for r in runs
            ),
        ],
        ["waiting when the outage ended", *(str(len(r.waiting_at_end)) for r in runs)],
        [
            "  of them succeeded later",
            *(str(sum(a.status == "succeeded" for a in r.waiting_at_end)) for r in runs),
        ],
        [
            "  the last finished after",
            *("-" if r.drained_s is None else f"{r.drained_s:.1f} s" for r in runs),
        ],
    ]
    print_table(["", "with the feature", "without it"], rows)
    for run in runs:
        print(f"  {run.label}: {run.machine.describe().strip()}")
