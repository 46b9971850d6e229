"""Queue `index`: chunk and embed a document revision in batches, off the question path."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import numpy as np

from rag.caches.chunks import ChunkVectorCache
from rag.chunking import chunk_text
from rag.embedding import Embedder
from rag.indexing import build_points, embedded_text
from rag.records.documents import DocumentRegistry
from rag.records.staging import ChunkStaging
from rag.services import process_services
from rag.telemetry.metrics import count_cache
from rag.tokens import TokenCounter
from rag.types import Failure
from tasks.base import ScribesTask, scribes_task
from tasks.names import TaskName
from tasks.store import store_upsert

__all__ = ["index_document", "stage_revision"]

log = logging.getLogger(__name__)

# Staged chunks live a day; a store write that has not run by then is of no use.
STORE_EXPIRES = timedelta(days=1)


def stage_revision(
    tenant: str,
    document_id: str,
    revision: int,
    *,
    documents: DocumentRegistry,
    staging: ChunkStaging,
    cache: ChunkVectorCache,
    embedder: Embedder,
    counter: TokenCounter,
    chunk_tokens: int,
    overlap_tokens: int,
    batch_size: int,
) -> bool:
    """Chunk and embed the revision into the staging area; True when the store should
    apply it, False when there is nothing to write (superseded, deleted, or failed).

    Only the chunks whose embedded text is not in `cache` go to the model, in one batch; a
    text that repeats within the note is looked up and embedded once.
    """
    if not documents.is_current(tenant, document_id, revision):
        log.info("skipping %s/%s@%d: superseded or deleted", tenant, document_id, revision)
        return False
    documents.touch(tenant, document_id)
    document = documents.load_text(tenant, document_id, revision)
    if document is None:
        documents.mark_failed(
            tenant,
            document_id,
            revision,
            Failure("text_expired", "the text expired before it was indexed; submit it again"),
        )
        return False
    chunks = chunk_text(
        document.text, counter=counter, max_tokens=chunk_tokens, overlap_tokens=overlap_tokens
    )
    if not chunks:
        documents.mark_failed(tenant, document_id, revision, Failure("no_text", "no text to index"))
        return False
    texts = [embedded_text(document.title, chunk.text) for chunk in chunks]
    distinct = list(dict.fromkeys(texts))
    reused = cache.get_many(tenant, distinct)
    missing = [text for text in distinct if text not in reused]
    fresh = dict(zip(missing, embedder.embed(missing, batch_size=batch_size), strict=True))
    cache.put_many(tenant, fresh, reused=list(reused))
    count_cache("chunk_embedding", hits=len(reused), misses=len(missing))
    log.info(
        "staged %s/%s@%d: %d chunks, %d embedded, %d reused",
        tenant,
        document_id,
        revision,
        len(chunks),
        len(fresh),
        len(reused),
    )
    known = reused | fresh
    vectors = np.stack([known[text] for text in texts])
    staging.save(
        build_points(
            tenant=tenant,
            document_id=document_id,
            revision=revision,
            title=document.title,
            chunks=chunks,
            vectors=vectors,
        )
    )
    return True


@scribes_task(TaskName.INDEX_DOCUMENT, soft_time_limit=600, time_limit=660, retry_errors=True)
def index_document(self: ScribesTask, *, tenant: str, document_id: str, revision: int) -> None:
    services = process_services()
    settings = services.settings
    if stage_revision(
        tenant,
        document_id,
        revision,
        documents=services.documents,
        staging=services.staging,
        cache=services.chunk_vectors,
        embedder=services.embedder(),
        counter=services.token_counter(),
        chunk_tokens=settings.chunk_tokens,
        overlap_tokens=settings.chunk_overlap_tokens,
        batch_size=settings.embedding_batch_size,
    ):
        store_upsert.apply_async(
            kwargs={"tenant": tenant, "document_id": document_id, "revision": revision},
            expires=datetime.now(UTC) + STORE_EXPIRES,
        )
