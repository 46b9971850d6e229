"""The long-lived objects of one process, built from the settings on first use and kept.

Workers and the API build their Redis-backed records, stores and models here, so that each
is made one way. Celery forks pool children after importing this module, so nothing is
created at import.
"""

from __future__ import annotations

import threading
from functools import cached_property, lru_cache

from redis import Redis

from rag.breaker import Breaker, BreakerConfig
from rag.budgets import Budgets
from rag.caches.answers import AnswerCache
from rag.caches.chunks import ChunkVectorCache
from rag.caches.contexts import ContextCache
from rag.caches.semantic import SemanticCache
from rag.caches.vectors import QueryVectorCache
from rag.embedding import Embedder, load_embedder
from rag.records.documents import DocumentRegistry
from rag.records.exact_hits import ExactHits
from rag.records.heartbeats import Heartbeats
from rag.records.jobs import JobFinished, JobStore
from rag.records.pending import PendingQuestions
from rag.records.staging import ChunkStaging
from rag.records.usage import UsageLedger
from rag.settings import ConfigurationError, Settings, get_settings
from rag.store import QuestionIndex, VectorStore, open_question_index, open_vector_store
from rag.telemetry.metrics import observe_answer_quality, observe_llm_usage, observe_question
from rag.tokens import TokenCounter, load_token_counter
from rag.types import Usage
from rag.writers import AnswerWriter, build_writer
from rag.writers.extractive import ExtractiveWriter

__all__ = ["Services", "process_services"]


class Services:
    """What a process needs, each made once; `close` releases the vector store."""

    def __init__(self, settings: Settings, *, redis_timeout_s: float = 10) -> None:
        self.settings = settings
        self._redis_timeout_s = redis_timeout_s
        self._store_lock = threading.Lock()
        self._store: VectorStore | None = None
        self._questions: QuestionIndex | None = None

    @cached_property
    def redis(self) -> Redis:
        # redis-py pools notice a fork and reconnect, so one client per process is safe.
        return Redis.from_url(
            self.settings.redis_url,
            decode_responses=True,
            socket_timeout=self._redis_timeout_s,
            socket_connect_timeout=min(5.0, self._redis_timeout_s),
            health_check_interval=30,
        )

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.redis, ttl_s=self.settings.job_ttl_s, on_finish=self.job_finished)

    def job_finished(self, event: JobFinished) -> None:
        """Every job as it finishes, once: added to the usage ledger, counted in the metrics."""
        if not event.ledgered:
            self.usage.record(event)
        observe_question(
            outcome=event.outcome,
            cache=event.cache,
            duration_s=event.duration_s,
            tenant=event.tenant,
        )
        if event.cache == "miss" and event.answer is not None:
            observe_answer_quality(event.answer)
            if event.answer.usage != Usage():
                observe_llm_usage(event.answer.model, event.answer.usage, event.tenant)

    @cached_property
    def usage(self) -> UsageLedger:
        return UsageLedger(self.redis)

    @cached_property
    def budgets(self) -> Budgets:
        return Budgets(self.settings, self.usage)

    @cached_property
    def documents(self) -> DocumentRegistry:
        return DocumentRegistry(self.redis)

    @cached_property
    def answers(self) -> AnswerCache:
        return AnswerCache(self.redis, ttl_s=self.settings.answer_cache_ttl_s)

    @cached_property
    def exact_hits(self) -> ExactHits:
        return ExactHits(self.redis, self.jobs)

    @cached_property
    def query_vectors(self) -> QueryVectorCache:
        settings = self.settings
        return QueryVectorCache(
            self.redis, model=settings.embedding_model, ttl_s=settings.query_vector_cache_ttl_s
        )

    @cached_property
    def chunk_vectors(self) -> ChunkVectorCache:
        settings = self.settings
        return ChunkVectorCache(
            self.redis, model=settings.embedding_model, ttl_s=settings.chunk_vector_cache_ttl_s
        )

    @cached_property
    def contexts(self) -> ContextCache:
        return ContextCache(self.redis, ttl_s=self.settings.context_cache_ttl_s)

    @cached_property
    def semantic(self) -> SemanticCache | None:
        """The semantic answer cache, read and written by the store's owner (None: off)."""
        settings = self.settings
        if not settings.semantic_cache_enabled:
            return None
        return SemanticCache(
            self.redis, self.question_index, self.documents, self.vector_store, settings
        )

    @cached_property
    def pending(self) -> PendingQuestions:
        return PendingQuestions(self.redis, max_age_s=self.settings.job_deadline_s)

    @cached_property
    def staging(self) -> ChunkStaging:
        return ChunkStaging(self.redis)

    @cached_property
    def heartbeats(self) -> Heartbeats:
        return Heartbeats(self.redis)

    def token_counter(self) -> TokenCounter:
        return load_token_counter(self.settings.embedding_model)

    def embedder(self) -> Embedder:
        settings = self.settings
        model = load_embedder(settings.embedding_model, threads=settings.embedding_threads)
        if model.dimension != settings.embedding_dimension:
            raise ConfigurationError(
                f"{model.model_name} makes {model.dimension}-d vectors but "
                f"SCRIBES_EMBEDDING_DIMENSION is {settings.embedding_dimension}; set it to match"
            )
        return model

    @cached_property
    def llm_breaker(self) -> Breaker:
        settings = self.settings
        return Breaker(
            self.redis,
            "llm",
            BreakerConfig(
                failures=settings.breaker_failures,
                failure_ratio=settings.breaker_failure_ratio,
                window_s=settings.breaker_window_s,
                cooldown_s=settings.breaker_cooldown_s,
                close_after=settings.breaker_close_after,
                probe_lease_s=settings.llm_timeout_s + 30,
            ),
        )

    @cached_property
    def fallback_writer(self) -> AnswerWriter | None:
        """What answers while the model's breaker is open, if anything does."""
        if self.settings.llm_fallback == "extractive" and self.settings.uses_anthropic:
            return ExtractiveWriter()
        return None

    @cached_property
    def writer(self) -> AnswerWriter:
        return build_writer(self.settings, self.token_counter())

    def vector_store(self) -> VectorStore:
        """The process's one handle on the store; the embedded engine allows one owner."""
        with self._store_lock:
            if self._store is None:
                settings = self.settings
                self._store = open_vector_store(
                    url=settings.qdrant_url,
                    api_key=settings.qdrant_api_key_value,
                    path=settings.vector_store_dir,
                    collection=settings.qdrant_collection,
                    dimension=settings.embedding_dimension,
                )
            return self._store

    def question_index(self) -> QuestionIndex:
        """The semantic cache's index, in the same engine and the same owner as the store."""
        with self._store_lock:
            if self._questions is None:
                settings = self.settings
                self._questions = open_question_index(
                    url=settings.qdrant_url,
                    api_key=settings.qdrant_api_key_value,
                    path=settings.question_index_dir,
                    collection=settings.qdrant_questions_collection,
                    dimension=settings.embedding_dimension,
                )
            return self._questions

    def close(self) -> None:
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None
            if self._questions is not None:
                self._questions.close()
                self._questions = None


@lru_cache(maxsize=1)
def process_services() -> Services:
    """This process's services, from its settings."""
    return Services(get_settings())
