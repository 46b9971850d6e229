"""Queue `webhook`: POST a finished job to its callback URL, signed, until it is taken.

`deliver_webhook` makes one attempt (`rag.webhooks.post_webhook`), keeps it on the job, and
re-queues itself with a countdown for the next: base × 2^(n-1) seconds ±20 %, the
receiver's Retry-After when longer, up to `SCRIBES_WEBHOOK_MAX_ATTEMPTS`. A 2xx delivers;
408, 429, 5xx, timeouts and connection errors are tried again; any other answer gives up at
once. The outbox (`rag.records.webhooks`) is the backstop for a task that was never sent or
was lost: `resend_overdue`, run by the heartbeat's sweep, sends those entries again.
"""

from __future__ import annotations

import logging
import time

from celery.exceptions import Ignore

from rag.records.jobs import JobStore
from rag.records.webhooks import WebhookDeliveries
from rag.services import Services, process_services
from rag.settings import Settings
from rag.telemetry.metrics import WEBHOOK_DELIVERIES
from rag.views import webhook_body
from rag.webhooks import (
    ATTEMPT_HEADER,
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    AllowedHosts,
    WebhookAttempt,
    WebhookState,
    post_webhook,
    retry_delay,
    signature_header,
)
from tasks.base import ScribesTask, scribes_task
from tasks.names import TaskName

__all__ = [
    "deliver_once",
    "deliver_webhook",
    "resend_overdue",
    "send_webhook",
    "send_webhooks_from",
]

log = logging.getLogger(__name__)


def deliver_once(
    job_id: str,
    attempt: int,
    *,
    jobs: JobStore,
    deliveries: WebhookDeliveries,
    settings: Settings,
) -> float | None:
    """Make attempt `attempt` of the job's webhook if it is the next one; the seconds to
    wait before the one after it, or None when there is nothing more to do."""
    claim = deliveries.begin(job_id, attempt, max_attempts=settings.webhook_max_attempts)
    if claim.url is None:
        log.info("webhook attempt %d of job %s not made: %s", attempt, job_id, claim.reason)
        return None
    job = jobs.get(job_id)
    if job is None:
        return None
    body = webhook_body(job)
    headers = {
        SIGNATURE_HEADER: signature_header(settings.webhook_secret_value, body),
        EVENT_ID_HEADER: job_id,
        ATTEMPT_HEADER: str(attempt),
    }
    started = time.time()
    result = post_webhook(
        claim.url,
        body,
        headers,
        allowed=AllowedHosts(settings.webhook_allowed_hosts),
        timeout_s=settings.webhook_timeout_s,
    )
    record = WebhookAttempt(
        attempt=attempt,
        at=started,
        status=result.status,
        error=None if result.delivered else result.error,
        duration_ms=round((time.time() - started) * 1000, 1),
    )
    if result.delivered:
        deliveries.record(job_id, record, WebhookState.DELIVERED)
        WEBHOOK_DELIVERIES.labels("delivered").inc()
        return None
    if not result.retryable or attempt >= settings.webhook_max_attempts:
        deliveries.record(job_id, record, WebhookState.FAILED)
        WEBHOOK_DELIVERIES.labels("failed").inc()
        log.warning(
            "webhook of job %s given up after attempt %d: %s %s",
            job_id,
            attempt,
            result.status or "",
            result.error,
        )
        return None
    delay = retry_delay(
        attempt, base_s=settings.webhook_backoff_s, retry_after_s=result.retry_after_s
    )
    deliveries.record(job_id, record, WebhookState.PENDING, next_at=time.time() + delay)
    WEBHOOK_DELIVERIES.labels("retried").inc()
    log.info(
        "webhook attempt %d of job %s failed (%s %s); next in %.1f s",
        attempt,
        job_id,
        result.status or "",
        result.error,
        delay,
    )
    return delay


# No retry count here: the attempts are counted on the job (SCRIBES_WEBHOOK_MAX_ATTEMPTS).
@scribes_task(TaskName.WEBHOOK_DELIVER, soft_time_limit=60, time_limit=90, max_retries=None)
def deliver_webhook(self: ScribesTask, *, job_id: str, attempt: int = 1) -> None:
    services = process_services()
    delay = deliver_once(
        job_id,
        attempt,
        jobs=services.jobs,
        deliveries=services.webhooks,
        settings=services.settings,
    )
    if delay is None:
        raise Ignore()
    # Re-queued with a countdown, no thread asleep meanwhile; the outbox entry, due at the
    # same time, brings it back should this message be lost.
    raise self.retry(countdown=delay, kwargs={"job_id": job_id, "attempt": attempt + 1})


def send_webhook(job_id: str, *, attempt: int = 1) -> None:
    deliver_webhook.apply_async(kwargs={"job_id": job_id, "attempt": attempt})


def send_webhooks_from(services: Services) -> None:
    """Have `services` send each finished job's webhook task as the job finishes."""
    services.webhook_sender = send_webhook


def resend_overdue(services: Services, *, limit: int = 100) -> list[str]:
    """Send again every delivery overdue by `SCRIBES_WEBHOOK_RESEND_AFTER_S`: its task was
    never sent, or was lost. A repeat of one that was only slow makes no second attempt."""
    deliveries = services.webhooks
    overdue = deliveries.overdue(
        time.time() - services.settings.webhook_resend_after_s, limit=limit
    )
    for job_id in overdue:
        deliveries.resent(job_id)
        send_webhook(job_id, attempt=deliveries.next_attempt(job_id))
    if overdue:
        log.info("sent %d overdue webhook deliveries again", len(overdue))
    return overdue
