"""The semantic answer cache: a reworded question gets the answer an earlier one was given.

Looked up by the retrieve stage, after the question is embedded and before the search, with
that same one vector. An entry (`QuestionEntry`) is an answered question's vector in an
index of its own in the vector store (`rag.store.QuestionIndex`), so the retrieve pool, the
store's owner, both reads and writes it. The entry points at the question's exact-cache key
rather than holding the answer, so what the exact cache no longer holds (expired after 24 h,
emptied by `DELETE /v1/cache`, never written because the answer was degraded or emptied) is
never served from here either.

A hit needs all of:
- the same tenant and the same answer settings (`pipeline_fingerprint`);
- the tenant's corpus version as it is now, or an older one whose search the notes
  changed since leave as it was: for the earlier question's own vector, the changed notes'
  live chunks above the floor of its passages (the last one's score) are exactly the
  passages it had from them. Chunk ids come from the chunks' words, so the search would
  find the same passages and the writer would get the same context; an edited passage, a
  deleted source, or a new passage that outranks them ends the entry, while an edit
  elsewhere in a source, or any change to another note, does not. The document registry
  logs which document each corpus version changed (`DocumentRegistry.changes_since`);
  where the log does not reach back, no older entry is served;
- cosine similarity of at least `SCRIBES_SEMANTIC_CACHE_THRESHOLD` (0.85, tuned on
  `samples/eval/paraphrases.jsonl`; the README says how);
- the near-miss guard's consent (`rag.caches.near_miss`);
- an answer that said something: a no-context answer is never shared.

Entries are written as the retrieve stage finds passages, before the answer exists: the
entry is live as soon as the exact cache holds its answer, and never before. A hit on an
older version's entry also puts the answer under the asking job's exact-cache key, so the
same words asked again are answered by the API at once.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from redis import Redis

from rag.caches.answers import pipeline_fingerprint
from rag.caches.near_miss import QuestionWords, near_miss
from rag.records.documents import DocumentRegistry
from rag.settings import Settings
from rag.store import QuestionIndex, VectorStore
from rag.telemetry.metrics import SEMANTIC_REVALIDATIONS
from rag.types import Answer, Passage, QuestionEntry, QuestionMatch

__all__ = ["SemanticCache", "SemanticHit", "SemanticLookup"]

_NAMESPACE = uuid.UUID("0b7e3c55-9a1d-4f43-8d6e-2f51c9a7b8e4")
# Candidates above the threshold to weigh: the nearest may be refused by the guard, or its
# answer gone, while the next is good.
_CANDIDATES = 5
# How often each process drops a tenant's expired entries.
_PURGE_EVERY_S = 600.0
# Titles and questions read for the guard, kept per process.
_KEPT = 4096
_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


def _floor(passages: Sequence[Passage], top_k: int, score_threshold: float) -> float:
    """The score a passage must reach to enter these top `top_k`: the last one's when the
    search filled them, else the threshold. A little under it: scores are kept rounded."""
    last = min((p.score for p in passages), default=score_threshold)
    return (last if len(passages) >= top_k else score_threshold) - 1e-4


@dataclass(frozen=True, slots=True)
class SemanticHit:
    answer: Answer
    question: str  # the earlier question whose answer this is
    similarity: float
    # Answered at an older corpus version, and the changes since shown not to touch it.
    revalidated: bool = False


@dataclass(frozen=True, slots=True)
class SemanticLookup:
    hit: SemanticHit | None
    # (similarity, reason) of each candidate the near-miss guard refused
    refused: tuple[tuple[float, str], ...] = field(default=())


class SemanticCache:
    """Find and remember answered questions; `index` opens the question index (once)."""

    def __init__(
        self,
        redis: Redis,
        index: Callable[[], QuestionIndex],
        documents: DocumentRegistry,
        store: Callable[[], VectorStore],
        settings: Settings,
    ) -> None:
        self._redis = redis
        self._index = index
        self._documents = documents
        self._store = store
        self._settings = settings
        self.threshold = settings.semantic_cache_threshold
        self._ttl_s = settings.semantic_cache_ttl_s
        self._purged: dict[str, float] = {}
        # Both read at a corpus version, which an edit changes: kept per version, bounded.
        self._titles: OrderedDict[tuple[str, int], frozenset[str]] = OrderedDict()
        self._words: OrderedDict[tuple[str, str, int], QuestionWords] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(
        self,
        *,
        tenant: str,
        question: str,
        vector: list[float],
        top_k: int,
        corpus_version: int,
    ) -> SemanticLookup:
        """The best earlier answer for `question`, if one may be shared, at `corpus_version`
        (the tenant's now) and the answer settings of `top_k`."""
        matches = self._index().nearest(
            tenant=tenant,
            vector=vector,
            corpus_version=corpus_version,
            fingerprint=pipeline_fingerprint(self._settings, top_k=top_k),
            now=time.time(),
            limit=_CANDIDATES,
            min_score=self.threshold,
        )
        if not matches:
            return SemanticLookup(None)
        titles = self._titles_at(tenant, corpus_version)
        asked = QuestionWords.of(question, titles=titles)
        refused: list[tuple[float, str]] = []
        allowed = []
        for match in matches:
            earlier = self._remembered(
                (match.question, tenant, corpus_version),
                self._words,
                partial(QuestionWords.of, match.question, titles=titles),
            )
            reason = near_miss(asked, earlier)
            if reason is None:
                allowed.append(match)
            else:
                refused.append((match.score, reason))
        if allowed:
            found = self._redis.mget([match.answer_key for match in allowed])
            for match, raw in zip(allowed, found, strict=True):
                if not raw:
                    continue  # not answered yet, expired, or emptied
                answer = Answer.from_json(json.loads(raw))
                if answer.no_context or not answer.cacheable:
                    continue
                if match.corpus_version != corpus_version and not self._still_holds(
                    tenant, match, corpus_version
                ):
                    continue
                hit = SemanticHit(
                    answer,
                    match.question,
                    round(match.score, 4),
                    revalidated=match.corpus_version != corpus_version,
                )
                return SemanticLookup(hit, tuple(refused))
        return SemanticLookup(None, tuple(refused))

    def _still_holds(self, tenant: str, match: QuestionMatch, corpus_version: int) -> bool:
        """Whether the notes changed since `match` was answered leave its search as it was:
        for the earlier question's own vector, the changed notes' live chunks above the
        floor of its passages are exactly the passages it had from them (a chunk's id comes
        from its words, so an edit elsewhere in a note keeps them), so the search would
        find the same passages and the writer would be given the same context."""
        changed = self._documents.changes_since(tenant, match.corpus_version, corpus_version)
        if changed is None:
            outcome = "stale"  # the log does not reach back that far
        elif not changed:
            outcome = "kept"
        else:
            had = {chunk for document, chunk in match.passages if document in changed}
            hits = self._store().search(
                tenant=tenant,
                vector=list(match.vector),
                limit=len(had) + 8,
                score_threshold=match.floor,
                document_ids=sorted(changed),
            )
            live = self._documents.live_revisions(tenant, sorted(changed))
            found = {
                hit.id for hit in hits if live.get(hit.payload.document_id) == hit.payload.revision
            }
            outcome = "kept" if found == had else "stale"
        SEMANTIC_REVALIDATIONS.labels(outcome).inc()
        return outcome == "kept"

    def remember(
        self,
        *,
        tenant: str,
        question: str,
        vector: list[float],
        top_k: int,
        corpus_version: int,
        answer_key: str,
        passages: Sequence[Passage],
    ) -> None:
        """Add the question, whose answer will be kept under `answer_key` (its exact-cache
        key at `corpus_version`) and written from `passages`, the search's top `top_k`."""
        index = self._index()
        now = time.time()
        index.add(
            [
                QuestionEntry(
                    id=str(uuid.uuid5(_NAMESPACE, answer_key)),
                    vector=vector,
                    tenant=tenant,
                    corpus_version=corpus_version,
                    fingerprint=pipeline_fingerprint(self._settings, top_k=top_k),
                    question=question,
                    answer_key=answer_key,
                    expires_at=now + self._ttl_s,
                    passages=tuple((p.document_id, p.chunk_id) for p in passages),
                    floor=_floor(passages, top_k, self._settings.score_threshold),
                )
            ]
        )
        with self._lock:
            due = now - self._purged.get(tenant, 0.0) >= _PURGE_EVERY_S
            if due:
                self._purged[tenant] = now
        if due:
            index.purge_expired(tenant=tenant, now=now)

    def clear(self, tenant: str) -> None:
        self._index().clear(tenant=tenant)

    def _titles_at(self, tenant: str, corpus_version: int) -> frozenset[str]:
        """The tenant's document titles, names the guard knows even when not capitalised."""
        return self._remembered(
            (tenant, corpus_version),
            self._titles,
            lambda: frozenset(record.title for record in self._documents.records(tenant)),
        )

    def _remembered(self, key: _K, kept: OrderedDict[_K, _V], make: Callable[[], _V]) -> _V:
        with self._lock:
            value = kept.get(key)
            if value is not None:
                kept.move_to_end(key)
                return value
        value = make()
        with self._lock:
            kept[key] = value
            if len(kept) > _KEPT:
                kept.popitem(last=False)
        return value
