"""Which index task embeds each document revision, so that one task can embed several.

Each revision keeps its own message on queue `index`. The task that runs one also takes
other queued revisions as passengers and embeds them all in one go, like the embed pool's
pending questions. A claim in Redis says who took a revision and until when (a lease its
holder renews); once the revision is staged and its store write queued the claim reads
`sent`, and the revision's own message, when it runs, does nothing more.

- A revision is taken as a passenger at most once. If the task that carried it dies, the
  revision's own message embeds it alone: a note that kills its worker takes down one
  batch at most, and its own deliveries count towards its giving up as poison.
- A message whose revision another live task holds is retried after the lease; a message
  whose holder died (the lease ran out, or was given up) takes the revision over, alone.
- The lease is time on the Redis server's clock, so hosts' clocks need not agree.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum

from redis import Redis

from rag.keys import index_claim_key
from rag.records.documents import DocumentRevision

__all__ = ["Claim", "IndexClaims"]

log = logging.getLogger(__name__)

SENT = "sent"
# As long as the staged chunks and the index message's expiry: past it nothing is left to do.
_TTL_S = 86_400

# ARGV: holder, lease seconds, TTL, mode ('own' or 'passenger'). A passenger is taken only
# when nobody ever took it; its own message takes it back from a holder whose lease is over.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local value = redis.call('GET', KEYS[1])
local state = 'new'
if value then
  if value == 'sent' then return 'sent' end
  if ARGV[4] == 'passenger' then return 'held' end
  local sep = string.find(value, '|', 1, true)
  local holder = string.sub(value, 1, sep - 1)
  if holder ~= ARGV[1] and tonumber(string.sub(value, sep + 1)) > now then return 'held' end
  state = 'again'
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. string.format('%.3f', now + tonumber(ARGV[2])),
           'EX', ARGV[3])
return state
"""

# ARGV: holder, lease seconds (negative: give the claims up now), TTL. Only the holder's claims.
_RENEW = """
local t = redis.call('TIME')
local until_s = tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[2])
local prefix = ARGV[1] .. '|'
for _, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if value and string.sub(value, 1, #prefix) == prefix then
    redis.call('SET', key, prefix .. string.format('%.3f', until_s), 'EX', ARGV[3])
  end
end
return #KEYS
"""


class Claim(StrEnum):
    NEW = "new"  # nobody had taken it: now the caller's
    AGAIN = "again"  # a task that died had it (perhaps an earlier delivery): now the caller's
    HELD = "held"  # another task holds it (a passenger: someone ever took it)
    SENT = "sent"  # already staged, its store write queued


def _key(revision: DocumentRevision) -> str:
    return index_claim_key(revision.tenant, revision.document_id, revision.revision)


class IndexClaims:
    def __init__(self, redis: Redis, *, lease_s: float = 15.0) -> None:
        self._redis = redis
        self.lease_s = lease_s
        self._take = redis.register_script(_TAKE)
        self._renew = redis.register_script(_RENEW)

    def take(self, revision: DocumentRevision, holder: str) -> Claim:
        """Claim the revision for its own message's task `holder`."""
        return Claim(self._take(keys=[_key(revision)], args=[holder, self.lease_s, _TTL_S, "own"]))

    def take_passenger(self, revision: DocumentRevision, holder: str) -> bool:
        """Claim a revision that nobody ever took; False if anyone did."""
        state = self._take(keys=[_key(revision)], args=[holder, self.lease_s, _TTL_S, "passenger"])
        return Claim(state) is Claim.NEW

    def renew(self, revisions: Sequence[DocumentRevision], holder: str) -> None:
        if revisions:
            self._renew(keys=[_key(r) for r in revisions], args=[holder, self.lease_s, _TTL_S])

    def give_up(self, revisions: Sequence[DocumentRevision], holder: str) -> None:
        """End `holder`'s leases now: each revision's own message takes it over, alone."""
        if revisions:
            # A second in the past: a lease of 0 written to the millisecond may round up
            # past the next take's clock, which would still read it as held.
            self._renew(keys=[_key(r) for r in revisions], args=[holder, -1, _TTL_S])

    def release(self, revisions: Sequence[DocumentRevision]) -> None:
        """Forget the claims, as if nobody had taken the revisions."""
        if revisions:
            self._redis.delete(*(_key(r) for r in revisions))

    def mark_sent(self, revisions: Sequence[DocumentRevision]) -> None:
        if revisions:
            with self._redis.pipeline(transaction=False) as pipe:
                for revision in revisions:
                    pipe.set(_key(revision), SENT, ex=_TTL_S)
                pipe.execute()

    @contextmanager
    def holding(
        self,
        revisions: Callable[[], Sequence[DocumentRevision]],
        holder: str,
        *,
        also: Callable[[Sequence[DocumentRevision]], None] | None = None,
    ) -> Iterator[None]:
        """Renew `holder`'s leases on `revisions()` (and call `also` with them) every third
        of the lease until the block ends, from a thread of its own, so that a long step of
        the model never lets them lapse."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease_s / 3):
                try:
                    held = revisions()
                    self.renew(held, holder)
                    if also is not None:
                        also(held)
                except Exception:  # a missed renewal costs a retry at worst; keep going
                    log.warning("renewing index claims failed", exc_info=True)

        thread = threading.Thread(target=renew, name="scribes-index-claims", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
