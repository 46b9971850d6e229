"""The system under test: its own redis-server, the four real pools and the API, on loopback."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.notes import BenchNote
from rag.settings import Settings
from tests.cluster import Cluster, WorkerHost, running_cluster, running_redis

__all__ = [
    "BENCH_API_KEY",
    "BENCH_TENANT",
    "INGEST_API_KEY",
    "INGEST_TENANT",
    "ROLES",
    "Answered",
    "BenchSystem",
    "ask_and_wait",
    "cpu_by_role",
    "ingest_notes",
    "progress",
    "running_system",
]

# The processes a benchmark's CPU is told apart by (`cpu_by_role`).
ROLES = ("embed", "retrieve", "generate", "index", "api", "redis", "load generator")

BENCH_API_KEY = "bench-key-0123456789"
BENCH_TENANT = "bench"
# A second tenant, for notes ingested while the first one's questions are timed.
INGEST_API_KEY = "bench-ingest-key-0123456789"
INGEST_TENANT = "bench-ingest"


def progress(message: str) -> None:
    """What the run is doing, on stderr, so stdout holds only the figures."""
    print(f"  … {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BenchSystem:
    cluster: Cluster
    settings: Settings  # as the pools and the API see it
    work_dir: Path
    notes: Sequence[BenchNote]
    chunks: int
    ingest_s: float

    @property
    def redis_url(self) -> str:
        return self.cluster.redis_url

    def client(self, *, timeout: float = 30) -> httpx.Client:
        return httpx.Client(
            base_url=self.cluster.api_url,
            headers={"Authorization": f"Bearer {BENCH_API_KEY}"},
            timeout=timeout,
        )


@contextmanager
def running_system(
    work_dir: Path, notes: Sequence[BenchNote], extra_env: dict[str, str] | None = None
) -> Iterator[BenchSystem]:
    """Start everything, ingest `notes` over HTTP and wait until every one is indexed."""
    env = {
        "SCRIBES_API_KEYS": f"{BENCH_API_KEY}={BENCH_TENANT},{INGEST_API_KEY}={INGEST_TENANT}",
        # Empty: the extractive writer, whatever the caller's environment holds.
        "ANTHROPIC_API_KEY": "",
        **(extra_env or {}),
    }
    settings = Settings(**env)  # type: ignore[arg-type]
    with running_redis(work_dir / "redis") as redis_server:
        progress(f"redis-server on {redis_server.url}; starting the four pools and the API")
        started = time.perf_counter()
        with running_cluster(work_dir / "cluster", redis_server.url, env) as cluster:
            progress(f"cluster ready in {time.perf_counter() - started:.1f} s at {cluster.api_url}")
            started = time.perf_counter()
            with httpx.Client(
                base_url=cluster.api_url,
                headers={"Authorization": f"Bearer {BENCH_API_KEY}"},
                timeout=30,
            ) as http:
                chunks = ingest_notes(http, notes)
            ingest_s = time.perf_counter() - started
            progress(f"ingested {len(notes)} notes ({chunks} chunks) in {ingest_s:.1f} s")
            yield BenchSystem(cluster, settings, work_dir, notes, chunks, ingest_s)


def ingest_notes(http: httpx.Client, notes: Sequence[BenchNote], timeout_s: float = 600) -> int:
    """Submit every note, then wait for all to be indexed; returns the chunks written."""
    revisions: dict[str, int] = {}
    for note in notes:
        response = http.post(
            "/v1/documents", json={"id": note.id, "title": note.title, "text": note.text}
        )
        if response.status_code != 202:
            raise RuntimeError(
                f"ingesting {note.id} answered {response.status_code}: {response.text}"
            )
        revisions[note.id] = int(response.json()["revision"])
    deadline = time.monotonic() + timeout_s
    while True:
        documents: list[dict[str, Any]] = http.get("/v1/documents").json()["documents"]
        current = {d["id"]: d for d in documents if revisions.get(d["id"]) == d["revision"]}
        failed = [d for d in current.values() if d["status"] == "failed"]
        if failed:
            raise RuntimeError(f"indexing failed: {failed[0]['id']}: {failed[0]['error']}")
        done = [d for d in current.values() if d["status"] == "indexed"]
        if len(done) == len(revisions):
            return sum(int(d["chunks"]) for d in done)
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(done)} of {len(revisions)} notes indexed in {timeout_s:.0f} s"
            )
        time.sleep(0.5)


@dataclass(frozen=True, slots=True)
class Answered:
    """A question as a client saw it: the first response's status, the final job, the wait."""

    status_code: int
    job: dict[str, Any]
    latency_ms: float


# A long poll's wait: the API's most. The request returns as soon as the job finishes.
LONG_POLL_S = 30
FINISHED_STATUSES = ("succeeded", "failed", "cancelled")


def ask_and_wait(
    http: httpx.Client,
    question: str,
    *,
    poll_s: float | None,
    timeout_s: float = 60,
    submit_waits: bool = False,
) -> Answered:
    """POST the question, then wait for its job: poll every `poll_s`, or with None hold one
    long poll (`?wait=`) until it is finished. With `submit_waits` the POST itself waits
    (`Prefer: wait=`), and a job not finished by then is long-polled."""
    started = time.perf_counter()
    headers = {"Prefer": f"wait={LONG_POLL_S}"} if submit_waits else {}
    response = http.post("/v1/questions", json={"question": question}, headers=headers)
    if response.status_code == 200:
        return Answered(200, response.json(), (time.perf_counter() - started) * 1000)
    if response.status_code != 202:
        raise RuntimeError(f"asking answered {response.status_code}: {response.text}")
    poll = response.json()["poll"]
    deadline = started + timeout_s
    while True:
        if poll_s is None:
            job: dict[str, Any] = http.get(poll, params={"wait": LONG_POLL_S}).json()
        else:
            time.sleep(poll_s)
            job = http.get(poll).json()
        if job.get("status") in FINISHED_STATUSES:
            return Answered(202, job, (time.perf_counter() - started) * 1000)
        if time.perf_counter() > deadline:
            raise RuntimeError(f"question not answered in {timeout_s:.0f} s: {job}")


@contextmanager
def cpu_by_role(
    system: BenchSystem, extra: Sequence[WorkerHost] = ()
) -> Iterator[dict[str, float]]:
    """CPU seconds each process type used during the block, summed over its process trees
    (a prefork pool's main process and its child). No process of the system starts or exits
    while a level runs, so two readings are enough."""
    roots: dict[str, list[psutil.Process]] = {role: [] for role in ROLES}
    supervisors = [system.cluster.supervisor, *(host.supervisor for host in extra)]
    for supervisor in supervisors:
        for name, process in supervisor.children.items():
            role = name.removeprefix("pool:")
            if role in roots:
                roots[role].append(psutil.Process(process.pid))
    me = psutil.Process(os.getpid())
    roots["redis"] = [p for p in me.children() if p.name().startswith("redis-server")]
    roots["load generator"] = [me]

    def reading() -> dict[str, float]:
        used = dict.fromkeys(ROLES, 0.0)
        for role, processes in roots.items():
            for root in processes:
                tree = [root] if role == "load generator" else [root, *_descendants(root)]
                for process in tree:
                    try:
                        times = process.cpu_times()
                    except psutil.Error:
                        continue
                    used[role] += times.user + times.system
        return used

    start = reading()
    used: dict[str, float] = {}
    try:
        yield used
    finally:
        end = reading()
        used.update({role: end[role] - start[role] for role in ROLES})


def _descendants(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []
