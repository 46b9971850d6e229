"""The job record: one Redis hash per question, moved forward only, and its event stream.

Every move that a client may want to see (a stage starting, a note, the end) appends an
event to the job's Redis stream in the same script that moves the record, and publishes the
stream's name on the channel of the same name. The API's long polls and server-sent events
wait on that channel (`api_shim.notify`) instead of reading the record in a loop, and read
the stream from where a client left off. The generate stage adds the answer's text to the
stream as the model writes it (`JobStore.add_text`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from redis import Redis

from rag.caches.control import CacheMode
from rag.keys import (
    active_jobs_key,
    delivery_count_key,
    job_events_key,
    job_key,
    webhook_outbox_key,
)
from rag.quality import Quality
from rag.types import Answer, Failure, Passage, Usage
from rag.webhooks import WebhookStatus

log = logging.getLogger(__name__)

__all__ = [
    "EVENTS_MAXLEN",
    "FINISHED",
    "JobEvent",
    "JobFinished",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "SemanticSource",
    "Stage",
    "decode_job",
    "lua_is_finished",
    "new_job_id",
    "read_events",
]


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # Stopped by its client (DELETE /v1/questions/{id}); no stage starts after it.
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


def lua_is_finished(variable: str) -> str:
    """A Lua test that `variable` holds a finished status, for the record's scripts."""
    return " or ".join(f"{variable} == '{status.value}'" for status in sorted(FINISHED))


class Stage(StrEnum):
    QUEUED = "queued"
    EMBED = "embed"
    RETRIEVE = "retrieve"
    GENERATE = "generate"
    DONE = "done"

    @property
    def rank(self) -> int:
        return _STAGE_ORDER.index(self)


_STAGE_ORDER = (Stage.QUEUED, Stage.EMBED, Stage.RETRIEVE, Stage.GENERATE, Stage.DONE)

# The most events a job's stream keeps (about: MAXLEN ~). A job has a handful of stage
# events and one text event per sentence the model writes.
EVENTS_MAXLEN = 2000

# Moves a job forward only: a redelivered task may repeat its own stage, never go back,
# and nothing changes a finished job. One round trip, atomic. An event (ARGV[5], with its
# JSON in ARGV[6]) goes on the job's stream and channel with the move; a stage event only
# when the stage changed, so that a redelivery repeats none.
# A job with a callback URL enters the webhook outbox, due now, in the write that finishes
# it: a process that dies before it sends the delivery task leaves it there for the sweep.
# KEYS: the record, the active-jobs index, the event stream, the webhook outbox.
# ARGV: rank, ttl, now, job id, event kind or '', event JSON, then field pairs.
_ADVANCE = f"""
local rank = redis.call('HGET', KEYS[1], 'stage_rank')
if not rank then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if {lua_is_finished("status")} then return 0 end
if tonumber(ARGV[1]) < tonumber(rank) then return 0 end
local before = redis.call('HGET', KEYS[1], 'stage')
redis.call('HSET', KEYS[1], 'stage_rank', ARGV[1], unpack(ARGV, 7))
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[5] ~= '' and (ARGV[5] ~= 'stage' or redis.call('HGET', KEYS[1], 'stage') ~= before) then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', {EVENTS_MAXLEN}, '*', ARGV[5], ARGV[6])
  redis.call('EXPIRE', KEYS[3], ARGV[2])
  redis.call('PUBLISH', KEYS[3], ARGV[5])
end
status = redis.call('HGET', KEYS[1], 'status')
if {lua_is_finished("status")} then
  redis.call('ZREM', KEYS[2], ARGV[4])
  local callback = redis.call('HGET', KEYS[1], 'callback_url')
  if callback and callback ~= '' then
    redis.call('ZADD', KEYS[4], ARGV[3], ARGV[4])
  end
  -- What the finish hook reports: the job's tenant, when it was asked, its callback.
  return redis.call('HMGET', KEYS[1], 'tenant', 'created_at', 'callback_url')
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 1
"""

