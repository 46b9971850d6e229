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
    config = resources.settings()
    vector = resources.embedder().embed([job.question], batch_size=config.embedding_batch_size)[0]
    jobs.finish_stage(job_id, Stage.EMBED, query_vector=encode_vector(vector))
