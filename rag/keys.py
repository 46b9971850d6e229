"""Every Redis key Scribes writes, built in one place so that each carries its tenant."""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "DOCUMENT_ID_PATTERN",
    "TENANT_PATTERN",
    "active_jobs_key",
    "answer_cache_key",
    "answer_cache_prefix",
    "breaker_events_key",
    "breaker_key",
    "chunk_vector_cache_key",
    "chunk_vector_cache_prefix",
    "context_cache_prefix",
    "corpus_changes_key",
    "corpus_version_key",
    "delivery_count_key",
    "document_key",
    "document_lock_key",
    "document_revision_key",
    "document_text_key",
    "documents_index_key",
    "embed_scheduled_key",
    "idempotency_key",
    "index_claim_key",
    "job_events_key",
    "job_key",
    "pending_questions_key",
    "pool_heartbeat_key",
    "query_vector_cache_key",
    "query_vector_cache_prefix",
    "queued_documents_key",
    "staged_chunks_key",
    "sweep_lock_key",
    "usage_day_key",
    "usage_month_key",
    "usage_recorded_key",
    "usage_tenants_key",
    "vector_store_health_key",
    "webhook_outbox_key",
]

_PREFIX = "scribes"
# Whole strings only: \A and \Z, not ^ and $, since "$" also matches before a final newline
# ("dup\n" passed as an id other than "dup"). Callers use fullmatch all the same.
TENANT_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
DOCUMENT_ID_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:~-]{0,199}\Z")


def job_key(job_id: str) -> str:
    return f"{_PREFIX}:job:{job_id}"


def idempotency_key(tenant: str, key: str) -> str:
    """A client's `Idempotency-Key`, hashed: the client chooses its characters and length."""
    return f"{_PREFIX}:idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def job_events_key(job_id: str) -> str:
    """The job's event stream, and the pub/sub channel its moves are announced on."""
    return f"{_PREFIX}:job:{job_id}:events"


def webhook_outbox_key() -> str:
    """Jobs whose webhook is not yet delivered or given up, scored by when it is due."""
    return f"{_PREFIX}:webhooks:outbox"


def document_key(tenant: str, document_id: str) -> str:
    return f"{_PREFIX}:doc:{tenant}:{document_id}"


def document_lock_key(tenant: str, document_id: str) -> str:
    return f"{_PREFIX}:lock:doc:{tenant}:{document_id}"


def document_revision_key(tenant: str, document_id: str) -> str:
    # Outlives the document itself, so a re-ingest after a delete gets a higher revision.
    return f"{_PREFIX}:docrev:{tenant}:{document_id}"


def documents_index_key(tenant: str) -> str:
    return f"{_PREFIX}:docs:{tenant}"


def document_text_key(tenant: str, document_id: str, revision: int) -> str:
    return f"{_PREFIX}:doctext:{tenant}:{document_id}:{revision}"


def staged_chunks_key(tenant: str, document_id: str, revision: int) -> str:
    return f"{_PREFIX}:staged:{tenant}:{document_id}:{revision}"


def index_claim_key(tenant: str, document_id: str, revision: int) -> str:
    # Which index task embeds the revision, until when; "sent" once its store write is queued.
    return f"{_PREFIX}:indexclaim:{tenant}:{document_id}:{revision}"


def corpus_version_key(tenant: str) -> str:
    return f"{_PREFIX}:corpus:{tenant}"


def corpus_changes_key(tenant: str) -> str:
    # Which document each corpus version changed, scored by that version.
    return f"{_PREFIX}:corpus:{tenant}:changes"


def query_vector_cache_prefix(tenant: str) -> str:
    return f"{_PREFIX}:qvec:{tenant}:"


def query_vector_cache_key(tenant: str, digest: str) -> str:
    return query_vector_cache_prefix(tenant) + digest


def chunk_vector_cache_prefix(tenant: str) -> str:
    return f"{_PREFIX}:cvec:{tenant}:"


def chunk_vector_cache_key(tenant: str, digest: str) -> str:
    return chunk_vector_cache_prefix(tenant) + digest


def context_cache_prefix(tenant: str) -> str:
    """Followed by the corpus version and a digest of the search."""
    return f"{_PREFIX}:ctx:{tenant}:"


def answer_cache_prefix(tenant: str) -> str:
    return f"{_PREFIX}:answer:{tenant}:"


def answer_cache_key(
    tenant: str, normalised_question: str, corpus_version: int, pipeline_fingerprint: str
) -> str:
    """The exact-cache key; `rag.records.exact_hits` computes the same one inside Redis.

    SHA-1 because Redis scripts have it (`redis.sha1hex`); a cache key needs no more.
    """
    digest = hashlib.sha1(
        "\x1f".join((normalised_question, str(corpus_version), pipeline_fingerprint)).encode()
    ).hexdigest()
    return answer_cache_prefix(tenant) + digest


def embed_scheduled_key() -> str:
    """Set while a `scribes.embed.pending` task is on its way to the embed queue."""
    return f"{_PREFIX}:embed:scheduled"


def pending_questions_key() -> str:
    # Job ids only: the questions themselves stay in their tenant's job records.
    return f"{_PREFIX}:embed:pending"


def pool_heartbeat_key(pool: str) -> str:
    return f"{_PREFIX}:pool:{pool}"


def vector_store_health_key() -> str:
    return f"{_PREFIX}:health:vector_store"


def breaker_key(dependency: str) -> str:
    # Shared by every process and host: the breaker's state is the dependency's, not ours.
    return f"{_PREFIX}:breaker:{dependency}"


def breaker_events_key(dependency: str) -> str:
    return f"{_PREFIX}:breaker:{dependency}:events"


def delivery_count_key(message: str) -> str:
    return f"{_PREFIX}:deliveries:{message}"


def active_jobs_key() -> str:
    # Unfinished job ids scored by their last progress, for the stall sweep.
    return f"{_PREFIX}:jobs:active"


def sweep_lock_key() -> str:
    return f"{_PREFIX}:jobs:sweep"


def queued_documents_key() -> str:
    # (tenant, document) of revisions not yet indexed, scored by their last progress.
    return f"{_PREFIX}:docs:queued"


def usage_day_key(tenant: str, day: str) -> str:
    # `day` is YYYY-MM-DD in UTC: one hash of counts and dollars per tenant per day.
    return f"{_PREFIX}:usage:{tenant}:{day}"


def usage_month_key(tenant: str, month: str) -> str:
    # `month` is YYYY-MM in UTC: the month's dollars, read by the budget check.
    return f"{_PREFIX}:usage:{tenant}:month:{month}"


def usage_tenants_key(month: str) -> str:
    # Tenants with any usage in the month, for the budget gauges.
    return f"{_PREFIX}:tenants:usage:{month}"


def usage_recorded_key(job_id: str) -> str:
    # Set when a job's usage enters the ledger, so that it never enters twice.
    return job_key(job_id) + ":usage"
