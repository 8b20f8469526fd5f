"""The per-variant tally and the Wilson interval of its hit-rate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.online_metric import Counts, Tally, VariantSummary, wilson_interval


def test_wilson_interval_known_values() -> None:
    # Wilson 1927 / Newcombe 1998, table I: 81 of 263 -> (0.2553, 0.3662) at 95%
    low, high = wilson_interval(Counts(263, 81))
    assert low == pytest.approx(0.2553, abs=1e-4) and high == pytest.approx(0.3662, abs=1e-4)
    # 0 of 10 -> (0, 0.2775): inside [0, 1], unlike the normal interval's (0, 0)
    assert wilson_interval(Counts(10, 0)) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(Counts(10, 10))[1] == 1.0
    assert wilson_interval(Counts(0, 0)) == (0.0, 1.0)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(Counts(1, 1), confidence=1.0)


@given(st.integers(0, 10**6).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
def test_the_interval_holds_the_rate_and_stays_in_0_1(counts: tuple[int, int]) -> None:
    n, hits = counts
    low, high = wilson_interval(Counts(n, hits))
    assert 0 <= low <= Counts(n, hits).rate <= high <= 1
    wide_low, wide_high = wilson_interval(Counts(n, hits), confidence=0.99)
    assert wide_low <= low and high <= wide_high


def test_the_interval_covers_the_true_rate_as_often_as_it_says() -> None:
    rng = np.random.default_rng(7)
    covered = 0
    for hits in rng.binomial(500, 0.05, size=2000):
        low, high = wilson_interval(Counts(500, int(hits)))
        covered += low <= 0.05 <= high
    assert 0.93 < covered / 2000 < 0.97


def test_counts_refuse_impossible_values() -> None:
    with pytest.raises(ValueError, match="2 hits of only 1 impressions"):
        Counts(1, 2)
    with pytest.raises(ValueError, match="impressions must be an integer >= 0"):
        Counts(-1, 0)


def test_the_tally_per_variant() -> None:
    tally = Tally()
    tally.show([("a", "control"), ("b", "candidate"), ("c", "candidate")])
    tally.show([("a", "control")])
    tally.hit("candidate")
    assert tally.counts("control") == Counts(2, 0)
    assert tally.counts("candidate") == Counts(2, 1)
    summary = tally.summary(catalog_size=10)
    assert summary["control"] == VariantSummary(
        2, 0, 0.0, 0.0, pytest.approx(0.6576, abs=1e-4), 0.1
    )
    assert summary["candidate"].hit_rate == 0.5 and summary["candidate"].coverage == 0.2
    assert tally.summary(catalog_size=0)["control"].coverage == 0.0
