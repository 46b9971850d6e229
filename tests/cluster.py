"""A whole Scribes system for tests: its own Redis, real worker pools, the API, on loopback."""

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

from rag.settings import Settings
from scribes.localredis import LocalRedis, free_port
from scribes.supervisor import Supervisor

__all__ = ["Cluster", "running_cluster", "running_redis"]


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
