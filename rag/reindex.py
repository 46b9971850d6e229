"""The record of a reindex: its phase, where it is, and the work it still has, in Redis.

One reindex runs at a time, for the whole store. It is driven by two tasks that hand
batches to each other (`tasks.reindex`), and everything they need to go on after either
pool is killed is here:

- `scribes:reindex`: the run (a hash): phase, the batch it is at (`seq`), the scroll
  cursor, counts. A batch moves it on only if `seq` is still the one it was made for, so a
  delivery that comes twice writes once.
- `scribes:reindex:batch:<run>:<seq>`: the batch in flight, with its chunks and, once
  embedded or copied, their vectors.
- `scribes:reindex:redo`: documents written to the live generation while the new one is
  built; each is copied again before the switch (and once more just after it).
- `scribes:reindex:since_switch`: documents written after a switch, which a rollback
  copies back into the generation it returns to.
- `scribes:reindex:probes`: chunk vectors kept from the build, to check the new generation
  finds what the old one finds.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

import numpy as np
from redis import Redis

from rag.embedding import decode_vector, decode_vectors, encode_vectors
from rag.types import ChunkPayload, ChunkPoint

__all__ = [
    "ACTIVE",
    "SINCE_SWITCH_KEY",
    "Batch",
    "Phase",
    "ReindexBusy",
    "ReindexRun",
    "Reindexes",
    "split_member",
]

_RUN_KEY = "scribes:reindex"
_REDO_KEY = "scribes:reindex:redo"
SINCE_SWITCH_KEY = "scribes:reindex:since_switch"
# Present while a generation is kept for a rollback; then writes are noted for it.
_KEEPING_KEY = "scribes:reindex:keeping"
_PROBES_KEY = "scribes:reindex:probes"
_TENANTS_KEY = "scribes:reindex:tenants"
_BATCH_TTL_S = 7 * 86_400
PROBES_KEPT = 200


def _batch_key(run_id: str, seq: int) -> str:
    return f"scribes:reindex:batch:{run_id}:{seq}"


class Phase(StrEnum):
    PREPARE = "prepare"  # the index pool loads the model and makes the new generation
    BUILD = "build"  # every chunk of the live generation, batch by batch
    CATCH_UP = "catch_up"  # the documents written meanwhile
    OPTIMIZE = "optimize"  # Edge: the HNSW index, built in a process of its own
    VERIFY = "verify"  # same chunk count per tenant; same top documents for the probes
    SWITCH = "switch"  # the live pointer (and a server's alias) moves, in one step
    SETTLE = "settle"  # writes that raced the switch are copied across
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        return self in ACTIVE


ACTIVE = frozenset(
    {
        Phase.PREPARE,
        Phase.BUILD,
        Phase.CATCH_UP,
        Phase.OPTIMIZE,
        Phase.VERIFY,
        Phase.SWITCH,
        Phase.SETTLE,
    }
)


class ReindexBusy(RuntimeError):
    """Another reindex is running."""


@dataclass(frozen=True, slots=True)
class ReindexRun:
    run_id: str
    phase: Phase
    source: int
    model: str
    kind: str = "reindex"  # or "rollback"
    target: int | None = None
    dimension: int | None = None
    tenant: str | None = None  # re-embed this tenant's chunks even where they could be copied
    seq: int = 0
    cursor: str | None = None
    total: int = 0
    done: int = 0
    copied: int = 0
    embedded: int = 0
    cached: int = 0
    started_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    error: str | None = None
    cancel: bool = False
    checks: dict[str, Any] = field(default_factory=dict)

    def rate(self, now: float | None = None) -> float:
        """Chunks written per second since the start."""
        elapsed = (self.finished_at or now or time.time()) - self.started_at
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta_s(self, now: float | None = None) -> float | None:
        if not self.phase.active:
            return None
        rate = self.rate(now)
        left = max(0, self.total - self.done)
        return left / rate if rate > 0 else None

    def to_json(self) -> dict[str, Any]:
        now = time.time()
        body = {f.name: getattr(self, f.name) for f in fields(self)}
        body["phase"] = self.phase.value
        body["rate_per_s"] = round(self.rate(now), 2)
        eta = self.eta_s(now)
        body["eta_s"] = round(eta, 1) if eta is not None else None
        return body

    def encode(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "checks":
                out[f.name] = json.dumps(value)
            elif isinstance(value, bool):
                out[f.name] = "1" if value else ""
            else:
                out[f.name] = "" if value is None else str(value)
        return out

    @classmethod
    def decode(cls, raw: dict[str, str]) -> ReindexRun:
        def opt_int(name: str) -> int | None:
            return int(raw[name]) if raw.get(name) else None

        def opt_str(name: str) -> str | None:
            return raw.get(name) or None

        return cls(
            run_id=raw["run_id"],
            phase=Phase(raw["phase"]),
            source=int(raw["source"]),
            model=raw["model"],
            kind=raw.get("kind") or "reindex",
            target=opt_int("target"),
            dimension=opt_int("dimension"),
            tenant=opt_str("tenant"),
            seq=int(raw.get("seq") or 0),
            cursor=opt_str("cursor"),
            total=int(raw.get("total") or 0),
            done=int(raw.get("done") or 0),
            copied=int(raw.get("copied") or 0),
            embedded=int(raw.get("embedded") or 0),
            cached=int(raw.get("cached") or 0),
            started_at=float(raw.get("started_at") or 0),
            updated_at=float(raw.get("updated_at") or 0),
            finished_at=float(raw["finished_at"]) if raw.get("finished_at") else None,
            error=opt_str("error"),
            cancel=bool(raw.get("cancel")),
            checks=json.loads(raw.get("checks") or "{}"),
        )


@dataclass(frozen=True, slots=True)
class Batch:
    """Chunks on their way to the new generation. `vectors[i]` is None until chunk i is
    embedded (or copied); `documents` are the redo entries the batch settles."""

    points: tuple[ChunkPoint, ...]
    vectors: tuple[np.ndarray[Any, Any] | None, ...]
    next_cursor: str | None = None
    documents: tuple[str, ...] = ()
    copied: int = 0
    embedded: int = 0
    cached: int = 0

    @property
    def ready(self) -> bool:
        return all(v is not None for v in self.vectors)

    def encode(self, dimension: int) -> str:
        known = [i for i, v in enumerate(self.vectors) if v is not None]
        matrix = (
            np.stack([np.asarray(self.vectors[i], np.float32) for i in known])
            if known
            else np.zeros((0, dimension), np.float32)
        )
        return json.dumps(
            {
                "points": [[p.id, p.payload.to_json()] for p in self.points],
                "known": known,
                "dimension": dimension,
                "vectors": encode_vectors(matrix),
                "next_cursor": self.next_cursor,
                "documents": list(self.documents),
                "copied": self.copied,
                "embedded": self.embedded,
                "cached": self.cached,
            }
        )

    @classmethod
    def decode(cls, text: str) -> Batch:
        body = json.loads(text)
        points = tuple(
            ChunkPoint(id=point_id, vector=(), payload=ChunkPayload.from_json(payload))
            for point_id, payload in body["points"]
        )
        matrix = decode_vectors(body["vectors"], int(body["dimension"]))
        vectors: list[np.ndarray[Any, Any] | None] = [None] * len(points)
        for row, index in enumerate(body["known"]):
            vectors[index] = matrix[row]
        return cls(
            points=points,
            vectors=tuple(vectors),
            next_cursor=body.get("next_cursor"),
            documents=tuple(body.get("documents", ())),
            copied=int(body.get("copied", 0)),
            embedded=int(body.get("embedded", 0)),
            cached=int(body.get("cached", 0)),
        )

    def with_points(self) -> list[ChunkPoint]:
        """The points with their vectors, once the batch is ready."""
        return [
            replace(p, vector=np.asarray(v, dtype=np.float32).tolist())
            for p, v in zip(self.points, self.vectors, strict=True)
            if v is not None
        ]


# Start only when no run is active. KEYS: run. ARGV: active phases (JSON), then field/value
# pairs of the new run.
_START = """
local phase = redis.call('HGET', KEYS[1], 'phase')
if phase then
  for _, active in ipairs(cjson.decode(ARGV[1])) do
    if phase == active then return 0 end
  end
