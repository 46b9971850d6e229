"""Questions waiting for their vector, so that one embed task can embed many at once.

The model embeds a batch of questions many times faster than the same questions one by
one (bench/: ~130/s batched against ~50/s singly on one thread). Each question still has
its own embed task, which keeps the chain and at-least-once delivery as they are: the
first task to run takes every waiting question, embeds them together and attaches each
vector to its job; the tasks that follow find their vector there and move straight on.
If that task dies, nothing was attached and each job's own task embeds it.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from redis import Redis

from rag.caches.control import CacheMode
from rag.keys import job_key, pending_questions_key
from rag.records.jobs import FINISHED, lua_is_finished

__all__ = ["PendingQuestions", "WaitingQuestion"]


class WaitingQuestion(NamedTuple):
    job_id: str
    question: str
    tenant: str
    cache_mode: CacheMode = CacheMode.USE


# Attach only to a job that still exists and is not finished.
_ATTACH = f"""
for i, key in ipairs(KEYS) do
  local status = redis.call('HGET', key, 'status')
  if status and not ({lua_is_finished("status")}) then
    redis.call('HSET', key, 'query_vector', ARGV[i + 1])
  end
  redis.call('ZREM', ARGV[1], ARGV[i + 1 + #KEYS])
end
return #KEYS
"""


class PendingQuestions:
    def __init__(self, redis: Redis, *, max_age_s: float) -> None:
        self._redis = redis
        self._max_age_s = max_age_s
        self._key = pending_questions_key()
        self._attach = redis.register_script(_ATTACH)

    def add(self, job_id: str) -> None:
        now = time.time()
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._key, {job_id: now})
            # Jobs past their deadline are never embedded; forget them.
            pipe.zremrangebyscore(self._key, "-inf", now - self._max_age_s)
            pipe.execute()

    def take(self, first: str, *, limit: int) -> list[WaitingQuestion]:
        """Up to `limit` jobs still without a vector, `first` first."""
        waiting: list[str] = self._redis.zrange(self._key, 0, limit - 1)  # type: ignore[assignment]
        ids = [first, *(job_id for job_id in waiting if job_id != first)][:limit]
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(
                    job_key(job_id), ["question", "query_vector", "status", "tenant", "cache_mode"]
                )
            rows: list[list[str | None]] = pipe.execute()
        batch: list[WaitingQuestion] = []
        gone: list[str] = []
        for job_id, (question, vector, status, tenant, mode) in zip(ids, rows, strict=True):
            if question is None or tenant is None or status in FINISHED:
                gone.append(job_id)
            elif vector is None:
                batch.append(
                    WaitingQuestion(job_id, question, tenant, CacheMode(mode or CacheMode.USE))
                )
        if gone:
            self._redis.zrem(self._key, *gone)
        return batch

    def attach(self, vectors: dict[str, str]) -> None:
        if not vectors:
            return
        ids = list(vectors)
        self._attach(
            keys=[job_key(job_id) for job_id in ids],
            args=[self._key, *(vectors[job_id] for job_id in ids), *ids],
        )
