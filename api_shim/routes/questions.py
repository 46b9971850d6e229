"""`/v1/questions`: submit questions (answered from the exact cache, or enqueued), one or a
batch; wait for them (a long poll, or server-sent events as they move); read and cancel them.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from api_shim.deps import AppDeps, Deps, Tenant
from api_shim.errors import ApiError
from api_shim.notify import LiveJobs
from api_shim.views import job_view
from rag.caches.control import CacheMode
from rag.records.jobs import JobRecord, JobStatus, new_job_id
from rag.telemetry.metrics import count_cache
from rag.telemetry.tracing import current_traceparent, tag_span
from rag.types import Failure
from rag.validation import InvalidInput, validate_question
from rag.webhooks import check_callback_url
from tasks.pipeline import enqueue_questions

__all__ = ["MAX_BATCH", "MAX_WAIT_S", "router"]

router = APIRouter(prefix="/v1/questions")
# The batch endpoint's path has no slash after the collection, so it has no prefix.
batch_router = APIRouter()

MAX_BATCH = 100
MAX_WAIT_S = 30.0
# How often an idle event stream sends a comment, so that proxies keep the connection.
KEEPALIVE_S = 15.0
_EVENT_ID = re.compile(r"\A\d{1,20}-\d{1,20}\Z")


class QuestionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: str = Field(max_length=100_000)
    top_k: int | None = None
    # use: read and write the caches; refresh: answer anew and replace what they hold;
    # bypass: neither read nor write them.
    cache: Literal["use", "refresh", "bypass"] = "use"
    # Where the finished job is POSTed, signed (`rag.webhooks`); its host must be allowed.
    callback_url: str | None = Field(default=None, max_length=2048)


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    questions: list[QuestionIn] = Field(min_length=1, max_length=MAX_BATCH)


@dataclass(frozen=True, slots=True)
class _Checked:
    """A question that passed every check, ready to be answered or enqueued."""

    question: str
    top_k: int
    mode: CacheMode
    callback_url: str | None


def _check(body: QuestionIn, deps: Deps) -> _Checked:
    settings = deps.settings
    top_k = body.top_k if body.top_k is not None else settings.top_k
    if not 1 <= top_k <= settings.max_top_k:
        raise ApiError(422, "invalid_request", f"top_k must be between 1 and {settings.max_top_k}")
    question = validate_question(
        body.question, counter=deps.counter, max_tokens=settings.query_max_tokens
    )
    callback_url = check_callback_url(body.callback_url, settings)
    return _Checked(question, top_k, CacheMode(body.cache), callback_url)


def _check_budget(deps: Deps, tenant: str) -> None:
    """Only a model costs money; cached answers are served over budget too."""
    settings, services = deps.settings, deps.services
    if settings.uses_anthropic and settings.budget_action == "reject":
        spent = services.budgets.exceeded(tenant)
        if spent is not None:
            raise ApiError(
                402,
                "budget_exceeded",
                spent.message,
                headers={"Retry-After": str(spent.retry_after_s)},
                details={"period": spent.period, "resets_at": spent.resets_at_iso},
            )


def _queued(job_id: str) -> dict[str, Any]:
    return {
        "id": job_id,
        "status": JobStatus.QUEUED.value,
        "poll": f"/v1/questions/{job_id}",
        "events": f"/v1/questions/{job_id}/events",
    }


def _accept(
    checked: list[_Checked], tenant: str, deps: Deps, request_id: str | None
) -> list[dict[str, Any]]:
    """Each question answered from the exact cache or recorded and enqueued, all at once:
    the batch's questions wait for their vectors together, so one embed task takes them."""
    settings, services = deps.settings, deps.services
    answered: dict[int, dict[str, Any]] = {}
    misses: list[tuple[int, str, _Checked, Any]] = []
    for index, item in enumerate(checked):
        job_id = new_job_id()
        if len(checked) == 1:
            # The request's span is the job's: its publishes carry the job's ids.
            tag_span(job_id=job_id, tenant=tenant, request_id=request_id)
        # One round trip: the key, and on a hit the finished job, recorded and counted.
        cache = services.exact_hits.serve(
            settings,
            job_id=job_id,
            tenant=tenant,
            question=item.question,
            top_k=item.top_k,
            request_id=request_id,
            reads=item.mode.reads,
            callback_url=item.callback_url,
        )
        if item.mode.reads:
            count_cache("exact", hits=int(cache.job is not None), misses=int(cache.job is None))
        if cache.job is not None:
            answered[index] = job_view(cache.job)
        else:
            misses.append((index, job_id, item, cache))
    if misses:
        _check_budget(deps, tenant)
    traceparent = current_traceparent()
    for _, job_id, item, cache in misses:
        services.jobs.create(
            job_id=job_id,
            tenant=tenant,
            question=item.question,
            top_k=item.top_k,
            corpus_version=cache.corpus_version,
            answer_cache_key=cache.key,
            request_id=request_id,
            traceparent=traceparent,
            cache_mode=item.mode,
            callback_url=item.callback_url,
        )
    ids = [job_id for _, job_id, _, _ in misses]
    try:
        enqueue_questions(ids, pending=services.pending)
    except Exception as exc:
        # Nothing of the request is left half done: every job of it is failed, and says why.
        for job_id in ids:
            services.jobs.fail(job_id, Failure("broker_unavailable", str(exc)))
        raise ApiError(
            503, "broker_unavailable", "the task broker is not reachable; try again"
        ) from exc
    for index, job_id, _, _ in misses:
        answered[index] = _queued(job_id)
    return [answered[index] for index in range(len(checked))]


