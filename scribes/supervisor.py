"""`scribes up`: everything on one machine — Redis if needed, four pools, the API and Flower.

A child that exits is restarted after 1 s, 2 s, 4 s … (at most 30 s; from 1 s again once
it has stayed up 60 s). Five exits of one child within 60 s is a crash loop: `supervise`
raises `CrashLoop` and `scribes up` stops everything. Measured on the 2-core development
machine: the generate pool, its process group SIGKILLed, ran again 1.2–1.3 s later and the
next question was answered 2.5–2.7 s after the kill (embed and index load the model
first, about 6 s more). supervisord and circus are daemons with their own configuration
and control socket; one foreground command that also waits for heartbeats needs only this.

`stop` gives every child SIGTERM and `stop_timeout_s` (45 s) before SIGKILL of its process
group: workers run with `REMAP_SIGTERM=SIGQUIT`, so SIGTERM is Celery's soft shutdown, in
which running tasks get `worker_soft_shutdown_timeout` to finish before they are handed
back to the broker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import redis

from rag.records.heartbeats import Heartbeats
from rag.settings import DEFAULT_REDIS_URL, Settings
from rag.telemetry.exposition import MULTIPROC_ENV, mark_process_dead, prepare_multiprocess_dir
from rag.urls import redact_url
from scribes.flower import FlowerAuth, flower_login
from scribes.localredis import LocalRedis, free_port, port_free, redis_answers
from workers.pools import POOLS, worker_command

__all__ = ["SOFT_SHUTDOWN_ON_SIGTERM", "CrashLoop", "RestartPolicy", "Supervisor", "describe_exit"]

# Celery 5.5+: SIGTERM starts the soft shutdown (as SIGQUIT does) instead of a warm one that
# waits without limit for running tasks. Every worker we start gets it, `scribes worker` too.
SOFT_SHUTDOWN_ON_SIGTERM = {"REMAP_SIGTERM": "SIGQUIT"}


def describe_exit(returncode: int) -> str:
    """`exited with code 3`, `killed by SIGKILL`: how a child ended, as a person says it."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How soon a child that exited is started again, and when to give up on it."""

    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    # Up this long, a child's next restart waits `first_delay_s` again.
    stable_after_s: float = 60.0
    crash_loop_exits: int = 5
    crash_loop_window_s: float = 60.0

    def delay_s(self, attempt: int) -> float:
        """The wait before restart number `attempt` (1, 2, …) since the child last stayed up."""
        return float(min(self.max_delay_s, self.first_delay_s * 2 ** (attempt - 1)))


class CrashLoop(RuntimeError):
    """One child exited `crash_loop_exits` times within the window: restarting it is futile."""

    def __init__(self, name: str, exits: int, span_s: float, last_exit: str, log: Path) -> None:
        super().__init__(
            f"{name} crashed {exits} times in {span_s:.0f} s, the last time {last_exit}; see {log}"
        )
        self.name = name
        self.last_exit = last_exit
        self.log = log


