"""A whole Scribes system for tests: its own Redis, real worker pools, the API, on loopback.

`running_worker_host` adds what another machine would run: worker pools under a hostname
and a data folder of their own, on the same Redis.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery

from rag.records.heartbeats import HEARTBEAT_STALE_S, Heartbeats
from rag.settings import Settings
from rag.telemetry.exposition import MULTIPROC_ENV, prepare_multiprocess_dir
from scribes.localredis import LocalRedis, free_port
from scribes.supervisor import SOFT_SHUTDOWN_ON_SIGTERM, Supervisor
from workers.pools import POOLS, worker_command

__all__ = [
    "Cluster",
    "WorkerHost",
    "running_cluster",
    "running_redis",
    "running_worker_host",
    "tasks_run",
]


@contextmanager
def running_redis(directory: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(directory, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Cluster:
    api_url: str
    redis_url: str
    supervisor: Supervisor
    data_dir: Path

    def client(self, api_key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=30)

    def kill_pool(self, name: str) -> None:
        """SIGKILL a pool's whole process group, as when a machine or container dies."""
        process = self.supervisor.children[f"pool:{name}"]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def restart_pool(self, name: str) -> None:
        self.supervisor.respawn(f"pool:{name}")

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        with httpx.Client(base_url=self.api_url, timeout=5) as http:
            while time.monotonic() < deadline:
                dead = self.supervisor.dead_child()
                if dead:
                    raise RuntimeError(f"{dead}; logs in {self.data_dir / 'logs'}")
                try:
                    response = http.get("/readyz")
                    last = response.json()
                    if response.status_code == 200:
                        last = self.supervisor.not_yet_up()
                        if not last:
                            return
                except httpx.TransportError as exc:
                    last = exc
                time.sleep(0.3)
        raise RuntimeError(f"cluster not ready: {last}; logs in {self.data_dir / 'logs'}")


@contextmanager
def running_cluster(data_dir: Path, redis_url: str, env: dict[str, str]) -> Iterator[Cluster]:
    env = {
        "REDIS_URL": redis_url,
        "SCRIBES_DATA_DIR": str(data_dir),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **env,
    }
    settings = Settings(**env)  # type: ignore[arg-type]
    port = free_port()
    supervisor = Supervisor(
        settings, port=port, flower_port=None, extra_env=env, log=lambda _: None
    )
    supervisor.start(explicit_redis_url=True)
    cluster = Cluster(f"http://127.0.0.1:{port}", redis_url, supervisor, data_dir)
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        supervisor.stop()


@dataclass
class WorkerHost:
    """Pools of another machine: their Celery nodes are `POOL@name`, their data folder its own."""

    name: str
    pools: tuple[str, ...]
    supervisor: Supervisor
    data_dir: Path

    def node(self, pool: str) -> str:
        return f"{pool}@{self.name}"

    def kill(self) -> None:
        """SIGKILL every pool's process group at once, as when the machine dies."""
        processes = [self.supervisor.children[f"pool:{pool}"] for pool in self.pools]
        for process in processes:
            os.killpg(process.pid, signal.SIGKILL)
        for process in processes:
            process.wait(10)

    def restart(self) -> None:
        for pool in self.pools:
            self.supervisor.respawn(f"pool:{pool}")

    def wait_ready(self, timeout_s: float = 180) -> None:
        """Until every pool of this host has beaten (so its consumer is taking messages)."""
        client = redis.Redis.from_url(self.supervisor.redis_url, decode_responses=True)
        deadline = time.monotonic() + timeout_s
        missing: list[str] = []
        try:
            while time.monotonic() < deadline:
                dead = self.supervisor.dead_child()
                if dead:
                    raise RuntimeError(f"{self.name}: {dead}; logs in {self.data_dir / 'logs'}")
                beats = Heartbeats(client).hosts(self.pools)
                since = time.time() - HEARTBEAT_STALE_S
                missing = [
                    self.node(pool)
                    for pool in self.pools
                    if beats[pool].get(self.node(pool), 0.0) < since
                ]
                if not missing:
                    return
                time.sleep(0.3)
        finally:
            client.close()
        raise RuntimeError(f"{missing} not beating; logs in {self.data_dir / 'logs'}")


@contextmanager
def running_worker_host(
    name: str, data_dir: Path, redis_url: str, env: dict[str, str], pools: tuple[str, ...]
) -> Iterator[WorkerHost]:
    """Start `pools` as host `name` would, with `data_dir` as its SCRIBES_DATA_DIR."""
    env = {**env, "REDIS_URL": redis_url, "SCRIBES_DATA_DIR": str(data_dir)}
    settings = Settings(**env)  # type: ignore[arg-type]
    supervisor = Supervisor(settings, flower_port=None, extra_env=env, log=lambda _: None)
    supervisor.settings.data_dir.mkdir(parents=True, exist_ok=True)
    supervisor.ensure_redis(explicit_url=True)
    host_env = supervisor.environment()
    if settings.metrics_enabled:
        # One multiprocess directory per host, as `Supervisor.start` makes it.
        host_env[MULTIPROC_ENV] = str(prepare_multiprocess_dir(supervisor.metrics_dir))
    for pool in pools:
        command = worker_command(POOLS[pool])
        at = command.index("--hostname") + 1
        command[at] = command[at].replace("%h", name)
        supervisor.spawn(
            f"pool:{pool}",
            command,
            {**host_env, **SOFT_SHUTDOWN_ON_SIGTERM, "SCRIBES_WORKER_POOL": pool},
        )
    host = WorkerHost(name, pools, supervisor, data_dir)
    try:
        host.wait_ready()
        yield host
    finally:
        supervisor.stop()


def tasks_run(redis_url: str, nodes: list[str], timeout_s: float = 60) -> dict[str, dict[str, int]]:
    """Tasks each Celery node has started since it started, by task name, from Celery's own
    `inspect stats`; waits until every node in `nodes` has answered."""
    # An app of its own, never the current one: later tests would send tasks through it.
    app = Celery("scribes-test-inspect", broker=redis_url, set_as_current=False)
    counts: dict[str, dict[str, int]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            waiting = [node for node in nodes if node not in counts]
            replies = app.control.inspect(destination=waiting, timeout=5).stats() or {}
            for node, stats in replies.items():
                counts[node] = {task: int(n) for task, n in stats.get("total", {}).items()}
            if all(node in counts for node in nodes):
                return counts
            if time.monotonic() > deadline:
                raise RuntimeError(f"no stats from {sorted(set(nodes) - set(counts))}")
    finally:
        app.close()
