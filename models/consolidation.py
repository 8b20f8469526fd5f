"""Consolidation: a warm-started retrain of the rows the bounded window of recent
interactions touches, on that window, written back over the model's rows.

Micro-batch training sees each rating for ``epochs_per_batch`` epochs, once, in the batch it
arrived in: early ratings are under-trained, and WARP only knows a batch's positives when
it samples negatives. Consolidation (:meth:`models.incremental.IncrementalModel.consolidate`)
periodically fits the window kept here as one batch, as a batch job would, starting from
the current rows of its users and of the items (never re-initialised: a user outside the
window keeps their row exactly), and writes the rows back; micro-batches then continue
from the consolidated state. Its cost follows the window, not the model.

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
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
from lightfm import LightFM

from models.config import ModelConfig
from models.fitter import PARTS, FitBatch, Fitter, NonFiniteModel

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

    def newest(self, n: int) -> dict[str, np.ndarray]:
        """The newest ``n`` events (all if fewer) as :meth:`arrays` gives them, copied in
        O(n + batches they span) (a checkpoint segment's tail)."""
        parts, left = [], min(max(0, n), self._size)
        for chunk in reversed(self._chunks):
            if left <= 0:
                break
            parts.append(tuple(a[max(0, len(a) - left) :] for a in chunk))
            left -= len(chunk[0])
        columns = zip(*reversed(parts), strict=True) if parts else ((),) * len(FIELDS)
        return {
            name: np.concatenate([*c, np.zeros(0, DTYPES[name])])
            for name, c in zip(FIELDS, columns, strict=True)
        }

    @classmethod
    def from_arrays(cls, capacity: int, arrays: dict[str, np.ndarray]) -> InteractionWindow:
        """Rebuild from :meth:`arrays` (the newest ``capacity`` events are kept)."""
        window = cls(capacity)
        window.append(*(arrays[name] for name in FIELDS))
        return window


#: The random stream of a consolidation's fit, derived from (seed, version, stream) like
#: the batches' own (models.fitter), never equal to theirs.
_CONSOLIDATE_FIT = 3


class HeldRows:
    """The model's user rows a consolidation holds, in the order it holds them (its own
    rows 0..size-1): lookups both ways in O(log size), never O(model)."""

    def __init__(self, rows: np.ndarray) -> None:
        self._chunks = [np.asarray(rows, dtype=np.int64)]
        order = np.argsort(self._chunks[0], kind="stable")
        self._sorted, self._local = self._chunks[0][order], order.astype(np.int64)

    @property
    def size(self) -> int:
        return len(self._sorted)

    def add(self, rows: np.ndarray) -> None:
        """Hold ``rows`` (none held yet) as the next own rows, in their order."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        local = np.arange(self.size, self.size + len(rows), dtype=np.int64)
        self._chunks.append(rows)
        keys = np.concatenate([self._sorted, rows])
        order = np.argsort(keys, kind="stable")
        self._sorted, self._local = keys[order], np.concatenate([self._local, local])[order]

    def held(self, rows: np.ndarray) -> np.ndarray:
        """A mask: which of ``rows`` are held."""
        if not self.size:
            return np.zeros(len(rows), dtype=bool)
        at = np.minimum(np.searchsorted(self._sorted, rows), self.size - 1)
        found: np.ndarray = self._sorted[at] == rows
        return found

    def local(self, rows: np.ndarray) -> np.ndarray:
        """The own rows of ``rows`` (all held)."""
        return self._local[np.searchsorted(self._sorted, rows)].astype(np.int32)

    def model_rows(self) -> np.ndarray:
        """The model's row of each own row 0..size-1."""
        return np.concatenate(self._chunks)


@dataclass(frozen=True, slots=True)
class Captured:
    """Copies of the six user parts of some model rows, taken before a batch trained them."""

    rows: np.ndarray
    parts: dict[str, np.ndarray]


def copy_rows(lfm: LightFM, side: str, rows: np.ndarray | slice) -> dict[str, np.ndarray]:
    """Copies of one side's six parts at ``rows``, keyed by the twelve arrays' names."""
    return {f"{side}_{part}": getattr(lfm, f"{side}_{part}")[rows].copy() for part in PARTS}


class Consolidation:
    """A retrain on the window, warm-started from the rows it trains as one batch cut it,
    then the batches trained after that cut, replayed in order.

    It holds copies of only the rows it trains: the window's users (its own rows
    0..n-1, :class:`HeldRows`) and the items (the catalogue: WARP draws negatives among all
    of them). Users outside the window are never copied, trained nor written back: they
    keep their rows exactly. The window's rows start the fit shrunk, with LightFM's initial
    learning-rate state (:func:`warm_start`), so the window is fitted at full step size, as
    a fit from scratch would, but from the rows the stream has learned instead of noise
    (unshrunk, it barely moves them: see :data:`WARM_START_SCALE`). Its cost is
    O(epochs x window interactions + the window's users + items), whatever the model's
    size; ``consolidation_window`` and ``consolidate_epochs`` bound it.

    It owns everything it trains (a :class:`~models.fitter.Fitter` of its own), so
    :meth:`run` may run in another thread while the model goes on training batches; the
    model appends each such batch to :attr:`tail` (with :meth:`capture` of the rows it
    trains that the consolidation does not hold yet), :meth:`run` replays what is there when
    its fit ends, and :meth:`models.incremental.IncrementalModel.install` replays the rest
    and writes the changed rows back (:meth:`write_into`).
    """

    def __init__(
        self,
        config: ModelConfig,
        retrain: FitBatch,
        users: np.ndarray,
        start: dict[str, np.ndarray],
    ) -> None:
        """``retrain``: the window's interactions with its users as own rows (``users``:
        their model rows, sorted); ``start``: copies of those user rows' and of every item's
        six parts (``copy_rows``)."""
        self.config = config
        self.retrain = retrain  # the window's interactions as the cut found them
        self.held = HeldRows(users)
        self._users = users  # read by the training thread (capture): never changes
        self._start = start  # handed to the fitter by run()
        self.tail: list[FitBatch] = []
        self._captured: list[Captured] = []
        self.replayed = 0
        self.fitter: Fitter | None = None  # set by run() unless the retrain went non-finite
        self.neighbours: sp.csr_matrix | None = None
        self.seconds = 0.0
        self._items_trained = retrain.n_items
        self.between_epochs: Callable[[], None] | None = None
        """Called after each epoch of the retrain (the trainer uses it to yield the CPU to
        the batches while they have a backlog); it changes when, never what, it trains."""

    @property
    def events(self) -> int:
        """Interactions the retrain trains on."""
        return len(self.retrain.rows)

    @property
    def user_rows(self) -> int:
        """User rows it holds and trains (the window's users, then those of the tail)."""
        return self.held.size

    @property
    def item_rows(self) -> int:
        """Item rows it holds and trains."""
        return self._items_trained

    def capture(self, lfm: LightFM, rows: np.ndarray, n_users0: int) -> Captured:
        """In the training thread, before a batch of the tail trains ``rows`` (model user
        rows, ``n_users0`` of them existing): copies of those rows not new, and not the
        window's (a row captured twice is held from its first capture)."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        rows = rows[rows < n_users0]
        if len(self._users):
            at = np.minimum(np.searchsorted(self._users, rows), len(self._users) - 1)
            rows = rows[self._users[at] != rows]
        return Captured(rows, copy_rows(lfm, "user", rows))

    def follow(self, batch: FitBatch, captured: Captured) -> None:
        """Keep a batch trained after the cut, to replay (:meth:`replay`)."""
        self._captured.append(captured)
        self.tail.append(batch)  # last: the other thread reads tail's length first

    def run(self) -> Consolidation:
        """The retrain (CPU-bound; LightFM's Cython training releases the GIL), then the replay of
        the tail so far. Returns itself."""
        started = time.perf_counter()
        w = self.retrain
        fitter = Fitter(self.config)
        fitter.load(self._start, w.n_users, w.n_items)
        self._start = {}
        warm_start(fitter.lfm, "user", np.arange(w.n_users))
        warm_start(fitter.lfm, "item", np.unique(w.cols))
        try:
            if len(w.rows):
                fitter.fit(w, self._after_epoch, _CONSOLIDATE_FIT)
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
        """Replay the tail batches not replayed yet (each as its batch trained it: the rows
        it captured taken in, its new rows initialised from its version, then its fit on
        its rows as held here; one that goes non-finite here is rolled back and skipped)."""
        fitter = self.fitter
        assert fitter is not None
        lfm = fitter.lfm
        while self.replayed < len(self.tail):
            batch, captured = self.tail[self.replayed], self._captured[self.replayed]
            fresh = ~self.held.held(captured.rows)
            if fresh.any():
                start, rows = self.held.size, captured.rows[fresh]
                # room for them (initialised, then overwritten with their copies)
                fitter.grow(batch.version, start, batch.n_items0, start + len(rows), batch.n_items0)
                for name, values in captured.parts.items():
                    getattr(lfm, name)[start : start + len(rows)] = values[fresh]
                self.held.add(rows)
            start, added = self.held.size, batch.n_users - batch.n_users0
            fitter.grow(batch.version, start, batch.n_items0, start + added, batch.n_items)
            self.held.add(np.arange(batch.n_users0, batch.n_users))
            self._items_trained = batch.n_items
            local = replace(
                batch,
                n_users0=start,
                n_users=start + added,
                rows=self.held.local(batch.rows),
            )
            if len(local.rows):
                with contextlib.suppress(NonFiniteModel):
                    fitter.fit(local)
            self.replayed += 1

    def write_into(self, lfm: LightFM) -> tuple[np.ndarray, np.ndarray]:
        """Write the rows it trained into the model's arrays (``lfm``, which holds every row
        it does); returns the model rows (users, items) whose embedding or bias changed."""
        assert self.fitter is not None
        own, rows, n_items = self.fitter.lfm, self.held.model_rows(), self._items_trained
        changed = []
        for side, at, n in (("user", rows, len(rows)), ("item", np.arange(n_items), n_items)):
            emb, bias = getattr(own, f"{side}_embeddings")[:n], getattr(own, f"{side}_biases")[:n]
            differs = (getattr(lfm, f"{side}_embeddings")[at] != emb).any(axis=1)
            differs |= getattr(lfm, f"{side}_biases")[at] != bias
            changed.append(at[differs].astype(np.int64))
            for part in PARTS:
                getattr(lfm, f"{side}_{part}")[at] = getattr(own, f"{side}_{part}")[:n]
        return changed[0], changed[1]


#: What a consolidation scales the rows it trains by before its fit ("shrink" warm start:
#: the direction the stream learned, at a scale a fit can still move). Measured on the
#: ml-100k offline replay (P@10): no shrink 0.0907, 0.3 0.0975, 0.1 0.1006; re-initialised
#: rows 0.0999, the retrain from scratch before issue 18 0.1022.
WARM_START_SCALE = 0.1


def warm_start(lfm: LightFM, side: str, rows: np.ndarray) -> None:
    """Make ``rows`` of one side ready for a consolidation's fit: their embeddings and
    biases scaled by :data:`WARM_START_SCALE`, LightFM's initial learning-rate state
    (adagrad's accumulators 1, adadelta's 0, no momentum)."""
    getattr(lfm, f"{side}_embeddings")[rows] *= WARM_START_SCALE
    getattr(lfm, f"{side}_biases")[rows] *= WARM_START_SCALE
    accumulator = 1.0 if lfm.learning_schedule == "adagrad" else 0.0
    for part in ("embedding_gradients", "bias_gradients"):
        getattr(lfm, f"{side}_{part}")[rows] = accumulator
    for part in ("embedding_momentum", "bias_momentum"):
        getattr(lfm, f"{side}_{part}")[rows] = 0.0


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
