import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from models import fitter, snapshot
from models.config import ModelConfig
from models.consolidation import InteractionWindow, item_neighbours
from models.evaluation import evaluate, positives_by_user, split_latest_per_user
from models.incremental import IncrementalModel, NonFiniteModel
from models.snapshot import SnapshotError
from models.synthetic import generate_ratings
from tests.unit.models.conftest import make_tiny_view
from tests.unit.models.test_incremental import assert_same_state, check_arrays, ratings


def arrays(n: int, start: int = 0) -> tuple[np.ndarray, ...]:
    idx = np.arange(start, start + n)
    return idx, idx + 100, np.full(n, 4.0), idx.astype(np.float64)


# --- InteractionWindow ------------------------------------------------------------------
def test_window_keeps_the_newest_events_in_arrival_order():
    window = InteractionWindow(10)
    for start in (0, 4, 8, 12):
        window.append(*arrays(4, start))
    assert len(window) == 10
    got = window.arrays()
    np.testing.assert_array_equal(got["users"], np.arange(6, 16))
    np.testing.assert_array_equal(got["items"], np.arange(106, 116))
    assert {k: v.dtype for k, v in got.items()} == {
        "users": np.int32,
        "items": np.int32,
        "ratings": np.float32,
        "stamps": np.float64,
    }
    window.append(*arrays(25, 100))  # one batch larger than the window
    np.testing.assert_array_equal(window.arrays()["users"], np.arange(115, 125))


def test_window_copies_what_it_is_given_and_capacity_zero_keeps_nothing():
    users, items, ratings_, stamps = arrays(3)
    window = InteractionWindow(5)
    window.append(users, items, ratings_, stamps)
    users[:] = -1
    np.testing.assert_array_equal(window.arrays()["users"], [0, 1, 2])
    empty = InteractionWindow(0)
    empty.append(*arrays(3))
    assert len(empty) == 0 and len(empty.arrays()["users"]) == 0
    with pytest.raises(ValueError, match="same length"):
        window.append(users, items[:2], ratings_, stamps)
    with pytest.raises(ValueError, match="capacity"):
        InteractionWindow(-1)


def test_window_round_trips_through_arrays_and_a_smaller_capacity_keeps_the_newest():
    window = InteractionWindow(8)
    for start in (0, 3, 6):
        window.append(*arrays(3, start))
    again = InteractionWindow.from_arrays(8, window.arrays())
    for name, array in window.arrays().items():
        np.testing.assert_array_equal(again.arrays()[name], array)
    smaller = InteractionWindow.from_arrays(2, window.arrays())
    np.testing.assert_array_equal(smaller.arrays()["users"], [7, 8])


# --- consolidation in IncrementalModel ----------------------------------------------------
def config(**kw) -> ModelConfig:
    return ModelConfig(**{"no_components": 8, "consolidate_every": 500, **kw})


def test_streaming_batches_consolidate_every_n_events_and_offline_batches_never():
    model = IncrementalModel(config())
    results = [model.train_batch(b) for b in np.array_split(ratings(50, 40, 1200), 6)]
    assert [r.consolidated for r in results] == [False, False, True, False, False, True]
    assert model.since_consolidation == 0
    assert model.window_size == 1200
    offline = IncrementalModel(config())
    assert not offline.train_batch(ratings(50, 40, 1200), epochs=3).consolidated
    assert offline.since_consolidation == 0 and offline.window_size == 1200
    check_arrays(model)


def test_consolidation_retrains_every_window_positive_and_beats_micro_batches():
    events = generate_ratings(n_users=200, n_items=100, n_ratings=8_000, n_clusters=5, seed=2)
    train, test = split_latest_per_user(events, 5)
    train.sort(key=lambda e: e.ts)
    truth, seen = positives_by_user(test, 4.0), positives_by_user(train)
    scores = {}
    for every in (0, 2000):
        model = IncrementalModel(
            config(consolidate_every=every, epochs_per_batch=1, blend_neighbours=0)
        )
        for start in range(0, len(train), 500):
            model.train_batch(train[start : start + 500])
        scores[every] = evaluate(model.view(), truth, train=seen).precision
    assert scores[2000] > 1.2 * scores[0], scores


