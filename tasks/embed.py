"""Queue `embed`: turn the question into a vector (CPU pool, model loaded once per process)."""

from __future__ import annotations

from celery import shared_task
from celery.exceptions import Ignore

from rag.embedder import encode_vector
from rag.jobs import Stage
from tasks.base import JobTask
from tasks.names import TaskName
from workers import resources

__all__ = ["embed_query"]


@shared_task(
    name=TaskName.EMBED_QUERY.value, bind=True, base=JobTask, soft_time_limit=30, time_limit=60
)
def embed_query(self: JobTask, *, job_id: str) -> None:
    jobs = resources.job_store()
    if not jobs.start_stage(job_id, Stage.EMBED):
        raise Ignore()  # finished, expired, or another delivery is already further on
    job = jobs.get(job_id)
    assert job is not None
    if job.query_vector is None:
        # Embed every question waiting now, ours first; their own tasks will find it done.
        config = resources.settings()
        pending = resources.pending_questions()
        batch = pending.take(job_id, limit=config.query_batch_size)
        vectors = resources.embedder().embed(
            [question for _, question in batch], batch_size=config.query_batch_size
        )
        pending.attach(
            {
                waiting: encode_vector(vector)
                for (waiting, _), vector in zip(batch, vectors, strict=True)
            }
        )
    jobs.finish_stage(job_id, Stage.EMBED)
