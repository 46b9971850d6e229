"""The series read at scrape time, once for the whole system, by whoever serves them.

Queue depths come from the broker, pools from their heartbeats, the breaker's state from
its shared record in Redis: one reading per scrape, however many workers there are. The
API's `/metrics` serves them (and `scribes exporter --cluster`); a worker host's exporter
serves only its own processes, so that no series is reported twice.

Redis broker (kombu 5.7): each queue is a list per priority step (`name`, then
`name\\x06\\x163`, `…6`, `…9`), filled with LPUSH and taken from the right, so a list's
oldest message is at index -1; a message a worker has taken but not acknowledged waits in
the `unacked` hash as `[message, exchange, routing_key]`. RabbitMQ: the ready count from a
passive declare, and ready plus unacknowledged from the management API when it answers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis, RedisError

from rag.breaker import Breaker, BreakerState
from rag.budgets import Budgets
from rag.records.heartbeats import HEARTBEAT_STALE_S, Heartbeats

__all__ = [
    "BREAKER_STATE_VALUE",
    "ClusterCollector",
    "QueueReading",
    "budget_gauges",
    "read_queues",
]

log = logging.getLogger(__name__)

ENQUEUED_AT_HEADER = "scribes_enqueued_at"  # set on every message by tasks.base
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
BREAKER_STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True, slots=True)
class QueueReading:
    queue: str
    ready: int
    unacked: int | None  # None: the broker would not say
    oldest_age_s: float | None  # None: empty, or no message says when it was sent

    @property
    def depth(self) -> int:
        return self.ready + (self.unacked or 0)


def read_queues(broker_url: str, queues: Sequence[str]) -> list[QueueReading]:
    """Every queue's ready and unacknowledged messages now, from a Redis or AMQP broker."""
    if broker_url.startswith(("redis://", "rediss://", "unix://")):
        return _read_redis_queues(_broker_redis(broker_url), queues)
    return _read_amqp_queues(broker_url, queues)


_brokers: dict[str, Redis] = {}


def _broker_redis(url: str) -> Redis:
    client = _brokers.get(url)
    if client is None:
        client = Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
        _brokers[url] = client
    return client


def _read_redis_queues(client: Redis, queues: Sequence[str]) -> list[QueueReading]:
    lists = {
        queue: [
            queue if step == 0 else f"{queue}{_PRIORITY_SEPARATOR}{step}"
            for step in _PRIORITY_STEPS
        ]
        for queue in queues
    }
    with client.pipeline(transaction=False) as pipe:
        for names in lists.values():
            for name in names:
                pipe.llen(name)
                pipe.lindex(name, -1)
        pipe.hvals("unacked")
        replies: list[Any] = pipe.execute()
    unacked: dict[str, int] = {}
    for raw in replies[-1]:
        try:
            routing_key = json.loads(raw)[2]
        except (ValueError, IndexError, TypeError):
            continue
        unacked[routing_key] = unacked.get(routing_key, 0) + 1
    now = time.time()
    readings: list[QueueReading] = []
    position = 0
    for queue, names in lists.items():
        ready = 0
        oldest: float | None = None
        for _ in names:
            length, tail = replies[position], replies[position + 1]
            position += 2
            ready += int(length)
            sent = _sent_at(tail)
            if sent is not None:
                age = max(0.0, now - sent)
                oldest = age if oldest is None else max(oldest, age)
        readings.append(QueueReading(queue, ready, unacked.get(queue, 0), oldest))
    return readings


def _sent_at(raw: bytes | None) -> float | None:
    if not raw:
        return None
    try:
        value = json.loads(raw).get("headers", {}).get(ENQUEUED_AT_HEADER)
        return None if value is None else float(value)
    except (ValueError, AttributeError, TypeError):
        return None


def _read_amqp_queues(broker_url: str, queues: Sequence[str]) -> list[QueueReading]:
    managed = _read_rabbitmq_management(broker_url, queues)
    if managed is not None:
        return managed
    from kombu.connection import Connection  # only a RabbitMQ deployment pays for it

    readings: list[QueueReading] = []
    with Connection(broker_url, connect_timeout=3) as connection:  # type: ignore[no-untyped-call]
        channel = connection.channel()
        for queue in queues:
            _, ready, _ = channel.queue_declare(queue=queue, passive=True)
            readings.append(QueueReading(queue, int(ready), None, None))
    return readings


