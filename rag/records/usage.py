"""The usage ledger: each tenant's questions, cache hits, tokens and dollars, per UTC day, exact.

One Redis hash per tenant per day (`rag.keys.usage_day_key`), kept 400 days so that a year of
monthly reports can be read back, and one month total per tenant that the budget check reads.
A finished job enters both, and the month's set of tenants, in one Lua script: atomic, one
round trip, and at most once per job.

Fields of a day's hash: `questions`, `failed`, `no_context`, `cancelled`, `degraded`,
`cache:<kind>`
(`exact`; a semantic cache adds its own kind), and per model `answers:<model>`,
`tokens:<type>:<model>` (type input, output, cache_read, cache_write), `unpriced:<model>`
(answers of a model with no known price) and `cost:<model>`; `cost` is the day's dollars. The
model comes last in a field because a model name may hold a colon (Bedrock's do).

A model call that ended without an answer (`outcome` "abandoned": stopped because its job
was cancelled, or broken off part-way by an error before a retry) adds what it had spent
to the tokens and dollars, under its own at-most-once mark, but no question and no answer:
the job itself is counted once, as it finishes.

Dollars are stored as decimal strings with nine places ("0.001234500") and added digit by digit
inside the script: Lua's numbers are doubles, in which 0.000003 added 10,000 times is not 0.03.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from redis import Redis

from rag.keys import usage_day_key, usage_month_key, usage_recorded_key, usage_tenants_key
from rag.records.jobs import JobFinished

__all__ = [
    "DAY_TTL_S",
    "RECORDED_TTL_S",
    "TOKEN_TYPES",
    "DayUsage",
    "ModelTally",
    "Tally",
    "UsageLedger",
    "UsageReport",
    "day_of",
    "month_of",
    "usd",
]

DAY_TTL_S = 400 * 86_400
# A job finishes once; its marker only has to outlive any repeat of the same finish.
RECORDED_TTL_S = 2 * 86_400
_SCALE = 9
_QUANTUM = Decimal(1).scaleb(-_SCALE)
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write")

# KEYS: the day's hash, the month total, the month's tenants, the job's marker.
# ARGV: ttl, marker ttl, tenant, dollars ('' when unpriced or none), the model's cost field,
# then (field, integer increment) pairs, added by HINCRBY (64-bit integers, exact).
_RECORD = f"""
local SCALE = {_SCALE}
local function scaled(s)
  local whole, frac = string.match(s, '^(%d+)%.?(%d*)$')
  return whole .. frac .. string.rep('0', SCALE - #frac)
end
local function add(a, b)
  local x, y = scaled(a), scaled(b)
  if #x < #y then x, y = y, x end
  y = string.rep('0', #x - #y) .. y
  local digits, carry = {{}}, 0
  for i = #x, 1, -1 do
    local sum = string.byte(x, i) + string.byte(y, i) - 96 + carry
    carry = sum >= 10 and 1 or 0
    digits[#x - i + 1] = sum % 10
  end
  local s = string.reverse(table.concat(digits))
  if carry == 1 then s = '1' .. s end
  s = string.rep('0', SCALE + 1 - #s) .. s
  local whole = string.match(string.sub(s, 1, #s - SCALE), '^0*(%d.*)$')
  return whole .. '.' .. string.sub(s, #s - SCALE + 1)
end
if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[2]) then return 0 end
for i = 6, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
if ARGV[4] ~= '' then
  local day = redis.call('HGET', KEYS[1], 'cost') or '0'
  local model = redis.call('HGET', KEYS[1], ARGV[5]) or '0'
  redis.call('HSET', KEYS[1], 'cost', add(day, ARGV[4]), ARGV[5], add(model, ARGV[4]))
  local month = redis.call('GET', KEYS[2]) or '0'
  redis.call('SET', KEYS[2], add(month, ARGV[4]), 'EX', ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[1])
return 1
"""


def usd(value: Decimal) -> str:
    """Dollars as the ledger writes them: nine places, never an exponent ("0E-9")."""
    return f"{value.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN):f}"


def day_of(at: float) -> date:
    return datetime.fromtimestamp(at, UTC).date()


def month_of(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m")


def _tokens_json(tokens: Mapping[str, int]) -> dict[str, int]:
    return {kind: tokens.get(kind, 0) for kind in TOKEN_TYPES}


@dataclass(slots=True)
class ModelTally:
    """What one model wrote: answers, tokens by type, dollars."""

    answers: int = 0
    tokens: Counter[str] = field(default_factory=Counter)
    cost_usd: Decimal = Decimal(0)
    unpriced: int = 0

    def add(self, other: ModelTally) -> None:
        self.answers += other.answers
        self.tokens.update(other.tokens)
        self.cost_usd += other.cost_usd
        self.unpriced += other.unpriced

    def to_json(self) -> dict[str, Any]:
        return {
            "answers": self.answers,
            "tokens": _tokens_json(self.tokens),
            "cost_usd": usd(self.cost_usd),
            "unpriced_answers": self.unpriced,
        }


@dataclass(slots=True)
class Tally:
    """A tenant's counts over a day or a range of days."""

    questions: int = 0
    failed: int = 0
    no_context: int = 0
    cancelled: int = 0
    degraded: int = 0
    cache_hits: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    cost_usd: Decimal = Decimal(0)
    unpriced: int = 0

    def add(self, other: Tally) -> None:
        self.questions += other.questions
        self.failed += other.failed
        self.no_context += other.no_context
        self.cancelled += other.cancelled
        self.degraded += other.degraded
        self.cache_hits.update(other.cache_hits)
        self.tokens.update(other.tokens)
        self.cost_usd += other.cost_usd
        self.unpriced += other.unpriced

    def to_json(self) -> dict[str, Any]:
        return {
            "questions": self.questions,
            "cache_hits": {"exact": 0, **dict(sorted(self.cache_hits.items()))},
            "failed": self.failed,
            "no_context": self.no_context,
            "cancelled": self.cancelled,
            "degraded": self.degraded,
            "tokens": _tokens_json(self.tokens),
            "cost_usd": usd(self.cost_usd),
            "unpriced_answers": self.unpriced,
        }


@dataclass(slots=True)
class DayUsage:
    day: date
    totals: Tally
    models: dict[str, ModelTally]


@dataclass(slots=True)
class UsageReport:
    """A tenant's usage from `start` to `end`, both included: in all, by day, by model."""

    tenant: str
    start: date
    end: date
    days: list[DayUsage]

    @property
    def totals(self) -> Tally:
        total = Tally()
        for day in self.days:
            total.add(day.totals)
        return total

    @property
    def models(self) -> dict[str, ModelTally]:
        merged: dict[str, ModelTally] = {}
        for day in self.days:
            for model, tally in day.models.items():
                merged.setdefault(model, ModelTally()).add(tally)
        return dict(sorted(merged.items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "totals": self.totals.to_json(),
            "by_day": [{"date": d.day.isoformat(), **d.totals.to_json()} for d in self.days],
            "by_model": {model: tally.to_json() for model, tally in self.models.items()},
        }


def _parse_day(day: date, raw: Mapping[str, str]) -> DayUsage:
    totals = Tally()
    models: dict[str, ModelTally] = {}
    for name, value in raw.items():
        kind, _, rest = name.partition(":")
        if kind in ("questions", "failed", "no_context", "cancelled", "degraded") and not rest:
            setattr(totals, kind, int(value))
        elif kind == "cache":
            totals.cache_hits[rest] = int(value)
        elif kind == "cost" and not rest:
            totals.cost_usd = Decimal(value)
        elif kind == "cost":
            models.setdefault(rest, ModelTally()).cost_usd = Decimal(value)
        elif kind == "answers":
            models.setdefault(rest, ModelTally()).answers = int(value)
        elif kind == "unpriced":
            models.setdefault(rest, ModelTally()).unpriced = int(value)
        elif kind == "tokens":
            token_type, _, model = rest.partition(":")
            models.setdefault(model, ModelTally()).tokens[token_type] = int(value)
    for tally in models.values():
        totals.tokens.update(tally.tokens)
        totals.unpriced += tally.unpriced
    return DayUsage(day, totals, dict(sorted(models.items())))


class UsageLedger:
    """Adds each finished job to its tenant's day; reads days, ranges and spend back."""

    def __init__(self, redis: Redis, *, ttl_s: int = DAY_TTL_S) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._record = redis.register_script(_RECORD)

    def record(self, event: JobFinished, *, at: float | None = None) -> bool:
        """Add a finished job to the day it finished on; False if it was already added."""
        at = time.time() if at is None else at
        abandoned = event.outcome == "abandoned"
        increments: dict[str, int] = {} if abandoned else {"questions": 1}
        if event.cache != "miss":
            increments[f"cache:{event.cache}"] = 1
        if event.outcome in ("failed", "no_context", "cancelled"):
            increments[event.outcome] = 1
        cost, model = "", ""
        answer = event.answer
        # A cached answer was paid for by its original job; a no-context one by nobody.
        if answer is not None and event.cache == "miss" and not answer.no_context:
            model = answer.model or "unknown"
            usage = answer.usage
            if not abandoned:
                increments[f"answers:{model}"] = 1
            if answer.degraded:
                increments["degraded"] = 1
            for kind, tokens in zip(
                TOKEN_TYPES,
                (
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.cache_read_input_tokens,
                    usage.cache_creation_input_tokens,
                ),
                strict=True,
            ):
                if tokens:
                    increments[f"tokens:{kind}:{model}"] = tokens
            if usage.cost_usd is None:
                increments[f"unpriced:{model}"] = 1
            elif usage.cost_usd < 0:
                raise ValueError(f"job {event.job_id} has a negative cost: {usage.cost_usd}")
            else:
                # Prices come rounded to 8 places (rag.writers.pricing): nine lose nothing.
                cost = usd(usage.cost_usd)
        args: list[str | int] = [self._ttl_s, RECORDED_TTL_S, event.tenant, cost, f"cost:{model}"]
        for name, increment in increments.items():
            args.extend((name, increment))
        keys = [
            usage_day_key(event.tenant, day_of(at).isoformat()),
            usage_month_key(event.tenant, month_of(at)),
            usage_tenants_key(month_of(at)),
            usage_recorded_key(event.job_id),
        ]
        return bool(self._record(keys=keys, args=args))

    def report(self, tenant: str, start: date, end: date) -> UsageReport:
        """Every day from `start` to `end`, both included, in one round trip."""
        days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
        with self._redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(usage_day_key(tenant, day.isoformat()))
            raws: list[dict[str, str]] = pipe.execute()
        return UsageReport(
            tenant, start, end, [_parse_day(d, r) for d, r in zip(days, raws, strict=True)]
        )

    def day(self, tenant: str, day: date) -> DayUsage:
        raw: dict[str, str] = self._redis.hgetall(usage_day_key(tenant, day.isoformat()))  # type: ignore[assignment]
        return _parse_day(day, raw)

    def today(self, tenant: str) -> DayUsage:
        """The tenant's usage so far on the current UTC day."""
        return self.day(tenant, day_of(time.time()))

    def spent(self, tenants: Sequence[str], *, at: float) -> dict[str, tuple[Decimal, Decimal]]:
        """Each tenant's dollars on the day and in the month of `at`, in one round trip."""
        day, month = day_of(at).isoformat(), month_of(at)
        with self._redis.pipeline(transaction=False) as pipe:
            for tenant in tenants:
                pipe.hget(usage_day_key(tenant, day), "cost")
                pipe.get(usage_month_key(tenant, month))
            raw: list[str | None] = pipe.execute()
        return {
            tenant: (Decimal(raw[2 * n] or 0), Decimal(raw[2 * n + 1] or 0))
            for n, tenant in enumerate(tenants)
        }

    def tenants(self, *, at: float) -> set[str]:
        """Tenants with any usage in the month of `at`."""
        found: set[str] = self._redis.smembers(usage_tenants_key(month_of(at)))  # type: ignore[assignment]
        return found
