"""The query-vector, context and chunk-vector caches on the real cluster: hits, misses,
tenants, changes.

Read through the cache counters of one scrape of the API (`scribes_cache_requests_total`);
the tests of this module run one at a time, so the deltas are theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from rag.chunking import chunk_text
from rag.indexing import embedded_text
from rag.settings import Settings
from rag.tokens import load_token_counter
from tests.cluster import Cluster
from tests.fake_anthropic import FakeAnthropic
from tests.integration.conftest import ALICE_KEY, BOB_KEY
from tests.integration.test_question_path import MUSTARD, ask, ingest, unique, wait_job
from tests.metrics_scrape import Scrape, eventually, scrape

# A note on something else: -0.02 alike to the mustard-seed questions below.
PARKING = (
    "The north parking lot is repaved during the first two weeks of August. Please park on "
    "Elm Street and use the side door; the ramp stays open."
)
GRAPES = (
    "Deacon Ruth Okafor told of the vineyard in Isaiah 5. Her grandmother grew 14 rows of "
    "Concord grapes behind the chapel and pruned them hard every March, so that the vines "
    "spent themselves on fruit and not on leaves."
)

# Eight paragraphs: four chunks at the default 200 tokens. The first sentence is the fact
# the tests change; it begins the first chunk, which the fake model quotes.
SERIES = "\n\n".join(
    (
        "Pastor Ruth Adeyemi preached the manna series to 212 people over six Sundays in Lent. "
        "She began with the grumbling in the wilderness of Sin, six weeks after Elim, when the "
        "people already missed the pots of meat in Egypt. She read the complaint aloud twice, "
        "once angry and once afraid, and asked which voice we use when we pray about money.",
        "Manna fell every morning except the Sabbath. Each household gathered an omer a person, "
        "about two litres, and whoever gathered much had nothing over and whoever gathered "
        "little had no lack. Ruth said the measure was the point: enough, not more, and for "
        "everyone at the table, the lodger and the stranger included.",
        "What was kept overnight bred worms and stank. Her grandmother kept flour in tins under "
        "the bed through the hungry years in Ibadan, and Ruth did not mock her for it; fear of "
        "tomorrow is honest. But daily bread cannot be hoarded, and the worms are what "
        "hoarding costs us, in money and in the heart.",
        "On the sixth day they gathered twice as much, and that portion kept. Rest was built "
        "into the provision itself. Ruth asked the congregation to name one thing they would "
        "stop doing on Sunday afternoons for a month, and to write it on the blue card in the "
        "pew; ninety cards came back, most of them about email.",
        "Aaron put an omer of manna in a jar before the testimony, to be kept for the "
        "generations. The one thing that rotted overnight was kept for centuries when it was "
        "kept as a witness and not as a store. Memory, she said, is the one kind of saving "
        "that God commands, and she asked each family to keep one jar of their own.",
        "The fourth Sunday turned to John 6, where the crowd asks for a sign like the manna "
        "and Jesus answers that he is the bread of life. Ruth set a loaf on the communion "
        "table and left it there, unbroken, through the whole sermon, so that everyone "
        "watched it.",
        "The fifth Sunday was about the quail, which came once, in the evening, and the "
        "manna, which came every morning for forty years. She said we pray for quail and live "
        "on manna, and that the ordinary provision is the miracle we stop noticing.",
        "She closed the series with the Lord's Prayer and the line give us this day our daily "
        "bread, and the choir sang Guide Me, O Thou Great Jehovah, with the bread of heaven "
        "repeated four times as the tune demands. Coffee and bread rolls followed in the "
        "hall, baked by the youth group the night before.",
    )
)
HEARD = "How many people heard Pastor Ruth Adeyemi preach the manna series?"


@pytest.fixture
def documents(cluster: Cluster) -> Iterator[Callable[[str, str, str, str], None]]:
    """Ingest a note as the tenant of an API key under a given id (again, to edit it); each
    is deleted after the test."""
    created: set[tuple[str, str]] = set()

    def add(api_key: str, document_id: str, title: str, text: str) -> None:
        with cluster.client(api_key) as http:
            ingest(http, document_id, title, text)
        created.add((api_key, document_id))

    yield add
    for api_key, document_id in created:
        with cluster.client(api_key) as http:
            http.delete(f"/v1/documents/{document_id}")


def _embedded_texts(title: str, text: str) -> set[str]:
    """What the index pool feeds the model for the note, at the cluster's (default) settings."""
    settings = Settings()
    chunks = chunk_text(
        text,
        counter=load_token_counter(settings.embedding_model),
        max_tokens=settings.chunk_tokens,
        overlap_tokens=settings.chunk_overlap_tokens,
    )
    return {embedded_text(title, chunk.text) for chunk in chunks}


def _cached_chunks(cluster: Cluster, tenant: str) -> int:
    connection = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    return sum(1 for _ in connection.scan_iter(match=f"scribes:cvec:{tenant}:*", count=1000))


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
    """Wait for the counters to show exactly `wanted`, e.g. embedding_hit=1 or
    chunk_embedding_miss=4."""

    def check() -> None:
        after = _counts(cluster)
        seen = {key: _delta(before, after, *key.rsplit("_", 1)) for key in wanted}
        assert seen == wanted, seen

    eventually(check)


