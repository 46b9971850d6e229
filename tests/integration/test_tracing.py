"""Tracing on a real cluster: one trace per question, from the API's span through every task
to the model call, with the right parents, through a retry and through the stall sweep.

The in-memory exporter of a many-process system is an OTLP/HTTP receiver on loopback: every
process exports its spans to it (`OTEL_EXPORTER_OTLP_ENDPOINT`) as it would to a collector,
and it keeps them, decoded, for the test to read.
"""

from __future__ import annotations

import gzip
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from opentelemetry.sdk.trace import TracerProvider

from rag.settings import Settings
from rag.telemetry.tracing import configure_tracing, tracer
from tasks.base import trace_tasks
from tasks.names import TaskName
from tests.cluster import Cluster, running_cluster, running_redis
from tests.fake_anthropic import FakeAnthropic
from tests.integration.test_question_path import MUSTARD, ingest, wait_job

KEY = "key-tracing-0123456789"
LLM_KEY = "sk-test-tracing"
MODEL = "claude-sonnet-4-6"
SERVICE = "scribes-tracing-test"
STALL_S = 10

EMBED = TaskName.EMBED_PENDING.value
# The job's own span in the embed task's batch (tasks.pipeline.send_on_to_retrieve).
EMBEDDED = "embed question"
RETRIEVE = TaskName.RETRIEVE_CONTEXT.value
GENERATE = TaskName.GENERATE_ANSWER.value
API_SPAN = "POST /v1/questions"


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    error: bool


