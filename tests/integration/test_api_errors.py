"""Every bad request gets a 4xx with a JSON error body, and leaves nothing half-written."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from tests.cluster import Cluster
from tests.integration.conftest import ALICE_KEY

LONG_QUESTION = "why " * 400


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"question": ""}, 400, "empty_question"),
        ({"question": "   \n\t "}, 400, "empty_question"),
        ({"question": "what about\x00this"}, 400, "control_characters"),
        ({"question": "bell\x07ring"}, 400, "control_characters"),
        ({"question": LONG_QUESTION}, 400, "question_too_long"),
        ({"question": 42}, 422, "invalid_request"),
        ({"question": ["a", "list"]}, 422, "invalid_request"),
        ({"question": None}, 422, "invalid_request"),
        ({}, 422, "invalid_request"),
        ({"question": "ok?", "top_k": "5"}, 422, "invalid_request"),
        ({"question": "ok?", "top_k": 0}, 422, "invalid_request"),
        ({"question": "ok?", "top_k": 10_000}, 422, "invalid_request"),
        ({"question": "ok?", "top_k": True}, 422, "invalid_request"),
        ({"question": "ok?", "surprise": 1}, 422, "invalid_request"),
    ],
)
def test_bad_questions_are_refused_and_no_job_is_written(
    cluster: Cluster, body: dict[str, Any], status: int, code: str
) -> None:
    jobs_before = _job_count(cluster)
    with cluster.client(ALICE_KEY) as alice:
        response = alice.post("/v1/questions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert _job_count(cluster) == jobs_before


def test_malformed_json_is_a_422(cluster: Cluster) -> None:
    with cluster.client(ALICE_KEY) as alice:
        response = alice.post(
            "/v1/questions", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing API key"),
        ({"Authorization": "Bearer not-a-key"}, "unknown API key"),
        ({"Authorization": f"Basic {ALICE_KEY}"}, "missing API key"),
    ],
)
def test_missing_or_wrong_key_is_a_401(
    cluster: Cluster, headers: dict[str, str], message: str
) -> None:
    with cluster.client() as anonymous:
        for method, path, body in (
            ("POST", "/v1/questions", {"question": "hello?"}),
            ("GET", "/v1/questions/abc", None),
            ("POST", "/v1/documents", {"title": "t", "text": "x"}),
            ("GET", "/v1/documents/abc", None),
            ("DELETE", "/v1/documents/abc", None),
        ):
            response = anonymous.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (method, path)
            assert response.headers["www-authenticate"] == "Bearer"
            assert message in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"title": "t", "text": ""}, 400, "empty_text"),
        ({"title": "t", "text": "   "}, 400, "empty_text"),
        ({"title": "", "text": "words"}, 400, "empty_title"),
        ({"title": "two\nlines", "text": "words"}, 400, "invalid_title"),
        ({"id": "has space", "title": "t", "text": "words"}, 400, "invalid_document_id"),
        ({"id": "../etc", "title": "t", "text": "words"}, 400, "invalid_document_id"),
        ({"title": "t", "text": "nul\x00byte"}, 400, "control_characters"),
        (
            {"title": "t", "text": "words", "metadata": {"k": "v" * 20_000}},
            400,
            "metadata_too_large",
        ),
        ({"title": "t"}, 422, "invalid_request"),
        ({"title": "t", "text": 5}, 422, "invalid_request"),
        ({"title": "t", "text": "words", "metadata": ["not", "a", "dict"]}, 422, "invalid_request"),
    ],
)
def test_bad_documents_are_refused_and_nothing_is_queued(
    cluster: Cluster, body: dict[str, Any], status: int, code: str
) -> None:
    with cluster.client(ALICE_KEY) as alice:
        before = alice.get("/v1/documents").json()["documents"]
        response = alice.post("/v1/documents", json=body)
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert alice.get("/v1/documents").json()["documents"] == before


def test_unknown_ids_are_404s_with_a_json_body(cluster: Cluster) -> None:
    with cluster.client(ALICE_KEY) as alice:
        for method, path in (
            ("GET", "/v1/questions/0123456789abcdef0123456789abcdef"),
            ("GET", "/v1/questions/not-even-an-id!"),
            ("GET", "/v1/documents/never-ingested"),
            ("DELETE", "/v1/documents/never-ingested"),
            ("GET", "/v1/nowhere"),
        ):
            response = alice.request(method, path)
            assert response.status_code == 404, (method, path)
            assert response.json()["error"]["code"] == "not_found"


def test_oversized_body_is_a_413(cluster: Cluster) -> None:
    with cluster.client(ALICE_KEY) as alice:
        response = alice.post("/v1/documents", json={"title": "big", "text": "word " * 1_000_000})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


def _job_count(cluster: Cluster) -> int:
    client = redis.Redis.from_url(cluster.redis_url)
    return sum(1 for _ in client.scan_iter("scribes:job:*", count=1000))


def test_redis_down_is_a_503_that_says_what_to_do() -> None:
    from fastapi.testclient import TestClient

    from api_shim.app import create_app
    from rag.settings import Settings
    from scribes.localredis import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(Settings(REDIS_URL=url))
    with TestClient(app) as http:
        response = http.post("/v1/questions", json={"question": "is anyone there?"})
        ready = http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"] == {
        "code": "redis_unavailable",
        "message": f"Redis at {url} is not reachable; start it or set REDIS_URL",
    }
    assert ready.status_code == 503 and ready.json()["checks"]["redis"] is False


def test_an_unexpected_fault_is_a_json_500_and_the_traceback_is_logged(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    from api_shim.app import create_app
    from rag.settings import Settings

    app = create_app(Settings(REDIS_URL=redis_url))

    @app.get("/v1/boom")
    def boom() -> None:
        raise RuntimeError("a bug of ours")

    with TestClient(app, raise_server_exceptions=False) as http:
        response = http.get("/v1/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "internal_error"
    assert "a bug of ours" not in response.text  # internals stay in the log
    logged = [r for r in caplog.records if r.name == "scribes.api" and r.exc_info]
    assert logged and "RuntimeError" in logged[0].getMessage()


def test_readiness_is_the_apis_own_and_status_reports_every_pool(redis_url: str) -> None:
    """No worker runs here: the API is still ready to serve, and status says what is down."""
    from fastapi.testclient import TestClient

    from api_shim.app import create_app
    from rag.records.heartbeats import Heartbeats
    from rag.settings import Settings

    url = redis_url.rsplit("/", 1)[0] + "/11"
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    with TestClient(create_app(Settings(REDIS_URL=url))) as http:
        ready = http.get("/readyz")
        down = http.get("/v1/status").json()
        Heartbeats(client).beat("embed", "embed@host-a")
        Heartbeats(client).beat("embed", "embed@host-b")
        one_up = http.get("/v1/status").json()
    client.flushdb()

    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"redis": True, "broker": True}}
    assert down["status"] == "degraded"
    assert down["checks"]["redis"] and not down["checks"]["pool:embed"]
    assert not down["checks"]["vector_store"]
    assert one_up["checks"]["pool:embed"] and not one_up["checks"]["pool:generate"]
    assert one_up["pools"]["embed"] == {"processes": 2}
