"""A LightFM model that takes new users and items at any time, trained in micro-batches.

:class:`IncrementalModel` composes the parts: the id maps, the fitter that owns the twelve
LightFM arrays (:mod:`models.fitter`), the dedupe memory (:mod:`models.dedupe`),
popularity (:mod:`models.popularity`), consolidation (:mod:`models.consolidation`) and
the record of what the next delta carries (:mod:`models.changes`).

Training semantics of :meth:`IncrementalModel.train_batch`:

* events whose ``event_id`` was seen in this batch or in the last ``dedupe_memory``
  applied events are dropped as duplicates (Kafka redelivery);
* every new event registers its user and item and counts towards popularity, whatever
  its rating;
* if a user rated the same item twice in one batch, the latest rating (by ``ts``) counts;
* ratings >= ``positive_threshold`` are trained as positives. For the ranking losses
  (warp, bpr, warp-kos) only positives are trained; for ``logistic`` the others are
  trained as negatives (label -1), which is what that loss is for;
* a batch that makes any parameter non-finite is rolled back completely (arrays, ids)
  and raises :class:`NonFiniteModel`; nothing non-finite is ever published;
* every applied event joins the consolidation window (:mod:`models.consolidation`); a
  streaming batch (no ``epochs`` override) after which ``consolidate_every`` events have
  been applied since the last consolidation ends with :meth:`IncrementalModel.consolidate`;
* with :attr:`IncrementalModel.defer_consolidation` that batch only cuts a
  :class:`~models.consolidation.Consolidation` (the window's interactions and copies of the
  rows they train): its ``run`` retrains on a :class:`~models.fitter.Fitter` of its own, in
  any thread, while batches go on training (each is kept in its ``tail``, with copies of
  its rows the consolidation does not hold); :meth:`IncrementalModel.install` replays the
  tail onto it and writes its rows back.
  Replaying a batch exactly (same rows initialised from the same seeds, the same fit) makes
  the result bit-identical to consolidating inline (one thread) when no mark is crossed
  before the install; marks crossed meanwhile cut nothing (the next cut follows the install).

Known limitation: WARP/BPR only know this batch's positives when sampling negatives, so an
item a user liked in an earlier batch can be drawn as a negative for them (rarely: about
positives/items per sample). Consolidation trains on the whole window at once, so there
every positive of the window is known.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
from lightfm import LightFM

from models.changes import ChangeLog
from models.config import ModelConfig
from models.consolidation import Consolidation as Consolidation  # re-exported: agents use it
from models.consolidation import InteractionWindow, blend_neighbours, copy_rows
from models.dedupe import RecentEventIds
from models.delta import FRESH, DeltaError, ModelDelta
from models.events import MAX_FUTURE_SKEW_SECONDS, Rating, latest_event_time
from models.fitter import STATE_ARRAYS, FitBatch, Fitter, resized, training_pairs
from models.fitter import NonFiniteModel as NonFiniteModel  # re-exported: agents catch it
from models.idmap import IdMap
from models.manifest import ChainMark, Manifest
from models.popularity import Popularity
from models.rating_columns import RatingColumns
from models.scoring import ScoringView
from models.segment import ITEM_ARRAYS, USER_ARRAYS, ChainHead, Segment, carried
from models.signing import Keyring
from models.snapshot import EVENT_COUNTS, SnapshotState, decode, encode


@dataclass
class _CheckpointRecord:
    """What the next checkpoint segment carries: the rows changed since its parent (the
    version and sizes ``changes.base``), the parent's trained events (where the FIFOs'
    tails start) and neighbours (replaced since?), and the popularity decays since."""

    changes: ChangeLog
    events: int
    neighbours: sp.csr_matrix | None
    decays: list[float] = field(default_factory=list)

    def then(self, later: _CheckpointRecord, n_users: int, n_items: int) -> _CheckpointRecord:
        """This record (of a cut that was not written) followed by ``later`` (the record
        since that cut): what a segment continuing this one's parent carries."""
        users, items, _ = later.changes.rows(n_users, n_items)
        self.changes.touched(users, items)
        self.decays += later.decays
        return self


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one :meth:`IncrementalModel.train_batch` call did."""

    version: int  # model version after the batch (unchanged if nothing new arrived)
    events: int  # events passed in
    duplicates: int  # dropped: event_id already seen
    applied: int  # new events (registered ids, counted in popularity)
    positives: int  # interactions trained as positives
    negatives: int  # interactions trained as negatives (logistic loss only)
    new_users: int
    new_items: int
    n_users: int
    n_items: int
    seconds: float
    consolidated: bool = False  # the batch ended with a consolidation (retrain on the window)


class IncrementalModel:
    """Growable LightFM with micro-batch training, snapshots and immutable scoring views.

    Not thread-safe: one trainer thread calls :meth:`train_batch`; other threads score
    with views obtained from :meth:`view`.
    """

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.users = IdMap()
        self.items = IdMap()
        self.version = 0
        """Bumped by every batch that applied at least one new event. Only ever increase
        it by hand (e.g. to follow the latest version in a store)."""
        self.trained_events = 0
        """New (non-duplicate) events applied so far, positives or not."""
        self.offsets: dict[str, int] = {}
        """Next Kafka offset per ``"topic:partition"`` covered by this state (set by agents)."""
        self._recent = RecentEventIds(config.dedupe_memory)
        self._popularity = Popularity(config.popularity_half_life_seconds)
        self.clock: Callable[[], float] = time.time
        """The wall clock popularity's reference time is capped by (tests set their own)."""
        self.max_future_skew = MAX_FUTURE_SKEW_SECONDS
        """How far past :attr:`clock` an event time may count (the trainer sets its own)."""
        self._user_positives = np.zeros(0, dtype=np.int64)
        self._window = InteractionWindow(config.consolidation_window)
        self.since_consolidation = 0
        """Events applied since the last consolidation (or since the start)."""
        self._neighbours: sp.csr_matrix | None = None
        # Exact applied-event counts per user/item (any rating): what crash tests count.
        self._user_events = np.zeros(0, dtype=np.int64)
        self._item_events = np.zeros(0, dtype=np.int64)
        self.lineage = uuid.uuid4().hex
        """This run's delta lineage: every model object (fresh or restored) is a new one."""
        self.origin = FRESH
        """The snapshot version this run restored (:data:`models.delta.FRESH`: none)."""
        self.start: int | None = None
        """The base version of this run's first delta (None until one is taken)."""
        self.delta_offset: int | None = None
        """The delta topic's next offset after this run's last published delta (set by the
        trainer); snapshots record it so that scorers know where to read on."""
        self._changes = ChangeLog()  # what the next delta carries (see take_delta)
        # what the next segment carries (cut_checkpoint), since the last checkpoint cut
        self._since_checkpoint = _CheckpointRecord(ChangeLog(), 0, None)
        #: The last cut's version and the record it started over from, until the caller
        #: says whether it was written (:meth:`checkpoint_written`).
        self._unwritten: tuple[int, _CheckpointRecord] | None = None
        self.restored_chain: ChainHead | None = None
        """The stored checkpoint chain this model was restored from (set by
        ``agents.checkpoints``): the next segment may continue it."""
        self._view: ScoringView | None = None
        self.last_delta: ModelDelta | None = None
        """The delta that made the latest :meth:`view` from the one before (None if that
        view was built whole)."""
        self._fitter = Fitter(config)
        self.defer_consolidation = False
        """True: a due consolidation is cut (:meth:`take_consolidation`) for the caller to
        run in another thread and :meth:`install`, instead of running inside the batch."""
        self._job: Consolidation | None = None  # cut and not yet installed (or dropped)
        self._job_taken = False

    # --- sizes -------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def capacity(self) -> tuple[int, int]:
        """Allocated (user rows, item rows)."""
        return self._fitter.capacity

    @property
    def _lfm(self) -> LightFM:
        """The LightFM instance that holds (and trains) the twelve arrays."""
        return self._fitter.lfm

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Read-only views of the used rows of the twelve arrays (tests, snapshots)."""
        out = {}
        for name in STATE_ARRAYS:
            view = getattr(self._lfm, name)[: self.n_users if name[0] == "u" else self.n_items]
            view = view.view()
            view.flags.writeable = False
            out[name] = view
        return out

    # --- training ----------------------------------------------------------------------
    def train_batch(
        self,
        events: Sequence[Rating] | RatingColumns,
        *,
        epochs: int | None = None,
        on_epoch: Callable[[int], None] | None = None,
    ) -> BatchResult:
        """Apply one micro-batch (see the module docstring). Blocking and CPU-bound;
        LightFM's Cython training releases the GIL, so call it via ``asyncio.to_thread``.

        ``epochs`` overrides ``config.epochs_per_batch`` (the offline job trains one big
        batch for N epochs, and such a batch never triggers a consolidation: it is one);
        ``on_epoch(done)`` is called after each epoch (progress bars). ``events`` may be
        :class:`~models.rating_columns.RatingColumns` (the trainer's decoded batches): then
        no Python object per rating is built.
        """
        started = time.perf_counter()
        streaming = epochs is None
        epochs = self.config.epochs_per_batch if epochs is None else epochs
        if epochs < 1:
            raise ValueError("epochs must be >= 1")
        batch_in = RatingColumns.of(events)
        keep, duplicates = self._recent.fresh_indices(batch_in.event_ids)
        fresh = batch_in if keep is None else batch_in.take(keep)
        if not len(fresh):
            return self._result(events, duplicates, fresh, 0, 0, 0, 0, started)

        version = self.version + 1
        n_users0, n_items0 = self.n_users, self.n_items
        user_idx = self.users.add_many(fresh.users)
        item_idx = self.items.add_many(fresh.items)
        ratings, stamps = fresh.ratings, fresh.stamps
        try:
            self._fitter.grow(version, n_users0, n_items0, self.n_users, self.n_items)
            self._resize_counts(n_users0, n_items0)
            rows, cols, labels, weights = training_pairs(
                self.config, user_idx, item_idx, ratings, stamps, self.n_items
            )
            batch = FitBatch(
                version, n_users0, n_items0, self.n_users, self.n_items, rows, cols, labels,
                weights, epochs,
            )  # fmt: skip
            changed_items = np.zeros(0, dtype=np.int64)
            # a consolidation running keeps the rows this batch trains as they were
            captured = None if self._job is None else self._job.capture(self._lfm, rows, n_users0)
            if len(rows):
                changed_items = self._fitter.fit(batch, on_epoch)
        except BaseException:
            self.users.truncate(n_users0)
            self.items.truncate(n_items0)
            raise

        positive = labels > 0
        np.add.at(self._user_positives, rows[positive], 1)
        np.add.at(self._user_events, user_idx, 1)
        np.add.at(self._item_events, item_idx, 1)
        self._count_popularity(item_idx, stamps)
        touched_users = self._trained_user_rows(rows, n_users0)
        self._changes.touched(touched_users, changed_items, item_idx)
        # every event's user and item: their event counts changed, trained or not
        self._since_checkpoint.changes.touched(touched_users, changed_items)
        self._since_checkpoint.changes.touched(user_idx, item_idx)
        self._recent.remember_ids(fresh.event_ids)
        self._window.append(user_idx, item_idx, ratings, stamps)
        self.version = version
        self.trained_events += len(fresh)
        if self._job is not None and captured is not None:  # a consolidation is running:
            self._job.follow(batch, captured)  # it replays this batch
        consolidated = False
        if streaming:
            self.since_consolidation += len(fresh)
            if self.consolidation_due():
                if self.defer_consolidation:
                    self._cut()
                else:
                    consolidated = self.consolidate()
        else:
            self._refresh_neighbours(*self._window_interactions()[:3])
        return self._result(
            events,
            duplicates,
            fresh,
            int(positive.sum()),
            int((~positive).sum()),
            self.n_users - n_users0,
            self.n_items - n_items0,
            started,
            consolidated,
        )

    # --- consolidation -------------------------------------------------------------------
    @property
    def window_size(self) -> int:
        """Events in the consolidation window."""
        return len(self._window)

    def consolidation_due(self) -> bool:
        """``consolidate_every`` streamed events since the last consolidation, and a window
        that holds the whole history or is full. (A model restored from a snapshot without
        a window must not be retrained on its few newest events alone.) Never while a
        deferred consolidation is outstanding."""
        every, window = self.config.consolidate_every, self._window
        return (
            every > 0
            and window.capacity > 0
            and self._job is None
            and self.since_consolidation >= every
            and len(window) >= min(window.capacity, self.trained_events)
        )

    def consolidate(self, epochs: int | None = None) -> bool:
        """Retrain the window's rows on the window for ``epochs`` (default
        ``consolidate_epochs``) and write them back: the rows of the users the window trains
        and of the items, the window's warm-started from their current values
        (:func:`~models.consolidation.warm_start`), trained on all the window's interactions
        at once, as one batch fit (:class:`~models.consolidation.Consolidation`). Users
        outside the window keep their rows exactly; the next delta carries only the rows
        whose values changed. Ids, popularity, positives counts, dedupe memory and the
        version are unchanged.

        Returns False, leaving the model as it was, if the window is empty or the retrain
        went non-finite. Blocking and CPU-bound, like :meth:`train_batch`. (A deferred
        consolidation still outstanding is dropped: this one replaces it.)
        """
        job = self._cut(epochs)
        if job is None:
            return False
        job.run()
        return self.install(job)

    def take_consolidation(self) -> Consolidation | None:
        """With :attr:`defer_consolidation`: the consolidation a batch cut, once (None if
        none). Run :meth:`Consolidation.run` in any thread while batches go on training,
        then :meth:`install` it from the training thread."""
        if self._job is None or self._job_taken:
            return None
        self._job_taken = True
        return self._job

    def cut_consolidation(self) -> Consolidation | None:
        """Cut a consolidation now if one is due (e.g. no batch arrived since one was
        installed with a long tail), for :meth:`take_consolidation`."""
        if self.consolidation_due():
            self._cut()
        return self.take_consolidation()

    def install(self, job: Consolidation) -> bool:
        """Swap in a finished consolidation, first replaying onto it the batches trained
        since it was cut (the ones its :meth:`Consolidation.run` has not replayed yet), in
        this thread. The state is then exactly what consolidating inside the cutting batch
        would have given (one thread). False (nothing changes) if the retrain went
        non-finite or ``job`` is not the outstanding one."""
        if job is not self._job:
            return False
        self._job = None
        if job.fitter is None:  # non-finite (or never run)
            return False
        job.replay()
        # Only the rows it trained are written back, and the next delta carries only those
        # whose values changed; every other row, and the positives counts, stay as they are.
        users, items = job.write_into(self._lfm)
        self._changes.touched(users, items)
        self._since_checkpoint.changes.touched(users, items)
        if job.neighbours is not None:
            self._neighbours = job.neighbours
        return True

    def _cut(self, epochs: int | None = None) -> Consolidation | None:
        """The consolidation of the window as it is now (None if the window is empty)."""
        self.since_consolidation = 0
        self._job = None
        if not len(self._window):
            return None
        rows, cols, labels, weights = self._window_interactions()
        epochs = self.config.consolidate_epochs if epochs is None else epochs
        users, own = np.unique(rows, return_inverse=True)  # the window's users, as own rows
        retrain = FitBatch(
            self.version, len(users), self.n_items, len(users), self.n_items,
            own.astype(np.int32), cols, labels, weights, epochs,
        )  # fmt: skip
        start = copy_rows(self._lfm, "user", users) | copy_rows(
            self._lfm, "item", slice(0, self.n_items)
        )
        self._job = Consolidation(self.config, retrain, users.astype(np.int64), start)
        self._job_taken = False
        return self._job

    @property
    def consolidation_pending(self) -> bool:
        """A consolidation was cut and is not installed yet."""
        return self._job is not None

    def _window_interactions(
        self,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """:func:`~models.fitter.training_pairs` of the whole window (the latest rating of a
        pair counts)."""
        window = self._window.arrays()
        return training_pairs(
            self.config,
            window["users"].astype(np.int64),
            window["items"].astype(np.int64),
            window["ratings"].astype(np.float64),
            window["stamps"],
            self.n_items,
        )

    def _refresh_neighbours(self, rows: np.ndarray, cols: np.ndarray, labels: np.ndarray) -> None:
        """Rebuild the item-kNN neighbours for blending from these interactions' positives."""
        neighbours = blend_neighbours(self.config, rows, cols, labels, self.n_users, self.n_items)
        if neighbours is not None:
            self._neighbours = neighbours

    def _trained_user_rows(self, rows: np.ndarray, n_users0: int) -> np.ndarray:
        """User rows a fit may have changed (all of them under user regularisation)."""
        if self.config.user_alpha > 0:
            return np.arange(n_users0)
        return rows.astype(np.int64)

    def _resize_counts(self, n_users0: int, n_items0: int) -> None:
        """The per-row counts follow the arrays' capacity (after growth)."""
        users, items = self.capacity
        self._user_positives = resized(self._user_positives, n_users0, users)
        self._popularity.counts = resized(self._popularity.counts, n_items0, items)
        self._user_events = resized(self._user_events, n_users0, users)
        self._item_events = resized(self._item_events, n_items0, items)

    def _count_popularity(self, items: np.ndarray, stamps: np.ndarray) -> None:
        """Count events in :class:`~models.popularity.Popularity` as of the clock's
        :meth:`event_time_ceiling`, and follow its decay for the next delta: the delta's
        decay factor stays in (0, 1]. A gap so long that the factor would underflow (about
        1,000 half-lives: 20 years at 7 days) decays the counts exactly (to 0, as they are)
        and the next delta carries every item's count instead of the factor."""
        n_items = self.n_items
        factor = self._popularity.add(items, stamps, self.event_time_ceiling(), n_items)
        self._changes.decayed(factor, n_items)
        if factor != 1.0:  # a segment replays the decays (models.segment)
            self._since_checkpoint.decays.append(factor)

    def event_time_ceiling(self) -> float:
        """The latest event time popularity counts by: :attr:`clock` plus
        :attr:`max_future_skew` (the trainer dead-letters ratings stamped past that
        anyway; this keeps any other path, e.g. a file, from freezing popularity)."""
        return latest_event_time(self.clock(), self.max_future_skew)

    def _result(
        self,
        events: Sequence[Rating],
        duplicates: int,
        fresh: Sequence[Rating],
        positives: int,
        negatives: int,
        new_users: int,
        new_items: int,
        started: float,
        consolidated: bool = False,
    ) -> BatchResult:
        return BatchResult(
            version=self.version,
            events=len(events),
            duplicates=duplicates,
            applied=len(fresh),
            positives=positives,
            negatives=negatives,
            new_users=new_users,
            new_items=new_items,
            n_users=self.n_users,
            n_items=self.n_items,
            seconds=time.perf_counter() - started,
            consolidated=consolidated,
        )

    def event_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Applied (non-duplicate) events so far per user id and per item id, exactly."""
        users = dict(zip(self.users.ids(), self._user_events[: self.n_users].tolist(), strict=True))
        items = dict(zip(self.items.ids(), self._item_events[: self.n_items].tolist(), strict=True))
        return users, items

    # --- scoring and deltas -----------------------------------------------------------
    def take_delta(self) -> ModelDelta:
        """The rows changed since the previous delta (or since construction/restore), as a
        :class:`ModelDelta` from that version to this one. O(rows touched), plus the item
        arrays' changed rows. Resets the record of changes."""
        base_version, base_users, base_items = self._changes.base
        n_users, n_items = self.n_users, self.n_items
        users, items, popular = self._changes.rows(n_users, n_items)
        lfm = self._lfm
        if self.start is None:
            self.start = base_version
        delta = ModelDelta(
            lineage=self.lineage,
            origin=self.origin,
            start=self.start,
            base_version=base_version,
            version=self.version,
            n_users=n_users,
            n_items=n_items,
            trained_events=self.trained_events,
            new_user_ids=self.users.ids(n_users, start=base_users),
            new_item_ids=self.items.ids(n_items, start=base_items),
            user_rows=users,
            user_embeddings=lfm.user_embeddings[users],
            user_biases=lfm.user_biases[users],
            user_positives=self._user_positives[users],
            item_rows=items,
            item_embeddings=lfm.item_embeddings[items],
            item_biases=lfm.item_biases[items],
            popularity_rows=popular,
            popularity_values=self._popularity.counts[popular],
            popularity_decay=self._changes.decay,
            popularity_ts=self._popularity.ts,
        )
        self._reset_changes()
        return delta

    def _reset_changes(self) -> None:
        self._changes.reset(self.version, self.n_users, self.n_items)

    def _chain(self) -> ChainMark | None:
        """Where this state sits in its delta chain, for snapshots: None while rows changed
        that no delta has carried yet (scorers then cannot continue from it by deltas)."""
        if self._rows_dirty():
            return None
        return {"lineage": self.lineage, "version": self.chain_version, "offset": self.delta_offset}

    @property
    def chain_version(self) -> int:
        """The version the last delta taken made (the next one applies to it)."""
        return self._changes.base[0]

    def view(self) -> ScoringView:
        """An immutable scoring view of the current state; safe to use while training
        continues. Costs O(rows changed since the previous view): the previous view with
        :meth:`take_delta` applied (copy-on-write), which :attr:`last_delta` keeps."""
        previous = self._view
        if previous is not None and previous.version == self.version and not self._changed():
            return previous
        # A first view after only a hand-set version (a restore that follows the store's
        # newest version) takes no delta: the run's first delta then starts at its origin.
        wanted = self._changed() and (previous is not None or self._rows_dirty())
        delta = self.take_delta() if wanted else None
        if previous is not None and delta is not None and previous.version == delta.base_version:
            try:
                self._view = previous.with_delta(delta)
            except DeltaError:  # a bug, never expected: serve a whole view, and have the
                # scorers load the snapshot the trainer writes at once for a marker
                self._view, delta = self.full_view(), delta.as_marker()
        else:  # the first view (or one after take_delta was called directly): build whole
            self._view = self.full_view()
        if self._neighbours is not None and not self._view.blends_with(self._neighbours):
            # rebuilt by a consolidation or an offline batch (deltas carry rows only)
            self._view = self._view.with_neighbours(self._neighbours, self.config.blend_weight)
            if delta is not None:  # scorers get the new neighbours from a snapshot
                delta = replace(delta, replaces_neighbours=True)
        self.last_delta = delta
        return self._view

    def _rows_dirty(self) -> bool:
        """Rows changed that no delta has carried yet."""
        return self._changes.rows_dirty(self.n_users, self.n_items)

    def _changed(self) -> bool:
        return self._rows_dirty() or self._changes.base[0] != self.version

    def full_view(self) -> ScoringView:
        """A view built from all rows (O(model)); :meth:`view` is the incremental one."""
        lfm = self._lfm
        return ScoringView.from_arrays(
            version=self.version,
            users=self.users,
            items=self.items,
            arrays={
                "user_embeddings": lfm.user_embeddings,
                "user_biases": lfm.user_biases,
                "user_positives": self._user_positives,
                "item_embeddings": lfm.item_embeddings,
                "item_biases": lfm.item_biases,
                "popularity": self._popularity.counts,
            },
            popularity_ts=self._popularity.ts,
            neighbours=self._neighbours,  # immutable, replaced whole: shared, not copied
            blend_weight=self.config.blend_weight,
        )

    # --- snapshots and checkpoints ------------------------------------------------------
    def to_bytes(self) -> tuple[bytes, Manifest]:
        """``(payload, manifest)``: the full training state as .npz + JSON manifest."""
        return encode(self.snapshot_state())

    def snapshot_state(self, *, copy: bool = False) -> SnapshotState:
        """The full training state (``copy``: arrays the model never writes again, so that
        it can be encoded while training goes on)."""
        arrays = dict(self.state_arrays())
        arrays["popularity"] = self._popularity.counts[: self.n_items]
        arrays["user_positives"] = self._user_positives[: self.n_users]
        arrays["user_events"] = self._user_events[: self.n_users]
        arrays["item_events"] = self._item_events[: self.n_items]
        if copy:
            arrays = {name: np.array(array) for name, array in arrays.items()}
        return SnapshotState(
            config=self.config,
            version=self.version,
            trained_events=self.trained_events,
            offsets=dict(self.offsets),
            popularity_ts=self._popularity.ts,
            user_ids=self.users.ids(),
            item_ids=self.items.ids(),
            recent_event_ids=self._recent.ids(),
            arrays=arrays,
            window=self._window.arrays(),  # never written in place: appends make new chunks
            since_consolidation=self._since_consolidation_saved(),
            neighbours=self._neighbours,
            chain=self._chain(),
        )

    def _since_consolidation_saved(self) -> int:
        """A consolidation cut but not installed is not in a saved state: the restored model
        consolidates at its first streamed batch instead."""
        if self._job is not None:
            return max(self.since_consolidation, self.config.consolidate_every)
        return self.since_consolidation

    @property
    def checkpoint_parent(self) -> int:
        """The version the next segment continues (the last checkpoint's or restore's)."""
        return self._since_checkpoint.changes.base[0]

    def checkpoint_written(self, version: int | None) -> None:
        """The newest checkpoint written is ``version`` (None: none yet). If the last cut
        is not it, that cut was not written (a failed write): its record of changes is
        merged back, so that the next segment continues the newest written checkpoint and
        carries both cuts' rows. Call it before :attr:`checkpoint_parent` and
        :meth:`cut_checkpoint` (which otherwise take the last cut as written)."""
        if self._unwritten is None:
            return
        (cut, record), self._unwritten = self._unwritten, None
        if cut != version:
            self._since_checkpoint = record.then(self._since_checkpoint, self.n_users, self.n_items)

    def cut_checkpoint(self, *, segment: bool, max_rows: float = 0.5) -> SnapshotState | Segment:
        """The next checkpoint, cut in O(rows changed) (a copy of them), for encoding in
        another thread: a :class:`~models.segment.Segment` of the rows changed since
        :attr:`checkpoint_parent` if ``segment`` and at most ``max_rows`` of all rows
        changed, else the whole state (copied). Starts the record of changes over."""
        n_users, n_items = self.n_users, self.n_items
        record = self._since_checkpoint
        users, items, _ = record.changes.rows(n_users, n_items)
        parent, parent_users, parent_items = record.changes.base
        events0, neighbours0 = record.events, record.neighbours
        cut: SnapshotState | Segment
        if not segment or len(users) + len(items) > max_rows * max(1, n_users + n_items):
            cut = self.snapshot_state(copy=True)
        else:
            lfm, appended = self._lfm, self.trained_events - events0
            counts = {"user_positives": self._user_positives, "user_events": self._user_events}
            counts["item_events"] = self._item_events
            rows = {}
            for name in (*USER_ARRAYS, *ITEM_ARRAYS):
                source = counts[name] if name in counts else getattr(lfm, name)
                rows[name] = source[users if name.startswith("user") else items]
            cut = Segment(
                config=self.config,
                version=self.version,
                parent=parent,
                trained_events=self.trained_events,
                offsets=dict(self.offsets),
                popularity_ts=self._popularity.ts,
                n_users=n_users,
                n_items=n_items,
                new_user_ids=self.users.ids(n_users, start=parent_users),
                new_item_ids=self.items.ids(n_items, start=parent_items),
                user_rows=users,
                item_rows=items,
                rows=carried(self.config, rows),
                popularity=self._popularity.counts[items],
                popularity_decays=np.array(record.decays, dtype=np.float64),
                recent_tail=self._recent.newest(appended),
                recent_size=len(self._recent),
                window_tail=self._window.newest(appended),
                window_size=len(self._window),
                since_consolidation=self._since_consolidation_saved(),
                neighbours=None if self._neighbours is neighbours0 else self._neighbours,
                chain=self._chain(),
            )
        self._reset_checkpoint()
        self._unwritten = (self.version, record)
        return cut

    def _reset_checkpoint(self) -> None:
        changes = ChangeLog()
        changes.reset(self.version, self.n_users, self.n_items)
        self._since_checkpoint = _CheckpointRecord(changes, self.trained_events, self._neighbours)

    @classmethod
    def from_bytes(
        cls, payload: bytes, manifest: Mapping[str, Any], keys: Keyring | None = None
    ) -> IncrementalModel:
        """Rebuild a model from :meth:`to_bytes`; raises ``SnapshotError`` on anything wrong
        (with ``keys``: also on a manifest not signed by one of them)."""
        return cls.from_state(decode(payload, manifest, keys))

    @classmethod
    def from_state(cls, state: SnapshotState) -> IncrementalModel:
        """A model continuing ``state`` (decoded, or assembled from a checkpoint chain)."""
        model = cls(state.config)
        model.users = IdMap(state.user_ids)
        model.items = IdMap(state.item_ids)
        model.version = state.version
        model.trained_events = state.trained_events
        model.offsets = dict(state.offsets)
        # A reference time past the clock (a state poisoned by a far-future ts before the
        # event-time rule) would weigh every later rating 0: it restarts at the ceiling.
        ts = state.popularity_ts
        model._popularity.ts = ts if ts is None else min(ts, model.event_time_ceiling())
        model._recent = RecentEventIds(model.config.dedupe_memory, state.recent_event_ids)
        model._window = InteractionWindow.from_arrays(
            model.config.consolidation_window, state.window
        )
        model.since_consolidation = state.since_consolidation
        model._neighbours = state.neighbours
        model._fitter.load(state.arrays, model.n_users, model.n_items)
        model._popularity.counts = np.zeros(len(model._lfm.item_biases), dtype=np.float64)
        model._popularity.counts[: model.n_items] = state.arrays["popularity"]
        model._user_positives = np.zeros(len(model._lfm.user_biases), dtype=np.int64)
        model._user_positives[: model.n_users] = state.arrays["user_positives"]
        for name in EVENT_COUNTS:  # absent in snapshots older than the counts: start at 0
            side = name.partition("_")[0]
            counts = np.zeros(len(getattr(model._lfm, f"{side}_biases")), dtype=np.int64)
            if name in state.arrays:
                counts[: len(state.arrays[name])] = state.arrays[name]
            setattr(model, f"_{name}", counts)
        model.origin = state.version
        model._reset_changes()
        model._reset_checkpoint()
        return model
