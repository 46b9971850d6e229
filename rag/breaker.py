"""A circuit breaker whose state every process on every host shares, through Redis.

pybreaker and its kin keep the half-open state per process, so with N generate processes N
probes would hit a dependency that is down; here one Lua script per operation makes each
transition a compare-and-set, and exactly one probe is let through across all processes.

- **closed**: calls go through; each outcome is recorded in a rolling window. It opens on
  `failures` failures in a row, or when the window holds at least `failures` failures that
  are at least `failure_ratio` of its calls (scattered errors under heavy traffic).
- **open**: no call goes through until `probe_at`: the cooldown, or the largest
  `retry-after` the dependency asked for, whichever is later.
- **half-open**: from `probe_at`, one caller gets the probe (a lease, so a prober that dies
  does not wedge it). A success counts towards `close_after`; the next probe may then start.
  A failure opens it again.

If Redis cannot be reached the breaker lets every call through: a safety device must never
become the outage.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum

from redis import Redis, RedisError

from rag.keys import breaker_events_key, breaker_key
from rag.telemetry.metrics import BREAKER_TRANSITIONS

__all__ = ["Breaker", "BreakerConfig", "BreakerState", "BreakerStatus", "Permit"]

log = logging.getLogger(__name__)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failures: int = 5
    failure_ratio: float = 0.5
    window_s: float = 30.0
    cooldown_s: float = 10.0
    close_after: int = 2
    # How long a probe may run before another caller may take over the probe.
    probe_lease_s: float = 90.0


@dataclass(frozen=True, slots=True)
class Permit:
    """May the caller call? `probe` says it is the one trial call of a half-open breaker;
    `retry_at` says when to come back if not."""

    allowed: bool
    probe: bool = False
    token: str = ""
    retry_at: float = 0.0
    state: BreakerState = BreakerState.CLOSED


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    state: BreakerState
    next_probe_at: float | None
    failures: int
    calls: int

    def to_json(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "next_probe_at": self.next_probe_at,
            "failures_in_window": self.failures,
            "calls_in_window": self.calls,
        }


# KEYS: state hash. ARGV: now, token, probe lease.
# Returns {verdict, retry_at, state}: verdict 1 = call, 2 = probe, 0 = wait.
_ACQUIRE = """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local now = tonumber(ARGV[1])
if state == 'closed' then return {1, '0', state} end
local probe_at = tonumber(redis.call('HGET', KEYS[1], 'probe_at') or '0')
if now < probe_at then return {0, tostring(probe_at), state} end
local lease = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
-- A probe is in flight: look again soon, its answer may close the circuit.
if state == 'half_open' and now < lease then return {0, tostring(now + 1), state} end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_owner', ARGV[2],
           'probe_until', tostring(now + tonumber(ARGV[3])))
return {2, '0', 'half_open', state}
"""

# KEYS: state hash, events zset. ARGV: now, token, ok (1/0), retry_after, window, failures,
# ratio, cooldown, close_after, member. Returns {state after, state before}: the one
# script that changed the state says so, for the transitions counter.
_RECORD = """
local now = tonumber(ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local ok = ARGV[3] == '1'
local retry_after = tonumber(ARGV[4])
local function open_now()
  local asked = tonumber(redis.call('HGET', KEYS[1], 'max_retry_after') or '0')
  local wait = math.max(tonumber(ARGV[8]), retry_after, asked)
  redis.call('PERSIST', KEYS[1])
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', tostring(now),
             'probe_at', tostring(now + wait), 'probe_owner', '', 'probe_until', '0',
             'successes', '0', 'consecutive', '0')
  return 'open'
end
local function decide()
if state == 'half_open' then
  if redis.call('HGET', KEYS[1], 'probe_owner') ~= ARGV[2] then return state end
  if not ok then return open_now() end
  local successes = redis.call('HINCRBY', KEYS[1], 'successes', 1)
  if successes >= tonumber(ARGV[9]) then
    redis.call('DEL', KEYS[1], KEYS[2])
    return 'closed'
  end
  redis.call('HSET', KEYS[1], 'probe_owner', '', 'probe_until', '0')
  return state
