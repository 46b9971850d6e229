"""Benchmark `ingest`: a bulk ingest's chunks/s against raw encoding of the same texts, and
question latency under a closed-loop load with and without a bulk ingest running.

The notes go in for a tenant of their own (`bench-ingest`), so the questions' tenant sees
no corpus change (its semantic cache and retrieval stay as they were): what the ingest
costs the questions is the CPU, which is what the index pool's pacing is about.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from redis import Redis

from bench.corpus import synthetic_notes
from bench.notes import BenchNote, unique_questions
from bench.report import BenchResult, SummaryRow, print_table
from bench.stats import format_ratio, ratio, summarise
from bench.system import INGEST_API_KEY, BenchSystem, progress
from bench.throughput import LoadOutcome, closed_loop_load
from rag.chunking import chunk_text
from rag.embedding import Embedder, load_embedder
from rag.indexing import embedded_text
from rag.ingest_pace import available_cores
from rag.keys import queued_documents_key
from rag.settings import Settings
from rag.tokens import load_token_counter

__all__ = ["run_ingest"]

_RAW_BATCH = 32  # SentenceTransformer.encode's default
_DRAIN_POLL_S = 0.05


@dataclass
class _Ingest:
    """A bulk ingest: when it was submitted and when the last note left the queue."""

    notes: int
    started: float = 0.0
    submitted: float = 0.0
    finished: float = 0.0
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.finished - self.started


def run_ingest(
    system: BenchSystem,
    *,
    notes: int,
    load_s: float,
    clients: int,
    poll_s: float,
    tag: str,
) -> BenchResult:
    settings = system.settings
    redis = Redis.from_url(system.redis_url, decode_responses=True)
    http = httpx.Client(
        base_url=system.cluster.api_url,
        headers={"Authorization": f"Bearer {INGEST_API_KEY}"},
        timeout=30,
    )
    cores = available_cores()
    with http:
        # (a) A bulk ingest with nothing else running, against the model alone on every core.
        bulk = _fresh_notes(notes, seed=101, prefix=f"bulk-{tag}")
        texts = _chunk_texts(bulk, settings)
        embedder = load_embedder(settings.embedding_model)
        embedder.embed(texts[:_RAW_BATCH], batch_size=_RAW_BATCH, threads=cores)  # warm
        raw_before = _raw_rate(embedder, texts, cores)
        progress(f"ingest: raw encode {raw_before:.1f} chunks/s on {cores} threads; ingesting")
        alone = _Ingest(len(bulk))
        _ingest(http, redis, bulk, alone)
        chunks = _chunks_indexed(http, bulk)
        raw_after = _raw_rate(embedder, texts, cores)
        raw = max(raw_before, raw_after)
        rate = chunks / alone.seconds
        progress(f"ingest: {chunks} chunks in {alone.seconds:.1f} s; question load next")

        # (b) Question latency: quiet, during a second bulk ingest, quiet again.
        per_phase = max(200, int(load_s * clients * 10))
        questions = unique_questions(3 * per_phase, seed=4, tag=f"ingest-{tag}")
        phases: dict[str, LoadOutcome] = {}

        def load(name: str, number: int) -> LoadOutcome:
            outcome = asyncio.run(
                closed_loop_load(
                    system.cluster.api_url,
                    questions[number * per_phase : (number + 1) * per_phase],
                    concurrency=clients,
                    poll_s=poll_s,
                    max_s=load_s,
                )
            )
            if outcome.succeeded == 0:
                raise RuntimeError(f"no question succeeded {name}: {outcome}")
            phases[name] = outcome
            return outcome

        load("before", 0)
        during_notes = _fresh_notes(notes, seed=202, prefix=f"during-{tag}")
        during_ingest = _Ingest(len(during_notes))
        ingesting = threading.Thread(
            target=_ingest, args=(http, redis, during_notes, during_ingest), daemon=True
        )
        ingesting.start()
        while not during_ingest.submitted and during_ingest.error is None:
            time.sleep(0.01)  # the load starts once the notes are all queued
        load_started = time.perf_counter()
        load("during", 1)
        load_ended = time.perf_counter()
        ingesting.join()
        if during_ingest.error is not None:
            raise RuntimeError(f"the concurrent ingest failed: {during_ingest.error}")
        during_chunks = _chunks_indexed(http, during_notes)
        load("after", 2)

    quiet = summarise(phases["before"].latencies_ms + phases["after"].latencies_ms)
    during = summarise(phases["during"].latencies_ms)
    covered = min(1.0, (during_ingest.finished - load_started) / (load_ended - load_started))
    p99_ratio = ratio(during.p99, quiet.p99)

    print()
    print("== ingest: bulk ingest vs raw encoding; question latency with and without it ==")
    print(
        f"  (a) {len(bulk)} synthetic notes submitted over HTTP for tenant bench-ingest, timed "
        "from the first POST until no revision is queued; the cluster otherwise idle"
    )
    print(
        f"  baseline: Embedder.embed (SentenceTransformer.encode, batch_size={_RAW_BATCH}) of "
        f"the same {len(texts)} chunk texts in this process on {cores} torch threads, best of "
        f"before and after the ingest: {raw_before:.1f} / {raw_after:.1f} chunks/s"
    )
    print_table(
        ["ingest", "chunks", "s", "chunks/s", "raw encode chunks/s", "vs baseline"],
        [
            [
                "bulk, nothing else running",
                str(chunks),
                f"{alone.seconds:.1f}",
                f"{rate:.1f}",
                f"{raw:.1f}",
                format_ratio(ratio(rate, raw)),
            ]
        ],
    )
    print(
        f"  (b) {clients} clients in a closed loop for {load_s:.0f} s, distinct questions, "
        f"polling every {poll_s * 1000:.0f} ms: before, during a bulk ingest of "
        f"{len(during_notes)} more notes ({during_chunks} chunks, another tenant), and after"
    )
    rows = [
        [
            name,
            str(outcome.succeeded),
            f"{outcome.succeeded / outcome.elapsed_s:.1f}",
            f"{summarise(outcome.latencies_ms).p50:.0f}",
            f"{summarise(outcome.latencies_ms).p95:.0f}",
            f"{summarise(outcome.latencies_ms).p99:.0f}",
        ]
        for name, outcome in phases.items()
    ]
    print_table(["load", "answered", "q/s", "p50 ms", "p95 ms", "p99 ms"], rows)
    print(
        f"  p99 during the ingest {during.p99:.0f} ms vs {quiet.p99:.0f} ms before and after "
        f"it: {format_ratio(p99_ratio)} (target at most 2x); the ingest ran through "
        f"{covered:.0%} of the load and took {during_ingest.seconds:.1f} s "
        f"({during_chunks / during_ingest.seconds:.1f} chunks/s under the load)"
    )
    if covered < 1.0:
        print("  WARNING: the ingest ended before the load; raise the notes or shorten the load")
    return BenchResult(
        "ingest",
        rows=[
            SummaryRow("ingest", "bulk ingest chunks/s", rate, raw, "chunks/s", "raw encode"),
            SummaryRow(
                "ingest",
                f"question p99, {clients} clients, during an ingest",
                during.p99,
                quiet.p99,
                "ms",
                "p99 without it",
            ),
        ],
        details={
            "cores": cores,
            "notes": len(bulk),
            "chunks": chunks,
            "ingest_s": round(alone.seconds, 3),
            "chunks_per_s": round(rate, 3),
            "raw_encode_chunks_per_s_before_after": [round(raw_before, 3), round(raw_after, 3)],
            "ratio": round(ratio(rate, raw), 3),
            "load_s": load_s,
            "clients": clients,
            "latency_ms": {
                name: summarise(outcome.latencies_ms).as_dict() for name, outcome in phases.items()
            },
            "questions_failed": {name: o.failed + o.timed_out for name, o in phases.items()},
            "p99_ratio": round(p99_ratio, 3),
            "during_ingest": {
                "notes": len(during_notes),
                "chunks": during_chunks,
                "seconds": round(during_ingest.seconds, 3),
                "load_covered": round(covered, 3),
            },
        },
    )


def _fresh_notes(count: int, *, seed: int, prefix: str) -> list[BenchNote]:
    """Notes no earlier ingest held: their chunks miss every cache."""
    return [
        BenchNote(f"{prefix}-{note.id}", f"{note.title} ({prefix})", note.text)
        for note in synthetic_notes(count, seed=seed)
    ]


def _chunk_texts(notes: Sequence[BenchNote], settings: Settings) -> list[str]:
    """The texts the index pool embeds for `notes`: each chunk after its note's title."""
    counter = load_token_counter(settings.embedding_model)
    return [
        embedded_text(note.title, chunk.text)
        for note in notes
        for chunk in chunk_text(
            note.text,
            counter=counter,
            max_tokens=settings.chunk_tokens,
            overlap_tokens=settings.chunk_overlap_tokens,
        )
    ]