def _read_rabbitmq_management(broker_url: str, queues: Sequence[str]) -> list[QueueReading] | None:
    """Ready and unacknowledged counts from RabbitMQ's management API on its default port."""
    parts = urlsplit(broker_url)
    vhost = quote(parts.path.lstrip("/") or "/", safe="")
    base = f"http://{parts.hostname or '127.0.0.1'}:15672/api/queues/{vhost}"
    auth = (parts.username or "guest", parts.password or "guest")
    readings: list[QueueReading] = []
    try:
        with httpx.Client(timeout=2, auth=auth) as http:
            for queue in queues:
                response = http.get(f"{base}/{quote(queue, safe='')}")
                if response.status_code != 200:
                    return None
                body = response.json()
                head = body.get("head_message_timestamp")
                readings.append(
                    QueueReading(
                        queue,
                        int(body.get("messages_ready", 0)),
                        int(body.get("messages_unacknowledged", 0)),
                        None if head is None else max(0.0, time.time() - float(head)),
                    )
                )
    except (httpx.HTTPError, ValueError):
        return None
    return readings


class ClusterCollector(Collector):
    """Queue depths and ages, pools, the breaker and budgets, read when scraped."""

    def __init__(
        self,
        *,
        redis: Redis,
        broker_url: str,
        queues: Sequence[str],
        pools: Sequence[str],
        breakers: Sequence[Breaker],
        extra: Sequence[Callable[[], Iterable[Metric]]] = (),
    ) -> None:
        self._redis = redis
        self._broker_url = broker_url
        self._queues = tuple(queues)
        self._pools = tuple(pools)
        self._breakers = tuple(breakers)
        self._extra = tuple(extra)

    def collect(self) -> Iterable[Metric]:
        yield from self._broker()
        yield from self._cluster_state()
        for more in self._extra:
            try:
                yield from more()
            except RedisError as exc:
                log.warning("metrics: a collector could not read Redis (%s)", exc)

    def _broker(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "scribes_broker_up", "1 when the broker answered this scrape's queue reading."
        )
        try:
            readings = read_queues(self._broker_url, self._queues)
        except Exception as exc:  # any transport's error: say so, keep the rest of the scrape
            log.warning("metrics: the broker did not answer (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "scribes_queue_depth",
            "Messages in a queue: waiting, plus taken by a worker and not yet acknowledged.",
            labels=["queue"],
        )
        unacked = GaugeMetricFamily(
            "scribes_queue_unacked",
            "Messages taken by a worker and not yet acknowledged (running, prefetched, "
            "or waiting for a retry's countdown).",
            labels=["queue"],
        )
        oldest = GaugeMetricFamily(
            "scribes_queue_oldest_age_seconds",
            "Seconds the oldest waiting message of a queue has waited (0 when it is empty).",
            labels=["queue"],
        )
        for reading in readings:
            depth.add_metric([reading.queue], reading.depth)
            if reading.unacked is not None:
                unacked.add_metric([reading.queue], reading.unacked)
            if reading.oldest_age_s is not None or reading.ready == 0:
                oldest.add_metric([reading.queue], reading.oldest_age_s or 0.0)
        yield depth
        yield unacked
        yield oldest

    def _cluster_state(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("scribes_redis_up", "1 when Redis answered this scrape.")
        try:
            hosts = Heartbeats(self._redis).hosts(self._pools)
            states = [(breaker.name, breaker.status().state) for breaker in self._breakers]
        except RedisError as exc:
            log.warning("metrics: Redis did not answer (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        pool_up = GaugeMetricFamily(
            "scribes_pool_up",
            f"1 while a pool's process on a host beats (every 5 s; stale after "
            f"{HEARTBEAT_STALE_S:.0f} s), 0 for one that stopped within the hour, and "
            f'host="" when no process of the pool has beaten.',
            labels=["pool", "host"],
        )
        now = time.time()
        for pool in self._pools:
            seen = hosts.get(pool, {})
            if not seen:
                pool_up.add_metric([pool, ""], 0)
            for host, beat in sorted(seen.items()):
                pool_up.add_metric([pool, host], 1 if now - beat < HEARTBEAT_STALE_S else 0)
        yield pool_up
        breaker = GaugeMetricFamily(
            "scribes_breaker_state",
            "A circuit breaker's state: 0 closed, 1 half-open (one probe call), 2 open.",
            labels=["dependency"],
        )
        for name, state in states:
            breaker.add_metric([name], BREAKER_STATE_VALUE[state])
        yield breaker


def budget_gauges(budgets: Budgets) -> Iterable[Metric]:
    """Each tenant's daily and monthly budget and the dollars left of it; no series for a
    tenant without one."""
    remaining = GaugeMetricFamily(
        "scribes_budget_remaining_usd",
        "Dollars left of a tenant's budget for the current UTC day or month (0 when spent).",
        labels=["tenant", "period"],
    )
    limit = GaugeMetricFamily(
        "scribes_budget_limit_usd",
        "A tenant's budget for the current UTC day or month, in dollars.",
        labels=["tenant", "period"],
    )
    for tenant, period, dollars, left in budgets.limits_and_remaining():
        limit.add_metric([tenant, period], float(dollars))
        remaining.add_metric([tenant, period], float(left))
    yield limit
    yield remaining
