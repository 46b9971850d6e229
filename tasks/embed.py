"""Queue `embed`: turn the question into a vector (CPU pool, model loaded once per process)."""

from __future__ import annotations

from celery.exceptions import Ignore

from rag.embedding import Embedder, encode_vectors
from rag.records.jobs import JobStore, Stage
from rag.records.pending import PendingQuestions
from rag.services import process_services
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
) -> bool:
    """Give the job its query vector; False when the job is not this delivery's to move."""
    if not jobs.start_stage(job_id, Stage.EMBED):
        return False  # finished, expired, or another delivery is already further on
    job = jobs.get(job_id)
    if job is None:
        return False
    if job.query_vector is None:
        # Embed every question waiting now, ours first; their own tasks will find it done.
        batch = pending.take(job_id, limit=batch_size)
        vectors = embedder.embed([question for _, question in batch], batch_size=batch_size)
        pending.attach(
            {
                waiting: encode_vectors(vector)
                for (waiting, _), vector in zip(batch, vectors, strict=True)
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
    ):
        raise Ignore()
