"""Scoring several views' batches of one small request batch side by side: the first on the
calling thread, the others meanwhile in one worker thread (numpy's products and partitions
release the GIL), so an interleaved request waits for about one view's scoring, not two.

The worker's share is taken back and scored on the calling thread when the worker has not
started it by the time the first batch is done (a busy machine: no core to spare), so a
request never waits for a thread that is not running. Large batches are scored one view
after another, as before: under load the second core is the other batches' to use.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from agents.score_thread import INLINE_CELLS
from agents.scorer import ScoringBatch
from models.scoring import Recommendation

Scored = list[Recommendation] | None
"""A batch's recommendations (None: no view served, as :func:`agents.scorer.replies_for`)."""


def _score(batch: ScoringBatch | None) -> Scored:
    return None if batch is None else batch.score(prepare=False)


def _score_all(batches: Sequence[ScoringBatch | None]) -> list[Scored]:
    return [_score(b) for b in batches]


def cells(batches: Sequence[ScoringBatch | None]) -> int:
    """The scores ``batches`` compute (requests x items per view)."""
    return sum(len(b.users) * b.view.n_items for b in batches if b is not None)


@dataclass
class SideBySide:
    """One worker thread that scores the other views' batches while the caller scores the
    first one's."""

    max_cells: int = INLINE_CELLS
    """Batches computing this many scores or more are scored one after another."""
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    taken_back: int = 0
    """Times the worker had not started its share when the caller was done with its own."""

    def concurrent(self, batches: Sequence[ScoringBatch | None]) -> bool:
        """Whether :meth:`score` scores ``batches`` side by side."""
        return len(batches) > 1 and cells(batches) < self.max_cells

    def score(self, batches: Sequence[ScoringBatch | None]) -> list[Scored]:
        """Each batch's recommendations, in order: the same as scoring them one after
        another, and the same error (the first batch's, else the first of the others')."""
        if not self.concurrent(batches):
            return _score_all(batches)
        if self._pool is None:  # made on first use: most scorers never run an interleaving
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="streamrec-variants")
        later = self._pool.submit(_score_all, batches[1:])
        try:
            first = _score(batches[0])
        except BaseException:
            if not later.cancel():  # let the worker finish before the error goes up
                concurrent.futures.wait([later])
            raise
        if later.cancel():  # not started: no core was free, score them here
            self.taken_back += 1
            return [first, *_score_all(batches[1:])]
        return [first, *later.result()]

    def close(self) -> None:
        """Let the thread end once its share is done (a new one is made if used again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
