"""What a worker process adds to the host's metrics: every task run, from the task base.

`tasks.base` reports each run as a `TaskTiming`; this module counts it. Prefork children
write to the host's multiprocess directory like every other process, and a child that
exits takes its live gauges with it. With `SCRIBES_METRICS_PORT` set (`scribes worker POOL
--metrics-port N`), the worker's main process serves the host's metrics on that port, for
a host that runs no API.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.signals import worker_process_shutdown
from prometheus_client import start_http_server

from rag.settings import get_settings
from rag.telemetry.exposition import mark_process_dead, scrape_registry
from rag.telemetry.metrics import TASK_DURATION, TASK_QUEUE_WAIT, TASKS
from rag.telemetry.tracing import flush_traces
from tasks.base import TaskTiming, observe_timings

__all__ = ["count_task", "serve_host_metrics"]

log = logging.getLogger(__name__)

# The task base's outcomes, as the metrics name them: a poisoned message is a failure.
_OUTCOMES = {
    "succeeded": "succeeded",
    "failed": "failed",
    "poisoned": "failed",
    "retried": "retried",
    "skipped": "ignored",
}


def count_task(timing: TaskTiming) -> None:
    TASKS.labels(timing.queue, timing.task, _OUTCOMES.get(timing.outcome, timing.outcome)).inc()
    TASK_DURATION.labels(timing.queue, timing.task).observe(timing.run_s)
    if timing.wait_s is not None:
        TASK_QUEUE_WAIT.labels(timing.queue).observe(timing.wait_s)


if get_settings().metrics_enabled:
    observe_timings(count_task)


def serve_host_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Serve this host's processes' metrics on `port` (the worker's main process only)."""
    start_http_server(port, addr=host, registry=scrape_registry())
    log.info("serving this host's metrics on :%d/metrics", port)


@worker_process_shutdown.connect
def _on_child_exit(**_: Any) -> None:
    mark_process_dead(os.getpid())
    flush_traces()
