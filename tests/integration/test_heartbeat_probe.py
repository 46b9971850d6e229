"""The liveness probe of deploy/: a real worker touches its heartbeat file, Redis or not.

The container images run `python -m workers.probe FILE --max-age-s N` as the workers'
liveness and readiness check (deploy/kubernetes, deploy/compose). These start a real pool
with `scribes worker`, the image's own command, and run the probe as the orchestrator does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.cluster import running_redis

ROOT = Path(__file__).resolve().parents[2]


def probe(path: Path, max_age_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.probe", str(path), "--max-age-s", str(max_age_s)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout_s:.0f} s")


def start_worker(data_dir: Path, redis_url: str, heartbeat: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "SCRIBES_DATA_DIR": str(data_dir),
        "SCRIBES_HEARTBEAT_FILE": str(heartbeat),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    data_dir.mkdir(exist_ok=True)
    log = (data_dir / "worker.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "scribes", "worker", "generate", "--concurrency", "2"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(45)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_a_worker_stays_live_through_a_redis_outage_and_clears_its_file_on_stop(
    tmp_path: Path,
) -> None:
    heartbeat = tmp_path / "run" / "heartbeat"
    # A file left behind by an earlier process, old enough to fail.
    heartbeat.parent.mkdir()
    heartbeat.touch()
    old = time.time() - 120
    os.utime(heartbeat, (old, old))
    stale = probe(heartbeat, 30)
    assert stale.returncode == 1 and "120 s old" in stale.stdout

    with running_redis(tmp_path / "redis") as redis_server:
        worker = start_worker(tmp_path / "data", redis_server.url, heartbeat)
        try:
            wait_for(lambda: probe(heartbeat, 8).returncode == 0, 90, "the worker beat")
            first = heartbeat.stat().st_mtime
            wait_for(lambda: heartbeat.stat().st_mtime > first, 15, "a second beat")

            redis_server.stop()
            # Redis gone: the worker's Redis beat fails, its process lives on, and so does
            # its file. Three beats' worth, each probe allowing 8 s.
            outage_ends = time.monotonic() + 16
            while time.monotonic() < outage_ends:
                result = probe(heartbeat, 8)
                assert result.returncode == 0, result.stdout
                assert worker.poll() is None
                time.sleep(2)
            during_outage = heartbeat.stat().st_mtime
            assert time.time() - during_outage < 8
        finally:
            stop(worker)
    log = (tmp_path / "data" / "worker.log").read_text(errors="replace")
    assert worker.returncode is not None, log
    # Stopped cleanly: its file is gone, so nothing vouches for a process that is not there.
    assert not heartbeat.exists(), log
    gone = probe(heartbeat, 8)
    assert gone.returncode == 1 and "no heartbeat file" in gone.stdout


def test_a_worker_that_stops_beating_fails_the_probe(tmp_path: Path) -> None:
    heartbeat = tmp_path / "heartbeat"
    with running_redis(tmp_path / "redis") as redis_server:
        worker = start_worker(tmp_path / "data", redis_server.url, heartbeat)
        try:
            wait_for(lambda: probe(heartbeat, 8).returncode == 0, 90, "the worker beat")
            # Frozen, as a wedged main process would be: its file stops being touched.
            os.killpg(worker.pid, signal.SIGSTOP)
            try:
                wait_for(lambda: probe(heartbeat, 3).returncode == 1, 15, "the probe failing")
                assert "the worker's main process is stuck or gone" in probe(heartbeat, 3).stdout
            finally:
                os.killpg(worker.pid, signal.SIGCONT)
            wait_for(lambda: probe(heartbeat, 8).returncode == 0, 15, "the beat resuming")
        finally:
            stop(worker)
