"""`scribes up`, `ask`, `ingest` and `status` run as a person runs them, as processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from scribes.localredis import free_port
from tests.cluster import running_redis
from tests.metrics_scrape import scrape

SCRIBES = [sys.executable, "-m", "scribes.cli"]
QUESTION = "Why was it undignified for the father to run to the prodigal son?"


def _api_host() -> str:
    """Another loopback address for the API where there is one (Linux: all of 127/8), so
    that Flower staying on 127.0.0.1 shows it does not follow `--host`."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.2", 0))
        except OSError:
            return "127.0.0.1"
    return "127.0.0.2"


API_HOST = _api_host()


@dataclass
class RunningUp:
    process: subprocess.Popen[str]
    api_url: str
    flower_url: str
    env: dict[str, str]
    data_dir: Path
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "".join(self.lines)


def _scribes(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SCRIBES, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def scribes_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUp]:
    base = tmp_path_factory.mktemp("up")
    with running_redis(base / "redis") as redis_server:
        port, flower_port = free_port(), free_port()
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("ANTHROPIC_", "SCRIBES_"))
        }
        env.update(
            REDIS_URL=redis_server.url,
            SCRIBES_DATA_DIR=str(base / "data"),
            SCRIBES_API_URL=f"http://{API_HOST}:{port}",
            HF_HUB_OFFLINE="1",
        )
        process = subprocess.Popen(
            [
                *SCRIBES,
                "up",
                "--host",
                API_HOST,
                "--port",
                str(port),
                "--flower-port",
                str(flower_port),
                "--ask",
                QUESTION,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        running = RunningUp(
            process,
            f"http://{API_HOST}:{port}",
            f"http://127.0.0.1:{flower_port}",
            env,
            base / "data",
        )
        ready = threading.Event()

        def _read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                running.lines.append(line)
                if "ready; press Ctrl-C" in line:
                    ready.set()

        threading.Thread(target=_read, daemon=True).start()
        if not ready.wait(300):
            process.kill()
            pytest.fail(f"scribes up did not come up:\n{running.output()}")
        try:
            yield running
        finally:
            if process.poll() is None:
                process.kill()


def test_up_ingests_the_samples_and_answers_the_first_question(scribes_up: RunningUp) -> None:
    output = scribes_up.output()
    assert "sample notes indexed for tenant 'default'" in output
    indexed = int(output.split(" sample notes indexed")[0].rsplit("scribes: ", 1)[1])
    assert indexed >= 40
    # The extractive writer (no API key) answers with a cited sentence from the right note.
    assert "Sources:" in output and "The Father Who Ran" in output
    assert "undignified" in output


def test_readiness_and_status_answer(scribes_up: RunningUp) -> None:
    assert httpx.get(f"{scribes_up.api_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{scribes_up.api_url}/readyz").json()
    # Readiness is the API's own: Redis and the broker, never the pools.
    assert ready == {"status": "ready", "checks": {"redis": True, "broker": True}}
    status = httpx.get(f"{scribes_up.api_url}/v1/status").json()
    assert status["status"] == "ok"
    assert {"pool:embed", "pool:retrieve", "pool:generate", "pool:index", "vector_store"} <= set(
        status["checks"]
    )
    assert set(status["queues"]) == {"embed", "retrieve", "generate", "index", "webhook"}
    assert status["usage"]["questions"] >= 1  # the --ask question, today
    printed = _scribes("status", env=scribes_up.env)
    assert printed.returncode == 0 and "ok   pool:embed (1 processes)" in printed.stdout
    assert "queue generate: " in printed.stdout
    assert "today (" in printed.stdout and " questions, $" in printed.stdout


def test_one_scrape_of_the_api_has_every_process_of_the_host(scribes_up: RunningUp) -> None:
    scraped = scrape(f"{scribes_up.api_url}/metrics")
    # The --ask question went through three pools, each its own process (embed's task in
    # a prefork child): the API's one scrape counts all of them.
    for queue in ("embed", "retrieve", "generate"):
        assert scraped.value("scribes_tasks_total", {"queue": queue, "outcome": "succeeded"}) >= 1
    assert scraped.value("scribes_questions_total", {"outcome": "answered"}) >= 1
    for pool in ("embed", "retrieve", "generate", "index"):
        assert scraped.value("scribes_pool_up", {"pool": pool}) == 1
    # Flower serves its own series; they are not mixed into the host's.
    assert not any(name.startswith("flower_") for name in scraped.names())
    assert (scribes_up.data_dir / "metrics").is_dir()


def test_flower_asks_for_the_login_it_generated_and_printed_once(scribes_up: RunningUp) -> None:
    saved = scribes_up.data_dir / "flower-auth"
    assert saved.stat().st_mode & 0o777 == 0o600
    user, password = saved.read_text().strip().split(":", 1)
    assert user == "scribes" and len(password) >= 32
    assert httpx.get(scribes_up.flower_url, timeout=10).status_code == 401
    wrong = httpx.get(scribes_up.flower_url, auth=(user, password[:-1] + "?"), timeout=10)
    assert wrong.status_code == 401
    right = httpx.get(
        scribes_up.flower_url, auth=(user, password), follow_redirects=True, timeout=10
    )
    assert right.status_code == 200 and "Flower" in right.text

    output = scribes_up.output()
    assert output.count(password) == 1
    assert (
        f"scribes: Flower {scribes_up.flower_url}  (user scribes, password {password}; "
        f"kept in {saved})" in output
    )
    # Nowhere else: no log, no command line that `ps` shows to every local user.
    for log in (scribes_up.data_dir / "logs").iterdir():
        assert password not in log.read_text(errors="replace"), log
    for child in psutil.Process(scribes_up.process.pid).children(recursive=True):
        assert password not in " ".join(child.cmdline())


def test_flower_binds_loopback_whatever_the_api_host_is(scribes_up: RunningUp) -> None:
    if API_HOST == "127.0.0.1":
        pytest.skip("no second loopback address here")
    assert httpx.get(f"{scribes_up.api_url}/healthz").status_code == 200
    flower_port = scribes_up.flower_url.rsplit(":", 1)[1]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{API_HOST}:{flower_port}/", timeout=2)


def test_up_refuses_a_malformed_flower_login_before_starting_anything(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ANTHROPIC_", "SCRIBES_"))
    }
    env.update(
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        SCRIBES_DATA_DIR=str(tmp_path / "data"),
        SCRIBES_FLOWER_AUTH="opsWithoutColon",
    )
    done = _scribes("up", "--port", str(free_port()), env=env, timeout=60)
    assert done.returncode == 2
    assert done.stderr == (
        "scribes: SCRIBES_FLOWER_AUTH is not of the form user:password (with no comma)\n"
    )
    assert "opsWithoutColon" not in done.stdout + done.stderr
    assert not (tmp_path / "data" / "redis").exists()


def test_ask_prints_answer_and_sources(scribes_up: RunningUp) -> None:
    done = _scribes(
        "ask", "What did Jonah care about more than the people of Nineveh?", env=scribes_up.env
    )
    assert done.returncode == 0, done.stderr
    assert "Sources:" in done.stdout and "[1]" in done.stdout


def test_ask_with_bad_input_is_one_line_and_nonzero(scribes_up: RunningUp) -> None:
    done = _scribes("ask", "   ", env=scribes_up.env)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "question is empty" in done.stderr


def test_ingest_takes_folders_and_reports_bad_files(scribes_up: RunningUp, tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    (notes / "2025").mkdir(parents=True)
    (notes / "2025" / "harvest.md").write_text(
        "# Harvest Sunday\n\nDeacon Abel said the first sheaf of barley was tied with red "
        "thread and carried to the front by the youngest child.\n"
    )
    (notes / "broken.txt").write_bytes(b"\xff\xfe\x00not utf-8 \xc3\x28")
    done = _scribes("ingest", str(notes), env=scribes_up.env)
    assert done.returncode == 1
    assert "broken.txt: not UTF-8 text" in done.stderr
    assert "1 notes submitted, 1 problems" in done.stdout

    answer = _scribes(
        "ask", "What colour thread tied the first sheaf of barley?", "--json", env=scribes_up.env
    )
    assert answer.returncode == 0, answer.stderr
    assert '"document_id": "2025:harvest"' in answer.stdout

    missing = _scribes("ingest", str(tmp_path / "nowhere"), env=scribes_up.env)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"scribes: {tmp_path / 'nowhere'}: no such file or folder"


def test_a_killed_pool_is_restarted_and_questions_are_answered_again(
    scribes_up: RunningUp,
) -> None:
    def generate_pool() -> psutil.Process | None:
        for child in psutil.Process(scribes_up.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):  # the killed one, until it is reaped
                if "generate@%h" in child.cmdline():
                    return child
        return None

    killed = generate_pool()
    assert killed is not None
    logs = scribes_up.data_dir / "logs"
    expected = f"scribes: pool:generate killed by SIGKILL; restart 1 in 1 s; log {logs}"
    os.killpg(killed.pid, signal.SIGKILL)
    started = time.monotonic()
    deadline = started + 30
    while (again := generate_pool()) is None or again.pid == killed.pid:
        assert time.monotonic() < deadline, scribes_up.output()
        time.sleep(0.1)
    restarted_after = time.monotonic() - started

    done = _scribes("ask", "What did the widow put into the temple treasury?", env=scribes_up.env)
    answered_after = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "Sources:" in done.stdout

    # Answered by the pool started again, whose log follows the dead one's. Celery logs a
    # task's success after its body returns, and so after the job (and the CLI) saw it.
    def second_life() -> str:
        return (logs / "pool-generate.log").read_text().rsplit(" ready.", 1)[1]

    logged_by = time.monotonic() + 10
    while "succeeded" not in second_life() and time.monotonic() < logged_by:
        time.sleep(0.1)
    assert "scribes.generate.answer[" in second_life() and "succeeded" in second_life()
    assert f"{expected}/pool-generate.log\n" in scribes_up.output()
    assert "stopping everything" not in scribes_up.output()
    assert 1.0 <= restarted_after < 5, restarted_after
    print(f"restarted after {restarted_after:.1f} s, answered after {answered_after:.1f} s")


def test_ctrl_c_stops_everything_it_started(scribes_up: RunningUp) -> None:
    parent = psutil.Process(scribes_up.process.pid)
    started = parent.children(recursive=True)
    assert len(started) >= 6  # four pools, the API, Flower (and prefork children)
    scribes_up.process.send_signal(signal.SIGINT)
    assert scribes_up.process.wait(60) == 0
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, alive
    time.sleep(0.2)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{scribes_up.api_url}/healthz", timeout=2)
    # SIGTERM is the workers' soft shutdown (REMAP_SIGTERM=SIGQUIT), not a warm one that
    # would wait for running tasks without limit.
    for pool in ("embed", "index", "retrieve", "generate"):
        log = (scribes_up.data_dir / "logs" / f"pool-{pool}.log").read_text()
        assert "worker: Cold shutdown (MainProcess)" in log, pool
        assert "Warm shutdown" not in log, pool
