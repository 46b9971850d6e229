"""The HTTP endpoint: validate, answer from the exact cache or enqueue, and read job records."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Annotated, Any

import redis
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from api_shim.auth import TenantResolver
from api_shim.errors import ApiError, install_error_handlers
from rag.answer_cache import AnswerCache
from rag.documents import DocumentRecord, DocumentRegistry
from rag.jobs import JobRecord, JobStore, new_job_id
from rag.keys import pool_heartbeat_key, vector_store_health_key
from rag.query_batch import PendingQuestions
from rag.settings import Settings, get_settings
from rag.tokens import load_token_counter
from rag.validation import validate_document, validate_question
from workers.pools import POOLS

__all__ = ["create_app"]

log = logging.getLogger("scribes.api")

_HEARTBEAT_STALE_S = 20.0


class QuestionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: str = Field(max_length=100_000)
    top_k: int | None = None


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str | None = None
    title: str
    text: str
    metadata: dict[str, Any] | None = None


async def current_tenant(request: Request) -> str:
    # async: resolving is a dictionary lookup, not worth a hop to the thread pool
    resolver: TenantResolver = request.app.state.resolve_tenant
    return resolver(request)


Tenant = Annotated[str, Depends(current_tenant)]


def job_view(job: JobRecord) -> dict[str, Any]:
    usage = {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, **job.usage}
    return {
        "id": job.id,
        "status": job.status.value,
        "stage": job.stage.value,
        "question": job.question,
        "answer": job.answer,
        "sources": job.sources,
        "no_context": job.no_context,
        "cached": job.cached,
        "model": job.model,
        "usage": usage,
        "timings": job.timings_ms(),
        "note": job.note,
        "error": job.error,
        "request_id": job.request_id,
    }


def document_view(record: DocumentRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "title": record.title,
        "status": record.status.value,
        "revision": record.revision,
        "chunks": record.chunks,
        "error": record.error,
    }


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check()
    client = redis.Redis.from_url(
        settings.redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=3
    )
    jobs = JobStore(client, ttl_s=settings.job_ttl_s)
    registry = DocumentRegistry(client)
    cache = AnswerCache(client, ttl_s=settings.answer_cache_ttl_s)
    pending = PendingQuestions(client, max_age_s=settings.job_deadline_s)
    counter = load_token_counter(settings.embedding_model)
    resolve_tenant = TenantResolver(settings)
    if resolve_tenant.open_access:
        log.warning(
            "no SCRIBES_API_KEYS set: every request is served as tenant 'default' "
            "(development only; production refuses to start like this)"
        )
    app = FastAPI(title="Scribes", version="0.1.0")
    app.state.resolve_tenant = resolve_tenant
    install_error_handlers(app)

    app.add_middleware(BodyLimit, max_bytes=settings.document_max_bytes * 2)

    async def _redis_down(_: Request, __: Exception) -> JSONResponse:
        return JSONResponse(
            {
                "error": {
                    "code": "redis_unavailable",
                    "message": f"Redis at {_redacted(settings.redis_url)} is not reachable; "
                    "start it or set REDIS_URL",
                }
            },
            status_code=503,
        )

    app.add_exception_handler(redis.ConnectionError, _redis_down)
    app.add_exception_handler(redis.TimeoutError, _redis_down)

    from tasks.pipeline import enqueue_document, enqueue_purge, enqueue_question

    @app.post("/v1/questions", status_code=202)
    def submit_question(body: QuestionIn, tenant: Tenant, request: Request) -> JSONResponse:
        top_k = body.top_k if body.top_k is not None else settings.top_k
        if not 1 <= top_k <= settings.max_top_k:
            raise ApiError(
                422, "invalid_request", f"top_k must be between 1 and {settings.max_top_k}"
            )
        question = validate_question(
            body.question, counter=counter, max_tokens=settings.query_max_tokens
        )
        corpus_version = registry.corpus_version(tenant)
        cache_key = cache.key_for(
            settings, tenant=tenant, question=question, top_k=top_k, corpus_version=corpus_version
        )
        job_id = new_job_id()
        cached = cache.get(cache_key)
        if cached is not None:
            job = jobs.create_finished(
                job_id=job_id,
                tenant=tenant,
                question=question,
                top_k=top_k,
                result=cached,
                request_id=request.headers.get("x-request-id"),
            )
            return JSONResponse(job_view(job), status_code=200)
        jobs.create(
            job_id=job_id,
            tenant=tenant,
            question=question,
            top_k=top_k,
            corpus_version=corpus_version,
            answer_cache_key=cache_key,
            request_id=request.headers.get("x-request-id"),
        )
        try:
            enqueue_question(job_id, deadline_s=settings.job_deadline_s, pending=pending)
        except Exception as exc:
            jobs.fail(job_id, code="broker_unavailable", message=str(exc))
            raise ApiError(
                503, "broker_unavailable", "the task broker is not reachable; try again"
            ) from exc
        return JSONResponse(
            {"id": job_id, "status": "queued", "poll": f"/v1/questions/{job_id}"},
            status_code=202,
            headers={"Location": f"/v1/questions/{job_id}"},
        )

    @app.get("/v1/questions/{job_id}")
    def poll_question(job_id: str, tenant: Tenant) -> dict[str, Any]:
        job = jobs.get(job_id) if job_id.isalnum() and len(job_id) <= 64 else None
        if job is None or job.tenant != tenant:
            # Another tenant's job is as absent as a job that never was.
            raise ApiError(404, "not_found", f"no question {job_id}")
        if not job.finished and time.time() - job.created_at > settings.job_deadline_s:
            jobs.fail(
                job_id,
                code="deadline_exceeded",
                message=f"not answered within {settings.job_deadline_s} s; are the workers up?",
            )
            job = jobs.get(job_id) or job
        return job_view(job)

    @app.post("/v1/documents", status_code=202)
    def submit_document(body: DocumentIn, tenant: Tenant) -> dict[str, Any]:
        document_id = (
            body.id
            or "doc-" + hashlib.sha256(f"{body.title}\x1f{body.text}".encode()).hexdigest()[:20]
        )
        validate_document(
            document_id=document_id,
            title=body.title,
            text=body.text,
            metadata=body.metadata,
            max_bytes=settings.document_max_bytes,
        )
        try:
            record = enqueue_document(
                registry,
                tenant=tenant,
                document_id=document_id,
                title=body.title.strip(),
                text=body.text,
                metadata=body.metadata or {},
            )
        except redis.ConnectionError:
            raise
        except Exception as exc:
            current = registry.get(tenant, document_id)
            if current is not None:
                registry.mark_failed(
                    tenant, document_id, current.revision, error="could not be queued"
                )
            raise ApiError(
                503, "broker_unavailable", "the task broker is not reachable; try again"
            ) from exc
        return {"id": record.id, "status": record.status.value, "revision": record.revision}

    @app.get("/v1/documents")
    def list_documents(tenant: Tenant) -> dict[str, Any]:
        return {"documents": [document_view(r) for r in registry.records(tenant)]}

    @app.get("/v1/documents/{document_id}")
    def get_document(document_id: str, tenant: Tenant) -> dict[str, Any]:
        record = registry.get(tenant, document_id)
        if record is None:
            raise ApiError(404, "not_found", f"no document {document_id}")
        return document_view(record)

    @app.delete("/v1/documents/{document_id}")
    def delete_document(document_id: str, tenant: Tenant) -> dict[str, Any]:
        revision = registry.delete(tenant, document_id)
        if revision is None:
            raise ApiError(404, "not_found", f"no document {document_id}")
        # Already invisible to every search; the purge reclaims the space.
        enqueue_purge(tenant=tenant, document_id=document_id, up_to_revision=revision)
        return {"id": document_id, "status": "deleted"}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        checks: dict[str, bool] = {}
        try:
            checks["redis"] = bool(client.ping())
            since = time.time() - _HEARTBEAT_STALE_S
            for name in POOLS:
                alive = int(client.zcount(pool_heartbeat_key(name), since, "+inf"))
                checks[f"pool:{name}"] = alive > 0
            checks["vector_store"] = client.exists(vector_store_health_key()) == 1
        except redis.RedisError:
            checks["redis"] = False
        if all(checks.values()) and checks:
            return JSONResponse({"status": "ready", "checks": checks})
        missing = ", ".join(name for name, ok in checks.items() if not ok)
        return JSONResponse(
            {"error": {"code": "not_ready", "message": f"not ready: {missing}"}, "checks": checks},
            status_code=503,
        )

    return app


class BodyLimit:
    """Refuse a declared body over the limit before reading it (plain ASGI: no per-request
    task and stream copy, as `@app.middleware("http")` would add)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self._app = app
        self._max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length" and value.isdigit() and int(value) > self._max_bytes:
                    response = JSONResponse(
                        {
                            "error": {
                                "code": "body_too_large",
                                "message": "request body is too large",
                            }
                        },
                        status_code=413,
                    )
                    await response(scope, receive, send)
                    return
        await self._app(scope, receive, send)


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url
