"""`bench.reindex`'s arithmetic: the time in each phase from polled samples, the questions
counted before and during a reindex, and the figures of one run."""

from __future__ import annotations

import pytest

from bench.reindex import LoadSample, ReindexTiming, phase_durations, split_load


def test_each_phase_runs_from_its_first_sample_to_the_next_phase() -> None:
    seen = [
        (10.2, "prepare"),
        (10.4, "build"),
        (10.6, "build"),
        (13.0, "optimize"),
        (13.5, "settle"),
        (15.6, "done"),
    ]
    spent = phase_durations(10.0, seen)
    assert spent == pytest.approx({"prepare": 0.4, "build": 2.6, "optimize": 0.5, "settle": 2.1})
    # Every second from the POST to the end is in exactly one phase.
    assert sum(spent.values()) == pytest.approx(5.6)


def test_a_phase_never_seen_counts_in_the_one_before_and_a_phase_seen_twice_adds_up() -> None:
    # The first sample already shows `build`: prepare was shorter than the polling.
    seen = [(1.0, "build"), (2.0, "verify"), (2.5, "catch_up"), (3.0, "verify"), (4.0, "done")]
    spent = phase_durations(0.0, seen)
    assert "prepare" not in spent
    assert spent == pytest.approx({"build": 2.0, "verify": 1.5, "catch_up": 0.5})


def test_samples_after_the_end_are_ignored() -> None:
    assert phase_durations(0.0, [(1.0, "build"), (2.0, "done"), (3.0, "build")]) == {"build": 2.0}


def test_questions_split_into_answered_before_and_asked_during_the_reindex() -> None:
    samples = [
        LoadSample(0.0, 4.0, ok=True),  # answered before: without
        LoadSample(4.0, 6.0, ok=True),  # straddles the start: neither
        LoadSample(5.0, 7.0, ok=False),  # asked during
        LoadSample(9.0, 12.0, ok=True),  # asked during, answered after the end
        LoadSample(10.5, 11.0, ok=True),  # asked after the end: neither
    ]
    without, during = split_load(samples, 5.0, 10.0)
    assert without == samples[:1]
    assert during == samples[2:4]
    assert samples[0].latency_ms == pytest.approx(4000)


def test_a_run_reports_its_rates_per_chunk_and_per_10k() -> None:
    run = {
        "total": 2_000,
        "copied": 2_000,
        "embedded": 0,
        "cached": 0,
        "model": "m",
        "started_at": 100.0,
        "finished_at": 104.5,
        "rate_per_s": 444.4,
        "checks": {"switched_at": 102.0, "optimize_s": 0.8},
    }
    timing = ReindexTiming("(b)", run, wall_s=5.0, phases_s={"build": 0.5, "settle": 2.0})
    assert timing.chunks_per_s == pytest.approx(400)
    assert timing.s_per_10k == pytest.approx(25)
    assert timing.build_chunks_per_s == pytest.approx(4_000)
    assert timing.server_s == pytest.approx(4.5)
    assert timing.live_s == pytest.approx(2.0)
    assert timing.optimize_s == pytest.approx(0.8)
    assert timing.as_dict()["phases_s"] == {"build": 0.5, "settle": 2.0}