@dataclass
class _Lifeline:
    """One child's restart history."""

    started_at: float
    attempt: int = 0
    exits: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Starts child processes, restarts those that exit, and stops every one it started."""

    settings: Settings
    port: int = 8000
    host: str = "127.0.0.1"
    flower_port: int | None = 5555
    flower_host: str = "127.0.0.1"
    flower_auth: FlowerAuth | None = None
    log: Callable[[str], None] = print
    redis: LocalRedis | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # Where a Redis of our own goes when none answers: the default port while it is free.
    redis_port: int = urlparse(DEFAULT_REDIS_URL).port or 6379
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    # Celery's soft shutdown (worker_soft_shutdown_timeout, 30 s) and the cold one after it.
    stop_timeout_s: float = 45.0
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    redis_url: str = ""
    # Set, by the thread of `supervise_in_background`, when supervision ended: a crash loop.
    gave_up: Exception | None = None
    # Not in the repr: Flower's environment holds its password.
    _commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict, repr=False)
    _lives: dict[str, _Lifeline] = field(default_factory=dict, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _watcher: threading.Thread | None = field(default=None, repr=False)

    def environment(self) -> dict[str, str]:
        env = {**os.environ, **self.extra_env}
        env["REDIS_URL"] = self.redis_url
        env["SCRIBES_DATA_DIR"] = str(self.settings.data_dir.resolve())
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        return env

    @property
    def logs(self) -> Path:
        return self.settings.data_dir / "logs"

    def log_path(self, name: str) -> Path:
        if name == "redis" and self.redis is not None:
            return self.redis.log_path
        return self.logs / f"{name.replace(':', '-')}.log"

    def ensure_redis(self, *, explicit_url: bool) -> None:
        url = self.settings.redis_url
        if explicit_url or redis_answers(url):
            if not redis_answers(url, 3.0):
                raise RuntimeError(
                    f"Redis at {redact_url(url)} is not reachable; start it or set REDIS_URL"
                )
            self.redis_url = url
            return
        port = self.redis_port if port_free(self.redis_port) else free_port()
        self.redis = LocalRedis(self.settings.data_dir / "redis", port)
        self.log(f"starting redis-server on 127.0.0.1:{port} (data in {self.redis.directory})")
        self.redis.start()
        self._lives["redis"] = _Lifeline(time.monotonic())
        self.redis_url = self.redis.url

    @property
    def metrics_dir(self) -> Path:
        """This host's multiprocess metrics directory: every child but Flower writes there."""
        return (self.settings.data_dir / "metrics").resolve()

    def start(self, *, explicit_redis_url: bool) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.ensure_redis(explicit_url=explicit_redis_url)
        env = self.environment()
        if self.settings.metrics_enabled:
            # Wiped as the host's processes start: their counters start at zero together.
            env[MULTIPROC_ENV] = str(prepare_multiprocess_dir(self.metrics_dir))
        for name, spec in POOLS.items():
            self.spawn(
                f"pool:{name}",
                worker_command(spec),
                {**env, **SOFT_SHUTDOWN_ON_SIGTERM, "SCRIBES_WORKER_POOL": name},
            )
        self.spawn(
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
        )
        if self.flower_port:
            # Never an open Flower: it can revoke tasks and shut workers down.
            auth = self.flower_auth or flower_login(self.settings)
            self.flower_auth = auth
            self.spawn(
                "flower",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "tasks.app",
                    "flower",
                    f"--port={self.flower_port}",
                    f"--address={self.flower_host}",
                ],
                # From the environment, not the command line, which every local user can read.
                # Flower serves its own /metrics: its series stay out of the host's.
                {
                    **{k: v for k, v in env.items() if k != MULTIPROC_ENV},
                    "FLOWER_BASIC_AUTH": auth.basic_auth,
                },
            )

    def spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        """Start `command` as the child `name`, in a session of its own, logging to logs/."""
        env = dict(os.environ) if env is None else env
        self._commands[name] = (command, env)
        self.logs.mkdir(parents=True, exist_ok=True)
        with self.log_path(name).open("ab") as log_file:
            self.children[name] = subprocess.Popen(
                command,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._lives.setdefault(name, _Lifeline(time.monotonic())).started_at = time.monotonic()

    def respawn(self, name: str) -> None:
        """Start a child again with the command and environment it first had."""
        command, env = self._commands[name]
        self.spawn(name, command, env)

    def supervise(self) -> None:
        """Restart each child that has exited once its back-off is over; call it twice a second.

        Raises `CrashLoop` when one child has exited `policy.crash_loop_exits` times within
        `policy.crash_loop_window_s`.
        """
        if self._stopping.is_set():
            return
        now = time.monotonic()
        for name, process in self._watched():
            life = self._lives.setdefault(name, _Lifeline(now))
            if life.restart_at is not None:
                if now >= life.restart_at:
                    life.restart_at = None
                    self._restart(name)
                continue
            if _exit_status(process) is None:
                if now - life.started_at >= self.policy.stable_after_s:
                    life.attempt = 0
                continue
            # A prefork worker's pool processes may outlive it; they would hold their
            # messages and the model's memory.
            _kill_group(process)
            how = describe_exit(process.wait())
            life.exits.append(now)
            while now - life.exits[0] > self.policy.crash_loop_window_s:
                life.exits.popleft()
            if len(life.exits) >= self.policy.crash_loop_exits:
                raise CrashLoop(
                    name, len(life.exits), now - life.exits[0], how, self.log_path(name)
                )
            life.attempt += 1
            delay = self.policy.delay_s(life.attempt)
            life.restart_at = now + delay
            self.log(
                f"{name} {how}; restart {life.attempt} in {delay:g} s; log {self.log_path(name)}"
            )

    def supervise_in_background(self, interval_s: float = 0.5) -> None:
        """Call `supervise` on a thread until `stop`; why it ended lands in `gave_up`."""

        def _watch() -> None:
            while not self._stopping.wait(interval_s):
                try:
                    self.supervise()
                except Exception as exc:
                    self.gave_up = exc
                    return

        self._watcher = threading.Thread(target=_watch, name="scribes-supervisor", daemon=True)
        self._watcher.start()

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
        """`pool:embed killed by SIGKILL` for the first child that has exited, else None."""
        for name, process in self._watched():
            returncode = _exit_status(process)
            if returncode is not None:
                return f"{name} {describe_exit(returncode)}"
        return None

    def stop(self) -> None:
        """SIGTERM every child, wait up to `stop_timeout_s`, SIGKILL what is left, then Redis.

        A KeyboardInterrupt while waiting (a second Ctrl-C) cuts the wait short.
        """
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
        processes = list(self.children.values())
        for process in processes:
            if _exit_status(process) is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        try:
            while time.monotonic() < deadline and any(
                _exit_status(process) is None for process in processes
            ):
                time.sleep(0.1)
        except KeyboardInterrupt:
            self.log("interrupted again: killing every process now")
        for process in processes:
            # The whole session: a prefork worker's children go with it.
            _kill_group(process)
            process.wait()
        if self.redis is not None:
            self.redis.stop()

    def _watched(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        watched = list(self.children.items())
        if self.redis is not None and self.redis.process is not None:
            watched.append(("redis", self.redis.process))
        return watched

    def _restart(self, name: str) -> None:
        if name == "redis" and self.redis is not None:
            self.redis.spawn()
            self._lives[name].started_at = time.monotonic()
        else:
            dead = self.children.get(name)
            if dead is not None:
                mark_process_dead(dead.pid, self.metrics_dir)
            self.respawn(name)


def _exit_status(process: subprocess.Popen[bytes]) -> int | None:
    """The child's return code if it has exited, without reaping it.

    Unreaped, its pid (so its process group's id) cannot go to another process, and
    `_kill_group` is safe; pids come round quickly on a busy machine (32768 here).
    """
    if process.returncode is not None:
        return process.returncode
    try:
        info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return process.poll()
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the session a child leads, unless the child was already reaped."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
