"""How work is enqueued: the question chain, document indexing and purges. Ids, never objects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from celery import chain

from rag.records.documents import DocumentRecord, DocumentRegistry
from rag.records.pending import PendingQuestions
from tasks.app import app
from tasks.context import REQUEST_ID_HEADER, TENANT_HEADER
from tasks.embed import embed_query
from tasks.generate import generate_answer
from tasks.index import index_document
from tasks.retrieve import retrieve_context
from tasks.store import store_purge

__all__ = ["broker_answers", "enqueue_document", "enqueue_purge", "enqueue_question"]

# Index work may wait behind a large batch; it is never worth dropping.
INDEX_EXPIRES = timedelta(days=1)


def enqueue_question(
    job_id: str,
    *,
    tenant: str,
    request_id: str | None,
    deadline_s: int,
    pending: PendingQuestions,
) -> None:
    """embed → retrieve → generate; a step not started by the deadline is dropped."""
    pending.add(job_id)
    options: dict[str, Any] = {
        "expires": datetime.now(UTC) + timedelta(seconds=deadline_s),
        # Read by every task's log lines (tasks.context); never by the work itself.
        "headers": {TENANT_HEADER: tenant, REQUEST_ID_HEADER: request_id},
    }
    chain(
        embed_query.si(job_id=job_id).set(**options),
        retrieve_context.si(job_id=job_id).set(**options),
        generate_answer.si(job_id=job_id).set(**options),
    ).apply_async()


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


def broker_answers(timeout_s: float = 2.0) -> bool:
    """Whether a connection to the broker can be made now."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout_s)
        return True
    except Exception:  # kombu raises each transport's own errors
        return False