end
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# Move on from batch `seq` exactly once. KEYS: run. ARGV: run id, seq, now, then the
# counters to add (name, n, ...) as JSON, then field/value pairs to set.
_ADVANCE = """
if redis.call('HGET', KEYS[1], 'run_id') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'seq') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'seq', tostring(tonumber(ARGV[2]) + 1), 'updated_at', ARGV[3])
local counts = cjson.decode(ARGV[4])
for name, n in pairs(counts) do redis.call('HINCRBY', KEYS[1], name, n) end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# Set fields of the run if it is still `run_id` (and, when given, still in `phase`).
_UPDATE = """
if redis.call('HGET', KEYS[1], 'run_id') ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'phase') ~= ARGV[2] then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


def _member(tenant: str, document_id: str) -> str:
    return f"{tenant}\x1f{document_id}"


def split_member(member: str) -> tuple[str, str]:
    tenant, _, document_id = member.partition("\x1f")
    return tenant, document_id


class Reindexes:
    """The one reindex run and its work, in Redis."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._start = redis.register_script(_START)
        self._advance = redis.register_script(_ADVANCE)
        self._update = redis.register_script(_UPDATE)

    def get(self) -> ReindexRun | None:
        raw: dict[str, str] = self._redis.hgetall(_RUN_KEY)  # type: ignore[assignment]
        return ReindexRun.decode(raw) if raw.get("run_id") else None

    def start(self, run: ReindexRun, *, redo: Iterable[str] = ()) -> ReindexRun:
        """Record `run` as the one running; `ReindexBusy` if another is active."""
        now = time.time()
        run = replace(run, started_at=now, updated_at=now)
        pairs = [item for pair in run.encode().items() for item in pair]
        if not self._start(keys=[_RUN_KEY], args=[json.dumps(sorted(ACTIVE)), *pairs]):
            raise ReindexBusy("a reindex is already running; see `scribes reindex status`")
        # What an earlier run left (it ended) is no business of this one. A write noted
        # meanwhile is lost to nothing: this run's build has not read anything yet.
        with self._redis.pipeline(transaction=False) as pipe:
            for key in (_REDO_KEY, _PROBES_KEY, _TENANTS_KEY):
                pipe.delete(key)
            pipe.execute()
        members = list(redo)
        if members:
            self._redis.sadd(_REDO_KEY, *members)
        return run

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:12]

    def update(self, run: ReindexRun, *, when: Phase | None = None, **values: Any) -> bool:
        """Set fields of `run` if it is still the one recorded (and, with `when`, still in
        that phase)."""
        encoded = replace(run, **values).encode()
        pairs = [item for name in values for item in (name, encoded[name])]
        pairs += ["updated_at", str(time.time())]
        return bool(
            self._update(
                keys=[_RUN_KEY],
                args=[run.run_id, when.value if when else "", *pairs],
            )
        )

    def advance(
        self, run: ReindexRun, *, counts: dict[str, int] | None = None, **values: Any
    ) -> bool:
        """Move on from batch `run.seq`, adding `counts`; False if it was done already."""
        encoded = replace(run, **values).encode()
        pairs = [item for name in values for item in (name, encoded[name])]
        return bool(
            self._advance(
                keys=[_RUN_KEY],
                args=[run.run_id, run.seq, time.time(), json.dumps(counts or {}), *pairs],
            )
        )

    def touch(self, run: ReindexRun) -> None:
        self.update(run)

    def request_cancel(self) -> ReindexRun | None:
        run = self.get()
        if run is None or not run.phase.active:
            return None
        self.update(run, cancel=True)
        return self.get()

    # Batches ---------------------------------------------------------------------------

    def save_batch(self, run: ReindexRun, seq: int, batch: Batch, dimension: int) -> None:
        self._redis.set(_batch_key(run.run_id, seq), batch.encode(dimension), ex=_BATCH_TTL_S)

    def load_batch(self, run: ReindexRun, seq: int) -> Batch | None:
        text = self._redis.get(_batch_key(run.run_id, seq))
        return Batch.decode(str(text)) if text is not None else None

    def drop_batch(self, run: ReindexRun, seq: int) -> None:
        self._redis.delete(_batch_key(run.run_id, seq))

    def drop_batches(self, run: ReindexRun) -> None:
        keys = list(self._redis.scan_iter(match=_batch_key(run.run_id, 0)[:-1] + "*"))
        if keys:
            self._redis.delete(*keys)

    # Documents written meanwhile -------------------------------------------------------

    def note_write(self, tenant: str, document_id: str, *, generation: int) -> None:
        """A document was written to `generation`, the live one: it must be copied again
        into a generation being built from it, and back into the one a rollback returns to.
        Called after the write, so that a copy made after this reads what was written."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(_RUN_KEY, ["phase", "source"])
            pipe.exists(_KEEPING_KEY)
            (phase, source), keeping = pipe.execute()
        member = _member(tenant, document_id)
        building = phase in ACTIVE and source == str(generation)
        if not building and not keeping:
            return
        with self._redis.pipeline(transaction=False) as pipe:
            if building:
                pipe.sadd(_REDO_KEY, member)
            if keeping:
                pipe.sadd(SINCE_SWITCH_KEY, member)
            pipe.execute()

    def keeping(self, until: float) -> None:
        """A generation is kept for a rollback until `until`: note writes for it till then."""
        seconds = int(until - time.time())
        if seconds > 0:
            self._redis.set(_KEEPING_KEY, "1", ex=seconds)

    def redo_peek(self, limit: int) -> list[str]:
        found: list[str] = self._redis.srandmember(_REDO_KEY, limit)  # type: ignore[assignment]
        return sorted(found)

    def redo_done(self, members: Sequence[str]) -> None:
        if members:
            self._redis.srem(_REDO_KEY, *members)

    def redo_size(self) -> int:
        return int(self._redis.scard(_REDO_KEY))

    def since_switch(self) -> list[str]:
        return sorted(self._redis.smembers(SINCE_SWITCH_KEY))  # type: ignore[arg-type]

    def switched(self) -> None:
        """A switch happened: what a rollback must carry back starts from nothing."""
        self._redis.delete(SINCE_SWITCH_KEY)

    # What the checks use ---------------------------------------------------------------

    def keep_probes(self, probes: Sequence[tuple[str, np.ndarray[Any, Any]]]) -> None:
        """Keep chunk vectors to search both generations with, the first `PROBES_KEPT`."""
        if not probes or self._redis.llen(_PROBES_KEY) >= PROBES_KEPT:
            return
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.rpush(
                _PROBES_KEY, *(json.dumps([tenant, encode_vectors(v)]) for tenant, v in probes)
            )
            pipe.ltrim(_PROBES_KEY, 0, PROBES_KEPT - 1)
            pipe.execute()

    def probes(self) -> list[tuple[str, np.ndarray[Any, Any]]]:
        raw: list[str] = self._redis.lrange(_PROBES_KEY, 0, -1)  # type: ignore[assignment]
        out = []
        for item in raw:
            tenant, vector = json.loads(item)
            out.append((str(tenant), decode_vector(vector)))
        return out

    def note_tenants(self, tenants: Iterable[str]) -> None:
        found = set(tenants)
        if found:
            self._redis.sadd(_TENANTS_KEY, *found)

    def tenants(self) -> list[str]:
        return sorted(self._redis.smembers(_TENANTS_KEY))  # type: ignore[arg-type]
