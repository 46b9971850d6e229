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
    description: str
    loads_model: bool = False
    owns_vector_store: bool = False
    writes_answers: bool = False
    # Added to the niceness of the processes that run the tasks: batch work gives way to
    # questions on the CPU at once, and still has every core when nothing else runs.
    nice: int = 0


POOLS: dict[str, PoolSpec] = {
    spec.name: spec
    for spec in (
        # CPU-bound: one process per core at most; prefork so a crashed child is replaced
        # and its task handed back, and so torch never shares a process with other work.
        PoolSpec(
            name="embed",
            queues=(QueueName.EMBED,),
            pool="prefork",
            concurrency=1,
            loads_model=True,
            description="embeds questions on the CPU",
        ),
        PoolSpec(
            name="index",
            queues=(QueueName.INDEX,),
            pool="prefork",
            concurrency=1,
            loads_model=True,
            nice=10,
            description="chunks and embeds documents in batches, off the question path",
        ),
        # The embedded vector store allows one owner process: threads share it.
        PoolSpec(
            name="retrieve",
            queues=(QueueName.RETRIEVE,),
            pool="threads",
            concurrency=8,
            owns_vector_store=True,
            description="searches the vector store and applies writes to it",
        ),
        # Waits on the network: many threads, one process. Webhook deliveries wait on the
        # network too (10 s at most each), so they share these threads rather than start a
        # process of their own; their own queue keeps them apart in the broker.
        PoolSpec(
            name="generate",
            queues=(QueueName.GENERATE, QueueName.WEBHOOK),
            pool="threads",
            concurrency=16,
            writes_answers=True,
            description="writes answers with Anthropic or the extractive writer; delivers webhooks",
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
        "workers.app",
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
        "--without-mingle",
        "--without-gossip",
    ]
