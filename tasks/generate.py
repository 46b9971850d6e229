"""Queue `generate`: write the answer (Anthropic or extractive); Celery is the one retry layer.

Every model call goes through the shared circuit breaker (`rag.breaker`). While it is open
no call is made: the job is re-queued with a countdown to the next probe, or, with
`SCRIBES_LLM_FALLBACK=extractive`, answered at once by the extractive writer and marked
degraded. Transient model errors are retried with backoff up to `SCRIBES_LLM_MAX_RETRIES`;
waiting on an open breaker does not use up those retries, only the job's deadline.
A tenant whose budget is spent (`rag.budgets`) gets no model call either: its job fails with
`budget_exceeded`, or, with `SCRIBES_BUDGET_ACTION=degrade`, the extractive writer answers it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from celery.exceptions import Ignore
from redis import RedisError

from rag.answering import compose_answer, priced
from rag.breaker import Breaker, BreakerState
from rag.budgets import Budgets
from rag.caches.answers import AnswerCache
from rag.records.jobs import JobRecord, JobStore, Stage
from rag.services import process_services
from rag.telemetry.metrics import observe_llm_call
from rag.types import Answer, Failure, Usage
from rag.writers.base import (
    Abandoned,
    AnswerWriter,
    CallAbandoned,
    LLMError,
    PermanentLLMError,
    TransientLLMError,
)
from rag.writers.extractive import ExtractiveWriter
from tasks.base import ScribesTask, scribes_task
from tasks.names import TaskName

__all__ = ["CircuitOpen", "generate_answer", "retry_delay", "write_answer"]

log = logging.getLogger(__name__)

_BACKOFF_BASE_S = 1.0
_BACKOFF_CAP_S = 60.0
# How soon to look again when another delivery of the same job holds the model call.
_CALL_IN_PROGRESS_S = 5.0
_CLAIM_TTL_S = 9.0


class CircuitOpen(Exception):
    """No model call now: the breaker is open, or another delivery is calling for this job."""

    def __init__(self, retry_at: float, reason: str) -> None:
        super().__init__(reason)
        self.retry_at = retry_at
        self.reason = reason


def retry_delay(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, never sooner than the server asked."""
    backoff = random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt))
    return max(backoff, retry_after or 0.0)


def write_answer(
    job_id: str,
    *,
    jobs: JobStore,
    writer: AnswerWriter,
    answers: AnswerCache,
    breaker: Breaker | None = None,
    fallback: AnswerWriter | None = None,
    budgets: Budgets | None = None,
    spent_without_answer: SpendRecorder | None = None,
) -> bool:
    """Write, finish and cache the job's answer; False when the job is not ours to move.

    A writer that streams hands the job's event stream the answer's text as the leak filter
    clears it. A job cancelled meanwhile has its model call abandoned at the next piece the
    model writes: no answer is written, and what the call spent goes to
    `spent_without_answer` (the usage ledger), as does what a model call that broke off
    part-way had cost before its error is raised for a retry.

    `breaker` guards `writer` (None: the writer needs no guard, as the extractive one).
    `budgets` are checked before the model is called: a spent budget fails the job
    (`budget_exceeded`) or, to degrade, answers it with the extractive writer for free.
    Raises `TransientLLMError` for the caller to retry, `CircuitOpen` for it to wait.
    """
    if not jobs.start_stage(job_id, Stage.GENERATE):
        return False
    job = jobs.get(job_id)
    if job is None:
        return False
    # Only the model costs money: the extractive writer (no breaker) is never over budget.
    spent = None
    if budgets is not None and breaker is not None:
        spent = budgets.exceeded(job.tenant)
        if spent is not None and budgets.action == "reject":
            # Not retried: nothing changes for this job before the budget resets.
            return jobs.fail(job_id, Failure("budget_exceeded", spent.message))
    if spent is not None:
        drafted = compose_answer(job.question, job.passages, ExtractiveWriter())
        answer = replace(drafted, degraded=True, usage=Usage())
    else:
        stream = _AnswerStream(jobs, job_id)
        try:
            if breaker is None:
                answer = compose_answer(
                    job.question,
                    job.passages,
                    writer,
                    on_answer_text=stream.text,
                    keep_going=stream.keep_going,
                )
            else:
                answer = _guarded_answer(
                    job,
                    jobs=jobs,
                    writer=writer,
                    breaker=breaker,
                    fallback=fallback,
                    stream=stream,
                    spent_without_answer=spent_without_answer,
                )
        except CallAbandoned as exc:
            log.info("job %s was cancelled; its model call was abandoned", job_id)
            if spent_without_answer is not None:
                spent_without_answer(job, exc.spent, exc.model, "abandoned")
            return True
    # Cached before the job is seen finished: a client that asks again the moment it
    # reads the answer finds it in the exact cache, and pays for no second call.
    if answer.cacheable and job.cache_mode.writes:
        answers.put(job.answer_cache_key, answer)
    jobs.succeed(job_id, answer, last_stage=Stage.GENERATE)
    return True


