"""OpenTelemetry traces: one trace per question, from the API through every task to the LLM.

`configure_tracing` installs an SDK tracer provider that batches spans to OTLP/HTTP, once
per process and only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Otherwise nothing is
installed and every span is the API's no-op span. Measured on the 2-core development machine
(busy, so as ratios to a bare `@contextmanager` block in the same run): a no-op
`tracer.start_as_current_span` block costs 4.2-4.7x that block (7-18 µs), `tag_span` and
`current_traceparent` under 0.5x; a recording span with the batch processor about 20x.

The Celery and FastAPI sides (their instrumentation, the message headers) live in their own
layers; this module knows no framework. What it adds to every span:
- the ids of the work (`scribes.job_id` or `scribes.document_id`, `scribes.tenant`,
  `scribes.request_id`): set once on the span that starts a piece of work (`tag_span`) and
  copied onto each span started under it in the same process;
- the trace context as text (`current_traceparent`), kept in the job record so that the
  stall sweep can put a re-enqueued job back in its own trace (`continued_trace`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from rag.settings import Settings

__all__ = [
    "COMPONENT",
    "DOCUMENT_ID",
    "JOB_ID",
    "REQUEST_ID",
    "REVISION",
    "TENANT",
    "configure_tracing",
    "continued_trace",
    "current_traceparent",
    "flush_traces",
    "inject_trace",
    "tag_span",
    "tracer",
]

JOB_ID = "scribes.job_id"
TENANT = "scribes.tenant"
REQUEST_ID = "scribes.request_id"
DOCUMENT_ID = "scribes.document_id"
REVISION = "scribes.document_revision"
# Resource attribute: which Scribes process this is (api, or the pool's name).
COMPONENT = "scribes.component"

_IDS = (JOB_ID, TENANT, REQUEST_ID, DOCUMENT_ID, REVISION)

# A proxy: it stays a no-op until a provider is installed, then uses that one.
tracer = trace.get_tracer("scribes")

_W3C = TraceContextTextMapPropagator()
_lock = threading.Lock()
_installed: TracerProvider | None = None


class _CarryIds(SpanProcessor):
    """Copies the ids on a span's parent, when that parent is in this process, onto the span."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        parent = trace.get_current_span(parent_context)
        # A remote parent (from a message or a request header) has no attributes to give.
        if not isinstance(parent, ReadableSpan) or not parent.attributes:
            return
        attributes = parent.attributes
        span.set_attributes({key: attributes[key] for key in _IDS if key in attributes})


def configure_tracing(settings: Settings, component: str) -> TracerProvider | None:
    """The provider this process exports spans with, installed on the first call; None
    when `settings.otlp_endpoint` is unset, and then nothing is installed at all.

    Call it in the process that makes the spans, after any fork: a BatchSpanProcessor's
    export thread does not survive one (Celery's prefork children call it from
    `worker_process_init`).
    """
    global _installed
    if not settings.otlp_endpoint:
        return None
    with _lock:
        if _installed is None:
            resource = Resource.create(
                {
                    SERVICE_NAME: settings.otel_service_name,
                    COMPONENT: component,
                    "process.pid": os.getpid(),
                }
            )
            provider = TracerProvider(resource=resource)
            provider.add_span_processor(_CarryIds())
            # Batch size, queue and delay: the SDK's defaults, or its OTEL_BSP_* variables.
            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=_traces_url(settings.otlp_endpoint)))
            )
            trace.set_tracer_provider(provider)
            _installed = provider
        return _installed


def flush_traces(timeout_s: float = 2.0) -> None:
    """Export what is still batched, for a process about to exit (a prefork child may skip
    the interpreter's exit hooks)."""
    if _installed is not None:
        _installed.force_flush(int(timeout_s * 1000))


def _traces_url(endpoint: str) -> str:
    """Where spans go for OTEL_EXPORTER_OTLP_ENDPOINT, which names the base of every signal."""
    return endpoint.rstrip("/") + "/v1/traces"


def tag_span(
    *,
    job_id: str | None = None,
    tenant: str | None = None,
    request_id: str | None = None,
    document_id: str | None = None,
    revision: int | None = None,
    span: trace.Span | None = None,
) -> None:
    """Put the ids of the work on `span` (the current one by default); spans started under
    it in this process get them too."""
    span = span or trace.get_current_span()
    if not span.is_recording():
        return
    values = (
        (JOB_ID, job_id),
        (TENANT, tenant),
        (REQUEST_ID, request_id),
        (DOCUMENT_ID, document_id),
        (REVISION, revision),
    )
    span.set_attributes({key: value for key, value in values if value is not None})


def current_traceparent() -> str | None:
    """The current span's W3C `traceparent`, or None when nothing is being traced."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent")


def inject_trace(carrier: MutableMapping[str, str | None]) -> None:
    """Write the current trace context into message headers (nothing when there is none)."""
    propagate.inject(carrier)


@contextmanager
def continued_trace(traceparent: str | None) -> Iterator[None]:
    """Run the block as part of the trace `traceparent` names (a job's, from its record)."""
    if not traceparent:
        yield
        return
    token = context.attach(_W3C.extract({"traceparent": traceparent}))
    try:
        yield
    finally:
        context.detach(token)
