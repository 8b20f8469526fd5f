"""Consolidation: a retrain from scratch on the bounded window of recent interactions.

Micro-batch training sees each rating for ``epochs_per_batch`` epochs, once, in the batch it
arrived in: early ratings are under-trained, and WARP only knows a batch's positives when
it samples negatives. Consolidation (:meth:`models.incremental.IncrementalModel.consolidate`)
periodically retrains the model from scratch on the window kept here, as a batch job would,
and swaps the result in; micro-batches then continue from the consolidated state.

The window holds the last ``capacity`` applied events as dense indices (``int32`` user and
item rows), ratings and timestamps, in arrival order. It is part of the training state and
is written into every snapshot, so a restarted trainer consolidates on the same data.
:class:`Consolidation` is one retrain, cut from the window, run on a fitter of its own;
:func:`item_neighbours` builds the item-kNN neighbours blended into scores from it.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from models.config import ModelConfig
from models.fitter import FitBatch, Fitter, NonFiniteModel

FIELDS = ("users", "items", "ratings", "stamps")
DTYPES = {"users": np.int32, "items": np.int32, "ratings": np.float32, "stamps": np.float64}


class InteractionWindow:
    """The last ``capacity`` events, appended batch by batch (amortised O(1) per event)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._chunks: deque[tuple[np.ndarray, ...]] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(
        self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray, stamps: np.ndarray
    ) -> None:
        """Add one batch (equal-length arrays), then forget the oldest beyond ``capacity``."""
        if not len(users) == len(items) == len(ratings) == len(stamps):
            raise ValueError("users, items, ratings and stamps must have the same length")
        if self.capacity == 0 or not len(users):
            return
        chunk = tuple(
            np.array(a[-self.capacity :], dtype=DTYPES[name])  # a copy: callers reuse arrays
            for name, a in zip(FIELDS, (users, items, ratings, stamps), strict=True)
        )
        self._chunks.append(chunk)
        self._size += len(chunk[0])
        while self._size - len(self._chunks[0][0]) >= self.capacity:
            self._size -= len(self._chunks.popleft()[0])
        excess = self._size - self.capacity
        if excess > 0:
            self._chunks[0] = tuple(a[excess:] for a in self._chunks[0])
            self._size -= excess

    def arrays(self) -> dict[str, np.ndarray]:
        """The window as four contiguous arrays (oldest first), e.g. for a snapshot."""
        if not self._chunks:
            return {name: np.zeros(0, dtype=DTYPES[name]) for name in FIELDS}
        if len(self._chunks) > 1:  # compact, so the next call is free
            self._chunks = deque(
                [tuple(np.concatenate(c) for c in zip(*self._chunks, strict=True))]
            )
        return dict(zip(FIELDS, self._chunks[0], strict=True))

    @classmethod
    def from_arrays(cls, capacity: int, arrays: dict[str, np.ndarray]) -> InteractionWindow:
        """Rebuild from :meth:`arrays` (the newest ``capacity`` events are kept)."""
        window = cls(capacity)
        window.append(*(arrays[name] for name in FIELDS))
        return window


#: Random streams of a consolidation's retrain, derived from (seed, version, stream) like
#: the batches' own (models.fitter), never equal to theirs.
_CONSOLIDATE = {"fit": 3, "user": 4, "item": 5}


