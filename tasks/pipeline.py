"""How work is enqueued: the question chain, document indexing and purges. Ids, never objects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from celery import chain

from rag.documents import DocumentRecord, DocumentRegistry
from rag.query_batch import PendingQuestions
from tasks.embed import embed_query
from tasks.generate import generate_answer
from tasks.index import index_document
from tasks.retrieve import retrieve_context
from tasks.store import store_purge

__all__ = ["enqueue_document", "enqueue_purge", "enqueue_question"]

# Index work may wait behind a large batch; it is never worth dropping.
INDEX_EXPIRES = timedelta(days=1)


def enqueue_question(job_id: str, *, deadline_s: int, pending: PendingQuestions) -> None:
    """embed → retrieve → generate; a step not started by the deadline is dropped."""
    pending.add(job_id)
    expires = datetime.now(UTC) + timedelta(seconds=deadline_s)
    chain(
        embed_query.si(job_id=job_id).set(expires=expires),
        retrieve_context.si(job_id=job_id).set(expires=expires),
        generate_answer.si(job_id=job_id).set(expires=expires),
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
