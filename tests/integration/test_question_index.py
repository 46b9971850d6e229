"""The `QuestionIndex` contract (the semantic cache's store), on Qdrant Edge and qdrant-client."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from rag.store import QuestionIndex, open_question_index
from rag.types import QuestionEntry
from tests.integration.test_vectorstore import DIMENSION, KINDS, axis


@pytest.fixture(params=KINDS)
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QuestionIndex]:
    url = {"edge": None, "qdrant-memory": ":memory:", "qdrant-path": f"path:{tmp_path / 'qc'}"}
    opened = open_question_index(
        url=url[request.param],
        api_key=None,
        path=tmp_path / "questions",
        collection="questions",
        dimension=DIMENSION,
    )
    yield opened
    opened.close()


def entry(
    vector: Sequence[float],
    question: str,
    *,
    tenant: str = "acme",
    version: int = 3,
    fingerprint: str = "fp",
    ttl_s: float = 3600,
) -> QuestionEntry:
    key = f"{tenant}/{version}/{fingerprint}/{question}"
    return QuestionEntry(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, key)),
        vector=vector,
        tenant=tenant,
        corpus_version=version,
        fingerprint=fingerprint,
        question=question,
        answer_key=f"answer:{key}",
        expires_at=time.time() + ttl_s,
        passages=(("doc-a", "c1"), ("doc-b", "c2")),
        floor=0.42,
    )


def nearest(
    index: QuestionIndex,
    vector: Sequence[float],
    *,
    tenant: str = "acme",
    version: int = 3,
    fingerprint: str = "fp",
    min_score: float = 0.5,
) -> list[str]:
    found = index.nearest(
        tenant=tenant,
        vector=vector,
        corpus_version=version,
        fingerprint=fingerprint,
        now=time.time(),
        limit=5,
        min_score=min_score,
    )
    return [match.question for match in found]


def test_the_most_similar_question_comes_first_with_its_answer_key(index: QuestionIndex) -> None:
    index.add(
        [entry(axis(1, 0.2), "near"), entry(axis(1, 0.6), "farther"), entry(axis(0, 1), "no")]
    )
    found = index.nearest(
        tenant="acme",
        vector=axis(1, 0.1),
        corpus_version=3,
        fingerprint="fp",
        now=time.time(),
        limit=5,
        min_score=0.5,
    )
    assert [m.question for m in found] == ["near", "farther"]
    assert found[0].score > found[1].score >= 0.5
    best = found[0]
    assert best.answer_key == "answer:acme/3/fp/near" and best.corpus_version == 3
    assert best.passages == (("doc-a", "c1"), ("doc-b", "c2")) and best.floor == 0.42
    # Its own vector comes back, for checking what changed since against it.
    assert len(best.vector) == DIMENSION and best.vector[:2] == pytest.approx(
        (0.98, 0.196), abs=1e-3
    )


def test_only_the_same_tenant_settings_and_no_newer_version_are_found(
    index: QuestionIndex,
) -> None:
    index.add(
        [
            entry(axis(1), "bob's", tenant="bob"),
            entry(axis(1), "newer corpus", version=4),
            entry(axis(1), "other settings", fingerprint="other"),
            entry(axis(1), "expired", ttl_s=-1),
        ]
    )
    assert nearest(index, axis(1)) == []
    assert nearest(index, axis(1), tenant="bob") == ["bob's"]
    # An older version's entry is a candidate; the cache checks what changed since.
    assert nearest(index, axis(1), version=5) == ["newer corpus"]


def test_purge_expired_drops_that_tenants_expired_entries(index: QuestionIndex) -> None:
    index.add(
        [
            entry(axis(1), "current"),
            entry(axis(1), "old", version=2),
            entry(axis(1), "expired", ttl_s=-1),
            entry(axis(1), "bob's expired", tenant="bob", ttl_s=-1),
        ]
    )
    index.purge_expired(tenant="acme", now=time.time())
    assert index.count(tenant="acme") == 2
    assert index.count(tenant="bob") == 1


def test_clear_empties_one_tenant_only(index: QuestionIndex) -> None:
    index.add([entry(axis(1), "a"), entry(axis(0, 1), "b"), entry(axis(1), "c", tenant="bob")])
    index.clear(tenant="acme")
    assert index.count(tenant="acme") == 0
    assert nearest(index, axis(1), tenant="bob") == ["c"]


def test_adding_the_same_entry_again_replaces_it(index: QuestionIndex) -> None:
    index.add([entry(axis(1), "same")])
    index.add([entry(axis(1), "same")])
    assert index.count() == 1
