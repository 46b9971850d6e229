"""Queue `generate`: write the answer (Anthropic or extractive); Celery is the one retry layer."""

from __future__ import annotations

import random

from celery.exceptions import Ignore

from rag.answering import compose_answer
from rag.caches.answers import AnswerCache
from rag.records.jobs import JobStore, Stage
from rag.services import process_services
from rag.writers.base import AnswerWriter, TransientLLMError
from tasks.base import ScribesTask, scribes_task
from tasks.names import TaskName

__all__ = ["generate_answer", "retry_delay", "write_answer"]

_BACKOFF_BASE_S = 1.0
_BACKOFF_CAP_S = 60.0


def retry_delay(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, never sooner than the server asked."""
    backoff = random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt))
    return max(backoff, retry_after or 0.0)


def write_answer(
    job_id: str, *, jobs: JobStore, writer: AnswerWriter, answers: AnswerCache
) -> bool:
    """Write, finish and cache the job's answer; False when the job is not ours to move.

    A transient model failure raises `TransientLLMError` for the caller to retry.
    """
    if not jobs.start_stage(job_id, Stage.GENERATE):
        return False
    job = jobs.get(job_id)
    if job is None:
        return False
    answer = compose_answer(job.question, job.passages, writer)
    if jobs.succeed(job_id, answer, last_stage=Stage.GENERATE) and answer.cacheable:
        answers.put(job.answer_cache_key, answer)
    return True


@scribes_task(TaskName.GENERATE_ANSWER, soft_time_limit=150, time_limit=180)
def generate_answer(self: ScribesTask, *, job_id: str) -> None:
    services = process_services()
    try:
        done = write_answer(
            job_id, jobs=services.jobs, writer=services.writer, answers=services.answers
        )
    except TransientLLMError as exc:
        attempt = self.request.retries
        limit = services.settings.llm_max_retries
        if attempt >= limit:
            raise
        delay = retry_delay(attempt, exc.retry_after)
        services.jobs.note(
            job_id,
            Stage.GENERATE,
            f"the language model is unavailable ({exc}); retry {attempt + 1} of {limit} "
            f"in {delay:.1f} s",
        )
        # Re-queued with a countdown: the worker thread is free while the job waits.
        raise self.retry(exc=exc, countdown=delay, max_retries=limit) from exc
    if not done:
        raise Ignore()
