"""`optimize_shard_offline`: the HNSW build of a closed Qdrant Edge shard in a child process."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from rag.store import VectorStoreError
from rag.store.edge import EdgeVectorStore
from rag.store.optimize import optimize_shard_offline
from rag.types import ChunkPayload, ChunkPoint

DIMENSION = 384
# Above Edge's indexing threshold for 384-d vectors (about 6,500): optimize() has work to do.
ACME_POINTS = 6_000
OTHER_POINTS = 3_000


def unit_vectors(count: int, seed: int) -> NDArray[np.float64]:
    vectors = np.random.default_rng(seed).standard_normal((count, DIMENSION))
    norms: NDArray[np.float64] = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / norms


def chunk(vector: NDArray[np.float64], *, tenant: str, index: int) -> ChunkPoint:
    return ChunkPoint(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{index}")),
        vector=vector.tolist(),
        payload=ChunkPayload(
            tenant=tenant,
            document_id=f"doc-{index // 50}",
            revision=1,
            chunk_index=index,
            title="t",
            text=f"chunk {index} of {tenant}",
        ),
    )


def fill(store: EdgeVectorStore, tenant: str, vectors: NDArray[np.float64]) -> None:
    for start in range(0, len(vectors), 1_000):
        store.upsert(
            [chunk(vectors[i], tenant=tenant, index=i) for i in range(start, start + 1_000)]
        )


def test_an_offline_optimize_indexes_the_shard_and_keeps_tenant_search_right(
    tmp_path: Path,
) -> None:
    path = tmp_path / "edge"
    acme, other = unit_vectors(ACME_POINTS, seed=1), unit_vectors(OTHER_POINTS, seed=2)
    store = EdgeVectorStore(path=path, dimension=DIMENSION)
    fill(store, "acme", acme)
    fill(store, "other", other)
    store.close()

    report = optimize_shard_offline(path, DIMENSION, timeout_s=600)

    assert report.changed is True
    assert report.points == ACME_POINTS + OTHER_POINTS
    assert report.indexed_vectors > 0
    reopened = EdgeVectorStore(path=path, dimension=DIMENSION)
    try:
        assert reopened.count() == ACME_POINTS + OTHER_POINTS
        noise = np.random.default_rng(3).standard_normal(DIMENSION) * 0.02
        for i in (0, 2_999, 5_999):
            hits = reopened.search(tenant="acme", vector=(acme[i] + noise).tolist(), limit=3)
            assert hits[0].payload.chunk_index == i
            assert all(hit.payload.tenant == "acme" for hit in hits)
        # Another tenant's point is never found, however near the query is to it.
        hits = reopened.search(tenant="acme", vector=other[7].tolist(), limit=3)
        assert hits and all(hit.payload.tenant == "acme" for hit in hits)
    finally:
        reopened.close()
    # Nothing more to build: a second run changes nothing.
    assert optimize_shard_offline(path, DIMENSION, timeout_s=600).changed is False


def test_a_shard_still_open_is_refused_and_left_whole(tmp_path: Path) -> None:
    path = tmp_path / "edge"
    store = EdgeVectorStore(path=path, dimension=DIMENSION)
    try:
        fill(store, "acme", unit_vectors(1_000, seed=4))
        with pytest.raises(VectorStoreError, match="still open"):
            optimize_shard_offline(path, DIMENSION, timeout_s=120)
        assert store.count() == 1_000
    finally:
        store.close()


def test_a_folder_without_a_shard_is_refused_and_not_created(tmp_path: Path) -> None:
    with pytest.raises(VectorStoreError, match="no Qdrant Edge shard"):
        optimize_shard_offline(tmp_path / "nothing", DIMENSION, timeout_s=60)
    assert not (tmp_path / "nothing").exists()
