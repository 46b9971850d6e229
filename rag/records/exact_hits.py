"""An exact-cache hit served in one Redis round trip: look it up, record it, count it.

The answer cache's key needs the tenant's corpus version, the hit needs a job record (so its
id can be polled like any other), and the usage ledger counts every finished question. Done
one after another that is three round trips, and on a hit they are most of what the API
does; here one Lua script does all three, atomically. On a miss it only reads, and hands
back the key and the version the job is created with.

What it adds to the usage ledger is what `UsageLedger.record` adds for an exact-cache hit
(`questions`, `cache:exact`, `no_context` where the answer says so, the month's tenants),
under the same once-per-job marker; a test holds the two to the same result.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace

from redis import Redis

from rag.caches.answers import normalise_question, pipeline_fingerprint
from rag.keys import (
    answer_cache_prefix,
    corpus_version_key,
    job_key,
    usage_day_key,
    usage_recorded_key,
    usage_tenants_key,
    webhook_outbox_key,
)
from rag.records.jobs import JobRecord, JobStore
from rag.records.usage import DAY_TTL_S, RECORDED_TTL_S, day_of, month_of
from rag.settings import Settings
from rag.types import Answer, Usage
from rag.webhooks import WebhookState, WebhookStatus

__all__ = ["ExactHits", "ExactLookup"]

# The no-context flag is found as text, not by decoding the answer (cjson took most of the
# script's 107 us on a 4.5 kB answer): json.dumps writes the key as `"no_context": true`, and
# a quote inside any string value is escaped, so only the key itself can match.
# A hit with a callback URL enters the webhook outbox, due now, in the same write.
# KEYS: corpus version, job record, usage day, month's tenants, usage marker, webhook outbox.
# ARGV: key prefix, normalised question, fingerprint, serve ('1' to read), job ttl,
# usage ttl, marker ttl, tenant, then the job record's field pairs.
_SERVE = """
local version = redis.call('GET', KEYS[1]) or '0'
local key = ARGV[1] .. redis.sha1hex(ARGV[2] .. '\\31' .. version .. '\\31' .. ARGV[3])
if ARGV[4] ~= '1' then return {version, key, false} end
local raw = redis.call('GET', key)
if not raw then return {version, key, false} end
redis.call('HSET', KEYS[2], 'cached_answer', raw, unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[2], ARGV[5])
if redis.call('HEXISTS', KEYS[2], 'callback_url') == 1 then
  redis.call('ZADD', KEYS[6], redis.call('TIME')[1], redis.call('HGET', KEYS[2], 'id'))
end
if redis.call('SET', KEYS[5], '1', 'NX', 'EX', ARGV[7]) then
  redis.call('HINCRBY', KEYS[3], 'questions', 1)
  redis.call('HINCRBY', KEYS[3], 'cache:exact', 1)
  if string.find(raw, '"no_context": true', 1, true) then
    redis.call('HINCRBY', KEYS[3], 'no_context', 1)
  end
  redis.call('EXPIRE', KEYS[3], ARGV[6])
  redis.call('SADD', KEYS[4], ARGV[8])
  redis.call('EXPIRE', KEYS[4], ARGV[6])
end
return {version, key, raw}
"""


@dataclass(frozen=True, slots=True)
class ExactLookup:
    """The exact cache's key and corpus version for a question, and its finished job on a
    hit (None on a miss, or when the request reads no cache)."""

    key: str
    corpus_version: int
    job: JobRecord | None


class ExactHits:
    def __init__(self, redis: Redis, jobs: JobStore) -> None:
        self._jobs = jobs
        self._serve = redis.register_script(_SERVE)

    def serve(
        self,
        settings: Settings,
        *,
        job_id: str,
        tenant: str,
        question: str,
        top_k: int,
        request_id: str | None,
        reads: bool,
        callback_url: str | None = None,
    ) -> ExactLookup:
        record, fields = self._jobs.born_finished(
            job_id=job_id, tenant=tenant, question=question, top_k=top_k, request_id=request_id
        )
        if callback_url:
            record = replace(record, callback_url=callback_url)
            fields["callback_url"] = callback_url
        now = time.time()
        args: list[str | int | float] = [
            answer_cache_prefix(tenant),
            normalise_question(question),
            pipeline_fingerprint(settings, top_k=top_k),
            "1" if reads else "0",
            self._jobs.ttl_s,
            DAY_TTL_S,
            RECORDED_TTL_S,
            tenant,
        ]
        for name, value in fields.items():
            args.extend((name, value))
        version, key, raw = self._serve(
            keys=[
                corpus_version_key(tenant),
                job_key(job_id),
                usage_day_key(tenant, day_of(now).isoformat()),
                usage_tenants_key(month_of(now)),
                usage_recorded_key(job_id),
                webhook_outbox_key(),
            ],
            args=args,
        )
        if not raw:
            return ExactLookup(str(key), int(version), None)
        # The cached answer cost nothing this time; the original job paid for it.
        answer = replace(Answer.from_json(json.loads(raw)), usage=Usage())
        webhook = WebhookStatus(callback_url, WebhookState.PENDING) if callback_url else None
        job = replace(record, answer=answer, webhook=webhook)
        self._jobs.finished_from_cache(job, ledgered=True)
        return ExactLookup(str(key), int(version), job)
