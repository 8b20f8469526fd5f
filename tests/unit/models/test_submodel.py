"""A fit on the compact sub-model (models.submodel) gives exactly what LightFM's own
``fit_partial`` gives on the full arrays: the reference below is the fit as it was, kept
only here."""

import numpy as np
import pytest
import scipy.sparse as sp

from models import submodel
from models.config import ModelConfig
from models.events import Rating
from models.fitter import FIT_STREAM, STATE_ARRAYS, FitBatch, Fitter, NonFiniteModel, derive_seed
from models.incremental import IncrementalModel


def _identity(n: int, capacity: int) -> sp.csr_matrix:
    return sp.csr_matrix(
        (np.ones(n, np.float32), np.arange(n, dtype=np.int32), np.arange(n + 1, dtype=np.int32)),
        shape=(n, capacity),
    )


def reference_fit(fitter: Fitter, batch: FitBatch) -> np.ndarray:
    """The fit before the sub-model: ``fit_partial`` on identity features over arrays
    with capacity rows; returns the item rows whose embedding or bias changed."""
    lfm = fitter.lfm
    shape = (batch.n_users, batch.n_items)
    interactions = sp.coo_matrix((batch.labels, (batch.rows, batch.cols)), shape=shape)
    weights = None
    if batch.weights is not None:
        weights = sp.coo_matrix((batch.weights, (batch.rows, batch.cols)), shape=shape)
    before = lfm.item_embeddings[: batch.n_items].copy(), lfm.item_biases[: batch.n_items].copy()
    fitter._random.seed(derive_seed(fitter.config.seed, batch.version, FIT_STREAM))
    lfm.random_state = fitter._random
    for _ in range(batch.epochs):
        lfm.fit_partial(
            interactions,
            user_features=_identity(batch.n_users, len(lfm.user_biases)),
            item_features=_identity(batch.n_items, len(lfm.item_biases)),
            sample_weight=weights,
            epochs=1,
        )
    changed = (lfm.item_embeddings[: batch.n_items] != before[0]).any(axis=1)
    changed |= lfm.item_biases[: batch.n_items] != before[1]
    return np.flatnonzero(changed)


def batches(config: ModelConfig, seed: int = 0, items0: int = 0, size: int = 300) -> list[FitBatch]:
    """Batches on a growing id space: new and known users and items, a few users only."""
    rng = np.random.default_rng(seed)
    out, n_users, n_items = [], 0, 0
    for version in range(1, 6):
        n_users0, n_items0 = n_users, n_items
        n_users, n_items = n_users + int(rng.integers(0, 30)), n_items + int(rng.integers(0, 25))
        n_items += items0 if version == 1 else 0
        n_users, n_items = max(n_users, 3), max(n_items, 40)
        n = int(rng.integers(5, size))
        users = rng.integers(0, n_users, n)
        if version % 2:  # a batch that names only a few users
            users = rng.choice(users, 3)[rng.integers(0, 3, n)]
        items = rng.integers(0, n_items, n)
        key = np.unique(users * n_items + items, return_index=True)[1]
        rows, cols = users[np.sort(key)].astype(np.int32), items[np.sort(key)].astype(np.int32)
        positive = rng.random(len(rows)) < (0.6 if config.loss == "logistic" else 1.0)
        labels = np.where(positive, 1.0, -1.0).astype(np.float32)
        weights = rng.uniform(0.2, 1, len(rows)).astype(np.float32) if config.use_weights else None
        epochs = int(rng.integers(1, 4))
        out.append(
            FitBatch(
                version, n_users0, n_items0, n_users, n_items, rows, cols, labels, weights, epochs
            )
        )
    return out


CASES = [
    dict(loss=loss, learning_schedule=schedule, user_alpha=ua, item_alpha=ia, use_weights=w)
    for loss in ("warp", "bpr", "logistic", "warp-kos")
    for schedule in ("adagrad", "adadelta")
    for ua, ia in ((0.0, 0.0), (1e-3, 0.0), (0.0, 1e-3), (1e-2, 1e-2))
    for w in ((False, True) if loss != "warp-kos" else (False,))
]


def assert_fits_like_fit_partial(config: ModelConfig, batches: list[FitBatch], new: Fitter):
    old = Fitter(config)
    for batch in batches:
        for fitter in (new, old):
            fitter.grow(batch.version, batch.n_users0, batch.n_items0, batch.n_users, batch.n_items)
        changed_new = new.fit(batch)
        changed_old = reference_fit(old, batch)
        np.testing.assert_array_equal(changed_new, changed_old)
        for name in STATE_ARRAYS:  # every row, the unused capacity too
            np.testing.assert_array_equal(getattr(new.lfm, name), getattr(old.lfm, name), name)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_a_fit_on_the_sub_model_is_bit_identical_to_fit_partial(case):
    config = ModelConfig(no_components=6, initial_capacity=4, seed=7, **case)
    assert_fits_like_fit_partial(config, batches(config), Fitter(config))


@pytest.mark.parametrize("loss", ["warp", "warp-kos"])
@pytest.mark.parametrize("schedule", ["adagrad", "adadelta"])
@pytest.mark.parametrize("rate", [2.0, 0.01])
def test_warp_on_a_large_catalog_trains_the_items_its_draws_name_bit_identically(
    loss, schedule, rate, monkeypatch
):
    """WARP's negatives come from a stream computed ahead: the item side is the batch's
    items plus those its first draws name; an epoch that drew past them (a budget far too
    small, rate 0.01) is trained again on the whole side, with the same result."""
    config = ModelConfig(
        no_components=6, initial_capacity=4, seed=3, loss=loss, learning_schedule=schedule
    )
    sides, fallbacks = [], []
    real_side, real_run = submodel.Side.__init__, submodel.SubModel.run_epoch

    def side(self, lfm, name, n, ids, rows, whole, local=True):
        sides.append((name, rows is not None, local))
        real_side(self, lfm, name, n, ids, rows, whole, local)

    def run(self, epoch, threads):
        try:
            real_run(self, epoch, threads)
        except submodel.DrewPastCandidates:
            fallbacks.append(epoch)
            raise

    monkeypatch.setattr(submodel.Side, "__init__", side)
    monkeypatch.setattr(submodel.SubModel, "run_epoch", run)
    new = Fitter(config)
    new._draws_per_positive = rate
    assert_fits_like_fit_partial(config, batches(config, items0=3000, size=300), new)
    assert ("item", True, False) in sides  # WARP trained a compact item side
    assert fallbacks or rate > 1  # far too small a budget is found out


@pytest.mark.parametrize("loss", ["warp", "bpr", "logistic"])
def test_a_diverging_batch_rolls_back_every_row_users_outside_it_too(loss):
    """A diverging fit can turn LightFM's regularisation scale into NaN (even with alpha 0),
    and its final rescale then divides every row by it: the users the batch did not name
    must come back too (they did not, with BPR, before the sub-model)."""
    model = IncrementalModel(ModelConfig(no_components=8, initial_capacity=4, loss=loss))
    model.train_batch([Rating(f"a{j}", f"u{j % 40}", f"i{j % 30}", 5, j) for j in range(400)])
    before = {name: a.copy() for name, a in model.state_arrays().items()}
    model._lfm.learning_rate = 1e20
    bad = [Rating(f"b{j}", f"u{j % 3}", f"i{j % 30}", 1 + 4 * (j % 2), 1e3 + j) for j in range(60)]
    with pytest.raises(NonFiniteModel, match="rolled back"):
        model.train_batch(bad, epochs=5)
    for name, array in model.state_arrays().items():
        np.testing.assert_array_equal(array, before[name], err_msg=name)
