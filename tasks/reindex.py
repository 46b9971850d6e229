"""A reindex: every chunk of the live generation into a new one, then one switch.

Two pools take turns, one batch at a time, and the run's record (`rag.reindex`) says where
they are, so that either may be killed at any moment and the run goes on from its batch:

- the store's owner (queue `retrieve`, `reindex_step`) reads a batch of chunks from the
  live generation and, where their vectors can be copied (same model), writes them to the
  new one at once; otherwise it parks the batch in Redis for
- the index pool (queue `index`, `reindex_embed`), which embeds the batch's texts with the
  new model (the chunk-vector cache first) and hands it back to be written.

After the last batch the store's owner copies again the documents written meanwhile,
builds Edge's HNSW index in a process of its own (the question path never waits on it),
checks the new generation, and switches. Questions are answered from the live generation
throughout; the old one is kept for `SCRIBES_REINDEX_RETAIN_S` so that a rollback is a
switch back.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from rag.embedding import load_embedder
from rag.indexing import embedded_text
from rag.ingest_pace import embed_yielding, index_pace
from rag.reindex import SINCE_SWITCH_KEY, Batch, Phase, ReindexRun, split_member
from rag.services import Services, process_services
from rag.store import VectorStore
from rag.store.generations import Generation, GenerationState
from rag.telemetry.metrics import count_reindexed
from rag.types import ChunkPoint
from tasks.base import REDIS_DOWN, ScribesTask, scribes_task
from tasks.names import TaskName

__all__ = [
    "Reindexer",
    "drop_generation",
    "reindex_embed",
    "reindex_prepare",
    "reindex_step",
    "requeue_stalled_reindex",
    "start_reindex",
    "start_rollback",
]

log = logging.getLogger(__name__)

# A step copies batches for this long, then hands its thread back to the questions.
STEP_BUDGET_S = 0.5
# With questions in flight, the next batch's step waits this long, leaving them the process.
YIELD_S = 0.05
# Documents written meanwhile, copied again per batch.
REDO_DOCUMENTS = 16
# Writes that raced the switch are copied across after this long: a store write that read
# the old generation as live takes milliseconds to finish.
SETTLE_AFTER_S = 0.5
# Chunks of each batch kept as probes for the check before the switch.
PROBES_PER_BATCH = 8
# Stored questions sampled, beside the chunks kept from the build, to compare searches.
QUESTION_PROBES = 32
# Share of probes whose top documents must agree between the generations (same model).
PROBE_AGREEMENT = 0.95
VERIFY_ATTEMPTS = 5
_NO_REVISION = 2**53  # above every revision: "all of the document's points"


def _send_step(run_id: str, seq: int, countdown: float = 0) -> None:
    reindex_step.apply_async(kwargs={"run_id": run_id, "seq": seq}, countdown=countdown)


def _send_embed(run_id: str, seq: int) -> None:
    reindex_embed.apply_async(kwargs={"run_id": run_id, "seq": seq})


def start_reindex(services: Services, *, model: str | None, tenant: str | None) -> ReindexRun:
    """Record a new run and hand it to the index pool; `ReindexBusy` if one is running."""
    live = services.live()
    runs = services.reindexes
    run = runs.start(
        ReindexRun(
            run_id=runs.new_id(),
            phase=Phase.PREPARE,
            source=live.number,
            model=model or live.model,
            tenant=tenant,
        )
    )
    reindex_prepare.apply_async(kwargs={"run_id": run.run_id})
    return run


def start_rollback(services: Services) -> ReindexRun:
    """Switch back to the generation the last switch retained, after copying into it the
    documents written since; `LookupError` if there is none to go back to."""
    generations = services.generations
    live = generations.live()
    now = time.time()
    kept = [
        g
        for g in generations.all()
        if g.state is GenerationState.RETAINED and (g.retained_until or 0) > now
    ]
    if not kept:
        raise LookupError(
            "no earlier generation is kept to roll back to (none was switched from, or its "
            "retention window ended)"
        )
    back = max(kept, key=lambda g: g.retained_until or 0)
    runs = services.reindexes
    run = runs.start(
        ReindexRun(
            run_id=runs.new_id(),
            kind="rollback",
            phase=Phase.CATCH_UP,
            source=live.number,
            target=back.number,
            model=back.model,
            dimension=back.dimension,
        ),
        redo=runs.since_switch(),
    )
    _send_step(run.run_id, run.seq)
    return run


class Reindexer:
    """What the tasks do, over one process's services."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.runs = services.reindexes
        self.generations = services.generations
        self.settings = services.settings

    def _current(self, run_id: str, seq: int | None = None) -> ReindexRun | None:
        run = self.runs.get()
        if run is None or run.run_id != run_id or not run.phase.active:
            return None
        if seq is not None and run.seq != seq:
            return None  # a delivery of a batch that was already written
        return run

    # The index pool ------------------------------------------------------------------

    def prepare(self, run_id: str) -> None:
        """Load the new model and make the generation it will fill."""
        run = self._current(run_id)
        if run is None or run.phase is not Phase.PREPARE:
            return
        try:
            embedder = load_embedder(
                run.model,
                threads=self.settings.embedding_threads,
                backend=self.settings.embedding_backend,
            )
        except Exception as exc:  # a missing or broken model: say so, change nothing
            self._end(run, Phase.FAILED, f"cannot load model {run.model!r}: {exc}")
            return
        target = self.generations.create(model=run.model, dimension=embedder.dimension)
        log.info(
            "reindex %s: building generation %d with %s (%d-d) from generation %d",
            run.run_id,
            target.number,
            run.model,
            target.dimension,
            run.source,
        )
        if self.runs.update(
            run,
            when=Phase.PREPARE,
            phase=Phase.BUILD,
            target=target.number,
            dimension=target.dimension,
        ):
            _send_step(run.run_id, run.seq)
        else:  # a second delivery got there first, or the run was cancelled meanwhile
            self.generations.save(replace(target, state=GenerationState.FAILED))

    def embed(self, run_id: str, seq: int) -> None:
        """Give the parked batch its vectors: from the chunk-vector cache of the new model,
        else from the model; then hand it back to be written."""
        run = self._current(run_id, seq)
        if run is None or run.target is None:
            return
        batch = self.runs.load_batch(run, seq)
        if batch is None or batch.ready:
            _send_step(run_id, seq)
            return
        target = self.generations.get(run.target)
        assert target is not None
        embedder = self.services.embedder(target)
        cache = self.services.chunk_vectors(target.model)
        pace = index_pace(self.settings, self.services.jobs)
        missing = [i for i, vector in enumerate(batch.vectors) if vector is None]
        by_tenant: dict[str, list[int]] = defaultdict(list)
        for i in missing:
            by_tenant[batch.points[i].payload.tenant].append(i)
        vectors: list[Any] = list(batch.vectors)
        embedded = cached = 0
        for tenant, indexes in by_tenant.items():
            texts = {
                i: embedded_text(batch.points[i].payload.title, batch.points[i].payload.text)
                for i in indexes
            }
            distinct = list(dict.fromkeys(texts.values()))
            # The tenant named for a fresh embedding gets one: no copy, no cached vector.
            reused = cache.get_many(tenant, distinct) if tenant != run.tenant else {}
            unknown = [text for text in distinct if text not in reused]
            # In steps, on every core while no question is in flight, on one while any is.
            fresh = dict(
                zip(
                    unknown,
                    embed_yielding(embedder, unknown, pace=pace) if unknown else [],
                    strict=True,
                )
            )
            cache.put_many(tenant, fresh, reused=list(reused))
            known = reused | fresh
            for i, text in texts.items():
                vectors[i] = known[text]
            embedded += len(fresh)
            cached += len(texts) - len(fresh)
        done = replace(
            batch,
            vectors=tuple(vectors),
            embedded=batch.embedded + embedded,
            cached=batch.cached + cached,
        )
        self.runs.save_batch(run, seq, done, target.dimension)
        _send_step(run_id, seq)

    # The store's owner ---------------------------------------------------------------

    def step(self, run_id: str, seq: int) -> None:
        run = self._current(run_id, seq)
        if run is None or run.target is None:
            return
        if run.cancel and run.phase is not Phase.SETTLE:
            self._end(run, Phase.CANCELLED, None)
            return
        source_generation = self.generations.get(run.source)
        target_generation = self.generations.get(run.target)
        if source_generation is None or target_generation is None:
            self._end(run, Phase.FAILED, "a generation of the run has no record")
            return
        source = self.services.vector_store(source_generation)
        target = self.services.vector_store(target_generation)
        copyable = source_generation.model == target_generation.model

        batch = self.runs.load_batch(run, seq)
        if batch is not None:
            if not batch.ready:
                _send_embed(run_id, seq)
                return
            advanced = self._write(run, batch, target)
            if advanced is None:
                return
            run = advanced
        if run.phase is Phase.BUILD and run.seq == 0 and run.cursor is None and not run.total:
            total = source.count()
            self.runs.update(run, total=total)
            run = replace(run, total=total)

        deadline = time.monotonic() + STEP_BUDGET_S
        questions_waiting = index_pace(self.settings, self.services.jobs).questions_waiting
        while True:
            fresh = self._current(run_id, run.seq)
            if fresh is None:
                return
            run = fresh
            if run.cancel and run.phase is not Phase.SETTLE:
                self._end(run, Phase.CANCELLED, None)
                return
            phase = run.phase
            if phase is Phase.BUILD:
                points, following = source.scroll(
                    after=run.cursor, limit=self.settings.reindex_batch_size, with_vectors=copyable
                )
                if not points:
                    self.runs.update(run, when=Phase.BUILD, phase=Phase.CATCH_UP)
                    continue
                batch = self._batch(run, points, copyable, next_cursor=following)
            elif phase in (Phase.CATCH_UP, Phase.SETTLE):
                members = self.runs.redo_peek(REDO_DOCUMENTS)
                if not members:
                    if phase is Phase.SETTLE:
                        self._end(run, Phase.DONE, None)
                        return
                    following_phase = (
                        Phase.OPTIMIZE
                        if self.settings.qdrant_url is None and run.kind == "reindex"
                        else Phase.VERIFY
                    )
                    self.runs.update(run, when=phase, phase=following_phase)
                    continue
                batch = self._redo_batch(run, source, members, copyable)
            elif phase is Phase.OPTIMIZE:
                self._optimize(run, target_generation)
                _send_step(run_id, run.seq)
                return
            elif phase is Phase.VERIFY:
                countdown = self._verify(run, source, target, source_generation, target_generation)
                if countdown is not None:
                    _send_step(run_id, run.seq, countdown=countdown)
                    return
                continue
            elif phase is Phase.SWITCH:
                self._switch(run, source_generation, target_generation)
                _send_step(run_id, run.seq, countdown=SETTLE_AFTER_S)
                return
            else:
                return
            if not batch.ready:
                self.runs.save_batch(run, run.seq, batch, target_generation.dimension)
                _send_embed(run_id, run.seq)
                return
            advanced = self._write(run, batch, target)
            if advanced is None:
                return
            run = advanced
            # Copying holds the GIL in stretches of milliseconds: with questions in flight,
            # one batch a task, so that their searches get this process between batches.
            busy = questions_waiting()
            if busy or time.monotonic() > deadline:
                _send_step(run_id, run.seq, countdown=YIELD_S if busy else 0)
                return

    def _batch(
        self,
        run: ReindexRun,
        points: Sequence[ChunkPoint],
        copyable: bool,
        *,
        next_cursor: str | None = None,
        documents: Sequence[str] = (),
    ) -> Batch:
        """Chunks read from the live generation; their vectors where they can be copied."""
        vectors = tuple(
            np.asarray(p.vector, dtype=np.float32)
            if copyable and p.vector and p.payload.tenant != run.tenant
            else None
            for p in points
        )
        if not documents and copyable:
            # A few chunks of every batch, spread over it, to search both generations with.
            step = max(1, len(points) // PROBES_PER_BATCH)
            self.runs.keep_probes(
                [(p.payload.tenant, np.asarray(p.vector, np.float32)) for p in points[::step]]
            )
        self.runs.note_tenants(p.payload.tenant for p in points)
        return Batch(
            points=tuple(replace(p, vector=()) for p in points),
            vectors=vectors,
            next_cursor=next_cursor,
            documents=tuple(documents),
            copied=sum(v is not None for v in vectors),
        )

    def _redo_batch(
        self, run: ReindexRun, source: VectorStore, members: Sequence[str], copyable: bool
    ) -> Batch:
        """Every chunk the live generation holds now of documents written meanwhile."""
        by_tenant: dict[str, list[str]] = defaultdict(list)
        for member in members:
            tenant, document_id = split_member(member)
            by_tenant[tenant].append(document_id)
        points: list[ChunkPoint] = []
        for tenant, document_ids in by_tenant.items():
            after: str | None = None
            while True:
                page, after = source.scroll(
                    after=after,
                    limit=self.settings.reindex_batch_size,
                    with_vectors=copyable,
                    tenant=tenant,
                    document_ids=document_ids,
                )
                points.extend(page)
                if after is None:
                    break
        return self._batch(run, points, copyable, documents=members)

    def _write(self, run: ReindexRun, batch: Batch, target: VectorStore) -> ReindexRun | None:
        """Write a ready batch to the new generation and move the run on, once; the run
        as moved on, or None if another delivery had moved it."""
        documents = self.services.documents
        wanted: dict[str, set[str]] = defaultdict(set)
        for point in batch.points:
            wanted[point.payload.tenant].add(point.payload.document_id)
        for member in batch.documents:
            tenant, document_id = split_member(member)
            wanted[tenant].add(document_id)
        live: dict[tuple[str, str], int | None] = {}
        for tenant, document_ids in wanted.items():
            for document_id, revision in documents.live_revisions(
                tenant, sorted(document_ids)
            ).items():
                live[(tenant, document_id)] = revision
        # Only the revision each document has now: an older one still in the live store
        # (being replaced as we read) is left out, and its document is copied again.
        keep = [
            point
            for point in batch.with_points()
            if live.get((point.payload.tenant, point.payload.document_id)) == point.payload.revision
        ]
        target.upsert(keep)
        for member in batch.documents:
            tenant, document_id = split_member(member)
            revision = live.get((tenant, document_id))
            target.delete_revisions(
                tenant=tenant,
                document_id=document_id,
                up_to_revision=_NO_REVISION if revision is None else revision - 1,
            )
        scrolled = 0 if batch.documents else len(batch.points)
        counts = {
            "done": scrolled,
            "copied": batch.copied,
            "embedded": batch.embedded,
            "cached": batch.cached,
        }
        values: dict[str, Any] = {}
        if not batch.documents:
            values["cursor"] = batch.next_cursor
            if batch.next_cursor is None:  # the last page of the live generation
                values["phase"] = Phase.CATCH_UP
        if not self.runs.advance(run, counts=counts, **values):
            return None
        self.runs.drop_batch(run, run.seq)
        self.runs.redo_done(batch.documents)
        count_reindexed(copied=batch.copied, embedded=batch.embedded, cached=batch.cached)
        return replace(
            run,
            seq=run.seq + 1,
            done=run.done + scrolled,
            copied=run.copied + batch.copied,
            embedded=run.embedded + batch.embedded,
            cached=run.cached + batch.cached,
            cursor=values.get("cursor", run.cursor),
            phase=values.get("phase", run.phase),
        )

    def _optimize(self, run: ReindexRun, target: Generation) -> None:
        """Build the new shard's HNSW index in a process of its own: it holds the GIL for
        seconds, which in this process would stall every search."""
        from rag.store.optimize import optimize_shard_offline

        self.runs.touch(run)  # the watchdog's clock starts again
        self.services.release(target)
        report = optimize_shard_offline(
            target.edge_dir(self.settings), target.dimension, timeout_s=3600
        )
        log.info(
            "reindex %s: optimised generation %d in %.1f s",
            run.run_id,
            target.number,
            report.total_s,
        )
        checks = {**run.checks, "optimize_s": round(report.total_s, 2)}
        self.runs.update(run, when=Phase.OPTIMIZE, phase=Phase.VERIFY, checks=checks)

    def _verify(
        self,
        run: ReindexRun,
        source: VectorStore,
        target: VectorStore,
        source_generation: Generation,
        target_generation: Generation,
    ) -> float | None:
        """Move the run on to the switch if the new generation holds what the live one
        does; None when it moved on (or ended), else when to look again."""
        tenants = set(self.runs.tenants())
        differ = {
            tenant: [a, b]
            for tenant in sorted(tenants)
            if (a := source.count(tenant=tenant)) != (b := target.count(tenant=tenant))
        }
        totals = [source.count(), target.count()]
        checks: dict[str, Any] = {**run.checks, "chunks": totals[0], "tenants": len(tenants)}
        if differ or totals[0] != totals[1]:
            if self.runs.redo_size():
                self.runs.update(run, when=Phase.VERIFY, phase=Phase.CATCH_UP)
                return 0.0
            attempts = int(checks.get("verify_attempts", 0)) + 1
            checks["verify_attempts"] = attempts
            if attempts < VERIFY_ATTEMPTS:
                self.runs.update(run, when=Phase.VERIFY, checks=checks)
                return 1.0
            self._end(
                run,
                Phase.FAILED,
                f"chunk counts differ (live, new): {totals} in all, by tenant {differ}",
            )
            return None
        if source_generation.model == target_generation.model and run.kind == "reindex":
            probes: list[tuple[str, Any]] = list(self.runs.probes())
            try:
                probes += self.services.question_index(source_generation).sample(
                    limit=QUESTION_PROBES
                )
            except Exception:  # the question index is a cache: no questions, no probes
                log.warning("reindex %s: stored questions not sampled", run.run_id, exc_info=True)
            agreed = sum(
                _same_finds(
                    _top_documents(source, tenant, vector), _top_documents(target, tenant, vector)
                )
                for tenant, vector in probes
            )
            checks["probes"] = len(probes)
            checks["probes_agreeing"] = agreed
            if probes and agreed < PROBE_AGREEMENT * len(probes):
                self._end(
                    run,
                    Phase.FAILED,
                    f"only {agreed} of {len(probes)} probes found the same top documents in "
                    "the new generation; the live one is kept",
                )
                return None
        self.runs.update(run, when=Phase.VERIFY, phase=Phase.SWITCH, checks=checks)
        return None

    def _switch(self, run: ReindexRun, source: Generation, target: Generation) -> None:
        settings = self.settings
        retained = self.generations.switch(
            target,
            retain_s=settings.reindex_retain_s,
            expect=source.number,
            clear=SINCE_SWITCH_KEY,
        )
        if retained is None:
            self._end(run, Phase.FAILED, "the live generation changed under the reindex")
            return
        self.runs.keeping(retained.retained_until or 0)
        log.info(
            "reindex %s: generation %d is live (%s); generation %d kept until %s",
            run.run_id,
            target.number,
            target.model,
            retained.number,
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(retained.retained_until or 0)),
        )
        store = self.services.vector_store(target)
        point_alias = getattr(store, "point_alias", None)
        if settings.qdrant_url and point_alias is not None:
            point_alias(settings.qdrant_live_alias)
        # One generation is kept for a rollback: the one just switched from.
        for generation in self.generations.all():
            if (
                generation.state is GenerationState.RETAINED
                and generation.number != retained.number
            ):
                drop_generation(self.services, generation)
        self.runs.update(
            run,
            when=Phase.SWITCH,
            phase=Phase.SETTLE,
            checks={**run.checks, "switched_at": time.time()},
        )

    def _end(self, run: ReindexRun, phase: Phase, error: str | None) -> None:
        """Finish the run; a build that did not switch leaves nothing behind."""
        if phase is not Phase.DONE and run.kind == "reindex" and run.target is not None:
            target = self.generations.get(run.target)
            if target is not None and target.state is GenerationState.BUILDING:
                self.services.release(target, drop=True)
                self.generations.save(replace(target, state=GenerationState.FAILED))
        if error:
            log.warning("reindex %s %s: %s", run.run_id, phase.value, error)
        else:
            log.info("reindex %s %s", run.run_id, phase.value)
        self.runs.update(run, phase=phase, finished_at=time.time(), error=error)
        self.runs.drop_batches(run)