@router.post("", status_code=202)
async def submit_question(
    body: QuestionIn, tenant: Tenant, deps: AppDeps, request: Request
) -> JSONResponse:
    """Answered from the exact cache (200) or enqueued (202). With `Prefer: wait=S` (RFC
    7240, at most 30 s) the request is held until the job finishes, as a long poll is: the
    finished job comes back with 200, or the queued one with 202 when S runs out."""
    wait_s = _preferred_wait(request)

    def handle() -> JSONResponse:
        request_id = request.headers.get("x-request-id")
        [job] = _accept([_check(body, deps)], tenant, deps, request_id)
        if job["status"] != JobStatus.QUEUED.value:
            return JSONResponse(job, status_code=200)
        return JSONResponse(job, status_code=202, headers={"Location": job["poll"]})

    # The submit itself talks to Redis and the broker with blocking clients: in a thread.
    response = await run_in_threadpool(
        deps.idempotency.respond, request, tenant, body.model_dump(mode="json"), handle
    )
    if wait_s is None or response.status_code != 202:
        return response
    job_id = json.loads(bytes(response.body))["id"]
    job = await deps.live.wait_finished(job_id, timeout_s=wait_s)
    applied = f"wait={wait_s:g}"
    if job is None or not job.finished:
        response.headers["Preference-Applied"] = applied
        return response
    return JSONResponse(job_view(job), status_code=200, headers={"Preference-Applied": applied})


_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def _preferred_wait(request: Request) -> float | None:
    """Seconds of `Prefer: wait=S`, capped at MAX_WAIT_S; None without one."""
    found = _PREFER_WAIT.search(request.headers.get("prefer", ""))
    return min(float(found.group(1)), MAX_WAIT_S) if found else None


@batch_router.post("/v1/questions:batch", status_code=202)
def submit_batch(body: BatchIn, tenant: Tenant, deps: AppDeps, request: Request) -> JSONResponse:
    def handle() -> JSONResponse:
        checked: list[_Checked] = []
        for index, item in enumerate(body.questions):
            try:
                checked.append(_check(item, deps))
            # The whole batch is refused, and nothing of it recorded or enqueued.
            except InvalidInput as exc:
                message = f"questions[{index}]: {exc.message}"
                raise InvalidInput(exc.code, message, status=exc.status) from exc
            except ApiError as exc:
                raise ApiError(exc.status, exc.code, f"questions[{index}]: {exc.message}") from exc
        jobs = _accept(checked, tenant, deps, request.headers.get("x-request-id"))
        return JSONResponse({"jobs": jobs}, status_code=202)

    return deps.idempotency.respond(request, tenant, body.model_dump(mode="json"), handle)


def _job_id_or_none(job_id: str) -> str | None:
    return job_id if job_id.isalnum() and len(job_id) <= 64 else None


async def _own_job(live: LiveJobs, job_id: str, tenant: str) -> JobRecord:
    job = await live.get(job_id) if _job_id_or_none(job_id) else None
    if job is None or job.tenant != tenant:
        # Another tenant's job is as absent as a job that never was.
        raise ApiError(404, "not_found", f"no question {job_id}")
    return job


