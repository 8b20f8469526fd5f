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
