"""Several staged revisions written to the vector store in one task and one upsert.

The index pool stages a batch of notes at once (`tasks.index`); writing them one task each
would cost the store's owner a task, an upsert and a flush per note. This writes the batch
with one upsert, then makes each revision live as `tasks.store.apply_staged` does. A
revision whose own steps fail here is handed to the one-revision task, which retries it
and, if it keeps failing, marks the revision failed with the reason, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta

from rag.records.documents import DocumentRegistry, DocumentRevision
from rag.records.staging import ChunkStaging
from rag.services import process_services
from rag.store import VectorStore
from rag.types import ChunkPoint
from tasks.base import REDIS_DOWN, ScribesTask, scribes_task
from tasks.names import TaskName
from tasks.store import store_upsert, written_to

__all__ = ["apply_staged_batch", "store_upsert_batch"]

log = logging.getLogger(__name__)

STORE_EXPIRES = timedelta(days=1)


def apply_staged_batch(
    revisions: Sequence[DocumentRevision],
    *,
    documents: DocumentRegistry,
    staging: ChunkStaging,
    store: VectorStore,
    model: str | None = None,
    written: Callable[[str, str], None] | None = None,
) -> list[DocumentRevision]:
    """Write the staged revisions with one upsert and make each live; returns those left
    for the one-revision task (all of them if the batch itself could not be written).

    `store` is the live generation, of `model`: a revision embedded by another model (a
    switch came in between) is left to the one-revision task, which embeds it again.
    `written` hears of each document made live, for a reindex to copy it again."""
    ordered = sorted(set(revisions))
    left: list[DocumentRevision] = []
    try:
        with ExitStack() as locks:
            # In one order, so that two batches never wait on each other's locks.
            for tenant, document_id, _ in ordered:
                documents.touch(tenant, document_id)
                locks.enter_context(documents.write_lock(tenant, document_id))
            staged: dict[DocumentRevision, list[ChunkPoint]] = {}
            for revision in ordered:
                found = staging.load_with_model(*revision)
                if found is None:
                    continue  # applied by an earlier delivery
                points, staged_model = found
                if not documents.is_current(*revision):
                    staging.drop(*revision)
                    continue
                if model is not None and staged_model not in (None, model):
                    left.append(revision)
                    continue
                staged[revision] = points
            if staged:
                store.upsert([point for points in staged.values() for point in points])
            for revision in staged:
                try:
                    _make_live(revision, documents=documents, staging=staging, store=store)
                    if written is not None:
                        written(revision.tenant, revision.document_id)
                except REDIS_DOWN:
                    raise
                except Exception:
                    log.exception("making %s/%s@%d live failed; writing it alone", *revision)
                    left.append(revision)
    except REDIS_DOWN:
        raise
    except Exception:
        log.exception("writing a batch of %d revisions failed; writing each alone", len(ordered))
        return ordered
    return left


def _make_live(
    revision: DocumentRevision,
    *,
    documents: DocumentRegistry,
    staging: ChunkStaging,
    store: VectorStore,
) -> None:
    tenant, document_id, number = revision
    # Same words, same ids: unchanged chunks were overwritten; the rest go. A first revision
    # has nothing older (revision numbers are never reused, even after a delete).
    if number > 1:
        store.delete_revisions(tenant=tenant, document_id=document_id, up_to_revision=number - 1)
    chunks = store.count(tenant=tenant, document_id=document_id)
    indexed = documents.mark_indexed(tenant, document_id, number, chunks=chunks)
    if not indexed and documents.get(tenant, document_id) is None:
        # Deleted while it was being written: take back what was written.
        store.delete_revisions(tenant=tenant, document_id=document_id, up_to_revision=number)
    staging.drop(tenant, document_id, number)
    log.info("indexed %s/%s@%d: %d chunks", tenant, document_id, number, chunks)


@scribes_task(TaskName.STORE_UPSERT_BATCH, soft_time_limit=120, time_limit=150)
def store_upsert_batch(self: ScribesTask, *, revisions: list[list[str | int]]) -> None:
    services = process_services()
    live = services.live()
    left = apply_staged_batch(
        [DocumentRevision(str(t), str(d), int(r)) for t, d, r in revisions],
        documents=services.documents,
        staging=services.staging,
        store=services.vector_store(live),
        model=live.model,
        written=written_to(services, live),
    )
    for tenant, document_id, number in left:
        store_upsert.apply_async(
            kwargs={"tenant": tenant, "document_id": document_id, "revision": number},
            expires=datetime.now(UTC) + STORE_EXPIRES,
        )
