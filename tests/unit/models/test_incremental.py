import numpy as np
import pytest

from models.config import ModelConfig
from models.events import Rating
from models.incremental import IncrementalModel, NonFiniteModel
from models.snapshot import STATE_ARRAYS
from models.submodel import SubModel
from models.synthetic import generate_ratings

SMALL = dict(no_components=8, initial_capacity=4)


def ratings(n_users, n_items, n, seed=0, prefix="e", ts0=0.0, rating=None):
    rng = np.random.default_rng(seed)
    return [
        Rating(
            f"{prefix}{j}",
            f"u{rng.integers(n_users)}",
            f"i{rng.integers(n_items)}",
            float(rng.integers(1, 6)) if rating is None else rating,
            ts0 + j,
        )
        for j in range(n)
    ]


def assert_same_state(a: IncrementalModel, b: IncrementalModel):
    assert a.users.ids() == b.users.ids()
    assert a.items.ids() == b.items.ids()
    assert a.version == b.version
    for name, array in a.state_arrays().items():
        np.testing.assert_array_equal(array, b.state_arrays()[name], err_msg=name)
    va, vb = a.view(), b.view()
    np.testing.assert_array_equal(va.popularity_scores(), vb.popularity_scores())


def check_arrays(model: IncrementalModel):
    cap_users, cap_items = model.capacity
    for name in STATE_ARRAYS:
        array = getattr(model._lfm, name)
        assert array.dtype == np.float32, name
        assert array.flags.c_contiguous, name
        assert array.shape[0] == (cap_users if name.startswith("user") else cap_items), name
    for name, used in model.state_arrays().items():
        assert np.isfinite(used).all(), name


def test_first_batch_creates_users_items_and_trains_positives():
    model = IncrementalModel(ModelConfig(**SMALL))
    events = [
        Rating("a", "u1", "i1", 5, 1),
        Rating("b", "u1", "i2", 2, 2),
        Rating("c", "u2", "i2", 4, 3),
    ]
    result = model.train_batch(events)
    assert (result.version, result.applied, result.positives, result.negatives) == (1, 3, 2, 0)
    assert (result.new_users, result.new_items, model.n_users, model.n_items) == (2, 2, 2, 2)
    assert model.trained_events == 3
    check_arrays(model)


def test_thousands_of_new_ids_in_one_batch_grow_all_twelve_arrays():
    model = IncrementalModel(ModelConfig(**SMALL))
    model.train_batch(ratings(50, 30, 500))
    events = ratings(5000, 3000, 20_000, seed=1, prefix="big")
    result = model.train_batch(events)
    assert result.new_users > 4000 and result.new_items > 2500
    cap_users, cap_items = model.capacity
    assert cap_users >= model.n_users and cap_users & (cap_users - 1) == 0  # power of two
    assert cap_items >= model.n_items and cap_items & (cap_items - 1) == 0
    check_arrays(model)


@pytest.mark.parametrize("schedule", ["adagrad", "adadelta"])
def test_new_rows_are_initialised_like_lightfm(schedule):
    model = IncrementalModel(ModelConfig(learning_schedule=schedule, **SMALL))
    model.train_batch(ratings(20, 20, 200))
    # A new user and item that only appear in a non-positive rating: registered, untrained.
    model.train_batch([Rating("n", "new-user", "new-item", 1.0, 500)])
    arrays = model.state_arrays()
    accumulator = 1.0 if schedule == "adagrad" else 0.0
    for side, index in (
        ("user", model.users.get("new-user")),
        ("item", model.items.get("new-item")),
    ):
        embedding = arrays[f"{side}_embeddings"][index]
        assert np.all(np.abs(embedding) <= 0.5 / 8) and np.any(embedding != 0)
        assert arrays[f"{side}_biases"][index] == 0
        assert np.all(arrays[f"{side}_embedding_gradients"][index] == accumulator)
        assert arrays[f"{side}_bias_gradients"][index] == accumulator
        assert np.all(arrays[f"{side}_embedding_momentum"][index] == 0)
        assert arrays[f"{side}_bias_momentum"][index] == 0


@pytest.mark.parametrize("loss", ["warp", "bpr", "logistic", "warp-kos"])
@pytest.mark.parametrize("schedule", ["adagrad", "adadelta"])
def test_growth_after_fits_stays_finite_for_every_loss(loss, schedule):
    model = IncrementalModel(ModelConfig(loss=loss, learning_schedule=schedule, **SMALL))
    for batch in range(6):  # each batch brings new users and items, forcing reallocation
        model.train_batch(
            ratings(40 * (batch + 1), 25 * (batch + 1), 400, seed=batch, prefix=f"b{batch}-")
        )
        check_arrays(model)
    assert model.version == 6


