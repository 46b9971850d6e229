"""Questions waiting for their vector, so that one embed task can embed many at once.

The model embeds a batch of questions many times faster than the same questions one by
one (bench/: ~150/s batched against ~55/s singly on one thread). A submitted question
waits here, and the API schedules one `scribes.embed.pending` task for all that wait: the
first submit to find none scheduled sends one (`schedule`, a SET NX), and the task clears
the mark (`unschedule`) before it takes the waiting questions, so a question added after
its take finds the mark gone and schedules the next. The task embeds them together,
attaches each vector to its job and sends every job on to retrieve. A job that a lost
task leaves waiting is enqueued again by the stall sweep with a task of its own
(`scribes.embed.query`), which embeds it, and whatever waits with it, the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

from redis import Redis

from rag.caches.control import CacheMode
from rag.keys import embed_scheduled_key, job_key, pending_questions_key
from rag.records.jobs import FINISHED, lua_is_finished

__all__ = ["SCHEDULED_TTL_S", "PendingQuestions", "WaitingQuestion"]

# How long a schedule holds without its task starting: after it, the next submit sends
# another (a task lost on its way, or one waiting behind a long backlog).
SCHEDULED_TTL_S = 10.0


class WaitingQuestion(NamedTuple):
    job_id: str
    question: str
    tenant: str
    cache_mode: CacheMode = CacheMode.USE
    # What the embed task needs to send the job on to retrieve itself (`tasks.embed`).
    created_at: float = 0.0
    request_id: str | None = None
    traceparent: str | None = None


# Attach only to a job that still exists and is not finished; `embedded_with` says how many
# questions the embed task took together.
_ATTACH = f"""
for i, key in ipairs(KEYS) do
  local status = redis.call('HGET', key, 'status')
  if status and not ({lua_is_finished("status")}) then
    redis.call('HSET', key, 'query_vector', ARGV[i + 1], 'query_model', ARGV[#ARGV],
      'embedded_with', #KEYS)
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
        self._scheduled = embed_scheduled_key()
        self._attach = redis.register_script(_ATTACH)

    def add(self, job_id: str) -> None:
        self.add_many([job_id])

    def add_many(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        now = time.time()
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._key, dict.fromkeys(job_ids, now))
            # Jobs past their deadline are never embedded; forget them.
            pipe.zremrangebyscore(self._key, "-inf", now - self._max_age_s)
            pipe.execute()

    def schedule(self, *, ttl_s: float = SCHEDULED_TTL_S) -> bool:
        """True when no embed task is on its way and the caller must send one."""
        return bool(self._redis.set(self._scheduled, "1", nx=True, px=int(ttl_s * 1000)))

    def unschedule(self) -> None:
        """The scheduled task has started: a question added from now on schedules another."""
        self._redis.delete(self._scheduled)

    def waiting(self) -> int:
        return int(self._redis.zcard(self._key))

    def take(self, first: str | None, *, limit: int) -> list[WaitingQuestion]:
        """Up to `limit` jobs still without a vector, oldest first (`first` before them)."""
        waiting: list[str] = self._redis.zrange(self._key, 0, limit - 1)  # type: ignore[assignment]
        ids = [job_id for job_id in waiting if job_id != first]
        if first is not None:
            ids = [first, *ids]
        ids = ids[:limit]
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(
                    job_key(job_id),
                    [
                        "question",
                        "query_vector",
                        "status",
                        "tenant",
                        "cache_mode",
                        "created_at",
                        "request_id",
                        "traceparent",
                    ],
                )
            rows: list[list[str | None]] = pipe.execute()
        batch: list[WaitingQuestion] = []
        gone: list[str] = []
        for job_id, row in zip(ids, rows, strict=True):
            question, vector, status, tenant, mode, created_at, request_id, traceparent = row
            if question is None or tenant is None or status in FINISHED:
                gone.append(job_id)
            elif vector is None:
                batch.append(
                    WaitingQuestion(
                        job_id,
                        question,
                        tenant,
                        CacheMode(mode or CacheMode.USE),
                        float(created_at or 0.0),
                        request_id or None,
                        traceparent or None,
                    )
                )
        if gone:
            self._redis.zrem(self._key, *gone)
        return batch

    def attach(self, vectors: dict[str, str], *, model: str) -> None:
        """Give each job its vector, naming the model that made it."""
        if not vectors:
            return
        ids = list(vectors)
        self._attach(
            keys=[job_key(job_id) for job_id in ids],
            args=[self._key, *(vectors[job_id] for job_id in ids), *ids, model],
        )
