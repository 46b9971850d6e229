"""Qdrant Edge's `optimize()` (the HNSW build) in a process of its own, off the question path.

`EdgeShard.optimize()` holds the GIL for its whole run (9.6 s at 20k points, see
`rag.store.edge`), so in a pool's process it would stall every thread of it. Run in a child
process it stalls none of the caller's threads: the caller only waits on a pipe. The child
also lowers its own CPU priority, so that on a small machine the question path's processes
keep the cores first.

One owner per shard: the caller closes its own handle on the shard before, and opens it
again after; the child's `EdgeShard.load` fails while another handle is open. What the
reindex job does: build a new shard, close it, optimize it here, then switch to it.

A child killed mid-build (the timeout) loses no point: the engine builds the indexed segment
beside the old one and swaps only when it is done. Checked at 9k points, killed after 2 s
and again after 4 s: every point still there, searched exhaustively, one empty segment
left beside them, and the next `optimize()` built the index as if nothing had happened.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qdrant_edge import CountRequest, UpdateOperation

import rag
from rag.store.base import VectorStoreError
from rag.store.edge import _open_shard, _payload_indexes

__all__ = ["OptimizeReport", "optimize_shard_offline"]

# Below the question path's processes, which run at 0; a nice level is a share, not a gate.
CHILD_NICENESS = 10
_REPORT_PREFIX = "optimize-report "


@dataclass(frozen=True, slots=True)
class OptimizeReport:
    path: Path
    changed: bool  # False: no segment had passed the indexing threshold, nothing was built
    points: int
    indexed_vectors: int  # vectors inside an HNSW index after the run
    optimize_s: float  # the engine's optimize() and the flush after it
    total_s: float  # as the caller waited: the child's start and the shard's load included


def optimize_shard_offline(path: Path, dimension: int, *, timeout_s: float) -> OptimizeReport:
    """Build the HNSW index of the closed chunks' shard at `path` in a child process.

    Raises `VectorStoreError` when `path` holds no shard, when the shard is still open
    elsewhere, or when the build does not end within `timeout_s` (the child is then killed;
    the shard keeps every point, unindexed).
    """
    _require_shard(path)
    # The child imports this very package, wherever it was imported from here.
    package_root = str(Path(rag.__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "rag.store.optimize", str(path), str(dimension)]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise VectorStoreError(
            f"optimizing the Qdrant Edge shard at {path} took longer than {timeout_s:.0f} s and "
            "was stopped; it keeps every point but is searched exhaustively until optimized: give "
            "it a longer timeout"
        ) from exc
    total_s = time.perf_counter() - started
    report = _parse_report(done.stdout)
    if done.returncode != 0 or report is None:
        error = (done.stderr.strip().splitlines() or ["no output"])[-1]
        if "WouldBlock" in done.stderr or "open in another process" in done.stderr:
            raise VectorStoreError(
                f"the Qdrant Edge shard at {path} is still open; close every handle on it "
                "before optimizing it offline"
            )
        raise VectorStoreError(
            f"optimizing the Qdrant Edge shard at {path} failed (exit {done.returncode}): {error}"
        )
    return OptimizeReport(
        path=path,
        changed=bool(report["changed"]),
        points=int(report["points"]),
        indexed_vectors=int(report["indexed_vectors"]),
        optimize_s=float(report["optimize_s"]),
        total_s=total_s,
    )


def _require_shard(path: Path) -> None:
    # `_open_shard` would create an empty shard where there is none.
    if not (path / "edge_config.json").is_file():
        raise VectorStoreError(f"no Qdrant Edge shard at {path} to optimize")


def _parse_report(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(_REPORT_PREFIX):
            parsed = json.loads(line.removeprefix(_REPORT_PREFIX))
            return parsed if isinstance(parsed, dict) else None
    return None


def optimize_shard_here(path: Path, dimension: int) -> OptimizeReport:
    """What the child runs: load the shard as `EdgeVectorStore` does, optimize, flush, close."""
    _require_shard(path)
    started = time.perf_counter()
    shard = _open_shard(path, dimension)
    try:
        # The build reads the payload indexes (the tenant one above all), so make sure of them.
        existing = shard.info().payload_schema
        for field, schema in _payload_indexes().items():
            if field not in existing:
                shard.update(UpdateOperation.create_field_index(field, schema))
        optimizing = time.perf_counter()
        changed = shard.optimize()
        shard.flush()
        optimize_s = time.perf_counter() - optimizing
        info = shard.info()
        points = shard.count(CountRequest(exact=True))
    finally:
        shard.close()
    return OptimizeReport(
        path=path,
        changed=changed,
        points=points,
        indexed_vectors=info.indexed_vectors_count,
        optimize_s=optimize_s,
        total_s=time.perf_counter() - started,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rag.store.optimize",
        description="Build the HNSW index of a closed Qdrant Edge chunks' shard and close it; "
        "prints one JSON report line.",
    )
    parser.add_argument("path", type=Path, help="the shard's directory")
    parser.add_argument("dimension", type=int, help="the shard's vector size")
    args = parser.parse_args(argv)
    os.nice(CHILD_NICENESS)
    report = optimize_shard_here(args.path, args.dimension)
    fields = asdict(report)
    fields["path"] = str(report.path)
    print(_REPORT_PREFIX + json.dumps(fields), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
