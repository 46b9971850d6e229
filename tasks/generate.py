"""Queue `generate`: write the answer (Anthropic or extractive); Celery is the one retry layer."""

from __future__ import annotations

import random

from celery import shared_task
from celery.exceptions import Ignore

from rag.answering import compose_answer
from rag.anthropic_writer import TransientLLMError
from rag.jobs import Stage
from rag.types import Passage
from tasks.base import JobTask
from tasks.names import TaskName
from workers import resources

__all__ = ["generate_answer", "retry_delay"]

_BACKOFF_BASE_S = 1.0
_BACKOFF_CAP_S = 60.0


def retry_delay(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, never sooner than the server asked."""
    backoff = random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt))
    return max(backoff, retry_after or 0.0)


@shared_task(
    name=TaskName.GENERATE_ANSWER.value,
    bind=True,
    base=JobTask,
    soft_time_limit=150,
    time_limit=180,
)
def generate_answer(self: JobTask, *, job_id: str) -> None:
    jobs = resources.job_store()
    if not jobs.start_stage(job_id, Stage.GENERATE):
        raise Ignore()
    job = jobs.get(job_id)
    assert job is not None
    passages = [
        Passage(
            number=p["number"],
            chunk_id=p["chunk_id"],
            document_id=p["document_id"],
            title=p["title"],
            text=p["text"],
            score=p["score"],
        )
        for p in job.passages
    ]
    try:
        result = compose_answer(job.question, passages, resources.writer())
    except TransientLLMError as exc:
        attempt = self.request.retries
        limit = resources.settings().llm_max_retries
        if attempt >= limit:
            raise
        delay = retry_delay(attempt, exc.retry_after)
        jobs.note(
            job_id,
            Stage.GENERATE,
            f"the language model is unavailable ({exc}); retry {attempt + 1} of {limit} "
            f"in {delay:.1f} s",
        )
        # Re-queued with a countdown: the worker thread is free while the job waits.
        raise self.retry(exc=exc, countdown=delay, max_retries=limit) from exc
    if jobs.succeed(job_id, result, last_stage=Stage.GENERATE):
        resources.answer_cache().put(job.answer_cache_key, result)
