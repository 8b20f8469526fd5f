"""Batch top-k (models/batch_scoring.py) and ScoringView.recommend_batch on it: exactly a
stable sort of every whole row, on random scores with ties, exclusions and tiny catalogs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from models.batch_scoring import BLOCK, block_top_k, sorted_top_k, top_k_products
from models.scoring import ScoringView
from tests.unit.models.conftest import integer_view


def reference(scores: np.ndarray, k: int) -> list[tuple[list[int], list[float]]]:
    """Each whole row sorted stably (ties: lower index first), ``-inf`` left out."""
    out = []
    for row in scores:
        order = np.argsort(-row, kind="stable")[:k].tolist()
        kept = [i for i in order if row[i] != -np.inf]
        out.append((kept, [float(row[i]) for i in kept]))
    return out


def random_scores(rng: np.random.Generator, rows: int, n: int, levels: int) -> np.ndarray:
    """Scores with many ties (``levels`` distinct values; 0: continuous), some excluded."""
    if levels:
        scores = rng.integers(-levels, levels, (rows, n)).astype(np.float32)
    else:
        scores = rng.standard_normal((rows, n)).astype(np.float32)
    scores[rng.random((rows, n)) < rng.random() * 0.99] = -np.inf
    return scores


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 12),
    n=st.one_of(st.integers(1, 80), st.integers(BLOCK * BLOCK - 40, 6 * BLOCK * BLOCK)),
    k=st.integers(1, 70),
    levels=st.sampled_from([0, 1, 2, 4, 50]),
)
def test_block_top_k_is_a_stable_sort_of_every_row(seed, rows, n, k, levels):
    scores = random_scores(np.random.default_rng(seed), rows, n, levels)
    expected = reference(scores, k)
    assert block_top_k(scores, k) == expected
    assert sorted_top_k(scores, k) == expected


def test_all_equal_and_all_excluded_rows():
    n = 5 * BLOCK * BLOCK + 7
    scores = np.zeros((3, n), dtype=np.float32)
    scores[1] = -np.inf
    scores[2, ::2] = -np.inf
    assert block_top_k(scores, 10) == [
        (list(range(10)), [0.0] * 10),
        ([], []),
        (list(range(1, 21, 2)), [0.0] * 10),
    ]
    scores[2, n - 1] = 1.0  # the tail item of the last block is found
    assert block_top_k(scores, 2)[2] == ([n - 1, 1], [1.0, 0.0])


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 9),
    n=st.one_of(st.integers(1, 60), st.integers(900, 5000)),
    k=st.integers(1, 40),
    tile_cells=st.sampled_from([1, 3000, 1 << 22]),
)
def test_products_by_tiles_are_the_whole_rows_top_k(seed, rows, n, k, tile_cells):
    rng = np.random.default_rng(seed)
    dims = int(rng.integers(1, 6))
    # small integers: every product is exact, whatever order BLAS sums in
    users = rng.integers(-2, 3, (rows, dims)).astype(np.float32)
    items = rng.integers(-2, 3, (n, dims)).astype(np.float32)
    offsets = rng.integers(-3, 4, rows).astype(np.float32)
    exclude = [rng.choice(n, int(rng.integers(0, n + 1)), replace=False) for _ in range(rows)]
    scores = users @ items.T
    for r, rows_out in enumerate(exclude):
        scores[r, rows_out] = -np.inf
    got = top_k_products(users, items, k, exclude, offsets=offsets, tile_cells=tile_cells)
    assert got == reference(scores + offsets[:, None], k)


def expected_items(view: ScoringView, user: str, k: int, excluded: np.ndarray) -> list[str]:
    """The exact ranking (ties to the lower item row) from the view's whole row."""
    row = view.model_row(user)
    assert row is not None
    scores = view.score_rows(np.array([row]))
    scores[0, excluded] = -np.inf
    idx, _ = reference(scores, k)[0]
    ids = view.item_ids()
    return [ids[i] for i in idx]


@pytest.mark.parametrize("n_items", [7, 40, 3000])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recommend_batch_is_exact_with_ties_exclusions_cold_users_and_large_k(n_items, seed):
    rng = np.random.default_rng(seed)
    view = integer_view(rng, 30, n_items)
    users = [f"u{i}" for i in rng.integers(0, 30, 40).tolist()] + ["nobody", "u0"]
    ks = [int(k) for k in rng.integers(1, 2 * n_items + 2, len(users))]  # k > catalog too
    excluded = [
        np.unique(rng.integers(0, n_items, int(rng.integers(0, n_items + 1)))) for _ in users
    ]
    batch = view.recommend_batch(users, ks, excluded)
    ids = view.item_ids()
    for user, k, rows, rec in zip(users, ks, excluded, batch, strict=True):
        one = view.recommend(user, k, exclude=[ids[i] for i in rows.tolist()])
        assert (rec.user, rec.source, rec.version) == (user, one.source, 3)
        # the same scores as the one-user path; the items are the exact ranking
        assert [s.score for s in rec.items] == [s.score for s in one.items]
        if rec.source == "model":
            assert [s.item for s in rec.items] == expected_items(view, user, k, rows)
        else:
            assert rec.items == one.items
        assert not {s.item for s in rec.items} & {ids[i] for i in rows.tolist()}


def test_blending_users_and_plain_users_in_one_batch():
    rng = np.random.default_rng(4)
    n_items = 2000
    neighbours = sp.random(n_items, n_items, density=0.01, format="csr", random_state=5)
    view = integer_view(rng, 12, n_items, neighbours=neighbours, blend_weight=0.5)
    users = [f"u{i}" for i in range(1, 12)]
    histories = [rng.integers(0, n_items, 5) if i % 2 else np.zeros(0, np.int64) for i in range(11)]
    excluded = [h for h in histories]
    batch = view.recommend_batch(users, [10] * 11, excluded, histories)
    ids = view.item_ids()
    for user, history, rec in zip(users, histories, batch, strict=True):
        names = [ids[i] for i in history.tolist()]
        one = view.recommend(user, 10, exclude=names, history=names)
        assert rec.source == one.source
        assert np.allclose([s.score for s in rec.items], [s.score for s in one.items], atol=1e-4)


def test_a_delta_view_scores_batches_as_the_full_view_does():
    """with_delta writes the delta's item rows into the batch product's item matrix: the
    view after deltas ranks as a view built from every row."""
    from models.config import ModelConfig
    from models.incremental import IncrementalModel
    from models.synthetic import generate_ratings

    model = IncrementalModel(ModelConfig(no_components=8, positive_threshold=0.0))
    ratings = generate_ratings(60, 3000, 4000, n_clusters=4, seed=2)
    model.train_batch(ratings[:2000])
    first = model.view()
    first.recommend_batch(["x"], [1], [np.zeros(0, np.int64)])
    for at in (2000, 3000):  # two deltas, items added by each
        model.train_batch(ratings[at : at + 1000])
    delta_view, full = model.view(), model.full_view()
    assert delta_view.n_items == full.n_items > first.n_items
    users = delta_view.user_ids()
    no_rows = [np.zeros(0, np.int64)] * len(users)
    by_delta = delta_view.recommend_batch(users, [10] * len(users), no_rows)
    by_full = full.recommend_batch(users, [10] * len(users), no_rows)
    assert [r.items for r in by_delta] == [r.items for r in by_full]
    assert np.array_equal(delta_view.product_items(), full.product_items())
