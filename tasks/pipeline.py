"""How work is enqueued: questions (waiting for one embed task, then each job's retrieve →
generate chain), document indexing and purges. Ids, never objects."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import chain

from rag.records.documents import DocumentRecord, DocumentRegistry, DocumentStatus
from rag.records.jobs import JobStore, Stage
from rag.records.pending import PendingQuestions, WaitingQuestion
from rag.records.staging import ChunkStaging
from rag.telemetry.tracing import continued_trace, inject_trace, tag_span, tracer
from tasks.app import app
from tasks.context import REQUEST_ID_HEADER, TENANT_HEADER
from tasks.embed import embed_pending, embed_query
from tasks.generate import generate_answer
from tasks.index import index_document
from tasks.retrieve import retrieve_context
from tasks.store import store_forget_questions, store_purge, store_upsert

__all__ = [
    "broker_answers",
    "enqueue_document",
    "enqueue_forget_questions",
    "enqueue_purge",
    "enqueue_questions",
    "requeue_stalled",
    "requeue_stalled_documents",
    "schedule_embedding",
    "send_on_to_retrieve",
]

log = logging.getLogger(__name__)

# Index work may wait behind a large batch; it is never worth dropping.
INDEX_EXPIRES = timedelta(days=1)


_STEPS = (embed_query, retrieve_context, generate_answer)
_FIRST_STEP = {Stage.QUEUED: 0, Stage.EMBED: 0, Stage.RETRIEVE: 1, Stage.GENERATE: 2}


def enqueue_questions(
    job_ids: Sequence[str],
    *,
    pending: PendingQuestions,
) -> None:
    """Put the jobs among the questions waiting for their vector and make sure an embed
    task is on its way for them: it embeds all that wait at once, then sends each job on
    to retrieve → generate (`tasks.embed.embed_pending`)."""
    if not job_ids:
        return
    pending.add_many(job_ids)
    schedule_embedding(pending)


def schedule_embedding(pending: PendingQuestions) -> None:
    """Send `scribes.embed.pending` unless one is already on its way."""
    if not pending.schedule():
        return
    try:
        embed_pending.apply_async()
    except Exception:
        pending.unschedule()  # the next submit tries again
        raise


def _enqueue_steps(
    job_id: str, stage: Stage, *, tenant: str, request_id: str | None, expires: datetime
) -> None:
    # Read by every task's log lines (tasks.context); never by the work itself.
    headers: dict[str, str | None] = {TENANT_HEADER: tenant, REQUEST_ID_HEADER: request_id}
    # The trace goes on from here even where this process does not trace its publishes
    # (a prefork pool's main process runs the stall sweep); where it does, the Celery
    # instrumentation writes its publish span over this.
    inject_trace(headers)
    options: dict[str, Any] = {"expires": expires, "headers": headers}
    steps = _STEPS[_FIRST_STEP[stage] :]
    chain(*(step.si(job_id=job_id).set(**options) for step in steps)).apply_async()


def send_on_to_retrieve(
    jobs: JobStore, waiting: Sequence[WaitingQuestion], *, deadline_s: int
) -> None:
    """retrieve → generate for jobs another job's embed task embedded; then mark them, so
    that their own embed tasks stop. Sent first: a task that dies between the two leaves a
    job sent on twice at worst (its stages repeat safely), never a job sent on by nobody."""
    for job in waiting:
        expires = datetime.fromtimestamp(job.created_at + deadline_s, UTC)
        # Back in the job's own trace, under the request that asked it: one span for the
        # job's part of the batch, over its retrieve publish.
        with (
            continued_trace(job.traceparent),
            tracer.start_as_current_span("embed question") as span,
        ):
            tag_span(job_id=job.job_id, tenant=job.tenant, request_id=job.request_id, span=span)
            span.set_attribute("scribes.batch_size", len(waiting))
            _enqueue_steps(
                job.job_id,
                Stage.RETRIEVE,
                tenant=job.tenant,
                request_id=job.request_id,
                expires=expires,
            )
    jobs.handed_on([job.job_id for job in waiting])


def requeue_stalled_documents(
    documents: DocumentRegistry,
    staging: ChunkStaging,
    *,
    stall_s: float,
    index_backlog: int,
) -> list[tuple[str, str]]:
    """The same backstop for documents: a queued revision with no progress for `stall_s`
    is indexed again (or only written, if its chunks are staged). Not while the index queue
    has a backlog: then its message is most likely still waiting in it."""
    if index_backlog:
        return []
    requeued: list[tuple[str, str]] = []
    for tenant, document_id in documents.stalled(quiet_since=time.time() - stall_s):
        record = documents.get(tenant, document_id)
        if record is None or record.status is not DocumentStatus.QUEUED:
            documents.forget_queued(tenant, document_id)
            continue
        ids = {"tenant": tenant, "document_id": document_id, "revision": record.revision}
        if staging.load(tenant, document_id, record.revision) is not None:
            store_upsert.apply_async(kwargs=ids, expires=datetime.now(UTC) + INDEX_EXPIRES)
        else:
            index_document.apply_async(kwargs=ids, expires=datetime.now(UTC) + INDEX_EXPIRES)
        documents.touch(tenant, document_id)
        log.warning("document %s/%s made no progress; enqueued it again", tenant, document_id)
        requeued.append((tenant, document_id))
    return requeued


def requeue_stalled(jobs: JobStore, *, stall_s: float, deadline_s: int) -> list[str]:
    """Enqueue again, from its stage, every job whose record has not moved for `stall_s`.

    The backstop for a message lost outright (kombu's Redis transport takes a message with
    BRPOP before it records it as unacknowledged: a worker killed in between loses it).
    Running a stage twice is safe: the record moves forward only, and a model call is
    never made twice at once for one job.
    """
    now = time.time()
    requeued: list[str] = []
    for job_id in jobs.stalled(quiet_since=now - stall_s):
        try:
            job = jobs.get(job_id)
        except (KeyError, ValueError, TypeError):
            # A record that cannot be read cannot be resumed; it must not stop the others.
            log.exception("job %s has an unreadable record; the sweep leaves it", job_id)
            jobs.forget(job_id)
            continue
        if job is None or job.finished or now - job.created_at > deadline_s:
            jobs.forget(job_id)  # nothing to do, or the next poll fails it
            continue
        expires = datetime.fromtimestamp(job.created_at + deadline_s, UTC)
        stage = job.stage
        if stage in (Stage.QUEUED, Stage.EMBED) and job.query_vector is not None:
            # Embedded already, in a batch whose task sent it on (and marked it so): it is
            # its retrieve message that was lost. Its own embed task would stop at the mark.
            stage = Stage.RETRIEVE
        # Back into the job's own trace, under the API request that created it.
        with (
            continued_trace(job.traceparent),
            tracer.start_as_current_span("requeue stalled job") as span,
        ):
            tag_span(job_id=job_id, tenant=job.tenant, request_id=job.request_id, span=span)
            span.set_attribute("scribes.stage", stage.value)
            _enqueue_steps(
                job_id, stage, tenant=job.tenant, request_id=job.request_id, expires=expires
            )
        jobs.touch(job_id)
        log.warning("job %s made no progress at stage %s; enqueued it again", job_id, stage)
        requeued.append(job_id)
    return requeued


def enqueue_document(
    registry: DocumentRegistry,
    *,
    tenant: str,
    document_id: str,
    title: str,
    text: str,
    metadata: dict[str, Any],
) -> DocumentRecord:
    record = registry.submit(
        tenant=tenant, document_id=document_id, title=title, text=text, metadata=metadata
    )
    index_document.apply_async(
        kwargs={"tenant": tenant, "document_id": document_id, "revision": record.revision},
        expires=datetime.now(UTC) + INDEX_EXPIRES,
    )
    return record


def enqueue_purge(*, tenant: str, document_id: str, up_to_revision: int) -> None:
    store_purge.apply_async(
        kwargs={"tenant": tenant, "document_id": document_id, "up_to_revision": up_to_revision},
        expires=datetime.now(UTC) + INDEX_EXPIRES,
    )


def enqueue_forget_questions(tenant: str) -> None:
    """Have the store's owner empty the tenant's semantic-cache index."""
    store_forget_questions.apply_async(
        kwargs={"tenant": tenant}, expires=datetime.now(UTC) + INDEX_EXPIRES
    )


def broker_answers(timeout_s: float = 2.0) -> bool:
    """Whether a connection to the broker can be made now."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout_s)
        return True
    except Exception:  # kombu raises each transport's own errors
        return False
