"""A delta costs a scoring view what the delta holds (issue 19): the blocks of the rows it
touches are copied, every other block is shared, and the old view keeps serving unchanged."""

from __future__ import annotations

import tracemalloc

import numpy as np

from models.blocks import BLOCK_ROWS
from models.config import ModelConfig
from models.delta import ModelDelta
from models.events import Rating
from models.incremental import IncrementalModel
from models.scoring import ScoringView

K, ITEMS, USERS = 64, 256 * BLOCK_ROWS, 8 * BLOCK_ROWS  # an item matrix of 2 MiB


def _model() -> IncrementalModel:
    model = IncrementalModel(ModelConfig(no_components=K, initial_capacity=USERS))
    model.train_batch(
        [Rating(f"e{j}", f"u{j % USERS}", f"i{j}", 5.0, 1e9) for j in range(ITEMS)], epochs=1
    )
    return model


def _next_delta(model: IncrementalModel, tag: str, items: list[int]) -> ModelDelta:
    """The delta of a batch of one new user rating ``items`` (5 ratings: the benchmark's)."""
    model.train_batch([Rating(f"{tag}{j}", f"new-{tag}", f"i{j}", 5.0, 2e9) for j in items])
    model.view()
    assert model.last_delta is not None
    return ModelDelta.decode(model.last_delta.encode())  # what a scorer reads


def test_a_small_delta_copies_only_the_blocks_it_touches() -> None:
    model = _model()
    first = model.view()
    product = np.array(first.product_items())
    delta = _next_delta(model, "a", [3, 40, 41, 1000, 5000])
    second = first.with_delta(delta, join=True)
    touched = {int(r) // BLOCK_ROWS for r in delta.item_rows}
    blocks = ITEMS // BLOCK_ROWS
    assert len(touched) < blocks // 8
    assert second._item_rows.shared_blocks(first._item_rows) == blocks - len(touched)
    assert second.product_cells  # the matrix is made when scoring first needs it, not here
    # the same rows as the trainer's, and the old view untouched
    for name, array in model.full_view().scoring_arrays().items():
        np.testing.assert_array_equal(array, second.scoring_arrays()[name], err_msg=name)
    np.testing.assert_array_equal(first.product_items(), product)
    assert first.n_users == second.n_users - 1


def test_a_small_delta_allocates_what_it_holds_not_the_catalog() -> None:
    model = _model()
    view = model.view()
    matrix = view.n_items * (K + 1) * 4
    for tag in "abc":  # also from a view that itself came from a delta
        delta = _next_delta(model, tag, [7, 8, 900, 3000, 8000])
        tracemalloc.start()
        try:
            view = view.with_delta(delta, join=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < matrix // 4, (peak, matrix)
        assert peak <= view.delta_bytes(delta) + (64 << 10)  # the follower's estimate holds
    expected = model.full_view()
    assert view.recommend("u3", k=10) == expected.recommend("u3", k=10)


def test_delta_bytes_follows_the_delta_not_the_catalog() -> None:
    model = _model()
    view = model.view()
    delta = _next_delta(model, "a", [1, 2, 3, 4, 5])
    small = view.delta_bytes(delta)
    assert small < view.n_items * K * 4 // 4
    bigger = _next_delta(model, "b", list(range(0, ITEMS, BLOCK_ROWS)))  # every item block
    assert ScoringView.delta_bytes(view.with_delta(delta, join=True), bigger) > 8 * small