def user_rows(model: IncrementalModel, rows) -> dict[str, np.ndarray]:
    return {
        name: array[rows].copy()
        for name, array in model.state_arrays().items()
        if name.startswith("user")
    }


def test_users_outside_the_window_keep_their_rows_exactly():
    """Issue 18: a consolidation never forgets a user outside its window (it used to
    re-initialise them, sending them back to popularity)."""
    model = IncrementalModel(config(consolidation_window=100, consolidate_every=100))
    model.defer_consolidation = True
    model.train_batch(ratings(5, 10, 60, prefix="old", rating=5.0))
    old = [model.users.get(f"u{n}") for n in range(5)]
    before = user_rows(model, old)
    newcomers = [
        dataclasses.replace(e, user="n" + e.user)
        for e in ratings(5, 10, 100, prefix="new", rating=5.0, ts0=1000)
    ]
    model.train_batch(newcomers)
    new = sorted({model.users.get(e.user) for e in newcomers})
    trained = user_rows(model, new)
    job = model.take_consolidation()
    assert job is not None and model.install(job.run())
    for name, array in user_rows(model, old).items():  # bit for bit, all six parts
        np.testing.assert_array_equal(array, before[name], err_msg=name)
    view = model.view()
    assert view.model_row("u0") is not None and view.model_row("nu0") is not None
    assert not np.array_equal(user_rows(model, new)["user_embeddings"], trained["user_embeddings"])
    assert model.n_users == 10  # ids are kept


def test_a_consolidation_costs_the_rows_of_its_window_not_of_the_model():
    """The rows a consolidation copies, trains and writes back are the window's users (and
    the items), however many users the model holds outside the window."""
    window = [
        dataclasses.replace(e, user="w" + e.user)
        for e in ratings(20, 30, 300, prefix="w", rating=5.0, ts0=5000)
    ]
    held = {}
    for outside in (30, 600):
        model = IncrementalModel(
            config(consolidation_window=300, consolidate_every=0, initial_capacity=8)
        )
        model.train_batch(ratings(outside, 30, 3 * outside, prefix="o", rating=5.0))
        model.train_batch(window)
        model.take_delta()
        job = model._cut()
        assert job is not None
        job.run()
        assert job.fitter is not None
        allocated = len(job.fitter.lfm.user_biases)  # rows its arrays hold
        assert model.install(job)
        delta = model.take_delta()
        window_users = {model.users.get(e.user) for e in window}
        assert set(delta.user_rows.tolist()) <= window_users
        held[outside] = (job.user_rows, allocated, job.item_rows, job.events)
    assert held[30] == held[600] == (20, 32, 30, held[30][3]), held


def test_a_snapshot_without_a_window_does_not_consolidate_on_a_few_events():
    model = IncrementalModel(config())
    model.train_batch(ratings(50, 40, 2000))
    payload, manifest = model.to_bytes()
    state = snapshot.decode(payload, manifest)
    state.window = {}  # as written before consolidation existed
    old = IncrementalModel.from_bytes(*snapshot.encode(state))
    assert old.window_size == 0
    assert not old.train_batch(ratings(50, 40, 600, prefix="later", ts0=5000)).consolidated
    assert old.window_size == 600 and old.since_consolidation == 600


def test_snapshot_then_continue_equals_never_stopping_across_consolidations():
    batches = [ratings(60, 40, 300, seed=s, prefix=f"b{s}-", ts0=1000 * s) for s in range(6)]
    straight = IncrementalModel(config())
    for batch in batches:
        straight.train_batch(batch)
    resumed = IncrementalModel(config())
    for batch in batches[:3]:
        resumed.train_batch(batch)
    resumed = IncrementalModel.from_bytes(*resumed.to_bytes())
    assert resumed.since_consolidation == 300  # consolidated after batch 2 (600 >= 500)
    for batch in batches[3:]:
        resumed.train_batch(batch)
    assert_same_state(straight, resumed)
    np.testing.assert_array_equal(
        straight.view().score_rows(np.arange(60)), resumed.view().score_rows(np.arange(60))
    )