async def _past_deadline(job: JobRecord, deps: Deps) -> JobRecord:
    """A job its workers never finished is failed by the first read after its deadline."""
    deadline_s = deps.settings.job_deadline_s
    if job.finished or time.time() - job.created_at <= deadline_s:
        return job
    jobs = deps.services.jobs
    failure = Failure(
        "deadline_exceeded", f"not answered within {deadline_s} s; are the workers up?"
    )
    await asyncio.to_thread(jobs.fail, job.id, failure)
    return await deps.live.get(job.id) or job


@router.get("")
async def read_questions(
    tenant: Tenant, deps: AppDeps, ids: Annotated[str, Query(max_length=6600)]
) -> dict[str, Any]:
    """Many jobs in one request: `?ids=a,b,c` (at most 100)."""
    wanted = list(dict.fromkeys(i.strip() for i in ids.split(",") if i.strip()))
    if not 1 <= len(wanted) <= MAX_BATCH:
        raise ApiError(422, "invalid_request", f"ids must name 1 to {MAX_BATCH} questions")
    valid = [job_id for job_id in wanted if _job_id_or_none(job_id)]
    records = dict(zip(valid, await deps.live.get_many(valid), strict=True))
    found: list[dict[str, Any]] = []
    missing: list[str] = []
    for job_id in wanted:
        job = records.get(job_id)
        if job is None or job.tenant != tenant:
            missing.append(job_id)
        else:
            found.append(job_view(await _past_deadline(job, deps)))
    return {"jobs": found, "missing": missing}


@router.get("/{job_id}")
async def poll_question(
    job_id: str,
    tenant: Tenant,
    deps: AppDeps,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0,
) -> dict[str, Any]:
    """The job; with `wait`, held until it finishes or `wait` seconds pass (a long poll)."""
    job = await _own_job(deps.live, job_id, tenant)
    if wait > 0 and not job.finished:
        job = await deps.live.wait_finished(job_id, timeout_s=wait) or job
    return job_view(await _past_deadline(job, deps))


@router.get("/{job_id}/events")
async def question_events(
    job_id: str, tenant: Tenant, deps: AppDeps, request: Request
) -> StreamingResponse:
    """Server-sent events: each stage as it starts, notes, the answer's text as the model
    writes it, then the finished job. `Last-Event-ID` resumes after that event."""
    await _own_job(deps.live, job_id, tenant)
    after = request.headers.get("last-event-id") or None
    if after is not None and not _EVENT_ID.fullmatch(after):
        raise ApiError(422, "invalid_request", "Last-Event-ID is not an event id of this stream")
    return StreamingResponse(
        _event_stream(deps, job_id, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(kind: str, data: dict[str, Any], event_id: str | None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _event_stream(deps: Deps, job_id: str, after: str | None) -> AsyncIterator[str]:
    live = deps.live
    async with live.watcher.watch(job_id) as watch:
        while True:
            events = await live.events(job_id, after=after)
            for event in events:
                after = event.id
                if event.kind == "done":
                    job = await live.get(job_id)
                    if job is not None:
                        yield _sse("job", job_view(job), event.id)
                    return
                yield _sse(event.kind, event.data, event.id)
            if not events:
                # A job born finished (an exact hit) has no stream; nor has one that expired.
                job = await live.get(job_id)
                if job is None:
                    return
                job = await _past_deadline(job, deps)
                if job.finished:
                    yield _sse("job", job_view(job), after)
                    return
            if not await watch.wait(KEEPALIVE_S):
                yield ": ping\n\n"


@router.delete("/{job_id}")
def cancel_question(job_id: str, tenant: Tenant, deps: AppDeps) -> dict[str, Any]:
    """Cancel a job: no stage starts after this, and a model call under way is abandoned."""
    jobs = deps.services.jobs
    job = jobs.get(job_id) if _job_id_or_none(job_id) else None
    if job is None or job.tenant != tenant:
        raise ApiError(404, "not_found", f"no question {job_id}")
    if not job.finished:
        jobs.cancel(job_id)
        job = jobs.get(job_id) or job
    if job.status is not JobStatus.CANCELLED:
        raise ApiError(409, "already_finished", f"question {job_id} has already {job.status.value}")
    return job_view(job)
