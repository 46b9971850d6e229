"""`/v1/questions`: submit a question (answered from the exact cache, or enqueued) and poll it."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api_shim.deps import AppDeps, Tenant
from api_shim.errors import ApiError
from api_shim.views import job_view
from rag.caches.control import CacheMode
from rag.records.jobs import new_job_id
from rag.telemetry.metrics import count_cache
from rag.telemetry.tracing import current_traceparent, tag_span
from rag.types import Failure
from rag.validation import validate_question
from tasks.pipeline import enqueue_question

__all__ = ["router"]

router = APIRouter(prefix="/v1/questions")


class QuestionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: str = Field(max_length=100_000)
    top_k: int | None = None
    # use: read and write the caches; refresh: answer anew and replace what they hold;
    # bypass: neither read nor write them.
    cache: Literal["use", "refresh", "bypass"] = "use"


@router.post("", status_code=202)
def submit_question(
    body: QuestionIn, tenant: Tenant, deps: AppDeps, request: Request
) -> JSONResponse:
    settings, services = deps.settings, deps.services
    top_k = body.top_k if body.top_k is not None else settings.top_k
    if not 1 <= top_k <= settings.max_top_k:
        raise ApiError(422, "invalid_request", f"top_k must be between 1 and {settings.max_top_k}")
    question = validate_question(
        body.question, counter=deps.counter, max_tokens=settings.query_max_tokens
    )
    request_id = request.headers.get("x-request-id")
    job_id = new_job_id()
    tag_span(job_id=job_id, tenant=tenant, request_id=request_id)
    mode = CacheMode(body.cache)
    # One round trip: the key, and on a hit the finished job, recorded and counted.
    cache = services.exact_hits.serve(
        settings,
        job_id=job_id,
        tenant=tenant,
        question=question,
        top_k=top_k,
        request_id=request_id,
        reads=mode.reads,
    )
    if mode.reads:
        count_cache("exact", hits=int(cache.job is not None), misses=int(cache.job is None))
    if cache.job is not None:
        return JSONResponse(job_view(cache.job), status_code=200)
    # Only a model costs money; cached answers (above) are served over budget too.
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
    services.jobs.create(
        job_id=job_id,
        tenant=tenant,
        question=question,
        top_k=top_k,
        corpus_version=cache.corpus_version,
        answer_cache_key=cache.key,
        request_id=request_id,
        traceparent=current_traceparent(),
        cache_mode=mode,
    )
    try:
        enqueue_question(
            job_id,
            tenant=tenant,
            request_id=request_id,
            deadline_s=settings.job_deadline_s,
            pending=services.pending,
        )
    except Exception as exc:
        services.jobs.fail(job_id, Failure("broker_unavailable", str(exc)))
        raise ApiError(
            503, "broker_unavailable", "the task broker is not reachable; try again"
        ) from exc
    return JSONResponse(
        {"id": job_id, "status": "queued", "poll": f"/v1/questions/{job_id}"},
        status_code=202,
        headers={"Location": f"/v1/questions/{job_id}"},
    )


@router.get("/{job_id}")
def poll_question(job_id: str, tenant: Tenant, deps: AppDeps) -> dict[str, Any]:
    jobs, deadline_s = deps.services.jobs, deps.settings.job_deadline_s
    job = jobs.get(job_id) if job_id.isalnum() and len(job_id) <= 64 else None
    if job is None or job.tenant != tenant:
        # Another tenant's job is as absent as a job that never was.
        raise ApiError(404, "not_found", f"no question {job_id}")
    if not job.finished and time.time() - job.created_at > deadline_s:
        jobs.fail(
            job_id,
            Failure(
                "deadline_exceeded",
                f"not answered within {deadline_s} s; are the workers up?",
            ),
        )
        job = jobs.get(job_id) or job
    return job_view(job)
