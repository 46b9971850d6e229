"""The client's retries and long-poll pacing, against a real server on loopback that answers
503s, errors and unfinished jobs as each test scripts it."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from scribes.client import (
    ApiError,
    AsyncScribes,
    Retries,
    Scribes,
    Timeout,
    Unreachable,
)
from scribes.localredis import free_port
from tests.scripted_api import Received, ScriptedApi, finished_job, send_json

FAST = Retries(attempts=4, backoff_s=0.02, max_backoff_s=0.05)


def unavailable(retry_after: str | None = None) -> Any:
    def reply(handler: BaseHTTPRequestHandler, _: Received) -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        body = {"error": {"code": "broker_unavailable", "message": "the broker is down"}}
        send_json(handler, 503, body, headers)

    return reply


def answer(status: int, body: Any) -> Any:
    def reply(handler: BaseHTTPRequestHandler, _: Received) -> None:
        send_json(handler, status, body)

    return reply


def test_a_submit_goes_through_503s_with_one_idempotency_key_and_honours_retry_after() -> None:
    replies = [unavailable(retry_after="1"), unavailable(), answer(200, finished_job("j1"))]
    with ScriptedApi(replies) as api, Scribes(api.url, api_key="k-1", retries=FAST) as client:
        started = time.monotonic()
        job = client.submit("How many mustard seeds?", top_k=3, cache="refresh")
        took = time.monotonic() - started

    assert job.succeeded and job.id == "j1"
    assert job.sources[0].document_id == "mustard" and job.sources[0].number == 1
    assert job.usage.cost_usd == Decimal("0.000495")
    assert [r.method for r in api.received] == ["POST"] * 3
    keys = {r.headers.get("idempotency-key") for r in api.received}
    assert len(keys) == 1 and None not in keys and "" not in keys
    assert all(r.headers["authorization"] == "Bearer k-1" for r in api.received)
    assert api.received[0].body == {
        "question": "How many mustard seeds?",
        "top_k": 3,
        "cache": "refresh",
    }
    assert 1.0 <= took < 3, took  # Retry-After's second, then a short backoff


def test_each_submit_gets_a_key_of_its_own_and_a_given_key_is_sent() -> None:
    with (
        ScriptedApi([answer(202, {"id": "j2", "status": "queued"})]) as api,
        Scribes(api.url, api_key="", retries=FAST) as client,
    ):
        first = client.submit("q one")
        client.submit("q two")
        client.ingest("Title", "Text", idempotency_key="mine-1")
    keys = [r.headers.get("idempotency-key") for r in api.received]
    assert keys[0] and keys[1] and keys[0] != keys[1] and keys[2] == "mine-1"
    assert "authorization" not in api.received[0].headers
    assert first.status == "queued" and first.question == "q one" and not first.finished


def test_a_repeat_that_meets_its_first_request_still_running_is_retried() -> None:
    busy = {"error": {"code": "idempotency_in_progress", "message": "being handled; retry"}}
    conflict = {"error": {"code": "idempotency_conflict", "message": "another body"}}
    replies = [answer(409, busy), answer(200, finished_job("j7")), answer(409, conflict)]
    with ScriptedApi(replies) as api, Scribes(api.url, api_key="", retries=FAST) as client:
        assert client.submit("q", idempotency_key="k-7").id == "j7"
        with pytest.raises(ApiError) as caught:
            client.submit("another q", idempotency_key="k-7")
    assert len(api.received) == 3 and caught.value.code == "idempotency_conflict"


def test_a_post_without_a_key_is_not_retried() -> None:
    with (
        ScriptedApi([unavailable()]) as api,
        Scribes(api.url, api_key="", retries=FAST) as client,
        pytest.raises(ApiError) as caught,
    ):
        client.reindex(model="m")
    assert len(api.received) == 1
    assert caught.value.status == 503 and caught.value.code == "broker_unavailable"


def test_503s_past_the_attempts_raise_the_api_error_with_its_code() -> None:
    with (
        ScriptedApi([unavailable(retry_after="0")]) as api,
        Scribes(api.url, api_key="", retries=FAST) as client,
        pytest.raises(ApiError) as e,
    ):
        client.get("j3")
    assert len(api.received) == 4 and {r.path for r in api.received} == {"/v1/questions/j3"}
    assert (e.value.status, e.value.code, e.value.retry_after_s) == (503, "broker_unavailable", 0)
    assert e.value.message == "the broker is down"


def test_a_client_error_is_raised_at_once_with_its_details() -> None:
    body = {
        "error": {
            "code": "budget_exceeded",
            "message": "the daily budget is spent",
            "period": "daily",
            "resets_at": "2026-12-07T00:00:00Z",
        }
    }
    with (
        ScriptedApi([answer(402, body)]) as api,
        Scribes(api.url, api_key="", retries=FAST) as client,
        pytest.raises(ApiError) as caught,
    ):
        client.submit("q")
    assert len(api.received) == 1
    assert caught.value.code == "budget_exceeded" and caught.value.status == 402
    assert caught.value.details == {"period": "daily", "resets_at": "2026-12-07T00:00:00Z"}


def test_a_refused_connection_is_retried_then_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Scribes(url, api_key="", retries=FAST) as client, pytest.raises(Unreachable) as caught:
        client.document("doc-1")
    assert caught.value.code == "api_unreachable" and caught.value.status == 0
    assert caught.value.message == (
        f"Scribes API at {url} is not reachable (ConnectError); start it with `scribes up` "
        "or set SCRIBES_API_URL"
    )


def test_wait_long_polls_until_the_job_finishes() -> None:
    queued = {"id": "j4", "status": "running", "stage": "generate"}

    def slow_queued(handler: BaseHTTPRequestHandler, _: Received) -> None:
        time.sleep(0.3)  # a long poll that ran its course
        send_json(handler, 200, queued)

    replies = [slow_queued, slow_queued, answer(200, finished_job("j4"))]
    with ScriptedApi(replies) as api, Scribes(api.url, api_key="", retries=FAST) as client:
        job = client.wait("j4", timeout_s=45)
    assert job.succeeded and job.answer == "From your notes: 37 seeds [1]."
    assert [r.query["wait"] for r in api.received] == [["30"]] * 3


def test_wait_times_out_with_the_last_job_and_paces_an_api_that_does_not_hold_polls() -> None:
    queued = {"id": "j5", "status": "queued", "stage": "queued"}
    with (
        ScriptedApi([answer(200, queued)]) as api,
        Scribes(api.url, api_key="", retries=FAST) as client,
        pytest.raises(Timeout) as caught,
    ):
        client.wait("j5", timeout_s=1.5)
    assert caught.value.job.status == "queued" and caught.value.job.id == "j5"
    assert caught.value.message == "question j5 not answered in 1.5 s"
    # Answered at once each time: paced from 50 ms up to 1 s, not a spin.
    assert 3 <= len(api.received) <= 8, len(api.received)
    assert api.received[0].query["wait"] == ["2"]


def test_the_async_client_retries_and_waits_too() -> None:
    replies = [
        unavailable(),
        answer(202, {"id": "j6", "status": "queued"}),
        answer(200, finished_job("j6")),
    ]

    async def ask() -> Any:
        async with AsyncScribes(api.url, api_key="", retries=FAST) as client:
            return await client.ask("How many mustard seeds?", timeout_s=10)

    with ScriptedApi(replies) as api:
        job = asyncio.run(ask())
    assert job.succeeded and job.id == "j6"
    assert [(r.method, r.path) for r in api.received] == [
        ("POST", "/v1/questions"),
        ("POST", "/v1/questions"),
        ("GET", "/v1/questions/j6"),
    ]
    assert api.received[0].headers["idempotency-key"] == api.received[1].headers["idempotency-key"]
