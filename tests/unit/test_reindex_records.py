"""The records a reindex keeps in Redis: generations and their switch, the run and its
batches. A real redis-server, as everywhere."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from redis import Redis

from rag.reindex import Batch, Phase, ReindexBusy, Reindexes, ReindexRun
from rag.store.generations import Generations, GenerationState
from rag.types import ChunkPayload, ChunkPoint


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url.rsplit("/", 1)[0] + "/6", decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_a_switch_makes_the_new_generation_live_and_keeps_the_old_once(redis: Redis) -> None:
    generations = Generations(redis, model="all-MiniLM-L6-v2", dimension=384)
    first = generations.live()
    assert (first.number, first.model, first.dimension) == (1, "all-MiniLM-L6-v2", 384)
    built = generations.create(model="/models/small", dimension=128)
    assert built.number == 2 and built.state is GenerationState.BUILDING
    assert generations.live() == first  # building changes nothing yet

    redis.sadd("since", "a")
    kept = generations.switch(built, retain_s=60, expect=1, clear="since")
    assert kept is not None and kept.number == 1 and kept.state is GenerationState.RETAINED
    assert kept.retained_until is not None and kept.retained_until > time.time() + 50
    live = generations.live()
    assert (live.number, live.model, live.dimension) == (2, "/models/small", 128)
    assert not redis.exists("since")
    # A second switch that expected generation 1 lost the race: nothing moves.
    assert generations.switch(built, retain_s=60, expect=1) is None
    assert [(g.number, g.state) for g in generations.all()] == [
        (1, GenerationState.RETAINED),
        (2, GenerationState.LIVE),
    ]
    # Numbers are never reused.
    assert generations.create(model="m", dimension=8).number == 3


def _run(runs: Reindexes, **values: object) -> ReindexRun:
    return ReindexRun(run_id=runs.new_id(), phase=Phase.BUILD, source=1, model="m", **values)  # type: ignore[arg-type]


def test_one_run_at_a_time_and_a_busy_start_touches_nothing(redis: Redis) -> None:
    runs = Reindexes(redis)
    first = runs.start(_run(runs, target=2))
    runs.note_write("t", "doc", generation=1)
    with pytest.raises(ReindexBusy):
        runs.start(_run(runs, target=3))
    assert runs.redo_peek(10) == ["t\x1fdoc"]
    running = runs.get()
    assert running is not None and running.run_id == first.run_id
    # A write to another generation than the one being copied is not the run's business.
    runs.note_write("t", "other", generation=2)
    assert runs.redo_peek(10) == ["t\x1fdoc"]
    # Once it ended, a new one may start, with nothing of the old one's.
    assert runs.update(running, phase=Phase.DONE)
    runs.start(_run(runs, target=3))
    assert runs.redo_peek(10) == []


def test_a_batch_moves_the_run_on_exactly_once(redis: Redis) -> None:
    runs = Reindexes(redis)
    run = runs.start(_run(runs, target=2))
    assert runs.advance(run, counts={"done": 5, "copied": 5}, cursor="abc")
    assert not runs.advance(run, counts={"done": 5, "copied": 5}, cursor="abc")  # a redelivery
    moved = runs.get()
    assert moved is not None
    assert (moved.seq, moved.done, moved.copied, moved.cursor) == (1, 5, 5, "abc")


def test_a_batch_keeps_the_vectors_it_has_and_knows_those_it_lacks(redis: Redis) -> None:
    points = tuple(
        ChunkPoint(
            id=f"00000000-0000-0000-0000-00000000000{i}",
            vector=(),
            payload=ChunkPayload("t", f"d{i}", 1, 0, "Title", f"text {i}"),
        )
        for i in range(3)
    )
    vector = np.arange(4, dtype=np.float32)
    batch = Batch(points=points, vectors=(vector, None, vector * 2), next_cursor="x", copied=2)
    runs = Reindexes(redis)
    run = runs.start(_run(runs, target=2))
    runs.save_batch(run, 0, batch, dimension=4)
    back = runs.load_batch(run, 0)
    assert back is not None and not back.ready
    assert back.points == points and back.next_cursor == "x" and back.copied == 2
    assert back.vectors[1] is None
    last = back.vectors[2]
    assert last is not None and np.array_equal(last, vector * 2)
