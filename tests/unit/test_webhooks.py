"""Webhooks without a cluster: the allow-list, signatures, the backoff, and the records'
scripts (the outbox entered in the write that finishes a job, attempts claimed once)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from rag.keys import webhook_outbox_key
from rag.records.jobs import JobFinished, JobStore
from rag.records.webhooks import WebhookDeliveries
from rag.settings import ConfigurationError, Settings
from rag.types import Failure
from rag.validation import InvalidInput
from rag.webhooks import (
    AllowedHosts,
    InvalidSignature,
    WebhookAttempt,
    WebhookState,
    check_callback_url,
    post_webhook,
    retry_delay,
    signature_header,
    verify_signature,
)

SECRET = "whsec-unit-0123456789abcdef"
ON = {
    "SCRIBES_WEBHOOK_ALLOWED_HOSTS": "hooks.example.com, *.apps.example.net:8443, 127.0.0.1",
    "SCRIBES_WEBHOOK_SECRET": SECRET,
}


def settings(**env: Any) -> Settings:
    return Settings(**env)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/scribes",
        "http://hooks.example.com:8080/any/port?x=1",
        "https://HOOKS.example.com./trailing-dot",
        "https://a.apps.example.net:8443/hook",
        "https://b.c.apps.example.net:8443/deeper",
        "http://127.0.0.1:9999/local",
    ],
)
def test_allowed_callback_urls_pass(url: str) -> None:
    assert check_callback_url(url, settings(**ON)) == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://hooks.example.com/x", "http:// or https://"),
        ("hooks.example.com/x", "http:// or https://"),
        ("https://user:pw@hooks.example.com/x", "user name or password"),
        ("https:///no-host", "no host"),
        ("https://hooks.example.com:99999/x", "port"),
        ("https://hooks.example.com/a b", "spaces or control"),
        ("https://evil.example.org/x", "not in SCRIBES_WEBHOOK_ALLOWED_HOSTS"),
        ("https://hooks.example.com.evil.org/x", "not in SCRIBES_WEBHOOK_ALLOWED_HOSTS"),
        # The wildcard needs a label before the domain, and its port.
        ("https://apps.example.net:8443/x", "not in SCRIBES_WEBHOOK_ALLOWED_HOSTS"),
        ("https://a.apps.example.net/x", "not in SCRIBES_WEBHOOK_ALLOWED_HOSTS"),
        ("http://127.0.0.2/x", "not in SCRIBES_WEBHOOK_ALLOWED_HOSTS"),
        ("http://[::1]/x", "not in SCRIBES_WEBHOOK_ALLOWED_HOSTS"),
    ],
)
def test_other_callback_urls_are_a_422(url: str, says: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_callback_url(url, settings(**ON))
    assert refused.value.status == 422 and refused.value.code == "invalid_request"
    assert says in refused.value.message


def test_without_an_allow_list_webhooks_are_refused_saying_how_to_enable_them() -> None:
    assert check_callback_url(None, settings()) is None
    with pytest.raises(InvalidInput) as refused:
        check_callback_url("https://hooks.example.com/x", settings())
    assert "SCRIBES_WEBHOOK_ALLOWED_HOSTS" in refused.value.message
    assert refused.value.status == 422


def test_webhooks_need_a_secret_and_well_formed_hosts() -> None:
    settings(**ON).check()
    with pytest.raises(ConfigurationError, match="SCRIBES_WEBHOOK_SECRET"):
        settings(SCRIBES_WEBHOOK_ALLOWED_HOSTS="hooks.example.com").check()
    with pytest.raises(ConfigurationError, match="SCRIBES_WEBHOOK_SECRET"):
        settings(
            SCRIBES_WEBHOOK_ALLOWED_HOSTS="h.example.com", SCRIBES_WEBHOOK_SECRET="short"
        ).check()
    bad = {**ON, "SCRIBES_WEBHOOK_ALLOWED_HOSTS": "hooks.*.example.com"}
    with pytest.raises(ConfigurationError, match="wildcard"):
        settings(**bad).check()
    slow = {**ON, "SCRIBES_WEBHOOK_TIMEOUT_S": "30", "SCRIBES_WEBHOOK_RESEND_AFTER_S": "20"}
    with pytest.raises(ConfigurationError, match="RESEND_AFTER"):
        settings(**slow).check()


def test_a_signature_verifies_and_any_change_breaks_it() -> None:
    body = b'{"id":"abc","status":"succeeded"}'
    header = signature_header(SECRET, body, timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert verify_signature(SECRET, header, body, now=1_700_000_100) == 1_700_000_000
    assert verify_signature(SECRET, header, body.decode(), now=1_700_000_100)
    refusals = [
        (SECRET, header, body + b" ", 1_700_000_000, "no v1 signature matches"),
        ("another-secret-0123456789", header, body, 1_700_000_000, "no v1 signature matches"),
        (SECRET, header.replace("t=1700000000", "t=1700000001"), body, 1_700_000_000, "match"),
        (SECRET, header, body, 1_700_000_301, "outside 300 s"),
        (SECRET, "v1=abc", body, 1_700_000_000, "needs t="),
        (SECRET, None, body, 1_700_000_000, "no Scribes-Signature"),
    ]
    for secret, sent, received, now, says in refusals:
        with pytest.raises(InvalidSignature, match=says):
            verify_signature(secret, sent, received, now=now)
    # While a secret changes, a header may carry a signature under each.
    both = f"{header},v1={signature_header('old-secret-0123456789', body).split('v1=')[1]}"
    assert verify_signature(SECRET, both, body, now=1_700_000_000)


def test_the_backoff_doubles_with_jitter_and_honours_retry_after() -> None:
    delays = [retry_delay(n, base_s=30) for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        assert 0.8 * 30 * 2 ** (n - 1) <= delay <= 1.2 * 30 * 2 ** (n - 1)
    # Eight attempts at the defaults: the last about an hour after the first.
    assert 0.8 * 3810 <= sum(delays) <= 1.2 * 3810
    assert retry_delay(1, base_s=30, retry_after_s=120) == 120
    assert retry_delay(1, base_s=30, retry_after_s=86_400) == 3600


def test_a_wildcard_host_may_not_resolve_to_a_private_address() -> None:
    # `*.0.0.1` matches 127.0.0.1 by wildcard only: a name the operator did not write out.
    allowed = AllowedHosts(("*.0.0.1",))
    result = post_webhook("http://127.0.0.1:9/x", b"{}", {}, allowed=allowed, timeout_s=1)
    assert not result.delivered and not result.retryable
    assert result.error is not None and "private or reserved" in result.error
    # Named exactly, it is tried (and nothing listens on port 9: a retryable failure).
    exact = AllowedHosts(("127.0.0.1",))
    result = post_webhook("http://127.0.0.1:9/x", b"{}", {}, allowed=exact, timeout_s=1)
    assert not result.delivered and result.retryable


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url.rsplit("/", 1)[0] + "/6", decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


def _job(jobs: JobStore, job_id: str, callback_url: str | None) -> None:
    jobs.create(
        job_id=job_id,
        tenant="alice",
        question="q?",
        top_k=3,
        corpus_version=1,
        answer_cache_key="k",
        callback_url=callback_url,
    )


def test_the_write_that_finishes_a_job_puts_its_webhook_in_the_outbox(redis: Redis) -> None:
    heard: list[JobFinished] = []
    jobs = JobStore(redis, ttl_s=600, on_finish=heard.append)
    _job(jobs, "withhook", "http://127.0.0.1:1/h")
    _job(jobs, "nohook", None)
    assert redis.zcard(webhook_outbox_key()) == 0  # not before it finishes
    assert jobs.fail("withhook", Failure("boom", "it broke"))
    assert jobs.cancel("nohook")
    assert redis.zrange(webhook_outbox_key(), 0, -1) == ["withhook"]
    assert [event.callback_url for event in heard] == ["http://127.0.0.1:1/h", None]
    record = jobs.get("withhook")
    assert record is not None and record.webhook is not None
    assert record.webhook.state is WebhookState.PENDING and record.webhook.attempts == ()


def test_attempts_are_claimed_once_kept_on_the_job_and_end_the_outbox_entry(
    redis: Redis,
) -> None:
    jobs = JobStore(redis, ttl_s=600)
    deliveries = WebhookDeliveries(redis)
    _job(jobs, "j1", "http://127.0.0.1:1/h")
    assert deliveries.begin("j1", 1, max_attempts=3).reason == "unfinished"
    jobs.cancel("j1")
    assert deliveries.begin("j1", 2, max_attempts=3).reason == "stale"
    first = deliveries.begin("j1", 1, max_attempts=3)
    assert first.reason == "go" and first.url == "http://127.0.0.1:1/h"
    # The same attempt again (a resent task, a redelivery) is not made twice.
    assert deliveries.begin("j1", 1, max_attempts=3).reason == "stale"
    due = time.time() + 30
    failed = WebhookAttempt(1, time.time(), 503, "retryable", 12.0)
    deliveries.record("j1", failed, WebhookState.PENDING, next_at=due)
    assert redis.zscore(webhook_outbox_key(), "j1") == pytest.approx(due)
    assert deliveries.next_attempt("j1") == 2
    assert deliveries.begin("j1", 2, max_attempts=3).reason == "go"
    deliveries.record("j1", WebhookAttempt(2, time.time(), 200, None, 3.0), WebhookState.DELIVERED)
    assert redis.zcard(webhook_outbox_key()) == 0
    record = jobs.get("j1")
    assert record is not None and record.webhook is not None
    assert record.webhook.state is WebhookState.DELIVERED
    assert [(a.attempt, a.status) for a in record.webhook.attempts] == [(1, 503), (2, 200)]
    assert deliveries.begin("j1", 3, max_attempts=3).reason == "done"
    # Nothing changes a final state.
    assert not deliveries.record("j1", failed, WebhookState.FAILED)


def test_attempts_that_never_report_are_bounded(redis: Redis) -> None:
    jobs = JobStore(redis, ttl_s=600)
    deliveries = WebhookDeliveries(redis)
    _job(jobs, "j2", "http://127.0.0.1:1/h")
    jobs.cancel("j2")
    assert deliveries.begin("j2", 1, max_attempts=2).reason == "go"
    assert deliveries.begin("j2", 2, max_attempts=2).reason == "go"  # the first died
    assert deliveries.begin("j2", 3, max_attempts=2).reason == "done"
    record = jobs.get("j2")
    assert record is not None and record.webhook is not None
    assert record.webhook.state is WebhookState.FAILED
    assert redis.zcard(webhook_outbox_key()) == 0