def test_growth_keeps_the_rows_of_users_not_in_the_batch():
    model = IncrementalModel(ModelConfig(**SMALL))
    model.train_batch(ratings(30, 30, 300))
    before = {name: a.copy() for name, a in model.state_arrays().items()}
    n_users0 = model.n_users
    batch_users = {"newcomer", "u0"}
    model.train_batch(
        [Rating("x1", "newcomer", f"j{i}", 5, 1000 + i) for i in range(200)]  # 200 new items
        + [Rating("x2", "u0", "i1", 5, 2000)]
    )
    untouched = [model.users.get(u) for u in model.users.ids()[:n_users0] if u not in batch_users]
    for name in (n for n in STATE_ARRAYS if n.startswith("user")):
        np.testing.assert_array_equal(
            model.state_arrays()[name][untouched], before[name][untouched]
        )


def test_one_thread_and_a_seed_are_bit_identical_and_capacity_does_not_matter():
    batches = [ratings(100, 80, 500, seed=s, prefix=f"s{s}-") for s in range(4)]
    models = [
        IncrementalModel(ModelConfig(no_components=8, initial_capacity=cap)) for cap in (4, 4, 4096)
    ]
    for model in models:
        for batch in batches:
            model.train_batch(batch)
    assert_same_state(models[0], models[1])
    assert_same_state(models[0], models[2])
    other_seed = IncrementalModel(ModelConfig(no_components=8, seed=7))
    for batch in batches:
        other_seed.train_batch(batch)
    assert not np.array_equal(
        other_seed.state_arrays()["item_embeddings"], models[0].state_arrays()["item_embeddings"]
    )


def test_duplicate_event_ids_are_trained_once_within_and_across_batches():
    model = IncrementalModel(ModelConfig(**SMALL))
    once = IncrementalModel(ModelConfig(**SMALL))
    events = ratings(10, 10, 50)
    result = model.train_batch(events + events[:20])
    assert (result.duplicates, result.applied) == (20, 50)
    once.train_batch(events)
    assert_same_state(model, once)
    again = model.train_batch(events[10:30])
    assert (again.duplicates, again.applied, again.version) == (20, 0, 1)
    assert model.version == 1 and model.trained_events == 50


def test_dedupe_memory_is_bounded():
    model = IncrementalModel(ModelConfig(dedupe_memory=3, **SMALL))
    model.train_batch([Rating(f"e{i}", "u", f"i{i}", 5, i) for i in range(5)])
    # Only e2, e3, e4 are remembered: e0 counts as new again.
    result = model.train_batch([Rating("e0", "u", "i0", 5, 9), Rating("e4", "u", "i4", 5, 9)])
    assert (result.applied, result.duplicates) == (1, 1)


def test_empty_batch_changes_nothing():
    model = IncrementalModel(ModelConfig(**SMALL))
    result = model.train_batch([])
    assert (result.version, result.applied, model.version) == (0, 0, 0)


def test_non_positives_register_ids_and_popularity_but_are_not_trained():
    model = IncrementalModel(ModelConfig(**SMALL))
    model.train_batch(ratings(10, 10, 100, rating=5.0))
    before = {name: a.copy() for name, a in model.state_arrays().items()}
    result = model.train_batch([Rating("low", "critic", "i3", 2.0, 500)])
    assert (result.positives, result.new_users) == (0, 1)
    for name in STATE_ARRAYS:  # no fit ran: existing rows are unchanged
        np.testing.assert_array_equal(model.state_arrays()[name][: len(before[name])], before[name])
    view = model.view()
    assert view.has_user("critic")
    assert view.recommend("critic").source == "popularity"


def test_the_latest_rating_of_a_pair_in_a_batch_wins():
    model = IncrementalModel(ModelConfig(**SMALL))
    result = model.train_batch(
        [
            Rating("b", "u", "i", 1.0, 20),
            Rating("a", "u", "i", 5.0, 10),
            Rating("c", "u", "j", 4, 1),
        ]
    )
    assert result.positives == 1  # (u, i) was re-rated down to 1 at ts 20
    assert model.view().recommend("u").source == "model"


def test_threshold_zero_trains_every_rating():
    model = IncrementalModel(ModelConfig(positive_threshold=0.0, **SMALL))
    assert model.train_batch(ratings(5, 5, 20, rating=0.5)).positives > 0


