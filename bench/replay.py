"""`--only workload`: the replayed workload of `bench.workload` against one whole system,
once with every request `"cache": "bypass"` (the baseline) and once with the caches on.

The system answers through the real `anthropic` SDK against the loopback fake
(`tests.fake_anthropic`), which counts the model calls of each replay. Between the two the
notes the first replay changed are sent again as they were and `DELETE /v1/cache` empties
the tenant's caches, so that both start from the same notes and the second from cold caches.
Each replay runs its steps in order from a few clients, each taking the next step when it
is done with its last; a note change is made by the client that takes it, which waits until
the edit is indexed while the others go on asking.

A cached answer (the job's `cached`: "exact" or "semantic") is judged wrong when it was
served for a question asked after one of its sources changed (the passage's text is no
longer in its note, or the note is deleted), or when it is a semantic hit for a question
whose meaning label differs from that of the question it was first given for.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from bench.baseline_api import BASELINE_PATH, running_baseline_api
from bench.notes import BenchNote
from bench.report import BenchResult, SummaryRow, print_table
from bench.stats import Summary, format_ratio, ratio, summarise
from bench.system import BENCH_API_KEY, BenchSystem, ingest_notes, progress, running_system
from bench.workload import NoteChange, Workload, WorkloadQuestion, build_workload
from rag.caches.answers import normalise_question
from tests.fake_anthropic import DEFAULT_API_KEY, FakeAnthropic
from tests.metrics_scrape import Scrape, scrape

__all__ = ["Applied", "Judgement", "Replay", "Reply", "judge_cached_answers", "run_workload"]

SEED = 0
QUESTIONS = 2000
CLIENTS = 8
POLL_S = 0.05  # as the throughput benchmark's clients: 8 polling every 5 ms would be a load
JOB_TIMEOUT_S = 120.0
INDEX_TIMEOUT_S = 120.0
CACHES = ("exact", "semantic", "embedding", "context", "chunk_embedding")
# The targets, printed beside the figures; nothing asserts them.
TARGET_AVOIDED = 0.70
TARGET_WRONG_SEMANTIC = 0.01
TARGET_EXACT_P99_RATIO = 1.3
# Where the baseline API finds an answer to serve: a job as the API returns it, so that the
# bare GET moves as many bytes as an exact hit does.
BASELINE_KEY = "bench:workload:baseline-answer"


@dataclass
class Reply:
    """One question as its client saw it."""

    step: int
    question: WorkloadQuestion
    asked_at: float  # time.time(), to compare with when note changes took effect
    status_code: int
    job: dict[str, Any]
    latency_ms: float
    baseline_ms: float | None = None  # a bare GET asked right after an exact hit

    @property
    def cached(self) -> str | None:
        value = self.job.get("cached")
        return str(value) if value else None

    @property
    def called_model(self) -> bool:
        usage = self.job.get("usage") or {}
        return self.cached is None and bool(usage.get("input_tokens"))

    @property
    def no_context(self) -> bool:
        return self.cached is None and bool(self.job.get("no_context"))

    @property
    def failed(self) -> bool:
        return self.job.get("status") != "succeeded"


@dataclass(frozen=True, slots=True)
class Applied:
    change: NoteChange
    effective_at: float  # the delete answered, or the edit seen indexed


@dataclass
class Replay:
    mode: str
    replies: list[Reply] = field(default_factory=list)
    applied: list[Applied] = field(default_factory=list)
    llm_calls: int = 0
    elapsed_s: float = 0.0

    def hits(self, cache: str) -> list[Reply]:
        return [reply for reply in self.replies if reply.cached == cache]


def run_workload(work_dir: Path, *, questions: int = QUESTIONS, seed: int = SEED) -> BenchResult:
    workload = build_workload(seed=seed, questions=questions)
    kinds = workload.kinds()
    progress(
        f"workload: {len(workload.questions)} questions ({_kinds_line(kinds)}), "
        f"{len(workload.changes)} note changes, seed {seed}"
    )
    with (
        FakeAnthropic() as fake,
        running_system(
            work_dir,
            workload.notes,
            {"ANTHROPIC_API_KEY": DEFAULT_API_KEY, "ANTHROPIC_BASE_URL": fake.base_url},
        ) as system,
    ):
        bypass = asyncio.run(_replay(system, workload, fake, mode="bypass"))
        if any(reply.cached for reply in bypass.replies):
            raise RuntimeError('a request sent with "cache": "bypass" was answered from a cache')
        _restore(system, workload, bypass)
        _store_baseline_answer(system, bypass)
        before = scrape(f"{system.cluster.api_url}/metrics")
        with running_baseline_api(
            system.redis_url, BASELINE_KEY, log_file=work_dir / "baseline-api.log"
        ) as baseline_url:
            cached = asyncio.run(
                _replay(system, workload, fake, mode="use", baseline_url=baseline_url)
            )
        time.sleep(1)  # each process writes its counters as it counts; let the last land
        after = scrape(f"{system.cluster.api_url}/metrics")
    return _report(workload, bypass, cached, _counter_deltas(before, after))


async def _replay(
    system: BenchSystem,
    workload: Workload,
    fake: FakeAnthropic,
    *,
    mode: str,
    baseline_url: str | None = None,
) -> Replay:
    replay = Replay(mode)
    steps: Iterator[tuple[int, WorkloadQuestion | NoteChange]] = iter(enumerate(workload.steps))
    total = len(workload.questions)
    calls_before = fake.received
    started = time.perf_counter()
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(_client(system.cluster.api_url, BENCH_API_KEY))
        baseline = (
            await stack.enter_async_context(_client(baseline_url, None)) if baseline_url else None
        )

        async def client() -> None:
            for number, step in steps:
                if isinstance(step, NoteChange):
                    replay.applied.append(await _apply(http, step))
                    continue
                reply = await _ask(http, number, step, mode)
                if baseline is not None and reply.cached == "exact":
                    reply.baseline_ms = await _bare_get(baseline)
                replay.replies.append(reply)
                if len(replay.replies) % 250 == 0:
                    progress(
                        f"workload ({mode}): {len(replay.replies)}/{total} asked, "
                        f"{fake.received - calls_before} model calls"
                    )

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
    replay.elapsed_s = time.perf_counter() - started
    replay.llm_calls = fake.received - calls_before
    replay.replies.sort(key=lambda reply: reply.step)
    progress(
        f"workload ({mode}): {total} questions in {replay.elapsed_s:.0f} s, "
        f"{replay.llm_calls} model calls"
    )
    return replay


def _client(base_url: str, api_key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=30,
        limits=httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS),
    )


async def _ask(http: httpx.AsyncClient, step: int, question: WorkloadQuestion, mode: str) -> Reply:
    asked_at = time.time()
    started = time.perf_counter()
    response = await http.post("/v1/questions", json={"question": question.text, "cache": mode})
    if response.status_code == 200:
        elapsed = (time.perf_counter() - started) * 1000
        return Reply(step, question, asked_at, 200, response.json(), elapsed)
    if response.status_code != 202:
        raise RuntimeError(
            f"asking {question.text!r} answered {response.status_code}: {response.text[:300]}"
        )
    poll = str(response.json()["poll"])
    while True:
        await asyncio.sleep(POLL_S)
        job: dict[str, Any] = (await http.get(poll)).json()
        if job.get("status") in ("succeeded", "failed"):
            elapsed = (time.perf_counter() - started) * 1000
            return Reply(step, question, asked_at, 202, job, elapsed)
        if time.perf_counter() - started > JOB_TIMEOUT_S:
            raise RuntimeError(f"{question.text!r} not answered in {JOB_TIMEOUT_S:.0f} s: {job}")


async def _bare_get(baseline: httpx.AsyncClient) -> float:
    started = time.perf_counter()
    response = await baseline.post(BASELINE_PATH)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"the baseline answered {response.status_code}: {response.text}")
    return elapsed


async def _apply(http: httpx.AsyncClient, change: NoteChange) -> Applied:
    """Delete the note, or send its new text and wait until that revision is indexed."""
    path = f"/v1/documents/{change.document_id}"
    if change.text is None:
        response = await http.delete(path)
        if response.status_code != 200:
            raise RuntimeError(f"deleting {change.document_id} answered {response.status_code}")
        return Applied(change, time.time())
    response = await http.post(
        "/v1/documents",
        json={"id": change.document_id, "title": change.title, "text": change.text},
    )
    if response.status_code != 202:
        raise RuntimeError(f"editing {change.document_id} answered {response.status_code}")
    revision = int(response.json()["revision"])
    deadline = time.perf_counter() + INDEX_TIMEOUT_S
    while time.perf_counter() < deadline:
        await asyncio.sleep(POLL_S)
        document: dict[str, Any] = (await http.get(path)).json()
        if document["revision"] == revision and document["status"] == "indexed":
            return Applied(change, time.time())
        if document["revision"] == revision and document["status"] == "failed":
            raise RuntimeError(f"the edit of {change.document_id} failed: {document['error']}")
    raise RuntimeError(f"the edit of {change.document_id} not indexed in {INDEX_TIMEOUT_S:.0f} s")


def _restore(system: BenchSystem, workload: Workload, replay: Replay) -> None:
    """The changed notes as they were before the replay, indexed, and every cache empty."""
    changed = {applied.change.document_id for applied in replay.applied}
    originals: Sequence[BenchNote] = [note for note in workload.notes if note.id in changed]
    with system.client() as http:
        ingest_notes(http, originals)
        removed = http.delete("/v1/cache").json()["removed"]
    progress(f"workload: {len(originals)} notes restored; caches emptied ({removed})")


def _store_baseline_answer(system: BenchSystem, replay: Replay) -> None:
    """A job the model answered, as the API returned it: what the bare GET serves."""
    answered = next((reply.job for reply in replay.replies if reply.called_model), None)
    if answered is None:
        raise RuntimeError("no question reached the model; is the fake's URL in the settings?")
    client = Redis.from_url(system.redis_url, decode_responses=True, socket_timeout=5)
    try:
        client.set(BASELINE_KEY, json.dumps(answered))
    finally:
        client.close()


def _counter_deltas(before: Scrape, after: Scrape) -> dict[str, dict[str, float]]:
    """scribes_cache_requests_total{cache,outcome} over the cached replay, by cache."""
    name = "scribes_cache_requests_total"
    caches = [*CACHES, *sorted({s["cache"] for s in after.series(name)} - set(CACHES))]
    return {
        cache: {
            outcome: after.value(name, {"cache": cache, "outcome": outcome})
            - before.value(name, {"cache": cache, "outcome": outcome})
            for outcome in ("hit", "miss")
        }
        for cache in caches
    }


@dataclass
class Judgement:
    """The cached answers found wrong, and up to 20 examples."""

    stale: Counter[str] = field(default_factory=Counter)  # by cache: a source changed
    other_meaning: list[Reply] = field(default_factory=list)  # semantic, another label
    unlabelled: list[Reply] = field(default_factory=list)  # semantic, original not known
    examples: list[dict[str, Any]] = field(default_factory=list)


def judge_cached_answers(workload: Workload, replay: Replay) -> Judgement:
    """Each cached answer against the notes as they stood when its question was asked, and
    each semantic hit's original question against the asked one's meaning."""
    judged = Judgement()
    applied = sorted(replay.applied, key=lambda a: a.effective_at)
    moments = [a.effective_at for a in applied]
    states = _note_states(workload, applied)
    for reply in replay.replies:
        if reply.cached is None:
            continue
        notes = states[bisect.bisect_right(moments, reply.asked_at)]
        changed = [
            source["document_id"]
            for source in reply.job.get("sources") or []
            if _flat(str(source["text"])) not in notes.get(str(source["document_id"]), "")
        ]
        if changed:
            judged.stale[reply.cached] += 1
            _example(judged, reply, f"a source changed before it was asked: {changed}")
        if reply.cached != "semantic":
            continue
        original = str((reply.job.get("semantic") or {}).get("question") or "")
        group = workload.group_of(original)
        if group is None:
            judged.unlabelled.append(reply)
            _example(judged, reply, f"served for {original!r}, which the workload never asked")
        elif group != reply.question.group:
            judged.other_meaning.append(reply)
            _example(judged, reply, f"served for {original!r} ({group}), another meaning")
    return judged


def _example(judged: Judgement, reply: Reply, why: str) -> None:
    if len(judged.examples) < 20:
        judged.examples.append(
            {
                "step": reply.step,
                "question": reply.question.text,
                "group": reply.question.group,
                "kind": reply.question.kind,
                "cached": reply.cached,
                "semantic": reply.job.get("semantic"),
                "why": why,
            }
        )


def _note_states(workload: Workload, applied: Sequence[Applied]) -> list[dict[str, str]]:
    """The notes' text, whitespace flattened, before any change, then after each."""
    notes = {note.id: _flat(note.text) for note in workload.notes}
    states = [dict(notes)]
    for change in (a.change for a in applied):
        if change.text is None:
            notes.pop(change.document_id, None)
        else:
            notes[change.document_id] = _flat(change.text)
        states.append(dict(notes))
    return states


