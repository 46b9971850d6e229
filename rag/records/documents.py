"""The document registry: which revision of each note is live, per tenant, in Redis.

A document moves queued → indexed (or failed) per revision. Searches drop any hit whose
revision is not the live one, so a deleted or replaced note is never cited, even in the
moment before its old chunks are purged from the vector store.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from redis import Redis
from redis.lock import Lock

from rag.keys import (
    corpus_changes_key,
    corpus_version_key,
    document_key,
    document_lock_key,
    document_revision_key,
    document_text_key,
    documents_index_key,
    queued_documents_key,
)
from rag.telemetry.metrics import DOCUMENTS
from rag.types import Failure

__all__ = [
    "DocumentRecord",
    "DocumentRegistry",
    "DocumentRevision",
    "DocumentStatus",
    "DocumentText",
]


class DocumentStatus(StrEnum):
    QUEUED = "queued"
    INDEXED = "indexed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    tenant: str
    id: str
    title: str
    status: DocumentStatus
    revision: int
    live_revision: int | None
    chunks: int
    error: Failure | None
    updated_at: float


class DocumentRevision(NamedTuple):
    """One revision of one tenant's document: what an index or store write works on."""

    tenant: str
    document_id: str
    revision: int


@dataclass(frozen=True, slots=True)
class DocumentText:
    title: str
    text: str
    metadata: dict[str, Any]


# The most corpus changes a tenant's log keeps: an answer older than that is never revalidated.
CHANGES_KEPT = 10_000

# Each bump of the corpus version logs the document it changed, so that a cached answer can
# later ask which documents changed since it was written (`changes_since`).
_LOG_CHANGE = f"""
local function log_change(version_key, changes_key, document_id)
  local version = redis.call('INCR', version_key)
  redis.call('ZADD', changes_key, version, version .. ':' .. document_id)
  redis.call('ZREMRANGEBYRANK', changes_key, 0, -{CHANGES_KEPT + 1})
end
"""

# Marks a revision indexed only while it is still the document's newest revision; a
# newer submission or a delete wins. Bumps the corpus version, which every answer-cache
# key carries, so no cached answer outlives the corpus it was computed from.
_MARK_INDEXED = (
    _LOG_CHANGE
    + """
if redis.call('HGET', KEYS[1], 'revision') ~= ARGV[1] then return 0 end
-- First, so that an error here (a corrupt counter) changes nothing: scripts do not roll back.
log_change(KEYS[2], KEYS[3], ARGV[4])
redis.call('HSET', KEYS[1], 'status', 'indexed', 'live_revision', ARGV[1],
           'chunks', ARGV[2], 'error', '', 'error_code', '', 'updated_at', ARGV[3])
return 1
"""
)

_DELETE = (
    _LOG_CHANGE
    + """
local revision = redis.call('HGET', KEYS[1], 'revision')
if not revision then return nil end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
log_change(KEYS[3], KEYS[4], ARGV[1])
return revision
"""
)

_MARK_FAILED = """
if redis.call('HGET', KEYS[1], 'revision') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[2], 'error_code', ARGV[3],
           'updated_at', ARGV[4])
return 1
"""


def _member(tenant: str, document_id: str) -> str:
    return f"{tenant}\x1f{document_id}"


def _decode(tenant: str, raw: dict[str, str]) -> DocumentRecord:
    live = raw.get("live_revision")
    return DocumentRecord(
        tenant=tenant,
        id=raw["id"],
        title=raw.get("title", ""),
        status=DocumentStatus(raw["status"]),
        revision=int(raw["revision"]),
        live_revision=int(live) if live else None,
        chunks=int(raw.get("chunks", "0")),
        error=(
            Failure(raw.get("error_code") or "internal_error", raw["error"])
            if raw.get("error")
            else None
        ),
        updated_at=float(raw.get("updated_at", "0")),
    )


