"""The query-vector and context caches on the real cluster: hits, misses, tenants, changes.

Read through the cache counters of one scrape of the API (`scribes_cache_requests_total`);
the tests of this module run one at a time, so the deltas are theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.cluster import Cluster
from tests.fake_anthropic import FakeAnthropic
from tests.integration.conftest import ALICE_KEY, BOB_KEY
from tests.integration.test_question_path import MUSTARD, ask, ingest, unique, wait_job
from tests.metrics_scrape import Scrape, eventually, scrape

GRAPES = (
    "Deacon Ruth Okafor told of the vineyard in Isaiah 5. Her grandmother grew 14 rows of "
    "Concord grapes behind the chapel and pruned them hard every March, so that the vines "
    "spent themselves on fruit and not on leaves."
)


@pytest.fixture
def notes(cluster: Cluster) -> Iterator[Callable[[str, str, str], None]]:
    """Ingest a note as alice, deleted again after the test: the other modules' tests ask
    alice about the same mustard seed and expect their own copy among her passages."""
    created: list[str] = []

    def add(prefix: str, title: str, text: str) -> None:
        document_id = unique(prefix)
        with cluster.client(ALICE_KEY) as alice:
            ingest(alice, document_id, title, text)
        created.append(document_id)

    yield add
    with cluster.client(ALICE_KEY) as alice:
        for document_id in created:
            alice.delete(f"/v1/documents/{document_id}")


def _counts(cluster: Cluster) -> Scrape:
    return scrape(f"{cluster.api_url}/metrics")


def _delta(before: Scrape, after: Scrape, cache: str, outcome: str) -> float:
    labels = {"cache": cache, "outcome": outcome}
    name = "scribes_cache_requests_total"
    return after.value(name, labels) - before.value(name, labels)


def _expect(cluster: Cluster, before: Scrape, **wanted: float) -> None:
    """Wait for the counters to show exactly `wanted`, e.g. embedding_hit=1."""

    def check() -> None:
        after = _counts(cluster)
        seen = {key: _delta(before, after, *key.split("_")) for key in wanted}
        assert seen == wanted, seen

    eventually(check)


def test_a_question_asked_again_after_the_notes_changed_skips_the_model(
    cluster: Cluster, notes: Callable[[str, str, str], None]
) -> None:
    tag = unique("seeds")
    question = f"How many mustard seeds were in the jar, asked by {tag}?"
    with cluster.client(ALICE_KEY) as alice:
        notes("mustard", "The mustard seed", MUSTARD)
        before = _counts(cluster)
        status, first = ask(alice, question)
        assert status == 202 and first["status"] == "succeeded"
        _expect(cluster, before, exact_miss=1, embedding_miss=1, embedding_hit=0, context_miss=1)

        # Another note bumps alice's corpus version: the exact cache and the context cache
        # miss, but the question's vector (same words, other case) is reused.
        notes("grapes", "The vineyard", GRAPES)
        before = _counts(cluster)
        status, again = ask(alice, question.upper().rstrip("?"))
        assert status == 202 and again["status"] == "succeeded"
        _expect(cluster, before, exact_miss=1, embedding_hit=1, embedding_miss=0, context_miss=1)
        assert again["sources"][0]["document_id"] == first["sources"][0]["document_id"]

    # The same words from another tenant share nothing with alice's.
    with cluster.client(BOB_KEY) as bob:
        before = _counts(cluster)
        status, bobs = ask(bob, question)
        assert bobs["status"] == "succeeded"
        _expect(cluster, before, embedding_miss=1, embedding_hit=0)


def test_the_context_is_reused_until_a_document_changes_or_goes(
    cluster: Cluster, fake_llm: FakeAnthropic
) -> None:
    document_id = unique("vineyard")
    question = f"How many rows of grapes did the grandmother grow, asks {unique('q')}?"
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, document_id, "The vineyard", GRAPES)
        # The model refuses the first attempt: nothing is cached as an answer, but the
        # search it was given is.
        fake_llm.fail_next(400)
        before = _counts(cluster)
        job = _submit(alice, question)
        assert job["status"] == "failed" and job["error"]["code"] == "llm_rejected", job
        _expect(cluster, before, context_miss=1, context_hit=0)

        before = _counts(cluster)
        status, retried = ask(alice, question)
        assert status == 202 and retried["status"] == "succeeded"
        assert document_id in {s["document_id"] for s in retried["sources"]}
        _expect(cluster, before, exact_miss=1, embedding_hit=1, context_hit=1, context_miss=0)

        # An edit bumps the corpus version: the old passages are unreachable.
        ingest(alice, document_id, "The vineyard", GRAPES.replace("14 rows", "19 rows"))
        before = _counts(cluster)
        fake_llm.fail_next(400)
        edited = _submit(alice, question)
        assert edited["status"] == "failed"
        _expect(cluster, before, context_miss=1, context_hit=0)
        status, fresh = ask(alice, question)
        assert any("19 rows" in s["text"] for s in fresh["sources"]), fresh["sources"]

        # A delete too: nothing of the document comes back from the cache.
        deleted = alice.delete(f"/v1/documents/{document_id}")
        assert deleted.status_code == 200
        before = _counts(cluster)
        status, gone = ask(alice, question)
        assert document_id not in {s["document_id"] for s in gone["sources"]}
        _expect(cluster, before, context_hit=0)


def _submit(http: httpx.Client, question: str) -> dict[str, Any]:
    response = http.post("/v1/questions", json={"question": question})
    assert response.status_code == 202, response.text
    return wait_job(http, response.json()["id"])


def test_a_request_can_refresh_or_bypass_the_caches(
    cluster: Cluster, notes: Callable[[str, str, str], None]
) -> None:
    question = f"How many mustard seeds were in the jar, for {unique('control')}?"
    with cluster.client(ALICE_KEY) as alice:
        notes("mustard", "The mustard seed", MUSTARD)
        assert ask(alice, question)[0] == 202
        assert ask(alice, question)[0] == 200  # the exact cache

        # bypass: computed anew, and no cache is read or written.
        before = _counts(cluster)
        status, bypassed = ask(alice, question, cache="bypass")
        assert status == 202 and bypassed["cached"] is None
        _expect(cluster, before, exact_hit=0, exact_miss=0, embedding_hit=0, context_hit=0)

        # refresh: computed anew without reading, and what it computes replaces the entry.
        before = _counts(cluster)
        status, refreshed = ask(alice, question, cache="refresh")
        assert status == 202 and refreshed["cached"] is None
        _expect(cluster, before, exact_hit=0, embedding_hit=0, context_hit=0)
        status, again = ask(alice, question)
        assert status == 200 and again["answer"] == refreshed["answer"]

        # What bypass computed was not kept: the next ask embeds the question itself.
        other = f"Who preached on the mustard seed, for {unique('control')}?"
        assert ask(alice, other, cache="bypass")[0] == 202
        before = _counts(cluster)
        assert ask(alice, other)[0] == 202
        _expect(cluster, before, exact_miss=1, embedding_miss=1, embedding_hit=0)

        refused = alice.post("/v1/questions", json={"question": question, "cache": "never"})
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "invalid_request"


def test_delete_cache_empties_the_callers_caches_only(
    cluster: Cluster, notes: Callable[[str, str, str], None]
) -> None:
    question = f"How many mustard seeds were in the jar, cleared {unique('clear')}?"
    with cluster.client(ALICE_KEY) as alice, cluster.client(BOB_KEY) as bob:
        notes("mustard", "The mustard seed", MUSTARD)
        assert ask(alice, question)[0] == 202
        assert ask(bob, question)[0] == 202
        assert ask(alice, question)[0] == 200 and ask(bob, question)[0] == 200

        cleared = alice.delete("/v1/cache")
        assert cleared.status_code == 200
        body = cleared.json()
        assert body["tenant"] == "alice"
        assert body["removed"]["exact"] >= 1 and body["removed"]["embedding"] >= 1

        before = _counts(cluster)
        assert ask(alice, question)[0] == 202  # nothing left for alice …
        _expect(cluster, before, exact_miss=1, embedding_miss=1, embedding_hit=0)
        assert ask(bob, question)[0] == 200  # … and bob's entries are all there
