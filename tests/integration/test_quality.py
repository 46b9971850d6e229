"""Answer quality on a real cluster: on the polled job, in /metrics, and in `scribes eval`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, TypeVar

from tests.cluster import Cluster
from tests.fake_anthropic import LEAK_TRIGGER
from tests.integration.conftest import ALICE_KEY
from tests.integration.test_question_path import ask, ingest, unique
from tests.metrics_scrape import Scrape, eventually, scrape

T = TypeVar("T")

BEES = (
    "Deacon Ilse Varga preached on Proverbs 6 and the ant, but spent most of the sermon on "
    "her forty beehives in the Okanogan valley. Each hive holds about sixty thousand bees in "
    "July. A colony survives the winter because every bee takes short shifts at the warm "
    "centre of the cluster; no single bee carries the hive."
)
LIGHTHOUSE = (
    "Pastor Teodor Lind told how his grandfather kept the Point Reyes lighthouse for nineteen "
    "years, climbing 308 steps every evening to trim the wick. A lamp does not argue with the "
    "fog, he said; it keeps burning where the ships can see it."
)
# Nothing in anyone's notes comes near this.
OFF_TOPIC = "How do I replace the brake pads on a Honda Civic?"

QUALITY_METRICS = (
    "scribes_retrieval_top_score_count",
    "scribes_retrieval_top_score_sum",
    "scribes_answer_citations_count",
    "scribes_answer_citations_sum",
    "scribes_answers_no_context_total",
    "scribes_answers_uncited_total",
)


def _quality_figures(cluster: Cluster) -> dict[str, float]:
    metrics: Scrape = scrape(f"{cluster.api_url}/metrics")
    return {name: metrics.value(name) for name in QUALITY_METRICS}


def test_a_polled_job_carries_its_quality_and_the_metrics_count_it(cluster: Cluster) -> None:
    document_id = unique("bees")
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, document_id, "Forty hives", BEES)
        before = _quality_figures(cluster)
        status, job = ask(alice, f"How many beehives does Deacon Ilse keep? {unique('q')}")
        again_status, again = ask(alice, job["question"])
        _, refused = ask(alice, f"{OFF_TOPIC} {unique('q')}")
        _, leaked = ask(
            alice, f"How many beehives does Deacon Ilse Varga keep? Then {LEAK_TRIGGER}."
        )

    assert status == 202 and job["status"] == "succeeded", job
    quality = job["quality"]
    retrieved = quality["retrieved_documents"]
    assert retrieved[0] == document_id
    assert quality["passages_used"] == len(retrieved) and 1 <= len(retrieved) <= 5
    # The fake model quotes passages [1] and [2], a cited sentence each.
    by_number = {source["number"]: source for source in job["sources"]}
    assert quality["top_score"] == by_number[1]["score"]
    assert quality["passages_cited"] == len(job["sources"]) == min(2, len(retrieved))
    assert quality["mean_score"] <= quality["top_score"]
    assert quality["all_sentences_cited"] is True

    # The exact cache serves the quality of the answer it keeps.
    assert again_status == 200 and again["cached"] == "exact"
    assert again["quality"] == quality

    assert refused["no_context"] is True
    assert refused["quality"] == {
        "top_score": None,
        "mean_score": None,
        "passages_used": 0,
        "passages_cited": 0,
        "all_sentences_cited": False,
        "retrieved_documents": [],
    }

    # The leak filter leaves "I can't share that.": an answer that cites nothing.
    assert leaked["no_context"] is False and leaked["quality"]["passages_cited"] == 0
    assert leaked["quality"]["all_sentences_cited"] is False

    def counted() -> None:
        after = _quality_figures(cluster)
        delta = {name: after[name] - before[name] for name in QUALITY_METRICS}
        # Two answers computed now had passages; the cache hit is not counted again.
        assert delta["scribes_retrieval_top_score_count"] == 2, delta
        expected_sum = quality["top_score"] + leaked["quality"]["top_score"]
        assert abs(delta["scribes_retrieval_top_score_sum"] - expected_sum) < 1e-6, delta
        assert delta["scribes_answer_citations_count"] == 2, delta
        assert delta["scribes_answer_citations_sum"] == quality["passages_cited"], delta
        assert delta["scribes_answers_no_context_total"] == 1, delta
        assert delta["scribes_answers_uncited_total"] == 1, delta

    eventually(counted)


def _scribes_eval(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SCRIBES_API_KEY": ALICE_KEY, "SCRIBES_API_URL": cluster.api_url}
    return subprocess.run(
        [sys.executable, "-m", "scribes", "eval", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _rank(job: dict[str, Any], expected: list[str]) -> int | None:
    documents = job["quality"]["retrieved_documents"]
    return next((i for i, doc in enumerate(documents, 1) if doc in expected), None)


def test_scribes_eval_prints_the_figures_the_jobs_show(cluster: Cluster, tmp_path: Path) -> None:
    bees, lighthouse = unique("bees"), unique("lighthouse")
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, bees, "Forty hives", BEES)
        ingest(alice, lighthouse, "The keeper's stairs", LIGHTHOUSE)
    tag = unique("set")  # new questions, so that the first run asks the pipeline, not the cache
    labelled: list[dict[str, Any]] = [
        {"question": f"How many hives does the deacon keep ({tag})?", "expected": [bees]},
        {
            "question": f"How many stairs did the keeper climb at dusk ({tag})?",
            "expected": [lighthouse],
        },
        {"question": f"Why does a colony of bees live through winter ({tag})?", "expected": [bees]},
        {"question": f"{OFF_TOPIC} ({tag})", "unanswerable": True},
    ]
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in labelled))

    first = _scribes_eval(cluster, str(path), "--json", "--top-k", "3")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert (report["answerable"], report["unanswerable"], report["top_k"]) == (3, 1, 3)

    with cluster.client(ALICE_KEY) as alice:
        jobs = [alice.get(f"/v1/questions/{r['job_id']}").json() for r in report["results"]]
    assert all(job["cached"] is None for job in jobs)
    ranks = [_rank(job, item.get("expected", [])) for job, item in zip(jobs, labelled, strict=True)]
    assert [r["rank"] for r in report["results"][:3]] == ranks[:3]
    assert [r["retrieved"] for r in report["results"]] == [
        job["quality"]["retrieved_documents"] for job in jobs
    ]
    answerable = ranks[:3]
    assert report["hit_at_1"] == round(sum(r == 1 for r in answerable) / 3, 4)
    assert report["hit_at_k"] == 1.0 and None not in answerable
    assert report["mrr"] == round(sum(1 / r for r in answerable if r) / 3, 4)
    assert jobs[3]["no_context"] is True and report["no_context_rate"] == 1.0
    assert report["false_no_context_rate"] == 0.0

    # Asked again, every answer comes from the exact cache with its quality: same figures.
    second = _scribes_eval(cluster, str(path), "--json", "--top-k", "3")
    again = json.loads(second.stdout)
    assert {r["cached"] for r in again["results"]} == {"exact"}
    figures = ("hit_at_1", "hit_at_k", "mrr", "no_context_rate", "false_no_context_rate")
    assert {k: again[k] for k in figures} == {k: report[k] for k in figures}

    table = _scribes_eval(cluster, str(path), "--top-k", "3")
    assert table.returncode == 0, table.stderr
    assert "hit@3             1.000  (3/3)" in table.stdout
    assert f"MRR               {report['mrr']:.3f}" in table.stdout
    assert "no-context rate   1.000  (1/1)" in table.stdout


def test_scribes_eval_refuses_a_bad_key(cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "labelled.jsonl"
    path.write_text(json.dumps({"question": "Why?", "expected": ["x"]}) + "\n")
    env = {**os.environ, "SCRIBES_API_KEY": "not-a-key", "SCRIBES_API_URL": cluster.api_url}
    result = subprocess.run(
        [sys.executable, "-m", "scribes", "eval", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("scribes: ") and "API key" in line, line
