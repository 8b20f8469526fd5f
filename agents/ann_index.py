"""The scorer's approximate index over a large catalog (:mod:`models.ann`): built, and
rebuilt once too many items changed, in a background thread of its own; made right for each
new view in the scoring thread; exact scoring until it is built and wherever it is not."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from models.scoring import ScoringView

if TYPE_CHECKING:  # imported when first used: faiss only in processes that search
    from models.ann import FreshIndex, ItemIndex

log = logging.getLogger(__name__)

CALIBRATION_USERS = 256
"""Users the build calibrates the probes on (:meth:`ScoringView.sample_queries`)."""

REBUILD_SHARE = 0.02
"""Stale rows (scored exactly beside every query) beyond this share of the items, or
:data:`REBUILD_ROWS`, whichever is more, start a rebuild from the current view."""

REBUILD_ROWS = 1000

RETRY_GROWTH = 1.5
"""After a build that failed or was not worth searching, the next waits for the catalog to
grow by this factor (scoring stays exact meanwhile)."""


@dataclass
class AnnIndex:
    """The approximate index of whatever view the scorer serves, when it has at least
    ``min_items`` items (0: never). :meth:`search` never blocks on a build."""

    min_items: int = 50_000
    _index: ItemIndex | None = field(default=None, init=False, repr=False)
    _fresh: FreshIndex | None = field(default=None, init=False, repr=False)
    _fresh_view: ScoringView | None = field(default=None, init=False, repr=False)
    _building: Future[None] | None = field(default=None, init=False, repr=False)
    _retry_at: int = field(default=0, init=False, repr=False)  # items a retry waits for
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def applies(self, view: ScoringView) -> bool:
        """Whether ``view``'s catalog is large enough for the index."""
        return 0 < self.min_items <= view.n_items

    def search(self, view: ScoringView, *, prepare: bool = True) -> FreshIndex | None:
        """The index made right for ``view`` (None: score exactly). ``prepare``: compare
        ``view``'s item stamps with the index's here (once per view, in the scoring thread;
        the item matrix itself when the view has another lineage); else only an index
        already made right for it. Starts
        a build when there is none, or the stale rows grew past the rebuild share."""
        if not self.applies(view):
            return None
        with self._lock:
            index, fresh, fresh_view = self._index, self._fresh, self._fresh_view
        if fresh_view is view:
            return fresh
        if index is None or not prepare:
            if index is None and view.n_items >= self._retry_at:
                self._build(view)
            return None
        from models.ann import FreshIndex

        fresh = FreshIndex.of(index, view.product_items(), view.item_stamps())
        with self._lock:  # (a matrix another thread made at the same time is not the view's)
            if self._index is index and fresh.items is view.product_items():
                self._fresh, self._fresh_view = fresh, view
        too_stale = len(fresh.stale) > max(REBUILD_ROWS, REBUILD_SHARE * view.n_items)
        if too_stale and view.n_items >= self._retry_at:
            self._build(view)
        return fresh

    @property
    def building(self) -> bool:
        """Whether a build is running."""
        return self._building is not None and not self._building.done()

    def built(self) -> ItemIndex | None:
        """The index searched now (None before the first build)."""
        return self._index

    def wait(self) -> None:
        """Wait until the running build, if any, is built and installed (tests, benchmarks)."""
        building = self._building
        if building is not None:
            building.result()

    def _build(self, view: ScoringView) -> None:
        """Build from ``view`` in the background, unless a build is running."""
        with self._lock:
            if self.building:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="streamrec-ann")
            self._building = self._pool.submit(self._built, view)

    def _built(self, view: ScoringView) -> None:
        """Build from ``view`` and install it (in the build thread): searched from now on.
        After a failure scoring goes on as before it (the old index, or exact), after an
        index not worth searching, exact; either way retried at a larger catalog."""
        try:
            index: ItemIndex | None = _built(view)
            error = None
        except Exception as exc:  # logged below; the service goes on exactly
            index, error = None, exc
        with self._lock:
            if index is not None and index.useful:
                self._index, self._fresh, self._fresh_view = index, None, None
            else:
                self._retry_at = int(RETRY_GROWTH * view.n_items)
                if index is not None:
                    self._index = self._fresh = self._fresh_view = None
        if error is not None:
            log.warning("ann index build failed: %s: %s", type(error).__name__, error)
        elif index is not None and not index.useful:
            log.info("ann index not used: recall %s at %d probes", index.recall, index.probes)
        elif index is not None:
            log.info(
                "ann index built: %d items, %d probes, recall@10 %.4f",
                index.n,
                index.probes,
                index.recall or 0.0,
            )

    def close(self) -> None:
        """Let the build thread end once its build is done."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def _built(view: ScoringView) -> ItemIndex:
    from models.ann import ItemIndex

    return ItemIndex(
        view.product_items(), view.sample_queries(CALIBRATION_USERS), stamps=view.item_stamps()
    )
