"""Rendering `/metrics`: every process of this host, plus the series read at scrape time.

With `PROMETHEUS_MULTIPROC_DIR` set, each process (prefork children too) writes its values
to files in that directory and a scrape adds them up; without it, this process's own
registry is served. The directory is per host and is wiped when the host's processes
start (`prepare_multiprocess_dir`), so counters start at zero with them, as Prometheus's
`rate()` expects of a restart.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE_LATEST",
    "MULTIPROC_ENV",
    "mark_process_dead",
    "prepare_multiprocess_dir",
    "render_metrics",
    "scrape_registry",
]

# prometheus-client itself reads this variable in every process, so it is read here too,
# not through the settings.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(path: Path) -> Path:
    """An empty metrics directory for a host's processes about to start."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def mark_process_dead(pid: int, directory: Path | None = None) -> None:
    """Drop a dead process's live gauges (its counters stay, summed into the host's)."""
    path = directory or os.environ.get(MULTIPROC_ENV)
    if path:
        multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


class _ProcessRegistry(Collector):
    """This process's default registry, for a host without a multiprocess directory."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def scrape_registry(
    extra: Iterable[Collector] = (), *, processes: bool = True
) -> CollectorRegistry:
    """A registry for one scrape target: the host's processes (unless `processes` is
    False), then `extra` collectors."""
    registry = CollectorRegistry(auto_describe=False)
    directory = os.environ.get(MULTIPROC_ENV)
    if not processes:
        pass
    elif directory:
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ProcessRegistry())
    for collector in extra:
        registry.register(collector)
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
