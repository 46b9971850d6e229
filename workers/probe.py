"""A worker's liveness file: touched by its heartbeat thread, checked by a probe that loads nothing.

`celery inspect ping` costs about 3 s of CPU per probe and fails whenever the broker does, so
an orchestrator using it restarts every worker during a Redis outage. Instead the heartbeat
thread in the worker's main process (`workers.lifecycle`) touches `SCRIBES_HEARTBEAT_FILE`
every 5 s, whether or not Redis answered, and

    python -m workers.probe FILE --max-age-s 30

exits 0 while the file was touched within the last 30 s, 1 otherwise. It imports nothing but
the standard library: its whole run is Python's start-up. The file is removed as the worker
starts and as it stops, so a restarted container is not taken for live on its predecessor's
file.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["clear_heartbeat", "heartbeat_age_s", "main", "probe_parser", "touch_heartbeat"]


def touch_heartbeat(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def clear_heartbeat(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def heartbeat_age_s(path: Path, now: float | None = None) -> float | None:
    """Seconds since the heartbeat file was touched; None when there is none."""
    try:
        touched = path.stat().st_mtime
    except FileNotFoundError:
        return None
    return max(0.0, (time.time() if now is None else now) - touched)


def probe_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workers.probe",
        description="Exit 0 if the worker touched its heartbeat file recently, 1 if not.",
    )
    parser.add_argument("file", type=Path, help="the worker's SCRIBES_HEARTBEAT_FILE")
    parser.add_argument(
        "--max-age-s", type=float, default=30.0, help="oldest beat still alive (default 30)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = probe_parser().parse_args(argv)
    age = heartbeat_age_s(args.file)
    if age is None:
        print(f"no heartbeat file at {args.file}: the worker has not started beating", flush=True)
        return 1
    if age > args.max_age_s:
        print(
            f"heartbeat {age:.0f} s old (limit {args.max_age_s:.0f} s): the worker's main "
            "process is stuck or gone",
            flush=True,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
