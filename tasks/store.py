"""Writes to the vector store, run by its owner (the retrieve pool), one document at a time."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Task, shared_task

from tasks.names import TaskName
from workers import resources

__all__ = ["store_purge", "store_upsert"]

log = logging.getLogger(__name__)


@contextmanager
def _document_lock(tenant: str, document_id: str) -> Iterator[None]:
    # Orders writes to one document across threads and, with a Qdrant server, across hosts.
    lock = resources.redis_client().lock(
        f"scribes:lock:doc:{tenant}:{document_id}", timeout=120, blocking_timeout=60
    )
    with lock:
        yield


@shared_task(name=TaskName.STORE_UPSERT.value, bind=True, soft_time_limit=120, time_limit=150)
def store_upsert(self: Task, *, tenant: str, document_id: str, revision: int) -> None:
    registry = resources.document_registry()
    staging = resources.chunk_staging()
    store = resources.vector_store()
    with _document_lock(tenant, document_id):
        points = staging.load(tenant, document_id, revision)
        if points is None:
            return  # applied by an earlier delivery
        if not registry.is_current(tenant, document_id, revision):
            staging.drop(tenant, document_id, revision)
            return
        store.upsert(points)
        # Same words, same ids: unchanged chunks were overwritten above; the rest go.
        store.delete_revisions(tenant=tenant, document_id=document_id, up_to_revision=revision - 1)
        chunks = store.count(tenant=tenant, document_id=document_id)
        indexed = registry.mark_indexed(tenant, document_id, revision, chunks=chunks)
        if not indexed and registry.get(tenant, document_id) is None:
            # Deleted while it was being written: take back what was written.
            store.delete_revisions(tenant=tenant, document_id=document_id, up_to_revision=revision)
        staging.drop(tenant, document_id, revision)
    log.info("indexed %s/%s@%d: %d chunks", tenant, document_id, revision, chunks)


@shared_task(name=TaskName.STORE_PURGE.value, bind=True, soft_time_limit=120, time_limit=150)
def store_purge(self: Task, *, tenant: str, document_id: str, up_to_revision: int) -> None:
    with _document_lock(tenant, document_id):
        resources.vector_store().delete_revisions(
            tenant=tenant, document_id=document_id, up_to_revision=up_to_revision
        )
