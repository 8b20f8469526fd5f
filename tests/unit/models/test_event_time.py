"""Event time: the future-skew rule, and popularity that no timestamp can freeze.

Issue 17 ("hostile input", event time): MovieLens history (1997-98) followed by ratings
stamped now made the decay factor of the next delta underflow to 0.0 (refused by every
scorer), and one rating stamped in milliseconds (or 1e300) moved popularity's reference
time so far ahead that every later rating weighed 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.config import ModelConfig
from models.delta import ModelDelta
from models.events import (
    MAX_FUTURE_SKEW_SECONDS,
    EventInFuture,
    Rating,
    check_event_time,
    latest_event_time,
)
from models.incremental import IncrementalModel
from models.scoring import ScoringView
from models.wire import Undecodable, decode_rating, encode_rating

NOW = 1_797_000_000.0  # 2026-12-11: the tests' wall clock
MOVIELENS = 880_000_000.0  # 1997-11-20, in MovieLens 100k's range
WEEK = 7 * 24 * 3600.0

#: Timestamps of every era and unit, the poison ones included.
STAMPS = st.one_of(
    st.floats(0, 2e9),
    st.floats(MOVIELENS - 1e7, MOVIELENS + 1e8),
    st.floats(NOW - 1e6, NOW + 1e3),
    st.sampled_from(
        [0.0, NOW, NOW * 1e3, NOW * 1e6, NOW * 1e9, 1e300, 2.0**53, 1.7976931348623157e308]
    ),
    st.floats(allow_nan=True, allow_infinity=True),  # the model must survive even these
)
PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def model_at(now: float = NOW) -> IncrementalModel:
    model = IncrementalModel(ModelConfig(no_components=4, initial_capacity=4))
    model.clock = lambda: now
    return model


def rated(n: int, item: str, ts: float, prefix: str = "") -> list[Rating]:
    return [Rating(f"{prefix}{item}-{ts!r}-{k}", f"u{k}", item, 5.0, ts) for k in range(n)]


# --- the rule ------------------------------------------------------------------------
@given(
    ts=st.floats(0, 1e300),
    reference=st.floats(0, 1e12),
    skew=st.floats(0, 1e7),
)
def test_a_rating_is_refused_exactly_when_it_is_past_reference_plus_skew(
    ts: float, reference: float, skew: float
) -> None:
    late = ts > latest_event_time(reference, skew)
    try:
        check_event_time(ts, reference, skew)
    except EventInFuture as exc:
        assert late and "past its reference clock" in exc.reason
    else:
        assert not late


@pytest.mark.parametrize("ts", [NOW * 1e3, NOW * 1e6, 1e300, NOW + MAX_FUTURE_SKEW_SECONDS + 1])
def test_the_decoder_dead_letters_a_future_rating_as_ts_in_future(ts: float) -> None:
    key, value = encode_rating(Rating("e", "u", "i", 4.0, ts))
    with pytest.raises(Undecodable) as caught:
        decode_rating(key, value, max_bytes=4096, reference=NOW)
    assert caught.value.kind == "ts_in_future" and "milliseconds" in caught.value.reason
    assert decode_rating(key, value, max_bytes=4096).ts == ts  # no reference: no rule


@pytest.mark.parametrize("ts", [0.0, MOVIELENS, NOW, NOW + MAX_FUTURE_SKEW_SECONDS])
def test_past_and_present_ratings_pass(ts: float) -> None:
    key, value = encode_rating(Rating("e", "u", "i", 4.0, ts))
    assert decode_rating(key, value, max_bytes=4096, reference=NOW).ts == ts


# --- popularity ------------------------------------------------------------------------
def follow(model: IncrementalModel, served: ScoringView | None) -> ScoringView:
    """What a scorer does with the model's latest delta: decode it from its bytes (every
    check a scorer makes) and apply it to the view it serves."""
    view = model.view()
    delta = model.last_delta
    if served is None or delta is None:
        return view
    assert not delta.snapshot_needed
    decoded = ModelDelta.decode(delta.encode())
    assert 0.0 < decoded.popularity_decay <= 1.0 and math.isfinite(decoded.popularity_decay)
    return served.with_delta(decoded)


@PROPERTY
@given(st.lists(st.lists(STAMPS, min_size=1, max_size=6), min_size=1, max_size=8))
def test_no_sequence_of_timestamps_breaks_a_delta_or_popularity(
    batches: list[list[float]],
) -> None:
    """Any timestamps, of any era and unit, batch after batch: every delta decodes and
    applies (decay in (0, 1], finite), the scorer's popularity equals the trainer's, the
    reference time never moves backwards nor past now + skew, counts stay finite and >= 0."""
    model = model_at()
    served: ScoringView | None = None
    reference = -math.inf
    for n, stamps in enumerate(batches):
        events = [
            Rating(f"b{n}-{k}", f"u{k % 3}", f"i{k % 4}", 5.0, ts) for k, ts in enumerate(stamps)
        ]
        model.train_batch(events)
        served = follow(model, served)
        ts = served.popularity_ts
        assert ts is not None and math.isfinite(ts)
        assert reference <= ts <= NOW + MAX_FUTURE_SKEW_SECONDS
        reference = ts
        popularity = served.popularity_scores()
        assert np.isfinite(popularity).all() and (popularity >= 0).all()
        np.testing.assert_allclose(popularity, model.full_view().popularity_scores(), rtol=1e-12)


@PROPERTY
@given(
    history=st.lists(st.floats(0, NOW - 52 * WEEK), min_size=1, max_size=5),
    poison=st.sampled_from([NOW * 1e3, NOW * 1e6, 1e300, math.inf, 2.0**53]),
)
def test_popularity_keeps_following_live_ratings_after_a_poison_timestamp(
    history: list[float], poison: float
) -> None:
    model = model_at()
    served = follow(model, None)
    model.train_batch(
        [Rating(f"h{k}", "old-fan", "old-hit", 5.0, ts) for k, ts in enumerate(history)]
    )
    served = follow(model, served)
    model.train_batch(rated(50, "old-hit", MOVIELENS, "more-"))
    served = follow(model, served)
    model.train_batch([Rating("poison", "clock-wrong", "poisoned", 5.0, poison)])
    served = follow(model, served)
    # Live ratings, at now, then a newer favourite a week on: both rise to the top.
    model.train_batch(rated(3, "live", NOW))
    served = follow(model, served)
    assert [p.item for p in served.popular(3)][:2] in (["live", "poisoned"], ["poisoned", "live"])
    assert served.popular(3)[0].score > 0.5
    model.clock = lambda: NOW + WEEK
    model.train_batch(rated(5, "newer", NOW + WEEK))
    served = follow(model, served)
    top = served.popular(3)
    assert top[0].item == "newer" and top[0].score == pytest.approx(5.0)
    assert served.popularity_ts == NOW + WEEK


def test_movielens_history_then_live_ratings_make_a_valid_delta() -> None:
    """The issue's case: 1997 history, then ratings stamped 29 years later. The decay
    factor (2 ** -1500 half-lives) underflows: the delta carries every count instead."""
    model = model_at()
    served = follow(model, None)
    model.train_batch(rated(20, "toy-story", MOVIELENS))
    served = follow(model, served)
    model.train_batch(rated(2, "new-release", NOW))
    served = follow(model, served)  # decodes and applies (refused on main)
    delta = model.last_delta
    assert delta is not None and len(delta.popularity_rows) == model.n_items
    assert served.popular(1)[0].item == "new-release"
    assert served.popularity_scores()[model.items.get("toy-story")] == 0.0  # decayed away


def test_a_snapshot_poisoned_before_the_rule_is_repaired_on_restore() -> None:
    """A reference time already in the far future (a snapshot written before this rule):
    restoring pulls it back to now + skew, so live ratings count again."""
    model = model_at(now=1e301)  # no ceiling: as the model was before the rule
    model.train_batch(rated(4, "old", MOVIELENS))
    model.train_batch([Rating("poison", "clock-wrong", "poisoned", 5.0, 1e300)])
    assert model.view().popularity_ts == 1e300
    restored = IncrementalModel.from_bytes(*model.to_bytes())
    assert restored.view().popularity_ts <= latest_event_time(
        restored.clock(), MAX_FUTURE_SKEW_SECONDS
    )
    restored.clock = lambda: NOW
    restored.train_batch(rated(2, "live", NOW))
    assert restored.view().popular(1)[0].item == "live"