def _flat(text: str) -> str:
    # Chunks join a block's lines with spaces; every chunk is a substring of its flattened note.
    return " ".join(text.split())


def _lost_repeats(workload: Workload, replay: Replay) -> tuple[int, int]:
    """Questions answered anew though the same words had been answered before: all of them,
    and those with a note change between the earlier answer and the asking."""
    moments = sorted(a.effective_at for a in replay.applied)
    answered: dict[str, float] = {}  # normalised question -> when an answer was last seen
    lost = after_change = 0
    for reply in sorted(replay.replies, key=lambda r: r.asked_at):
        key = normalise_question(reply.question.text)
        earlier = answered.get(key)
        if reply.cached is None and earlier is not None and earlier < reply.asked_at:
            lost += 1
            after_change += bisect.bisect(moments, reply.asked_at) > bisect.bisect(moments, earlier)
        if reply.job.get("status") == "succeeded":
            answered[key] = reply.asked_at + reply.latency_ms / 1000
    return lost, after_change


def _kinds_line(kinds: Mapping[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in kinds.items())


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _verdict(met: bool | None) -> str:
    return "no data" if met is None else ("met" if met else "not met")


def _latency(values: Sequence[float]) -> Summary | None:
    return summarise(values) if values else None


def _report(
    workload: Workload, bypass: Replay, cached: Replay, counters: dict[str, dict[str, float]]
) -> BenchResult:
    judged = judge_cached_answers(workload, cached)
    lost, lost_after_change = _lost_repeats(workload, cached)
    avoided = 1 - ratio(cached.llm_calls, bypass.llm_calls)
    # A question asked for the first time, or a near miss, needs the model whatever a
    # cache does: what is left is the most any cache could avoid on this mix.
    unavoidable = sum(
        r.called_model for r in bypass.replies if r.question.kind in ("first", "near_miss")
    )
    ceiling = 1 - ratio(unavoidable, bypass.llm_calls)
    semantic = len(cached.hits("semantic"))
    wrong_semantic = len(judged.other_meaning) + judged.stale["semantic"]
    exact_hits = cached.hits("exact")
    exact = _latency([r.latency_ms for r in exact_hits])
    bare = _latency([r.baseline_ms for r in exact_hits if r.baseline_ms is not None])
    semantic_e2e = _latency([r.latency_ms for r in cached.hits("semantic")])
    semantic_total = _latency(
        [
            float(r.job["timings"]["total"])
            for r in cached.hits("semantic")
            if (r.job.get("timings") or {}).get("total") is not None
        ]
    )
    anew = _latency([r.latency_ms for r in cached.replies if r.called_model])
    anew_bypass = _latency([r.latency_ms for r in bypass.replies if r.called_model])
    p99_ratio = ratio(exact.p99, bare.p99) if exact and bare else None

    print()
    print("== workload: a replayed workload over the sample notes, caches on vs bypassed ==")
    print(
        f"  {len(workload.questions)} questions, seed {workload.seed}: "
        f"{_kinds_line(workload.kinds())}; "
        f"{sum(c.kind == 'edit' for c in workload.changes)} edits and "
        f"{sum(c.kind == 'delete' for c in workload.changes)} deletes of notes among them"
    )
    print(
        f"  {CLIENTS} clients replay the steps in order, polling every {POLL_S * 1000:.0f} ms; "
        "the model is the Anthropic SDK against the loopback fake, which counts its calls"
    )
    print(
        f'  baseline: the same replay, every request "cache": "bypass", on the same system '
        f"first ({bypass.elapsed_s:.0f} s; the caches on: {cached.elapsed_s:.0f} s)"
    )
    print(
        f"  model calls: {cached.llm_calls} with the caches, {bypass.llm_calls} bypassed: "
        f"{avoided:.1%} avoided (target at least {TARGET_AVOIDED:.0%}: "
        f"{_verdict(avoided >= TARGET_AVOIDED)}); a perfect cache would avoid "
        f"{ceiling:.1%} on this mix (every call but first questions' and near misses'), "
        f"so the caches avoided {avoided / ceiling:.0%} of what could be"
    )
    rows = [
        _kind_row(
            kind,
            [r for r in cached.replies if r.question.kind == kind],
            [r for r in bypass.replies if r.question.kind == kind],
        )
        for kind in workload.kinds()
    ]
    rows.append(_kind_row("all", cached.replies, bypass.replies))
    print("  by the job's `cached` and `usage`, per kind of question:")
    print_table(
        ["kind", "asked", "exact", "semantic", "model", "no context", "failed", "model, bypass"],
        rows,
        indent=4,
    )
    print(
        f"  answered anew though the same words were answered before: {lost}, "
        f"{lost_after_change} of them after a note change (every change empties the exact "
        "cache: its keys carry the corpus version)"
    )
    print("  scribes_cache_requests_total over the cached replay (the API's /metrics):")
    print_table(
        ["cache", "hit", "miss", "hit rate"],
        [
            [cache, f"{c['hit']:.0f}", f"{c['miss']:.0f}", _share(c["hit"], c["hit"] + c["miss"])]
            for cache, c in counters.items()
        ],
        indent=4,
    )
    near = [r for r in cached.replies if r.question.kind == "near_miss"]
    print(
        f"  wrong semantic hits: {wrong_semantic} of {semantic} "
        f"({len(judged.other_meaning)} for another meaning, {judged.stale['semantic']} stale, "
        f"{len(judged.unlabelled)} for a question the workload never asked); target at most "
        f"{TARGET_WRONG_SEMANTIC:.0%}: "
        f"{_verdict(None if not semantic else wrong_semantic / semantic <= TARGET_WRONG_SEMANTIC)}"
    )
    print(
        f"  stale exact hits (a source changed before the question was asked): "
        f"{judged.stale['exact']} of {len(exact_hits)}; near misses answered from a cache: "
        f"{sum(r.cached is not None for r in near)} of {len(near)}"
    )
    latency_rows = [
        _latency_row("exact hit, POST /v1/questions", exact),
        _latency_row(f"bare GET, POST {BASELINE_PATH}", bare),
        [
            "ratio exact / bare GET",
            *(
                format_ratio(ratio(getattr(exact, f), getattr(bare, f))) if exact and bare else "-"
                for f in ("p50", "p95", "p99")
            ),
            "",
        ],
        _latency_row("semantic hit, end to end", semantic_e2e),
        _latency_row("semantic hit, job timings.total", semantic_total),
        _latency_row("answered by the model, end to end", anew),
        _latency_row("the same, bypass replay", anew_bypass),
    ]
    print("  latency (ms), under the replay's load; a bare GET follows each exact hit:")
    print_table(["", "p50", "p95", "p99", "n"], latency_rows, indent=4)
    print(
        f"  exact-hit p99 / bare GET p99: "
        f"{format_ratio(p99_ratio) if p99_ratio is not None else '-'} (target at most "
        f"{TARGET_EXACT_P99_RATIO:.1f}x: "
        f"{_verdict(None if p99_ratio is None else p99_ratio <= TARGET_EXACT_P99_RATIO)})"
    )
    summary = [
        SummaryRow(
            "workload",
            f"model calls, {len(workload.questions)} questions",
            cached.llm_calls,
            bypass.llm_calls,
            "calls",
            'every request "cache": "bypass"',
        )
    ]
    if exact and bare:
        summary += [
            SummaryRow(
                "workload",
                f"exact hit {p} latency under the replay",
                getattr(exact, p),
                getattr(bare, p),
                "ms",
                "Redis GET over HTTP",
            )
            for p in ("p50", "p99")
        ]
    return BenchResult(
        "workload",
        rows=summary,
        details={
            "seed": workload.seed,
            "clients": CLIENTS,
            "kinds": dict(workload.kinds()),
            "changes": [
                {"document": a.change.document_id, "kind": a.change.kind}
                for a in sorted(cached.applied, key=lambda a: a.effective_at)
            ],
            "llm_calls": {"cached": cached.llm_calls, "bypass": bypass.llm_calls},
            "llm_calls_avoided": round(avoided, 4),
            "llm_calls_avoidable": round(ceiling, 4),
            "hits": {"exact": len(exact_hits), "semantic": semantic},
            "counters": counters,
            "lost_repeats": {"all": lost, "after_a_note_change": lost_after_change},
            "wrong": {
                "semantic_other_meaning": len(judged.other_meaning),
                "semantic_unlabelled": len(judged.unlabelled),
                "stale": dict(judged.stale),
                "examples": judged.examples,
            },
            "latency_ms": {
                name: summary.as_dict() if summary else None
                for name, summary in (
                    ("exact_hit", exact),
                    ("bare_get", bare),
                    ("semantic_hit", semantic_e2e),
                    ("semantic_hit_timings_total", semantic_total),
                    ("answered_by_model", anew),
                    ("answered_by_model_bypass", anew_bypass),
                )
            },
            "elapsed_s": {
                "bypass": round(bypass.elapsed_s, 1),
                "cached": round(cached.elapsed_s, 1),
            },
        },
    )


def _kind_row(label: str, mine: Sequence[Reply], bypassed: Sequence[Reply]) -> list[str]:
    counts = (
        len(mine),
        sum(r.cached == "exact" for r in mine),
        sum(r.cached == "semantic" for r in mine),
        sum(r.called_model for r in mine),
        sum(r.no_context for r in mine),
        sum(r.failed for r in mine),
        sum(r.called_model for r in bypassed),
    )
    return [label, *(str(count) for count in counts)]


def _latency_row(label: str, summary: Summary | None) -> list[str]:
    if summary is None:
        return [label, "-", "-", "-", "0"]
    return [label, *(f"{getattr(summary, f):.1f}" for f in ("p50", "p95", "p99")), str(summary.n)]