def growing_batches(n: int = 8) -> list[list]:
    """Batches of 300, each bringing new users and items (rows grown during a tail)."""
    return [
        ratings(40 + 15 * s, 30 + 5 * s, 300, seed=s, prefix=f"g{s}-", ts0=1000 * s)
        for s in range(n)
    ]


@pytest.mark.parametrize("run_after, install_after", [(0, 0), (1, 3), (2, 2)])
def test_a_deferred_consolidation_gives_the_state_of_consolidating_inline(run_after, install_after):
    """Cut at the batch that crosses the mark, run ``run_after`` batches later (it replays
    those), installed ``install_after`` batches later (install replays the rest): the
    state is bit-identical to consolidating inside the cutting batch."""
    batches = growing_batches()
    inline = IncrementalModel(config())
    for batch in batches:
        inline.train_batch(batch)
    deferred = IncrementalModel(config())
    deferred.defer_consolidation = True
    job, cut_at, installed = None, None, 0
    for i, batch in enumerate(batches):
        result = deferred.train_batch(batch)
        assert not result.consolidated
        if (taken := deferred.take_consolidation()) is not None:
            job, cut_at = taken, i
            assert deferred.consolidation_pending and not deferred.consolidation_due()
            assert deferred.take_consolidation() is None  # handed out once
        if job is not None and i == cut_at + run_after:
            job.run()
            assert job.replayed == run_after
        if job is not None and i == cut_at + install_after:
            assert deferred.install(job)
            job, installed = None, installed + 1
    check_arrays(deferred)
    if (run_after, install_after) != (0, 0):  # marks crossed while one ran: fewer cuts
        assert installed >= 1
    else:  # 2,400 events, a mark every 500: as inline, a cut at every second batch
        assert installed == 4
        assert_same_state(inline, deferred)
        np.testing.assert_array_equal(
            inline.view().score_rows(np.arange(60)), deferred.view().score_rows(np.arange(60))
        )


def test_a_deferred_consolidation_with_no_tail_matches_inline_exactly_and_blends_the_same():
    inline, deferred = IncrementalModel(config()), IncrementalModel(config())
    deferred.defer_consolidation = True
    for batch in growing_batches(2):
        assert not deferred.train_batch(batch).consolidated
        inline.train_batch(batch)
    job = deferred.take_consolidation()
    assert job is not None and inline.since_consolidation == deferred.since_consolidation == 0
    assert deferred.install(job.run())
    assert_same_state(inline, deferred)
    assert (inline._neighbours != deferred._neighbours).nnz == 0


def cut_after_two(cfg: ModelConfig, batches: list[list]):
    """An inline and a deferred model after ``batches[:2]``, and the deferred one's cut."""
    inline, deferred = IncrementalModel(cfg), IncrementalModel(cfg)
    deferred.defer_consolidation = True
    for batch in batches[:2]:
        inline.train_batch(batch)
        deferred.train_batch(batch)
    job = deferred.take_consolidation()
    assert job is not None
    return inline, deferred, job


def test_deferred_consolidation_tail_replay_equals_inline_on_every_later_batch():
    """A tail replayed partly by run() and partly by install() (new users and items in
    both parts) gives exactly the inline state, as long as no mark is crossed meanwhile."""
    batches = growing_batches(3)
    inline, deferred, job = cut_after_two(config(), batches)
    deferred.train_batch(batches[2][:150])  # replayed by run()
    inline.train_batch(batches[2][:150])
    job.run()
    assert job.replayed == 1
    deferred.train_batch(batches[2][150:])  # replayed by install()
    inline.train_batch(batches[2][150:])
    assert deferred.install(job)
    assert_same_state(inline, deferred)
    assert not deferred.install(job)  # once


def test_a_tail_that_trains_users_outside_the_window_replays_exactly():
    """The tail's users the consolidation does not hold (outside its window) are copied
    before their batch trains them, and replayed from there: the inline state, exactly."""
    batches = growing_batches(4)
    inline, deferred, job = cut_after_two(config(consolidation_window=250), batches)
    window_users = job.user_rows
    for i, batch in enumerate(batches[2:]):  # older users, new users and new items
        deferred.train_batch(batch[:200])
        inline.train_batch(batch[:200])
        if i == 0:
            job.run()
    assert deferred.install(job)
    assert job.user_rows > window_users  # it took in rows from outside its window
    assert_same_state(inline, deferred)


