"""Which pools are alive, and whether the vector store answers, as the workers last said."""

from __future__ import annotations

import time
from collections.abc import Iterable

from redis import Redis

from rag.keys import pool_heartbeat_key, vector_store_health_key

__all__ = ["HEARTBEAT_INTERVAL_S", "HEARTBEAT_STALE_S", "HOST_MEMORY_S", "Heartbeats"]

HEARTBEAT_INTERVAL_S = 5.0
# Four missed beats: a pool busy with a long batch still beats from its own thread.
HEARTBEAT_STALE_S = 20.0
HOST_MEMORY_S = 3600.0


class Heartbeats:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    def beat(self, pool: str, hostname: str, *, store_points: int | None = None) -> None:
        """Say `hostname` of `pool` is alive; the store's owner also says how many points."""
        now = time.time()
        key = pool_heartbeat_key(pool)
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {hostname: now})
            # Kept an hour, so that a host that stopped beating shows as down, not as gone.
            pipe.zremrangebyscore(key, 0, now - HOST_MEMORY_S)
            if store_points is not None:
                pipe.set(vector_store_health_key(), store_points, ex=int(HEARTBEAT_STALE_S))
            pipe.execute()

    def alive(self, pools: Iterable[str]) -> dict[str, int]:
        """How many processes of each pool beat within the stale window."""
        since = time.time() - HEARTBEAT_STALE_S
        names = list(pools)
        with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcount(pool_heartbeat_key(name), since, "+inf")
            counts: list[int] = pipe.execute()
        return dict(zip(names, (int(count) for count in counts), strict=True))

    def hosts(self, pools: Iterable[str]) -> dict[str, dict[str, float]]:
        """Each pool's hosts that beat within the hour, with the time of their last beat."""
        names = list(pools)
        since = time.time() - HOST_MEMORY_S
        with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrangebyscore(pool_heartbeat_key(name), since, "+inf", withscores=True)
            replies: list[list[tuple[str | bytes, float]]] = pipe.execute()
        return {
            name: {
                (host.decode() if isinstance(host, bytes) else host): float(beat)
                for host, beat in members
            }
            for name, members in zip(names, replies, strict=True)
        }

    def store_answers(self) -> bool:
        return bool(self._redis.exists(vector_store_health_key()))
