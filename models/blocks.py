"""An immutable array kept as fixed-size row blocks, so that an update copies only the
blocks it touches and shares every other block with the array it came from.

Scoring views hold their user arrays this way (a million users x 64 dims is 256 MB): a
model delta or a trained batch changes a few thousand user rows, and the next view costs
those rows' blocks, not the whole array. Scoring needs one user row per request, which is
one index into one block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np

BLOCK_SHIFT = 5
BLOCK_ROWS = 1 << BLOCK_SHIFT
"""Rows per block (32): a batch of B users spread over many users copies at most B blocks
(B x 32 rows), and the block list of 1M users is 31k references."""
_MASK = BLOCK_ROWS - 1
_FEW_ROWS = 64


class RowBlocks:
    """Rows ``0..n-1`` of a 1-d or 2-d array in read-only blocks of :data:`BLOCK_ROWS` rows.

    Never mutated after construction; :meth:`updated` returns a new instance that shares
    the blocks it did not touch.
    """

    __slots__ = ("_blocks", "_n", "dtype", "row_shape")

    def __init__(
        self, blocks: Sequence[np.ndarray], n: int, row_shape: tuple[int, ...], dtype: np.dtype
    ) -> None:
        if len(blocks) != (n + _MASK) >> BLOCK_SHIFT:
            raise ValueError(f"{len(blocks)} blocks cannot hold exactly {n} rows")
        self._blocks = tuple(blocks)
        self._n = n
        self.row_shape = row_shape
        self.dtype = np.dtype(dtype)

    @classmethod
    def from_array(cls, array: np.ndarray) -> RowBlocks:
        """Copy ``array`` (rows along axis 0) into blocks (views of one new array)."""
        n = len(array)
        whole = cls.buffer(n, tuple(array.shape[1:]), array.dtype)
        whole[:n] = array
        return cls.adopt(whole, n)

    @staticmethod
    def buffer(n: int, row_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A zeroed array for ``n`` rows rounded up to whole blocks: fill its first ``n``
        rows, then :meth:`adopt` it (no second copy of a large array while loading)."""
        n_blocks = (n + _MASK) >> BLOCK_SHIFT
        return np.zeros((n_blocks * BLOCK_ROWS, *row_shape), dtype=dtype)

    @classmethod
    def adopt(cls, whole: np.ndarray, n: int) -> RowBlocks:
        """Blocks over the first ``n`` rows of ``whole`` (from :meth:`buffer`), which
        becomes read-only and is not copied."""
        n_blocks = (n + _MASK) >> BLOCK_SHIFT
        if len(whole) != n_blocks * BLOCK_ROWS:
            raise ValueError(f"{len(whole)} rows are not {n_blocks} whole blocks")
        whole.flags.writeable = False
        blocks = list(whole.reshape(n_blocks, BLOCK_ROWS, *whole.shape[1:]))
        return cls(blocks, n, tuple(whole.shape[1:]), whole.dtype)

    @classmethod
    def empty(cls, row_shape: tuple[int, ...], dtype: np.dtype) -> RowBlocks:
        return cls((), 0, row_shape, dtype)

    # --- reading -----------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._n, *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    def row(self, i: int) -> np.ndarray:
        """Row ``i`` (a read-only view; a numpy scalar for 1-d arrays)."""
        if not 0 <= i < self._n:
            raise IndexError(f"row {i} out of range for {self._n} rows")
        return cast(np.ndarray, self._blocks[i >> BLOCK_SHIFT][i & _MASK])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """A new array of the given rows (like ``array[rows]``)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self._n):
            raise IndexError(f"rows out of range for {self._n} rows")
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        blocks = self._blocks
        for j, r in enumerate(rows.tolist()):
            out[j] = blocks[r >> BLOCK_SHIFT][r & _MASK]
        return out

    def to_array(self) -> np.ndarray:
        """All rows as one new contiguous array."""
        if not self._blocks:
            return np.zeros((0, *self.row_shape), dtype=self.dtype)
        return np.concatenate(self._blocks)[: self._n]

    # --- copy-on-write update ----------------------------------------------------------
    def updated(self, rows: np.ndarray, values: np.ndarray, n: int | None = None) -> RowBlocks:
        """These rows with ``rows`` set to ``values``, grown to ``n`` rows (new rows that
        ``rows`` does not set are zero). Copies only the blocks that ``rows`` touch; when
        they are most of the blocks, copies the whole array once instead."""
        n = self._n if n is None else n
        if n < self._n:
            raise ValueError(f"cannot shrink {self._n} rows to {n}")
        rows = np.asarray(rows, dtype=np.int64)
        values = np.asarray(values, dtype=self.dtype)
        if values.shape != (len(rows), *self.row_shape):
            raise ValueError(f"values have shape {values.shape}, expected {len(rows)} rows")
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"rows out of range for {n} rows")
        n_blocks = (n + _MASK) >> BLOCK_SHIFT
        which = rows >> BLOCK_SHIFT
        if len(rows) <= _FEW_ROWS:  # a small delta: a set of a few ints beats np.unique's sort
            touched = np.array(sorted(set(which.tolist())), dtype=np.int64)
            position = np.searchsorted(touched, which)
        else:
            touched, position = np.unique(which, return_inverse=True)
        new = np.arange(len(self._blocks), n_blocks)  # blocks that growth adds
        if 2 * (len(touched) + len(new)) > n_blocks:
            whole = np.zeros((n, *self.row_shape), dtype=self.dtype)
            whole[: self._n] = self.to_array()
            whole[rows] = values
            return RowBlocks.from_array(whole)
        blocks = list(self._blocks)
        blocks.extend([_ZERO] * len(new))
        # One vectorised copy and assignment for all touched blocks, then one small copy
        # per block so that no block keeps a large shared buffer alive.
        if len(touched):
            stacked = np.stack([self._block_or_zeros(blocks[b]) for b in touched.tolist()])
            stacked[position, rows & _MASK] = values
            for b, block in zip(touched.tolist(), stacked, strict=True):
                block = block.copy()
                block.flags.writeable = False
                blocks[b] = block
        for b in new.tolist():
            if blocks[b] is _ZERO:  # grown but not written: zeros
                blocks[b] = self._block_or_zeros(_ZERO)
        return RowBlocks(blocks, n, self.row_shape, self.dtype)

    def _block_or_zeros(self, block: np.ndarray) -> np.ndarray:
        if block is _ZERO:
            zeros = _new_block(self.row_shape, self.dtype)
            zeros.flags.writeable = False
            return zeros
        return block

    def shared_blocks(self, other: RowBlocks) -> int:
        """How many blocks this and ``other`` share by reference (tests, benchmarks)."""
        mine = {id(b) for b in self._blocks}
        return sum(id(b) in mine for b in other._blocks)


_ZERO = np.zeros(0)  # placeholder for blocks that growth adds


def _new_block(row_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.zeros((BLOCK_ROWS, *row_shape), dtype=dtype)
