"""A document whose indexing takes its worker down each time is given up after three
deliveries, and the documents queued behind it are indexed all the same."""

from __future__ import annotations

import time
import uuid

import psutil
import redis

from tests.cluster import Cluster
from tests.integration.conftest import ALICE_KEY


def _busy_index_child(cluster: Cluster, timeout_s: float = 60) -> psutil.Process:
    """The index pool's prefork child, once it is busy embedding."""
    pool = psutil.Process(cluster.supervisor.children["pool:index"].pid)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in pool.children():
            try:
                if child.cpu_percent(interval=0.2) > 50:
                    return child
            except psutil.NoSuchProcess:
                continue  # the child just killed, not yet replaced
    raise AssertionError("the index pool never got busy")


def _wait_for_redelivered_run(broker: redis.Redis, runs: int, before: set[str]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        counts = [
            int(broker.get(k) or 0)
            for k in broker.scan_iter("scribes:deliveries:*")
            if k not in before
        ]
        if counts and max(counts) >= runs:
            time.sleep(0.5)  # into the embedding
            return
        time.sleep(0.1)
    raise AssertionError(f"no redelivered run {runs}")


def test_a_document_that_kills_its_worker_three_times_is_failed_and_blocks_nothing(
    cluster: Cluster,
) -> None:
    tag = uuid.uuid4().hex[:6]
    # Long enough to take the index pool several seconds to embed.
    heavy = " ".join(
        f"Sentence {n} of the long retreat notes: the elders walked the hill in silence."
        for n in range(1500)
    )
    broker = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    before = set(broker.scan_iter("scribes:deliveries:*"))
    with cluster.client(ALICE_KEY) as alice:
        response = alice.post(
            "/v1/documents", json={"id": f"heavy-{tag}", "title": "Retreat", "text": heavy}
        )
        assert response.status_code == 202
        behind = alice.post(
            "/v1/documents",
            json={"id": f"light-{tag}", "title": "Light", "text": "A short note on grace."},
        )
        assert behind.status_code == 202
        # As a host lost mid-document would, again and again: the whole pool dies while it
        # embeds. The first run is not a redelivery; each later one is counted as it starts.
        _busy_index_child(cluster)
        cluster.kill_pool("index")
        cluster.restart_pool("index")
        for runs in (1, 2):
            _wait_for_redelivered_run(broker, runs, before)
            cluster.kill_pool("index")
            cluster.restart_pool("index")
        deadline = time.monotonic() + 150
        heavy_doc = alice.get(f"/v1/documents/heavy-{tag}").json()
        while heavy_doc["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.5)
            heavy_doc = alice.get(f"/v1/documents/heavy-{tag}").json()
        light = alice.get(f"/v1/documents/light-{tag}").json()
        while light["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.5)
            light = alice.get(f"/v1/documents/light-{tag}").json()

    assert heavy_doc["status"] == "failed" and heavy_doc["error_code"] == "poison", heavy_doc
    assert "died 3 times" in heavy_doc["error"]
    assert light["status"] == "indexed"
