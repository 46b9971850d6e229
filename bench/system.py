"""The system under test: its own redis-server, the four real pools and the API, on loopback."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.notes import BenchNote
from rag.settings import Settings
from tests.cluster import Cluster, running_cluster, running_redis

__all__ = [
    "BENCH_API_KEY",
    "BENCH_TENANT",
    "Answered",
    "BenchSystem",
    "ask_and_wait",
    "ingest_notes",
    "progress",
    "running_system",
]

BENCH_API_KEY = "bench-key-0123456789"
BENCH_TENANT = "bench"


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
        "SCRIBES_API_KEYS": f"{BENCH_API_KEY}={BENCH_TENANT}",
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


def ask_and_wait(
    http: httpx.Client, question: str, *, poll_s: float, timeout_s: float = 60
) -> Answered:
    """POST the question, then poll its job every `poll_s` until it is finished."""
    started = time.perf_counter()
    response = http.post("/v1/questions", json={"question": question})
    if response.status_code == 200:
        return Answered(200, response.json(), (time.perf_counter() - started) * 1000)
    if response.status_code != 202:
        raise RuntimeError(f"asking answered {response.status_code}: {response.text}")
    poll = response.json()["poll"]
    deadline = started + timeout_s
    while True:
        time.sleep(poll_s)
        job: dict[str, Any] = http.get(poll).json()
        if job.get("status") in ("succeeded", "failed"):
            return Answered(202, job, (time.perf_counter() - started) * 1000)
        if time.perf_counter() > deadline:
            raise RuntimeError(f"question not answered in {timeout_s:.0f} s: {job}")