def test_logistic_loss_trains_low_ratings_as_negatives():
    model = IncrementalModel(ModelConfig(loss="logistic", **SMALL))
    result = model.train_batch([Rating("a", "u", "i", 5, 1), Rating("b", "u", "j", 1, 2)])
    assert (result.positives, result.negatives) == (1, 1)
    scores = {s.item: s.score for s in model.view().recommend("u", k=2).items}
    assert scores["i"] > scores["j"]


def test_sample_weights_change_training():
    events = ratings(20, 20, 300)
    plain = IncrementalModel(ModelConfig(**SMALL))
    weighted = IncrementalModel(ModelConfig(use_weights=True, **SMALL))
    plain.train_batch(events)
    weighted.train_batch(events)
    assert not np.array_equal(
        plain.state_arrays()["item_embeddings"], weighted.state_arrays()["item_embeddings"]
    )


def test_a_diverging_batch_is_rolled_back_completely():
    model = IncrementalModel(ModelConfig(**SMALL))
    model.train_batch(ratings(30, 20, 300))
    before = {name: a.copy() for name, a in model.state_arrays().items()}
    view_before = model.view()
    n_users, n_items, version = model.n_users, model.n_items, model.version
    object.__setattr__(model, "config", ModelConfig(learning_rate=1e20, **SMALL))
    model._lfm.learning_rate = 1e20
    bad = ratings(60, 40, 300, seed=5, prefix="bad")
    with pytest.raises(NonFiniteModel, match="rolled back"):
        model.train_batch(bad, epochs=5)
    assert (model.n_users, model.n_items, model.version) == (n_users, n_items, version)
    for name, array in model.state_arrays().items():
        np.testing.assert_array_equal(array, before[name], err_msg=name)
    np.testing.assert_array_equal(model.view().popularity_scores(), view_before.popularity_scores())
    # The failed events were not remembered as applied: with a sane rate they train fine.
    model._lfm.learning_rate = 0.05
    assert model.train_batch(bad).applied == len(bad)
    check_arrays(model)


def test_epochs_override_and_progress_callback():
    model = IncrementalModel(ModelConfig(**SMALL))
    done: list[int] = []
    model.train_batch(ratings(10, 10, 100), epochs=3, on_epoch=done.append)
    assert done == [1, 2, 3]
    with pytest.raises(ValueError):
        model.train_batch(ratings(10, 10, 10, prefix="z"), epochs=0)


def test_views_are_read_only_copies():
    model = IncrementalModel(ModelConfig(**SMALL))
    model.train_batch(ratings(10, 10, 100))
    view = model.view()
    scores = view.score_rows(np.arange(view.n_users)).copy()
    with pytest.raises(ValueError):
        view.popularity_scores()[0] = 1.0
    model.train_batch(ratings(20, 20, 300, seed=3, prefix="later"))
    assert (view.version, model.version) == (1, 2)
    assert model.n_users > view.n_users
    np.testing.assert_array_equal(view.score_rows(np.arange(view.n_users)), scores)


def test_snapshot_then_continue_equals_never_stopping():
    config = ModelConfig(no_components=8, seed=3)
    batches = [ratings(60 + 20 * s, 40 + 10 * s, 400, seed=s, prefix=f"b{s}-") for s in range(5)]
    batches[3] = batches[3] + batches[2][:50]  # redelivered events after the restart
    straight = IncrementalModel(config)
    for batch in batches:
        straight.train_batch(batch)
    resumed = IncrementalModel(config)
    for batch in batches[:3]:
        resumed.train_batch(batch)
    resumed.offsets["ratings:0"] = 1200
    payload, manifest = resumed.to_bytes()
    resumed = IncrementalModel.from_bytes(payload, manifest)
    assert resumed.offsets == {"ratings:0": 1200}
    for batch in batches[3:]:
        resumed.train_batch(batch)
    assert_same_state(straight, resumed)
    assert resumed.trained_events == straight.trained_events


def test_synthetic_demo_user_follows_a_new_genre():
    model = IncrementalModel(ModelConfig(no_components=16, epochs_per_batch=5))
    model.train_batch(
        generate_ratings(n_users=300, n_items=160, n_ratings=12_000, n_clusters=4, seed=1)
    )

    def genre_items(genre, n):
        return sorted(i for i in model.items.ids() if i.startswith(f"{genre}-"))[:n]

    def genres(user):
        return [s.item.split("-")[0] for s in model.view().recommend(user, k=10).items]

    ts = 2e9
    model.train_batch(
        [Rating(f"d{j}", "demo", i, 5, ts + j) for j, i in enumerate(genre_items("g1", 8))]
    )
    assert genres("demo").count("g1") >= 8
    g3 = genre_items("g3", 25)
    model.train_batch([Rating(f"x{j}", "demo", i, 5, ts + 99 + j) for j, i in enumerate(g3)])
    assert genres("demo").count("g3") >= 8


