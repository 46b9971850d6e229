"""The semantic answer cache on the real cluster: a reworded question skips the model, and
nothing else does: near misses, another tenant, a changed or deleted note, a bypass, an
emptied cache.

Counters come from one scrape of the API (`scribes_cache_requests_total`), model calls from
the loopback Anthropic server; the tests of this module run one at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import httpx
import pytest

from tests.cluster import Cluster
from tests.fake_anthropic import FakeAnthropic
from tests.integration.conftest import ALICE_KEY, BOB_KEY
from tests.integration.test_caches import PARKING, _counts, _expect
from tests.integration.test_question_path import MUSTARD, ask, ingest, unique
from tests.metrics_scrape import eventually

# 0.98 alike under all-MiniLM-L6-v2, and the guard finds nothing between these two:
ASKED = "How many mustard seeds were in the glass jar that Pastor Miriam passed down the pews?"
REWORDED = "How many mustard seeds did the glass jar hold that Pastor Miriam sent along the pews?"
# About as alike to ASKED, but one negates and one is about two jars.
NEGATED = "How many mustard seeds were not in the glass jar that Pastor Miriam passed round?"
NUMBERED = "How many mustard seeds were in the 2 glass jars that Pastor Miriam passed round?"


@pytest.fixture
def mustard(cluster: Cluster) -> Iterator[str]:
    """Alice's mustard-seed note, deleted after the test (which bumps her corpus version, so
    that no entry of this test is found by the next)."""
    document_id = unique("mustard")
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, document_id, "The mustard seed", MUSTARD)
        yield document_id
        alice.delete(f"/v1/documents/{document_id}")


@pytest.fixture
def bobs_mustard(cluster: Cluster) -> Iterator[str]:
    """The same note, word for word, as bob's."""
    document_id = unique("bob-mustard")
    with cluster.client(BOB_KEY) as bob:
        ingest(bob, document_id, "The mustard seed", MUSTARD)
        yield document_id
        bob.delete(f"/v1/documents/{document_id}")


def _model_calls(fake_llm: FakeAnthropic, action: Callable[[], Any]) -> tuple[Any, int]:
    before = len(fake_llm.calls)
    result = action()
    return result, len(fake_llm.calls) - before


def _near_misses(cluster: Cluster, reason: str) -> float:
    return _counts(cluster).value("scribes_cache_semantic_near_misses_total", {"reason": reason})


def test_a_reworded_question_gets_the_earlier_answer_without_a_model_call(
    cluster: Cluster, fake_llm: FakeAnthropic, mustard: str
) -> None:
    with cluster.client(ALICE_KEY) as alice:
        (status, first), calls = _model_calls(fake_llm, partial(ask, alice, ASKED))
        assert status == 202 and first["cached"] is None and calls == 1
        assert first["semantic"] is None

        before = _counts(cluster)
        (status, again), calls = _model_calls(fake_llm, partial(ask, alice, REWORDED))
        assert status == 202 and calls == 0, again
        assert again["status"] == "succeeded" and again["cached"] == "semantic"
        assert again["semantic"]["question"] == ASKED
        assert 0.85 <= again["semantic"]["similarity"] <= 1.0
        assert again["answer"] == first["answer"] and again["sources"] == first["sources"]
        assert again["usage"]["input_tokens"] == 0 and again["usage"]["cost_usd"] == 0
        assert again["question"] == REWORDED
        _expect(cluster, before, exact_miss=1, semantic_hit=1, semantic_miss=0, context_hit=0)

        # The hit is counted as a question answered from the semantic cache.
        usage = alice.get("/v1/usage").json()
        assert usage["totals"]["cache_hits"].get("semantic", 0) >= 1, usage


def test_near_misses_are_refused_and_go_to_the_model(
    cluster: Cluster, fake_llm: FakeAnthropic, mustard: str
) -> None:
    with cluster.client(ALICE_KEY) as alice:
        assert ask(alice, ASKED)[1]["cached"] is None
        _assert_refused(cluster, fake_llm, alice, NEGATED, "negation")
        _assert_refused(cluster, fake_llm, alice, NUMBERED, "number")