def test_between_epochs_is_called_after_every_epoch_and_changes_nothing():
    inline, deferred = IncrementalModel(config()), IncrementalModel(config())
    deferred.defer_consolidation = True
    for batch in growing_batches(2):
        inline.train_batch(batch)
        deferred.train_batch(batch)
    job = deferred.take_consolidation()
    calls: list[int] = []
    job.between_epochs = lambda: calls.append(len(calls))
    assert deferred.install(job.run())
    assert len(calls) == config().consolidate_epochs
    assert_same_state(inline, deferred)


def test_a_snapshot_while_a_consolidation_is_pending_consolidates_after_restore():
    model = IncrementalModel(config())
    model.defer_consolidation = True
    for batch in growing_batches(2):
        model.train_batch(batch)
    assert model.take_consolidation() is not None
    restored = IncrementalModel.from_bytes(*model.to_bytes())
    assert not restored.consolidation_pending
    assert restored.consolidation_due()
    assert restored.train_batch(ratings(10, 10, 10, prefix="next", ts0=9e4)).consolidated
    dropped = model.take_consolidation()
    assert dropped is None and model.consolidate()  # an inline one replaces a pending one
    assert not model.consolidation_pending


def test_cut_consolidation_cuts_only_when_due():
    model = IncrementalModel(config())
    model.defer_consolidation = True
    model.train_batch(ratings(40, 30, 300))
    assert model.cut_consolidation() is None
    model.since_consolidation = 500  # as after installing a consolidation with a long tail
    job = model.cut_consolidation()
    assert job is not None and job.events > 0 and model.since_consolidation == 0


def test_a_diverging_consolidation_leaves_the_model_as_it_was(monkeypatch):
    model = IncrementalModel(config(consolidate_every=0))
    model.train_batch(ratings(30, 20, 400))
    before = {name: array.copy() for name, array in model.state_arrays().items()}

    def diverge(*args, **kwargs):
        raise NonFiniteModel("boom")

    monkeypatch.setattr(fitter.Fitter, "fit", diverge)  # the retrain's own fitter
    assert model.consolidate() is False
    for name, array in model.state_arrays().items():
        np.testing.assert_array_equal(array, before[name], err_msg=name)
    assert IncrementalModel(config()).consolidate() is False  # empty window


# --- snapshots of the window ---------------------------------------------------------------
@pytest.fixture(scope="module")
def good() -> tuple[bytes, dict]:
    model = IncrementalModel(config(consolidate_every=10_000))
    model.train_batch(ratings(7, 5, 60))
    return model.to_bytes()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("users", np.array([0, 99] * 30, dtype=np.int32), "row outside"),
        ("items", np.full(60, -1, dtype=np.int32), "row outside"),
        ("ratings", np.full(60, 7.0, dtype=np.float32), "between 0 and 5"),
        ("stamps", np.full(60, np.nan), "NaN"),
        ("users", np.zeros(60, dtype=np.int64), "must be 1-d int32"),
        ("users", np.zeros(3, dtype=np.int32), "differ in length"),
    ],
)
def test_bad_windows_are_refused(good, field, value, message):
    state = snapshot.decode(*good)
    state.window = {**state.window, field: value}
    with pytest.raises(SnapshotError, match=message):
        snapshot.decode(*snapshot.encode(state))


def test_a_partial_window_is_refused(good):
    from tests.unit.models.test_snapshot import rezip, with_checksum

    payload = rezip(good[0], {"window_items": None})
    with pytest.raises(SnapshotError, match="window incomplete"):
        snapshot.decode(*with_checksum(payload, good[1]))


