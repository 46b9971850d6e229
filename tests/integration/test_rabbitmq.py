"""The same question path with RabbitMQ as the broker (Redis still holds jobs and caches).

Runs where a RabbitMQ server answers on 127.0.0.1:5672 and `rabbitmqctl` can make a
virtual host for the test, so the test never touches another user's queues.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, running_cluster
from tests.integration.test_question_path import MUSTARD, ask, ingest


def _rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def rabbit_vhost() -> Iterator[str]:
    if shutil.which("rabbitmqctl") is None or not _rabbitmq_answers():
        pytest.skip("no RabbitMQ server with rabbitmqctl on this machine")
    vhost = f"scribes-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    try:
        subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        yield vhost
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)


@pytest.fixture(scope="module")
def rabbit_cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, rabbit_vhost: str
) -> Iterator[Cluster]:
    data_dir: Path = tmp_path_factory.mktemp("rabbit")
    env = {
        "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{rabbit_vhost}",
        # Its own Redis database, apart from the session cluster's.
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/3",
    }
    with running_cluster(data_dir, env["REDIS_URL"], env) as cluster:
        yield cluster


def test_question_path_over_rabbitmq(rabbit_cluster: Cluster) -> None:
    with rabbit_cluster.client() as http:
        ingest(http, "mustard", "The mustard seed", MUSTARD)
        _, job = ask(http, "How many mustard seeds were in the jar?")
    assert job["status"] == "succeeded", job
    assert job["model"] == "extractive"
    assert any(source["document_id"] == "mustard" for source in job["sources"])
    assert "37 mustard seeds" in job["answer"]