class DocumentRegistry:
    def __init__(self, redis: Redis, *, text_ttl_s: int = 7 * 86_400) -> None:
        self._redis = redis
        self._text_ttl_s = text_ttl_s
        self._mark_indexed = redis.register_script(_MARK_INDEXED)
        self._mark_failed = redis.register_script(_MARK_FAILED)
        self._delete = redis.register_script(_DELETE)

    def submit(
        self, *, tenant: str, document_id: str, title: str, text: str, metadata: dict[str, Any]
    ) -> DocumentRecord:
        """Store a new revision's text and mark it queued; the previous revision stays live."""
        revision = int(self._redis.incr(document_revision_key(tenant, document_id)))
        now = time.time()
        body = json.dumps({"title": title, "text": text, "metadata": metadata})
        key = document_key(tenant, document_id)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(document_text_key(tenant, document_id, revision), body, ex=self._text_ttl_s)
            pipe.hset(
                key,
                mapping={
                    "id": document_id,
                    "title": title,
                    "status": DocumentStatus.QUEUED.value,
                    "revision": revision,
                    "error": "",
                    "error_code": "",
                    "updated_at": now,
                },
            )
            pipe.sadd(documents_index_key(tenant), document_id)
            pipe.zadd(queued_documents_key(), {_member(tenant, document_id): now})
            pipe.execute()
        record = self.get(tenant, document_id)
        assert record is not None
        return record

    def get(self, tenant: str, document_id: str) -> DocumentRecord | None:
        raw: dict[str, str] = self._redis.hgetall(document_key(tenant, document_id))  # type: ignore[assignment]
        return _decode(tenant, raw) if raw else None

    def records(self, tenant: str) -> list[DocumentRecord]:
        ids = sorted(self._redis.smembers(documents_index_key(tenant)))
        with self._redis.pipeline(transaction=False) as pipe:
            for document_id in ids:
                pipe.hgetall(document_key(tenant, str(document_id)))
            rows: list[dict[str, str]] = pipe.execute()
        return [_decode(tenant, raw) for raw in rows if raw]

    def load_text(self, tenant: str, document_id: str, revision: int) -> DocumentText | None:
        body = self._redis.get(document_text_key(tenant, document_id, revision))
        if body is None:
            return None
        data = json.loads(body)
        return DocumentText(title=data["title"], text=data["text"], metadata=data["metadata"])

    def is_current(self, tenant: str, document_id: str, revision: int) -> bool:
        current = self._redis.hget(document_key(tenant, document_id), "revision")
        return current is not None and int(current) == revision

    def mark_indexed(self, tenant: str, document_id: str, revision: int, *, chunks: int) -> bool:
        done = bool(
            self._mark_indexed(
                keys=[
                    document_key(tenant, document_id),
                    corpus_version_key(tenant),
                    corpus_changes_key(tenant),
                ],
                args=[revision, chunks, time.time(), document_id],
            )
        )
        if done:
            DOCUMENTS.labels("indexed").inc()
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(document_text_key(tenant, document_id, revision))
                pipe.zrem(queued_documents_key(), _member(tenant, document_id))
                pipe.execute()
        return done

    def mark_failed(self, tenant: str, document_id: str, revision: int, failure: Failure) -> bool:
        """Fail `revision` if it is still the newest; an older live revision stays live."""
        failed = bool(
            self._mark_failed(
                keys=[document_key(tenant, document_id)],
                args=[revision, failure.message, failure.code, time.time()],
            )
        )
        if failed:
            DOCUMENTS.labels("failed").inc()
            self._redis.zrem(queued_documents_key(), _member(tenant, document_id))
        return failed

    def touch(self, tenant: str, document_id: str) -> None:
        """Count now as progress of the document's queued revision, for the stall sweep."""
        self._redis.zadd(
            queued_documents_key(), {_member(tenant, document_id): time.time()}, xx=True
        )

    def stalled(self, *, quiet_since: float, limit: int = 100) -> list[tuple[str, str]]:
        """(tenant, document) of queued revisions with no progress since `quiet_since`."""
        members: list[str] = self._redis.zrangebyscore(
            queued_documents_key(), "-inf", quiet_since, start=0, num=limit
        )  # type: ignore[assignment]
        return [
            (tenant, document_id)
            for tenant, _, document_id in (m.partition("\x1f") for m in members)
        ]

    def queued_revisions(self, *, limit: int) -> list[DocumentRevision]:
        """Up to `limit` revisions still queued for indexing, least recently touched first
        (about the order they were submitted in)."""
        members: list[str] = self._redis.zrange(queued_documents_key(), 0, limit - 1)  # type: ignore[assignment]
        documents = [
            (tenant, document_id)
            for tenant, _, document_id in (member.partition("\x1f") for member in members)
        ]
        with self._redis.pipeline(transaction=False) as pipe:
            for tenant, document_id in documents:
                pipe.hmget(document_key(tenant, document_id), ["revision", "status"])
            rows: list[list[str | None]] = pipe.execute()
        return [
            DocumentRevision(tenant, document_id, int(revision))
            for (tenant, document_id), (revision, status) in zip(documents, rows, strict=True)
            if revision is not None and status == DocumentStatus.QUEUED.value
        ]

    def forget_queued(self, tenant: str, document_id: str) -> None:
        self._redis.zrem(queued_documents_key(), _member(tenant, document_id))

    def write_lock(self, tenant: str, document_id: str) -> Lock:
        """Orders writes to one document across threads and, with a Qdrant server, hosts.

        It expires after 30 s (a write takes well under a second, 2,000 chunks about one), so
        that a writer killed while holding it delays the next one by 30 s at most.
        """
        lock: Lock = self._redis.lock(
            document_lock_key(tenant, document_id), timeout=30, blocking_timeout=35
        )
        return lock

    def delete(self, tenant: str, document_id: str) -> int | None:
        """Forget the document at once; returns the newest revision, to purge its chunks."""
        revision = self._delete(
            keys=[
                document_key(tenant, document_id),
                documents_index_key(tenant),
                corpus_version_key(tenant),
                corpus_changes_key(tenant),
            ],
            args=[document_id],
        )
        if revision is not None:
            self._redis.zrem(queued_documents_key(), _member(tenant, document_id))
        return int(revision) if revision is not None else None

    def live_revisions(self, tenant: str, document_ids: list[str]) -> dict[str, int | None]:
        with self._redis.pipeline(transaction=False) as pipe:
            for document_id in document_ids:
                pipe.hget(document_key(tenant, document_id), "live_revision")
            values: list[str | None] = pipe.execute()
        return {
            document_id: int(value) if value else None
            for document_id, value in zip(document_ids, values, strict=True)
        }

    def corpus_version(self, tenant: str) -> int:
        value = self._redis.get(corpus_version_key(tenant))
        return int(value) if value else 0

    def changes_since(self, tenant: str, version: int, current: int) -> frozenset[str] | None:
        """The documents indexed, edited or deleted after `version` up to `current`; None
        when the log does not reach back that far (every version must be accounted for)."""
        if current <= version:
            return frozenset()
        logged: list[str] = self._redis.zrangebyscore(
            corpus_changes_key(tenant), f"({version}", current
        )  # type: ignore[assignment]
        if len(logged) != current - version:
            return None
        return frozenset(entry.partition(":")[2] for entry in logged)
