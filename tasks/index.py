"""Queue `index`: chunk and embed document revisions in batches, off the question path.

Each revision has its own message. The task that runs one also takes other queued
revisions (up to `SCRIBES_INDEX_BATCH_CHUNKS` chunks in all) and embeds them together, so
a bulk ingest embeds in large batches that cross notes; `rag.records.index_claims` keeps
each revision's own message safe to run, and a note that kills its worker from taking
others down with it more than once. The batch is embedded at the pace of
`rag.ingest_pace`: every core while no question waits, one while any does. Its store
writes go to the store's owner as one task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

import numpy as np

from rag.caches.chunks import ChunkVectorCache
from rag.chunking import Chunk, chunk_text
from rag.embedding import Embedder, Vectors
from rag.indexing import build_points, embedded_text
from rag.ingest_pace import IndexPace, embed_yielding, index_pace
from rag.records.documents import DocumentRegistry, DocumentRevision, DocumentStatus
from rag.records.index_claims import Claim, IndexClaims
from rag.records.staging import ChunkStaging
from rag.services import process_services
from rag.telemetry.metrics import INDEX_BATCH_DOCUMENTS, count_cache
from rag.tokens import TokenCounter
from rag.types import Failure
from tasks.base import REDIS_DOWN, ScribesTask, scribes_task
from tasks.names import TaskName
from tasks.store import store_upsert
from tasks.store_batch import store_upsert_batch

__all__ = ["index_document", "stage_batch", "stage_revision"]

log = logging.getLogger(__name__)

# Staged chunks live a day; a store write that has not run by then is of no use.
STORE_EXPIRES = timedelta(days=1)
# Queued revisions looked at for passengers per batch; a few Redis round trips in all.
PASSENGER_SCAN = 128


@dataclass(frozen=True, slots=True)
class _Chunked:
    revision: DocumentRevision
    title: str
    chunks: list[Chunk]
    texts: list[str]


def _chunked(
    revision: DocumentRevision,
    *,
    documents: DocumentRegistry,
    counter: TokenCounter,
    chunk_tokens: int,
    overlap_tokens: int,
) -> _Chunked | None:
    """The revision's chunks, or None when there is nothing to embed (superseded, deleted,
    or failed: the record then says why)."""
    tenant, document_id, number = revision
    if not documents.is_current(tenant, document_id, number):
        log.info("skipping %s/%s@%d: superseded or deleted", tenant, document_id, number)
        return None
    documents.touch(tenant, document_id)
    document = documents.load_text(tenant, document_id, number)
    if document is None:
        documents.mark_failed(
            tenant,
            document_id,
            number,
            Failure("text_expired", "the text expired before it was indexed; submit it again"),
        )
        return None
    chunks = chunk_text(
        document.text, counter=counter, max_tokens=chunk_tokens, overlap_tokens=overlap_tokens
    )
    if not chunks:
        documents.mark_failed(tenant, document_id, number, Failure("no_text", "no text to index"))
        return None
    texts = [embedded_text(document.title, chunk.text) for chunk in chunks]
    return _Chunked(revision, document.title, chunks, texts)


def _embed_and_stage(
    batch: Sequence[_Chunked],
    *,
    staging: ChunkStaging,
    cache: ChunkVectorCache,
    embed: Callable[[list[str]], Vectors],
    model: str,
) -> list[DocumentRevision]:
    """Embed the chunks `cache` does not hold, each distinct text once, in one call across
    the batch's notes; stage every revision's points, naming `model`, which embedded them."""
    distinct: dict[str, list[str]] = {}
    for item in batch:
        texts = distinct.setdefault(item.revision.tenant, [])
        texts.extend(item.texts)
    reused: dict[str, dict[str, Vectors]] = {}
    missing: dict[str, list[str]] = {}
    for tenant, texts in distinct.items():
        unique = list(dict.fromkeys(texts))
        reused[tenant] = cache.get_many(tenant, unique)
        missing[tenant] = [text for text in unique if text not in reused[tenant]]
    # Tenants share nothing in the cache, but a text's vector is the same for all.
    to_embed = list(dict.fromkeys(text for texts in missing.values() for text in texts))
    fresh = dict(zip(to_embed, embed(to_embed) if to_embed else [], strict=True))
    for tenant, texts in missing.items():
        cache.put_many(tenant, {text: fresh[text] for text in texts}, reused=list(reused[tenant]))
        count_cache("chunk_embedding", hits=len(reused[tenant]), misses=len(texts))
    for item in batch:
        tenant, document_id, number = item.revision
        known = reused[tenant]
        vectors = np.stack([known[t] if t in known else fresh[t] for t in item.texts])
        staging.save(
            build_points(
                tenant=tenant,
                document_id=document_id,
                revision=number,
                title=item.title,
                chunks=item.chunks,
                vectors=vectors,
            ),
            model=model,
        )
        log.info(
            "staged %s/%s@%d: %d chunks, %d reused",
            tenant,
            document_id,
            number,
            len(item.chunks),
            sum(text in known for text in item.texts),
        )
    INDEX_BATCH_DOCUMENTS.observe(len(batch))
    return [item.revision for item in batch]


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
    """Chunk and embed the one revision into the staging area; True when the store should
    apply it, False when there is nothing to write (superseded, deleted, or failed).

    Only the chunks whose embedded text is not in `cache` go to the model, in one batch; a
    text that repeats within the note is looked up and embedded once.
    """
    item = _chunked(
        DocumentRevision(tenant, document_id, revision),
        documents=documents,
        counter=counter,
        chunk_tokens=chunk_tokens,
        overlap_tokens=overlap_tokens,
    )
    if item is None:
        return False
    embed = partial(embedder.embed, batch_size=batch_size)
    return bool(
        _embed_and_stage(
            [item], staging=staging, cache=cache, embed=embed, model=embedder.model_name
        )
    )


def stage_batch(
    own: DocumentRevision,
    *,
    holder: str,
    alone: bool,
    claims: IndexClaims,
    documents: DocumentRegistry,
    staging: ChunkStaging,
    cache: ChunkVectorCache,
    embedder: Embedder,
    counter: TokenCounter,
    chunk_tokens: int,
    overlap_tokens: int,
    pace: IndexPace,
    batch_chunks: int,
) -> list[DocumentRevision]:
    """Stage `own` (claimed by `holder`) and, unless `alone`, other queued revisions that
    nobody took yet, up to `batch_chunks` chunks in all; returns the revisions staged.

    On an error the claims are given up, so that each passenger's own message embeds it.
    """
    chunked = partial(
        _chunked,
        documents=documents,
        counter=counter,
        chunk_tokens=chunk_tokens,
        overlap_tokens=overlap_tokens,
    )
    taken = [own]
    with claims.holding(lambda: list(taken), holder, also=partial(_touch, documents)):
        try:
            item = chunked(own)
            batch = [item] if item is not None else []
            size = len(item.chunks) if item is not None else 0
            for candidate in [] if alone else documents.queued_revisions(limit=PASSENGER_SCAN):
                if size >= batch_chunks:
                    break
                if candidate[:2] == own[:2] or not claims.take_passenger(candidate, holder):
                    continue
                taken.append(candidate)
                passenger = chunked(candidate)
                if passenger is None:
                    continue
                if batch and size + len(passenger.chunks) > batch_chunks:
                    break  # too big to ride along: released below, for its own message
                batch.append(passenger)
                size += len(passenger.chunks)
            if len(batch) > 1:
                log.info("embedding %d notes together: %d chunks", len(batch), size)
            embed = partial(embed_yielding, embedder, pace=pace)
            staged = _embed_and_stage(
                batch, staging=staging, cache=cache, embed=embed, model=embedder.model_name
            )
        except BaseException as exc:
            if not isinstance(exc, REDIS_DOWN):
                claims.give_up(taken, holder)
            raise
    claims.release([revision for revision in taken if revision not in staged and revision != own])
    return staged


def _touch(documents: DocumentRegistry, revisions: Sequence[DocumentRevision]) -> None:
    for tenant, document_id, _ in revisions:
        documents.touch(tenant, document_id)


def _lost_after_sent(
    revision: DocumentRevision, *, documents: DocumentRegistry, staging: ChunkStaging
) -> bool:
    """Sent, yet neither staged nor written: the store write gave up early or its staged
    chunks expired. Staging is read first: a write drops it only after marking the revision."""
    tenant, document_id, number = revision
    if staging.exists(tenant, document_id, number):
        return False
    record = documents.get(tenant, document_id)
    return (
        record is not None and record.revision == number and record.status is DocumentStatus.QUEUED
    )


def enqueue_store_writes(revisions: Sequence[DocumentRevision]) -> None:
    """One store task for the batch's revisions (the single-revision task for one)."""
    expires = datetime.now(UTC) + STORE_EXPIRES
    if len(revisions) == 1:
        tenant, document_id, number = revisions[0]
        store_upsert.apply_async(
            kwargs={"tenant": tenant, "document_id": document_id, "revision": number},
            expires=expires,
        )
    elif revisions:
        store_upsert_batch.apply_async(
            kwargs={"revisions": [list(revision) for revision in revisions]}, expires=expires
        )