end
if state == 'open' then return state end
if retry_after > tonumber(redis.call('HGET', KEYS[1], 'max_retry_after') or '0') then
  redis.call('HSET', KEYS[1], 'max_retry_after', tostring(retry_after))
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[5])) + 1)
end
redis.call('ZADD', KEYS[2], now, ARGV[10])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[5]))
redis.call('EXPIRE', KEYS[2], math.ceil(tonumber(ARGV[5])) + 1)
if ok then
  redis.call('HDEL', KEYS[1], 'consecutive')
  return state
end
-- A run of failures with no success between them opens it at once: under load the window
-- holds many successes from before an outage, and the ratio alone would wait them out.
local consecutive = redis.call('HINCRBY', KEYS[1], 'consecutive', 1)
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[5])) + 1)
if consecutive >= tonumber(ARGV[6]) then return open_now() end
local calls = redis.call('ZCARD', KEYS[2])
local failed = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(member, 1, 1) == 'f' then failed = failed + 1 end
end
if failed >= tonumber(ARGV[6]) and failed / calls >= tonumber(ARGV[7]) then
  return open_now()
end
return state
end
return {decide(), state}
"""


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Breaker:
    """One breaker per dependency (`name`), shared by every process that uses the same Redis."""

    def __init__(self, redis: Redis, name: str, config: BreakerConfig | None = None) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self._redis = redis
        self._keys = [breaker_key(name), breaker_events_key(name)]
        self._acquire = redis.register_script(_ACQUIRE)
        self._record = redis.register_script(_RECORD)

    def acquire(self, now: float | None = None) -> Permit:
        token = uuid.uuid4().hex
        try:
            verdict, retry_at, state, *before = self._acquire(
                keys=self._keys[:1],
                args=[now or time.time(), token, self.config.probe_lease_s],
            )
        except RedisError:
            log.warning("breaker %s: Redis unreachable, letting the call through", self.name)
            return Permit(allowed=True)
        state = BreakerState(_text(state))
        if int(verdict) == 0:
            return Permit(allowed=False, retry_at=float(retry_at), state=state)
        if int(verdict) == 2 and _text(before[0]) == BreakerState.OPEN.value:
            BREAKER_TRANSITIONS.labels(self.name, BreakerState.HALF_OPEN.value).inc()
        return Permit(allowed=True, probe=int(verdict) == 2, token=token, state=state)

    def succeeded(self, permit: Permit) -> BreakerState:
        return self._outcome(permit, ok=True, retry_after=0.0)

    def failed(self, permit: Permit, *, retry_after: float | None = None) -> BreakerState:
        """Record a failure; the state after it (open: the dependency is down, not the call)."""
        return self._outcome(permit, ok=False, retry_after=retry_after or 0.0)

    def _outcome(self, permit: Permit, *, ok: bool, retry_after: float) -> BreakerState:
        now = time.time()
        config = self.config
        member = f"{'s' if ok else 'f'}:{now:.6f}:{uuid.uuid4().hex[:8]}"
        try:
            state, before = self._record(
                keys=self._keys,
                args=[
                    now,
                    permit.token,
                    "1" if ok else "0",
                    retry_after,
                    config.window_s,
                    config.failures,
                    config.failure_ratio,
                    config.cooldown_s,
                    config.close_after,
                    member,
                ],
            )
        except RedisError:
            return BreakerState.CLOSED
        after = BreakerState(_text(state))
        if after.value != _text(before):
            BREAKER_TRANSITIONS.labels(self.name, after.value).inc()
            log.warning("breaker %s is now %s", self.name, after.value)
        return after

    def status(self) -> BreakerStatus:
        raw = self._redis.hgetall(self._keys[0])
        values = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        state = BreakerState(values.get("state") or "closed")
        since = time.time() - self.config.window_s
        members = self._redis.zrangebyscore(self._keys[1], since, "+inf")
        failures = sum(1 for m in members if (m.decode() if isinstance(m, bytes) else m)[0] == "f")
        probe_at = float(values.get("probe_at") or 0) if state is not BreakerState.CLOSED else None
        return BreakerStatus(state, probe_at, failures, len(members))