def _raw_rate(embedder: Embedder, texts: Sequence[str], threads: int) -> float:
    started = time.perf_counter()
    embedder.embed(texts, batch_size=_RAW_BATCH, threads=threads)
    return len(texts) / (time.perf_counter() - started)


def _ingest(http: httpx.Client, redis: Redis, notes: Sequence[BenchNote], out: _Ingest) -> None:
    """Submit every note, then wait until no revision is left queued (read in Redis, which
    costs the system nothing, where listing the documents over HTTP would)."""
    try:
        out.started = time.perf_counter()
        for note in notes:
            response = http.post(
                "/v1/documents", json={"id": note.id, "title": note.title, "text": note.text}
            )
            if response.status_code != 202:
                raise RuntimeError(f"ingesting {note.id}: {response.status_code} {response.text}")
        out.submitted = time.perf_counter()
        deadline = out.started + 1800
        while redis.zcard(queued_documents_key()):
            if time.perf_counter() > deadline:
                raise RuntimeError("notes still queued after 30 minutes")
            time.sleep(_DRAIN_POLL_S)
        out.finished = time.perf_counter()
    except Exception as exc:  # reported by the caller, in the main thread
        out.error = f"{exc.__class__.__name__}: {exc}"
        if threading.current_thread() is threading.main_thread():
            raise


def _chunks_indexed(http: httpx.Client, notes: Sequence[BenchNote]) -> int:
    wanted = {note.id for note in notes}
    documents: list[dict[str, Any]] = http.get("/v1/documents").json()["documents"]
    mine = [d for d in documents if d["id"] in wanted]
    bad = [d for d in mine if d["status"] != "indexed"]
    if len(mine) != len(wanted) or bad:
        raise RuntimeError(f"{len(mine)} of {len(wanted)} notes listed; not indexed: {bad[:3]}")
    return sum(int(d["chunks"]) for d in mine)
