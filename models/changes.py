"""What changed since the last delta: the rows a delta must carry, and the popularity decay.

:meth:`models.incremental.IncrementalModel.take_delta` reads it and starts a new one; every
batch, consolidation and decay records what it touched. New rows (past the base's sizes)
always count as changed.
"""

from __future__ import annotations

import numpy as np

#: The smallest popularity decay factor a delta carries (the smallest normal float64);
#: below it, a delta carries every item's count instead (see :meth:`ChangeLog.decayed`).
_MIN_DECAY = float(np.finfo(np.float64).tiny)

_EMPTY_ROWS = np.zeros(0, dtype=np.int64)


class ChangeLog:
    """The rows touched since the base ``(version, n_users, n_items)`` the next delta
    applies to, and the factor the popularity counts decayed by since then (in (0, 1])."""

    def __init__(self) -> None:
        self.base = (0, 0, 0)
        self.decay = 1.0
        self._users: list[np.ndarray] = []
        self._items: list[np.ndarray] = []
        self._popularity: list[np.ndarray] = []

    def touched(
        self,
        users: np.ndarray = _EMPTY_ROWS,
        items: np.ndarray = _EMPTY_ROWS,
        popularity: np.ndarray = _EMPTY_ROWS,
    ) -> None:
        """Record user rows, item rows and popularity counts that changed."""
        self._users.append(users)
        self._items.append(items)
        self._popularity.append(popularity)

    def decayed(self, factor: float, n_items: int) -> None:
        """Follow a decay of the popularity counts by ``factor``: a factor too small to
        carry with the others (0.0 at worst) marks every count changed instead."""
        if self.decay * factor >= _MIN_DECAY:
            self.decay *= factor
        else:
            self._popularity.append(np.arange(n_items))

    def rows(self, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The changed user rows, item rows and popularity rows (sorted, unique, with every
        row new since the base)."""
        _, base_users, base_items = self.base
        return (
            _changed_rows(self._users, base_users, n_users),
            _changed_rows(self._items, base_items, n_items),
            _changed_rows(self._popularity, base_items, n_items),
        )

    def rows_dirty(self, n_users: int, n_items: int) -> bool:
        """Rows changed that no delta has carried yet."""
        return bool(self._users or self._items) or self.base[1:] != (n_users, n_items)

    def reset(self, version: int, n_users: int, n_items: int) -> None:
        """Start over from a new base (a delta was taken, or a snapshot restored)."""
        self.base = (version, n_users, n_items)
        self._users.clear()
        self._items.clear()
        self._popularity.clear()
        self.decay = 1.0


def _changed_rows(parts: list[np.ndarray], old: int, n: int) -> np.ndarray:
    """Sorted unique rows of ``parts`` plus every new row ``old..n-1``."""
    return np.unique(np.concatenate([*parts, np.arange(old, n), _EMPTY_ROWS]).astype(np.int64))