def _top_documents(store: VectorStore, tenant: str, vector: Any) -> list[str]:
    found = store.search(tenant=tenant, vector=vector, limit=5)
    return list(dict.fromkeys(hit.payload.document_id for hit in found))


def _same_finds(live: list[str], new: list[str]) -> bool:
    """The same best document, or the same documents in another order: an HNSW index may
    order chunks of nearly equal scores otherwise than an exhaustive search."""
    return live[:1] == new[:1] or set(live) == set(new)


def drop_generation(services: Services, generation: Generation) -> None:
    """Delete a generation's chunks and questions; run by the store's owner."""
    services.release(generation, drop=True)
    services.generations.save(replace(generation, state=GenerationState.DROPPED))
    log.info("dropped generation %d of the store (%s)", generation.number, generation.model)


def requeue_stalled_reindex(services: Services, *, stall_s: float) -> bool:
    """The backstop for a run whose next message was lost: send it again. Also ask the
    store's owner to drop generations kept past their window. True if a run was resent."""
    now = time.time()
    run = services.reindexes.get()
    busy = run is not None and run.phase.active
    for generation in services.generations.all():
        expired = (
            generation.state is GenerationState.RETAINED
            and (generation.retained_until or now) < now
        )
        building_it = busy and run is not None and run.target == generation.number
        # Sent once a minute at most, however many heartbeats pass before it is done.
        if (
            expired
            and not building_it
            and services.redis.set(f"scribes:reindex:drop:{generation.number}", 1, nx=True, ex=60)
        ):
            reindex_drop.apply_async(kwargs={"number": generation.number})
    if run is None or not busy or now - run.updated_at < stall_s:
        return False
    log.warning("reindex %s stalled in %s; sending batch %d again", run.run_id, run.phase, run.seq)
    services.reindexes.touch(run)
    if run.phase is Phase.PREPARE:
        reindex_prepare.apply_async(kwargs={"run_id": run.run_id})
    else:
        _send_step(run.run_id, run.seq)
    return True


