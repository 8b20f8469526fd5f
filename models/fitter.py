"""The twelve LightFM state arrays and the fits that train them: growth, row initialisation
from seeded random streams, one fit of a :class:`FitBatch` with its non-finite rollback.

LightFM fixes its id space at the first fit (lightfm issues 322, 667). We own the twelve
state arrays instead, keep LightFM's hyper-parameters in a LightFM instance, and train with
its Cython routines on identity feature matrices (:mod:`models.submodel`):

* the arrays have ``capacity`` rows (grown by doubling, float32, C-contiguous); a fit
  hands the C code only the rows it may change (the batch's users, as a compact copy) or
  a side's ``n`` used rows, so its unchecked indexing always stays inside them;
* the item side has exactly ``n`` rows, so WARP samples negatives only among items that
  exist (``item_features.rows``), and its rank estimate uses the real item count;
* rows are initialised when they become used, and every fit draws its random numbers,
  from a stream derived from ``(seed, version, stream)``, so capacity never changes
  results, a model restored from a snapshot continues exactly as if it had never stopped
  (one thread), and a :class:`FitBatch` replayed onto another state trains exactly as it
  did the first time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from lightfm import LightFM

from models.config import ModelConfig
from models.errors import ModelError
from models.randr import MAX_DRAWS, EpochDraws
from models.submodel import PARTS as PARTS  # re-exported: snapshots use it
from models.submodel import DrewPastCandidates, SubModel, identity

SIDES = ("user", "item")
STATE_ARRAYS = tuple(f"{side}_{part}" for side in SIDES for part in PARTS)
"""The twelve LightFM arrays: the training state that must always grow together."""

# Random streams derived from (seed, version, stream); models.consolidation has its own.
FIT_STREAM, USER_INIT_STREAM, ITEM_INIT_STREAM = 0, 1, 2


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
        # WARP's draws per positive in the last fit: what a compact item side must cover
        self._draws_per_positive = 2.0

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
        """``I[:n, :n]`` of one side trained whole, cached: rebuilt only when n changed (a
        steady-state batch reuses it)."""
        cached = self._identity.get(side)
        if cached is None or cached.shape != (n, n):
            cached = self._identity[side] = identity(n, n)
        return cached

    def fit(
        self,
        batch: FitBatch,
        on_epoch: Callable[[int], None] | None = None,
        stream: int = FIT_STREAM,
    ) -> np.ndarray:
        """Train ``batch`` (rolled back whole, raising :class:`NonFiniteModel`, if it goes
        non-finite); returns the item rows it changed. Costs O(batch) on a side trained
        as a compact sub-model (:mod:`models.submodel`), O(used rows) on one trained whole."""
        self._random.seed(derive_seed(self.config.seed, batch.version, stream))
        threads, seeds = self.config.num_threads, self.config.loss != "logistic"
        draws = [
            EpochDraws(self._random, len(batch.rows), threads, seeds) for _ in range(batch.epochs)
        ]
        budget = self._budget(batch)
        report = _each_epoch_once(on_epoch)
        try:
            changed = self._fit(batch, draws, budget, report)
        except DrewPastCandidates:
            self._draws_per_positive *= 4
            changed = self._fit(batch, draws, 0, report)
        if budget:
            self._learn_draws(draws, batch)
        return changed

    def _budget(self, batch: FitBatch) -> int:
        """How many draws per epoch (and thread) a WARP fit's compact item side covers: the
        most per positive the last fit made, with a margin (0: the whole item side; not
        WARP, item_alpha > 0, or more draws than items, e.g. a consolidation's)."""
        if self.config.loss not in ("warp", "warp-kos") or self.lfm.item_alpha != 0:
            return 0
        positives = int(np.count_nonzero(batch.labels > 0))
        budget = int(positives * self._draws_per_positive * 1.5) + 64
        if budget > min(batch.n_items, MAX_DRAWS):  # the draws would name most items
            self._draws_per_positive = max(1.0, self._draws_per_positive * 0.9)  # retry later
            return 0
        return budget if positives else 0

    def _learn_draws(self, draws: list[EpochDraws], batch: FitBatch) -> None:
        """Remember how many numbers per positive WARP's epochs drew (the most): the next
        fit's budget. Changes what a fit costs, never what it trains."""
        lfm = self.lfm
        per_example = lfm.max_sampled + (lfm.n if lfm.loss == "warp-kos" else 0)
        positives = int(np.count_nonzero(batch.labels > 0))
        most = [d.made(positives * per_example * 2) for d in draws]
        known = [m for m in most if m is not None]
        if len(known) < len(most):
            self._draws_per_positive = float(per_example)
        else:
            self._draws_per_positive = max(1.0, max(known) / positives)

    def _fit(
        self,
        batch: FitBatch,
        draws: list[EpochDraws],
        budget: int,
        on_epoch: Callable[[int], None],
    ) -> np.ndarray:
        try:
            sub = SubModel(self.lfm, batch, draws, self._features, budget)
        except ValueError as exc:
            raise NonFiniteModel(f"training diverged ({exc}); batch rolled back") from exc
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # divergence is handled below
                for done in range(1, batch.epochs + 1):
                    sub.run_epoch(done - 1, self.config.num_threads)
                    # LightFM's own check after each epoch; all the arrays after the last
                    bad = sub.non_finite() if done == batch.epochs else sub.check_epoch()
                    if bad:
                        raise NonFiniteModel(f"training made {bad} non-finite; batch rolled back")
                    on_epoch(done)
        except BaseException:
            sub.rollback()
            raise
        return sub.commit()


def resized(array: np.ndarray, used: int, capacity: int) -> np.ndarray:
    """``array`` with ``capacity`` rows: the first ``used`` kept, the rest zero (``array``
    itself if it has ``capacity`` rows already). Per-row counts follow the arrays' growth
    with it too."""
    if len(array) == capacity:
        return array
    grown = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[:used] = array[:used]
    return grown


def _each_epoch_once(on_epoch: Callable[[int], None] | None) -> Callable[[int], None]:
    """``on_epoch`` called once per epoch, even if a fit runs again after a fallback."""
    reported = 0

    def report(done: int) -> None:
        nonlocal reported
        if done > reported and on_epoch is not None:
            on_epoch(done)
        reported = max(reported, done)

    return report
