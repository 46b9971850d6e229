"""`EdgeVectorStore`: the embedded Qdrant Edge shard (qdrant-edge-py 0.9.0), one owner process.

What Qdrant Edge does that is easy to get wrong, and how it was checked (2-core machine):

- Every `EdgeShard` call holds the GIL for its whole duration: a second Python thread's
  longest pause between two ticks equalled the call (query 7.6 ms, count 30 ms, upsert of
  5,000 points 49 ms, `optimize` of 20k 384-d points 9.6 s). Threads of one process therefore
  take turns on the shard; four searching threads gave the throughput of one.
- Calls from several threads are nevertheless safe: 3 threads searching and counting through
  an `optimize`, and 4 threads upserting and searching, all with no lock, raised nothing and
  ended with the exact count. But `close()` makes calls still queued fail with "Shard is not
  initialized". So every call takes one plain lock: no search sees half a batch or a closed
  shard. A read-write lock would buy nothing, since the GIL lets only one call run anyway.
- A query right after `update` sees the new point; neither `flush` nor `optimize` is needed.
- Durability: the write-ahead log is on by default but `update` does not fsync it (strace:
  no fsync or msync until `flush`). Writes survived `kill -9` (replayed from the log on
  load), but an OS crash could lose them, so every write here is followed by `flush`
  (about 4 ms after a 64-point upsert into a 10k-point shard).
- No background optimizer: points stay in one appendable segment, searched exactly, until
  `optimize()` builds HNSW, which it does only once a segment passes the indexing threshold
  (3,000 384-d points: nothing to do; 8,000: 2.3 s). Because it blocks the whole process,
  call `optimize` after ingesting, never on the query path.
- The tenant index matters once HNSW is built: a tenant-filtered search of 10k points took
  30 ms without it and 0.3 ms with it.
- One owner: a second `EdgeShard.load` of an open shard fails ("failed to open WAL ...
  WouldBlock"), even in the same process. Point ids come back as `uuid.UUID`.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    FloatIndexParams,
    IntegerIndexParams,
    KeywordIndexParams,
    MatchAny,
    MatchValue,
    Point,
    Query,
    QueryRequest,
    RangeFloat,
    ScrollRequest,
    UpdateOperation,
)

from rag.settings import ConfigurationError
from rag.store.base import (
    VectorStoreError,
    canonical_point_id,
    hit_from_payload,
    point_from_record,
    vector_as_floats,
)
from rag.types import ChunkHit, ChunkPoint, QuestionEntry, QuestionMatch

if TYPE_CHECKING:
    from qdrant_edge import ConditionType, PayloadSchemaParams

__all__ = ["EdgeQuestionIndex", "EdgeVectorStore"]

_SHARD_FILES = ("edge_config.json", "segments", "wal")


def _payload_indexes() -> dict[str, PayloadSchemaParams]:
    return {
        # is_tenant lets the engine keep each tenant's points together on disk.
        "tenant": KeywordIndexParams(is_tenant=True),
        "document_id": KeywordIndexParams(),
        "revision": IntegerIndexParams(lookup=True, range=True),
    }


def _question_indexes() -> dict[str, PayloadSchemaParams]:
    return {
        "tenant": KeywordIndexParams(is_tenant=True),
        "fingerprint": KeywordIndexParams(),
        "corpus_version": IntegerIndexParams(lookup=True, range=True),
        "expires_at": FloatIndexParams(),
    }


def _plain_vector(vector: object) -> list[float] | None:
    """The one unnamed dense vector of a point as the engine returns it."""
    if isinstance(vector, dict):  # named vectors; ours is the unnamed one
        vector = next(iter(vector.values()), None)
    return [float(x) for x in vector] if isinstance(vector, list) else None


def _match(key: str, value: str) -> FieldCondition:
    return FieldCondition(key, match=MatchValue(value))


def _open_shard(path: Path, dimension: int) -> EdgeShard:
    config = EdgeConfig(vectors=EdgeVectorParams(size=dimension, distance=Distance.Cosine))
    try:
        if any((path / name).exists() for name in _SHARD_FILES):
            return EdgeShard.load(str(path), config)
        path.mkdir(parents=True, exist_ok=True)
        return EdgeShard.create(str(path), config)
    except Exception as exc:  # the engine raises bare Exception with a message
        message = str(exc)
        if "WouldBlock" in message:
            raise VectorStoreError(
                f"the Qdrant Edge shard at {path} is open in another process, and only one "
                "process may own it (the retrieve pool); stop that process, or set QDRANT_URL "
                "to share a Qdrant server"
            ) from exc
        if "ncompatible" in message:
            raise ConfigurationError(
                f"the Qdrant Edge shard at {path} does not hold {dimension}-d cosine vectors "
                f"({message}); point SCRIBES_DATA_DIR elsewhere or re-index with this model"
            ) from exc
        raise VectorStoreError(f"cannot open the Qdrant Edge shard at {path}: {message}") from exc


class _OwnedShard:
    """One Qdrant Edge shard held by this process, with its payload indexes made, behind one
    lock (see the module notes); what the chunks' store and the question index share."""

    _what = "the vector store"

    def __init__(
        self, *, path: Path, dimension: int, indexes: dict[str, PayloadSchemaParams]
    ) -> None:
        self._path = path
        self._dimension = dimension
        self._lock = threading.Lock()
        self._shard: EdgeShard | None = _open_shard(path, dimension)
        try:
            with self._lock:
                shard = self._live()
                existing = shard.info().payload_schema
                for field, schema in indexes.items():
                    if field not in existing:
                        shard.update(UpdateOperation.create_field_index(field, schema))
                shard.flush()
        except BaseException:
            self.close()
            raise

    def _live(self) -> EdgeShard:
        if self._shard is None:
            raise VectorStoreError(f"{self._what} at {self._path} is closed; open it again")
        return self._shard

    def close(self) -> None:
        with self._lock:
            if self._shard is not None:
                self._shard.close()
                self._shard = None

    def drop(self) -> None:
        """Close the shard and delete its directory."""
        self.close()
        shutil.rmtree(self._path, ignore_errors=True)

    def _scroll(
        self, conditions: list[ConditionType], *, after: str | None, limit: int, with_vectors: bool
    ) -> tuple[list[tuple[object, list[float] | None, dict[str, Any] | None]], str | None]:
        request = ScrollRequest(
            offset=uuid.UUID(after) if after else None,
            limit=limit,
            filter=Filter(must=conditions) if conditions else None,
            with_payload=True,
            with_vector=with_vectors,
        )
        with self._lock:
            records, following = self._live().scroll(request)
        return (
            [(r.id, _plain_vector(r.vector) if with_vectors else None, r.payload) for r in records],
            str(following) if following is not None else None,
        )