def _guarded(task: ScribesTask, run_id: str, work: Any) -> None:
    """Run `work`; an error is retried three times, then ends the run as failed."""
    try:
        work()
    except REDIS_DOWN:
        raise
    except Exception as exc:
        if task.request.retries < 3:
            raise task.retry(exc=exc, countdown=2.0 ** (task.request.retries + 1)) from exc
        services = process_services()
        run = services.reindexes.get()
        if run is not None and run.run_id == run_id and run.phase.active:
            Reindexer(services)._end(run, Phase.FAILED, f"{type(exc).__name__}: {exc}")
        raise


@scribes_task(TaskName.REINDEX_PREPARE, soft_time_limit=600, time_limit=660, max_retries=3)
def reindex_prepare(self: ScribesTask, *, run_id: str) -> None:
    _guarded(self, run_id, lambda: Reindexer(process_services()).prepare(run_id))


@scribes_task(TaskName.REINDEX_EMBED, soft_time_limit=600, time_limit=660, max_retries=3)
def reindex_embed(self: ScribesTask, *, run_id: str, seq: int) -> None:
    _guarded(self, run_id, lambda: Reindexer(process_services()).embed(run_id, seq))


# Long: the step that builds Edge's index waits on that process (minutes at 100k chunks).
@scribes_task(TaskName.REINDEX_STEP, soft_time_limit=3600, time_limit=3660, max_retries=3)
def reindex_step(self: ScribesTask, *, run_id: str, seq: int) -> None:
    _guarded(self, run_id, lambda: Reindexer(process_services()).step(run_id, seq))


@scribes_task(TaskName.REINDEX_DROP, soft_time_limit=600, time_limit=660, retry_errors=True)
def reindex_drop(self: ScribesTask, *, number: int) -> None:
    services = process_services()
    generation = services.generations.get(number)
    if generation is None or generation.state is not GenerationState.RETAINED:
        return
    if (generation.retained_until or 0) > time.time():
        return
    drop_generation(services, generation)