class OtlpReceiver:
    """POST /v1/traces of OTLP/HTTP (protobuf), kept in memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._keep(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _keep(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(_decode(span, resource))
        with self._lock:
            self._spans.extend(received)

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def wait_for(
        self, ready: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 20
    ) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            spans = self.spans()
            if ready(spans):
                return spans
            time.sleep(0.1)
        names = sorted(s.name for s in self.spans())
        raise AssertionError(f"spans never arrived; received: {names}")


def _decode(span: SpanProto, resource: dict[str, Any]) -> ReceivedSpan:
    return ReceivedSpan(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_id=span.parent_span_id.hex() or None,
        name=span.name,
        kind=span.kind,
        attributes=_attributes(span.attributes),
        resource=resource,
        error=span.status.code == Status.STATUS_CODE_ERROR,
    )


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=LLM_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver, llm: FakeAnthropic
) -> Iterator[Cluster]:
    """A cluster of its own, on its own Redis, exporting its spans to `receiver`."""
    root: Path = tmp_path_factory.mktemp("tracing")
    env = {
        "SCRIBES_API_KEYS": f"{KEY}=alice",
        "ANTHROPIC_API_KEY": LLM_KEY,
        "ANTHROPIC_BASE_URL": llm.base_url,
        "SCRIBES_LLM_MODEL": MODEL,
        "SCRIBES_LLM_TIMEOUT_S": "30",
        "SCRIBES_STALL_S": str(STALL_S),
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": SERVICE,
        # Read by the SDK itself: export every 200 ms rather than 5 s.
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    with (
        running_redis(root / "redis") as redis_server,
        running_cluster(root / "data", redis_server.url, env) as cluster,
    ):
        with cluster.client(KEY) as http:
            ingest(http, "mustard", "Mustard seed", MUSTARD)
        yield cluster


def new_traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def ask(cluster: Cluster, question: str, headers: dict[str, str]) -> dict[str, Any]:
    with cluster.client(KEY) as http:
        response = http.post("/v1/questions", json={"question": question}, headers=headers)
        assert response.status_code == 202, response.text
        return wait_job(http, response.json()["id"])


def question(n: str) -> str:
    return f"How many mustard seeds were in Pastor Miriam's jar ({n} {uuid.uuid4().hex[:6]})?"


def of_job(spans: list[ReceivedSpan], job_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.attributes.get("scribes.job_id") == job_id]


def finished_with(job_id: str, *names: str, count: int = 1) -> Callable[[list[ReceivedSpan]], bool]:
    def ready(spans: list[ReceivedSpan]) -> bool:
        seen = [s.name for s in of_job(spans, job_id)]
        return all(seen.count(name) >= count for name in names)

    return ready


def parent_names(spans: list[ReceivedSpan]) -> set[tuple[str, str | None]]:
    """(span, its parent's name) for every span; None for a parent outside `spans`."""
    by_id = {s.span_id: s for s in spans}
    return {(s.name, by_id[s.parent_id].name if s.parent_id in by_id else None) for s in spans}


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[str]:
    by_id = {s.span_id: s for s in spans}
    names = []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        names.append(span.name)
    return names


def test_without_an_endpoint_tracing_installs_nothing() -> None:
    settings = Settings(OTEL_EXPORTER_OTLP_ENDPOINT=None)
    assert configure_tracing(settings, "api") is None
    assert trace_tasks(settings, "api") is False
    # The API's own no-op provider and spans stay: nothing records or exports.
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    with tracer.start_as_current_span("chat x") as span:
        assert not span.is_recording()


def test_a_question_is_one_trace_from_the_api_to_the_model_call(
    traced: Cluster, receiver: OtlpReceiver
) -> None:
    traceparent, trace_id, incoming_span = new_traceparent()
    request_id = f"req-{uuid.uuid4().hex[:8]}"
    job = ask(traced, question("traced"), {"traceparent": traceparent, "X-Request-ID": request_id})
    assert job["status"] == "succeeded", job
    job_id = job["id"]
    # Each process exports on its own schedule: wait for every span of the tree.
    receiver.wait_for(
        finished_with(
            job_id,
            API_SPAN,
            f"apply_async/{EMBED}",
            EMBEDDED,
            *(f"{kind}/{RETRIEVE}" for kind in ("apply_async", "run")),
            "semantic cache lookup",
            "vector search",
            f"apply_async/{GENERATE}",
            f"run/{GENERATE}",
            f"chat {MODEL}",
        )
    )
    receiver.wait_for(lambda received: any(s.name == f"run/{EMBED}" for s in received))
    everything = receiver.spans(trace_id)
    # The embed task's run embeds whatever waits, for many jobs: it is in the trace of the
    # request that scheduled it, with no job of its own.
    [batch] = [s for s in everything if s.name == f"run/{EMBED}"]
    assert "scribes.job_id" not in batch.attributes
    spans = [s for s in everything if s is not batch]

    # Every span of the question is in the incoming trace, and only the question's are.
    assert {s.trace_id for s in of_job(receiver.spans(), job_id)} == {trace_id}
    for span in spans:
        assert span.attributes.get("scribes.job_id") == job_id, span
        assert span.attributes.get("scribes.tenant") == "alice", span
        assert span.attributes.get("scribes.request_id") == request_id, span
        assert span.resource["service.name"] == SERVICE
    # The tree: the API's span under the caller's, then each publish over its run.
    assert parent_names(everything) == {
        (API_SPAN, None),
        (f"apply_async/{EMBED}", API_SPAN),
        (f"run/{EMBED}", f"apply_async/{EMBED}"),
        (EMBEDDED, API_SPAN),
        (f"apply_async/{RETRIEVE}", EMBEDDED),
        (f"run/{RETRIEVE}", f"apply_async/{RETRIEVE}"),
        ("semantic cache lookup", f"run/{RETRIEVE}"),
        ("vector search", f"run/{RETRIEVE}"),
        (f"apply_async/{GENERATE}", f"run/{RETRIEVE}"),
        (f"run/{GENERATE}", f"apply_async/{GENERATE}"),
        (f"chat {MODEL}", f"run/{GENERATE}"),
    }
    assert len(everything) == 11
    by_name = {s.name: s for s in everything}
    assert by_name[API_SPAN].parent_id == incoming_span
    # Each span comes from the process that did the work.
    assert {name: by_name[name].resource["scribes.component"] for name in by_name} == {
        API_SPAN: "api",
        f"apply_async/{EMBED}": "api",
        f"run/{EMBED}": "embed",
        EMBEDDED: "embed",
        f"apply_async/{RETRIEVE}": "embed",
        f"run/{RETRIEVE}": "retrieve",
        "semantic cache lookup": "retrieve",
        "vector search": "retrieve",
        f"apply_async/{GENERATE}": "retrieve",
        f"run/{GENERATE}": "generate",
        f"chat {MODEL}": "generate",
    }

    chat = by_name[f"chat {MODEL}"].attributes
    usage = job["usage"]
    assert chat["gen_ai.operation.name"] == "chat"
    assert chat["gen_ai.provider.name"] == chat["gen_ai.system"] == "anthropic"
    assert chat["gen_ai.request.model"] == MODEL
    assert chat["gen_ai.response.model"] == job["model"]
    assert usage["output_tokens"] > 0
    assert chat["gen_ai.usage.output_tokens"] == usage["output_tokens"]
    # GenAI's input tokens include the cached ones; the job keeps Anthropic's split.
    cached = usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]
    assert chat["gen_ai.usage.input_tokens"] == usage["input_tokens"] + cached
    assert chat["gen_ai.usage.cache_read.input_tokens"] == usage["cache_read_input_tokens"]
    assert not any(s.error for s in spans)

    # The job's own log lines name the request, in every pool that worked on it.
    logs = {
        path.name: [line for line in path.read_text().splitlines() if f"job={job_id}" in line]
        for path in (traced.data_dir / "logs").glob("pool-*.log")
    }
    lines = [line for found in logs.values() for line in found]
    assert lines, logs
    assert all(f"request={request_id}" in line for line in lines), lines
    # (The embed task embeds a batch, of no one job: its lines name none.)
    assert {name for name, found in logs.items() if found} >= {
        "pool-retrieve.log",
        "pool-generate.log",
    }


