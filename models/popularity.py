"""Recency-decayed item popularity: counts with a half-life, kept as of a reference time.

The reference time is the newest event time counted so far: it never moves backwards and
never past a ceiling the caller gives (the clock plus the allowed skew), so a far-future
timestamp cannot freeze the counts. Cold users are served the most popular items.
"""

from __future__ import annotations

import numpy as np


class Popularity:
    """Per-item counts (float64, one entry per allocated item row) and their reference
    time (None until the first event)."""

    def __init__(
        self,
        half_life_seconds: float,
        counts: np.ndarray | None = None,
        ts: float | None = None,
    ) -> None:
        self.half_life_seconds = half_life_seconds
        self.counts = np.zeros(0, dtype=np.float64) if counts is None else counts
        self.ts = ts

    def add(self, items: np.ndarray, stamps: np.ndarray, ceiling: float, n_items: int) -> float:
        """Count events (item rows and their times) as of the reference time, moved on to
        the newest of ``stamps`` first; returns the factor the ``n_items`` existing counts
        were decayed by (1.0: none).

        Whatever the timestamps (a 30-year gap, 0, 1e300, NaN): a stamp past ``ceiling``
        counts as of the ceiling, a non-finite or negative one as of the epoch; every
        weight and the factor are in [0, 1] (a gap of about 1,000 half-lives underflows
        the factor to 0: the counts decay exactly, to 0, as they are)."""
        half_life = self.half_life_seconds
        stamps = np.clip(np.nan_to_num(stamps, nan=0.0, posinf=ceiling), 0.0, ceiling)
        newest = float(stamps.max())
        ref = self.ts
        factor = 1.0
        if ref is None or newest > ref:
            if ref is not None:
                factor = 2.0 ** (-(newest - ref) / half_life)
                self.counts[:n_items] *= factor
            ref = newest
        np.add.at(self.counts, items, 2.0 ** (-(ref - stamps) / half_life))
        self.ts = ref
        return factor
