"""Worker start and stop: warm per-process resources, publish heartbeats, close the store."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from rag.keys import pool_heartbeat_key, vector_store_health_key
from workers import resources
from workers.pools import POOLS, PoolSpec

__all__ = ["HEARTBEAT_INTERVAL_S", "HEARTBEAT_STALE_S", "current_pool"]

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_STALE_S = 20.0
_stop = threading.Event()


def current_pool() -> PoolSpec | None:
    name = resources.settings().worker_pool
    return POOLS.get(name) if name else None


def _warm(spec: PoolSpec) -> None:
    started = time.perf_counter()
    if spec.loads_model:
        resources.embedder()
        resources.token_counter()
    if spec.owns_vector_store:
        resources.vector_store()
    if spec.name == "generate":
        resources.writer()
    log.info("%s pool warm in %.1f s", spec.name, time.perf_counter() - started)


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
    _stop.clear()
    threading.Thread(
        target=_heartbeat, args=(spec, hostname), name="scribes-heartbeat", daemon=True
    ).start()


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    _stop.set()
    resources.close_vector_store()


def _heartbeat(spec: PoolSpec, hostname: str) -> None:
    """Say this pool is alive (and, for the store's owner, that the store answers)."""
    redis = resources.redis_client()
    key = pool_heartbeat_key(spec.name)
    while not _stop.is_set():
        try:
            now = time.time()
            with redis.pipeline(transaction=False) as pipe:
                pipe.zadd(key, {hostname: now})
                pipe.zremrangebyscore(key, 0, now - HEARTBEAT_STALE_S * 3)
                pipe.execute()
            if spec.owns_vector_store:
                points = resources.vector_store().count()
                redis.set(vector_store_health_key(), points, ex=int(HEARTBEAT_STALE_S))
        except Exception:  # a missed beat is reported by its absence; keep beating
            log.exception("heartbeat failed")
        _stop.wait(HEARTBEAT_INTERVAL_S)
