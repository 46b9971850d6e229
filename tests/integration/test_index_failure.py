"""A document whose indexing fails ends `failed` with a reason, and `scribes ingest --wait`
says which one and exits 1, instead of waiting out its timeout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from tests.cluster import Cluster
from tests.integration.conftest import CAROL_KEY


def _ingest(cluster: Cluster, path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SCRIBES_API_URL": cluster.api_url,
        "SCRIBES_API_KEY": CAROL_KEY,
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "scribes.cli", "ingest", str(path), "--timeout", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_index_failure_fails_the_document_and_ingest_names_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    note = tmp_path / "fragile.md"
    note.write_text("# Fragile\n\nElder Hannah kept the church keys on a red ribbon.\n")
    client = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    # A corrupt corpus counter: the store write's last step fails, as a broken Redis would.
    client.set("scribes:corpus:carol", "not-a-number")
    try:
        done = _ingest(cluster, note)
        with cluster.client(CAROL_KEY) as carol:
            document = carol.get("/v1/documents/fragile").json()
    finally:
        client.delete("scribes:corpus:carol")

    assert done.returncode == 1, done.stdout + done.stderr
    assert "scribes: fragile: " in done.stderr and "not an integer" in done.stderr
    assert "1 notes submitted, 1 problems" in done.stdout
    assert document["status"] == "failed" and document["error_code"] == "internal_error"
    assert "not an integer" in document["error"]

    # The same note again, with the fault gone: it indexes.
    again = _ingest(cluster, note)
    assert again.returncode == 0, again.stderr
    with cluster.client(CAROL_KEY) as carol:
        assert carol.get("/v1/documents/fragile").json()["status"] == "indexed"
