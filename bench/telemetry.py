"""`--only telemetry`: questions/s with metrics and tracing on, against the same with both off.

Two whole systems run side by side, alike but for telemetry: one with the defaults plus
`OTEL_EXPORTER_OTLP_ENDPOINT` (every span exported to a loopback OTLP sink), one with
`SCRIBES_METRICS_ENABLED=false` and no endpoint. Both answer with the Anthropic SDK against
the loopback fake, so the model call's span and counters are on the measured path. The
load alternates between them round by round, so a slow moment of the machine falls on both.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.notes import bench_notes, unique_questions
from bench.report import BenchResult, SummaryRow, print_table
from bench.stats import format_ratio, ratio
from bench.system import progress, running_system
from bench.throughput import closed_loop_load
from tests.fake_anthropic import FakeAnthropic

__all__ = ["run_telemetry"]

# Rounds of a few seconds each move by ±15 % on this machine: many rounds, paired.
ROUNDS = 6
QUESTIONS_PER_ROUND = 120
CLIENTS = 16
POLL_S = 0.05
_LLM_KEY = "sk-bench-telemetry"


class _Sink(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and drops them, counting the bytes."""

    received = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        type(self).received += len(self.rfile.read(length))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        return


@contextmanager
def _otlp_sink() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def run_telemetry(work_dir: Path) -> BenchResult:
    notes = bench_notes(30)
    with ExitStack() as stack:
        fake = stack.enter_context(FakeAnthropic(api_key=_LLM_KEY))
        sink = stack.enter_context(_otlp_sink())
        llm = {"ANTHROPIC_API_KEY": _LLM_KEY, "ANTHROPIC_BASE_URL": fake.base_url}
        on = stack.enter_context(
            running_system(work_dir / "on", notes, {**llm, "OTEL_EXPORTER_OTLP_ENDPOINT": sink})
        )
        off = stack.enter_context(
            running_system(work_dir / "off", notes, {**llm, "SCRIBES_METRICS_ENABLED": "false"})
        )
        rates: dict[str, list[float]] = {"on": [], "off": []}
        for number in range(ROUNDS):
            # Which goes first alternates too: the second of a pair runs on a warmer machine.
            order = (("off", off), ("on", on)) if number % 2 == 0 else (("on", on), ("off", off))
            for name, system in order:
                questions = unique_questions(
                    QUESTIONS_PER_ROUND, seed=10 + number, tag=f"telemetry-{name}-{number}"
                )
                outcome = asyncio.run(
                    closed_loop_load(
                        system.cluster.api_url,
                        questions,
                        concurrency=CLIENTS,
                        poll_s=POLL_S,
                        max_s=60,
                    )
                )
                qps = outcome.succeeded / outcome.elapsed_s
                rates[name].append(qps)
                progress(f"telemetry round {number + 1}: {name}: {qps:.1f} questions/s")
        exported = _Sink.received
    on_qps = sum(rates["on"]) / len(rates["on"])
    off_qps = sum(rates["off"]) / len(rates["off"])
    # Each round's pair ran back to back; the median of their ratios resists a slow round.
    paired = statistics.median(on / off for on, off in zip(rates["on"], rates["off"], strict=True))
    print()
    print("== telemetry: questions/s with metrics and tracing on vs both off ==")
    print(
        f"  {ROUNDS} rounds of {QUESTIONS_PER_ROUND} distinct questions per system, "
        f"{CLIENTS} clients, alternating; the Anthropic SDK against the loopback fake"
    )
    print_table(
        ["system", *(f"round {n + 1}" for n in range(ROUNDS)), "mean q/s"],
        [
            [name, *(f"{r:.2f}" for r in rates[name]), f"{sum(rates[name]) / ROUNDS:.2f}"]
            for name in ("off", "on")
        ],
    )
    print(
        f"  on vs off: {format_ratio(ratio(on_qps, off_qps))} of the means, "
        f"{format_ratio(paired)} the median of the rounds' ratios; "
        f"spans exported: {exported} bytes"
    )
    return BenchResult(
        "telemetry",
        rows=[
            SummaryRow(
                "telemetry",
                f"questions/s, {CLIENTS} clients, metrics + tracing on",
                on_qps,
                off_qps,
                "q/s",
                "both off",
            )
        ],
        details={"rounds": rates, "median_paired_ratio": round(paired, 3), "otlp_bytes": exported},
    )
