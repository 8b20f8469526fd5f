"""The bounded window of recent interactions that consolidation retrains on.

Micro-batch training sees each rating for ``epochs_per_batch`` epochs, once, in the batch it
arrived in: early ratings are under-trained, and WARP only knows a batch's positives when
it samples negatives. Consolidation (:meth:`models.incremental.IncrementalModel.consolidate`)
periodically retrains the model from scratch on the window kept here, as a batch job would,
and swaps the result in; micro-batches then continue from the consolidated state.

The window holds the last ``capacity`` applied events as dense indices (``int32`` user and
item rows), ratings and timestamps, in arrival order. It is part of the training state and
is written into every snapshot, so a restarted trainer consolidates on the same data.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import scipy.sparse as sp

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
