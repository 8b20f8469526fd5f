import math
import random

import pytest

from models.config import ModelConfig
from models.evaluation import (
    evaluate,
    positives_by_user,
    prequential,
    prequential_vs_frozen,
    ranking_metrics,
    split_latest_per_user,
    split_random,
)
from models.events import Rating
from models.incremental import IncrementalModel
from models.synthetic import generate_ratings

# tiny_view scores (see conftest): alice a=13 b=12 c=11 d=10; bob d=4 c=3 b=2 a=1;
# carol is cold, so popularity: b=5 c=5 d=2 a=1.
TEST = {"alice": {"c"}, "bob": {"a", "d", "never-seen"}, "carol": {"d"}}
TRAIN = {"alice": {"a"}}
L2 = 1 / math.log2(3)  # discount of rank 2


def test_metrics_by_hand_excluding_train_items(tiny_view):
    m = evaluate(tiny_view, TEST, train=TRAIN, k=2, exclude_train=True)
    # alice ranks b, c, d (a excluded): hit at rank 2.  bob: d, c: hit at rank 1, 3 positives
    # (one unknown).  carol (popularity) b, c: no hit.
    assert (m.users, m.popularity_users, m.exclude_train) == (3, 1, True)
    assert m.precision == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert m.recall == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert m.ndcg == pytest.approx((L2 / 1 + 1 / (1 + L2) + 0) / 3)
    assert m.hit_rate == pytest.approx(2 / 3)
    # AUC: alice c beats d, loses to b -> 1/2; bob d beats b, c; a beats none; the unknown
    # item loses -> (1 + 0 + 0) / 3; carol d beats a only -> 1/3.
    assert m.auc == pytest.approx((1 / 2 + 1 / 3 + 1 / 3) / 3)


def test_metrics_by_hand_including_train_items(tiny_view):
    m = evaluate(tiny_view, TEST, train=TRAIN, k=2, exclude_train=False)
    # alice now ranks a, b first: no hit; her AUC negatives are a, b, d: c beats d only.
    assert m.exclude_train is False
    assert m.precision == pytest.approx((0 + 1 / 2 + 0) / 3)
    assert m.hit_rate == pytest.approx(1 / 3)
    assert m.auc == pytest.approx((1 / 3 + 1 / 3 + 1 / 3) / 3)


def test_popularity_baseline_ranks_everyone_by_popularity(tiny_view):
    m = evaluate(tiny_view, {"alice": {"c"}}, train=TRAIN, k=2, popularity=True)
    # b, c, d (a excluded): hit at rank 2; c ties b (half) and beats d.
    assert m.popularity_users == 1
    assert (m.precision, m.recall, m.ndcg) == pytest.approx((0.5, 1.0, L2))
    assert m.auc == pytest.approx(0.75)


def test_users_without_test_positives_are_not_counted(tiny_view):
    assert evaluate(tiny_view, {"alice": set(), "bob": {"d"}}, k=1).users == 1
    with pytest.raises(ValueError):
        evaluate(tiny_view, TEST, k=0)


def test_positives_by_user_applies_the_threshold():
    events = [Rating("1", "u", "a", 5, 0), Rating("2", "u", "b", 3, 0), Rating("3", "v", "a", 4, 0)]
    assert positives_by_user(events, 4.0) == {"u": {"a"}, "v": {"a"}}
    assert positives_by_user(events) == {"u": {"a", "b"}, "v": {"a"}}


STREAM = [
    Rating("e1", "u1", "x", 5, 1),  # trial: empty model -> miss
    Rating("e2", "u3", "y", 2, 2),  # not a positive: no trial, but y becomes known
    Rating("e3", "u2", "x", 5, 3),  # trial: u2 cold, popularity offers x -> hit
    Rating("e4", "u2", "y", 5, 4),  # trial: u2 warm, x seen and excluded, y left -> hit
]


def test_prequential_tests_then_trains_in_time_order():
    shuffled = random.Random(1).sample(STREAM, len(STREAM))
    model = IncrementalModel(ModelConfig(no_components=4))
    result = prequential(shuffled, model, batch_size=1, k=10)
    assert result.curve == [(1, 1, 0, 0, 0), (2, 0, 0, 0, 0), (3, 1, 1, 0, 0), (4, 1, 1, 1, 1)]
    assert (result.trials, result.hits) == (3, 2)
    assert result.hit_rate == pytest.approx(2 / 3)
    assert result.hit_rate_between(2) == 1.0
    assert result.hit_rate_between(0, 2) == 0.0
    assert result.hit_rate_between(0, model_only=True) == 1.0  # only e4 was scored by the model
    assert result.model_share() == pytest.approx(1 / 3)
    assert model.version == 4