# --- item neighbours and blending --------------------------------------------------------
def test_item_neighbours_are_cosine_similarities_top_n_per_item_without_self():
    # users 0,1 like items 0 and 1; user 2 likes 1 and 2; user 3 likes 3 only
    users = np.array([0, 0, 1, 1, 2, 2, 3, 0])
    items = np.array([0, 1, 0, 1, 1, 2, 3, 0])  # (0, 0) twice: still one co-occurrence
    full = item_neighbours(users, items, 4, 4, neighbours=10).toarray()
    expected = np.zeros((4, 4), dtype=np.float32)
    expected[0, 1] = expected[1, 0] = 2 / np.sqrt(2 * 3)
    expected[1, 2] = expected[2, 1] = 1 / np.sqrt(3 * 1)
    np.testing.assert_allclose(full, expected, rtol=1e-6)
    top1 = item_neighbours(users, items, 4, 4, neighbours=1)
    assert top1.dtype == np.float32
    assert [list(top1[r].indices) for r in range(4)] == [[1], [0], [1], []]
    with pytest.raises(ValueError, match="neighbours"):
        item_neighbours(users, items, 4, 4, neighbours=0)


def blend_view(weight=1.0):
    neighbours = sp.csr_matrix(([1.0], ([1], [2])), shape=(3, 3), dtype=np.float32)
    # b -> c; d is newer than the matrix, so it has no neighbours
    return make_tiny_view(neighbours=neighbours, blend_weight=weight)


def test_blending_moves_the_neighbours_of_the_history_up():
    view = blend_view()
    plain = [s.item for s in view.recommend("alice", k=4).items]
    assert plain == ["a", "b", "c", "d"]  # no history: the model's order
    blended = view.recommend("alice", k=4, history=["b"])
    assert [s.item for s in blended.items][:2] == ["c", "a"]  # c is b's neighbour
    assert blended.source == "model"
    assert [s.item for s in view.recommend("alice", k=4, exclude=["b"], history=["b"]).items] == [
        "c",
        "a",
        "d",
    ]
    many = view.recommend_many(["alice", "bob"], k=4, excludes=[["b"], []], histories=[["b"], []])
    assert many[0].items == view.recommend("alice", k=4, exclude=["b"], history=["b"]).items
    assert many[1].items == view.recommend("bob", k=4).items
    assert view.recommend("carol", history=["b"]).source == "popularity"  # cold: unchanged
    off = blend_view(weight=0.0)
    assert [s.item for s in off.recommend("alice", k=4, history=["b"]).items] == plain
    for history in (["d"], ["zzz"], ["a"]):  # no neighbours for these: nothing to blend
        assert [s.item for s in view.recommend("alice", k=4, history=history).items] == plain


def test_a_view_refuses_neighbours_larger_than_its_items():
    with pytest.raises(ValueError, match="neighbours"):
        make_tiny_view(neighbours=sp.identity(5, format="csr", dtype=np.float32), blend_weight=1)


def test_consolidation_and_offline_batches_build_neighbours_that_snapshots_keep():
    model = IncrementalModel(config(consolidate_every=0, blend_neighbours=3))
    assert model.view().blend(np.ones(1, dtype=np.float32), np.array([0])).tolist() == [1.0]
    model.train_batch(ratings(30, 12, 600, rating=5.0), epochs=2)
    neighbours = model._neighbours
    assert neighbours is not None and neighbours.shape == (12, 12)
    assert (np.diff(neighbours.indptr) <= 3).all() and neighbours.nnz > 0
    restored = IncrementalModel.from_bytes(*model.to_bytes())
    np.testing.assert_array_equal(restored._neighbours.toarray(), neighbours.toarray())
    history = ["i1", "i2"]
    assert restored.view().recommend("u1", history=history) == model.view().recommend(
        "u1", history=history
    )
    streaming = IncrementalModel(config(consolidate_every=300, blend_neighbours=3))
    streaming.train_batch(ratings(30, 12, 200, rating=5.0))
    assert streaming._neighbours is None  # streaming batches do not rebuild them ...
    assert streaming.train_batch(ratings(30, 12, 200, prefix="b", rating=5.0)).consolidated
    assert streaming._neighbours is not None  # ... consolidations do
    none = IncrementalModel(config(blend_neighbours=0))
    none.train_batch(ratings(30, 12, 600, rating=5.0), epochs=1)
    assert none._neighbours is None


