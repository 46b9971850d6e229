"""The HTTP endpoint: it validates, answers from the exact cache or enqueues, reads records.

`create_app` wires the routers (`api_shim.routes`) over one `Services` per process; every
route takes what it needs through `api_shim.deps`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio
from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.trace import Span

from api_shim.auth import TenantResolver
from api_shim.deps import Deps
from api_shim.errors import install_error_handlers
from api_shim.instrumentation import RequestMetrics
from api_shim.limits import BodyLimit
from api_shim.notify import JobWatcher, LiveJobs
from api_shim.routes import admin, cache, documents, health, metrics, questions, usage
from rag.services import Services
from rag.settings import Settings, get_settings
from rag.telemetry.tracing import tag_span
from tasks.base import trace_tasks
from tasks.webhook import send_webhooks_from

__all__ = ["create_app"]

log = logging.getLogger("scribes.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check()
    resolver = TenantResolver(settings)
    if resolver.open_access:
        log.warning(
            "no SCRIBES_API_KEYS set: every request is served as tenant 'default' "
            "(development only; production refuses to start like this)"
        )
    docs = settings.serves_api_docs
    # A client waits on the API, so Redis gets a shorter timeout here than in the workers.
    deps = Deps(Services(settings, redis_timeout_s=5), resolver)
    # Exact-cache hits, cancels and polls past the deadline finish jobs here.
    send_webhooks_from(deps.services)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Long polls and event streams wait on the event loop, on Redis's asyncio client.
        # A blocking pool: a thousand requests waking at once queue for its connections
        # instead of failing.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=5,
            max_connections=64,
            timeout=5,
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        watcher = JobWatcher(client)
        await watcher.start()
        deps.live = LiveJobs(client, watcher)
        try:
            yield
        finally:
            deps.live = None
            await watcher.close()
            await client.aclose()
            await pool.aclose()

    app = FastAPI(
        lifespan=lifespan,
        title="Scribes",
        version="0.1.0",
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.deps = deps
    install_error_handlers(app, redis_url=settings.redis_url)
    if settings.metrics_enabled:
        app.add_middleware(RequestMetrics)
    # Keep this the last middleware added: it then runs first, bounding a body before anything
    # else reads it.
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.document_max_bytes * 2,
        timeout_s=settings.api_body_timeout_s,
        max_concurrent=settings.api_max_concurrent_bodies,
    )
    for module in (questions, documents, cache, health, metrics, usage, admin):
        app.include_router(module.router)
    app.include_router(questions.batch_router)
    if trace_tasks(settings, component="api"):
        # A span per request, continuing an incoming `traceparent`. Probes, scrapes and
        # polls get none: a client polling every 50 ms would start twenty one-span traces a
        # second per question (the bench measured 0.82x throughput with them); their
        # latency is in scribes_api_request_duration_seconds.
        FastAPIInstrumentor.instrument_app(
            app,
            server_request_hook=_tag_request_id,
            excluded_urls="/healthz,/readyz,/metrics,/v1/questions/[^/]+$",
            exclude_spans=["receive", "send"],
        )
    return app


def _tag_request_id(span: Span, scope: dict[str, Any]) -> None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            tag_span(request_id=value.decode("latin-1"), span=span)