# Text the model has written, for a job still running: 1 if added, 0 if the job has
# finished (cancelled, most likely) or is gone. KEYS: the record, the stream.
# ARGV: the event's JSON, ttl, "1" for a model call's first piece. A first piece of a job
# that has streamed text before (a call retried, or redelivered after its pool died) is
# preceded by a `restart` event: the text so far is void, the answer is written again.
_ADD_TEXT = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status or {lua_is_finished("status")} then return 0 end
if ARGV[3] == '1' then
  if redis.call('HGET', KEYS[1], 'streamed') == '1' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', {EVENTS_MAXLEN}, '*', 'restart', '{{}}')
  else
    redis.call('HSET', KEYS[1], 'streamed', '1')
  end
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', {EVENTS_MAXLEN}, '*', 'text', ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('PUBLISH', KEYS[2], 'text')
return 1
"""


# Deletes a claim only for the claimant that holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class SemanticSource:
    """Where a semantic-cache answer came from: the earlier question and how alike they are."""

    question: str
    similarity: float

    def to_json(self) -> dict[str, Any]:
        return {"question": self.question, "similarity": self.similarity}


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    tenant: str
    question: str
    top_k: int
    status: JobStatus
    stage: Stage
    corpus_version: int
    answer_cache_key: str
    created_at: float
    request_id: str | None = None
    # The W3C traceparent of the request that created the job: a re-enqueue continues it.
    traceparent: str | None = None
    cache_mode: CacheMode = CacheMode.USE
    answer: Answer | None = None
    cached: str | None = None
    semantic: SemanticSource | None = None
    error: Failure | None = None
    note: str | None = None
    stamps: dict[str, float] = field(default_factory=dict)
    query_vector: str | None = None
    # The model that made `query_vector`; None on a record written before models were named.
    query_model: str | None = None
    passages: tuple[Passage, ...] = ()
    # Where the finished job is POSTed (`rag.webhooks`); None when nobody asked.
    callback_url: str | None = None
    # Embedded in another job's batch, whose task then sent this one on to retrieve: the
    # job's own embed task has nothing left to do (`tasks.embed`).
    handed_on: bool = False
    # Its deliveries so far and their state; None without a callback_url.
    webhook: WebhookStatus | None = None

    @property
    def finished(self) -> bool:
        return self.status.finished

    def timings_ms(self) -> dict[str, float]:
        """Milliseconds spent waiting and in each stage, from the stamps the tasks left."""
        out: dict[str, float] = {}
        previous = self.created_at
        for stage in (Stage.EMBED, Stage.RETRIEVE, Stage.GENERATE):
            started = self.stamps.get(f"{stage}_started_at")
            finished = self.stamps.get(f"{stage}_finished_at")
            if started is None:
                continue
            out[f"{stage}_wait"] = round((started - previous) * 1000, 2)
            if finished is not None:
                out[str(stage)] = round((finished - started) * 1000, 2)
                previous = finished
        done = self.stamps.get("finished_at")
        if done is not None:
            out["total"] = round((done - self.created_at) * 1000, 2)
        return out


def decode_job(raw: dict[str, str]) -> JobRecord:
    """A record from its hash as HGETALL returns it (decoded responses)."""
    stamps = {k: float(v) for k, v in raw.items() if k.endswith("_at") and k != "created_at"}
    return JobRecord(
        id=raw["id"],
        tenant=raw["tenant"],
        question=raw["question"],
        top_k=int(raw["top_k"]),
        status=JobStatus(raw["status"]),
        stage=Stage(raw["stage"]),
        corpus_version=int(raw.get("corpus_version", "0")),
        answer_cache_key=raw.get("answer_cache_key", ""),
        created_at=float(raw["created_at"]),
        request_id=raw.get("request_id") or None,
        traceparent=raw.get("traceparent") or None,
        cache_mode=CacheMode(raw.get("cache_mode") or CacheMode.USE.value),
        answer=_answer_of(raw),
        cached=raw.get("cached") or None,
        semantic=(
            SemanticSource(raw["semantic_question"], float(raw["semantic_similarity"]))
            if raw.get("semantic_question")
            else None
        ),
        error=Failure.from_json(json.loads(raw["error"])) if raw.get("error") else None,
        note=raw.get("note") or None,
        stamps=stamps,
        query_vector=raw.get("query_vector"),
        query_model=raw.get("query_model") or None,
        passages=tuple(Passage.from_json(p) for p in json.loads(raw.get("passages", "[]"))),
        callback_url=raw.get("callback_url") or None,
        handed_on=raw.get("handed_on") == "1",
        webhook=WebhookStatus.of_fields(raw),
    )


def _answer_of(raw: dict[str, str]) -> Answer | None:
    if "cached_answer" in raw:
        # An exact-cache hit keeps the answer as the cache holds it; it cost nothing now.
        cached = Answer.from_json(json.loads(raw["cached_answer"]))
        return replace(cached, usage=Usage())
    if "answer" not in raw:
        return None
    return Answer(
        text=raw["answer"],
        sources=tuple(Passage.from_json(s) for s in json.loads(raw.get("sources", "[]"))),
        model=raw.get("model", ""),
        usage=Usage.from_json(json.loads(raw.get("usage", "{}"))),
        no_context=raw.get("no_context") == "1",
        degraded=raw.get("degraded") == "1",
        usable=raw.get("usable", "1") == "1",
        quality=Quality.from_json(json.loads(raw["quality"])) if raw.get("quality") else None,
    )


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One entry of a job's event stream: `id` is the stream's (what SSE's Last-Event-ID
    names), `kind` is stage, note, text, restart or done, `data` its JSON object."""

    id: str
    kind: str
    data: dict[str, Any]

    @classmethod
    def of_entry(cls, entry_id: str, fields: dict[str, str]) -> JobEvent:
        [(kind, raw)] = fields.items()
        data = json.loads(raw)
        return cls(entry_id, kind, data if isinstance(data, dict) else {})


