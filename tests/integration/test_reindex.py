"""`scribes reindex` on a real cluster of its own: a new generation built beside the live one
while questions are answered, a switch nobody notices, a rollback, a model of another
dimension, and a pool SIGKILLed mid-run. Every setting is the default a user runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.corpus import synthetic_notes
from rag.settings import Settings
from scribes.notefiles import collect_note_files, read_note
from tests.cluster import Cluster, running_cluster
from tests.fake_anthropic import FakeAnthropic
from tests.integration.conftest import LLM_KEY
from tests.integration.test_question_path import ingest, wait_job

ADMIN_KEY = "key-operator-424242424242"
DANA_KEY = "key-dana-1111111111"  # the tenant whose notes are re-embedded
ERIN_KEY = "key-erin-2222222222"  # a second tenant, to check counts per tenant
SAMPLES = Path(__file__).resolve().parents[2] / "samples"
QUESTIONS = [
    json.loads(line)
    for line in (SAMPLES / "eval" / "questions.jsonl").read_text().splitlines()
    if line.strip()
]
LOAD_CLIENTS = 4
# The eval questions the live system answers from the notes before any reindex.
ANSWERABLE: list[str] = []


def _answerable(http: httpx.Client, limit: int = 40) -> list[str]:
    jobs = [
        http.post("/v1/questions", json={"question": q["question"]}).json()
        for q in QUESTIONS[:limit]
    ]
    found = [job if job.get("status") == "succeeded" else wait_job(http, job["id"]) for job in jobs]
    answerable = [job["question"] for job in found if not job["no_context"]]
    assert len(answerable) > limit // 2
    return answerable


@pytest.fixture(scope="module")
def reindex_cluster(
    session_dir: Path, redis_url: str, fake_llm: FakeAnthropic
) -> Iterator[Cluster]:
    """A cluster of its own (database 9, its own store): a reindex switches the whole store,
    which the session's other tests must not see."""
    env = {
        "SCRIBES_API_KEYS": f"{DANA_KEY}=dana,{ERIN_KEY}=erin",
        "SCRIBES_ADMIN_KEYS": ADMIN_KEY,
        "ANTHROPIC_API_KEY": LLM_KEY,
        "ANTHROPIC_BASE_URL": fake_llm.base_url,
        "SCRIBES_LLM_MAX_RETRIES": "2",
    }
    own_redis = redis_url.rsplit("/", 1)[0] + "/9"
    with running_cluster(session_dir / "reindex-cluster", own_redis, env) as running:
        with running.client(DANA_KEY) as dana:
            for root, file in collect_note_files([SAMPLES]):
                note = read_note(root, file)
                response = dana.post(
                    "/v1/documents",
                    json={"id": note.document_id, "title": note.title, "text": note.text},
                )
                assert response.status_code == 202, response.text
            _wait_all_indexed(
                dana, [read_note(r, f).document_id for r, f in collect_note_files([SAMPLES])]
            )
        with running.client(DANA_KEY) as dana:
            ANSWERABLE[:] = _answerable(dana)
        with running.client(ERIN_KEY) as erin:
            # A second tenant, and enough chunks in all for several batches.
            synthetic = list(synthetic_notes(120, seed=9, words=(600, 900)))
            for made in synthetic:
                response = erin.post(
                    "/v1/documents", json={"id": made.id, "title": made.title, "text": made.text}
                )
                assert response.status_code == 202, response.text
            _wait_all_indexed(erin, [made.id for made in synthetic])
        yield running


