"""What every question task shares: failing the job record when the task gives up."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from workers import resources

__all__ = ["JobTask", "stop_chain"]

log = logging.getLogger(__name__)


class JobTask(Task):  # type: ignore[misc]
    """A task that carries `job_id`: when it finally fails, the job says so instead of hanging."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        job_id = kwargs.get("job_id") if isinstance(kwargs, dict) else None
        if job_id is None:
            return
        code, message = failure_of(exc)
        resources.job_store().fail(job_id, code=code, message=message)
        log.warning("job %s failed in %s: %s", job_id, self.name, message)


def failure_of(exc: BaseException) -> tuple[str, str]:
    from rag.anthropic_writer import PermanentLLMError, TransientLLMError

    if isinstance(exc, SoftTimeLimitExceeded):
        return "timeout", f"the {exc.__class__.__name__} limit was reached; try again later"
    if isinstance(exc, TransientLLMError):
        return "llm_unavailable", f"the language model did not answer after retries: {exc}"
    if isinstance(exc, PermanentLLMError):
        return "llm_rejected", f"the language model refused the request: {exc}"
    return "internal_error", f"{exc.__class__.__name__}: {exc}"[:500]


def stop_chain(task: Task) -> None:
    """End the chain here: the job is finished (or owned by another delivery)."""
    task.request.chain = None
