"""The twelve LightFM state arrays and the fits that train them: growth, row initialisation
from seeded random streams, one fit of a :class:`FitBatch` with its non-finite rollback.

LightFM fixes its id space at the first fit (lightfm issues 322, 667). We own the twelve
state arrays instead and hand them to a LightFM instance whose ``fit_partial`` only ever
sees identity feature matrices ``I[:n, :capacity]``:

* the arrays have ``capacity`` rows (grown by doubling, float32, C-contiguous), so the C
  code's unchecked indexing always stays inside them;
* the interaction matrix and the features have exactly ``n`` rows, so WARP/BPR sample
  negatives only among items that exist (``item_features.rows``), and WARP's rank
  estimate uses the real item count — a capacity-shaped matrix would sample unused rows;
* rows are initialised when they become used, and every fit draws its random numbers,
  from a stream derived from ``(seed, version, stream)``, so capacity never changes
  results, a model restored from a snapshot continues exactly as if it had never stopped
  (one thread), and a :class:`FitBatch` replayed onto another state trains exactly as it
  did the first time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

import numpy as np
import scipy.sparse as sp
from lightfm import LightFM

from models.config import ModelConfig
from models.errors import ModelError

SIDES = ("user", "item")
PARTS = (
    "embeddings",
    "embedding_gradients",
    "embedding_momentum",
    "biases",
    "bias_gradients",
    "bias_momentum",
)
STATE_ARRAYS = tuple(f"{side}_{part}" for side in SIDES for part in PARTS)
"""The twelve LightFM arrays: the training state that must always grow together."""
_UNCHECKED_BY_LIGHTFM = tuple(n for n in STATE_ARRAYS if "gradients" in n or "momentum" in n)

# Random streams derived from (seed, version, stream); models.consolidation has its own.
FIT_STREAM, USER_INIT_STREAM, ITEM_INIT_STREAM = 0, 1, 2

#: A backup of the rows a fit can change: per array, which rows and their values.
_Backup = dict[str, tuple[np.ndarray | slice, np.ndarray]]


class NonFiniteModel(ModelError, RuntimeError):
    """Training made a parameter NaN/inf; the batch was rolled back."""


def derive_seed(seed: int, version: int, stream: int) -> int:
    """A 32-bit seed that depends only on (seed, version, stream) — never on history."""
    (state,) = np.random.SeedSequence([seed, version, stream]).generate_state(1)
    return int(state)


@dataclass(frozen=True, slots=True)
class FitBatch:
    """What one fit trains, with the rows it adds: enough to replay it exactly onto another
    state (a micro-batch's fit, or a consolidation's retrain on the whole window)."""

    version: int  # seeds the fit and the initialisation of the rows the batch added
    n_users0: int  # rows before the batch (rows n_users0..n_users are new)
    n_items0: int
    n_users: int  # the interaction matrix's shape
    n_items: int
    rows: np.ndarray  # int32 user rows
    cols: np.ndarray  # int32 item rows
    labels: np.ndarray  # float32 +1/-1
    weights: np.ndarray | None
    epochs: int


def training_pairs(
    config: ModelConfig,
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    stamps: np.ndarray,
    n_items: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The (user, item) pairs that events (rows, ratings, times) train, their labels (+1/-1)
    and optional weights: a pair rated twice counts its latest rating (by time, then
    arrival); below ``positive_threshold`` is a negative for the logistic loss and not
    trained for the ranking losses. Int32 rows, in arrival order (deterministic input to
    LightFM's shuffle)."""
    key = users * max(1, n_items) + items
    order = np.lexsort((np.arange(len(key)), stamps, key))
    sorted_key = key[order]
    last = order[np.append(sorted_key[1:] != sorted_key[:-1], True)]
    last.sort()  # back to arrival order: deterministic input to LightFM's shuffle
    positive = ratings[last] >= config.positive_threshold
    if config.loss != "logistic":
        last = last[positive]
        positive = np.ones(len(last), dtype=bool)
    labels = np.where(positive, 1.0, -1.0).astype(np.float32)
    weights = None
    if config.use_weights:
        r = ratings[last] / 5.0
        weights = np.where(positive, r, 1.0 - r).astype(np.float32)
    return users[last].astype(np.int32), items[last].astype(np.int32), labels, weights


