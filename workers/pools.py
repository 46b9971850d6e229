"""The four pools: what each consumes, how it runs, and the command that starts it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from tasks.names import QueueName

__all__ = ["POOLS", "PoolSpec", "worker_command"]


@dataclass(frozen=True, slots=True)
class PoolSpec:
    name: str
    queues: tuple[QueueName, ...]
    pool: Literal["prefork", "threads", "solo"]
    concurrency: int
    loads_model: bool
    owns_vector_store: bool
    description: str


POOLS: dict[str, PoolSpec] = {
    spec.name: spec
    for spec in (
        # CPU-bound: one process per core at most; prefork so a crashed child is replaced
        # and its task handed back, and so torch never shares a process with other work.
        PoolSpec(
            "embed",
            (QueueName.EMBED,),
            "prefork",
            1,
            True,
            False,
            "embeds questions on the CPU",
        ),
        PoolSpec(
            "index",
            (QueueName.INDEX,),
            "prefork",
            1,
            True,
            False,
            "chunks and embeds documents in batches, off the question path",
        ),
        # The embedded vector store allows one owner process: threads share it.
        PoolSpec(
            "retrieve",
            (QueueName.RETRIEVE,),
            "threads",
            8,
            False,
            True,
            "searches the vector store and applies writes to it",
        ),
        # Waits on the network: many threads, one process.
        PoolSpec(
            "generate",
            (QueueName.GENERATE,),
            "threads",
            16,
            False,
            False,
            "writes answers with Anthropic or the extractive writer",
        ),
    )
}


def worker_command(
    spec: PoolSpec, *, concurrency: int | None = None, loglevel: str = "INFO"
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks.app",
        "worker",
        "--queues",
        ",".join(queue.value for queue in spec.queues),
        "--pool",
        spec.pool,
        "--concurrency",
        str(concurrency or spec.concurrency),
        "--prefetch-multiplier",
        "1",
        "--hostname",
        f"{spec.name}@%h",
        "--loglevel",
        loglevel,
        "--task-events",
        "--without-mingle",
        "--without-gossip",
    ]
