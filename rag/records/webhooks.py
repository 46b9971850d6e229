"""A job's webhook deliveries, kept on its record, and the outbox of those not yet done.

The outbox is a sorted set of job ids scored by when their next attempt is due. A job enters
it in the very write that finishes it (`rag.records.jobs`), leaves it when its webhook is
delivered or given up, and in between each attempt moves its score to the next one's due
time. So whatever dies between a job's end and its delivery (the process that finished it,
the broker, the worker holding a retry), the entry stays; the heartbeat's sweep sends any
entry overdue by `SCRIBES_WEBHOOK_RESEND_AFTER_S` again.

Attempts are numbered on the record: an attempt runs only if it is the next one (one
script checks and counts it), so a delivery sent twice (the sweep's and a slow retry's)
makes one attempt, not two.
"""

from __future__ import annotations

import json
import time

from redis import Redis

from rag.keys import job_key, webhook_outbox_key
from rag.records.jobs import lua_is_finished
from rag.webhooks import WebhookAttempt, WebhookState

__all__ = ["AttemptClaim", "WebhookDeliveries"]

# Claims attempt ARGV[1] of a finished job's webhook: {'go', url} when it is the next one,
# else why not. Marks the entry as attempted now, so the sweep waits before re-sending. A
# job whose attempts are all used up (each died before it could say how it went) is failed.
# KEYS: the record, the outbox. ARGV: attempt, now, job id, most attempts.
_BEGIN = f"""
local url = redis.call('HGET', KEYS[1], 'callback_url')
if not url or url == '' then
  redis.call('ZREM', KEYS[2], ARGV[3])
  return {{'gone'}}
end
local status = redis.call('HGET', KEYS[1], 'status')
if not ({lua_is_finished("status")}) then return {{'unfinished'}} end
local state = redis.call('HGET', KEYS[1], 'webhook_state')
if state == 'delivered' or state == 'failed' then
  redis.call('ZREM', KEYS[2], ARGV[3])
  return {{'done'}}
end
local count = tonumber(redis.call('HGET', KEYS[1], 'webhook_attempt_count') or '0')
if count >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'webhook_state', 'failed', 'webhook_due', '')
  redis.call('ZREM', KEYS[2], ARGV[3])
  return {{'done'}}
end
if count + 1 ~= tonumber(ARGV[1]) then return {{'stale'}} end
redis.call('HSET', KEYS[1], 'webhook_attempt_count', count + 1)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return {{'go', url}}
"""

# Appends an attempt (JSON, ARGV[2]) to the record and sets the state; a pending one stays
# in the outbox, due at ARGV[4], a final one leaves it. Nothing changes a final state.
# KEYS: the record, the outbox. ARGV: job id, attempt JSON, state, next due time or ''.
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
local state = redis.call('HGET', KEYS[1], 'webhook_state')
if state == 'delivered' or state == 'failed' then return 0 end
local attempts = redis.call('HGET', KEYS[1], 'webhook_attempts')
if not attempts or attempts == '' then
  attempts = '[' .. ARGV[2] .. ']'
else
  attempts = string.sub(attempts, 1, -2) .. ',' .. ARGV[2] .. ']'
end
redis.call('HSET', KEYS[1], 'webhook_attempts', attempts, 'webhook_state', ARGV[3],
  'webhook_due', ARGV[4])
if ARGV[3] == 'pending' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
"""


class AttemptClaim:
    """`url` to POST to when the attempt may go ahead; otherwise `reason` says why not:
    gone (no record or no callback), unfinished, done (delivered or given up), stale
    (another delivery made this attempt)."""

    def __init__(self, reply: list[str]) -> None:
        self.reason = str(reply[0])
        self.url = str(reply[1]) if self.reason == "go" else None


class WebhookDeliveries:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._begin = redis.register_script(_BEGIN)
        self._record = redis.register_script(_RECORD)

    def begin(self, job_id: str, attempt: int, *, max_attempts: int) -> AttemptClaim:
        reply = self._begin(
            keys=[job_key(job_id), webhook_outbox_key()],
            args=[attempt, time.time(), job_id, max_attempts],
        )
        return AttemptClaim(list(reply))

    def record(
        self,
        job_id: str,
        attempt: WebhookAttempt,
        state: WebhookState,
        *,
        next_at: float | None = None,
    ) -> bool:
        """Keep `attempt` on the job; a pending state needs `next_at`, the next one's time."""
        if state is WebhookState.PENDING and next_at is None:
            raise ValueError("a pending webhook needs the time of its next attempt")
        return bool(
            self._record(
                keys=[job_key(job_id), webhook_outbox_key()],
                args=[
                    job_id,
                    json.dumps(attempt.to_json()),
                    state.value,
                    "" if next_at is None else next_at,
                ],
            )
        )

    def next_attempt(self, job_id: str) -> int:
        """The number the job's next attempt will have."""
        count = self._redis.hget(job_key(job_id), "webhook_attempt_count")
        return int(str(count)) + 1 if count is not None else 1

    def overdue(self, due_before: float, *, limit: int = 100) -> list[str]:
        """Jobs whose next attempt was due before `due_before`, the longest overdue first."""
        found: list[str] = self._redis.zrangebyscore(
            webhook_outbox_key(), "-inf", due_before, start=0, num=limit
        )  # type: ignore[assignment]
        return found

    def resent(self, job_id: str) -> None:
        """Count now as the entry's due time: sent again, it is not overdue for a while."""
        self._redis.zadd(webhook_outbox_key(), {job_id: time.time()}, xx=True)

    def pending(self) -> int:
        """Deliveries in the outbox: not yet delivered or given up."""
        return int(self._redis.zcard(webhook_outbox_key()))
