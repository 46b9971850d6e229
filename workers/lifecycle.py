"""Worker start and stop: warm per-process resources, publish heartbeats, close the store."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from celery.signals import (
    task_received,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)
from redis import Redis
from redis.exceptions import RedisError

from rag.keys import sweep_lock_key
from rag.records.heartbeats import HEARTBEAT_INTERVAL_S
from rag.services import process_services
from rag.telemetry.metrics import JOBS_REQUEUED
from tasks.base import trace_tasks
from tasks.names import QueueName
from tasks.pipeline import requeue_stalled, requeue_stalled_documents
from tasks.reindex import requeue_stalled_reindex
from tasks.webhook import resend_overdue, send_webhooks_from
from workers.leases import MessageLeases, uses_redis_broker
from workers.metrics import serve_host_metrics
from workers.pools import POOLS, PoolSpec
from workers.probe import clear_heartbeat, touch_heartbeat

__all__ = ["current_pool"]

log = logging.getLogger(__name__)

_stop = threading.Event()
_leases: MessageLeases | None = None
_broker: Redis | None = None


def current_pool() -> PoolSpec | None:
    name = process_services().settings.worker_pool
    return POOLS.get(name) if name else None


def _lower_priority(spec: PoolSpec) -> None:
    """Before any thread of the process that runs the tasks starts (Linux keeps a niceness
    per thread, and new threads inherit their creator's), torch's included."""
    if not spec.nice:
        return
    try:
        log.info("%s pool runs at niceness %d", spec.name, os.nice(spec.nice))
    except OSError as exc:
        log.warning("could not lower the %s pool's CPU priority: %s", spec.name, exc)
    # With autogroup scheduling (Linux's default), niceness only orders the threads of one
    # session: each session gets an equal share of the CPU, whatever its threads' niceness.
    # Every pool started by `scribes` is a session of its own, so lower the session's too;
    # not a session shared with others (a pool started from a shell).
    # Not Linux, or no autogroup scheduling: niceness alone does it.
    if os.getsid(0) in (os.getpid(), os.getppid()):
        with contextlib.suppress(OSError):
            Path("/proc/self/autogroup").write_text(str(spec.nice))


def _warm(spec: PoolSpec) -> None:
    _lower_priority(spec)
    started = time.perf_counter()
    services = process_services()
    # Here, in the process that runs the tasks, after any fork: the span exporter's thread
    # would not survive one.
    trace_tasks(services.settings, component=spec.name)
    # Any pool's task may finish a job (a failure, a no-context answer): each sends webhooks.
    send_webhooks_from(services)
    try:
        # The live generation's model and store; Redis away, the first task loads them.
        live = services.live() if spec.loads_model or spec.owns_vector_store else None
    except RedisError as exc:
        log.warning("%s pool not warmed: Redis is not reachable (%s)", spec.name, exc)
        live = None
    if live is not None and spec.loads_model:
        services.embedder(live)
        services.token_counter(live)
    if live is not None and spec.owns_vector_store:
        services.vector_store(live)
    if spec.writes_answers:
        _ = services.writer
    log.info("%s pool warm in %.1f s", spec.name, time.perf_counter() - started)


@worker_init.connect
def _on_start(**_: Any) -> None:
    # A file left by the previous process in this container must not vouch for this one.
    path = process_services().settings.heartbeat_file
    if path is not None:
        clear_heartbeat(path)
        # At exit rather than on worker_shutdown, which a worker stopped while it cannot
        # reach its broker never sends.
        atexit.register(_stop_beating, path, os.getpid())


def _stop_beating(path: Path, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # not in a forked child that happens to run exit handlers
        _stop.set()
        clear_heartbeat(path)


@worker_process_init.connect
def _on_child_start(**_: Any) -> None:
    spec = current_pool()
    if spec is not None and spec.pool == "prefork":
        _warm(spec)


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    spec = current_pool()
    if spec is None:
        return
    if spec.pool != "prefork":
        _warm(spec)
    hostname = getattr(sender, "hostname", None) or f"{spec.name}@{socket.gethostname()}"
    port = process_services().settings.metrics_port
    if port is not None:
        serve_host_metrics(port)
    _start_leases(getattr(sender, "app", None))
    _stop.clear()
    threading.Thread(
        target=_heartbeat, args=(spec, hostname), name="scribes-heartbeat", daemon=True
    ).start()


@task_received.connect
def _on_received(request: Any = None, **_: Any) -> None:
    if _leases is not None and request is not None:
        _leases.hold(request)


def _start_leases(app: Any) -> None:
    """Renew this worker's messages on a Redis broker (see `workers.leases`)."""
    global _leases
    settings = process_services().settings
    if app is None or not uses_redis_broker(settings.broker_url):
        return
    options = app.conf.broker_transport_options or {}
    key = options.get("global_keyprefix", "") + options.get("unacked_index_key", "unacked_index")
    client = _broker_client(settings.broker_url)
    _leases = MessageLeases(client, index_key=key, interval_s=settings.visibility_timeout_s / 4)
    _leases.start()


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    _stop.set()
    if _leases is not None:
        _leases.stop()
    process_services().close()


def _index_backlog(broker_url: str) -> int:
    """Index messages waiting on a Redis broker (a list per queue); 0 where it cannot tell."""
    if not uses_redis_broker(broker_url):
        return 0
    client = _broker_client(broker_url)
    return int(client.llen(QueueName.INDEX.value))


def _broker_client(broker_url: str) -> Redis:
    global _broker
    if _broker is None:
        _broker = Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
    return _broker


def _heartbeat(spec: PoolSpec, hostname: str) -> None:
    """Say this pool is alive (and, for the store's owner, that the store answers); and,
    in whichever worker holds the sweep's lock this round, enqueue stalled jobs again."""
    services = process_services()
    settings = services.settings
    while not _stop.is_set():
        if settings.heartbeat_file is not None:
            # Before Redis, and whatever it answers: the liveness probe asks whether this
            # process still runs its loop, not whether Redis is up.
            try:
                touch_heartbeat(settings.heartbeat_file)
            except OSError as exc:
                log.warning("cannot touch %s: %s", settings.heartbeat_file, exc)
        try:
            points = services.vector_store().count() if spec.owns_vector_store else None
            services.heartbeats.beat(spec.name, hostname, store_points=points)
            if services.redis.set(
                sweep_lock_key(), hostname, nx=True, ex=int(HEARTBEAT_INTERVAL_S)
            ):
                jobs = requeue_stalled(
                    services.jobs, stall_s=settings.stall_s, deadline_s=settings.job_deadline_s
                )
                documents = requeue_stalled_documents(
                    services.documents,
                    services.staging,
                    stall_s=settings.stall_s,
                    index_backlog=_index_backlog(settings.broker_url),
                )
                JOBS_REQUEUED.labels("question").inc(len(jobs))
                JOBS_REQUEUED.labels("document").inc(len(documents))
                requeue_stalled_reindex(services, stall_s=settings.stall_s)
                JOBS_REQUEUED.labels("webhook").inc(len(resend_overdue(services)))
        except Exception:  # a missed beat is reported by its absence; keep beating
            log.exception("heartbeat failed")
        _stop.wait(HEARTBEAT_INTERVAL_S)