class Consolidation:
    """A retrain from scratch on the window as one batch cut it, then the batches trained
    after that cut, replayed in order.

    It owns everything it trains (a :class:`~models.fitter.Fitter` of its own), so
    :meth:`run` may run in another thread while the model goes on training batches; the
    model appends each such batch to :attr:`tail`, :meth:`run` replays what is there when
    its fit ends, and :meth:`models.incremental.IncrementalModel.install` replays the rest
    and swaps the result in.
    """

    def __init__(self, config: ModelConfig, retrain: FitBatch, capacity: tuple[int, int]) -> None:
        self.config = config
        self.retrain = retrain  # the window's interactions as the cut found them
        self.capacity = capacity
        self.tail: list[FitBatch] = []
        self.replayed = 0
        self.fitter: Fitter | None = None  # set by run() unless the retrain went non-finite
        self.neighbours: sp.csr_matrix | None = None
        self.seconds = 0.0
        self.between_epochs: Callable[[], None] | None = None
        """Called after each epoch of the retrain (the trainer uses it to yield the CPU to
        the batches while they have a backlog); it changes when, never what, it trains."""

    @property
    def events(self) -> int:
        """Interactions the retrain trains on."""
        return len(self.retrain.rows)

    def run(self) -> Consolidation:
        """The retrain (CPU-bound; LightFM's Cython training releases the GIL), then the replay of
        the tail so far. Returns itself."""
        started = time.perf_counter()
        w = self.retrain
        fitter = Fitter(self.config)
        streams = (_CONSOLIDATE["user"], _CONSOLIDATE["item"])
        fitter.start_over(self.capacity, w.n_users, w.n_items, w.version, streams)
        try:
            if len(w.rows):
                fitter.fit(w, self._after_epoch, _CONSOLIDATE["fit"])
        except NonFiniteModel:
            return self
        self.neighbours = blend_neighbours(
            self.config, w.rows, w.cols, w.labels, w.n_users, w.n_items
        )
        self.fitter = fitter
        self.replay()
        self.seconds = time.perf_counter() - started
        return self

    def _after_epoch(self, done: int) -> None:
        if self.between_epochs is not None:
            self.between_epochs()

    def replay(self) -> None:
        """Replay the tail batches not replayed yet (each as its batch trained it: its new
        rows initialised from its version, then its fit; one that goes non-finite here is
        rolled back and skipped)."""
        fitter = self.fitter
        assert fitter is not None
        while self.replayed < len(self.tail):
            batch = self.tail[self.replayed]
            fitter.grow(batch.version, batch.n_users0, batch.n_items0, batch.n_users, batch.n_items)
            if len(batch.rows):
                with contextlib.suppress(NonFiniteModel):
                    fitter.fit(batch)
            self.replayed += 1


def blend_neighbours(
    config: ModelConfig,
    rows: np.ndarray,
    cols: np.ndarray,
    labels: np.ndarray,
    n_users: int,
    n_items: int,
) -> sp.csr_matrix | None:
    """The item-kNN neighbours for blending from these interactions' positives, read-only
    (None: ``config.blend_neighbours`` turns blending off)."""
    if config.blend_neighbours < 1:
        return None
    positive = labels > 0
    neighbours = item_neighbours(
        rows[positive], cols[positive], n_users, n_items, config.blend_neighbours
    )
    for array in (neighbours.data, neighbours.indices, neighbours.indptr):
        array.flags.writeable = False
    return neighbours


def item_neighbours(
    users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, neighbours: int
) -> sp.csr_matrix:
    """Item-item cosine similarity over the users who liked both, the ``neighbours``
    largest per item (row), no self-similarity: a float32 ``n_items x n_items`` CSR.

    ``users``/``items`` are the positive pairs. Built in blocks of rows so the full
    item-item product is never held at once; ties at the cut are broken arbitrarily.
    """
    if neighbours < 1:
        raise ValueError("neighbours must be >= 1")
    x = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items)
    )
    x.data[:] = 1.0  # a pair given twice is still one co-occurrence
    norms = np.sqrt(np.asarray(x.sum(axis=0), dtype=np.float64).ravel())
    norms[norms == 0] = 1.0
    xn = (x @ sp.diags((1.0 / norms).astype(np.float32))).tocsr()
    xt = xn.T.tocsr()
    block = max(1, (1 << 22) // max(1, n_items))  # rows of similarities computed at a time
    kept_cols: list[np.ndarray] = []
    kept_vals: list[np.ndarray] = []
    counts: list[int] = []
    for start in range(0, n_items, block):
        sims = (xt[start : start + block] @ xn).tocsr()
        sims.setdiag(0.0)  # no self-similarity
        sims.eliminate_zeros()
        indptr, cols, vals = sims.indptr, sims.indices, sims.data
        for row in range(sims.shape[0]):
            lo, hi = indptr[row], indptr[row + 1]
            if hi - lo > neighbours:
                cut = hi - lo - neighbours
                top = lo + np.argpartition(vals[lo:hi], cut)[cut:]
                kept_cols.append(cols[top])
                kept_vals.append(vals[top])
            else:
                kept_cols.append(cols[lo:hi])
                kept_vals.append(vals[lo:hi])
            counts.append(len(kept_cols[-1]))
    empty = np.zeros(0, dtype=np.float32)
    matrix = sp.csr_matrix(
        (
            np.concatenate([empty, *kept_vals]).astype(np.float32),
            np.concatenate([empty.astype(np.int32), *kept_cols]).astype(np.int32),
            np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]),
        ),
        shape=(n_items, n_items),
    )
    matrix.sort_indices()
    return matrix