def read_events(entries: Sequence[tuple[str, dict[str, str]]]) -> list[JobEvent]:
    """Events from XRANGE's reply (decoded responses)."""
    return [JobEvent.of_entry(entry_id, fields) for entry_id, fields in entries]


@dataclass(frozen=True, slots=True)
class JobFinished:
    """A job has just finished, reported once (the record's write that finished it).

    `outcome` is answered, no_context or failed; `cache` is exact, semantic or miss.
    """

    job_id: str
    tenant: str
    outcome: str
    cache: str
    duration_s: float
    answer: Answer | None = None
    error: Failure | None = None
    # Already in the usage ledger: an exact-cache hit is counted in the write that made it.
    ledgered: bool = False
    # Where the job is to be POSTed; the write that finished it put it in the outbox.
    callback_url: str | None = None


FinishHook = Callable[[JobFinished], None]


class JobStore:
    """Reads and writes job records; every write keeps the record's time to live.

    `on_finish` hears of every job as it finishes, once, whichever process finishes it
    (metrics and the usage ledger listen); it must not raise.
    """

    def __init__(self, redis: Redis, *, ttl_s: int, on_finish: FinishHook | None = None) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._on_finish = on_finish
        self._advance = redis.register_script(_ADVANCE)
        self._add_text = redis.register_script(_ADD_TEXT)
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)

    def create(
        self,
        *,
        job_id: str,
        tenant: str,
        question: str,
        top_k: int,
        corpus_version: int,
        answer_cache_key: str,
        request_id: str | None = None,
        traceparent: str | None = None,
        cache_mode: CacheMode = CacheMode.USE,
        callback_url: str | None = None,
    ) -> JobRecord:
        record = JobRecord(
            id=job_id,
            tenant=tenant,
            question=question,
            top_k=top_k,
            status=JobStatus.QUEUED,
            stage=Stage.QUEUED,
            corpus_version=corpus_version,
            answer_cache_key=answer_cache_key,
            created_at=time.time(),
            request_id=request_id,
            traceparent=traceparent,
            cache_mode=cache_mode,
            callback_url=callback_url,
        )
        self._write(
            record,
            {
                "corpus_version": corpus_version,
                "answer_cache_key": answer_cache_key,
                **({"traceparent": traceparent} if traceparent else {}),
                **({"cache_mode": cache_mode.value} if cache_mode is not CacheMode.USE else {}),
                **({"callback_url": callback_url} if callback_url else {}),
            },
        )
        return record

    def create_finished(
        self,
        *,
        job_id: str,
        tenant: str,
        question: str,
        top_k: int,
        answer: Answer,
        request_id: str | None = None,
    ) -> JobRecord:
        """A job answered from the exact cache: born finished, so its id can be polled too.

        `rag.records.exact_hits` writes the same record inside the cache lookup itself.
        """
        record, fields = self.born_finished(
            job_id=job_id, tenant=tenant, question=question, top_k=top_k, request_id=request_id
        )
        # The cached answer cost nothing this time; the original job paid for it.
        record = replace(record, answer=replace(answer, usage=Usage()))
        assert record.answer is not None
        self._write(record, {**fields, **_answer_fields(record.answer)})
        self.finished_from_cache(record)
        return record

    def born_finished(
        self, *, job_id: str, tenant: str, question: str, top_k: int, request_id: str | None
    ) -> tuple[JobRecord, dict[str, str | int | float]]:
        """An exact-cache hit's record, less its answer, and the hash fields that store it."""
        now = time.time()
        record = JobRecord(
            id=job_id,
            tenant=tenant,
            question=question,
            top_k=top_k,
            status=JobStatus.SUCCEEDED,
            stage=Stage.DONE,
            corpus_version=0,
            answer_cache_key="",
            created_at=now,
            request_id=request_id,
            cached="exact",
            stamps={"finished_at": now},
        )
        return record, {**_record_fields(record), "finished_at": now, "cached": "exact"}

    def finished_from_cache(self, record: JobRecord, *, ledgered: bool = False) -> None:
        """Tell the finish hook of an exact-cache hit, `ledgered` if already counted."""
        assert record.answer is not None
        self._finished(
            JobFinished(
                record.id,
                record.tenant,
                _outcome_of(record.answer),
                "exact",
                0.0,
                record.answer,
                ledgered=ledgered,
                callback_url=record.callback_url,
            )
        )

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    def _write(self, record: JobRecord, fields: dict[str, str | int | float]) -> None:
        """A new record; the id is new, so there is nothing to read back."""
        key = job_key(record.id)
        mapping: dict[Any, str | int | float] = {**_record_fields(record), **fields}
        with self._redis.pipeline() as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, self._ttl_s)
            if not record.finished:
                pipe.zadd(active_jobs_key(), {record.id: record.created_at})
                events = job_events_key(record.id)
                pipe.xadd(events, {"stage": _stage_event(record.stage, record.status)})
                pipe.expire(events, self._ttl_s)
            pipe.execute()

    def get(self, job_id: str) -> JobRecord | None:
        raw: dict[str, str] = self._redis.hgetall(job_key(job_id))  # type: ignore[assignment]
        return decode_job(raw) if raw else None

    def start_stage(self, job_id: str, stage: Stage) -> bool:
        """Mark `stage` running; False when the job is finished, gone, or already past it."""
        return self._move(
            job_id,
            stage,
            {
                "status": JobStatus.RUNNING.value,
                "stage": stage.value,
                f"{stage}_started_at": time.time(),
            },
            event=("stage", _stage_event(stage, JobStatus.RUNNING)),
        )

    def finish_stage(
        self, job_id: str, stage: Stage, *, passages: Sequence[Passage] | None = None
    ) -> bool:
        """Close `stage`; retrieve hands its passages to generate here."""
        fields: dict[str, str | int | float] = {f"{stage}_finished_at": time.time()}
        if passages is not None:
            fields["passages"] = json.dumps([passage.to_json() for passage in passages])
        return self._move(job_id, stage, fields)

    def embedded_elsewhere(
        self, job_ids: Sequence[str], *, started_at: float | None = None
    ) -> list[str]:
        """Record each job's embed stage as done, from `started_at` (when their batch was
        taken) to now, by a task that embedded them together; the ids it moved (not those
        finished, gone or already further on)."""
        now = time.time()
        begun = now if started_at is None else started_at
        start = {"status": JobStatus.RUNNING.value, "stage": Stage.EMBED.value}
        event = ("stage", _stage_event(Stage.EMBED, JobStatus.RUNNING))
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                self._advance_raw(
                    job_id,
                    Stage.EMBED,
                    {**start, "embed_started_at": begun, "embed_finished_at": now},
                    event=event,
                    client=pipe,
                )
            moved = pipe.execute()
        return [job_id for job_id, done in zip(job_ids, moved, strict=True) if done]

    def handed_on(self, job_ids: Sequence[str]) -> None:
        """Say that these jobs were sent on to retrieve by the task that embedded them."""
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hset(job_key(job_id), "handed_on", "1")
            pipe.execute()

    def count_delivery(self, message: str) -> int:
        """How many times this message has been delivered to a worker (kept a day)."""
        key = delivery_count_key(message)
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 86_400)
            runs: int = pipe.execute()[0]
        return runs

    def count_llm_failure(self, job_id: str) -> int:
        """One more transient model failure for this job; how many it has had."""
        key = job_key(job_id)
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(key, "llm_failures", 1)
            pipe.expire(key, self._ttl_s)
            failures: int = pipe.execute()[0]
        return failures

    def claim_llm_call(self, job_id: str, *, ttl_s: float) -> str | None:
        """A token if no other delivery of this job is calling the model now, else None.

        A stage that runs twice (a redelivery while the first still runs) must never make
        two model calls at once for one job: the second waits for the first.
        """
        token = uuid.uuid4().hex
        claimed = self._redis.set(
            job_key(job_id) + ":llm", token, nx=True, px=max(1, int(ttl_s * 1000))
        )
        return token if claimed else None

    def renew_llm_call(self, job_id: str, token: str, *, ttl_s: float) -> bool:
        """Extend a claim that `token` still holds; False if it was lost."""
        return bool(
            self._renew(keys=[job_key(job_id) + ":llm"], args=[token, max(1, int(ttl_s * 1000))])
        )

    def release_llm_call(self, job_id: str, token: str) -> None:
        self._release(keys=[job_key(job_id) + ":llm"], args=[token])

    def note(self, job_id: str, stage: Stage, note: str) -> bool:
        """Say why a job waits (a retry, an outage) without moving it."""
        return self._move(job_id, stage, {"note": note}, event=("note", json.dumps({"note": note})))

    def succeed(
        self,
        job_id: str,
        answer: Answer,
        *,
        last_stage: Stage,
        semantic: SemanticSource | None = None,
    ) -> bool:
        """Finish the job with `answer`, closing `last_stage` in the same write.

        With `semantic`, the answer is an earlier question's, from the semantic cache: it
        cost nothing this time, and the job says whose it was.
        """
        now = time.time()
        cache = "miss"
        cached: dict[str, str | int | float] = {}
        if semantic is not None:
            answer = replace(answer, usage=Usage())
            cache = "semantic"
            cached = {
                "cached": cache,
                "semantic_question": semantic.question,
                "semantic_similarity": semantic.similarity,
            }
        fields: dict[str, str | int | float] = {
            **cached,
            f"{last_stage}_finished_at": now,
            "note": "",
            **_answer_fields(answer),
        }
        return self._finish(
            job_id, JobStatus.SUCCEEDED, fields, now, _outcome_of(answer), cache, answer=answer
        )

    def fail(self, job_id: str, failure: Failure) -> bool:
        fields: dict[str, str | int | float] = {"error": json.dumps(failure.to_json())}
        return self._finish(
            job_id, JobStatus.FAILED, fields, time.time(), "failed", "miss", error=failure
        )

    def cancel(self, job_id: str) -> bool:
        """Stop the job for its client; False when it had already finished (or is gone).

        No stage starts after this (each checks, in `start_stage`), no answer is written
        (`succeed` refuses a finished job), and a model call under way is abandoned by the
        generate stage, which sees the job finished when it next adds text.
        """
        return self._finish(
            job_id, JobStatus.CANCELLED, {"note": ""}, time.time(), "cancelled", "miss"
        )

    def _finish(
        self,
        job_id: str,
        status: JobStatus,
        fields: dict[str, str | int | float],
        now: float,
        outcome: str,
        cache: str,
        *,
        answer: Answer | None = None,
        error: Failure | None = None,
    ) -> bool:
        """Move the job to `status` at `now` with `fields`, its end announced on its stream;
        the finish hook hears of it when this write is the one that finished it."""
        ending = {"status": status.value, "stage": Stage.DONE.value, "finished_at": now}
        moved = self._advance_raw(job_id, Stage.DONE, {**fields, **ending}, event=_done(status))
        if isinstance(moved, list):
            tenant, created_at, callback = moved
            self._finished(
                JobFinished(
                    job_id,
                    str(tenant),
                    outcome,
                    cache,
                    now - float(created_at),
                    answer,
                    error,
                    callback_url=callback or None,
                )
            )
        return bool(moved)

    def add_text(self, job_id: str, text: str, *, first: bool = False) -> bool:
        """Add answer text the model has written (and the leak filter cleared) to the job's
        stream; False when the job has finished meanwhile: the caller stops writing.

        `first`: the first piece of a model call. If the job streamed text before (an
        earlier call broke off), a `restart` event goes first, telling readers to drop it.
        """
        return bool(
            self._add_text(
                keys=[job_key(job_id), job_events_key(job_id)],
                args=[json.dumps({"text": text}), self._ttl_s, "1" if first else "0"],
            )
        )

    def is_running(self, job_id: str) -> bool:
        """Whether the job is still to be answered (one HGET)."""
        status = self._redis.hget(job_key(job_id), "status")
        return status is not None and JobStatus(str(status)) not in FINISHED

    def events(self, job_id: str, *, after: str = "-", count: int = 1000) -> list[JobEvent]:
        """The job's events after the stream id `after` ("-": from the first)."""
        start = "-" if after == "-" else f"({after}"
        entries: Any = self._redis.xrange(job_events_key(job_id), start, "+", count=count)
        return read_events(entries)

    def _finished(self, event: JobFinished) -> None:
        if self._on_finish is None:
            return
        try:
            self._on_finish(event)
        except Exception:  # a listener must never undo or fail the job's own write
            log.exception("job finish hook failed for %s", event.job_id)

    def _move(
        self,
        job_id: str,
        stage: Stage,
        fields: dict[str, str | int | float],
        *,
        event: tuple[str, str] | None = None,
    ) -> bool:
        return bool(self._advance_raw(job_id, stage, fields, event=event))

    def _advance_raw(
        self,
        job_id: str,
        stage: Stage,
        fields: dict[str, str | int | float],
        *,
        event: tuple[str, str] | None = None,
        client: Any = None,
    ) -> Any:
        """0 when refused, 1 when moved, [tenant, created_at, callback_url] when the move
        finished it (with `client` a pipeline, what it will say when executed)."""
        kind, data = event or ("", "")
        args: list[str | int | float] = [stage.rank, self._ttl_s, time.time(), job_id, kind, data]
        for name, value in fields.items():
            args.extend((name, value))
        return self._advance(
            keys=[job_key(job_id), active_jobs_key(), job_events_key(job_id), webhook_outbox_key()],
            args=args,
            client=client,
        )

    def stalled(self, *, quiet_since: float, limit: int = 100) -> list[str]:
        """Unfinished jobs whose record has not moved since `quiet_since`, oldest first."""
        found: list[str] = self._redis.zrangebyscore(
            active_jobs_key(), "-inf", quiet_since, start=0, num=limit
        )  # type: ignore[assignment]
        return found

    def unfinished_since(self, since: float) -> int:
        """Unfinished jobs that were created or moved since `since`: the questions in flight
        (one ZCOUNT; a job lost longer ago than that no longer counts)."""
        return int(self._redis.zcount(active_jobs_key(), since, "+inf"))

    def touch(self, job_id: str) -> None:
        """Count now as progress for the stall sweep (it has just been enqueued again)."""
        self._redis.zadd(active_jobs_key(), {job_id: time.time()}, xx=True)

    def forget(self, job_id: str) -> None:
        """Take a job the sweep need not watch (finished, gone, past its deadline) off it."""
        self._redis.zrem(active_jobs_key(), job_id)


def _record_fields(record: JobRecord) -> dict[str, str | int | float]:
    return {
        "id": record.id,
        "tenant": record.tenant,
        "question": record.question,
        "top_k": record.top_k,
        "created_at": record.created_at,
        "status": record.status.value,
        "stage": record.stage.value,
        "stage_rank": record.stage.rank,
        "request_id": record.request_id or "",
    }


def _stage_event(stage: Stage, status: JobStatus) -> str:
    return json.dumps({"stage": stage.value, "status": status.value})


def _done(status: JobStatus) -> tuple[str, str]:
    return "done", json.dumps({"status": status.value})


def _outcome_of(answer: Answer) -> str:
    return "no_context" if answer.no_context else "answered"


def _answer_fields(answer: Answer) -> dict[str, str | int | float]:
    return {
        "answer": answer.text,
        "sources": json.dumps([source.to_json() for source in answer.sources]),
        "no_context": "1" if answer.no_context else "0",
        "degraded": "1" if answer.degraded else "0",
        "usable": "1" if answer.usable else "0",
        "model": answer.model,
        "usage": json.dumps(answer.usage.to_json()),
        "quality": json.dumps(answer.quality.to_json()) if answer.quality else "",
    }
