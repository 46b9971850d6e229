"""Writes to the vector store, run by its owner (the retrieve pool), one document at a time."""

from __future__ import annotations

import logging

from rag.records.documents import DocumentRegistry
from rag.records.staging import ChunkStaging
from rag.services import process_services
from rag.store import VectorStore
from tasks.base import ScribesTask, scribes_task
from tasks.names import TaskName

__all__ = [
    "apply_staged",
    "purge_revisions",
    "store_forget_questions",
    "store_purge",
    "store_upsert",
]

log = logging.getLogger(__name__)


def apply_staged(
    tenant: str,
    document_id: str,
    revision: int,
    *,
    documents: DocumentRegistry,
    staging: ChunkStaging,
    store: VectorStore,
) -> int | None:
    """Write the staged revision and make it live; the chunk count, or None if there was
    nothing to do (applied by an earlier delivery, or superseded)."""
    documents.touch(tenant, document_id)
    with documents.write_lock(tenant, document_id):
        points = staging.load(tenant, document_id, revision)
        if points is None:
            return None  # applied by an earlier delivery
        if not documents.is_current(tenant, document_id, revision):
            staging.drop(tenant, document_id, revision)
            return None
        store.upsert(points)
        # Same words, same ids: unchanged chunks were overwritten above; the rest go.
        store.delete_revisions(tenant=tenant, document_id=document_id, up_to_revision=revision - 1)
        chunks = store.count(tenant=tenant, document_id=document_id)
        indexed = documents.mark_indexed(tenant, document_id, revision, chunks=chunks)
        if not indexed and documents.get(tenant, document_id) is None:
            # Deleted while it was being written: take back what was written.
            store.delete_revisions(tenant=tenant, document_id=document_id, up_to_revision=revision)
        staging.drop(tenant, document_id, revision)
    log.info("indexed %s/%s@%d: %d chunks", tenant, document_id, revision, chunks)
    return chunks


def purge_revisions(
    tenant: str,
    document_id: str,
    up_to_revision: int,
    *,
    documents: DocumentRegistry,
    store: VectorStore,
) -> None:
    with documents.write_lock(tenant, document_id):
        store.delete_revisions(
            tenant=tenant, document_id=document_id, up_to_revision=up_to_revision
        )


@scribes_task(TaskName.STORE_UPSERT, soft_time_limit=120, time_limit=150, retry_errors=True)
def store_upsert(self: ScribesTask, *, tenant: str, document_id: str, revision: int) -> None:
    services = process_services()
    apply_staged(
        tenant,
        document_id,
        revision,
        documents=services.documents,
        staging=services.staging,
        store=services.vector_store(),
    )


@scribes_task(TaskName.STORE_PURGE, soft_time_limit=120, time_limit=150, retry_errors=True)
def store_purge(self: ScribesTask, *, tenant: str, document_id: str, up_to_revision: int) -> None:
    services = process_services()
    purge_revisions(
        tenant,
        document_id,
        up_to_revision,
        documents=services.documents,
        store=services.vector_store(),
    )


@scribes_task(
    TaskName.STORE_FORGET_QUESTIONS, soft_time_limit=120, time_limit=150, retry_errors=True
)
def store_forget_questions(self: ScribesTask, *, tenant: str) -> None:
    """Empty the tenant's semantic-cache index (`DELETE /v1/cache`). Its entries were
    already unreachable: the exact-cache answers they point at are deleted first."""
    semantic = process_services().semantic
    if semantic is not None:
        semantic.clear(tenant)
