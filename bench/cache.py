"""Benchmark `cache`: an exact-cache answer over HTTP vs a bare Redis GET on the same stack."""

from __future__ import annotations

import time

import httpx
from redis import Redis

from bench.baseline_api import BASELINE_PATH, running_baseline_api
from bench.report import BenchResult, SummaryRow, print_table
from bench.stats import Summary, format_ratio, ratio, summarise
from bench.system import BenchSystem, ask_and_wait, progress
from rag.records.jobs import JobStore

__all__ = ["CACHE_QUESTION", "run_cache"]

CACHE_QUESTION = "Why was it undignified for the father to run to the prodigal son?"


def run_cache(system: BenchSystem, *, requests: int, warmup: int) -> BenchResult:
    with system.client() as http:
        first = ask_and_wait(http, CACHE_QUESTION, poll_s=0.01)
        if first.job["status"] != "succeeded":
            raise RuntimeError(f"the cache benchmark's question failed: {first.job}")
    key = _answer_cache_key(system, str(first.job["id"]))
    progress(f"cache: answered once ({first.latency_ms:.0f} ms); serving it from {key[:40]}…")

    body = {"question": CACHE_QUESTION}
    cached_ms: list[float] = []
    baseline_ms: list[float] = []
    sizes: dict[str, int] = {}
    with (
        running_baseline_api(
            system.redis_url, key, log_file=system.work_dir / "baseline-api.log"
        ) as baseline_url,
        system.client() as api,
        httpx.Client(base_url=baseline_url, timeout=30) as baseline,
    ):
        # Interleaved, one request of each in turn, so drift in the machine hits both alike.
        for number in range(warmup + requests):
            started = time.perf_counter()
            answer = api.post("/v1/questions", json=body)
            middle = time.perf_counter()
            plain = baseline.post(BASELINE_PATH, json=body)
            ended = time.perf_counter()
            if answer.status_code != 200 or answer.json().get("cached") != "exact":
                raise RuntimeError(
                    f"expected a 200 exact-cache answer, got {answer.status_code}: "
                    f"{answer.text[:300]}"
                )
            if plain.status_code != 200:
                raise RuntimeError(f"the baseline answered {plain.status_code}: {plain.text}")
            if number >= warmup:
                cached_ms.append((middle - started) * 1000)
                baseline_ms.append((ended - middle) * 1000)
            sizes = {"cached": len(answer.content), "baseline": len(plain.content)}

    cached, plain_summary = summarise(cached_ms), summarise(baseline_ms)
    print()
    print("== cache: an exact-cache answer over HTTP vs a bare Redis GET on the same HTTP stack ==")
    print(
        f"  {requests} sequential requests of each after {warmup} warm-up, interleaved, one "
        "keep-alive httpx connection each; uvicorn + FastAPI on loopback"
    )
    print(
        f"  response bodies: cached {sizes['cached']:,} bytes, baseline {sizes['baseline']:,} "
        "bytes (the same answer JSON)"
    )
    print_table(
        ["latency (ms)", "p50", "p95", "p99", "mean"],
        [
            _latency_row("cached  POST /v1/questions", cached),
            _latency_row(f"baseline POST {BASELINE_PATH} (one GET)", plain_summary),
            [
                "ratio cached/baseline",
                *(
                    format_ratio(ratio(getattr(cached, f), getattr(plain_summary, f)))
                    for f in ("p50", "p95", "p99", "mean")
                ),
            ],
        ],
    )
    return BenchResult(
        "cache",
        rows=[
            SummaryRow(
                "cache",
                f"{p} latency",
                getattr(cached, p),
                getattr(plain_summary, p),
                "ms",
                "Redis GET over HTTP",
            )
            for p in ("p50", "p95", "p99")
        ],
        details={
            "requests": requests,
            "warmup": warmup,
            "cached_ms": cached.as_dict(),
            "baseline_ms": plain_summary.as_dict(),
            "response_bytes": sizes,
        },
    )


def _answer_cache_key(system: BenchSystem, job_id: str) -> str:
    """The key the generate pool cached the answer under, read from the job's own record."""
    client = Redis.from_url(system.redis_url, decode_responses=True, socket_timeout=5)
    try:
        job = JobStore(client, ttl_s=system.settings.job_ttl_s).get(job_id)
        if job is None or not job.answer_cache_key or not client.exists(job.answer_cache_key):
            raise RuntimeError(f"job {job_id} left no cached answer to read")
        return job.answer_cache_key
    finally:
        client.close()


def _latency_row(label: str, summary: Summary) -> list[str]:
    return [label, *(f"{getattr(summary, f):.2f}" for f in ("p50", "p95", "p99", "mean"))]