class EdgeVectorStore(_OwnedShard):
    """The `VectorStore` over a Qdrant Edge shard directory, safe to share between threads."""

    def __init__(self, *, path: Path, dimension: int) -> None:
        super().__init__(path=path, dimension=dimension, indexes=_payload_indexes())

    def upsert(self, points: Sequence[ChunkPoint]) -> None:
        if not points:
            return
        batch = [
            Point(
                canonical_point_id(point.id),
                vector_as_floats(point.vector, self._dimension),
                point.payload.to_json(),
            )
            for point in points
        ]
        operation = UpdateOperation.upsert_points(batch)
        with self._lock:
            shard = self._live()
            shard.update(operation)
            shard.flush()

    def search(
        self,
        *,
        tenant: str,
        vector: Sequence[float],
        limit: int,
        score_threshold: float | None = None,
        document_ids: Sequence[str] | None = None,
    ) -> list[ChunkHit]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        conditions: list[ConditionType] = [_match("tenant", tenant)]
        if document_ids is not None:
            conditions.append(FieldCondition("document_id", match=MatchAny(list(document_ids))))
        request = QueryRequest(
            limit=limit,
            query=Query.Nearest(vector_as_floats(vector, self._dimension)),
            filter=Filter(must=conditions),
            score_threshold=score_threshold,
            with_payload=True,
            with_vector=False,
        )
        with self._lock:
            found = self._live().query(request)
        return [hit_from_payload(hit.id, hit.score, hit.payload) for hit in found]

    def delete_revisions(self, *, tenant: str, document_id: str, up_to_revision: int) -> None:
        doomed = Filter(
            must=[
                _match("tenant", tenant),
                _match("document_id", document_id),
                FieldCondition("revision", range=RangeFloat(lte=float(up_to_revision))),
            ]
        )
        with self._lock:
            shard = self._live()
            shard.update(UpdateOperation.delete_points_by_filter(doomed))
            shard.flush()

    def count(self, *, tenant: str | None = None, document_id: str | None = None) -> int:
        conditions: list[ConditionType] = []
        if tenant is not None:
            conditions.append(_match("tenant", tenant))
        if document_id is not None:
            conditions.append(_match("document_id", document_id))
        request = CountRequest(exact=True, filter=Filter(must=conditions) if conditions else None)
        with self._lock:
            return self._live().count(request)

    def scroll(
        self,
        *,
        after: str | None,
        limit: int,
        with_vectors: bool,
        tenant: str | None = None,
        document_ids: Sequence[str] | None = None,
    ) -> tuple[list[ChunkPoint], str | None]:
        conditions: list[ConditionType] = []
        if tenant is not None:
            conditions.append(_match("tenant", tenant))
        if document_ids is not None:
            conditions.append(FieldCondition("document_id", match=MatchAny(list(document_ids))))
        records, following = self._scroll(
            conditions, after=after, limit=limit, with_vectors=with_vectors
        )
        return [point_from_record(*record) for record in records], following

    def optimize(self) -> bool:
        """Build the HNSW index where segments have grown enough; True if anything changed.

        Blocks every thread of the process for seconds on large shards (see module notes).
        """
        with self._lock:
            return self._live().optimize()


