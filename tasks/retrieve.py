"""Queue `retrieve`: search the tenant's passages; answer at once when none is relevant."""

from __future__ import annotations

import json

from celery import shared_task
from celery.exceptions import Ignore

from rag.answering import no_context_result, source_of
from rag.embedder import decode_vector
from rag.jobs import Stage
from rag.retrieval import retrieve_passages
from tasks.base import JobTask, stop_chain
from tasks.names import TaskName
from workers import resources

__all__ = ["retrieve_context"]


@shared_task(
    name=TaskName.RETRIEVE_CONTEXT.value,
    bind=True,
    base=JobTask,
    soft_time_limit=30,
    time_limit=60,
)
def retrieve_context(self: JobTask, *, job_id: str) -> None:
    jobs = resources.job_store()
    if not jobs.start_stage(job_id, Stage.RETRIEVE):
        raise Ignore()
    job = jobs.get(job_id)
    assert job is not None and job.query_vector is not None
    config = resources.settings()
    passages = retrieve_passages(
        resources.vector_store(),
        resources.document_registry(),
        tenant=job.tenant,
        vector=decode_vector(job.query_vector).tolist(),
        top_k=job.top_k,
        score_threshold=config.score_threshold,
    )
    if not passages:
        # Nothing relevant: say so plainly and never spend a call on the writer.
        result = no_context_result()
        if jobs.succeed(job_id, result, last_stage=Stage.RETRIEVE):
            resources.answer_cache().put(job.answer_cache_key, result)
        stop_chain(self)
        return
    jobs.finish_stage(job_id, Stage.RETRIEVE, passages=json.dumps([source_of(p) for p in passages]))
