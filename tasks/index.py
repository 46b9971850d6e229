"""Queue `index`: chunk and embed a document revision in batches, off the question path."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from celery import Task, shared_task

from rag.chunking import chunk_text
from rag.indexing import build_points
from tasks.names import TaskName
from tasks.store import store_upsert
from workers import resources

__all__ = ["index_document"]

log = logging.getLogger(__name__)

# Staged chunks live a day; a store write that has not run by then is of no use.
STORE_EXPIRES = timedelta(days=1)


@shared_task(name=TaskName.INDEX_DOCUMENT.value, bind=True, soft_time_limit=600, time_limit=660)
def index_document(self: Task, *, tenant: str, document_id: str, revision: int) -> None:
    registry = resources.document_registry()
    if not registry.is_current(tenant, document_id, revision):
        log.info("skipping %s/%s@%d: superseded or deleted", tenant, document_id, revision)
        return
    document = registry.load_text(tenant, document_id, revision)
    if document is None:
        registry.mark_failed(
            tenant, document_id, revision, error="the text expired before it was indexed"
        )
        return
    config = resources.settings()
    chunks = chunk_text(
        document.text,
        counter=resources.token_counter(),
        max_tokens=config.chunk_tokens,
        overlap_tokens=config.chunk_overlap_tokens,
    )
    if not chunks:
        registry.mark_failed(tenant, document_id, revision, error="no text to index")
        return
    # The title rides along in the embedded text (notes are often asked about by title),
    # cut short so that chunk and title stay inside the model's 256-token window.
    title = document.title[:80]
    vectors = resources.embedder().embed(
        [f"{title}\n{chunk.text}" for chunk in chunks],
        batch_size=config.embedding_batch_size,
    )
    points = build_points(
        tenant=tenant,
        document_id=document_id,
        revision=revision,
        title=document.title,
        chunks=chunks,
        vectors=vectors,
    )
    resources.chunk_staging().save(points)
    store_upsert.apply_async(
        kwargs={"tenant": tenant, "document_id": document_id, "revision": revision},
        expires=datetime.now(UTC) + STORE_EXPIRES,
    )