def _guarded_answer(
    job: JobRecord,
    *,
    jobs: JobStore,
    writer: AnswerWriter,
    breaker: Breaker,
    fallback: AnswerWriter | None,
    stream: _AnswerStream,
    spent_without_answer: SpendRecorder | None = None,
) -> Answer:
    """The answer from one model call under the job's call claim and the breaker's permit.

    The claim comes first: a probe permit taken by a delivery that then stood aside would
    hold the half-open breaker until its lease ran out.
    """
    with _claimed_call(jobs, job.id):
        permit = breaker.acquire()
        if not permit.allowed:
            if fallback is None:
                raise CircuitOpen(permit.retry_at, "the language model's circuit is open")
            # Free and at once, but not what the model would have said: never cached.
            drafted = compose_answer(job.question, job.passages, fallback)
            return replace(drafted, degraded=True, usage=Usage())
        model = str(getattr(writer, "model", "") or "unknown")
        started = time.perf_counter()
        try:
            answer = compose_answer(
                job.question,
                job.passages,
                writer,
                on_answer_text=stream.text,
                keep_going=stream.keep_going,
            )
        except CallAbandoned:
            # The model was answering; the job's client stopped listening.
            observe_llm_call(model, "abandoned", time.perf_counter() - started)
            breaker.succeeded(permit)
            raise
        except TransientLLMError as exc:
            observe_llm_call(model, "transient_error", time.perf_counter() - started)
            _count_failed_call(job, model, exc, spent_without_answer)
            if breaker.failed(permit, retry_after=exc.retry_after) is not BreakerState.CLOSED:
                # An outage, not this job's bad luck: wait for it without using up retries.
                raise CircuitOpen(time.time() + 1, f"the model is failing ({exc})") from exc
            raise
        except PermanentLLMError as exc:
            observe_llm_call(model, "permanent_error", time.perf_counter() - started)
            _count_failed_call(job, model, exc, spent_without_answer)
            breaker.succeeded(permit)  # the model answered; the request was at fault
            raise
    # Its tokens and dollars are counted with the job, as it finishes (rag.services).
    observe_llm_call(answer.model or model, "ok", time.perf_counter() - started)
    breaker.succeeded(permit)
    return answer


# (the job, what the call spent, its model, which of the job's calls it was): a call that
# ended without an answer, whose spend still counts.
SpendRecorder = Callable[[JobRecord, Usage, str, str], None]


def _count_failed_call(
    job: JobRecord, model: str, exc: LLMError, record: SpendRecorder | None
) -> None:
    """What a call that broke off part-way spent is billed: count it before the retry."""
    if exc.spent is None or record is None:
        return
    try:
        record(job, priced(model, exc.spent), model, f"failed-{uuid.uuid4().hex}")
    except Exception:  # counting must never turn a retry into a failure
        log.exception("could not count what job %s's failed model call spent", job.id)


class _AnswerStream:
    """The answer's cleared text onto the job's event stream, and the cancel check."""

    # How often the model's pieces look at the job's status; a cancel waits at most this.
    CHECK_EVERY_S = 0.1

    def __init__(self, jobs: JobStore, job_id: str) -> None:
        self._jobs = jobs
        self._job_id = job_id
        self._checked = time.monotonic()
        self._first = True  # one stream per delivery of the task, so per model call

    def text(self, cleared: str) -> None:
        first, self._first = self._first, False
        if not self._jobs.add_text(self._job_id, cleared, first=first):
            raise Abandoned()

    def keep_going(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.CHECK_EVERY_S:
            return
        self._checked = now
        if not self._jobs.is_running(self._job_id):
            raise Abandoned()


@contextmanager
def _claimed_call(jobs: JobStore, job_id: str) -> Iterator[None]:
    """Hold the job's model-call claim for the call, renewed while it runs.

    The claim is short and renewed, so that a delivery that died mid-call (SIGKILL, a lost
    host) frees it within `_CLAIM_TTL_S` and a redelivery can go on.
    """
    token = jobs.claim_llm_call(job_id, ttl_s=_CLAIM_TTL_S)
    if token is None:
        raise CircuitOpen(
            time.time() + _CALL_IN_PROGRESS_S, "another delivery of this job is calling the model"
        )
    done = threading.Event()

    def renew() -> None:
        while not done.wait(_CLAIM_TTL_S / 3):
            try:
                jobs.renew_llm_call(job_id, token, ttl_s=_CLAIM_TTL_S)
            except RedisError:
                log.warning("could not renew the model-call claim of job %s", job_id)

    renewer = threading.Thread(target=renew, name="scribes-llm-claim", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()
        jobs.release_llm_call(job_id, token)


# No retry count: waiting on the model is bounded by the job's deadline (`expires`).
@scribes_task(TaskName.GENERATE_ANSWER, soft_time_limit=150, time_limit=180, max_retries=None)
def generate_answer(self: ScribesTask, *, job_id: str) -> None:
    services = process_services()
    settings = services.settings
    guarded = settings.uses_anthropic
    try:
        done = write_answer(
            job_id,
            jobs=services.jobs,
            writer=services.writer,
            answers=services.answers,
            breaker=services.llm_breaker if guarded else None,
            fallback=services.fallback_writer,
            budgets=services.budgets if guarded else None,
            spent_without_answer=services.spent_without_answer,
        )
    except CircuitOpen as exc:
        # A little jitter, so that the jobs waiting on one probe do not all come back at once.
        delay = max(0.0, exc.retry_at - time.time()) + random.uniform(0.1, 1.0)
        services.jobs.note(
            job_id,
            Stage.GENERATE,
            f"waiting for the language model: {exc.reason}; trying again in {delay:.0f} s",
        )
        raise self.retry(countdown=delay) from exc
    except TransientLLMError as exc:
        failures = services.jobs.count_llm_failure(job_id)
        limit = settings.llm_max_retries
        if failures > limit:
            raise
        delay = retry_delay(failures - 1, exc.retry_after)
        services.jobs.note(
            job_id,
            Stage.GENERATE,
            f"the language model is unavailable ({exc}); retry {failures} of {limit} "
            f"in {delay:.1f} s",
        )
        # Re-queued with a countdown: the worker thread is free while the job waits.
        raise self.retry(exc=exc, countdown=delay) from exc
    if not done:
        raise Ignore()