@scribes_task(TaskName.INDEX_DOCUMENT, soft_time_limit=600, time_limit=660, retry_errors=True)
def index_document(self: ScribesTask, *, tenant: str, document_id: str, revision: int) -> None:
    services = process_services()
    settings = services.settings
    own = DocumentRevision(tenant, document_id, revision)
    claims = IndexClaims(services.redis)
    holder = str(self.request.id)
    claim = claims.take(own, holder)
    if claim is Claim.SENT and not _lost_after_sent(
        own, documents=services.documents, staging=services.staging
    ):
        log.info("%s/%s@%d was embedded in another note's batch", tenant, document_id, revision)
        return
    if claim is Claim.HELD:
        # Another live task is embedding it: look again once its lease could have run out.
        raise self.retry(countdown=claims.lease_s, max_retries=self.request.retries + 1)
    # The live generation's model; the store's owner re-stages a revision that a switch to
    # another model overtook before it was written.
    embedder = services.embedder()
    staged = stage_batch(
        own,
        holder=holder,
        # A revision taken before by a task that died may be what killed it.
        alone=claim is not Claim.NEW,
        claims=claims,
        documents=services.documents,
        staging=services.staging,
        cache=services.chunk_vectors(embedder.model_name),
        embedder=embedder,
        counter=services.token_counter(),
        chunk_tokens=settings.chunk_tokens,
        overlap_tokens=settings.chunk_overlap_tokens,
        pace=index_pace(settings, services.jobs),
        batch_chunks=settings.index_batch_chunks,
    )
    enqueue_store_writes(staged)
    claims.mark_sent(staged)
