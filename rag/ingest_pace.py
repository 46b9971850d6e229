"""Embedding many chunks at the speed of the CPU, while making way for questions.

Batch embedding (the index pool's notes, a reindex) goes in steps of
`SCRIBES_INDEX_STEP_CHUNKS` chunks. Before each step it looks whether any question is in
flight (one ZCOUNT of the unfinished jobs in Redis, so it reads the same with a Redis or a
RabbitMQ broker): none, and torch runs the step on every core (`SCRIBES_INDEX_THREADS`);
any, and on one thread. A question that arrives mid-step therefore waits at most for that
step before the index work shrinks to one core; the index pool also runs at a lower CPU
priority (`workers.pools`), so the scheduler hands the question's processes the cores first
even within the step.

The texts are embedded longest first, as `SentenceTransformer.encode` orders one call's
texts, so that each step pads its texts to about the same length.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rag.embedding import Embedder, Vectors
from rag.records.jobs import JobStore
from rag.settings import Settings
from rag.telemetry.metrics import INDEX_EMBEDDED_CHUNKS

__all__ = ["IndexPace", "available_cores", "embed_yielding", "index_pace"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IndexPace:
    """How batch embedding shares the CPU: threads when idle, when questions wait, step size."""

    questions_waiting: Callable[[], bool]
    idle_threads: int
    busy_threads: int = 1
    step: int = 32

    def threads_now(self) -> int:
        try:
            waiting = self.questions_waiting()
        except Exception:  # cannot tell: make way, as if questions waited
            log.warning(
                "cannot tell whether questions wait; embedding on %d thread(s)",
                self.busy_threads,
                exc_info=True,
            )
            waiting = True
        return self.busy_threads if waiting else self.idle_threads


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), not merely the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def index_pace(settings: Settings, jobs: JobStore) -> IndexPace:
    """The pace the settings ask for; a question counts as waiting from its submission until
    it finishes (a job lost for longer than the deadline no longer counts)."""
    window_s = settings.job_deadline_s

    def questions_waiting() -> bool:
        return jobs.unfinished_since(time.time() - window_s) > 0

    return IndexPace(
        questions_waiting,
        idle_threads=settings.index_threads or available_cores(),
        step=settings.index_step_chunks,
    )


def embed_yielding(
    embedder: Embedder,
    texts: Sequence[str],
    *,
    pace: IndexPace,
    on_step: Callable[[int], None] | None = None,
) -> Vectors:
    """`embedder.embed(texts)`, in steps of `pace.step` texts, each on as many torch threads
    as `pace` allows at its start; one row per text, in the order given. `on_step` hears how
    many texts each step embedded, after it."""
    vectors = np.zeros((len(texts), embedder.dimension), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda row: -len(texts[row]))
    for start in range(0, len(order), pace.step):
        rows = order[start : start + pace.step]
        threads = pace.threads_now()
        vectors[rows] = embedder.embed(
            [texts[row] for row in rows], batch_size=len(rows), threads=threads
        )
        INDEX_EMBEDDED_CHUNKS.labels(str(threads)).inc(len(rows))
        if on_step is not None:
            on_step(len(rows))
    return vectors
