"""Who used the machine's CPU while a benchmark ran: this run's processes, or someone else's.

On a shared 2-core machine another test run can halve every figure; this says when it did.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil

__all__ = ["DISTURBED_SHARE", "CpuShare", "cpu_share", "wait_until_quiet"]

_SAMPLE_S = 0.5
# Above this share of the machine used by outside processes, the figures are flagged.
DISTURBED_SHARE = 0.05


@dataclass
class CpuShare:
    wall_s: float = 0.0
    cores: int = 1
    ours_s: float = 0.0  # CPU seconds of this process and every process it started
    others_s: float = 0.0  # CPU seconds of everything else on the machine

    @property
    def capacity_s(self) -> float:
        return self.wall_s * self.cores

    @property
    def others_share(self) -> float:
        return self.others_s / self.capacity_s if self.capacity_s else 0.0

    def describe(self) -> str:
        line = (
            f"  machine: {self.cores} cores x {self.wall_s:.1f} s; this run's processes used "
            f"{self.ours_s:.1f} core-s ({self.ours_s / max(self.capacity_s, 1e-9):.0%}), "
            f"other processes {self.others_s:.1f} core-s ({self.others_share:.0%})"
        )
        if self.others_share > DISTURBED_SHARE:
            line += (
                "\n  WARNING: other processes were busy on this machine during this benchmark; "
                "its figures (and less so its ratios) are disturbed: rerun on a quiet machine"
            )
        return line

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall_s, 2),
            "cores": self.cores,
            "ours_core_s": round(self.ours_s, 2),
            "others_core_s": round(self.others_s, 2),
            "others_share": round(self.others_share, 3),
        }


def _busy_s() -> float:
    times = psutil.cpu_times()
    # guest time is already inside user time on Linux.
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - times.idle - getattr(times, "iowait", 0.0)


class _TreeSampler:
    """CPU seconds of this process and its descendants, sampled so that exited ones count."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-cpu-share", daemon=True)

    def _sample(self) -> dict[int, float]:
        seen: dict[int, float] = {}
        for process in [self._me, *self._me.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            seen[process.pid] = times.user + times.system
        return seen

    def start(self) -> None:
        self._start = self._sample()
        self._last = dict(self._start)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_S):
            self._last.update(self._sample())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._last.update(self._sample())
        # A process started during the window used all of its CPU inside it.
        return sum(cpu - self._start.get(pid, 0.0) for pid, cpu in self._last.items())


@contextmanager
def cpu_share() -> Iterator[CpuShare]:
    """Fills the yielded `CpuShare` when the block ends."""
    share = CpuShare(cores=os.cpu_count() or 1)
    sampler = _TreeSampler()
    busy_before = _busy_s()
    started = time.perf_counter()
    sampler.start()
    try:
        yield share
    finally:
        share.ours_s = sampler.stop()
        share.wall_s = time.perf_counter() - started
        share.others_s = max(0.0, _busy_s() - busy_before - share.ours_s)


def wait_until_quiet(max_wait_s: float, *, window_s: float = 5.0) -> CpuShare:
    """Wait, up to `max_wait_s`, for a `window_s` in which other processes stay nearly idle."""
    deadline = time.monotonic() + max_wait_s
    while True:
        with cpu_share() as window:
            time.sleep(window_s)
        if window.others_share <= DISTURBED_SHARE or time.monotonic() >= deadline:
            return window
