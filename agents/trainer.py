"""The trainer agent: ratings read from Kafka in bulk → ``fit_partial`` off the loop → views,
dead letters, snapshots.

The trainer is the one role that sees every rating, so it is also the one place ratings are
validated: every invalid rating goes to ``ratings-dlq`` (with its reason) exactly once, and
every valid one is trained exactly once, whatever other roles run.

Reading: an aiokafka consumer in the trainer's own group (``app/`` creates it inside the
Faust app) is drained with ``getmany``: a batch is whatever is available, up to
``batch_max``, with no waiting window (a lone rating reaches ``fit_partial`` as soon as it
is fetched). One batch is decoded and trained in a worker thread while the next is fetched.

Exactly once, without Kafka transactions: the snapshot is the commit.

* Every snapshot records the next offset per ``ratings`` partition it covers. On every
  assignment the consumer seeks to the trained model's offsets (a restarted trainer: the
  restored snapshot's), so a SIGKILL loses no training and trains nothing twice; events
  below those offsets that still arrive are skipped. The group's committed offsets are
  written only after a covering snapshot and are for monitoring (lag), never read back.
* Dead letters are sent to the DLQ partition of the same number as their source partition,
  one atomic record batch per partition and trained batch, in offset order, *before* the
  batch's offsets move. So the newest dead letter of DLQ partition *p* names the highest
  source offset of partition *p* already dead-lettered (its ``streamrec.dlq.offset``
  header), and everything below it was dead-lettered too. A restarted trainer reads those
  tails (:func:`agents.kafka.dead_letter_marks`) and does not dead-letter those again.
* Duplicate ``event_id`` s (a producer retry) are dropped by the model itself.

There is exactly one trainer per deployment (LightFM trains on one node). Decoding is
:mod:`agents.decoded_batch`'s; when to snapshot :mod:`agents.snapshot_schedule`'s, writing
one :mod:`agents.snapshot_writer`'s; consolidations run in :mod:`agents.consolidation`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from agents import metrics
from agents.checkpoints import restore_version
from agents.consolidation import ConsolidationRunner
from agents.decoded_batch import DecodedBatch, offset_key
from agents.deltas import DeltaPublisher
from agents.errors import is_refusal
from agents.ports import Message, Sink, SnapshotStore
from agents.resync import ANSWER_EVERY
from agents.snapshot_schedule import SnapshotSchedule
from agents.snapshot_writer import CheckpointCut, SnapshotWriter
from agents.state import ModelHolder
from agents.status import ModelStatus
from models.bounds import Capacity
from models.config import ModelConfig
from models.evaluation import positive_hits
from models.events import MAX_FUTURE_SKEW_SECONDS, Rating
from models.incremental import BatchResult, IncrementalModel, NonFiniteModel
from models.rating_columns import RatingColumns
from models.scoring import ScoringView
from models.signing import Keyring
from models.snapshot import UntrustedSnapshot
from models.wire import DeadLetter, SnapshotRequest

log = logging.getLogger(__name__)

COMMIT_TIMEOUT = 30.0
"""How long the trainer waits for the group to take a snapshot's offsets."""

#: Positives of one batch scored for the prequential hit-rate (a sample, so the test step
#: costs the same for a batch of 20 and of 20,000).
EVAL_SAMPLE = 64


