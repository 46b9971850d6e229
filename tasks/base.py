"""The one way to define a Scribes task: `@scribes_task(TaskName.X, …)` over `ScribesTask`.

Every task then:
- carries its job, tenant and request ids into every log line of its run, Celery's own
  included (`tasks.context`);
- measures its run time and how long its message waited on the broker, from the enqueue
  time stamped into the message headers at publish, and hands both to the observers
  registered with `observe_timings` (the metrics exporter is one);
- writes a final failure where the user looks: the job record for a question task, the
  document record for an index or store task, with a code and a reason;
- with tracing on (`trace_tasks`), runs in a span of OpenTelemetry's Celery instrumentation,
  which carries the trace context in the message headers from each publish to its run,
  and puts the task's ids on that span.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from celery import Task, shared_task
from celery.exceptions import Ignore, Retry, SoftTimeLimitExceeded
from celery.signals import before_task_publish, task_postrun, task_prerun
from opentelemetry.instrumentation.celery import CeleryInstrumentor

from rag.services import process_services
from rag.settings import Settings
from rag.telemetry.tracing import configure_tracing, tag_span
from rag.types import Failure
from rag.writers.base import PermanentLLMError, TransientLLMError
from tasks.context import REQUEST_ID_HEADER, TENANT_HEADER, TaskIds, bound_ids, set_ids
from tasks.names import TaskName

__all__ = [
    "ENQUEUED_AT_HEADER",
    "MAX_DELIVERIES",
    "REDIS_DOWN",
    "ScribesTask",
    "TaskTiming",
    "failure_of",
    "observe_timings",
    "scribes_task",
    "stop_chain",
    "trace_tasks",
]

log = logging.getLogger(__name__)

ENQUEUED_AT_HEADER = "scribes_enqueued_at"
# A message delivered this many times that never finished is given up (see `_poisoned`).
MAX_DELIVERIES = 3
# Redis is away (down, restarting, loading its append-only file): not the task's failure.
REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
)


@dataclass(frozen=True, slots=True)
class TaskTiming:
    """One run of a task: seconds on the broker before it started, seconds it ran."""

    task: str
    queue: str
    outcome: str  # succeeded, retried, skipped, failed or poisoned
    wait_s: float | None
    run_s: float


_observers: list[Callable[[TaskTiming], None]] = []


def observe_timings(observer: Callable[[TaskTiming], None]) -> None:
    """Call `observer` after every task run in this process (it must be quick and not raise)."""
    _observers.append(observer)


@before_task_publish.connect
def _stamp_enqueue_time(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # Every publish, a retry's too, so a retry's wait starts when it was re-queued.
    if headers is not None:
        headers[ENQUEUED_AT_HEADER] = time.time()


@task_prerun.connect
def _bind_run_ids(task: Any = None, kwargs: Any = None, **_: Any) -> None:
    # Until postrun, so that Celery's own lines about the run (succeeded, retry) carry them.
    if isinstance(task, ScribesTask):
        set_ids(task._ids(kwargs))


@task_postrun.connect
def _unbind_run_ids(**_: Any) -> None:
    set_ids(None)


class ScribesTask(Task):  # type: ignore[misc]
    """The base of every task; see the module's docstring."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.time()
        wait_s = self._queue_wait(started)
        outcome = "failed"
        ids = self._ids(kwargs)
        with bound_ids(ids):
            # The run's span, started by the instrumentation before this call, if tracing.
            tag_span(
                job_id=ids.job_id,
                tenant=ids.tenant,
                request_id=ids.request_id,
                document_id=ids.document_id,
                revision=ids.revision,
            )
            if self._poisoned(kwargs):
                self._report(TaskTiming(self.name, self._queue(), "poisoned", wait_s, 0.0))
                return None
            try:
                # run(), not super().__call__(): that would push a fresh request and hide
                # the delivery's own (its retries, chain and headers) from the task.
                result = self.run(*args, **kwargs)
                outcome = "succeeded"
                return result
            except Retry:
                outcome = "retried"
                raise
            except Ignore:
                outcome = "skipped"
                raise
            except REDIS_DOWN as exc:
                # Redis being away is not this task's fault: back off and run again, never
                # using up the task's own retries. If the retry cannot be published either,
                # the message stays unacknowledged and the broker hands it back.
                outcome = "retried"
                log.warning("Redis unreachable (%s); retrying %s", exc, self.name)
                raise self.retry(
                    exc=exc,
                    countdown=min(30.0, 2.0 ** min(self.request.retries, 5)),
                    max_retries=self.request.retries + 1,
                ) from exc
            finally:
                self._report(
                    TaskTiming(self.name, self._queue(), outcome, wait_s, time.time() - started)
                )

    def _ids(self, kwargs: Any) -> TaskIds:
        request = self.request
        headers = {
            name: getattr(request, name, None) for name in (TENANT_HEADER, REQUEST_ID_HEADER)
        }
        return TaskIds.of_message(kwargs if isinstance(kwargs, dict) else {}, headers)

    def _queue_wait(self, started: float) -> float | None:
        enqueued = getattr(self.request, ENQUEUED_AT_HEADER, None)
        if enqueued is None:
            return None
        ready = float(enqueued)
        eta = self.request.eta
        if eta:
            # A countdown is time the task chose to wait, not time it queued.
            ready = max(ready, datetime.fromisoformat(eta).timestamp())
        return max(0.0, started - ready)

    def _queue(self) -> str:
        info = self.request.delivery_info or {}
        return str(info.get("routing_key") or TaskName(self.name).queue.value)

    def _report(self, timing: TaskTiming) -> None:
        log.debug(
            "%s %s in %.1f ms after %s ms queued",
            timing.task,
            timing.outcome,
            timing.run_s * 1000,
            "?" if timing.wait_s is None else f"{timing.wait_s * 1000:.1f}",
        )
        for observer in _observers:
            try:
                observer(timing)
            except Exception:  # an observer must never fail the task it watches
                log.exception("task timing observer failed")

    def _poisoned(self, kwargs: Any) -> bool:
        """True when this message has already been delivered `MAX_DELIVERIES` times without
        finishing (each time its worker died, or was killed for its memory): it is given up
        as failed instead of taking the next worker down too."""
        if not (self.request.delivery_info or {}).get("redelivered"):
            return False
        try:
            runs = process_services().jobs.count_delivery(
                f"{self.request.id}:{self.request.retries}"
            )
        except REDIS_DOWN:
            return False
        if runs < MAX_DELIVERIES:
            return False
        self._give_up(
            kwargs,
            Failure(
                "poison",
                f"its worker died {runs} times while handling it; it is not tried again",
            ),
        )
        return True

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """The task gave up: say so on the job or document, or it stays queued for ever."""
        if isinstance(exc, REDIS_DOWN):
            return  # the message comes back (see __call__); the job is not failed for it
        self._give_up(kwargs, failure_of(exc))

    def _give_up(self, kwargs: Any, failure: Failure) -> None:
        ids = self._ids(kwargs)
        services = process_services()
        with bound_ids(ids):
            if ids.job_id is not None:
                services.jobs.fail(ids.job_id, failure)
                log.warning("job failed in %s: %s", self.name, failure.message)
            elif ids.document is not None:
                tenant, document_id, revision = ids.document
                services.documents.mark_failed(tenant, document_id, revision, failure)
                log.warning("document failed in %s: %s", self.name, failure.message)
            else:
                log.warning("%s failed: %s", self.name, failure.message)