def test_non_finite_accumulators_that_lightfm_does_not_check_are_caught(monkeypatch):
    model = IncrementalModel(ModelConfig(**SMALL))
    model.train_batch(ratings(10, 10, 100))
    before = {name: a.copy() for name, a in model.state_arrays().items()}
    real_epoch = SubModel.run_epoch

    def epoch_then_corrupt(self, *args, **kwargs):
        real_epoch(self, *args, **kwargs)
        self.users.arrays["bias_gradients"][:] = np.inf  # u1's row; embeddings stay finite

    monkeypatch.setattr(SubModel, "run_epoch", epoch_then_corrupt)
    with pytest.raises(NonFiniteModel, match="user_bias_gradients"):
        model.train_batch([Rating("z", "u1", "i1", 5, 99)])
    for name, array in model.state_arrays().items():
        np.testing.assert_array_equal(array, before[name], err_msg=name)
    assert model.version == 1


# --- views and deltas cost O(batch) ----------------------------------------------------
def test_view_after_a_batch_shares_untouched_user_blocks():
    from models.blocks import BLOCK_ROWS

    model = IncrementalModel(ModelConfig(**SMALL))
    model.train_batch(ratings(20 * BLOCK_ROWS, 50, 6000, seed=1))
    first = model.view()
    model.train_batch([Rating("x1", "u3", "i4", 5, 9000.0)])  # one known user
    second = model.view()
    assert model.last_delta is not None and list(model.last_delta.user_rows) == [
        model.users.get("u3")
    ]
    blocks = (model.n_users + BLOCK_ROWS - 1) // BLOCK_ROWS
    assert second._user_rows.shared_blocks(first._user_rows) == blocks - 1
    assert first.version == second.version - 1  # the old view is untouched
    for name, array in model.full_view().scoring_arrays().items():
        np.testing.assert_array_equal(array, second.scoring_arrays()[name], err_msg=name)


def test_view_without_changes_is_the_same_object():
    model = IncrementalModel(ModelConfig(**SMALL))
    model.train_batch(ratings(5, 5, 20))
    view = model.view()
    assert model.view() is view


def test_a_restored_model_is_a_new_lineage_starting_at_its_snapshot():
    model = IncrementalModel(ModelConfig(**SMALL))
    model.train_batch(ratings(5, 5, 20))
    model.view()
    restored = IncrementalModel.from_bytes(*model.to_bytes())
    assert restored.lineage != model.lineage and restored.origin == model.version
    restored.version += 3  # following the store's newest version: no delta for that alone
    restored.view()
    assert restored.last_delta is None
    restored.train_batch(ratings(5, 5, 20, prefix="later-", ts0=100))
    restored.view()
    delta = restored.last_delta
    assert (delta.origin, delta.start, delta.base_version) == (1, 1, 1)
    assert delta.version == restored.version == 5


def test_snapshot_records_the_chain_only_when_every_change_went_into_a_delta():
    model = IncrementalModel(ModelConfig(**SMALL))
    model.train_batch(ratings(5, 5, 20))
    assert model.to_bytes()[1].get("delta_chain") is None
    model.view()
    model.delta_offset = 17
    chain = model.to_bytes()[1]["delta_chain"]
    assert chain == {"lineage": model.lineage, "version": model.version, "offset": 17}


def test_a_version_moved_by_hand_makes_a_delta_without_rows():
    model = IncrementalModel(ModelConfig(**SMALL))
    model.train_batch(ratings(5, 5, 20))
    view = model.view()
    model.version += 1  # the trainer's snapshot of offset-only progress
    bumped = model.view()
    assert bumped.version == view.version + 1 and model.last_delta.rows_touched == 0
    assert bumped.recommend("u1").items == view.recommend("u1").items


def test_event_counts_are_exact_per_user_and_item_and_survive_a_snapshot():
    from collections import Counter

    model = IncrementalModel(ModelConfig(**SMALL))
    events = ratings(30, 20, 500, seed=3)
    model.train_batch(events[:200])
    model.train_batch(events[150:])  # 50 redelivered: dropped, not counted twice
    restored = IncrementalModel.from_bytes(*model.to_bytes())
    restored.train_batch(ratings(30, 20, 50, seed=4, prefix="f"))
    users, items = restored.event_counts()
    expected = events + ratings(30, 20, 50, seed=4, prefix="f")
    assert users == dict(Counter(e.user for e in expected))
    assert items == dict(Counter(e.item for e in expected))
    assert sum(users.values()) == restored.trained_events == 550