def test_prequential_frozen_model_stops_learning():
    model = IncrementalModel(ModelConfig(no_components=4))
    result = prequential(STREAM, model, batch_size=1, k=10, freeze_after=1)
    # e4: u2 and y are unknown to the frozen model; popularity offers only x, already seen.
    assert result.curve == [(1, 1, 0, 0, 0), (2, 0, 0, 0, 0), (3, 1, 1, 0, 0), (4, 1, 0, 0, 0)]
    assert model.version == 1 and result.frozen_after == 1


def test_prequential_popularity_baseline_uses_recency():
    model = IncrementalModel(ModelConfig(no_components=4))
    result = prequential(STREAM, model, batch_size=2, k=1, popularity=True)
    # batch 1: empty model, e1 misses.  batch 2: one count each, y (ts 2) is more recent
    # than x (ts 1), so the top 1 is y: e3 (x) misses, e4 (y) hits.
    assert result.curve == [(2, 1, 0, 0, 0), (4, 2, 1, 0, 0)]


def test_prequential_windows_end_batches_at_the_events_time():
    model = IncrementalModel(ModelConfig(no_components=4))
    result = prequential(STREAM, model, batch_size=10, window_seconds=2.0, k=10)
    # windows of 2 s: ts 1 | ts 2, 3 | ts 4.  e3 (u2, x) is scored after e1 trained x: hit.
    assert [row[:3] for row in result.curve] == [(1, 1, 0), (3, 1, 1), (4, 1, 1)]
    assert model.version == 3
    with pytest.raises(ValueError):
        prequential(STREAM, model, window_seconds=0.0)
    with pytest.raises(ValueError):
        prequential(STREAM, model, batch_size=0)


def test_prequential_vs_frozen_is_the_two_replays_in_one():
    events = generate_ratings(n_users=60, n_items=40, n_ratings=1_200, n_clusters=3, seed=4)
    config = ModelConfig(no_components=4, consolidate_every=400, blend_neighbours=10)
    half = 600  # a batch boundary, so the incremental replay's batches are the same
    incremental, frozen = prequential_vs_frozen(
        events, IncrementalModel(config), freeze_after=half, batch_size=100
    )
    alone = prequential(events, IncrementalModel(config), batch_size=100)
    stopped = prequential(events, IncrementalModel(config), batch_size=100, freeze_after=half)
    assert incremental.curve == alone.curve
    assert frozen.curve == stopped.curve and frozen.frozen_after == half
    # the frozen view really is frozen: after the half the two curves part
    assert incremental.curve[6:] != frozen.curve[6:]
    assert incremental.curve[:6] == frozen.curve[:6]


def test_split_latest_per_user_holds_out_the_newest_ratings():
    events = [Rating(f"e{i}", "u", f"i{i}", 5, ts) for i, ts in enumerate([5, 1, 4, 2, 3])]
    events += [Rating("f0", "v", "x", 5, 1), Rating("f1", "v", "y", 5, 2)]
    train, test = split_latest_per_user(events, 2)
    assert sorted(r.event_id for r in test) == ["e0", "e2"]  # u's two newest (ts 5 and 4)
    assert len(train) == 5  # v has only 2 ratings: all stay in train
    assert split_latest_per_user(events, 0) == (events, [])


def test_split_random_is_seeded():
    events = [Rating(f"e{i}", "u", f"i{i}", 5, i) for i in range(1000)]
    train, test = split_random(events, 0.2, seed=1)
    assert 150 < len(test) < 250 and len(train) + len(test) == 1000
    assert split_random(events, 0.2, seed=1) == (train, test)
    with pytest.raises(ValueError):
        split_random(events, 1.0)


def test_ranking_metrics_of_lists_match_evaluate(tiny_view):
    lists = {"alice": ["b", "c"], "bob": ["d", "c", "a"], "carol": ["b", "c"]}
    m = ranking_metrics(lists, TEST, k=2)  # bob's "a" at rank 3 does not count
    e = evaluate(tiny_view, TEST, train=TRAIN, k=2, exclude_train=True)
    assert m == pytest.approx(
        {
            "users": 3,
            "precision": e.precision,
            "recall": e.recall,
            "ndcg": e.ndcg,
            "hit_rate": e.hit_rate,
        }
    )
    missing = ranking_metrics({"alice": ["c"]}, TEST, k=1)  # bob and carol: no list
    assert missing == pytest.approx(
        {"users": 3, "precision": 1 / 3, "recall": 1 / 3, "ndcg": 1 / 3, "hit_rate": 1 / 3}
    )
    with pytest.raises(ValueError, match="k must be"):
        ranking_metrics(lists, TEST, k=0)