class EdgeQuestionIndex(_OwnedShard):
    """The `QuestionIndex` over a Qdrant Edge shard of its own, beside the chunks' shard.

    Its writes are not flushed: it is a cache, rebuilt by the questions asked, and the
    write-ahead log still replays it after a killed process (see the module notes).
    """

    _what = "the question index"

    def __init__(self, *, path: Path, dimension: int) -> None:
        super().__init__(path=path, dimension=dimension, indexes=_question_indexes())

    def add(self, entries: Sequence[QuestionEntry]) -> None:
        if not entries:
            return
        operation = UpdateOperation.upsert_points(
            [
                Point(
                    canonical_point_id(entry.id),
                    vector_as_floats(entry.vector, self._dimension),
                    entry.payload(),
                )
                for entry in entries
            ]
        )
        with self._lock:
            self._live().update(operation)

    def nearest(
        self,
        *,
        tenant: str,
        vector: Sequence[float],
        corpus_version: int,
        fingerprint: str,
        now: float,
        limit: int,
        min_score: float,
    ) -> list[QuestionMatch]:
        request = QueryRequest(
            limit=limit,
            query=Query.Nearest(vector_as_floats(vector, self._dimension)),
            filter=Filter(
                must=[
                    _match("tenant", tenant),
                    _match("fingerprint", fingerprint),
                    FieldCondition("corpus_version", range=RangeFloat(lte=float(corpus_version))),
                    FieldCondition("expires_at", range=RangeFloat(gt=now)),
                ]
            ),
            score_threshold=min_score,
            with_payload=True,
            with_vector=True,
        )
        with self._lock:
            found = self._live().query(request)
        return [
            QuestionMatch.of_point(hit.score, hit.payload, _plain_vector(hit.vector))
            for hit in found
        ]

    def purge_expired(self, *, tenant: str, now: float) -> None:
        self._delete(
            Filter(
                must=[
                    _match("tenant", tenant),
                    FieldCondition("expires_at", range=RangeFloat(lte=now)),
                ]
            )
        )

    def clear(self, *, tenant: str) -> None:
        self._delete(Filter(must=[_match("tenant", tenant)]))

    def _delete(self, doomed: Filter) -> None:
        with self._lock:
            self._live().update(UpdateOperation.delete_points_by_filter(doomed))

    def count(self, *, tenant: str | None = None) -> int:
        request = CountRequest(
            exact=True, filter=Filter(must=[_match("tenant", tenant)]) if tenant else None
        )
        with self._lock:
            return self._live().count(request)

    def sample(self, *, limit: int) -> list[tuple[str, list[float]]]:
        records, _ = self._scroll([], after=None, limit=limit, with_vectors=True)
        return [
            (str((payload or {}).get("tenant", "")), vector)
            for _, vector, payload in records
            if vector is not None
        ]