def _assert_refused(
    cluster: Cluster, fake_llm: FakeAnthropic, http: httpx.Client, question: str, reason: str
) -> None:
    before = _counts(cluster)
    refusals = _near_misses(cluster, reason)
    (status, job), calls = _model_calls(fake_llm, partial(ask, http, question))
    assert status == 202 and job["cached"] is None and calls == 1, job
    _expect(cluster, before, semantic_miss=1, semantic_hit=0)

    def counted() -> None:
        assert _near_misses(cluster, reason) > refusals

    eventually(counted)


def test_no_tenant_shares_another_tenants_entries(
    cluster: Cluster, fake_llm: FakeAnthropic, mustard: str, bobs_mustard: str
) -> None:
    with cluster.client(ALICE_KEY) as alice, cluster.client(BOB_KEY) as bob:
        assert ask(alice, ASKED)[1]["cached"] is None
        # Bob has the same note and asks the reworded question: alice's answer is not his.
        (_, job), calls = _model_calls(fake_llm, partial(ask, bob, REWORDED))
        assert job["cached"] is None and calls == 1, job
        # His own entry serves him afterwards.
        _, mine = ask(bob, ASKED)
        assert mine["cached"] == "semantic" and mine["semantic"]["question"] == REWORDED


def test_an_edit_or_a_delete_makes_earlier_entries_unreachable(
    cluster: Cluster, fake_llm: FakeAnthropic
) -> None:
    document_id = unique("mustard")
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, document_id, "The mustard seed", MUSTARD)
        assert ask(alice, ASKED)[1]["cached"] is None
        assert ask(alice, REWORDED)[1]["cached"] == "semantic"

        # The note now says 41: the entry of the old version is never found again.
        ingest(alice, document_id, "The mustard seed", MUSTARD.replace("37", "41"))
        (_, edited), calls = _model_calls(fake_llm, partial(ask, alice, REWORDED))
        assert edited["cached"] is None and calls == 1
        assert any("41" in source["text"] for source in edited["sources"]), edited["sources"]

        assert alice.delete(f"/v1/documents/{document_id}").status_code == 200
        _, gone = ask(alice, ASKED)
        assert gone["cached"] is None
        assert document_id not in {source["document_id"] for source in gone["sources"]}


def test_bypass_and_refresh_never_read_it_and_a_no_context_answer_is_never_shared(
    cluster: Cluster, fake_llm: FakeAnthropic, mustard: str
) -> None:
    with cluster.client(ALICE_KEY) as alice:
        assert ask(alice, ASKED)[1]["cached"] is None
        for mode in ("bypass", "refresh"):
            before = _counts(cluster)
            (_, job), calls = _model_calls(fake_llm, partial(ask, alice, REWORDED, cache=mode))
            assert job["cached"] is None and calls == 1, (mode, job)
            _expect(cluster, before, semantic_hit=0, semantic_miss=0)

        # Nothing in the notes answers this: the answer says so, and it is not shared.
        nothing = "What colour was the submarine in the harbour of Valparaiso in 1911?"
        reworded = "In 1911, what colour was the submarine in the harbour of Valparaiso?"
        assert ask(alice, nothing)[1]["no_context"] is True
        before = _counts(cluster)
        _, again = ask(alice, reworded)
        assert again["no_context"] is True and again["cached"] is None
        _expect(cluster, before, semantic_hit=0)


def test_delete_cache_empties_the_semantic_cache_of_the_caller_only(
    cluster: Cluster, mustard: str, bobs_mustard: str
) -> None:
    with cluster.client(ALICE_KEY) as alice, cluster.client(BOB_KEY) as bob:
        for http in (alice, bob):
            assert ask(http, ASKED)[1]["cached"] is None
        cleared = alice.delete("/v1/cache")
        assert cleared.status_code == 200 and cleared.json()["semantic"] == "emptying"

        assert ask(alice, REWORDED)[1]["cached"] is None
        assert ask(bob, REWORDED)[1]["cached"] == "semantic"


