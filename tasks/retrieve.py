"""Queue `retrieve`: answer from the semantic cache, or search the tenant's passages;
answer at once when none is relevant."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum

from celery.exceptions import Ignore

from rag.answering import no_context_answer
from rag.caches.answers import AnswerCache
from rag.caches.contexts import ContextCache
from rag.caches.semantic import SemanticCache
from rag.embedding import decode_vector, encode_vectors
from rag.records.documents import DocumentRegistry
from rag.records.jobs import JobRecord, JobStore, SemanticSource, Stage
from rag.retrieval import retrieve_passages
from rag.services import process_services
from rag.store import VectorStore
from rag.telemetry.metrics import count_cache, observe_semantic
from rag.telemetry.tracing import tracer
from rag.types import Passage
from tasks.base import ScribesTask, scribes_task, stop_chain
from tasks.names import TaskName

__all__ = ["Retrieved", "find_passages", "retrieve_context"]

log = logging.getLogger(__name__)


class Retrieved(StrEnum):
    PASSAGES = "passages"  # handed to generate
    SEMANTIC = "semantic"  # the job is answered: an earlier question's answer
    NO_CONTEXT = "no_context"  # the job is answered: nothing relevant
    SKIPPED = "skipped"  # not this delivery's job to move


def find_passages(
    job_id: str,
    *,
    jobs: JobStore,
    store: VectorStore,
    documents: DocumentRegistry,
    answers: AnswerCache,
    score_threshold: float,
    contexts: ContextCache | None = None,
    semantic: SemanticCache | None = None,
    model: str | None = None,
    reembed: Callable[[str], str] | None = None,
) -> Retrieved:
    """Answer the job from `semantic` when an earlier question of its tenant may share its
    answer; else find its passages (from `contexts` when the same search ran within the
    hour at the tenant's current corpus version) and hand them to generate.

    `store` and `semantic` are of one generation of the store, whose vectors `model` made: a
    job embedded by another model (the store switched to a new one since) is embedded again
    with `reembed`, never searched with a vector of the wrong model.
    """
    if not jobs.start_stage(job_id, Stage.RETRIEVE):
        return Retrieved.SKIPPED
    job = jobs.get(job_id)
    if job is None or job.query_vector is None:
        return Retrieved.SKIPPED
    if model is not None and reembed is not None and job.query_model not in (None, model):
        log.info("job %s was embedded by %s, the store holds %s", job_id, job.query_model, model)
        job = replace(job, query_vector=reembed(job.question), query_model=model)
    query_vector = job.query_vector
    assert query_vector is not None
    mode = job.cache_mode
    version = None
    if semantic is not None and mode.writes:
        # Read before the search: what the search finds is of this version or newer.
        version = documents.corpus_version(job.tenant)
        if mode.reads and _answered_from(semantic, job, version, jobs, answers):
            return Retrieved.SEMANTIC
    lookup = None
    if contexts is not None and mode.writes:
        lookup = contexts.lookup(
            tenant=job.tenant,
            query_vector=query_vector,
            top_k=job.top_k,
            score_threshold=score_threshold,
        )
        if mode.reads:
            hit = lookup.passages is not None
            count_cache("context", hits=int(hit), misses=int(not hit))
    if lookup is not None and mode.reads and lookup.passages is not None:
        passages = list(lookup.passages)
    else:
        passages = _search(job, store, documents, score_threshold)
        if contexts is not None and lookup is not None:
            contexts.put(lookup.key, passages)
    if not passages:
        # Nothing relevant: say so plainly and never spend a call on the writer.
        answer = no_context_answer()
        # Cached first, as in generate: asked again at once, it is an exact hit.
        if mode.writes:
            answers.put(job.answer_cache_key, answer)
        jobs.succeed(job_id, answer, last_stage=Stage.RETRIEVE)
        return Retrieved.NO_CONTEXT
    # Only where the job's exact-cache key is of the version searched: an answer kept under
    # an older version's key may have been written from older notes by another job.
    if semantic is not None and version is not None and version == job.corpus_version:
        semantic.remember(
            tenant=job.tenant,
            question=job.question,
            vector=decode_vector(query_vector).tolist(),
            top_k=job.top_k,
            corpus_version=version,
            answer_key=job.answer_cache_key,
            passages=passages,
        )
    jobs.finish_stage(job_id, Stage.RETRIEVE, passages=passages)
    return Retrieved.PASSAGES


def _answered_from(
    semantic: SemanticCache, job: JobRecord, version: int, jobs: JobStore, answers: AnswerCache
) -> bool:
    """Finish the job with an earlier answer when the semantic cache has one for it."""
    assert job.query_vector is not None
    with tracer.start_as_current_span("semantic cache lookup") as span:
        found = semantic.lookup(
            tenant=job.tenant,
            question=job.question,
            vector=decode_vector(job.query_vector).tolist(),
            top_k=job.top_k,
            corpus_version=version,
        )
        hit = found.hit
        if span.is_recording():
            span.set_attributes(
                {
                    "scribes.cache.hit": hit is not None,
                    "scribes.cache.near_misses": len(found.refused),
                    **({"scribes.cache.similarity": hit.similarity} if hit else {}),
                }
            )
    count_cache("semantic", hits=int(hit is not None), misses=int(hit is None))
    observe_semantic(hit.similarity if hit else None, found.refused)
    if hit is None:
        return False
    if hit.revalidated and job.corpus_version == version:
        # Still true at this version: the next time these very words are asked, the API
        # answers them from the exact cache (written first, as in generate).
        answers.put(job.answer_cache_key, hit.answer)
    jobs.succeed(
        job.id,
        hit.answer,
        last_stage=Stage.RETRIEVE,
        semantic=SemanticSource(hit.question, hit.similarity),
    )
    return True


def _search(
    job: JobRecord, store: VectorStore, documents: DocumentRegistry, score_threshold: float
) -> list[Passage]:
    assert job.query_vector is not None
    with tracer.start_as_current_span("vector search") as span:
        passages = retrieve_passages(
            store,
            documents,
            tenant=job.tenant,
            vector=decode_vector(job.query_vector).tolist(),
            top_k=job.top_k,
            score_threshold=score_threshold,
        )
        if span.is_recording():
            span.set_attributes(
                {
                    "db.system.name": "qdrant",  # every store adapter is Qdrant's
                    "db.operation.name": "search",
                    "scribes.top_k": job.top_k,
                    "scribes.passages": len(passages),
                }
            )
    return list(passages)


@scribes_task(TaskName.RETRIEVE_CONTEXT, soft_time_limit=30, time_limit=60)
def retrieve_context(self: ScribesTask, *, job_id: str) -> None:
    services = process_services()
    # One read of the live generation: the store, its questions and its model go together.
    live = services.live()

    def reembed(question: str) -> str:
        return encode_vectors(services.embedder(live).embed([question])[0])

    outcome = find_passages(
        job_id,
        jobs=services.jobs,
        store=services.vector_store(live),
        documents=services.documents,
        answers=services.answers,
        score_threshold=services.settings.score_threshold,
        contexts=services.contexts,
        semantic=services.semantic(live),
        model=live.model,
        reembed=reembed,
    )
    if outcome is Retrieved.SKIPPED:
        raise Ignore()
    if outcome in (Retrieved.NO_CONTEXT, Retrieved.SEMANTIC):
        stop_chain(self)
