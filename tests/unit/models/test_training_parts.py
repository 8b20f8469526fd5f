"""The parts IncrementalModel composes, each on its own: the event-id dedupe memory, the
popularity counts, the record of what the next delta carries, and the fitter's rules."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from models.changes import ChangeLog
from models.config import ModelConfig
from models.dedupe import RecentEventIds
from models.events import Rating
from models.fitter import STATE_ARRAYS, Fitter, resized, training_pairs
from models.popularity import Popularity

IDS = st.text(max_size=4)  # any unicode, lone surrogates too; short, so ids repeat
BATCHES = st.lists(st.lists(IDS, max_size=12), max_size=8)


def rating(event_id: str) -> Rating:
    return Rating(event_id, "u", "i", 4.0, 0.0)


@given(batches=BATCHES, limit=st.integers(1, 10))
def test_an_event_id_among_the_last_applied_or_earlier_in_its_batch_is_dropped(
    batches: list[list[str]], limit: int
) -> None:
    memory = RecentEventIds(limit)
    applied: list[str] = []
    for ids in batches:
        fresh, dropped = memory.drop_duplicates([rating(i) for i in ids])
        expected: list[str] = []
        for i in ids:
            if i not in applied[-limit:] and i not in expected:
                expected.append(i)
        assert [e.event_id for e in fresh] == expected
        assert dropped == len(ids) - len(expected)
        memory.remember(fresh)
        applied += expected
        assert memory.ids() == applied[-limit:]
        restored = RecentEventIds(limit, memory.ids())  # what a snapshot keeps
        kept = memory.ids()
        assert restored.drop_duplicates([rating(i) for i in kept]) == ([], len(kept))


STAMPS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 2e9),
    st.sampled_from([0.0, -1.0, 1e300, math.nan, math.inf, -math.inf, 1.7e12, 1.7e15]),
)


@given(batches=st.lists(st.lists(STAMPS, min_size=1, max_size=5), min_size=1, max_size=6))
def test_popularity_stays_finite_and_its_time_never_goes_back_or_past_the_ceiling(
    batches: list[list[float]],
) -> None:
    ceiling = 1.8e9
    popularity = Popularity(3600.0, np.zeros(4))
    times: list[float] = []
    for stamps in batches:
        items = np.arange(len(stamps)) % 4
        factor = popularity.add(items, np.array(stamps), ceiling, 4)
        assert 0.0 <= factor <= 1.0
        assert np.isfinite(popularity.counts).all() and (popularity.counts >= 0).all()
        assert popularity.ts is not None and 0.0 <= popularity.ts <= ceiling
        times.append(popularity.ts)
    assert times == sorted(times)


def test_an_event_one_half_life_older_than_the_newest_counts_half() -> None:
    popularity = Popularity(100.0, np.zeros(2))
    assert popularity.add(np.array([0, 1]), np.array([1000.0, 900.0]), 2000.0, 2) == 1.0
    np.testing.assert_array_equal(popularity.counts, [1.0, 0.5])
    assert popularity.add(np.array([1]), np.array([1100.0]), 2000.0, 2) == 0.5  # decays first
    np.testing.assert_array_equal(popularity.counts, [0.5, 1.25])


def test_the_change_log_carries_touched_and_new_rows_and_resets() -> None:
    changes = ChangeLog()
    changes.reset(3, 2, 2)
    assert not changes.rows_dirty(2, 2) and changes.rows_dirty(3, 2)  # a new user row
    changes.touched(np.array([1]), np.array([0]), np.array([1]))
    users, items, popular = changes.rows(3, 4)
    assert users.tolist() == [1, 2] and items.tolist() == [0, 2, 3]
    assert popular.tolist() == [1, 2, 3]
    changes.reset(4, 3, 4)
    assert [r.tolist() for r in changes.rows(3, 4)] == [[], [], []]
    assert changes.base == (4, 3, 4) and not changes.rows_dirty(3, 4)


def test_a_decay_too_small_to_carry_sends_every_count_instead() -> None:
    changes = ChangeLog()
    changes.decayed(0.5, 3)
    assert changes.decay == 0.5 and changes.rows(0, 0)[2].tolist() == []
    changes.decayed(1e-308, 3)  # 0.5e-308 is below the smallest normal float64
    assert changes.decay == 0.5
    assert changes.rows(0, 0)[2].tolist() == [0, 1, 2]
    changes.decayed(0.0, 3)
    assert 0.0 < changes.decay <= 1.0


def test_a_pair_rated_twice_trains_its_latest_rating() -> None:
    users, items = np.array([0, 0, 1, 0]), np.array([5, 5, 5, 6])
    ratings, stamps = np.array([5.0, 1.0, 4.0, 2.0]), np.array([10.0, 20.0, 10.0, 5.0])
    warp = ModelConfig(loss="warp")
    rows, cols, labels, weights = training_pairs(warp, users, items, ratings, stamps, 7)
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == [(1, 5)]  # (0, 5) went to 1
    assert labels.tolist() == [1.0] and weights is None and rows.dtype == np.int32
    logistic = ModelConfig(loss="logistic", use_weights=True)
    rows, cols, labels, weights = training_pairs(logistic, users, items, ratings, stamps, 7)
    assert list(zip(rows.tolist(), cols.tolist(), labels.tolist(), strict=True)) == [
        (0, 5, -1.0),
        (1, 5, 1.0),
        (0, 6, -1.0),
    ]  # arrival order of each pair's latest rating
    assert weights is not None and np.allclose(weights, [0.8, 0.8, 0.6])


def test_a_loaded_fitter_has_the_capacity_growth_gives() -> None:
    config = ModelConfig(no_components=4, initial_capacity=4)
    grown = Fitter(config)
    grown.grow(1, 0, 0, 9, 3)
    arrays = {name: getattr(grown.lfm, name)[: 9 if name[0] == "u" else 3] for name in STATE_ARRAYS}
    loaded = Fitter(config)
    loaded.load(arrays, 9, 3)
    assert loaded.capacity == grown.capacity == (16, 4)
    for name in STATE_ARRAYS:
        np.testing.assert_array_equal(getattr(loaded.lfm, name), getattr(grown.lfm, name))
    counts = np.arange(3)
    assert resized(counts, 3, 3) is counts
    assert resized(counts, 2, 5).tolist() == [0, 1, 0, 0, 0]