class Fitter:
    """The twelve state arrays, the LightFM instance that trains them and the random
    stream its fits and initialisations draw from: everything a fit touches."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        # One RandomState, re-seeded from (seed, version, stream) before each use: creating
        # a new one costs ~0.4 ms (it first seeds itself from OS entropy).
        self._random = np.random.RandomState(config.seed)
        self.lfm = LightFM(
            no_components=config.no_components,
            k=config.kos_k,
            n=config.kos_n,
            learning_schedule=config.learning_schedule,
            loss=config.loss,
            learning_rate=config.learning_rate,
            rho=config.rho,
            epsilon=config.epsilon,
            item_alpha=config.item_alpha,
            user_alpha=config.user_alpha,
            max_sampled=config.max_sampled,
            random_state=config.seed,
        )
        for name in STATE_ARRAYS:
            rows = (0, config.no_components) if "embedding" in name else (0,)
            setattr(self.lfm, name, np.zeros(rows, dtype=np.float32))
        self._identity: dict[str, sp.csr_matrix] = {}

    @property
    def capacity(self) -> tuple[int, int]:
        """Allocated (user rows, item rows)."""
        return len(self.lfm.user_biases), len(self.lfm.item_biases)

    def grow(self, version: int, n_users0: int, n_items0: int, n_users: int, n_items: int) -> None:
        """Make room for new users/items (capacity doubling) and initialise their rows."""
        for side, old, new, stream in (
            ("user", n_users0, n_users, USER_INIT_STREAM),
            ("item", n_items0, n_items, ITEM_INIT_STREAM),
        ):
            if new == old:
                continue
            capacity = len(getattr(self.lfm, f"{side}_biases"))
            if new > capacity:
                self._reallocate(side, old, self._room_for(new, capacity))
            self._init_rows(side, old, new, version, stream)

    def start_over(
        self,
        capacity: tuple[int, int],
        n_users: int,
        n_items: int,
        version: int,
        streams: tuple[int, int],
    ) -> None:
        """On a new fitter: arrays of ``capacity`` (user, item) rows, the first ``n_users``
        and ``n_items`` initialised from the (user, item) ``streams`` of ``version``, the
        others zero (a retrain from scratch)."""
        for side, n, rows, stream in (
            ("user", n_users, capacity[0], streams[0]),
            ("item", n_items, capacity[1], streams[1]),
        ):
            self._reallocate(side, 0, rows)
            self._init_rows(side, 0, n, version, stream)

    def load(self, arrays: Mapping[str, np.ndarray], n_users: int, n_items: int) -> None:
        """Take the twelve arrays' used rows from a snapshot (into empty arrays), with the
        capacity growth would have given them."""
        for side, n in (("user", n_users), ("item", n_items)):
            self._reallocate(side, 0, self._room_for(n))
            for part in PARTS:
                getattr(self.lfm, f"{side}_{part}")[:n] = arrays[f"{side}_{part}"]

    def _room_for(self, n: int, capacity: int = 0) -> int:
        """The capacity for ``n`` rows: ``capacity`` (at least ``initial_capacity``)
        doubled until they fit."""
        capacity = max(capacity, self.config.initial_capacity)
        while capacity < n:
            capacity *= 2
        return capacity

    def _reallocate(self, side: str, used: int, capacity: int) -> None:
        """Give one side's six arrays ``capacity`` rows, keeping the first ``used``."""
        for part in PARTS:
            name = f"{side}_{part}"
            setattr(self.lfm, name, resized(getattr(self.lfm, name), used, capacity))

    def _init_rows(self, side: str, start: int, stop: int, version: int, stream: int) -> None:
        """LightFM's own initialisation (``LightFM._initialize``) for rows start..stop,
        drawn from ``stream`` of ``version``."""
        k = self.config.no_components
        lfm, rng = self.lfm, self._random
        rng.seed(derive_seed(self.config.seed, version, stream))
        accumulator = 1.0 if self.config.learning_schedule == "adagrad" else 0.0
        getattr(lfm, f"{side}_embeddings")[start:stop] = (rng.rand(stop - start, k) - 0.5) / k
        getattr(lfm, f"{side}_embedding_gradients")[start:stop] = accumulator
        getattr(lfm, f"{side}_embedding_momentum")[start:stop] = 0.0
        getattr(lfm, f"{side}_biases")[start:stop] = 0.0
        getattr(lfm, f"{side}_bias_gradients")[start:stop] = accumulator
        getattr(lfm, f"{side}_bias_momentum")[start:stop] = 0.0

    def _features(self, side: str, n: int) -> sp.csr_matrix:
        """``I[:n, :capacity]`` of one side, cached: rebuilt only when n or the capacity
        changed (a steady-state batch reuses both)."""
        capacity = len(getattr(self.lfm, f"{side}_biases"))
        cached = self._identity.get(side)
        if cached is None or cached.shape != (n, capacity):
            cached = self._identity[side] = _identity(n, capacity)
        return cached

    def fit(
        self,
        batch: FitBatch,
        on_epoch: Callable[[int], None] | None = None,
        stream: int = FIT_STREAM,
    ) -> np.ndarray:
        """Train ``batch`` (rolled back whole, raising :class:`NonFiniteModel`, if it goes
        non-finite); returns the item rows it changed."""
        shape = (batch.n_users, batch.n_items)
        rows, cols = batch.rows, batch.cols
        interactions = sp.coo_matrix((batch.labels, (rows, cols)), shape=shape)
        sample_weight = None
        if batch.weights is not None:
            sample_weight = sp.coo_matrix((batch.weights, (rows, cols)), shape=shape)
        user_features = self._features("user", batch.n_users)
        item_features = self._features("item", batch.n_items)
        backup = self._backup(rows, batch.n_users0, batch.n_items)
        lfm = self.lfm
        self._random.seed(derive_seed(self.config.seed, batch.version, stream))
        lfm.random_state = self._random
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # divergence is handled below
                for done in range(1, batch.epochs + 1):
                    lfm.fit_partial(
                        interactions,
                        user_features=user_features,
                        item_features=item_features,
                        sample_weight=sample_weight,
                        epochs=1,
                        num_threads=self.config.num_threads,
                    )
                    if on_epoch is not None:
                        on_epoch(done)
                bad = self._non_finite(backup, rows, batch.n_items)
            if bad:
                raise NonFiniteModel(f"training made {bad} non-finite; batch rolled back")
        except BaseException as exc:
            self._restore(backup)
            if isinstance(exc, ValueError) and "finite" in str(exc):
                raise NonFiniteModel(f"training diverged ({exc}); batch rolled back") from exc
            raise
        return self._changed_item_rows(backup)

    def _changed_item_rows(self, backup: _Backup) -> np.ndarray:
        """Item rows whose embedding or bias this fit changed (negatives sampled by WARP/BPR
        change too), found against the backup the fit took anyway."""
        which, before = backup["item_embeddings"]  # which: rows 0..n_items-1
        changed = (self.lfm.item_embeddings[which] != before).any(axis=1)
        changed |= self.lfm.item_biases[which] != backup["item_biases"][1]
        return np.flatnonzero(changed).astype(np.int64)

    def _backup(self, rows: np.ndarray, n_users0: int, n_items: int) -> _Backup:
        """Copies of everything a fit can change, to roll back a non-finite batch.

        Item rows: any existing item can be sampled as a negative, so all of them. User
        rows: only this batch's users, unless user_alpha > 0 (regularisation rescales all).
        """
        if self.config.user_alpha > 0:
            user_rows = np.arange(n_users0)
        else:
            user_rows = np.unique(rows[rows < n_users0]).astype(np.int64)
        items = slice(0, n_items)  # a slice: one contiguous copy, not a gather
        backup: _Backup = {}
        for name in STATE_ARRAYS:
            array = getattr(self.lfm, name)
            if name[0] == "u":
                backup[name] = (user_rows, array[user_rows])  # fancy index = copy
            else:
                backup[name] = (items, array[items].copy())
        return backup

    def _restore(self, backup: _Backup) -> None:
        for name, (which, values) in backup.items():
            getattr(self.lfm, name)[which] = values

    def _non_finite(self, backup: _Backup, rows: np.ndarray, n_items: int) -> str | None:
        """The first array with a NaN/inf in a row this fit could have changed, if any.

        LightFM itself checks the embeddings and biases after every epoch (and raises); this
        covers the gradient accumulators and momentum, in the rows that can have changed
        (those backed up, plus this batch's users)."""
        user_rows = np.union1d(cast(np.ndarray, backup["user_biases"][0]), rows)  # user rows
        for name in _UNCHECKED_BY_LIGHTFM:
            which = user_rows if name[0] == "u" else slice(0, n_items)
            if not np.isfinite(np.sum(getattr(self.lfm, name)[which], dtype=np.float64)):
                return name
        return None


def resized(array: np.ndarray, used: int, capacity: int) -> np.ndarray:
    """``array`` with ``capacity`` rows: the first ``used`` kept, the rest zero (``array``
    itself if it has ``capacity`` rows already). Per-row counts follow the arrays' growth
    with it too."""
    if len(array) == capacity:
        return array
    grown = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[:used] = array[:used]
    return grown


def _identity(n: int, capacity: int) -> sp.csr_matrix:
    """Rows 0..n-1 of the capacity x capacity identity, as float32 CSR (built in O(n))."""
    return sp.csr_matrix(
        (
            np.ones(n, dtype=np.float32),
            np.arange(n, dtype=np.int32),
            np.arange(n + 1, dtype=np.int32),
        ),
        shape=(n, capacity),
    )
