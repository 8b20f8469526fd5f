"""Shared fixtures for the models/ unit tests (no services, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.common import data_dir
from models.scoring import ScoringView


@pytest.fixture
def movielens() -> Path:
    """The shared MovieLens directory; skips the test if the data is not there."""
    root = data_dir()
    if not (root / "ml-100k" / "u.data").is_file():
        pytest.skip(
            f"MovieLens is not shipped (its terms forbid redistribution) and is not in "
            f"{root}; set STREAMREC_DATA_DIR"
        )
    return root


ITEMS = ["a", "b", "c", "d"]


def make_tiny_view(**extra) -> ScoringView:
    """Two warm users, one cold user, four items with hand-picked scores:
    alice: a=3, b=2, c=1, d=0   bob: d=4, c=3, b=2, a=1   (user bias 10 shifts all).
    ``extra``: more ScoringView arguments (neighbours, blend_weight)."""
    return ScoringView(
        version=7,
        user_ids=["alice", "bob", "carol"],
        user_index={"alice": 0, "bob": 1, "carol": 2},
        item_ids=list(ITEMS),
        item_index={i: n for n, i in enumerate(ITEMS)},
        user_embeddings=np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32),
        user_biases=np.array([10, 0, 0], dtype=np.float32),
        item_embeddings=np.array([[3, 1], [2, 2], [1, 3], [0, 4]], dtype=np.float32),
        item_biases=np.zeros(4, dtype=np.float32),
        popularity=np.array([1.0, 5.0, 5.0, 2.0]),
        user_positives=np.array([3, 2, 0], dtype=np.int64),
        **extra,
    )


@pytest.fixture
def tiny_view() -> ScoringView:
    """:func:`make_tiny_view` without blending."""
    return make_tiny_view()


def integer_view(
    rng: np.random.Generator, n_users: int, n_items: int, dims: int = 3, **extra
) -> ScoringView:
    """Random small-integer embeddings and biases (exact scores whatever order BLAS sums
    in, many ties); every third user has no positives (popularity); ids ``u<n>``, ``i<n>``."""
    user_ids = [f"u{i}" for i in range(n_users)]
    item_ids = [f"i{i}" for i in range(n_items)]
    positives = np.ones(n_users, dtype=np.int64)
    positives[::3] = 0
    return ScoringView(
        version=3,
        user_ids=user_ids,
        user_index={u: i for i, u in enumerate(user_ids)},
        item_ids=item_ids,
        item_index={v: i for i, v in enumerate(item_ids)},
        user_embeddings=rng.integers(-2, 3, (n_users, dims)).astype(np.float32),
        user_biases=rng.integers(-2, 3, n_users).astype(np.float32),
        item_embeddings=rng.integers(-2, 3, (n_items, dims)).astype(np.float32),
        item_biases=rng.integers(-1, 2, n_items).astype(np.float32),
        popularity=rng.integers(0, 4, n_items).astype(np.float64),
        user_positives=positives,
        **extra,
    )
