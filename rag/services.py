"""The long-lived objects of one process, built from the settings on first use and kept.

Workers and the API build their Redis-backed records, stores and models here, so that each
is made one way. Celery forks pool children after importing this module, so nothing is
created at import.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import cached_property, lru_cache, partial

from redis import Redis
from redis.exceptions import RedisError

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
from rag.records.jobs import JobFinished, JobRecord, JobStore
from rag.records.pending import PendingQuestions
from rag.records.staging import ChunkStaging
from rag.records.usage import UsageLedger
from rag.records.webhooks import WebhookDeliveries
from rag.reindex import Reindexes
from rag.settings import ConfigurationError, Settings, get_settings
from rag.store import QuestionIndex, VectorStore, open_question_index, open_vector_store
from rag.store.generations import Generation, Generations
from rag.telemetry.metrics import observe_answer_quality, observe_llm_usage, observe_question
from rag.tokens import TokenCounter, load_token_counter
from rag.types import Answer, Usage
from rag.writers import AnswerWriter, build_writer
from rag.writers.extractive import ExtractiveWriter

__all__ = ["Services", "process_services"]

log = logging.getLogger(__name__)


class Services:
    """What a process needs, each made once; `close` releases the vector store."""

    def __init__(self, settings: Settings, *, redis_timeout_s: float = 10) -> None:
        self.settings = settings
        self._redis_timeout_s = redis_timeout_s
        self._store_lock = threading.Lock()
        # One handle per generation of the store: the live one, and during a reindex the
        # one being built (see rag.store.generations).
        self._stores: dict[int, VectorStore] = {}
        self._questions: dict[int, QuestionIndex] = {}
        self._semantic: dict[int, SemanticCache] = {}
        # Sends a finished job's webhook delivery task; set by the tasks layer
        # (`tasks.webhook.send_webhooks_from`) in the processes that can send tasks. Where
        # it is None, or the send fails, the outbox's sweep sends it.
        self.webhook_sender: Callable[[str], None] | None = None

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
        if event.callback_url and self.webhook_sender is not None:
            try:
                self.webhook_sender(event.job_id)
            except Exception as exc:  # the outbox holds it: the sweep sends it later
                log.warning("webhook of job %s not sent (%s); the sweep will", event.job_id, exc)

    @cached_property
    def webhooks(self) -> WebhookDeliveries:
        return WebhookDeliveries(self.redis)

    def spent_without_answer(self, job: JobRecord, spent: Usage, model: str, call: str) -> None:
        """A model call that ended without an answer, stopped because its job was cancelled
        (`call` "abandoned") or broken off part-way before a retry: what it spent still
        counts, in the ledger (once per `call`, beside the job's own entry) and in the token
        counters."""
        answer = Answer(text="", model=model, usage=spent)
        event = JobFinished(f"{job.id}:{call}", job.tenant, "abandoned", "miss", 0.0, answer)
        self.usage.record(event)
        if spent != Usage():
            observe_llm_usage(model, spent, job.tenant)

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
    def generations(self) -> Generations:
        settings = self.settings
        return Generations(
            self.redis, model=settings.embedding_model, dimension=settings.embedding_dimension
        )

    def live(self) -> Generation:
        """The live generation of the store, and so the model that questions are embedded
        with: one Redis GET, read afresh by every question."""
        return self.generations.live()

    def query_vectors(self, model: str) -> QueryVectorCache:
        return QueryVectorCache(
            self.redis, model=model, ttl_s=self.settings.query_vector_cache_ttl_s
        )

    def chunk_vectors(self, model: str) -> ChunkVectorCache:
        return ChunkVectorCache(
            self.redis, model=model, ttl_s=self.settings.chunk_vector_cache_ttl_s
        )

    @cached_property
    def contexts(self) -> ContextCache:
        return ContextCache(self.redis, ttl_s=self.settings.context_cache_ttl_s)

    def semantic(self, generation: Generation) -> SemanticCache | None:
        """The semantic answer cache over a generation of the store, read and written by
        the store's owner (None: off)."""
        settings = self.settings
        if not settings.semantic_cache_enabled:
            return None
        with self._store_lock:
            cache = self._semantic.get(generation.number)
            if cache is None:
                cache = self._semantic[generation.number] = SemanticCache(
                    self.redis,
                    partial(self.question_index, generation),
                    self.documents,
                    partial(self.vector_store, generation),
                    settings,
                )
            return cache

    @cached_property
    def pending(self) -> PendingQuestions:
        return PendingQuestions(self.redis, max_age_s=self.settings.job_deadline_s)

    @cached_property
    def reindexes(self) -> Reindexes:
        return Reindexes(self.redis)

    @cached_property
    def staging(self) -> ChunkStaging:
        return ChunkStaging(self.redis)

    @cached_property
    def heartbeats(self) -> Heartbeats:
        return Heartbeats(self.redis)

    def token_counter(self, generation: Generation | None = None) -> TokenCounter:
        """The tokenizer of `generation`'s model (the live one by default): chunks are cut to
        what the model that embeds them can read. With Redis away (the API starting before
        it), the settings' model: the one a new store has."""
        if generation is None:
            try:
                generation = self.live()
            except RedisError:
                return load_token_counter(self.settings.embedding_model)
        return load_token_counter(generation.model)

    def embedder(self, generation: Generation | None = None) -> Embedder:
        """The model of `generation` (the live one by default), loaded once per process."""
        settings = self.settings
        generation = generation or self.live()
        model = load_embedder(
            generation.model,
            threads=settings.embedding_threads,
            backend=settings.embedding_backend,
        )
        if model.dimension != generation.dimension:
            where = (
                "SCRIBES_EMBEDDING_DIMENSION"
                if generation.number == 1
                else f"generation {generation.number} of the store"
            )
            raise ConfigurationError(
                f"{model.model_name} makes {model.dimension}-d vectors but "
                f"{where} holds {generation.dimension}-d ones; set it to match or re-index"
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

    def vector_store(self, generation: Generation | None = None) -> VectorStore:
        """The process's one handle on a generation of the store (the live one by default);
        the embedded engine allows one owner."""
        generation = generation or self.live()
        with self._store_lock:
            store = self._stores.get(generation.number)
            if store is None:
                settings = self.settings
                store = self._stores[generation.number] = open_vector_store(
                    url=settings.qdrant_url,
                    api_key=settings.qdrant_api_key_value,
                    path=generation.edge_dir(settings),
                    collection=generation.collection(settings),
                    dimension=generation.dimension,
                )
            return store

    def question_index(self, generation: Generation | None = None) -> QuestionIndex:
        """The semantic cache's index of a generation (its vectors are of that generation's
        model), in the same engine and the same owner as the store."""
        generation = generation or self.live()
        with self._store_lock:
            index = self._questions.get(generation.number)
            if index is None:
                settings = self.settings
                index = self._questions[generation.number] = open_question_index(
                    url=settings.qdrant_url,
                    api_key=settings.qdrant_api_key_value,
                    path=generation.question_dir(settings),
                    collection=generation.questions_collection(settings),
                    dimension=generation.dimension,
                )
            return index

    def release(self, generation: Generation, *, drop: bool = False) -> None:
        """Close this process's handles on a generation, deleting its chunks and questions
        with `drop` (a closed Edge shard can then be opened by another process, e.g. to
        optimise it)."""
        if drop:
            # Opened if need be: a generation's data goes whether this process used it or not.
            self.vector_store(generation).drop()
            self.question_index(generation).drop()
        with self._store_lock:
            handles = (
                self._stores.pop(generation.number, None),
                self._questions.pop(generation.number, None),
            )
            self._semantic.pop(generation.number, None)
        for handle in handles:
            if handle is not None:
                handle.close()  # harmless after drop: closing twice is allowed

    def close(self) -> None:
        with self._store_lock:
            handles: list[VectorStore | QuestionIndex] = [
                *self._stores.values(),
                *self._questions.values(),
            ]
            self._stores.clear()
            self._questions.clear()
        for handle in handles:
            handle.close()


@lru_cache(maxsize=1)
def process_services() -> Services:
    """This process's services, from its settings."""
    return Services(get_settings())
