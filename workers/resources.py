"""Per-process resources, created on first use and kept: model, store, clients.

Celery forks pool children after importing this module, so nothing is created at import.
"""

from __future__ import annotations

import threading
from functools import lru_cache

from redis import Redis

from rag.answer_cache import AnswerCache
from rag.answering import AnswerWriter, build_writer
from rag.documents import DocumentRegistry
from rag.embedder import Embedder, load_embedder
from rag.indexing import ChunkStaging
from rag.jobs import JobStore
from rag.query_batch import PendingQuestions
from rag.settings import ConfigurationError, Settings, get_settings
from rag.tokens import TokenCounter, load_token_counter
from rag.vectorstore import VectorStore, open_vector_store

__all__ = [
    "answer_cache",
    "chunk_staging",
    "close_vector_store",
    "document_registry",
    "embedder",
    "job_store",
    "pending_questions",
    "redis_client",
    "settings",
    "token_counter",
    "vector_store",
    "writer",
]

_store_lock = threading.Lock()
_store: VectorStore | None = None


def settings() -> Settings:
    return get_settings()


@lru_cache(maxsize=1)
def redis_client() -> Redis:
    # redis-py pools notice a fork and reconnect, so one client per process is safe.
    return Redis.from_url(
        settings().redis_url,
        decode_responses=True,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


@lru_cache(maxsize=1)
def job_store() -> JobStore:
    return JobStore(redis_client(), ttl_s=settings().job_ttl_s)


@lru_cache(maxsize=1)
def document_registry() -> DocumentRegistry:
    return DocumentRegistry(redis_client())


@lru_cache(maxsize=1)
def answer_cache() -> AnswerCache:
    return AnswerCache(redis_client(), ttl_s=settings().answer_cache_ttl_s)


@lru_cache(maxsize=1)
def pending_questions() -> PendingQuestions:
    return PendingQuestions(redis_client(), max_age_s=settings().job_deadline_s)


@lru_cache(maxsize=1)
def chunk_staging() -> ChunkStaging:
    return ChunkStaging(redis_client())


def token_counter() -> TokenCounter:
    return load_token_counter(settings().embedding_model)


def embedder() -> Embedder:
    model = load_embedder(settings().embedding_model, threads=settings().embedding_threads)
    if model.dimension != settings().embedding_dimension:
        raise ConfigurationError(
            f"{model.model_name} makes {model.dimension}-d vectors but "
            f"SCRIBES_EMBEDDING_DIMENSION is {settings().embedding_dimension}; set it to match"
        )
    return model


@lru_cache(maxsize=1)
def writer() -> AnswerWriter:
    return build_writer(settings(), token_counter())


def vector_store() -> VectorStore:
    """The process's one handle on the store; the embedded engine allows one owner process."""
    global _store
    with _store_lock:
        if _store is None:
            config = settings()
            _store = open_vector_store(
                url=config.qdrant_url,
                api_key=(
                    config.qdrant_api_key.get_secret_value() if config.qdrant_api_key else None
                ),
                path=config.vector_store_dir,
                collection=config.qdrant_collection,
                dimension=config.embedding_dimension,
            )
        return _store


def close_vector_store() -> None:
    global _store
    with _store_lock:
        if _store is not None:
            _store.close()
            _store = None
