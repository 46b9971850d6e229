"""The shared circuit breaker against a real Redis: many breakers (as many processes would
hold) over one state, exactly one probe, cooldowns that honour retry-after, and calls let
through when Redis is down."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from rag.breaker import Breaker, BreakerConfig, BreakerState
from scribes.localredis import free_port

CONFIG = BreakerConfig(failures=3, failure_ratio=0.5, window_s=30, cooldown_s=2, close_after=2)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/8", decode_responses=True)
    connection.flushdb()
    yield connection
    connection.flushdb()


def _fail(breaker: Breaker, times: int, retry_after: float | None = None) -> None:
    for _ in range(times):
        permit = breaker.acquire()
        assert permit.allowed
        breaker.failed(permit, retry_after=retry_after)


def test_it_opens_on_enough_failures_and_then_makes_every_process_wait(
    client: redis.Redis,
) -> None:
    first, second = Breaker(client, "llm", CONFIG), Breaker(client, "llm", CONFIG)
    ok = first.acquire()
    first.succeeded(ok)
    _fail(first, 2)
    assert first.status().state is BreakerState.CLOSED  # 2 failures: below the count
    opening = time.time()
    _fail(second, 1)
    opened = time.time()
    status = first.status()
    assert status.state is BreakerState.OPEN and status.failures == 3
    assert status.next_probe_at is not None
    # A cooldown from the failure that opened it (times are kept to the millisecond).
    cooldown = CONFIG.cooldown_s
    assert opening + cooldown - 0.001 <= status.next_probe_at <= opened + cooldown + 0.001
    denied = second.acquire()
    assert not denied.allowed and denied.retry_at == status.next_probe_at


def test_scattered_failures_under_a_low_ratio_keep_it_closed(client: redis.Redis) -> None:
    breaker = Breaker(client, "llm", CONFIG)
    for _ in range(4):
        _fail(breaker, 1)  # never two in a row, and a third of the calls
        breaker.succeeded(breaker.acquire())
        breaker.succeeded(breaker.acquire())
    status = breaker.status()
    assert status.state is BreakerState.CLOSED and status.failures == 4


def test_a_run_of_failures_opens_it_after_many_successes(client: redis.Redis) -> None:
    """A sudden outage under load: the window is full of earlier successes."""
    breaker = Breaker(client, "llm", CONFIG)
    for _ in range(50):
        breaker.succeeded(breaker.acquire())
    _fail(breaker, CONFIG.failures)
    assert breaker.status().state is BreakerState.OPEN


def test_half_open_lets_exactly_one_probe_through_across_processes(client: redis.Redis) -> None:
    _fail(Breaker(client, "llm", CONFIG), 3)
    time.sleep(CONFIG.cooldown_s + 0.1)
    breakers = [Breaker(client, "llm", CONFIG) for _ in range(16)]
    permits = []
    start = threading.Barrier(len(breakers))

    def ask(breaker: Breaker) -> None:
        start.wait()
        permits.append(breaker.acquire())

    threads = [threading.Thread(target=ask, args=(b,)) for b in breakers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    probes = [p for p in permits if p.allowed]
    assert len(probes) == 1 and probes[0].probe
    assert Breaker(client, "llm", CONFIG).status().state is BreakerState.HALF_OPEN


def test_successful_probes_close_it_and_a_failed_probe_opens_it_again(
    client: redis.Redis,
) -> None:
    breaker = Breaker(client, "llm", CONFIG)
    _fail(breaker, 3)
    time.sleep(CONFIG.cooldown_s + 0.1)
    probe = breaker.acquire()
    breaker.failed(probe)
    assert breaker.status().state is BreakerState.OPEN

    time.sleep(CONFIG.cooldown_s + 0.1)
    for _ in range(CONFIG.close_after):
        probe = breaker.acquire()
        assert probe.probe
        assert not breaker.acquire().allowed  # one probe at a time
        breaker.succeeded(probe)
    assert breaker.status().state is BreakerState.CLOSED
    assert breaker.acquire().allowed


def test_the_cooldown_honours_the_largest_retry_after(client: redis.Redis) -> None:
    breaker = Breaker(client, "llm", CONFIG)
    began = time.time()
    _fail(breaker, 1, retry_after=7)
    _fail(breaker, 2, retry_after=1)
    ended = time.time()
    status = breaker.status()
    assert status.state is BreakerState.OPEN and status.next_probe_at is not None
    assert began + 7 - 0.001 <= status.next_probe_at <= ended + 7 + 0.001


def test_a_probe_whose_caller_died_is_taken_over_after_its_lease(client: redis.Redis) -> None:
    config = BreakerConfig(failures=1, cooldown_s=0.5, probe_lease_s=1, close_after=1)
    breaker = Breaker(client, "llm", config)
    _fail(breaker, 1)
    time.sleep(0.6)
    # One clock reading for both: a stall between the two must not end the lease.
    now = time.time()
    assert breaker.acquire(now=now).probe  # and its caller never reports back
    assert not breaker.acquire(now=now).allowed
    time.sleep(1.1)
    taken_over = breaker.acquire()
    assert taken_over.probe
    breaker.succeeded(taken_over)
    assert breaker.status().state is BreakerState.CLOSED


def test_when_redis_is_down_every_call_goes_through() -> None:
    down = redis.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2, socket_timeout=0.2
    )
    breaker = Breaker(down, "llm", CONFIG)
    for _ in range(5):
        permit = breaker.acquire()
        assert permit.allowed
        breaker.failed(permit)  # and recording a failure does not raise
