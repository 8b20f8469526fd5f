"""Approximate top-k over a large catalog: a faiss IVF index over a view's items (biases
folded in, inner product turned into L2 distance) finds candidates, which are scored
exactly; items changed since the index was built are always scored exactly beside them.

Why L2: an item row ``x = [embedding, bias]`` gets one more coordinate
``sqrt(M^2 - |x|^2)`` (``M`` the largest norm), a query ``q = [user, 1]`` a zero, and then
``|q - x'|^2 = |q|^2 + M^2 - 2 q.x``: the nearest items are exactly those of largest score,
so the only approximation is which inverted lists are probed (``nprobe``).

Why not update the index: an item a delta changed (or appended) is scored exactly by every
query of a view that holds it (:attr:`FreshIndex.stale`), so it is never served with a
stale score nor missed, and needs no insert (an update could also break ``M``); the index
is rebuilt, off the scoring path, once the stale rows cost more than a share of a query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from models.batch_scoring import TopK, top_k_arrays, top_k_of, top_k_products

MIN_LIST = 40
"""Fewest items per inverted list (faiss's k-means wants 39 training points per centroid)."""

PROBED_SHARE = 32
"""One list in this many is probed per query: about 1/32 of the items scanned."""

MIN_PROBES = 8
"""Lists probed at least (a small catalog has few lists)."""

MARGIN = 32
"""Candidates fetched beyond a request's ``k`` plus its excluded items."""

MAX_FETCH = 1024
"""Most candidates fetched per request; a request needing more is scored exactly."""

TRAIN_PER_LIST = 64
"""k-means training points per list (a sample of the items; the rest are only assigned)."""

TRAIN_ITERATIONS = 8
"""k-means iterations of the build."""

RECALL_TARGET = 0.98
"""The recall@10 of exact the build calibrates the probes to, on a sample of users."""

MOST_SCANNED = 4
"""An index that must probe more than one list in this many is no faster than exact."""

CALIBRATION_K = 10

QUERY_LIMIT = 1e18
"""A query with a value beyond this (or NaN) is scored exactly: its scores may overflow,
and where they do depends on the order of the sums."""

OUTLIER_NORM = 10.0
"""Items whose norm is over this many times the 99th percentile's are left out of the
index (they would spoil every other row's lifted coordinate) and scored exactly."""

_NEG_INF = np.float32(-np.inf)


class ItemIndex:
    """An IVF-Flat index over the rows of one item matrix (``n x (d + 1)``, embeddings
    then the bias: :meth:`models.scoring.ScoringView.product_items`). Immutable once built;
    searches may run in any number of threads (faiss releases the GIL). Rows with a
    non-finite value are left out (:attr:`unindexed`): a caller scores them exactly."""

    __slots__ = ("_index", "_lists", "_probes", "items", "n", "recall", "stamps", "unindexed")

    def __init__(
        self,
        items: np.ndarray,
        queries: np.ndarray | None = None,
        *,
        stamps: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        """Index ``items`` (``stamps``: their rows' write stamps,
        :meth:`models.scoring.ScoringView.item_stamps`); with ``queries`` (a sample of users, as
        :meth:`models.scoring.ScoringView.sample_queries` draws), probe as many lists as
        reach :data:`RECALL_TARGET` on them (:attr:`recall`), doubling from
        :data:`MIN_PROBES`; without, one list in :data:`PROBED_SHARE`."""
        if items.ndim != 2:
            raise ValueError(f"items has shape {items.shape}, expected 2 dimensions")
        self.items = items  # the rows as built (a view's frozen array: kept, not copied)
        self.stamps = stamps
        self.n = len(items)
        norms = np.sqrt(np.einsum("ij,ij->i", items, items, dtype=np.float64))
        finite = np.isfinite(norms)
        if finite.any():
            finite &= norms <= OUTLIER_NORM * np.percentile(norms[finite], 99)
        rows = np.flatnonzero(finite)
        self.unindexed = np.flatnonzero(~finite)
        dim = items.shape[1] + 1
        lists = self._lists = max(1, min(int(2 * np.sqrt(len(rows))), len(rows) // MIN_LIST))
        self._probes = min(lists, max(MIN_PROBES, -(-lists // PROBED_SHARE)))
        self.recall: float | None = None  # measured on the calibration queries
        self._index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists)
        if not len(rows):
            self._index.train(np.zeros((1, dim), dtype=np.float32))
            return
        lifted = _lifted(items[rows])
        self._index.cp.niter = TRAIN_ITERATIONS
        self._index.cp.seed = seed
        self._index.cp.max_points_per_centroid = TRAIN_PER_LIST
        self._index.train(lifted)
        self._index.add_with_ids(lifted, rows.astype(np.int64))
        if queries is not None:
            self._calibrate(queries[np.isfinite(queries).all(axis=1)])

    def _calibrate(self, queries: np.ndarray) -> None:
        if not len(queries):
            return
        truth = top_k_products(queries, self.items, CALIBRATION_K)
        self._probes = min(self._lists, MIN_PROBES)
        while True:
            found = self.search(queries, CALIBRATION_K + MARGIN)
            self.recall = recall_at(truth, found, self.unindexed)
            if self.recall >= RECALL_TARGET or self._probes >= self._lists:
                return
            self._probes = min(self._lists, 2 * self._probes)

    @property
    def probes(self) -> int:
        """Inverted lists probed per query."""
        return self._probes

    @property
    def useful(self) -> bool:
        """Whether the index is worth searching: calibrated to :data:`RECALL_TARGET`
        while probing at most one list in :data:`MOST_SCANNED`."""
        return (
            self.recall is not None
            and self.recall >= RECALL_TARGET
            and self._probes * MOST_SCANNED <= self._lists
        )

    def search(self, queries: np.ndarray, count: int) -> np.ndarray:
        """Per row of ``queries`` (``B x (d + 1)``, finite, the last column 1 for the
        bias): the rows of about its ``count`` best items (``B x count`` int64, ``-1``
        where fewer were found), in no promised order. Each query is searched scaled to
        norm 1 (the same ranking; no float32 overflow or rounding from a large one)."""
        norms = np.sqrt(np.einsum("ij,ij->i", queries, queries, dtype=np.float64))
        lifted = np.zeros((len(queries), queries.shape[1] + 1), dtype=np.float32)
        lifted[:, :-1] = queries / np.maximum(norms, np.finfo(np.float64).tiny)[:, None]
        params = faiss.SearchParametersIVF()
        params.nprobe = self._probes
        _, found = self._index.search(lifted, count, params=params)
        return np.asarray(found, dtype=np.int64)


def recall_at(truth: Sequence[TopK], found: np.ndarray, always: np.ndarray) -> float:
    """The share of the exact top items (``truth``, per row) among the row's ``found``
    candidates or ``always`` (rows scored whatever the index finds); 1.0 with none."""
    hits = total = 0
    extra = set(always.tolist())
    for (best, _), row in zip(truth, found.tolist(), strict=True):
        have = set(row) | extra
        hits += sum(1 for item in best if item in have)
        total += len(best)
    return hits / total if total else 1.0


def _lifted(items: np.ndarray) -> np.ndarray:
    """``items`` with one more column ``sqrt(M^2 - |x|^2)``: every row then has norm ``M``."""
    norms = np.einsum("ij,ij->i", items, items, dtype=np.float64)
    out = np.empty((len(items), items.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = items
    out[:, -1] = np.sqrt(np.maximum(norms.max() - norms, 0.0))
    return out


@dataclass(frozen=True, slots=True)
class FreshIndex:
    """An :class:`ItemIndex` made right for one view's item matrix ``items``: ``stale``
    holds that view's rows the index does not know as they are now (changed since the
    build, appended, or unindexed), every one scored exactly by every query."""

    index: ItemIndex
    items: np.ndarray
    stale: np.ndarray

    @classmethod
    def of(
        cls, index: ItemIndex, items: np.ndarray, stamps: np.ndarray | None = None
    ) -> FreshIndex:
        """``index`` for ``items`` (a later view's matrix, rows append-only): the rows
        both hold whose values differ (NaN never equals itself), looked for only among
        those whose write ``stamps`` differ from the index's when both have stamps (a
        view of the same lineage: a few rows, not a pass over the matrix)."""
        if items.ndim != 2 or items.shape[1] != index.items.shape[1]:
            raise ValueError(f"items has shape {items.shape}, the index {index.items.shape}")
        common = min(len(items), index.n)
        written = (
            np.flatnonzero(stamps[:common] != index.stamps[:common])
            if stamps is not None and index.stamps is not None
            else None
        )
        if written is None or len(written) == common:  # no stamps, or another lineage
            changed = np.flatnonzero((items[:common] != index.items[:common]).any(axis=1))
        else:  # rewritten rows may hold the same values: only those that differ are stale
            changed = written[(items[written] != index.items[written]).any(axis=1)]
        unindexed = index.unindexed[index.unindexed < common]
        stale = np.union1d(np.union1d(changed, unindexed), np.arange(common, len(items)))
        return cls(index, items, stale.astype(np.int64))

    def top_k(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray] = (),
        offsets: np.ndarray | None = None,
    ) -> list[TopK]:
        """:func:`models.batch_scoring.top_k_products` of ``queries`` against
        :attr:`items`, found through the index: each request's candidates (its ``k`` plus
        its excluded items plus :data:`MARGIN`) and the stale rows, scored exactly, the
        excluded left out. Scored exactly instead, as today: a request whose query has a
        value that is NaN or beyond :data:`QUERY_LIMIT`, that needs more than
        :data:`MAX_FETCH` candidates, or that the candidates leave short of ``k``. A NaN
        score is never served, an infinite one is, as on the exact path."""
        rows, n = queries.shape[0], len(self.items)
        if len(exclude) and len(exclude) != rows:
            raise ValueError(f"{len(exclude)} exclusions for {rows} rows")
        excludes = list(exclude) if len(exclude) else [_NONE] * rows
        wants = np.array([k + len(e) for e in excludes], dtype=np.int64) + MARGIN
        with np.errstate(invalid="ignore"):  # NaN compares False: not searchable
            searchable = (np.abs(queries) <= QUERY_LIMIT).all(axis=1)
        exact = ~searchable | (wants > MAX_FETCH)
        out: list[TopK] = [([], [])] * rows
        near = np.flatnonzero(~exact)
        if len(near) and n:
            found = self._near(
                queries[near],
                k,
                [excludes[r] for r in near.tolist()],
                None if offsets is None else offsets[near],
                int(wants[near].max()),
            )
            for r, top in zip(near.tolist(), found, strict=True):
                if len(top[0]) < k and len(top[0]) < n - len(np.unique(excludes[r])):
                    exact[r] = True  # the candidates fell short: the whole row instead
                else:
                    out[r] = top
        again = np.flatnonzero(exact)
        if len(again):
            tops = top_k_products(
                queries[again],
                self.items,
                k,
                [excludes[r] for r in again.tolist()],
                None if offsets is None else offsets[again],
            )
            for r, top in zip(again.tolist(), tops, strict=True):
                out[r] = top
        return out

    def _near(
        self,
        queries: np.ndarray,
        k: int,
        excludes: list[np.ndarray],
        offsets: np.ndarray | None,
        count: int,
    ) -> list[TopK]:
        """The index's ``count`` candidates per query and the ``k`` best stale rows, scored
        exactly; an excluded, NaN, stale (scored as such) or missing candidate is ``-inf``."""
        n, stale, rows = len(self.items), self.stale, len(queries)
        found = self.index.search(queries, count)
        gone = (found < 0) | (found >= n)
        found[gone] = 0
        if len(stale):
            gone |= np.isin(found, stale)
        values = np.matmul(self.items[found], queries[:, :, None])[:, :, 0]
        values[gone] = _NEG_INF
        counts = np.fromiter((len(e) for e in excludes), dtype=np.int64, count=rows)
        marks = np.concatenate([np.asarray(e, dtype=np.int64) for e in excludes])
        marked = np.repeat(np.arange(rows, dtype=np.int64), counts)  # the row of each mark
        if len(marks):
            span = np.int64(n + 1)
            values[np.isin(found + np.arange(rows)[:, None] * span, marks + marked * span)] = (
                _NEG_INF
            )
        if len(stale):  # only their k best join the candidates
            scores = queries @ self.items[stale].T
            hit = np.isin(marks, stale)
            scores[marked[hit], np.searchsorted(stale, marks[hit])] = _NEG_INF
            scores[np.isnan(scores)] = _NEG_INF
            at, best = top_k_arrays(scores, k)
            values = np.hstack([values, best])
            found = np.hstack([found, stale[np.minimum(at, len(stale) - 1)]])
        values[np.isnan(values)] = _NEG_INF  # never served (as in top_k_products)
        return top_k_of(values, found, k, offsets)


_NONE = np.zeros(0, dtype=np.int64)