def _wait_all_indexed(http: httpx.Client, ids: list[str], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = set(ids)
    while waiting and time.monotonic() < deadline:
        for document_id in list(waiting):
            if http.get(f"/v1/documents/{document_id}").json()["status"] == "indexed":
                waiting.discard(document_id)
        time.sleep(0.5)
    assert not waiting, f"not indexed: {sorted(waiting)[:5]}"


def _admin(cluster: Cluster) -> httpx.Client:
    return cluster.client(ADMIN_KEY)


def _status(cluster: Cluster) -> dict[str, Any]:
    with _admin(cluster) as admin:
        response = admin.get("/v1/admin/reindex")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _wait_run(cluster: Cluster, run_id: str, timeout_s: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = _status(cluster)["run"]
        assert run["run_id"] == run_id
        if run["phase"] in ("done", "failed", "cancelled"):
            return dict(run)
        time.sleep(0.5)
    raise AssertionError(f"reindex {run_id} did not end: {run}")


class QuestionLoad:
    """Clients asking answerable questions, bypassing the caches, until stopped."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._stop = threading.Event()
        self.jobs: list[dict[str, Any]] = []
        self._threads = [
            threading.Thread(target=self._ask, args=(n,), daemon=True) for n in range(LOAD_CLIENTS)
        ]

    def _ask(self, client: int) -> None:
        with self._cluster.client(DANA_KEY) as http:
            n = client
            while not self._stop.is_set():
                question = ANSWERABLE[n % len(ANSWERABLE)]
                n += LOAD_CLIENTS
                response = http.post(
                    "/v1/questions", json={"question": question, "cache": "bypass"}
                )
                assert response.status_code == 202, response.text
                self.jobs.append(wait_job(http, response.json()["id"], timeout_s=120))

    def __enter__(self) -> QuestionLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(180)

    def check(self) -> None:
        """Every question answered, and from the notes: none failed, none found nothing."""
        assert self.jobs, "the load asked nothing"
        failed = [job for job in self.jobs if job["status"] != "succeeded"]
        assert not failed, failed[:3]
        empty = [job["question"] for job in self.jobs if job["no_context"]]
        assert not empty, empty[:3]


def test_only_an_operator_may_reindex(reindex_cluster: Cluster) -> None:
    with reindex_cluster.client(DANA_KEY) as dana:
        refused = dana.post("/v1/admin/reindex", json={})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
        assert dana.get("/v1/admin/reindex").status_code == 403
        assert dana.post("/v1/admin/reindex/rollback").status_code == 403
    with reindex_cluster.client() as anonymous:
        assert anonymous.post("/v1/admin/reindex", json={}).status_code == 401
    with _admin(reindex_cluster) as admin:
        missing = admin.post("/v1/admin/reindex", json={"model": "/no/such/model"})
        assert missing.status_code == 422
        assert missing.json()["error"]["code"] == "invalid_model"
        odd = admin.post("/v1/admin/reindex", json={"modle": "x"})
        assert odd.status_code == 422
        assert admin.post("/v1/admin/reindex/rollback").status_code == 409
    # Nothing was started by any of it.
    assert _status(reindex_cluster)["run"] is None
    assert _status(reindex_cluster)["live"]["number"] == 1


def test_unchanged_reindex_under_load_copies_every_chunk_and_switches(
    reindex_cluster: Cluster,
) -> None:
    before = _status(reindex_cluster)
    with QuestionLoad(reindex_cluster) as load:
        time.sleep(2)
        with _admin(reindex_cluster) as admin:
            started = admin.post("/v1/admin/reindex", json={})
            assert started.status_code == 202, started.text
            run_id = started.json()["run"]["run_id"]
            second = admin.post("/v1/admin/reindex", json={})
            assert second.status_code == 409
        run = _wait_run(reindex_cluster, run_id)
        time.sleep(3)  # questions after the switch, too
    assert run["phase"] == "done", run
    load.check()
    # Nothing re-embedded: every chunk's vector was copied, as its text and model were the same.
    assert run["embedded"] == 0 and run["cached"] == 0
    assert (
        run["copied"] == run["total"] == run["checks"]["chunks"] > 2 * Settings().reindex_batch_size
    )
    assert run["checks"]["tenants"] == 2
    assert run["checks"]["probes"] > 0
    assert run["checks"]["probes_agreeing"] == run["checks"]["probes"]
    after = _status(reindex_cluster)
    assert after["live"]["number"] == before["live"]["number"] + 1 == run["target"]
    assert after["live"]["model"] == before["live"]["model"]
    kept = {g["number"]: g for g in after["generations"]}[run["source"]]
    assert kept["state"] == "retained" and kept["retained_until"] > time.time() + 3600

    # The operator's view, from the command line.
    shown = _cli(reindex_cluster, "reindex", "status")
    assert shown.returncode == 0, shown.stderr
    assert f"{run['total']}/{run['total']} chunks" in shown.stdout
    assert "phase done" in shown.stdout


def test_rollback_switches_back_with_what_was_written_since(reindex_cluster: Cluster) -> None:
    live = _status(reindex_cluster)["live"]["number"]
    assert live > 1, "runs after the unchanged reindex"
    with reindex_cluster.client(ERIN_KEY) as erin:
        ingest(
            erin, "erin-bees", "Bees", "The bees swarmed onto the plum branch in late May. " * 30
        )
    shown = _cli(reindex_cluster, "reindex", "rollback")
    assert shown.returncode == 0, shown.stderr
    status = _status(reindex_cluster)
    assert status["run"]["kind"] == "rollback" and status["run"]["phase"] == "done"
    assert status["live"]["number"] == status["run"]["target"] != live
    # The note written after the switch is in the generation rolled back to.
    with reindex_cluster.client(ERIN_KEY) as erin:
        response = erin.post(
            "/v1/questions", json={"question": "When did the bees swarm?", "cache": "bypass"}
        )
        job = wait_job(erin, response.json()["id"])
    assert job["status"] == "succeeded"
    assert "erin-bees" in {source["document_id"] for source in job["sources"]}


def test_model_change_to_another_dimension_survives_a_killed_pool(
    reindex_cluster: Cluster, tmp_path: Path
) -> None:
    model_dir = _projected_model(tmp_path / "minilm-128")
    progress: list[int] = []
    with QuestionLoad(reindex_cluster) as load:
        with _admin(reindex_cluster) as admin:
            started = admin.post("/v1/admin/reindex", json={"model": str(model_dir)})
            assert started.status_code == 202, started.text
        # Mid-build, once a batch is in: the index pool, which embeds, is killed outright.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            run = _status(reindex_cluster)["run"]
            progress.append(run["done"])
            if run["done"] > 0 and run["phase"] == "build":
                break
            time.sleep(0.2)
        reindex_cluster.kill_pool("index")
        time.sleep(3)
        reindex_cluster.restart_pool("index")
        while True:
            run = _status(reindex_cluster)["run"]
            progress.append(run["done"])
            if run["phase"] in ("done", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline + 300, run
            time.sleep(0.5)
        time.sleep(3)
    assert run["phase"] == "done", run
    load.check()
    # Resumed, not restarted: the count never went back, and no batch was embedded twice
    # but the one the pool died holding.
    assert progress == sorted(progress)
    batch = Settings().reindex_batch_size
    assert run["done"] == run["total"]
    assert run["embedded"] + run["cached"] <= run["total"] + batch
    status = _status(reindex_cluster)
    assert status["live"]["dimension"] == 128
    assert status["live"]["model"] == str(model_dir)
    # Questions now go through the new model, and the record of each names it.
    with reindex_cluster.client(DANA_KEY) as dana:
        response = dana.post(
            "/v1/questions", json={"question": QUESTIONS[0]["question"], "cache": "bypass"}
        )
        job = wait_job(dana, response.json()["id"])
    assert job["status"] == "succeeded" and not job["no_context"]
    assert set(QUESTIONS[0]["expected"]) & {s["document_id"] for s in job["sources"]}


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SCRIBES_API_URL": cluster.api_url,
        "SCRIBES_ADMIN_KEY": ADMIN_KEY,
    }
    return subprocess.run(
        [sys.executable, "-m", "scribes", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _projected_model(directory: Path) -> Path:
    """The shipped model with a dense layer projecting to 128 dimensions (seeded, so the same
    every run), saved as a sentence-transformers model: a second model of another size."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Normalize

    from rag.tokens import resolve_model_path

    torch.manual_seed(0)
    base = SentenceTransformer(str(resolve_model_path("all-MiniLM-L6-v2")), device="cpu")
    dense = Dense(
        in_features=384, out_features=128, bias=False, activation_function=torch.nn.Identity()
    )
    model = SentenceTransformer(modules=[*base, dense, Normalize()], device="cpu")
    model.save(str(directory))
    return directory


def test_on_qdrant_a_reindex_moves_the_alias_and_keeps_every_chunk(
    session_dir: Path, redis_url: str, fake_llm: FakeAnthropic, tmp_path: Path
) -> None:
    """The same through qdrant-client (its in-process mode standing in for a server):
    collections instead of shards, no optimize phase, and the live alias moved."""
    store_dir = tmp_path / "qdrant"
    env = {
        "QDRANT_URL": f"path:{store_dir}",
        "SCRIBES_ADMIN_KEYS": ADMIN_KEY,
        "ANTHROPIC_API_KEY": LLM_KEY,
        "ANTHROPIC_BASE_URL": fake_llm.base_url,
    }
    own_redis = redis_url.rsplit("/", 1)[0] + "/5"
    notes = [read_note(root, file) for root, file in collect_note_files([SAMPLES])][:8]
    model_dir = _projected_model(tmp_path / "minilm-128")
    with (
        running_cluster(tmp_path / "cluster", own_redis, env) as cluster,
        cluster.client() as http,
    ):
        for note in notes:
            ingest(http, note.document_id, note.title, note.text)
        for model in (None, str(model_dir)):
            with _admin(cluster) as admin:
                started = admin.post("/v1/admin/reindex", json={"model": model})
                assert started.status_code == 202, started.text
            run = _wait_run(cluster, started.json()["run"]["run_id"])
            assert run["phase"] == "done", run
            assert "optimize_s" not in run["checks"]
            assert run["done"] == run["total"] == run["checks"]["chunks"] > 0
        assert _status(cluster)["live"] == {
            **_status(cluster)["live"],
            "number": 3,
            "dimension": 128,
        }
        response = http.post("/v1/questions", json={"question": f"What is {notes[0].title} about?"})
        job = wait_job(http, response.json()["id"])
        assert job["status"] == "succeeded", job
    from qdrant_client import QdrantClient

    client = QdrantClient(path=str(store_dir))
    try:
        aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
        assert aliases == {"scribes_chunks_live": "scribes_chunks_g3"}
        # The generation before the last is dropped at the switch; the one before is kept.
        names = {c.name for c in client.get_collections().collections}
        assert {"scribes_chunks_g2", "scribes_chunks_g3"} <= names
        assert "scribes_chunks" not in names
    finally:
        client.close()


def test_a_kept_generation_is_deleted_when_its_window_ends(reindex_cluster: Cluster) -> None:
    """Runs last: the generation kept by the model change's switch is past its window (as a
    day later), and the heartbeat's sweep has the store's owner delete it."""
    import redis

    from rag.store.generations import Generation, Generations, GenerationState

    kept = [g for g in _status(reindex_cluster)["generations"] if g["state"] == "retained"]
    assert len(kept) == 1, kept
    generation = Generation.from_json(kept[0])
    shard = generation.edge_dir(Settings(SCRIBES_DATA_DIR=str(reindex_cluster.data_dir)))
    assert shard.is_dir()
    connection = redis.Redis.from_url(reindex_cluster.redis_url, decode_responses=True)
    try:
        Generations(connection, model="", dimension=0).save(
            Generation(
                generation.number,
                generation.model,
                generation.dimension,
                GenerationState.RETAINED,
                generation.created_at,
                retained_until=time.time() - 1,
            )
        )
    finally:
        connection.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = {g["number"]: g["state"] for g in _status(reindex_cluster)["generations"]}
        if states[generation.number] == "dropped":
            break
        time.sleep(0.5)
    assert states[generation.number] == "dropped"
    assert not shard.exists()
    with _admin(reindex_cluster) as admin:
        refused = admin.post("/v1/admin/reindex/rollback")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "nothing_to_roll_back"