def hit_rate_before_training(
    view: ScoringView | None,
    ratings: Sequence[Rating],
    config: ModelConfig,
    k: int,
    sample: int = EVAL_SAMPLE,
) -> float | None:
    """Prequential (test-then-train) hit-rate@k of this batch's positives under ``view``.

    Counted as the offline evaluator counts (:func:`models.evaluation.positive_hits`), except
    that seen items are not excluded (the trainer keeps no per-user history), over an even
    sample of at most ``sample`` of the batch's positives.
    """
    if view is None:
        return None
    columns = RatingColumns.of(ratings)
    positives = np.flatnonzero(columns.ratings >= config.positive_threshold)
    step = max(1, -(-len(positives) // sample))
    trials = columns.take(positives[::step])  # a Rating built for the sample alone
    marks = positive_hits(view, trials, threshold=config.positive_threshold, k=k)
    return sum(hit for hit, _ in marks) / len(marks) if marks else None


async def restore_model(
    store: SnapshotStore,
    config: ModelConfig,
    holder: ModelHolder | None = None,
    keys: Keyring | None = None,
) -> IncrementalModel:
    """The store's current snapshot (the newest if none is promoted), or a fresh model.

    Restoring *current* makes ``streamrec models rollback`` + a trainer restart roll training
    back too: state and covered offsets move together, so the events after the rolled-back
    snapshot are trained again, once. New versions continue after the newest in the store,
    which is write-once.

    A snapshot that is refused (corrupt payload, bad manifest, not a snapshot at all) is
    logged, counted and recorded in ``holder`` (``/model/`` shows it), and the newest good
    one is restored instead, so a bad write never makes the trainer crash-loop. If snapshots
    exist but every one is refused, it stops with that error rather than start from nothing.
    With ``keys``, a snapshot not signed by one of them is refused like a corrupt one.
    """
    latest = await store.latest()
    current = await store.current()
    if latest is None and current is None:
        log.info("No snapshot in the store: starting a fresh model")
        return IncrementalModel(config)
    complete = sorted((i.version for i in await store.list() if i.complete), reverse=True)
    candidates = ([current] if current is not None else []) + [v for v in complete if v != current]
    refused: list[str] = []
    for version in candidates:
        try:
            model, _ = await restore_version(store, version, keys)
        except Exception as exc:
            if not is_refusal(exc):
                raise
            reason = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, UntrustedSnapshot):
                metrics.MODEL_REFUSED.labels("snapshot", exc.kind).inc()
            refused.append(f"v{version} ({reason})")
            metrics.MODEL_LOADS.labels("refused").inc()
            if holder is not None:
                holder.refuse(version, reason)
            log.error("Refused snapshot v%d on restore: %s", version, reason)
            continue
        break
    else:
        raise RuntimeError(f"every snapshot in the store was refused: {'; '.join(refused)}")
    if refused:
        log.warning("Falling back to snapshot v%d, the newest good one", version)
    model.version = max(model.version, latest or 0, *complete)
    log.info(
        "Restored snapshot v%d: %d users, %d items, %d trained events, offsets %s",
        version,
        model.n_users,
        model.n_items,
        model.trained_events,
        model.offsets,
    )
    return model


class RatingsConsumer(Protocol):
    """What the trainer needs of its consumer (``aiokafka.AIOKafkaConsumer``)."""

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Mapping[TopicPartition, Sequence[Message]]: ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    async def seek_to_beginning(self, *partitions: TopicPartition) -> bool: ...

    def assignment(self) -> set[TopicPartition]: ...


class DeadLetterSink(Protocol):
    """Where dead letters go (:class:`agents.kafka.DeadLetterQueue`): returns once all of
    ``letters`` are acknowledged, each on the DLQ partition numbered as its source's."""

    async def send(self, letters: Sequence[DeadLetter]) -> None: ...


@dataclass
class Trainer:
    """The one trainer: micro-batches in fetch order, dead letters, offsets and status;
    snapshots (:mod:`agents.snapshot_writer`, :mod:`agents.snapshot_schedule`) and
    consolidations (:mod:`agents.consolidation`) are delegated. Kafka clients are passed in
    by ``app/``."""

    model: IncrementalModel
    holder: ModelHolder
    store: SnapshotStore
    updates: Sink  # model-updates
    dead_letters: DeadLetterSink  # ratings-dlq
    max_bytes: int
    snapshot_every_batches: int
    snapshot_every_seconds: float
    #: The highest source offset per ratings partition already in the DLQ (read at start).
    dead_lettered: dict[int, int] = field(default_factory=dict)
    eval_k: int = 10
    deltas: DeltaPublisher | None = None  # model-deltas (None: scorers follow snapshots only)
    capacity: Capacity = field(default_factory=Capacity)  # the most users and items
    keys: Keyring = field(default_factory=Keyring.dev, repr=False)
    """Signs snapshot manifests and announcements (deltas: ``deltas.keys``)."""
    #: Set before the consumer subscribes: the rebalance callbacks seek it.
    consumer: RatingsConsumer | None = None
    #: How far past its record's timestamp a rating's ``ts`` may be (else ``ts_in_future``).
    max_future_skew: float = MAX_FUTURE_SKEW_SECONDS
    #: At most one snapshot per this many seconds for scorers' requests (agents.resync).
    answer_every: float = ANSWER_EVERY
    #: Checkpoints (agents.snapshot_writer): at most this many segments (the rows changed
    #: since the previous checkpoint) follow a full snapshot (0: every one is full), and
    #: only while their bytes are at most ``checkpoint_chain_fraction`` of its; after a full
    #: one, versions older than the ``checkpoint_keep_bases`` newest full ones are pruned
    #: (0: none).
    checkpoint_segments: int = 0
    checkpoint_chain_fraction: float = 0.5
    checkpoint_keep_bases: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)
    _in_flight: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    #: The batch before the newest, if still running.
    _in_flight_before: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _stopping: bool = field(default=False, init=False, repr=False)
    _full_logged: bool = field(default=False, init=False, repr=False)  # capacity, logged once
    _schedule: SnapshotSchedule = field(init=False, repr=False)
    _snapshots: SnapshotWriter = field(init=False, repr=False)
    _consolidation: ConsolidationRunner = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Consolidations (a retrain on the whole window, seconds) run beside the batches
        # instead of inside one, and are installed when done (models.incremental).
        self.model.defer_consolidation = True
        self.model.max_future_skew = self.max_future_skew  # its popularity clock's ceiling
        # A restored model's first checkpoint is a segment continuing the restored chain.
        restored = self.model.restored_chain
        if restored is not None and restored.version != self.model.checkpoint_parent:
            restored = None
        self._schedule = SnapshotSchedule(
            self.model.version, dict(self.model.offsets), time.monotonic(), head=restored
        )
        self._snapshots = SnapshotWriter(
            self,
            self.store,
            self.updates,
            self.holder,
            self._schedule,
            self.checkpoint_keep_bases,
            self.checkpoint_segments,
            self.checkpoint_chain_fraction,
        )
        self._consolidation = ConsolidationRunner(self.model, self.tick_consolidation)
        if self.model.n_items:  # a fresh, empty model is not worth serving (health stays 503)
            self.holder.publish(self.model.view(), **self._info())

    # --- the fetch loop ----------------------------------------------------------------
    async def run(self, *, batch_max: int, poll_seconds: float) -> None:
        """Fetch what is available (up to ``batch_max``) while earlier batches decode and
        train: three stages, one batch in each (fetch on the loop, decode in one worker
        thread, train in another; ``fit_partial`` releases the GIL).

        ``getmany`` returns as soon as any rating is fetched, so batches grow with the rate
        and a lone rating is trained within a fetch round trip. Batches are trained (and
        dead-lettered) strictly in fetch order. Returns after :meth:`stop`; the caller then
        writes the final snapshot.
        """
        consumer = self.consumer
        assert consumer is not None, "attach the consumer before running"
        self._consolidation.attach(asyncio.get_running_loop())
        try:
            while not self._stopping:
                records = await consumer.getmany(
                    timeout_ms=int(poll_seconds * 1000), max_records=batch_max
                )
                messages = [m for batch in records.values() for m in batch]
                # Half a batch_max or more: fetched in bulk, i.e. ratings are waiting.
                self._consolidation.backlog = 2 * len(messages) >= batch_max
                await self._commit_snapshot_offsets()
                if not messages:
                    continue
                if self._in_flight_before is not None:  # two in flight: let the older end
                    # re-raises a failed batch: the worker crashes, loudly
                    task, self._in_flight_before = self._in_flight_before, None
                    await task
                self._in_flight_before = self._in_flight
                self._in_flight = asyncio.create_task(self._on_fetch(messages, self._in_flight))
            await self.wait_idle()
        finally:
            if self._in_flight is not None and not self._in_flight.done():
                await asyncio.shield(self._in_flight)

    def stop(self) -> None:
        """Make :meth:`run` return after the current fetch (a clean shutdown)."""
        self._stopping = self._consolidation.stopping = self._snapshots.stopping = True

    async def wait_idle(self) -> None:
        """Wait for the batches in flight (if any); re-raises a failure."""
        if self._in_flight is not None:
            task, self._in_flight, self._in_flight_before = self._in_flight, None, None
            await task  # the newest batch ends after every older one (it awaits them)

    async def _on_fetch(
        self, messages: Sequence[Message], previous: asyncio.Task[None] | None
    ) -> None:
        """Decode ``messages`` (while ``previous``, the batch fetched before, trains), then
        train them after it."""
        decoded = await asyncio.to_thread(
            DecodedBatch.of, messages, self.max_bytes, self.max_future_skew
        )
        if previous is not None:
            await previous  # in fetch order; a failure fails this batch too
        async with self._lock:
            batch = decoded.within(self.model, self.capacity)
            batch = batch.after(self.model.offsets, self.dead_lettered)
            await self.send_dead_letters(batch)
            await self.train_batch(batch)
        self._snapshots.start()

    # --- one batch -----------------------------------------------------------------------
    async def send_dead_letters(self, batch: DecodedBatch) -> None:
        """Dead-letter the batch's invalid ratings; must complete before its offsets move."""
        if not batch.dead_letters:
            return
        await self.dead_letters.send(batch.dead_letters)
        if not self._full_logged and any(d.kind == "capacity" for d in batch.dead_letters):
            self._full_logged = True  # one line, not one per rating
            log.warning(
                "The model is full (%s): ratings of new users or items are dead-lettered "
                "(kind capacity); known ones keep training",
                self.capacity,
            )
        for letter in batch.dead_letters:
            metrics.DEAD_LETTERS.labels(letter.topic, letter.kind).inc()
            if letter.offset > self.dead_lettered.get(letter.partition, -1):
                self.dead_lettered[letter.partition] = letter.offset
        metrics.SKIPPED_EVENTS.labels("invalid").inc(len(batch.dead_letters))

    async def train_batch(self, batch: DecodedBatch) -> BatchResult | None:
        """Train one decoded batch off the loop, move the offsets, publish the new view."""
        if batch.events:
            metrics.EVENTS_IN.labels(batch.topic).inc(batch.events)
        started = time.perf_counter()
        result = view = hit_rate = None
        if batch.ratings:
            try:
                result, hit_rate, view = await asyncio.to_thread(self._fit, batch.ratings)
            except NonFiniteModel as exc:
                # The model restored its pre-batch state; the events stay accounted for so a
                # poisoned batch is not retried forever. Nothing non-finite is published.
                log.error(
                    "Batch of %d ratings made the model non-finite; dropped: %s",
                    len(batch.ratings),
                    exc,
                )
                metrics.SKIPPED_EVENTS.labels("non_finite").inc(len(batch.ratings))
        offsets = self.model.offsets
        for key, next_offset in batch.next_offsets.items():
            if next_offset > offsets.get(key, 0):  # never backwards (a redelivered batch)
                offsets[key] = next_offset
        if result is None or view is None:
            return None
        seconds = time.perf_counter() - started
        self._schedule.trained()
        metrics.BATCH_SECONDS.observe(seconds)
        metrics.BATCH_SIZE.observe(len(batch.ratings))
        metrics.TRAINED_EVENTS.inc(result.applied)
        if result.duplicates:  # the dedupe memory dropped a redelivered rating
            metrics.SKIPPED_EVENTS.labels("duplicate").inc(result.duplicates)
        metrics.MODEL_VERSION.set(self.model.version)
        status = self._info()
        status["last_batch"] = {
            "events": batch.events,
            "applied": result.applied,
            "positives": result.positives,
            "duplicates": result.duplicates,
            "dead_letters": len(batch.dead_letters),
            "new_users": result.new_users,
            "new_items": result.new_items,
            "seconds": round(seconds, 4),
            "at": time.time(),
        }
        if hit_rate is not None:
            status["prequential_hit_rate"] = hit_rate
        self.holder.publish(view, **status)
        await self._publish_delta(view)
        return result

    async def _publish_delta(self, view: ScoringView) -> None:
        """Send this batch's delta to the scorers (:mod:`agents.deltas`); one too large for
        a message makes the next snapshot due at once."""
        if self.deltas is None:
            return
        published = await self.deltas.publish(self.model, view)
        if published is None:
            return
        self.holder.info["delta"] = published
        marker, neighbours = published["snapshot_needed"], published.get("neighbours_follow")
        if marker or neighbours:
            self.holder.info["snapshot_due"] = {
                "version": published["version"],
                "at": published.get("at", time.time()),
                "reason": "refused"
                if "refused" in published
                else "marker"
                if marker
                else "neighbours",
            }
            self._schedule.urge(published["version"])
            self._snapshots.soon()

    def snapshot_requested(self, request: SnapshotRequest) -> bool:
        """A scorer's delta chain broke (:mod:`agents.resync`): snapshot at once, so that it
        serves the trainer's state within seconds, not after the snapshot interval. At most
        one per :attr:`answer_every` seconds; with nothing unsaved, the next batch's state
        is snapshotted at once. True if answered."""
        if not self._schedule.may_answer(time.monotonic(), self.answer_every):
            metrics.SNAPSHOT_REQUESTS.labels("rate_limited").inc()
            return False
        metrics.SNAPSHOT_REQUESTS.labels("answered").inc()
        unsaved = self._progress_unsaved()
        log.info(
            "A scorer asked for a snapshot (%s; it serves v%d): %s",
            request.reason,
            request.version,
            "writing one now" if unsaved else "the next batch's state will be snapshotted",
        )
        self._schedule.urge(self.model.version + (not unsaved))
        if unsaved:
            self._snapshots.soon()
        return True

    def _fit(self, ratings: RatingColumns) -> tuple[BatchResult, float | None, ScoringView]:
        """Runs in a worker thread: install a finished consolidation, score-then-train,
        start a consolidation the batch cut, copy out an immutable view."""
        self._consolidation.install()
        hit_rate = hit_rate_before_training(
            self.holder.view, ratings, self.model.config, self.eval_k
        )
        result = self.model.train_batch(ratings)
        self._consolidation.after_batch()
        return result, hit_rate, self.model.view()

    # --- timers: consolidations and snapshots --------------------------------------------
    async def tick(self) -> None:
        """Called by a timer: install a finished consolidation (or start a due one) when no
        batch did; snapshot when training is pending and the interval has passed."""
        await self.tick_consolidation()
        self._snapshots.start()

    async def tick_consolidation(self) -> None:
        """Install a finished consolidation and start a due one, then publish the view."""
        if self._consolidation.ready():
            async with self._lock:
                view = await asyncio.to_thread(self._consolidation.idle)
            if view is not None:
                self.holder.publish(view, **self._info())
                await self._publish_delta(view)

    # --- snapshots and commits ---------------------------------------------------------
    async def snapshot_now(self, reason: str) -> None:
        await self._snapshots.settle()
        if self._progress_unsaved():
            log.info("Writing a snapshot (%s)", reason)
            await self._snapshots.write()
        await self._commit_snapshot_offsets()

    def _progress_unsaved(self) -> bool:
        return self._schedule.unsaved(self.model.version, self.model.offsets)

    def snapshot_due(self) -> bool:
        """The schedule's decision for the model now (:meth:`SnapshotSchedule.due`)."""
        return self._schedule.due(
            self.model.version,
            self.model.offsets,
            time.monotonic(),
            self.snapshot_every_batches,
            self.snapshot_every_seconds,
        )

    async def cut_snapshot(self) -> CheckpointCut:
        """The checkpoint's content and the offsets it covers, cut under the lock: a copy
        of the rows changed since the newest checkpoint written (a segment; after a restart,
        the restored one), or of the whole state when a full one is due (the run's first,
        unless restored); the writer encodes, hashes and signs it outside the lock."""
        async with self._lock:
            if self.model.version == self._schedule.version:
                # Only offsets moved (duplicates, invalid events): a new state, so a new
                # version; snapshots are write-once.
                await self._next_version()
            # the newest checkpoint written: a cut that failed is merged into the next one
            head = self._schedule.head
            self.model.checkpoint_written(None if head is None else head.version)
            segment = self._schedule.segment_next(
                self.model.checkpoint_parent, self.checkpoint_segments
            )
            content = await asyncio.to_thread(
                self.model.cut_checkpoint,
                segment=segment,
                max_rows=self.checkpoint_chain_fraction,
            )
            return CheckpointCut(
                content,
                self._info(),
                {
                    "prequential_hit_rate": self.holder.info.get("prequential_hit_rate"),
                    "last_batch": self.holder.info.get("last_batch"),
                },
                self._schedule.batches,
                self.keys,
            )

    async def snapshot_exists(self, version: int) -> None:
        """A write found ``version`` in the store already (written, but the answer was
        lost): the next snapshot needs a later version."""
        async with self._lock:
            if self.model.version <= version:
                await self._next_version()

    async def _next_version(self) -> None:
        """A new version without trained rows, carried to the scorers by a delta without
        rows: every delta makes exactly the next version (:func:`models.delta.next_step`
        refuses any other step). Called under the lock."""
        self.model.version += 1
        view = self.model.view()
        self.holder.publish(view, **self._info())
        await self._publish_delta(view)

    async def _commit_snapshot_offsets(self) -> None:
        """Commit the newest snapshot's offsets for the assigned partitions (for lag
        monitoring: a restart seeks to the snapshot's offsets, never to committed ones)."""
        offsets = self._snapshots.take_uncommitted()
        if not offsets or self.consumer is None:
            return
        assigned = self.consumer.assignment()
        commit = {}
        for tp in assigned:
            offset = offsets.get(offset_key(tp.topic, tp.partition))
            if offset is not None:
                commit[tp] = offset
        if not commit:
            return
        try:  # for monitoring only: never wait on it for long (the next snapshot commits)
            await asyncio.wait_for(self.consumer.commit(commit), COMMIT_TIMEOUT)
        except (KafkaError, TimeoutError) as exc:  # a rebalance in progress, a lost broker
            log.warning(
                "Committing snapshot offsets failed (%s); will retry",
                exc or type(exc).__name__,
            )

    # --- rebalances ----------------------------------------------------------------------
    async def on_assigned(self, partitions: set[TopicPartition]) -> None:
        """Seek each assigned partition to the next offset the model has not trained."""
        assert self.consumer is not None
        unknown = []
        for tp in sorted(partitions):
            offset = self.model.offsets.get(offset_key(tp.topic, tp.partition))
            if offset is None:
                unknown.append(tp)
            else:
                self.consumer.seek(tp, offset)
        if unknown:
            await self.consumer.seek_to_beginning(*unknown)
        log.info(
            "Assigned %d ratings partitions; resuming at the trained offsets %s "
            "(from the beginning: %d)",
            len(partitions),
            dict(self.model.offsets),
            len(unknown),
        )

    async def on_revoked(self) -> None:
        """Finish the batch in flight and commit what the newest snapshot covers."""
        if self._in_flight is not None and not self._in_flight.done():
            await asyncio.wait([self._in_flight])  # its failure is raised by run()
        await self._commit_snapshot_offsets()

    def _info(self) -> ModelStatus:
        return {
            "trained_events": self.model.trained_events,
            "n_users": self.model.n_users,
            "n_items": self.model.n_items,
            "offsets": dict(self.model.offsets),
            # A consolidation cut, running, or due and not yet cut: the served model is
            # the micro-batches' until it is installed (a few seconds at most when idle).
            "consolidation_pending": self.model.consolidation_pending
            or self.model.consolidation_due(),
        }


class TrainerRebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's rebalance callbacks, forwarded to the trainer."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.trainer.on_revoked()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.trainer.on_assigned(assigned)
