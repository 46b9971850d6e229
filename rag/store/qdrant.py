"""`QdrantVectorStore`: a Qdrant server through qdrant-client, or its in-process mode for tests.

The in-process mode (`:memory:`, `path:DIR`) is plain Python over numpy arrays and SQLite with
no locking of its own, and it ignores payload indexes (it warns if asked for them), so here it
gets one lock around every call and no indexes. The server does its own locking.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from rag.settings import ConfigurationError
from rag.store.base import (
    VectorStoreError,
    canonical_point_id,
    hit_from_payload,
    point_from_record,
    vector_as_floats,
)
from rag.types import ChunkHit, ChunkPoint, QuestionEntry, QuestionMatch
from rag.urls import redact_url

__all__ = ["DEFAULT_TIMEOUT_S", "QdrantQuestionIndex", "QdrantVectorStore"]

DEFAULT_TIMEOUT_S = 10

_LOCAL_PATH_PREFIX = "path:"


_PayloadIndexes = dict[str, models.PayloadSchemaType | models.KeywordIndexParams]


def _tenant_index() -> models.KeywordIndexParams:
    return models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)


def _payload_indexes() -> _PayloadIndexes:
    return {
        "tenant": _tenant_index(),
        "document_id": models.PayloadSchemaType.KEYWORD,
        "revision": models.PayloadSchemaType.INTEGER,
    }


def _question_indexes() -> _PayloadIndexes:
    return {
        "tenant": _tenant_index(),
        "fingerprint": models.PayloadSchemaType.KEYWORD,
        "corpus_version": models.PayloadSchemaType.INTEGER,
        "expires_at": models.PayloadSchemaType.FLOAT,
    }


def _plain_vector(vector: object) -> list[float] | None:
    """The one unnamed dense vector of a point as qdrant-client returns it."""
    if isinstance(vector, dict):
        vector = next(iter(vector.values()), None)
    return [float(x) for x in vector] if isinstance(vector, list) else None


def _match(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _connect(url: str, api_key: str | None, timeout_s: int) -> tuple[QdrantClient, bool]:
    """The client for `url`, and whether it runs in this process."""
    if url == ":memory:":
        return QdrantClient(location=":memory:"), True
    if url.startswith(_LOCAL_PATH_PREFIX):
        local_dir = url.removeprefix(_LOCAL_PATH_PREFIX)
        if not local_dir:
            raise ConfigurationError("QDRANT_URL=path: needs a directory, e.g. path:data/qdrant")
        # Our lock serialises access, so SQLite's same-thread check only gets in the way.
        return QdrantClient(path=local_dir, force_disable_check_same_thread=True), True
    if url.startswith(("http://", "https://")):
        return QdrantClient(url=url, api_key=api_key, timeout=timeout_s), False
    raise ConfigurationError(
        f"QDRANT_URL={url!r} is neither an http(s) URL nor :memory: nor path:DIR; "
        "unset it to use the embedded Qdrant Edge store"
    )


class _Shared:
    """A `path:` directory admits one client per process, and its engine no concurrent
    call: every collection of it (chunks, questions, each generation) shares one client and
    one lock, and the client closes with the last of them."""

    _lock = threading.Lock()
    _open: ClassVar[dict[str, tuple[QdrantClient, threading.Lock, int]]] = {}

    @classmethod
    def take(
        cls, url: str, api_key: str | None, timeout_s: int
    ) -> tuple[QdrantClient, bool, AbstractContextManager[object]]:
        if not url.startswith(_LOCAL_PATH_PREFIX):
            client, local = _connect(url, api_key, timeout_s)
            return client, local, threading.Lock() if local else nullcontext()
        with cls._lock:
            found = cls._open.get(url)
            if found is None:
                client, _ = _connect(url, api_key, timeout_s)
                found = (client, threading.Lock(), 0)
            client, guard, users = found
            cls._open[url] = (client, guard, users + 1)
            return client, True, guard

    @classmethod
    def give_back(cls, url: str, client: QdrantClient) -> None:
        if not url.startswith(_LOCAL_PATH_PREFIX):
            client.close()
            return
        with cls._lock:
            found = cls._open.get(url)
            if found is None:
                return
            _, guard, users = found
            if users > 1:
                cls._open[url] = (client, guard, users - 1)
                return
            del cls._open[url]
        client.close()


class QdrantVectorStore:
    """The `VectorStore` over one qdrant-client collection, safe to share between threads."""

    def __init__(
        self,
        *,
        url: str,
        api_key: str | None,
        collection: str,
        dimension: int,
        timeout_s: int = DEFAULT_TIMEOUT_S,
        payload_indexes: _PayloadIndexes | None = None,
    ) -> None:
        self._url = url
        self._collection = collection
        self._payload_indexes = payload_indexes or _payload_indexes()
        self._dimension = dimension
        self._closed = False
        self._client, self._local, self._guard = _Shared.take(url, api_key, timeout_s)
        try:
            self._prepare_collection()
        except BaseException as exc:
            _Shared.give_back(url, self._client)
            if isinstance(exc, ResponseHandlingException | UnexpectedResponse):
                raise VectorStoreError(
                    f"Qdrant at {redact_url(url)} failed to answer ({exc}); start it, check "
                    "QDRANT_URL and QDRANT_API_KEY, or unset QDRANT_URL to use the embedded "
                    "Qdrant Edge store"
                ) from exc
            raise

    def _prepare_collection(self) -> None:
        name = self._collection
        if not self._client.collection_exists(name):
            try:
                self._client.create_collection(
                    name,
                    vectors_config=models.VectorParams(
                        size=self._dimension, distance=models.Distance.COSINE
                    ),
                )
            except (UnexpectedResponse, ValueError):
                # Another process may have created it first; anything else fails below.
                if not self._client.collection_exists(name):
                    raise
        info = self._client.get_collection(name)
        vectors = info.config.params.vectors
        if not isinstance(vectors, models.VectorParams) or (
            vectors.size != self._dimension or vectors.distance != models.Distance.COSINE
        ):
            raise ConfigurationError(
                f"Qdrant collection {name!r} at {redact_url(self._url)} does not hold one unnamed "
                f"{self._dimension}-d cosine vector per point ({vectors}); set "
                "SCRIBES_QDRANT_COLLECTION to a new name or re-index with this model"
            )
        if self._local:
            return
        for field, schema in self._payload_indexes.items():
            if field not in info.payload_schema:
                self._client.create_payload_index(name, field, field_schema=schema, wait=True)

    def _check_open(self) -> None:
        if self._closed:
            raise VectorStoreError(
                f"the vector store on {redact_url(self._url)} is closed; open it again"
            )

    def upsert(self, points: Sequence[ChunkPoint]) -> None:
        self.upsert_payloads([(p.id, p.vector, p.payload.to_json()) for p in points], wait=True)

    def upsert_payloads(
        self, points: Sequence[tuple[str, Sequence[float], dict[str, Any]]], *, wait: bool
    ) -> None:
        if not points:
            return
        batch = [
            models.PointStruct(
                id=canonical_point_id(point_id),
                vector=vector_as_floats(vector, self._dimension),
                payload=payload,
            )
            for point_id, vector, payload in points
        ]
        with self._guard:
            self._check_open()
            self._client.upsert(self._collection, points=batch, wait=wait)

    def search(
        self,
        *,
        tenant: str,
        vector: Sequence[float],
        limit: int,
        score_threshold: float | None = None,
        document_ids: Sequence[str] | None = None,
    ) -> list[ChunkHit]:
        conditions: list[models.Condition] = [_match("tenant", tenant)]
        if document_ids is not None:
            conditions.append(
                models.FieldCondition(
                    key="document_id", match=models.MatchAny(any=list(document_ids))
                )
            )
        found = self.query(
            vector,
            models.Filter(must=conditions),
            limit=limit,
            score_threshold=score_threshold,
        )
        return [hit_from_payload(hit.id, hit.score, hit.payload) for hit in found]

    def query(
        self,
        vector: Sequence[float],
        where: models.Filter,
        *,
        limit: int,
        score_threshold: float | None,
        with_vectors: bool = False,
    ) -> list[models.ScoredPoint]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        query = vector_as_floats(vector, self._dimension)
        with self._guard:
            self._check_open()
            return self._client.query_points(
                self._collection,
                query=query,
                query_filter=where,
                limit=limit,
                score_threshold=score_threshold,
                with_payload=True,
                with_vectors=with_vectors,
            ).points

    def delete_revisions(self, *, tenant: str, document_id: str, up_to_revision: int) -> None:
        doomed = models.Filter(
            must=[
                _match("tenant", tenant),
                _match("document_id", document_id),
                models.FieldCondition(key="revision", range=models.Range(lte=up_to_revision)),
            ]
        )
        self.delete_where(doomed)

    def delete_where(self, doomed: models.Filter) -> None:
        with self._guard:
            self._check_open()
            self._client.delete(
                self._collection, points_selector=models.FilterSelector(filter=doomed), wait=True
            )

    def count(self, *, tenant: str | None = None, document_id: str | None = None) -> int:
        conditions: list[models.Condition] = []
        if tenant is not None:
            conditions.append(_match("tenant", tenant))
        if document_id is not None:
            conditions.append(_match("document_id", document_id))
        with self._guard:
            self._check_open()
            result = self._client.count(
                self._collection,
                count_filter=models.Filter(must=conditions) if conditions else None,
                exact=True,
            )
        return result.count

    def scroll(
        self,
        *,
        after: str | None,
        limit: int,
        with_vectors: bool,
        tenant: str | None = None,
        document_ids: Sequence[str] | None = None,
    ) -> tuple[list[ChunkPoint], str | None]:
        conditions: list[models.Condition] = []
        if tenant is not None:
            conditions.append(_match("tenant", tenant))
        if document_ids is not None:
            conditions.append(
                models.FieldCondition(
                    key="document_id", match=models.MatchAny(any=list(document_ids))
                )
            )
        with self._guard:
            self._check_open()
            records, following = self._client.scroll(
                self._collection,
                scroll_filter=models.Filter(must=conditions) if conditions else None,
                limit=limit,
                offset=after,
                with_payload=True,
                with_vectors=with_vectors,
            )
        points = [
            point_from_record(r.id, _plain_vector(r.vector) if with_vectors else None, r.payload)
            for r in records
        ]
        return points, str(following) if following is not None else None

    def drop(self) -> None:
        with self._guard:
            if not self._closed:
                self._client.delete_collection(self._collection)
                self._closed = True
                _Shared.give_back(self._url, self._client)

    def point_alias(self, alias: str) -> None:
        """Point `alias` at this collection in one request (a delete and a create), so that
        a reader of the alias sees the old collection or the new one, never neither."""
        actions: list[models.AliasOperations] = [
            models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)),
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=self._collection, alias_name=alias)
            ),
        ]
        with self._guard:
            self._check_open()
            existing = {a.alias_name for a in self._client.get_aliases().aliases}
            self._client.update_collection_aliases(
                change_aliases_operations=actions if alias in existing else actions[1:]
            )

    def close(self) -> None:
        with self._guard:
            if not self._closed:
                self._closed = True
                _Shared.give_back(self._url, self._client)


class QdrantQuestionIndex:
    """The `QuestionIndex` over a qdrant-client collection of its own, beside the chunks'."""

    def __init__(
        self,
        *,
        url: str,
        api_key: str | None,
        collection: str,
        dimension: int,
        timeout_s: int = DEFAULT_TIMEOUT_S,
    ) -> None:
        # The chunks' adapter makes, checks and indexes the collection; only payload differs.
        self._store = QdrantVectorStore(
            url=url,
            api_key=api_key,
            collection=collection,
            dimension=dimension,
            timeout_s=timeout_s,
            payload_indexes=_question_indexes(),
        )

    def add(self, entries: Sequence[QuestionEntry]) -> None:
        self._store.upsert_payloads(
            [(entry.id, entry.vector, entry.payload()) for entry in entries], wait=False
        )

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
        found = self._store.query(
            vector,
            models.Filter(
                must=[
                    _match("tenant", tenant),
                    _match("fingerprint", fingerprint),
                    models.FieldCondition(
                        key="corpus_version", range=models.Range(lte=corpus_version)
                    ),
                    models.FieldCondition(key="expires_at", range=models.Range(gt=now)),
                ]
            ),
            limit=limit,
            score_threshold=min_score,
            with_vectors=True,
        )
        return [
            QuestionMatch.of_point(hit.score, hit.payload, _plain_vector(hit.vector))
            for hit in found
        ]

    def purge_expired(self, *, tenant: str, now: float) -> None:
        self._store.delete_where(
            models.Filter(
                must=[
                    _match("tenant", tenant),
                    models.FieldCondition(key="expires_at", range=models.Range(lte=now)),
                ]
            )
        )

    def clear(self, *, tenant: str) -> None:
        self._store.delete_where(models.Filter(must=[_match("tenant", tenant)]))

    def count(self, *, tenant: str | None = None) -> int:
        return self._store.count(tenant=tenant)

    def sample(self, *, limit: int) -> list[tuple[str, list[float]]]:
        points, _ = self._store.scroll(after=None, limit=limit, with_vectors=True)
        return [(p.payload.tenant, list(p.vector)) for p in points if p.vector]

    def drop(self) -> None:
        self._store.drop()

    def close(self) -> None:
        self._store.close()
