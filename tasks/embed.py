"""Queue `embed`: turn questions into vectors (CPU pool, model loaded once per process).

`scribes.embed.pending` is what the API schedules: it embeds every question waiting
(`rag.records.pending`) in batches and sends each job on to retrieve. `scribes.embed.query`
embeds one job (and whatever waits with it): the stall sweep sends it for a job that a lost
task left behind, and a question chain sent before the scheduled task existed has it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from celery.exceptions import Ignore

from rag.caches.vectors import QueryVectorCache
from rag.embedding import Embedder, encode_vectors
from rag.records.jobs import JobStore, Stage
from rag.records.pending import PendingQuestions, WaitingQuestion
from rag.services import process_services
from rag.telemetry.metrics import count_cache
from tasks.base import ScribesTask, scribes_task
from tasks.names import TaskName

__all__ = ["MAX_BATCHES", "embed_pending", "embed_query", "embed_question", "embed_waiting"]

# Batches one `scribes.embed.pending` task embeds before it hands the pool back.
MAX_BATCHES = 4
# A batch this large is a load: the model gets more threads for it (`_threads_for`).
BIG_BATCH = 4


def _threads_for(questions: int, batch_threads: int) -> int | None:
    """torch threads for a batch of `questions`: the process's own (one, by default) for a
    few, where a second thread only races the other pools for the cores;
    `SCRIBES_EMBEDDING_BATCH_THREADS` (2) for a big batch, since the question path then
    waits on the model (32 clients on the 2-core machine, a small cluster: 65 to 75
    questions/s). Several embed processes on one machine want 1: their threads spin
    against each other (bench scale_out: 0.34x of one process's rate with 2 each)."""
    if questions < BIG_BATCH:
        return None
    return min(batch_threads, os.cpu_count() or 1)


def embed_question(
    job_id: str,
    *,
    jobs: JobStore,
    pending: PendingQuestions,
    embedder: Embedder,
    batch_size: int,
    cache: QueryVectorCache | None = None,
    send_on: Callable[[list[WaitingQuestion]], None] | None = None,
    batch_threads: int = 1,
) -> bool:
    """Give the job its query vector; False when the job is not this delivery's to move.

    With `cache`, a question its tenant asked before (within the cache's 7 days) takes its
    vector from there, and only the others of the batch go to the model.

    With `send_on`, the other jobs of the batch are not left for their own embed tasks,
    which wait behind each other in the embed queue: their embed stage is recorded done
    here and `send_on` sends them to retrieve at once. Their own tasks then find them
    `handed_on` (or already further on) and stop. If this task dies first, those tasks
    take them on as before.
    """
    job = jobs.get(job_id)
    if job is None or job.handed_on:
        return False  # gone, or embedded with another job's batch and sent on by it
    if not jobs.start_stage(job_id, Stage.EMBED):
        return False  # finished, expired, or another delivery is already further on
    if job.query_vector is None:
        # Embed every question waiting now, ours first; their own tasks will find it done.
        batch = pending.take(job_id, limit=batch_size)
        _embed_batch(
            batch,
            pending=pending,
            embedder=embedder,
            batch_size=batch_size,
            cache=cache,
            batch_threads=batch_threads,
        )
        others = [waiting for waiting in batch if waiting.job_id != job_id]
        if send_on is not None and others:
            moved = set(jobs.embedded_elsewhere([waiting.job_id for waiting in others]))
            send_on([waiting for waiting in others if waiting.job_id in moved])
    jobs.finish_stage(job_id, Stage.EMBED)
    return True


def embed_waiting(
    *,
    jobs: JobStore,
    pending: PendingQuestions,
    embedder: Embedder,
    batch_size: int,
    send_on: Callable[[list[WaitingQuestion]], None],
    cache: QueryVectorCache | None = None,
    max_batches: int = MAX_BATCHES,
    batch_threads: int = 1,
) -> int:
    """Embed the questions waiting, a batch at a time, and send each job on to retrieve;
    how many it sent. At most `max_batches`: what is still waiting then is the caller's
    to schedule, so that one task never holds the pool for long.

    A batch is sent on from a thread of its own while the model embeds the next one: one
    embed process is the queue under load, and a publish per job is about a tenth of its
    time, spent by Python while the model's threads could already be at work. Every batch
    is sent before this returns (the task is acknowledged after), and a send that failed
    raises here, once the others are done."""
    pending.unschedule()
    sent = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scribes-send-on") as sender:
        sending: list[Future[None]] = []
        for _ in range(max_batches):
            taken_at = time.time()
            batch = pending.take(None, limit=batch_size)
            if not batch:
                break
            _embed_batch(
                batch,
                pending=pending,
                embedder=embedder,
                batch_size=batch_size,
                cache=cache,
                batch_threads=batch_threads,
            )
            moved = set(
                jobs.embedded_elsewhere([waiting.job_id for waiting in batch], started_at=taken_at)
            )
            sending.append(
                sender.submit(send_on, [waiting for waiting in batch if waiting.job_id in moved])
            )
            sent += len(moved)
        for future in sending:
            future.result()
    return sent


def _embed_batch(
    batch: list[WaitingQuestion],
    *,
    pending: PendingQuestions,
    embedder: Embedder,
    batch_size: int,
    cache: QueryVectorCache | None,
    batch_threads: int,
) -> None:
    """Attach a vector to each job of `batch`: from the cache where it has one, else from
    one call of the model for all the others."""
    readers = [w for w in batch if w.cache_mode.reads] if cache is not None else []
    found = dict(
        zip(
            readers,
            cache.get_many([(w.tenant, w.question) for w in readers]) if cache else [],
            strict=True,
        )
    )
    known = [found.get(waiting) for waiting in batch]
    unknown = [waiting for waiting, vector in zip(batch, known, strict=True) if vector is None]
    fresh = {
        waiting: encode_vectors(vector)
        for waiting, vector in zip(
            unknown,
            embedder.embed(
                [w.question for w in unknown],
                batch_size=batch_size,
                threads=_threads_for(len(unknown), batch_threads),
            )
            if unknown
            else [],
            strict=True,
        )
    }
    if cache is not None:
        hits = sum(vector is not None for vector in found.values())
        count_cache("embedding", hits=hits, misses=len(found) - hits)
        cache.put_many({(w.tenant, w.question): v for w, v in fresh.items() if w.cache_mode.writes})
    pending.attach(
        {
            waiting.job_id: vector or fresh[waiting]
            for waiting, vector in zip(batch, known, strict=True)
        },
        model=embedder.model_name,
    )


@scribes_task(TaskName.EMBED_PENDING, soft_time_limit=30, time_limit=60)
def embed_pending(self: ScribesTask) -> None:
    """What the API schedules: embed every question waiting and send each on to retrieve."""
    services = process_services()
    embedder = services.embedder()
    from tasks.pipeline import schedule_embedding, send_on_to_retrieve

    settings = services.settings
    embed_waiting(
        jobs=services.jobs,
        pending=services.pending,
        embedder=embedder,
        batch_size=settings.query_batch_size,
        cache=services.query_vectors(embedder.model_name),
        send_on=lambda waiting: send_on_to_retrieve(
            services.jobs, waiting, deadline_s=settings.job_deadline_s
        ),
        batch_threads=settings.embedding_batch_threads,
    )
    if services.pending.waiting():
        schedule_embedding(services.pending)


@scribes_task(TaskName.EMBED_QUERY, soft_time_limit=30, time_limit=60)
def embed_query(self: ScribesTask, *, job_id: str) -> None:
    services = process_services()
    # The live generation's model: during a reindex to another model, the one still live.
    embedder = services.embedder()
    # Imported here: the pipeline module imports this one to build the question's chain.
    from tasks.pipeline import send_on_to_retrieve

    settings = services.settings
    if not embed_question(
        job_id,
        jobs=services.jobs,
        pending=services.pending,
        embedder=embedder,
        batch_size=services.settings.query_batch_size,
        cache=services.query_vectors(embedder.model_name),
        send_on=lambda waiting: send_on_to_retrieve(
            services.jobs, waiting, deadline_s=settings.job_deadline_s
        ),
        batch_threads=settings.embedding_batch_threads,
    ):
        raise Ignore()
