"""`scribes up`, `ask`, `ingest` and `status` run as a person runs them, as processes."""

from __future__ import annotations

import os
import signal
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

from scribes.supervisor import free_port
from tests.cluster import running_redis

SCRIBES = [sys.executable, "-m", "scribes.cli"]
QUESTION = "Why was it undignified for the father to run to the prodigal son?"


@dataclass
class RunningUp:
    process: subprocess.Popen[str]
    api_url: str
    flower_url: str
    env: dict[str, str]
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
            SCRIBES_API_URL=f"http://127.0.0.1:{port}",
            HF_HUB_OFFLINE="1",
        )
        process = subprocess.Popen(
            [
                *SCRIBES,
                "up",
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
            process, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{flower_port}", env
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


def test_flower_and_readiness_answer(scribes_up: RunningUp) -> None:
    assert httpx.get(f"{scribes_up.api_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{scribes_up.api_url}/readyz").json()
    # Readiness is the API's own: Redis and the broker, never the pools.
    assert ready == {"status": "ready", "checks": {"redis": True, "broker": True}}
    status = httpx.get(f"{scribes_up.api_url}/v1/status").json()
    assert status["status"] == "ok"
    assert {"pool:embed", "pool:retrieve", "pool:generate", "pool:index", "vector_store"} <= set(
        status["checks"]
    )
    assert httpx.get(scribes_up.flower_url, follow_redirects=True, timeout=10).status_code == 200
    printed = _scribes("status", env=scribes_up.env)
    assert printed.returncode == 0 and "ok   pool:embed (1 processes)" in printed.stdout


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