def _bad_indices(neighbours):
    indices = neighbours.indices.copy()
    indices[0] = 99
    return indices


@pytest.mark.parametrize(
    ("entry", "bad", "message"),
    [
        ("neighbours_indices", _bad_indices, "column outside"),
        ("neighbours_indptr", lambda n: n.indptr[::-1].astype(np.int64), "valid CSR"),
        ("neighbours_data", lambda n: n.data.astype(np.float64), "1-d float32"),
        ("neighbours_data", lambda n: np.full_like(n.data, np.inf), "NaN or infinite"),
    ],
)
def test_bad_neighbours_are_refused(entry, bad, message):
    from tests.unit.models.test_snapshot import npy, rezip, with_checksum

    model = IncrementalModel(config(consolidate_every=0, blend_neighbours=3))
    model.train_batch(ratings(30, 12, 600, rating=5.0), epochs=1)
    payload, manifest = model.to_bytes()
    tampered = rezip(payload, {entry: npy(bad(model._neighbours))})
    with pytest.raises(SnapshotError, match=message):
        snapshot.decode(*with_checksum(tampered, manifest))
    partial = rezip(payload, {"neighbours_data": None})
    with pytest.raises(SnapshotError, match="neighbours incomplete"):
        snapshot.decode(*with_checksum(partial, manifest))


# --- with model deltas (models.delta) ------------------------------------------------------
def test_after_a_consolidation_the_next_delta_carries_only_the_rows_it_changed():
    """Issue 18: a consolidation's delta is what changed, not the whole model."""
    model = IncrementalModel(
        config(consolidate_every=1000, consolidation_window=300, blend_neighbours=3)
    )
    model.train_batch(ratings(40, 20, 400, rating=5.0))
    model.train_batch(ratings(300, 20, 300, prefix="x", rating=5.0, ts0=400))  # out of window
    base = model.view()
    small_batch = ratings(40, 20, 100, prefix="s", rating=5.0, ts0=500)
    small = model.train_batch(small_batch)
    assert not small.consolidated
    delta = model.take_delta()  # a micro-batch: only its rows
    assert len(delta.user_rows) < model.n_users
    follower = base.with_delta(delta)
    before = {n: a.copy() for n, a in model.state_arrays().items()}
    last = ratings(40, 20, 200, prefix="c", rating=5.0, ts0=900)
    assert model.train_batch(last).consolidated
    full = model.take_delta()
    after = model.state_arrays()
    for side, rows in (("user", full.user_rows), ("item", full.item_rows)):
        emb, bias = f"{side}_embeddings", f"{side}_biases"
        differs = (after[emb] != before[emb]).any(axis=1) | (after[bias] != before[bias])
        np.testing.assert_array_equal(rows, np.flatnonzero(differs))  # exactly what changed
    window = {model.users.get(e.user) for batch in (small_batch, last) for e in batch}
    assert set(full.user_rows.tolist()) <= window and len(full.user_rows) < model.n_users / 2
    follower = follower.with_delta(full)  # a scorer following deltas: the consolidated rows
    trainer = model.view()
    users = [f"u{n}" for n in range(40)]
    np.testing.assert_array_equal(
        follower.score_rows(np.arange(40)), model.full_view().score_rows(np.arange(40))
    )
    assert trainer.blends_with(model._neighbours)  # the trainer's views: the new neighbours
    assert follower.blends_with(base._neighbours)  # deltas keep the loaded ones
    history = ["i1", "i2"]
    many = trainer.recommend_many(users, 5, histories=[history] * 40)
    one = [model.full_view().recommend(u, 5, history=history) for u in users]
    assert [[s.item for s in r.items] for r in many] == [[s.item for s in r.items] for r in one]


def test_a_scorer_loading_a_snapshot_gets_its_neighbours():
    model = IncrementalModel(config(consolidate_every=0, blend_neighbours=3))
    model.train_batch(ratings(30, 12, 600, rating=5.0), epochs=1)
    view, _ = snapshot.load_scoring_view(*model.to_bytes())
    assert view.blends_with(None) is False
    history = ["i1", "i2"]
    assert view.recommend("u1", history=history) == model.view().recommend("u1", history=history)
