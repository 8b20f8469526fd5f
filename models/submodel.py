"""One fit trained on only the rows a batch can change: those rows gathered into a LightFM
model of their own, trained by LightFM's Cython routines, checked, and scattered back.

``LightFM.fit_partial`` costs O(model) per call whatever the batch: its Cython
``regularize`` divides every user and item row by the regularisation scale (1.0 when the
alpha is 0), it checks every embedding for finiteness after each epoch, and it builds the
positives lookup at full shape. A side (users, items) whose alpha is 0 and whose rows the
batch names is trained as a compact copy of just those rows (ids remapped in order, so
the C code draws, reads and writes exactly what it would on the full arrays): results
are bit-identical to ``fit_partial``'s, at a cost that follows the batch. WARP draws its
negatives among all items from a stream we can compute ahead (:mod:`models.randr`): its
item side is the batch's items plus the negatives its first draws can name, and a fit
that drew past them is run again on the whole side. A side whose alpha is > 0 (every row
is rescaled) is trained in place on its used rows, with a backup of the arrays the
schedule writes. The random stream is drawn exactly as ``fit_partial`` draws it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

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

from models.errors import ModelError
from models.randr import EpochDraws

if TYPE_CHECKING:
    from models.fitter import FitBatch

PARTS = (
    "embeddings",
    "embedding_gradients",
    "embedding_momentum",
    "biases",
    "bias_gradients",
    "bias_momentum",
)
#: The parts LightFM reads and writes: adagrad never touches the momentum arrays.
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

    Compact (``rows`` given): copies of those rows of the arrays the schedule uses,
    trained, then scattered back by :meth:`commit` (a rollback only drops them); the C
    code sees them under local ids (``local``) or, for WARP's items, under their own ids
    through a feature matrix that maps each of the ``n`` items to its copy. Whole (``rows`` None):
    the first ``n`` rows of the arrays themselves, trained in place after a backup of the
    parts the schedule writes, which :meth:`rollback` puts back.
    """

    def __init__(
        self,
        lfm: LightFM,
        side: str,
        n: int,
        ids: np.ndarray,
        rows: np.ndarray | None,
        whole: Callable[[str, int], sp.csr_matrix],
        local: bool = True,
    ) -> None:
        self.lfm, self.side, self.rows = lfm, side, rows
        self.written = _WRITTEN[lfm.learning_schedule]
        full = {part: getattr(lfm, f"{side}_{part}") for part in PARTS}
        self.backup: dict[str, np.ndarray] = {}
        self.ids = np.ascontiguousarray(ids, dtype=np.int32)
        if rows is None:
            self.arrays = {part: array[:n] for part, array in full.items()}  # views
            self.backup = {part: self.arrays[part].copy() for part in self.written}
            self.features = whole(side, n)
            return
        # Copies of the parts the schedule uses; the others (adagrad's momentum, which the
        # C code never reads nor writes) are stand-ins of one row.
        self.arrays = {
            part: array[rows] if part in self.written else np.zeros_like(array[:1])
            for part, array in full.items()
        }
        if local:
            self.ids = np.searchsorted(rows, ids).astype(np.int32)  # in order: same draws
            self.features = identity(len(rows), len(rows))
        else:  # item r -> its copy; an item that is not a candidate is never read
            copy_of = np.zeros(n, dtype=np.int32)
            copy_of[rows] = np.arange(len(rows), dtype=np.int32)
            self.features = sp.csr_matrix(
                (np.ones(n, dtype=np.float32), copy_of, np.arange(n + 1, dtype=np.int32)),
                shape=(n, len(rows)),
            )

    @property
    def ids_seen(self) -> int:
        """How many ids the C code knows this side by (rows of its feature matrix)."""
        return int(self.features.shape[0])

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


class DrewPastCandidates(ModelError):
    """WARP drew more numbers than the compact item side was built for (never leaves
    :meth:`models.fitter.Fitter.fit`: it trains again on the whole side)."""


class SubModel:
    """A batch's interactions on the two :class:`Side` s it trains, and LightFM's epochs
    over them, with the random numbers drawn ahead (one :class:`~models.randr.EpochDraws`
    per epoch). ``whole(side, n)``: the (cached) identity of a side trained whole.

    ``budget``: for WARP, the draws per thread and epoch that a compact item side covers
    (0: the whole item side); :meth:`run_epoch` raises :class:`DrewPastCandidates` if an
    epoch drew more (nothing is kept: train again on the whole side)."""

    def __init__(
        self,
        lfm: LightFM,
        batch: FitBatch,
        draws: list[EpochDraws],
        whole: Callable[[str, int], sp.csr_matrix],
        budget: int = 0,
    ) -> None:
        self.lfm, self.draws, self.budget = lfm, draws, budget
        labels = np.ascontiguousarray(batch.labels, dtype=np.float32)
        weights = batch.weights
        if weights is not None:
            weights = np.ascontiguousarray(weights, dtype=np.float32)
        for values in (labels, weights):
            if values is not None and not np.isfinite(np.sum(values, dtype=np.float64)):
                raise ValueError("Not all input values are finite")
        rows, cols = batch.rows, batch.cols
        compact = np.unique(rows).astype(np.int64) if lfm.user_alpha == 0 else None
        self.users = Side(lfm, "user", batch.n_users, rows, compact, whole)
        self.items = self._item_side(batch.n_items, cols, whole)
        self.labels = labels
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
            shape = (self.users.ids_seen, self.items.ids_seen)
            mat = sp.coo_matrix((labels, (self.users.ids, self.items.ids)), shape=shape).tocsr()
            self.positives = CSRMatrix(mat if mat.has_sorted_indices else mat.sorted_indices())

    def _item_side(
        self, n_items: int, cols: np.ndarray, whole: Callable[[str, int], sp.csr_matrix]
    ) -> Side:
        """Compact when no alpha rescales every row and the rows the batch can change are
        known: its own items (BPR, logistic), or those plus the items WARP's first
        ``budget`` draws name, if they are at most half the items."""
        lfm = self.lfm
        if lfm.item_alpha == 0 and lfm.loss in _BATCH_NEGATIVES:
            return Side(lfm, "item", n_items, cols, np.unique(cols).astype(np.int64), whole)
        if lfm.item_alpha == 0 and self.budget > 0:
            named = [cols, *(d.candidates(self.budget, n_items) for d in self.draws)]
            rows = np.unique(np.concatenate(named)).astype(np.int64)
            if len(rows) <= n_items // 2:
                return Side(lfm, "item", n_items, cols, rows, whole, local=False)
        self.budget = 0
        return Side(lfm, "item", n_items, cols, None, whole)

    def run_epoch(self, epoch: int, num_threads: int) -> None:
        """One epoch, as ``LightFM._run_epoch`` runs it (same shuffle, same draws)."""
        lfm, users, items, draws = self.lfm, self.users, self.items, self.draws[epoch]
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
                item_features, user_features, self.positives, users.ids, draws.shuffle, data,
                *rates, lfm.k, lfm.n, num_threads, draws,
            )  # fmt: skip
        else:
            common = (users.ids, items.ids, self.labels, self.weights, draws.shuffle, data, *rates)
            if lfm.loss == "logistic":
                fit_logistic(item_features, user_features, *common, num_threads)
            else:
                fit = fit_warp if lfm.loss == "warp" else fit_bpr
                fit(item_features, user_features, self.positives, *common, num_threads, draws)
        if self.budget and draws.made(self.budget) is None:
            raise DrewPastCandidates(f"an epoch drew more than {self.budget} numbers")

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
