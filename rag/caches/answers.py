"""The exact-answer cache: a finished answer, keyed by everything that could change it."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

from redis import Redis

from rag.keys import answer_cache_key
from rag.settings import Settings
from rag.types import Answer

__all__ = ["AnswerCache", "normalise_question", "pipeline_fingerprint"]

# Bump when prompt assembly or post-processing changes what an answer would be.
PIPELINE_VERSION = "2"  # 2: answers carry their quality
_SPACES = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s?!.]+$")


def normalise_question(question: str) -> str:
    """Questions that differ only in case, spacing or end punctuation share one answer."""
    text = unicodedata.normalize("NFKC", question).casefold()
    return _TRAILING.sub("", _SPACES.sub(" ", text).strip())


def pipeline_fingerprint(settings: Settings, *, top_k: int) -> str:
    parts = {
        "pipeline": PIPELINE_VERSION,
        "writer": settings.llm_model if settings.uses_anthropic else "extractive",
        "embedding_model": settings.embedding_model,
        "top_k": top_k,
        "score_threshold": settings.score_threshold,
        "context_max_tokens": settings.context_max_tokens,
        "answer_max_tokens": settings.answer_max_tokens,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class AnswerCache:
    """Finished answers by key; `rag.records.exact_hits` looks them up and serves them."""

    def __init__(self, redis: Redis, *, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s

    def key_for(
        self, settings: Settings, *, tenant: str, question: str, top_k: int, corpus_version: int
    ) -> str:
        return answer_cache_key(
            tenant,
            normalise_question(question),
            corpus_version,
            pipeline_fingerprint(settings, top_k=top_k),
        )

    def get(self, key: str) -> Answer | None:
        raw = self._redis.get(key)
        return Answer.from_json(json.loads(raw)) if raw else None

    def put(self, key: str, answer: Answer) -> None:
        self._redis.set(key, json.dumps(answer.to_json()), ex=self._ttl_s)
