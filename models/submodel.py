"""One fit trained on only the rows a batch can change: those rows gathered into a LightFM
model of their own, trained by LightFM's Cython routines, checked, and scattered back.

``LightFM.fit_partial`` costs O(model) per call whatever the batch: its Cython
``regularize`` divides every user and item row by the regularisation scale (1.0 when the
alpha is 0), it checks every embedding for finiteness after each epoch, and it builds the
positives lookup at full shape. A side (users, items) whose alpha is 0 and whose rows the
batch names is trained as a compact copy of just those rows (ids remapped in order, so
the C code draws, reads and writes exactly what it would on the full arrays): results
are bit-identical to ``fit_partial``'s, at a cost that follows the batch. A side that
any row can change (WARP samples negatives among all items; an alpha > 0 rescales every
row) is trained in place on its used rows, with a backup of the arrays the schedule
writes. The random stream is drawn exactly as ``fit_partial`` draws it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
from lightfm import LightFM
from lightfm._lightfm_fast import (
    CSRMatrix,
    FastLightFM,
    fit_bpr,
    fit_logistic,
    fit_warp,
    fit_warp_kos,
)

PARTS = (
    "embeddings",
    "embedding_gradients",
    "embedding_momentum",
    "biases",
    "bias_gradients",
    "bias_momentum",
)
#: The parts LightFM writes: adagrad never touches the momentum arrays.
_WRITTEN = {
    "adagrad": ("embeddings", "embedding_gradients", "biases", "bias_gradients"),
    "adadelta": PARTS,
}
#: The parts LightFM itself checks after every epoch (the others: once, at the end).
_VALUES = ("embeddings", "biases")
#: Losses whose negatives are drawn among the batch's own items (WARP's: among all items).
_BATCH_NEGATIVES = ("bpr", "logistic")


def identity(n: int, columns: int) -> sp.csr_matrix:
    """Rows 0..n-1 of the ``columns`` x ``columns`` identity, as float32 CSR (built in
    O(n))."""
    return sp.csr_matrix(
        (
            np.ones(n, dtype=np.float32),
            np.arange(n, dtype=np.int32),
            np.arange(n + 1, dtype=np.int32),
        ),
        shape=(n, columns),
    )


class Side:
    """The rows of one side (users or items) that a fit trains, and how to undo or keep it.

    Compact (``rows`` given): copies of those rows of all six arrays, trained, then
    scattered back by :meth:`commit` (a rollback only drops them). Whole (``rows`` None):
    the first ``n`` rows of the arrays themselves, trained in place after a backup of
    the parts the schedule writes, which :meth:`rollback` puts back.
    """

    def __init__(
        self,
        lfm: LightFM,
        side: str,
        n: int,
        ids: np.ndarray,
        rows: np.ndarray | None,
        features: sp.csr_matrix | None,
    ) -> None:
        self.lfm, self.side, self.rows = lfm, side, rows
        self.written = _WRITTEN[lfm.learning_schedule]
        full = {part: getattr(lfm, f"{side}_{part}") for part in PARTS}
        self.backup: dict[str, np.ndarray] = {}
        if rows is None:
            self.arrays = {part: array[:n] for part, array in full.items()}  # views
            self.backup = {part: self.arrays[part].copy() for part in self.written}
            self.ids = ids
            self.features = identity(n, n) if features is None else features
        else:
            self.arrays = {part: array[rows] for part, array in full.items()}  # copies
            self.ids = np.searchsorted(rows, ids).astype(np.int32)  # in order: same draws
            self.features = identity(len(rows), len(rows))

    @property
    def n(self) -> int:
        return len(self.arrays["biases"])

    def non_finite(self, parts: tuple[str, ...]) -> str | None:
        """The first of ``parts`` (among those written) with a NaN/inf in the trained rows."""
        for part in parts:
            if part in self.written and not np.isfinite(
                np.sum(self.arrays[part], dtype=np.float64)
            ):
                return f"{self.side}_{part}"
        return None

    def changed_rows(self) -> np.ndarray:
        """Rows (of the full arrays) whose embedding or bias the fit changed; call before
        :meth:`commit`."""
        emb, bias = self.arrays["embeddings"], self.arrays["biases"]
        if self.rows is None:
            changed = (emb != self.backup["embeddings"]).any(axis=1)
            changed |= bias != self.backup["biases"]
            return np.flatnonzero(changed).astype(np.int64)
        full = getattr(self.lfm, f"{self.side}_embeddings")
        changed = (emb != full[self.rows]).any(axis=1)
        changed |= bias != getattr(self.lfm, f"{self.side}_biases")[self.rows]
        found: np.ndarray = self.rows[changed]
        return found

    def commit(self) -> None:
        if self.rows is not None:
            for part in self.written:
                getattr(self.lfm, f"{self.side}_{part}")[self.rows] = self.arrays[part]

    def rollback(self) -> None:
        for part, values in self.backup.items():
            self.arrays[part][...] = values


class SubModel:
    """A batch's interactions on the two :class:`Side` s it trains, and LightFM's epochs
    over them. ``features(side, n)`` gives the cached whole-side identity matrices."""

    def __init__(
        self,
        lfm: LightFM,
        n_users: int,
        n_items: int,
        rows: np.ndarray,
        cols: np.ndarray,
        labels: np.ndarray,
        weights: np.ndarray | None,
        features: Callable[[str, int], sp.csr_matrix],
    ) -> None:
        self.lfm = lfm
        compact_users = lfm.user_alpha == 0
        compact_items = lfm.item_alpha == 0 and lfm.loss in _BATCH_NEGATIVES
        self.users = self._side("user", n_users, rows, compact_users, features)
        self.items = self._side("item", n_items, cols, compact_items, features)
        self.labels = labels
        if not np.isfinite(labels.sum()) or (
            weights is not None and not np.isfinite(weights.sum())
        ):
            raise ValueError("Not all input values are finite")
        # LightFM's _process_sample_weight: the labels themselves when all are 1.0.
        if weights is not None:
            self.weights = weights
        elif np.array_equiv(labels, 1.0):
            self.weights = labels
        else:
            self.weights = np.ones_like(labels, dtype=np.float32)
        self.positives: CSRMatrix | None = None
        if lfm.loss != "logistic":
            # LightFM's _get_positives_lookup_matrix, at the sub-model's shape.
            shape = (self.users.n, self.items.n)
            mat = sp.coo_matrix((labels, (self.users.ids, self.items.ids)), shape=shape).tocsr()
            self.positives = CSRMatrix(mat if mat.has_sorted_indices else mat.sorted_indices())

    def _side(
        self,
        side: str,
        n: int,
        ids: np.ndarray,
        compact: bool,
        features: Callable[[str, int], sp.csr_matrix],
    ) -> Side:
        if compact:
            return Side(self.lfm, side, n, ids, np.unique(ids).astype(np.int64), None)
        return Side(self.lfm, side, n, ids, None, features(side, n))

    def run_epoch(self, random_state: np.random.RandomState, num_threads: int) -> None:
        """One epoch, as ``LightFM._run_epoch`` runs it (same shuffle, same draws)."""
        lfm, users, items = self.lfm, self.users, self.items
        shuffle = np.arange(len(self.labels), dtype=np.int32)
        random_state.shuffle(shuffle)
        u, i = users.arrays, items.arrays
        data = FastLightFM(
            i["embeddings"], i["embedding_gradients"], i["embedding_momentum"],
            i["biases"], i["bias_gradients"], i["bias_momentum"],
            u["embeddings"], u["embedding_gradients"], u["embedding_momentum"],
            u["biases"], u["bias_gradients"], u["bias_momentum"],
            lfm.no_components, int(lfm.learning_schedule == "adadelta"),
            lfm.learning_rate, lfm.rho, lfm.epsilon, lfm.max_sampled,
        )  # fmt: skip
        item_features, user_features = CSRMatrix(items.features), CSRMatrix(users.features)
        rates = (lfm.learning_rate, lfm.item_alpha, lfm.user_alpha)
        if lfm.loss == "warp-kos":
            fit_warp_kos(
                item_features, user_features, self.positives, users.ids, shuffle, data,
                *rates, lfm.k, lfm.n, num_threads, random_state,
            )  # fmt: skip
            return
        common = (users.ids, items.ids, self.labels, self.weights, shuffle, data, *rates)
        if lfm.loss == "logistic":
            fit_logistic(item_features, user_features, *common, num_threads)
        else:
            fit = fit_warp if lfm.loss == "warp" else fit_bpr
            fit(item_features, user_features, self.positives, *common, num_threads, random_state)

    def non_finite(self, parts: tuple[str, ...] = PARTS) -> str | None:
        """The first trained array with a NaN/inf among ``parts``, if any."""
        return self.users.non_finite(parts) or self.items.non_finite(parts)

    def check_epoch(self) -> str | None:
        """What LightFM checks after every epoch: the embeddings and biases."""
        return self.non_finite(_VALUES)

    def rollback(self) -> None:
        self.users.rollback()
        self.items.rollback()

    def commit(self) -> np.ndarray:
        """Keep the fit; returns the item rows whose embedding or bias it changed."""
        changed = self.items.changed_rows()
        self.users.commit()
        self.items.commit()
        return changed
