"""The `VectorStore` contract, run against Qdrant Edge and qdrant-client's in-process modes."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from qdrant_edge import EdgeShard, KeywordIndexParams, PayloadSchemaType

from rag.settings import ConfigurationError
from rag.store import VectorStore, VectorStoreError, open_vector_store
from rag.store.edge import EdgeVectorStore
from rag.types import ChunkPayload, ChunkPoint

DIMENSION = 384
KINDS = ["edge", "qdrant-memory", "qdrant-path"]

Opener = Callable[[], VectorStore]


def _opener(kind: str, tmp_path: Path, dimension: int = DIMENSION) -> Opener:
    url = {"edge": None, "qdrant-memory": ":memory:", "qdrant-path": f"path:{tmp_path / 'qc'}"}
    return lambda: open_vector_store(
        url=url[kind],
        api_key=None,
        path=tmp_path / "edge",
        collection="chunks",
        dimension=dimension,
    )


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    opened = _opener(request.param, tmp_path)()
    yield opened
    opened.close()


def unit_vectors(count: int, seed: int = 0) -> NDArray[np.float64]:
    vectors = np.random.default_rng(seed).standard_normal((count, DIMENSION))
    norms: NDArray[np.float64] = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / norms


def axis(*weights: float) -> list[float]:
    """A hand-made vector: the given weights on the first axes, zeros elsewhere."""
    return [*weights, *([0.0] * (DIMENSION - len(weights)))]


def chunk(
    vector: NDArray[np.float64] | Sequence[float],
    *,
    tenant: str = "acme",
    document_id: str = "doc-1",
    revision: int = 1,
    chunk_index: int = 0,
    text: str | None = None,
) -> ChunkPoint:
    # Ids derived from content, as the indexer derives them.
    key = f"{tenant}/{document_id}/{revision}/{chunk_index}"
    return ChunkPoint(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, key)),
        vector=vector.tolist() if isinstance(vector, np.ndarray) else vector,
        payload=ChunkPayload(
            tenant=tenant,
            document_id=document_id,
            revision=revision,
            chunk_index=chunk_index,
            title=f"Title of {document_id}",
            text=text if text is not None else f"text of {key}",
        ),
    )


def test_search_returns_the_nearest_first_with_its_payload(store: VectorStore) -> None:
    vectors = unit_vectors(50)
    points = [chunk(v, chunk_index=i) for i, v in enumerate(vectors)]
    store.upsert(points)
    query = vectors[17] + 0.05 * unit_vectors(1, seed=1)[0]

    hits = store.search(tenant="acme", vector=query.tolist(), limit=5)

    assert len(hits) == 5
    assert hits[0].id == points[17].id
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    expected = vectors @ (query / np.linalg.norm(query))
    assert [h.id for h in hits] == [points[i].id for i in np.argsort(-expected)[:5]]
    assert hits[0].score == pytest.approx(expected[17], abs=1e-4)
    assert hits[0].payload == points[17].payload
    assert (hits[0].payload.document_id, hits[0].payload.chunk_index) == ("doc-1", 17)


def test_limit_caps_the_hits(store: VectorStore) -> None:
    store.upsert([chunk(v, chunk_index=i) for i, v in enumerate(unit_vectors(20))])
    assert len(store.search(tenant="acme", vector=axis(1.0), limit=3)) == 3
    with pytest.raises(ValueError, match="limit"):
        store.search(tenant="acme", vector=axis(1.0), limit=0)


def test_a_tenant_never_sees_another_tenants_chunks(store: VectorStore) -> None:
    vectors = unit_vectors(10)
    store.upsert([chunk(v, tenant="acme", chunk_index=i) for i, v in enumerate(vectors)])
    store.upsert([chunk(v, tenant="globex", chunk_index=i) for i, v in enumerate(vectors[:3])])

    acme = store.search(tenant="acme", vector=vectors[0].tolist(), limit=20)
    globex = store.search(tenant="globex", vector=vectors[0].tolist(), limit=20)

    assert len(acme) == 10
    assert {h.payload.tenant for h in acme} == {"acme"}
    assert len(globex) == 3
    assert {h.payload.tenant for h in globex} == {"globex"}
    assert globex[0].score == pytest.approx(1.0, abs=1e-4)
    assert store.search(tenant="initech", vector=vectors[0].tolist(), limit=20) == []
    assert (store.count(tenant="acme"), store.count(tenant="globex"), store.count()) == (10, 3, 13)


def test_upserting_the_same_ids_again_replaces_rather_than_duplicates(store: VectorStore) -> None:
    vectors = unit_vectors(8)
    store.upsert([chunk(v, chunk_index=i) for i, v in enumerate(vectors)])
    store.upsert([chunk(v, chunk_index=i) for i, v in enumerate(vectors)])
    assert store.count() == 8

    store.upsert([chunk(vectors[0], chunk_index=0, text="rewritten")])

    assert store.count() == 8
    assert (
        store.search(tenant="acme", vector=vectors[0].tolist(), limit=1)[0].payload.text
        == "rewritten"
    )


def test_delete_revisions_removes_only_that_documents_old_revisions(store: VectorStore) -> None:
    vectors = unit_vectors(4)
    points = [
        chunk(v, tenant=tenant, document_id=doc, revision=rev, chunk_index=i)
        for tenant in ("acme", "globex")
        for doc in ("doc-1", "doc-2")
        for rev in (1, 2, 3)
        for i, v in enumerate(vectors)
    ]
    store.upsert(points)
    assert store.count() == 48

    store.delete_revisions(tenant="acme", document_id="doc-1", up_to_revision=2)

    assert store.count(tenant="acme", document_id="doc-1") == 4
    assert store.count(tenant="acme", document_id="doc-2") == 12
    assert store.count(tenant="globex", document_id="doc-1") == 12
    assert store.count() == 40
    left = store.search(tenant="acme", vector=vectors[0].tolist(), limit=48)
    assert {h.payload.revision for h in left if h.payload.document_id == "doc-1"} == {3}


def test_a_search_can_be_kept_to_some_documents(store: VectorStore) -> None:
    store.upsert(
        [
            chunk(axis(1), document_id="near"),
            chunk(axis(1, 0.5), document_id="farther"),
            chunk(axis(1, 0.2), document_id="near-too", tenant="other"),
        ]
    )
    found = store.search(tenant="acme", vector=axis(1), limit=5, document_ids=["farther", "x"])
    assert [hit.payload.document_id for hit in found] == ["farther"]
    assert store.search(tenant="acme", vector=axis(1), limit=5, document_ids=[]) == []


def test_score_threshold_drops_weaker_hits(store: VectorStore) -> None:
    same, diagonal, orthogonal = axis(1.0), axis(1.0, 1.0), axis(0.0, 1.0)
    store.upsert([chunk(v, chunk_index=i) for i, v in enumerate((same, diagonal, orthogonal))])

    def scores(threshold: float | None) -> list[float]:
        hits = store.search(tenant="acme", vector=same, limit=10, score_threshold=threshold)
        return [round(h.score, 3) for h in hits]

    assert scores(None) == [1.0, 0.707, 0.0]
    assert scores(0.5) == [1.0, 0.707]
    assert scores(0.9) == [1.0]


def test_a_vector_of_the_wrong_dimension_is_refused(store: VectorStore) -> None:
    with pytest.raises(ValueError, match="384-d"):
        store.upsert([chunk([1.0, 0.0, 0.0])])
    with pytest.raises(ValueError, match="384-d"):
        store.search(tenant="acme", vector=[1.0, 0.0], limit=1)
    assert store.count() == 0


def test_a_closed_store_says_so(store: VectorStore) -> None:
    store.close()
    store.close()
    with pytest.raises(VectorStoreError, match="closed"):
        store.search(tenant="acme", vector=axis(1.0), limit=1)
    with pytest.raises(VectorStoreError, match="closed"):
        store.upsert([chunk(axis(1.0))])


@pytest.mark.parametrize("kind", ["edge", "qdrant-path"])
def test_written_points_survive_close_and_reopen(kind: str, tmp_path: Path) -> None:
    opener = _opener(kind, tmp_path)
    vectors = unit_vectors(30)
    first = opener()
    first.upsert([chunk(v, chunk_index=i) for i, v in enumerate(vectors)])
    first.delete_revisions(tenant="acme", document_id="doc-1", up_to_revision=0)
    first.close()

    again = opener()
    try:
        assert again.count() == 30
        hits = again.search(tenant="acme", vector=vectors[4].tolist(), limit=1)
        assert hits[0].payload.chunk_index == 4
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    finally:
        again.close()


def test_edge_shard_has_the_payload_indexes(tmp_path: Path) -> None:
    EdgeVectorStore(path=tmp_path / "edge", dimension=DIMENSION).close()

    shard = EdgeShard.load(str(tmp_path / "edge"))
    try:
        schema = shard.info().payload_schema
    finally:
        shard.close()

    assert schema["tenant"].data_type == PayloadSchemaType.Keyword
    tenant_params = schema["tenant"].params
    assert isinstance(tenant_params, KeywordIndexParams)
    assert tenant_params.is_tenant
    assert schema["document_id"].data_type == PayloadSchemaType.Keyword
    assert schema["revision"].data_type == PayloadSchemaType.Integer


def test_edge_shard_has_one_owner(tmp_path: Path) -> None:
    owner = EdgeVectorStore(path=tmp_path / "edge", dimension=DIMENSION)
    try:
        with pytest.raises(VectorStoreError, match="only one process may own it"):
            EdgeVectorStore(path=tmp_path / "edge", dimension=DIMENSION)
    finally:
        owner.close()


@pytest.mark.parametrize("kind", ["edge", "qdrant-path"])
def test_reopening_with_another_dimension_is_refused(kind: str, tmp_path: Path) -> None:
    _opener(kind, tmp_path)().close()
    with pytest.raises(ConfigurationError, match="16-d"):
        _opener(kind, tmp_path, dimension=16)()


def test_an_unreachable_server_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(VectorStoreError, match="unset QDRANT_URL"):
        open_vector_store(
            url="http://127.0.0.1:9",
            api_key=None,
            path=tmp_path,
            collection="chunks",
            dimension=DIMENSION,
        )


def test_an_unknown_url_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="QDRANT_URL"):
        open_vector_store(
            url="qdrant.local", api_key=None, path=tmp_path, collection="c", dimension=4
        )


def test_edge_optimize_builds_the_index_and_keeps_every_point(tmp_path: Path) -> None:
    # Enough 384-d vectors to pass Edge's default indexing threshold (about 6,500).
    store = EdgeVectorStore(path=tmp_path / "edge", dimension=DIMENSION)
    try:
        vectors = unit_vectors(7_000)
        for start in range(0, len(vectors), 1_000):
            store.upsert([chunk(vectors[i], chunk_index=i) for i in range(start, start + 1_000)])

        assert store.optimize() is True

        assert store.count() == 7_000
        for i in (0, 3_333, 6_999):
            hits = store.search(tenant="acme", vector=vectors[i].tolist(), limit=1)
            assert hits[0].payload.chunk_index == i
        store.upsert([chunk(axis(1.0), chunk_index=7_000)])
        store.delete_revisions(tenant="acme", document_id="doc-1", up_to_revision=1)
        assert store.count() == 0
    finally:
        store.close()


def test_concurrent_searches_and_upserts_stay_consistent(store: VectorStore) -> None:
    batch, batches, writers, readers = 25, 8, 3, 4
    store.upsert([chunk(v, tenant="other", chunk_index=i) for i, v in enumerate(unit_vectors(50))])
    errors: list[BaseException] = []
    seen_counts: list[list[int]] = [[] for _ in range(readers)]
    writing = threading.Event()
    done = threading.Event()

    def write(writer: int) -> None:
        vectors = unit_vectors(batch * batches, seed=100 + writer)
        try:
            for b in range(batches):
                points = [
                    chunk(
                        vectors[b * batch + i], document_id=f"w{writer}", chunk_index=b * batch + i
                    )
                    for i in range(batch)
                ]
                store.upsert(points)
                writing.set()
                # Read-your-writes: the batch is searchable as soon as upsert returns.
                mine = store.search(tenant="acme", vector=vectors[b * batch].tolist(), limit=1)
                assert mine[0].id == points[0].id
        except BaseException as exc:
            errors.append(exc)

    def read(reader: int) -> None:
        query = unit_vectors(1, seed=200 + reader)[0].tolist()
        try:
            writing.wait(5)
            while not done.is_set():
                hits = store.search(tenant="acme", vector=query, limit=5)
                assert all(h.payload.tenant == "acme" for h in hits)
                seen_counts[reader].append(store.count(tenant="acme"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(r,)) for r in range(readers)]
    writer_threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads + writer_threads:
        thread.start()
    for thread in writer_threads:
        thread.join(60)
    done.set()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert store.count(tenant="acme") == batch * batches * writers
    assert store.count(tenant="other") == 50
    for counts in seen_counts:
        assert counts, "a reader never ran"
        assert counts == sorted(counts), "a count went backwards"
        # Each upsert lands whole: no reader sees part of a batch.
        assert all(c % batch == 0 for c in counts)


def test_scroll_pages_through_every_point_once(store: VectorStore) -> None:
    vectors = unit_vectors(45, seed=3)
    store.upsert(
        [chunk(v, tenant=("acme", "umbrella")[i % 2], chunk_index=i) for i, v in enumerate(vectors)]
    )
    seen: dict[str, ChunkPoint] = {}
    after: str | None = None
    pages = 0
    while True:
        page, after = store.scroll(after=after, limit=10, with_vectors=True)
        pages += 1
        for point in page:
            assert point.id not in seen
            seen[point.id] = point
        if after is None:
            break
    assert pages == 5 and len(seen) == 45
    # Each point comes back whole: payload and the vector written.
    some = next(p for p in seen.values() if p.payload.chunk_index == 7)
    assert np.allclose(some.vector, vectors[7], atol=1e-5)
    bare, _ = store.scroll(after=None, limit=3, with_vectors=False)
    assert all(not point.vector for point in bare)


def test_scroll_can_be_kept_to_a_tenants_documents(store: VectorStore) -> None:
    vectors = unit_vectors(12, seed=4)
    store.upsert(
        [
            chunk(v, tenant=tenant, document_id=f"doc-{i % 3}", chunk_index=i)
            for i, v in enumerate(vectors)
            for tenant in ("acme", "umbrella")
        ]
    )
    page, after = store.scroll(
        after=None, limit=100, with_vectors=False, tenant="umbrella", document_ids=["doc-1"]
    )
    assert after is None
    assert {(p.payload.tenant, p.payload.document_id) for p in page} == {("umbrella", "doc-1")}
    assert len(page) == 4


@pytest.mark.parametrize("kind", KINDS)
def test_drop_deletes_the_collection(kind: str, tmp_path: Path) -> None:
    opener = _opener(kind, tmp_path)
    first = opener()
    first.upsert([chunk(v, chunk_index=i) for i, v in enumerate(unit_vectors(5))])
    first.drop()
    with pytest.raises(VectorStoreError, match="closed"):
        first.count()
    if kind != "qdrant-memory":  # an in-memory store is gone with its client anyway
        again = opener()
        try:
            assert again.count() == 0
        finally:
            again.close()