def test_a_question_asked_again_after_the_notes_changed_skips_the_model(
    cluster: Cluster, fake_llm: FakeAnthropic, notes: Callable[[str, str, str], None]
) -> None:
    tag = unique("seeds")
    question = f"How many mustard seeds were in the jar, asked by {tag}?"
    with cluster.client(ALICE_KEY) as alice:
        notes("mustard", "The mustard seed", MUSTARD)
        before = _counts(cluster)
        status, first = ask(alice, question)
        assert status == 202 and first["status"] == "succeeded"
        _expect(cluster, before, exact_miss=1, embedding_miss=1, embedding_hit=0, context_miss=1)

        # A note on something else bumps alice's corpus version: the exact cache misses,
        # the question's vector (same words, other case) is reused, and the semantic cache
        # finds that nothing the answer came from changed, so neither search nor model runs.
        notes("parking", "Parking", PARKING)
        before = _counts(cluster)
        calls = len(fake_llm.calls)
        status, again = ask(alice, question.upper().rstrip("?"))
        assert status == 202 and again["status"] == "succeeded"
        _expect(
            cluster,
            before,
            exact_miss=1,
            embedding_hit=1,
            embedding_miss=0,
            semantic_hit=1,
            context_miss=0,
            context_hit=0,
        )
        assert again["cached"] == "semantic" and len(fake_llm.calls) == calls
        assert again["sources"] == first["sources"]

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


def test_a_reingest_embeds_only_the_chunks_that_changed(
    cluster: Cluster, documents: Callable[[str, str, str, str], None]
) -> None:
    document_id, title = unique("series"), f"The manna series, {unique('notes')}"
    edited = SERIES.replace("212 people", "340 people")
    old, new = _embedded_texts(title, SERIES), _embedded_texts(title, edited)
    changed, kept = len(new - old), len(new & old)
    assert changed == 1 and kept == 3, (changed, kept)  # the note is long enough to tell

    before = _counts(cluster)
    documents(ALICE_KEY, document_id, title, SERIES)
    _expect(cluster, before, chunk_embedding_miss=len(old), chunk_embedding_hit=0)
    with cluster.client(ALICE_KEY) as alice:
        status, first = ask(alice, HEARD)
        assert status == 202 and "212 people" in first["answer"], first["answer"]

    before = _counts(cluster)
    documents(ALICE_KEY, document_id, title, edited)
    _expect(cluster, before, chunk_embedding_miss=changed, chunk_embedding_hit=kept)
    with cluster.client(ALICE_KEY) as alice:
        status, again = ask(alice, HEARD)
    assert status == 202 and "340 people" in again["answer"], again["answer"]
    assert not any("212 people" in source["text"] for source in again["sources"])


def test_the_same_note_under_two_tenants_shares_no_chunk_vector(
    cluster: Cluster, documents: Callable[[str, str, str, str], None]
) -> None:
    title = f"The manna series, {unique('shared')}"
    texts = _embedded_texts(title, SERIES)
    before = _counts(cluster)
    documents(ALICE_KEY, unique("series"), title, SERIES)
    _expect(cluster, before, chunk_embedding_miss=len(texts), chunk_embedding_hit=0)

    # bob's first ingest of alice's very note embeds it all …
    before = _counts(cluster)
    documents(BOB_KEY, unique("series"), title, SERIES)
    _expect(cluster, before, chunk_embedding_miss=len(texts), chunk_embedding_hit=0)

    # … and his second copy reuses his own vectors.
    before = _counts(cluster)
    documents(BOB_KEY, unique("series"), title, SERIES)
    _expect(cluster, before, chunk_embedding_miss=0, chunk_embedding_hit=len(texts))


def test_delete_cache_empties_the_callers_chunk_vectors_only(
    cluster: Cluster, documents: Callable[[str, str, str, str], None]
) -> None:
    document_id, title = unique("series"), f"The manna series, {unique('cleared')}"
    texts = _embedded_texts(title, SERIES)
    documents(ALICE_KEY, document_id, title, SERIES)
    documents(BOB_KEY, document_id, title, SERIES)
    alices, bobs = _cached_chunks(cluster, "alice"), _cached_chunks(cluster, "bob")
    assert alices >= len(texts) and bobs >= len(texts)

    with cluster.client(ALICE_KEY) as alice:
        cleared = alice.delete("/v1/cache")
    assert cleared.status_code == 200
    assert cleared.json()["removed"]["chunk_embedding"] == alices
    assert _cached_chunks(cluster, "alice") == 0
    assert _cached_chunks(cluster, "bob") == bobs

    # alice's next ingest of the note embeds it whole; bob's still reuses his.
    before = _counts(cluster)
    documents(ALICE_KEY, document_id, title, SERIES)
    _expect(cluster, before, chunk_embedding_miss=len(texts), chunk_embedding_hit=0)
    before = _counts(cluster)
    documents(BOB_KEY, document_id, title, SERIES)
    _expect(cluster, before, chunk_embedding_miss=0, chunk_embedding_hit=len(texts))
