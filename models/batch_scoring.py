"""Exact top-k of a batch of requests over a large catalog: one matrix product per tile of
items (biases folded in), and per tile only the few blocks whose maximum can reach a row's
k best are sorted, so the cost is the product plus one reduction, not a partition of every
score.

Every result is the exact top k of its row, best first, ties broken by the lower item
index, ``-inf`` (the mark of an excluded item) left out: the same as a stable sort of the
whole row, which :func:`sorted_top_k` is (the reference, and the path for small rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BLOCK = 32
"""Items per block: a block's maximum bounds every score in it."""

SMALL_BLOCKS = 256
"""Rows of fewer blocks than this are partitioned whole: pruning would save little."""

TILE_CELLS = 1 << 22
"""Scores computed per matrix product (16 MiB of float32): a tile of items for a batch."""

_NEG_INF = float("-inf")
_NONE = np.zeros(0, dtype=np.int64)
TopK = tuple[list[int], list[float]]


def top_k_products(
    users: np.ndarray,
    items: np.ndarray,
    k: int,
    exclude: Sequence[np.ndarray] = (),
    offsets: np.ndarray | None = None,
    tile_cells: int = TILE_CELLS,
) -> list[TopK]:
    """Per row of ``users`` (B x d, float32): the top ``k`` items by ``users @ items.T``
    (``items``: N x d), never one of ``exclude[row]`` (item indices), each score plus
    ``offsets[row]`` (a per-user constant: it changes no ranking). The products are
    computed a tile of items at a time; each tile's k best are kept and merged. A NaN
    score (a NaN or infinite value in a user or item row) is left out, as an excluded one
    is (:func:`top_k_arrays`)."""
    rows, n = users.shape[0], items.shape[0]
    kk = min(k, n)
    if not rows or not kk:
        return [([], []) for _ in range(rows)]
    tile = max(BLOCK * BLOCK * 4, tile_cells // rows)
    if len(exclude) and len(exclude) != rows:
        raise ValueError(f"{len(exclude)} exclusions for {rows} rows")
    excluding = any(len(e) for e in exclude)
    masked = _exclusions(exclude) if excluding and tile < n else None
    found_items: list[np.ndarray] = []
    found_values: list[np.ndarray] = []
    for start in range(0, n, tile):
        stop = min(n, start + tile)
        scores = users @ items[start:stop].T
        if excluding and masked is None:  # one tile: the flat positions at once
            flat = np.concatenate(
                [np.asarray(e, dtype=np.int64) + r * n for r, e in enumerate(exclude)]
            )
            scores.reshape(-1)[flat] = -np.inf
        elif masked is not None:
            at_rows, at_items = masked
            lo, hi = np.searchsorted(at_items, (start, stop))
            scores[at_rows[lo:hi], at_items[lo:hi] - start] = -np.inf
        idx, values = top_k_arrays(scores, kk)
        found_items.append(idx + start)
        found_values.append(values)
    if len(found_items) == 1:
        return _listed(found_items[0], found_values[0], offsets)
    return top_k_of(np.hstack(found_values), np.hstack(found_items), kk, offsets)


def top_k_of(
    values: np.ndarray, items: np.ndarray, k: int, offsets: np.ndarray | None = None
) -> list[TopK]:
    """Per row of ``values`` (scores of the item indices ``items``, same shape): its ``k``
    best, best first, ties by lower item, ``-inf`` left out, each plus ``offsets[row]``."""
    idx, best = _best(values, items, k)
    return _listed(idx, best, offsets)


def _listed(idx: np.ndarray, values: np.ndarray, offsets: np.ndarray | None) -> list[TopK]:
    if offsets is not None:
        values = values + offsets[:, None]
    return [_finite(i, v) for i, v in zip(idx.tolist(), values.tolist(), strict=True)]


def block_top_k(scores: np.ndarray, k: int) -> list[TopK]:
    """Per row of ``scores`` (2-d, float32): the indices and scores of its ``k`` largest,
    best first, ties by lower index, leaving out ``-inf``."""
    idx, values = top_k_arrays(scores, k)
    return [_finite(i, v) for i, v in zip(idx.tolist(), values.tolist(), strict=True)]


def sorted_top_k(scores: np.ndarray, k: int) -> list[TopK]:
    """:func:`block_top_k` by a stable sort of every whole row (the reference in tests)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(scores, order, axis=1)
    return [_finite(i, v) for i, v in zip(order.tolist(), values.tolist(), strict=True)]


def top_k_arrays(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`block_top_k` as two (rows x min(k, n)) arrays, items and values; a row with
    fewer finite scores is padded with ``-inf`` (at item indices from ``n`` on). A NaN
    score is never among them (a row with one is found again with its NaNs as ``-inf``:
    its block maxima say so, at no cost to the others).

    The blocks are strided (block ``j`` of ``m`` holds items ``j, j + m, j + 2m, ...``), so
    their maxima are element-wise maxima of ``BLOCK`` contiguous strips (SIMD). Why only
    some blocks: let ``bar`` be a row's ``k``-th largest block maximum. The ``k`` blocks
    reaching it hold ``k`` scores >= ``bar``; a block whose maximum is below ``bar`` holds
    none of the k best. A row where more blocks tie at ``bar`` (or ``bar`` is ``-inf``) is
    sorted over every block that reaches it, so ties still go to the lower index."""
    rows, n = scores.shape
    kk = min(k, n)
    if n < BLOCK * max(SMALL_BLOCKS, 2 * kk):
        return _best(scores, np.broadcast_to(np.arange(n), (rows, n)), kk)
    m = n // BLOCK  # blocks; block j also holds item BLOCK * m + j when there is one
    whole = BLOCK * m
    maxima = scores[:, :whole].reshape(rows, BLOCK, m).max(axis=1)
    tail = n - whole
    if tail:
        np.maximum(maxima[:, :tail], scores[:, whole:], out=maxima[:, :tail])
    top_blocks = np.argpartition(maxima, m - kk, axis=1)[:, m - kk :]
    bar = np.take_along_axis(maxima, top_blocks, axis=1).min(axis=1)
    reaching = np.count_nonzero(maxima >= bar[:, None], axis=1)
    clean = (reaching == kk) & (bar > _NEG_INF)
    strips = np.arange(BLOCK + 1) * m
    nan_rows = np.flatnonzero(np.isnan(bar))  # NaN is the largest to argpartition
    clean[nan_rows] = True  # not sorted below: found again after
    out_items = np.empty((rows, kk), dtype=np.int64)
    out_values = np.empty((rows, kk), dtype=scores.dtype)
    picked = np.flatnonzero(clean & ~np.isnan(bar))
    if len(picked):
        items = (top_blocks[picked][:, :, None] + strips).reshape(len(picked), -1)
        outside = items >= n  # the tail holds fewer than m items
        np.minimum(items, n - 1, out=items)
        values = scores[picked[:, None], items]
        values[outside] = _NEG_INF  # never among the k best of a clean row
        out_items[picked], out_values[picked] = _best(values, items, kk)
    for r in np.flatnonzero(~clean).tolist():
        floor = bar[r]
        reach = np.flatnonzero(maxima[r] >= floor if floor > _NEG_INF else maxima[r] > floor)
        row_items = (reach[:, None] + strips).reshape(1, -1)
        row_items = row_items[:, row_items[0] < n]
        found_items, found_values = _best(scores[r][row_items], row_items, kk)
        width = found_items.shape[1]
        out_items[r, :width], out_values[r, :width] = found_items[0], found_values[0]
        out_items[r, width:], out_values[r, width:] = n + np.arange(kk - width), _NEG_INF
    if len(nan_rows):
        masked = scores[nan_rows]
        masked[np.isnan(masked)] = _NEG_INF
        out_items[nan_rows], out_values[nan_rows] = top_k_arrays(masked, k)
    return out_items, out_values


def _best(values: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the ``min(k, width)`` best of ``values`` (``items`` their item indices),
    best first, ties by lower item. A partition finds each row's ``k``-th value; a row
    where more values than ``k`` reach it (a tie across the cut) is sorted over all those
    values, so the lower items win the tie."""
    rows, width = values.shape
    k = min(k, width)
    if np.isnan(values).any():  # never served: as excluded
        values = np.where(np.isnan(values), values.dtype.type(_NEG_INF), values)
    if not k:
        return np.zeros((rows, 0), dtype=np.int64), np.zeros((rows, 0), dtype=values.dtype)
    if k < width:
        part = np.argpartition(values, width - k, axis=1)[:, width - k :]
        chosen = np.take_along_axis(values, part, axis=1)
        kth = chosen.min(axis=1)
        tied = np.flatnonzero(np.count_nonzero(values >= kth[:, None], axis=1) != k)
        chosen_items = np.take_along_axis(items, part, axis=1)
    else:
        kth, tied = None, _NONE
        chosen, chosen_items = values, items
    order = np.lexsort((chosen_items, -chosen), axis=1)
    top_items = np.take_along_axis(chosen_items, order, axis=1)
    top_values = np.take_along_axis(chosen, order, axis=1)
    if kth is not None and len(tied):
        for r in tied.tolist():
            reach = np.flatnonzero(values[r] >= kth[r])
            row_items, row_values = items[r, reach], values[r, reach]
            best = np.lexsort((row_items, -row_values))[:k]
            top_items[r], top_values[r] = row_items[best], row_values[best]
    return top_items, top_values


def _exclusions(exclude: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every (row, item) to exclude as two arrays, ordered by item (a tile takes a slice)."""
    rows = len(exclude)
    counts = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=rows)
    at_items = np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude])
    at_rows = np.repeat(np.arange(rows), counts)
    order = np.argsort(at_items, kind="stable")
    return at_rows[order], at_items[order]


def _finite(idx: list[int], vals: list[float]) -> TopK:
    if vals and vals[-1] == _NEG_INF:  # best first: the excluded ones are the tail
        cut = vals.index(_NEG_INF)
        return idx[:cut], vals[:cut]
    return idx, vals