def scribes_task(
    name: TaskName,
    *,
    soft_time_limit: int,
    time_limit: int,
    max_retries: int | None = 3,
    retry_errors: bool = False,
) -> Callable[[Callable[..., None]], Any]:
    """Register a thin wrapper as the task `name`, bound, on `ScribesTask`, with its limits.

    `retry_errors`: retry an unexpected error `max_retries` times with backoff and jitter
    (2, 4, 8 s …) before giving up, each time at the back of the queue, so that one bad
    document never holds up the ones behind it.
    """
    retrying: dict[str, Any] = (
        {
            "autoretry_for": (Exception,),
            "dont_autoretry_for": (*REDIS_DOWN, SoftTimeLimitExceeded),
            "retry_backoff": 2,
            "retry_backoff_max": 60,
            "retry_jitter": True,
        }
        if retry_errors
        else {}
    )
    decorator: Callable[[Callable[..., None]], Any] = shared_task(
        name=name.value,
        bind=True,
        base=ScribesTask,
        soft_time_limit=soft_time_limit,
        time_limit=time_limit,
        max_retries=max_retries,
        **retrying,
    )
    return decorator


def trace_tasks(settings: Settings, component: str) -> bool:
    """Trace this process's task publishes and runs, when tracing is configured; once per
    process (after a fork), by the API and by every worker process that runs tasks."""
    provider = configure_tracing(settings, component)
    if provider is None:
        return False
    instrumentor = CeleryInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)
    return True


def failure_of(exc: BaseException) -> Failure:
    if isinstance(exc, SoftTimeLimitExceeded):
        return Failure("timeout", "the task's time limit was reached; try again later")
    if isinstance(exc, TransientLLMError):
        return Failure("llm_unavailable", f"the language model did not answer after retries: {exc}")
    if isinstance(exc, PermanentLLMError):
        return Failure("llm_rejected", f"the language model refused the request: {exc}")
    return Failure("internal_error", f"{exc.__class__.__name__}: {exc}"[:500])


def stop_chain(task: Task) -> None:
    """End the chain here: the job is finished (or owned by another delivery)."""
    task.request.chain = None