def test_a_retried_model_call_stays_in_the_question_s_trace(
    traced: Cluster, receiver: OtlpReceiver, llm: FakeAnthropic
) -> None:
    llm.fail_next(529, retry_after=0)
    job = ask(traced, question("retried"), {"X-Request-ID": "req-retried"})
    assert job["status"] == "succeeded", job
    job_id = job["id"]
    receiver.wait_for(finished_with(job_id, f"run/{GENERATE}", f"chat {MODEL}", count=2))
    spans = of_job(receiver.spans(), job_id)
    # No traceparent came in: the API started the trace, and all of it is one.
    assert len({s.trace_id for s in spans}) == 1
    spans = receiver.spans(spans[0].trace_id)

    runs = [s for s in spans if s.name == f"run/{GENERATE}"]
    calls = [s for s in spans if s.name == f"chat {MODEL}"]
    assert len(runs) == 2 and len(calls) == 2
    first, second = sorted(runs, key=lambda s: len(ancestors(s, spans)))
    # The retry is published from inside the first run, and runs under that publish.
    assert ancestors(second, spans)[:2] == [f"apply_async/{GENERATE}", f"run/{GENERATE}"]
    assert ancestors(second, spans)[-1] == API_SPAN
    assert "celery.retry.reason" in first.attributes
    failed, answered = sorted(calls, key=lambda s: len(ancestors(s, spans)))
    assert failed.parent_id == first.span_id and failed.error
    assert failed.attributes["error.type"] == "overloaded_error"
    assert answered.parent_id == second.span_id and not answered.error
    assert answered.attributes["gen_ai.usage.output_tokens"] == job["usage"]["output_tokens"]
    assert all(
        s.attributes.get("scribes.request_id") == "req-retried"
        for s in spans
        if s.name != f"run/{EMBED}"  # a batch's, of no one request
    )


def test_a_job_the_stall_sweep_enqueues_again_stays_in_its_trace(
    traced: Cluster, receiver: OtlpReceiver, llm: FakeAnthropic
) -> None:
    # The model answers only after the stall time: the sweep sees a job that has not moved
    # and enqueues its generate step again, from its record.
    traceparent, trace_id, _ = new_traceparent()
    llm.delay(STALL_S + 8)
    try:
        job = ask(traced, question("swept"), {"traceparent": traceparent})
    finally:
        llm.delay(0)
    assert job["status"] == "succeeded", job
    job_id = job["id"]
    receiver.wait_for(finished_with(job_id, f"run/{GENERATE}", count=2))
    spans = of_job(receiver.spans(), job_id)
    assert {s.trace_id for s in spans} == {trace_id}
    spans = receiver.spans(trace_id)
    runs = [s for s in spans if s.name == f"run/{GENERATE}"]
    assert len(runs) >= 2
    # Every run descends from the API's span: the first through the chain, the others
    # through the traceparent the sweep read from the job's record.
    assert all(ancestors(run, spans)[-1] == API_SPAN for run in runs)
    swept = [s for s in spans if s.name == "requeue stalled job"]
    # Only a sweep run in a traced process has a span of its own (a prefork pool's main
    # process does not trace); its runs then hang off the API's span directly.
    for span in swept:
        assert ancestors(span, spans) == [API_SPAN]
        assert span.attributes["scribes.stage"] == "generate"
    # All of it is the job's, but the embed task's run (a batch's, of no one job).
    assert len(of_job(spans, job_id)) == len([s for s in spans if s.name != f"run/{EMBED}"])