def test_a_note_that_changes_nothing_for_the_answer_keeps_it_and_one_that_does_not_ends_it(
    cluster: Cluster, fake_llm: FakeAnthropic, mustard: str
) -> None:
    parking, jar = unique("parking"), unique("jar")
    with cluster.client(ALICE_KEY) as alice:
        assert ask(alice, ASKED)[1]["cached"] is None
        try:
            # A note on something else: the corpus version moves (the exact cache misses),
            # but nothing the answer was written from changed, and nothing new outranks it.
            ingest(alice, parking, "Parking", PARKING)
            before = _counts(cluster)
            (status, kept), calls = _model_calls(fake_llm, partial(ask, alice, ASKED))
            assert status == 202 and calls == 0 and kept["cached"] == "semantic", kept
            assert kept["semantic"]["similarity"] >= 0.999
            _expect(cluster, before, exact_miss=1, semantic_hit=1)
            # … and the very words are now in the exact cache of this version.
            assert ask(alice, ASKED)[0] == 200

            # A new note about the same jar would now be among the passages: the old
            # answer does not hold, for these words or reworded ones.
            ingest(alice, jar, "The jar, again", MUSTARD.replace("37", "52"))
            (_, fresh), calls = _model_calls(fake_llm, partial(ask, alice, REWORDED))
            assert fresh["cached"] is None and calls == 1, fresh
            assert jar in {source["document_id"] for source in fresh["sources"]}
        finally:
            for document_id in (parking, jar):
                alice.delete(f"/v1/documents/{document_id}")


# Three chunks or more: the mustard seed first, then building news far from it.
BUILDING = " ".join(
    f"Item {n}: the {part} of the north hall is repainted in week {n} by the property team; "
    "the room stays closed that week and the key is with the office."
    for n, part in enumerate(
        ("ceiling", "west wall", "east wall", "doors", "stair rail", "window frames", "floor"),
        start=1,
    )
)
FAR_EDIT = ("the floor of the north hall", "the floor and skirting of the north hall")


def test_an_edit_far_from_the_passages_keeps_the_answer(
    cluster: Cluster, fake_llm: FakeAnthropic
) -> None:
    document_id = unique("week")
    text = f"{MUSTARD}\n\n{BUILDING}\n\n{BUILDING}"
    with cluster.client(ALICE_KEY) as alice:
        try:
            indexed = ingest(alice, document_id, "Notes from the week", text)
            assert indexed["chunks"] >= 3, indexed
            assert ask(alice, ASKED)[1]["cached"] is None
            # The last chunk changes; the passage the answer came from does not.
            assert text.endswith(".") and FAR_EDIT[0] in text[-200:]
            edited = text[:-200] + text[-200:].replace(*FAR_EDIT)
            ingest(alice, document_id, "Notes from the week", edited)
            (_, kept), calls = _model_calls(fake_llm, partial(ask, alice, ASKED))
            assert kept["cached"] == "semantic" and calls == 0, kept
        finally:
            alice.delete(f"/v1/documents/{document_id}")


def test_the_same_note_and_question_under_two_tenants_share_no_entry_of_any_cache(
    cluster: Cluster, fake_llm: FakeAnthropic, mustard: str, bobs_mustard: str
) -> None:
    # Words no earlier test asked, so that neither tenant has a vector for them yet.
    question = f"{ASKED[:-1]}, for {unique('both')}?"
    with cluster.client(ALICE_KEY) as alice, cluster.client(BOB_KEY) as bob:
        assert ask(alice, question)[1]["cached"] is None
        assert ask(alice, question)[0] == 200  # alice's exact cache holds it now
        # Bob: the same words over the same note find none of alice's entries.
        before = _counts(cluster)
        (status, job), calls = _model_calls(fake_llm, partial(ask, bob, question))
        assert status == 202 and job["cached"] is None and calls == 1, job
        _expect(
            cluster,
            before,
            exact_hit=0,
            exact_miss=1,
            embedding_hit=0,
            embedding_miss=1,
            semantic_hit=0,
            semantic_miss=1,
            context_hit=0,
            context_miss=1,
        )
