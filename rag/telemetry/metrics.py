"""Every Prometheus metric a Scribes process records, named in one place.

Names follow `scribes_<subsystem>_<what>_<unit>`; prometheus-client adds `_total` to each
counter. With `PROMETHEUS_MULTIPROC_DIR` set (as `scribes up` and `scribes worker` do, one
directory per host) every process, prefork children included, writes its values to files
there and one scrape adds them up (`rag.telemetry.exposition`). The series read at scrape
time instead (queue depths, pools, the breaker's state, budgets) are in
`rag.telemetry.collectors`.

The tenant label is opt-in (`SCRIBES_METRICS_TENANT_LABEL=true`): it multiplies the series
of the per-question metrics by the number of tenants.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Histogram

from rag.settings import get_settings
from rag.types import Answer, Usage

__all__ = [
    "ANSWERS_NO_CONTEXT",
    "ANSWERS_UNCITED",
    "ANSWER_CITATIONS",
    "API_REQUESTS",
    "API_REQUEST_DURATION",
    "BREAKER_TRANSITIONS",
    "CACHE_REQUESTS",
    "DOCUMENTS",
    "INDEX_BATCH_DOCUMENTS",
    "INDEX_EMBEDDED_CHUNKS",
    "JOBS_REQUEUED",
    "LLM_COST",
    "LLM_REQUESTS",
    "LLM_REQUEST_DURATION",
    "LLM_TOKENS",
    "QUESTIONS",
    "QUESTION_DURATION",
    "REINDEX_CHUNKS",
    "RETRIEVAL_TOP_SCORE",
    "SEMANTIC_NEAR_MISSES",
    "SEMANTIC_REVALIDATIONS",
    "SEMANTIC_SIMILARITY",
    "TASKS",
    "TASK_DURATION",
    "TASK_QUEUE_WAIT",
    "WEBHOOK_DELIVERIES",
    "count_cache",
    "count_reindexed",
    "observe_answer_quality",
    "observe_llm_call",
    "observe_llm_usage",
    "observe_question",
    "observe_semantic",
    "tenant_labels",
]


# Fixed at import: a metric's labels cannot change once it has series.
TENANT_LABEL = get_settings().metrics_tenant_label


def tenant_labels(*labels: str) -> list[str]:
    return [*labels, "tenant"] if TENANT_LABEL else list(labels)


# Seconds: a cached answer takes milliseconds, a model call seconds, a wait for a probe
# or a retry tens of seconds.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_LLM_BUCKETS = (0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)

LLM_TOKENS = Counter(
    "scribes_llm_tokens",
    "Tokens the language model read and wrote, by type: input, output, cache_read, cache_write.",
    tenant_labels("model", "type"),
)
LLM_COST = Counter(
    "scribes_llm_cost_usd",
    "Dollars spent on the language model, priced per model from rag.writers.pricing.",
    tenant_labels("model"),
)
LLM_REQUESTS = Counter(
    "scribes_llm_requests",
    "Calls to the language model by outcome: ok, transient_error, permanent_error.",
    ["model", "outcome"],
)
LLM_REQUEST_DURATION = Histogram(
    "scribes_llm_request_duration_seconds",
    "Seconds one call to the language model took, failed calls included.",
    ["model"],
    buckets=_LLM_BUCKETS,
)

TASKS = Counter(
    "scribes_tasks",
    "Task runs by outcome: succeeded, failed, retried or ignored (nothing to do).",
    ["queue", "task", "outcome"],
)
TASK_DURATION = Histogram(
    "scribes_task_duration_seconds",
    "Seconds a task ran.",
    ["queue", "task"],
    buckets=_LATENCY_BUCKETS,
)
TASK_QUEUE_WAIT = Histogram(
    "scribes_task_queue_wait_seconds",
    "Seconds a task waited on the broker before a worker started it (countdowns excluded).",
    ["queue"],
    buckets=_LATENCY_BUCKETS,
)
REINDEX_CHUNKS = Counter(
    "scribes_reindex_chunks",
    "Chunks a reindex wrote to the generation it builds, by how each got its vector: "
    "copied (same model), cached (chunk-vector cache) or embedded.",
    ["how"],
)
JOBS_REQUEUED = Counter(
    "scribes_jobs_requeued",
    "Jobs, documents and webhook deliveries the stall sweep enqueued again, as their "
    "messages were lost.",
    ["kind"],
)

WEBHOOK_DELIVERIES = Counter(
    "scribes_webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered, retried (failed, another attempt "
    "follows), failed (given up: refused by the receiver, or the last attempt failed).",
    ["outcome"],
)

QUESTIONS = Counter(
    "scribes_questions",
    "Finished questions by outcome (answered, no_context, failed) and cache (exact, "
    "semantic, miss).",
    tenant_labels("outcome", "cache"),
)
QUESTION_DURATION = Histogram(
    "scribes_question_duration_seconds",
    "Seconds from a question's submission to its answer or failure.",
    ["cache"],
    buckets=_LATENCY_BUCKETS,
)

RETRIEVAL_TOP_SCORE = Histogram(
    "scribes_retrieval_top_score",
    "Cosine similarity of the best passage retrieved for a question.",
    buckets=(0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
ANSWER_CITATIONS = Histogram(
    "scribes_answer_citations",
    "Distinct passages an answer cites.",
    buckets=(0, 1, 2, 3, 4, 5, 8, 12, 20),
)
ANSWERS_NO_CONTEXT = Counter(
    "scribes_answers_no_context",
    "Questions answered 'not in your notes' because no passage scored above the threshold.",
)
ANSWERS_UNCITED = Counter(
    "scribes_answers_uncited",
    "Answers with at least one sentence that cites no passage.",
)

CACHE_REQUESTS = Counter(
    "scribes_cache_requests",
    "Cache lookups by cache (exact, semantic, embedding, context, chunk_embedding) and "
    "outcome (hit, miss).",
    ["cache", "outcome"],
)
SEMANTIC_SIMILARITY = Histogram(
    "scribes_cache_semantic_similarity",
    "Cosine similarity of the earlier question a semantic lookup found above the threshold: "
    "served (hit), or refused by the near-miss guard (near_miss, the most similar refused).",
    ["outcome"],
    buckets=(0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99, 1.0),
)
SEMANTIC_REVALIDATIONS = Counter(
    "scribes_cache_semantic_revalidations",
    "Earlier answers of an older corpus version checked against the notes changed since: "
    "kept (no change touches them) or stale.",
    ["outcome"],
)
SEMANTIC_NEAR_MISSES = Counter(
    "scribes_cache_semantic_near_misses",
    "Earlier questions above the similarity threshold that the near-miss guard refused, by "
    "what told them apart (negation, number, name, title, name order, question word, "
    "swapped words).",
    ["reason"],
)

BREAKER_TRANSITIONS = Counter(
    "scribes_breaker_transitions",
    "Changes of a circuit breaker's state, by the state it went to.",
    ["dependency", "to"],
)

DOCUMENTS = Counter(
    "scribes_documents",
    "Document revisions that finished indexing, by outcome: indexed or failed.",
    ["outcome"],
)
INDEX_EMBEDDED_CHUNKS = Counter(
    "scribes_index_embedded_chunks",
    "Chunks batch embedding (the index pool) embedded, by the torch threads of their step: "
    "every core while no question waits, one while any does.",
    ["threads"],
)
INDEX_BATCH_DOCUMENTS = Histogram(
    "scribes_index_batch_documents",
    "Document revisions one index task embedded together (its own and other queued ones).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)

API_REQUESTS = Counter(
    "scribes_api_requests",
    "HTTP requests the API answered, by route template and status class (2xx, 4xx, 5xx).",
    ["route", "method", "status"],
)
API_REQUEST_DURATION = Histogram(
    "scribes_api_request_duration_seconds",
    "Seconds the API took to answer a request.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)


def _with_tenant(values: Sequence[str], tenant: str) -> list[str]:
    return [*values, tenant] if TENANT_LABEL else list(values)


def observe_llm_call(model: str, outcome: str, duration_s: float) -> None:
    """One model call: its outcome and time."""
    LLM_REQUESTS.labels(model, outcome).inc()
    LLM_REQUEST_DURATION.labels(model).observe(duration_s)


def observe_llm_usage(model: str, usage: Usage, tenant: str) -> None:
    """What a finished job's answer read, wrote and cost, counted once per job (from the
    job record's finishing write), so that the counters add up to the jobs' usage exactly,
    as the usage ledger does. A call whose job then went another way (a delivery that
    died before recording it) is in `scribes_llm_requests_total`, not here."""
    for kind, tokens in (
        ("input", usage.input_tokens),
        ("output", usage.output_tokens),
        ("cache_read", usage.cache_read_input_tokens),
        ("cache_write", usage.cache_creation_input_tokens),
    ):
        if tokens:
            LLM_TOKENS.labels(*_with_tenant((model, kind), tenant)).inc(tokens)
    if usage.cost_usd:
        LLM_COST.labels(*_with_tenant((model,), tenant)).inc(float(usage.cost_usd))


def observe_question(*, outcome: str, cache: str, duration_s: float | None, tenant: str) -> None:
    QUESTIONS.labels(*_with_tenant((outcome, cache), tenant)).inc()
    if duration_s is not None:
        QUESTION_DURATION.labels(cache).observe(max(0.0, duration_s))


def observe_answer_quality(answer: Answer) -> None:
    """The grounding of an answer computed now (a cache hit was observed when it was made).

    A no-context answer is only counted: it has no passages to score and cites none by
    design, so it stays out of the score and citation histograms and the uncited count.
    """
    if answer.no_context:
        ANSWERS_NO_CONTEXT.inc()
        return
    quality = answer.quality
    if quality is None:
        return
    if quality.top_score is not None:
        RETRIEVAL_TOP_SCORE.observe(quality.top_score)
    ANSWER_CITATIONS.observe(quality.passages_cited)
    if not quality.all_sentences_cited:
        ANSWERS_UNCITED.inc()


def observe_semantic(hit: float | None, refused: Sequence[tuple[float, str]]) -> None:
    """One semantic lookup: the similarity of its hit, and what the guard refused."""
    if hit is not None:
        SEMANTIC_SIMILARITY.labels("hit").observe(hit)
    elif refused:
        SEMANTIC_SIMILARITY.labels("near_miss").observe(max(score for score, _ in refused))
    for _, reason in refused:
        SEMANTIC_NEAR_MISSES.labels(reason).inc()


def count_reindexed(*, copied: int, embedded: int, cached: int) -> None:
    for how, n in (("copied", copied), ("embedded", embedded), ("cached", cached)):
        if n:
            REINDEX_CHUNKS.labels(how).inc(n)


def count_cache(cache: str, *, hits: int, misses: int) -> None:
    if hits:
        CACHE_REQUESTS.labels(cache, "hit").inc(hits)
    if misses:
        CACHE_REQUESTS.labels(cache, "miss").inc(misses)
