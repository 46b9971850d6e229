"""Generations of the vector store: which collection is live, and with which model.

A reindex builds generation N+1 beside the live one, then switches to it in one step, so
that every question is answered from one whole collection, never half of each. What each
process needs to agree on lives in Redis:

- `scribes:store:live`: the live generation as one JSON string (number, model, dimension),
  so that a question reads the collection and the model that go together in one GET.
- `scribes:store:gen:<n>`: each generation's record (model, dimension, state, times).

Before the first reindex nothing is written: generation 1 is the store the settings name
(`SCRIBES_DATA_DIR/vectors`, or `SCRIBES_QDRANT_COLLECTION`), with `SCRIBES_EMBEDDING_MODEL`.
From then on the live model is Redis's, whatever the environment says.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from redis import Redis

from rag.settings import Settings

__all__ = ["FIRST_GENERATION", "Generation", "GenerationState", "Generations"]

FIRST_GENERATION = 1

_LIVE_KEY = "scribes:store:live"
_COUNTER_KEY = "scribes:store:generations"
_NUMBERS_KEY = "scribes:store:generation_numbers"


def _record_key(number: int) -> str:
    return f"scribes:store:gen:{number}"


class GenerationState(StrEnum):
    BUILDING = "building"
    LIVE = "live"
    RETAINED = "retained"  # switched away from; kept for a rollback until retained_until
    DROPPED = "dropped"  # deleted from the store
    FAILED = "failed"  # a build that did not finish; its collection is deleted


@dataclass(frozen=True, slots=True)
class Generation:
    number: int
    model: str
    dimension: int
    state: GenerationState = GenerationState.LIVE
    created_at: float = 0.0
    retained_until: float | None = None

    def edge_dir(self, settings: Settings) -> Path:
        """The Edge shard of this generation's chunks."""
        if self.number == FIRST_GENERATION:
            return settings.vector_store_dir
        return settings.data_dir / f"vectors-g{self.number}"

    def question_dir(self, settings: Settings) -> Path:
        """The Edge shard of this generation's semantic-cache questions (same model)."""
        if self.number == FIRST_GENERATION:
            return settings.question_index_dir
        return settings.data_dir / f"questions-g{self.number}"

    def collection(self, settings: Settings) -> str:
        """The Qdrant collection of this generation's chunks."""
        if self.number == FIRST_GENERATION:
            return settings.qdrant_collection
        return f"{settings.qdrant_collection}_g{self.number}"

    def questions_collection(self, settings: Settings) -> str:
        return f"{self.collection(settings)}_questions"

    def to_json(self) -> dict[str, object]:
        return {
            "number": self.number,
            "model": self.model,
            "dimension": self.dimension,
            "state": self.state.value,
            "created_at": self.created_at,
            "retained_until": self.retained_until,
        }

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> Generation:
        until = raw.get("retained_until")
        return cls(
            number=int(str(raw["number"])),
            model=str(raw["model"]),
            dimension=int(str(raw["dimension"])),
            state=GenerationState(str(raw.get("state") or GenerationState.LIVE.value)),
            created_at=float(str(raw.get("created_at") or 0)),
            retained_until=float(str(until)) if until not in (None, "") else None,
        )


# KEYS: live pointer, new record, old record. ARGV: new number, expected live number,
# new live JSON, old record JSON (retained), new record JSON (live).
_SWITCH = """
local live = redis.call('GET', KEYS[1])
local current = '1'
if live then current = tostring(cjson.decode(live)['number']) end
if current ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('SET', KEYS[3], ARGV[4])
redis.call('SET', KEYS[2], ARGV[5])
redis.call('SADD', KEYS[4], ARGV[1], ARGV[2])
if KEYS[5] then redis.call('DEL', KEYS[5]) end
return 1
"""


class Generations:
    """The live generation and every generation's record, in Redis."""

    def __init__(self, redis: Redis, *, model: str, dimension: int) -> None:
        self._redis = redis
        # Generation 1 before anything was recorded: what the settings name.
        self._first = Generation(FIRST_GENERATION, model, dimension)
        self._switch = redis.register_script(_SWITCH)

    def live(self) -> Generation:
        raw = self._redis.get(_LIVE_KEY)
        if raw is None:
            return self._first
        return Generation.from_json(json.loads(str(raw)))

    def get(self, number: int) -> Generation | None:
        raw = self._redis.get(_record_key(number))
        if raw is None:
            return self.live() if number == FIRST_GENERATION else None
        return Generation.from_json(json.loads(str(raw)))

    def create(self, *, model: str, dimension: int) -> Generation:
        """A new generation, being built; numbers are never reused."""
        self._redis.setnx(_COUNTER_KEY, FIRST_GENERATION)
        number = int(self._redis.incr(_COUNTER_KEY))
        generation = Generation(
            number, model, dimension, GenerationState.BUILDING, created_at=time.time()
        )
        self.save(generation)
        return generation

    def save(self, generation: Generation) -> None:
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(_record_key(generation.number), json.dumps(generation.to_json()))
            pipe.sadd(_NUMBERS_KEY, generation.number)
            pipe.execute()

    def switch(
        self, to: Generation, *, retain_s: float, expect: int, clear: str | None = None
    ) -> Generation | None:
        """Make `to` live in place of generation `expect`, and keep that one for `retain_s`;
        in the same step delete the key `clear`. The replaced generation, or None if the
        live one is no longer `expect`."""
        old = self.live()
        now = time.time()
        retained = Generation(
            old.number,
            old.model,
            old.dimension,
            GenerationState.RETAINED,
            old.created_at,
            retained_until=now + retain_s,
        )
        live = Generation(to.number, to.model, to.dimension, GenerationState.LIVE, to.created_at)
        done = self._switch(
            keys=[
                _LIVE_KEY,
                _record_key(to.number),
                _record_key(old.number),
                _NUMBERS_KEY,
                *([clear] if clear else []),
            ],
            args=[
                to.number,
                str(expect),
                json.dumps(live.to_json()),
                json.dumps(retained.to_json()),
                json.dumps(live.to_json()),
            ],
        )
        return retained if done else None

    def all(self) -> list[Generation]:
        """Every recorded generation, oldest first (generation 1 even when unrecorded)."""
        numbers = sorted(int(n) for n in self._redis.smembers(_NUMBERS_KEY))
        raw = self._redis.mget([_record_key(n) for n in numbers]) if numbers else []
        found = [Generation.from_json(json.loads(str(r))) for r in raw if r is not None]
        if not any(g.number == FIRST_GENERATION for g in found):
            found.insert(0, self._first)
        return found
