"""Queue `embed`: turn the question into a vector (CPU pool, model loaded once per process)."""

from __future__ import annotations

from celery.exceptions import Ignore

from rag.caches.vectors import QueryVectorCache
from rag.embedding import Embedder, encode_vectors
from rag.records.jobs import JobStore, Stage
from rag.records.pending import PendingQuestions
from rag.services import process_services
from rag.telemetry.metrics import count_cache
from tasks.base import ScribesTask, scribes_task
from tasks.names import TaskName

__all__ = ["embed_query", "embed_question"]


def embed_question(
    job_id: str,
    *,
    jobs: JobStore,
    pending: PendingQuestions,
    embedder: Embedder,
    batch_size: int,
    cache: QueryVectorCache | None = None,
) -> bool:
    """Give the job its query vector; False when the job is not this delivery's to move.

    With `cache`, a question its tenant asked before (within the cache's 7 days) takes its
    vector from there, and only the others of the batch go to the model.
    """
    if not jobs.start_stage(job_id, Stage.EMBED):
        return False  # finished, expired, or another delivery is already further on
    job = jobs.get(job_id)
    if job is None:
        return False
    if job.query_vector is None:
        # Embed every question waiting now, ours first; their own tasks will find it done.
        batch = pending.take(job_id, limit=batch_size)
        readers = [w for w in batch if w.cache_mode.reads] if cache is not None else []
        found = dict(
            zip(
                readers,
                cache.get_many([(w.tenant, w.question) for w in readers]) if cache else [],
                strict=True,
            )
        )
        known = [found.get(waiting) for waiting in batch]
        unknown = [waiting for waiting, vector in zip(batch, known, strict=True) if vector is None]
        fresh = {
            waiting: encode_vectors(vector)
            for waiting, vector in zip(
                unknown,
                embedder.embed([w.question for w in unknown], batch_size=batch_size)
                if unknown
                else [],
                strict=True,
            )
        }
        if cache is not None:
            hits = sum(vector is not None for vector in found.values())
            count_cache("embedding", hits=hits, misses=len(found) - hits)
            cache.put_many(
                {(w.tenant, w.question): v for w, v in fresh.items() if w.cache_mode.writes}
            )
        pending.attach(
            {
                waiting.job_id: vector or fresh[waiting]
                for waiting, vector in zip(batch, known, strict=True)
            }
        )
    jobs.finish_stage(job_id, Stage.EMBED)
    return True


@scribes_task(TaskName.EMBED_QUERY, soft_time_limit=30, time_limit=60)
def embed_query(self: ScribesTask, *, job_id: str) -> None:
    services = process_services()
    if not embed_question(
        job_id,
        jobs=services.jobs,
        pending=services.pending,
        embedder=services.embedder(),
        batch_size=services.settings.query_batch_size,
        cache=services.query_vectors,
    ):
        raise Ignore()
