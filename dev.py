#!/usr/bin/env python3
"""Set up and run Scribes with nothing but Python 3.11+: `python3 dev.py run | test`.

Creates `.venv` beside this file on first use and installs what the project needs into it
(torch first, pinned; TORCH_INDEX_URL picks the index it comes from, e.g. a CPU-only
one), then runs the command.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".scribes-installed"
TORCH = "torch==2.13.0"  # pinned: an unpinned torch pulls a multi-gigabyte CUDA build
DEMO_QUESTION = "Why was it undignified for the father to run to the prodigal son?"


def _requirements_hash() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH.encode()).hexdigest()


def ensure_environment() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036  (dev.py runs before the venv exists)
        sys.exit(f"dev.py: Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    if STAMP.exists() and STAMP.read_text() == _requirements_hash():
        return
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", flush=True)
        venv.create(VENV, with_pip=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    torch_index = os.environ.get("TORCH_INDEX_URL")
    print(f"dev.py: installing {TORCH} and the project into .venv (once)", flush=True)
    subprocess.run(
        [*pip, TORCH, *(["--index-url", torch_index] if torch_index else [])], check=True
    )
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(_requirements_hash())


def run(*args: str) -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.call([str(BIN / "scribes"), "up", "--ask", DEMO_QUESTION, *args], env=env)


def test(*args: str) -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # The monitoring tests run a real Prometheus: installed here once if missing (as root,
    # with apt-get), else they skip. It prints one line either way and never fails the run.
    subprocess.call([str(BIN / "python"), "-m", "tests.prometheus"], cwd=ROOT, env=env)
    steps = [
        [str(BIN / "ruff"), "check", "."],
        [str(BIN / "ruff"), "format", "--check", "."],
        [str(BIN / "mypy")],
        [str(BIN / "python"), "-m", "pytest", *args],
    ]
    for step in steps:
        print(
            f"dev.py: {' '.join(Path(step[0]).name if i == 0 else s for i, s in enumerate(step))}",
            flush=True,
        )
        code = subprocess.call(step, cwd=ROOT, env=env)
        if code != 0:
            return code
    return 0


def main() -> int:
    commands = {"run": run, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(
            "usage: python3 dev.py run [scribes up options] | test [pytest options]",
            file=sys.stderr,
        )
        return 2
    ensure_environment()
    return commands[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
