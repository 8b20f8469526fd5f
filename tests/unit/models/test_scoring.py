import numpy as np
import pytest
import scipy.sparse as sp

from models.config import ModelConfig
from models.events import Rating
from models.incremental import IncrementalModel
from models.scoring import Recommendation, ScoredItem
from tests.unit.models.conftest import ITEMS


def items(rec: Recommendation) -> list[str]:
    return [s.item for s in rec.items]


def test_recommend_ranks_by_score_and_carries_scores_and_version(tiny_view):
    rec = tiny_view.recommend("alice", k=2)
    assert rec == Recommendation(
        "alice", [ScoredItem("a", 13.0), ScoredItem("b", 12.0)], version=7, source="model"
    )
    assert items(tiny_view.recommend("bob", k=4)) == ["d", "c", "b", "a"]


def test_exclusions_are_never_returned(tiny_view):
    view = tiny_view
    assert items(view.recommend("alice", k=2, exclude={"a", "zzz-unknown"})) == ["b", "c"]
    assert items(view.recommend("alice", k=10, exclude=["a", "c"])) == ["b", "d"]
    assert view.recommend("alice", k=3, exclude=ITEMS).items == []


def test_k_larger_than_catalogue_returns_everything(tiny_view):
    assert len(tiny_view.recommend("bob", k=1000).items) == 4


def test_cold_start_users_get_popularity(tiny_view):
    view = tiny_view
    unknown = view.recommend("nobody", k=3)
    assert unknown.source == "popularity"
    # b and c tie at 5.0: first appearance wins, deterministically.
    assert [(s.item, s.score) for s in unknown.items] == [("b", 5.0), ("c", 5.0), ("d", 2.0)]
    no_positives = view.recommend("carol", k=2, exclude={"b"})
    assert (no_positives.source, items(no_positives)) == ("popularity", ["c", "d"])
    assert items(view.recommend("nobody", k=9, exclude=ITEMS)) == []
    assert [s.item for s in view.popular(2, exclude=["c"])] == ["b", "d"]


def test_recommend_many_equals_one_by_one(tiny_view):
    view = tiny_view
    users = ["bob", "nobody", "alice", "carol", "alice"]
    excludes = [{"d"}, {"b"}, set(), {"c"}, {"a", "b", "c"}]
    many = view.recommend_many(users, k=3, excludes=excludes)
    assert many == [view.recommend(u, 3, e) for u, e in zip(users, excludes, strict=True)]
    assert view.recommend_many(users, k=2) == [view.recommend(u, 2) for u in users]
    with pytest.raises(ValueError, match="exclude sets"):
        view.recommend_many(users, excludes=[set()])


@pytest.mark.parametrize("k", [0, -1, 2.0, True])
def test_bad_k_is_refused(tiny_view, k):
    with pytest.raises(ValueError, match="k must be"):
        tiny_view.recommend("alice", k=k)


def test_view_arrays_are_read_only(tiny_view):
    view = tiny_view
    with pytest.raises(ValueError):
        view.popularity_scores()[0] = 9
    scores = view.score_rows(np.array([0]))
    scores[:] = -1  # callers get a fresh array; the view is unaffected
    assert items(view.recommend("alice", k=1)) == ["a"]


def test_to_dict_is_json_ready(tiny_view):
    assert tiny_view.recommend("alice", k=1).to_dict() == {
        "user": "alice",
        "items": [{"item": "a", "score": 13.0}],
        "version": 7,
        "source": "model",
    }


def test_scores_equal_lightfm_predict_on_a_trained_model():
    model = IncrementalModel(ModelConfig(no_components=8, initial_capacity=4))
    rng = np.random.default_rng(0)
    model.train_batch(
        [
            Rating(f"e{j}", f"u{rng.integers(30)}", f"i{rng.integers(50)}", 5.0, j)
            for j in range(600)
        ]
    )
    view = model.view()
    lfm = model._lfm
    cap_users, cap_items = model.capacity
    user = view.model_row("u3")
    assert user is not None
    predicted = lfm.predict(
        np.full(view.n_items, user, dtype=np.int32),
        np.arange(view.n_items, dtype=np.int32),
        user_features=sp.identity(cap_users, format="csr", dtype=np.float32)[: view.n_users],
        item_features=sp.identity(cap_items, format="csr", dtype=np.float32)[: view.n_items],
    )
    np.testing.assert_allclose(view.score_rows(np.array([user]))[0], predicted, rtol=1e-5)
    top = view.recommend("u3", k=5)
    assert items(top) == [view.item_ids()[i] for i in np.argsort(-predicted, kind="stable")[:5]]


def test_with_delta_leaves_the_old_view_serving_unchanged():
    model = IncrementalModel(ModelConfig(no_components=8, initial_capacity=4))
    model.train_batch([Rating(f"e{j}", f"u{j % 7}", f"i{j % 11}", 5.0, j) for j in range(80)])
    old = model.view()
    before = old.recommend("u1", k=5)
    model.train_batch([Rating(f"f{j}", "u1", f"new{j}", 5.0, 100 + j) for j in range(30)])
    new = model.view()
    assert new.version == old.version + 1 and new.n_items == old.n_items + 30
    assert old.recommend("u1", k=5) == before  # the new ids are invisible to the old view
    assert not old.has_item("new3") and new.has_item("new3")
    assert "new3" not in old.item_ids() and len(old.item_ids()) == old.n_items
    assert new.recommend("u1", k=5) != before
