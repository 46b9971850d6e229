"""Leases on the messages a worker holds, so that a short visibility timeout is safe.

With the Redis broker a message a worker has taken waits in kombu's `unacked` hash, indexed
by delivery time in the `unacked_index` sorted set, and any worker hands it back to its
queue once it is older than the visibility timeout. Celery's default is an hour, so a pool
killed mid-task strands its jobs for an hour; a short timeout instead hands back tasks that
are still running. Here every worker process that consumes renews, every few seconds, the
index entries of the messages it holds and has not acknowledged: running, waiting for a
countdown, or prefetched. Those of a worker that died stop being renewed and come back
within `visibility timeout + restore interval` (about 25 s at the defaults).

RabbitMQ needs none of this: it hands a dead consumer's messages back when its connection
drops, so the renewer only runs on a Redis broker. It writes kombu's own keys (checked
against kombu 5.7, pinned in pyproject.toml); the chaos test fails if a kombu upgrade
changes them.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from redis import Redis, RedisError

__all__ = ["MessageLeases", "uses_redis_broker"]

log = logging.getLogger(__name__)

# Longer than any message is held (the longest task limit plus a retry's countdown): past
# this a request that never reported its acknowledgement is forgotten, not renewed for ever.
_MAX_HOLD_S = 3 * 3600


def uses_redis_broker(broker_url: str) -> bool:
    return broker_url.startswith(("redis://", "rediss://", "unix://"))


class MessageLeases:
    """The unacknowledged messages of this worker process, renewed until each is acked."""

    def __init__(self, client: Redis, *, index_key: str, interval_s: float) -> None:
        self._client = client
        self._index_key = index_key
        self._interval_s = interval_s
        self._held: dict[str, tuple[Any, float]] = {}  # delivery tag -> (request, since)
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def hold(self, request: Any) -> None:
        """Track a request the worker has just received (celery's `task_received`)."""
        # The request's own delivery_info has no tag; its kombu message does.
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag:
            with self._lock:
                self._held[str(tag)] = (request, time.monotonic())

    def renew(self) -> int:
        """Push every held message's delivery time to now; returns how many were renewed."""
        oldest = time.monotonic() - _MAX_HOLD_S
        with self._lock:
            for tag, (request, since) in list(self._held.items()):
                if getattr(request, "acknowledged", False) or since < oldest:
                    del self._held[tag]
            tags = list(self._held)
        if not tags:
            return 0
        now = time.time()
        with self._client.pipeline(transaction=False) as pipe:
            for tag in tags:
                # XX: only while kombu still has it; an acknowledged message is gone.
                pipe.zadd(self._index_key, {tag: now}, xx=True, ch=True)
            pipe.execute()
        return len(tags)

    def start(self) -> None:
        self._stop.clear()
        threading.Thread(target=self._run, name="scribes-message-leases", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.renew()
            except RedisError:
                log.warning("could not renew message leases; the broker may hand them back")
