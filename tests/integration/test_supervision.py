"""Supervision under `scribes up`: real child processes killed, restarted, given up on, stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis

from rag.settings import ConfigurationError, Settings
from scribes.flower import flower_login
from scribes.localredis import free_port, redis_answers
from scribes.supervisor import CrashLoop, RestartPolicy, Supervisor
from tests.cluster import running_redis

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
QUITTER = [sys.executable, "-c", "raise SystemExit(3)"]
# Leads a process group with a grandchild in it, as a prefork worker does; prints its pid.
PARENT = [
    sys.executable,
    "-c",
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(600)\n",
]
# Takes SIGTERM as a cue to finish its work (1.5 s) and exit 0.
GRACEFUL = [
    sys.executable,
    "-c",
    "import signal, sys, time\n"
    "def done(*_):\n"
    "    time.sleep(1.5)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, done)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n",
]
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(600)\n",
]
FAST = RestartPolicy(first_delay_s=0.1, max_delay_s=0.4)


@pytest.fixture
def lines() -> list[str]:
    return []


@pytest.fixture
def supervisor(tmp_path: Path, lines: list[str]) -> Iterator[Supervisor]:
    # A REDIS_URL nobody answers, so that `ensure_redis` starts one of its own.
    silent = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings(REDIS_URL=silent, SCRIBES_DATA_DIR=str(tmp_path / "data"))
    running = Supervisor(settings, log=lines.append, redis_port=free_port())
    try:
        yield running
    finally:
        running.stop()


def _printed_pid(log: Path, timeout_s: float = 10) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if text.strip():
            return int(text.split()[0])
        time.sleep(0.05)
    raise AssertionError(f"nothing printed to {log}")


def _supervise_until(
    supervisor: Supervisor, done: Callable[[], bool], timeout_s: float = 15
) -> float:
    """Call `supervise` as `scribes up` does (faster) until `done()`; the seconds it took."""
    started = time.monotonic()
    while not done():
        assert time.monotonic() - started < timeout_s, "supervision did not get there in time"
        supervisor.supervise()
        time.sleep(0.05)
    return time.monotonic() - started


def test_the_default_policy_doubles_from_1_s_to_30_s_and_gives_up_at_5_in_60_s(
    supervisor: Supervisor,
) -> None:
    policy = RestartPolicy()
    assert [policy.delay_s(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert (policy.crash_loop_exits, policy.crash_loop_window_s) == (5, 60)
    assert supervisor.policy == policy
    # Celery's soft shutdown (30 s in celeryconfig.py) has to fit before the SIGKILL.
    assert supervisor.stop_timeout_s >= 40


def test_a_killed_child_is_restarted_after_1_s_and_its_orphans_are_killed(
    supervisor: Supervisor, lines: list[str]
) -> None:
    supervisor.spawn("pool:demo", PARENT)
    supervisor.spawn("bystander", SLEEPER)
    log = supervisor.log_path("pool:demo")
    first = supervisor.children["pool:demo"]
    bystander = supervisor.children["bystander"]
    orphan = psutil.Process(_printed_pid(log))
    log.write_text("")

    os.kill(first.pid, signal.SIGKILL)  # the leader only: its child is left behind
    took = _supervise_until(supervisor, lambda: supervisor.children["pool:demo"] is not first)

    assert lines == [f"pool:demo killed by SIGKILL; restart 1 in 1 s; log {log}"]
    assert 1.0 <= took < 4  # the first restart waits 1 s; the log line names it
    assert first.returncode == -signal.SIGKILL
    orphan.wait(5)  # raises if the orphan is still there
    again = supervisor.children["pool:demo"]
    assert again.poll() is None and _printed_pid(log) != orphan.pid
    assert supervisor.children["bystander"] is bystander and bystander.poll() is None


def test_a_child_that_exits_at_once_is_given_up_on_after_5_exits_in_60_s(
    tmp_path: Path, lines: list[str]
) -> None:
    settings = Settings(SCRIBES_DATA_DIR=str(tmp_path / "data"))
    supervisor = Supervisor(settings, log=lines.append, policy=FAST)
    try:
        supervisor.spawn("api", QUITTER)
        supervisor.spawn("bystander", SLEEPER)
        bystander = supervisor.children["bystander"]
        log = supervisor.log_path("api")
        started = time.monotonic()
        with pytest.raises(CrashLoop) as caught:
            _supervise_until(supervisor, lambda: False)
        took = time.monotonic() - started
    finally:
        supervisor.stop()

    assert caught.value.name == "api" and caught.value.log == log
    assert str(caught.value).startswith("api crashed 5 times in ")
    assert str(caught.value).endswith(f" s, the last time exited with code 3; see {log}")
    assert lines == [
        f"api exited with code 3; restart {n} in {delay} s; log {log}"
        for n, delay in enumerate(["0.1", "0.2", "0.4", "0.4"], start=1)
    ]
    assert took >= 0.1 + 0.2 + 0.4 + 0.4  # each restart waited its turn
    assert bystander.returncode is not None  # stopped with everything else


def test_a_child_that_stayed_up_starts_from_the_first_delay_again(
    tmp_path: Path, lines: list[str]
) -> None:
    settings = Settings(SCRIBES_DATA_DIR=str(tmp_path / "data"))
    policy = RestartPolicy(first_delay_s=0.1, stable_after_s=0.5, crash_loop_exits=10)
    supervisor = Supervisor(settings, log=lines.append, policy=policy)
    short_lived = [sys.executable, "-c", "import time; time.sleep(1); raise SystemExit(1)"]
    try:
        supervisor.spawn("flower", short_lived)
        _supervise_until(supervisor, lambda: len(lines) == 3)
    finally:
        supervisor.stop()
    assert [line.split("; ")[1] for line in lines] == ["restart 1 in 0.1 s"] * 3


def test_the_redis_it_started_is_restarted_with_its_data(
    supervisor: Supervisor, lines: list[str]
) -> None:
    supervisor.ensure_redis(explicit_url=False)
    assert supervisor.redis is not None and supervisor.redis.process is not None
    client = redis.Redis.from_url(supervisor.redis_url, decode_responses=True)
    client.set("scribes:probe", "kept")
    first = supervisor.redis.process
    first.kill()

    _supervise_until(supervisor, lambda: redis_answers(supervisor.redis_url, 0.2))

    assert supervisor.redis.process is not first
    assert client.get("scribes:probe") == "kept"  # the append-only file was read back
    assert lines[1:] == [
        f"redis killed by SIGKILL; restart 1 in 1 s; log {supervisor.redis.log_path}"
    ]


def test_stop_waits_for_a_child_to_finish_and_kills_the_group_of_one_that_will_not(
    tmp_path: Path,
) -> None:
    settings = Settings(SCRIBES_DATA_DIR=str(tmp_path / "data"))
    supervisor = Supervisor(settings, log=lambda _: None, stop_timeout_s=3)
    supervisor.spawn("graceful", GRACEFUL)
    supervisor.spawn("stubborn", STUBBORN)
    deadline = time.monotonic() + 10
    while "ready" not in supervisor.log_path("graceful").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = psutil.Process(_printed_pid(supervisor.log_path("stubborn")))

    started = time.monotonic()
    supervisor.stop()
    took = time.monotonic() - started

    assert supervisor.children["graceful"].returncode == 0  # finished, not killed
    assert supervisor.children["stubborn"].returncode == -signal.SIGKILL
    grandchild.wait(5)
    assert 3 <= took < 6


def test_scribes_worker_takes_sigterm_as_a_soft_shutdown(tmp_path: Path) -> None:
    with running_redis(tmp_path / "redis") as server:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("ANTHROPIC_", "SCRIBES_", "REMAP_"))
        }
        env.update(REDIS_URL=server.url, SCRIBES_DATA_DIR=str(tmp_path / "data"))
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "scribes.cli", "worker", "generate"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 60
            while " ready." not in log.read_text():
                assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        finally:
            if worker.poll() is None:
                worker.kill()
        # Without REMAP_SIGTERM=SIGQUIT Celery says "Warm shutdown" and waits without limit.
        assert "worker: Cold shutdown (MainProcess)" in log.read_text()


def test_flower_login_is_generated_once_kept_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(SCRIBES_DATA_DIR=str(tmp_path / "data"))
    first = flower_login(settings)
    assert first.generated and first.user == "scribes" and first.file is not None
    assert first.file == tmp_path / "data" / "flower-auth"
    assert first.file.stat().st_mode & 0o777 == 0o600
    assert first.file.read_text() == f"{first.basic_auth}\n"
    assert len(first.password.get_secret_value()) >= 32
    assert first.password.get_secret_value() not in repr(first)

    again = flower_login(settings)
    assert not again.generated and again.basic_auth == first.basic_auth

    given = Settings(SCRIBES_DATA_DIR=str(tmp_path / "other"), SCRIBES_FLOWER_AUTH="ops:s3cret:x")
    login = flower_login(given)
    assert (login.user, login.basic_auth, login.file) == ("ops", "ops:s3cret:x", None)
    assert not (tmp_path / "other" / "flower-auth").exists()

    for bad in ("no-colon", ":nopassword", "nouser:", "a:b,c:d"):
        malformed = Settings(SCRIBES_DATA_DIR=str(tmp_path), SCRIBES_FLOWER_AUTH=bad)
        with pytest.raises(ConfigurationError) as caught:
            flower_login(malformed)
        assert str(caught.value) == (
            "SCRIBES_FLOWER_AUTH is not of the form user:password (with no comma)"
        )
