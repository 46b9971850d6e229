"""Writes to the vector store, run by its owner (the retrieve pool), one document at a time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from rag.records.documents import DocumentRegistry
from rag.records.staging import ChunkStaging
from rag.services import Services, process_services
from rag.store import VectorStore
from rag.store.generations import Generation
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
    model: str | None = None,
    written: Callable[[str, str], None] | None = None,
    restage: Callable[[str, str, int], None] | None = None,
) -> int | None:
    """Write the staged revision and make it live; the chunk count, or None if there was
    nothing to do (applied by an earlier delivery, or superseded).

    `store` is the live generation, whose vectors `model` makes: a revision embedded by
    another model (staged before a switch to a new one) is handed to `restage` instead.
    `written` hears of every document written, for a reindex to copy it again.
    """
    documents.touch(tenant, document_id)
    with documents.write_lock(tenant, document_id):
        found = staging.load_with_model(tenant, document_id, revision)
        if found is None:
            return None  # applied by an earlier delivery
        points, staged_model = found
        if not documents.is_current(tenant, document_id, revision):
            staging.drop(tenant, document_id, revision)
            return None
        if model is not None and staged_model not in (None, model) and restage is not None:
            log.info(
                "%s/%s@%d was embedded by %s, the store now holds %s: embedding it again",
                tenant,
                document_id,
                revision,
                staged_model,
                model,
            )
            staging.drop(tenant, document_id, revision)
            restage(tenant, document_id, revision)
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
        if written is not None:
            written(tenant, document_id)
    log.info("indexed %s/%s@%d: %d chunks", tenant, document_id, revision, chunks)
    return chunks


def purge_revisions(
    tenant: str,
    document_id: str,
    up_to_revision: int,
    *,
    documents: DocumentRegistry,
    store: VectorStore,
    written: Callable[[str, str], None] | None = None,
) -> None:
    with documents.write_lock(tenant, document_id):
        store.delete_revisions(
            tenant=tenant, document_id=document_id, up_to_revision=up_to_revision
        )
        if written is not None:
            written(tenant, document_id)


def written_to(services: Services, generation: Generation) -> Callable[[str, str], None]:
    def note(tenant: str, document_id: str) -> None:
        services.reindexes.note_write(tenant, document_id, generation=generation.number)

    return note


def _restage(tenant: str, document_id: str, revision: int) -> None:
    # Imported here: tasks.index imports this module.
    from tasks.index import STORE_EXPIRES, index_document

    index_document.apply_async(
        kwargs={"tenant": tenant, "document_id": document_id, "revision": revision},
        expires=datetime.now(UTC) + STORE_EXPIRES,
    )


@scribes_task(TaskName.STORE_UPSERT, soft_time_limit=120, time_limit=150, retry_errors=True)
def store_upsert(self: ScribesTask, *, tenant: str, document_id: str, revision: int) -> None:
    services = process_services()
    live = services.live()
    apply_staged(
        tenant,
        document_id,
        revision,
        documents=services.documents,
        staging=services.staging,
        store=services.vector_store(live),
        model=live.model,
        written=written_to(services, live),
        restage=_restage,
    )


@scribes_task(TaskName.STORE_PURGE, soft_time_limit=120, time_limit=150, retry_errors=True)
def store_purge(self: ScribesTask, *, tenant: str, document_id: str, up_to_revision: int) -> None:
    services = process_services()
    live = services.live()
    purge_revisions(
        tenant,
        document_id,
        up_to_revision,
        documents=services.documents,
        store=services.vector_store(live),
        written=written_to(services, live),
    )


@scribes_task(
    TaskName.STORE_FORGET_QUESTIONS, soft_time_limit=120, time_limit=150, retry_errors=True
)
def store_forget_questions(self: ScribesTask, *, tenant: str) -> None:
    """Empty the tenant's semantic-cache index (`DELETE /v1/cache`). Its entries were
    already unreachable: the exact-cache answers they point at are deleted first."""
    services = process_services()
    semantic = services.semantic(services.live())
    if semantic is not None:
        semantic.clear(tenant)
