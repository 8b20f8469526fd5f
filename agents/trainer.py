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

There is exactly one trainer per deployment (LightFM trains on one node).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from agents import metrics
from agents.deltas import DeltaPublisher
from agents.errors import is_refusal
from agents.health import record_error
from agents.ports import Message, Sink, SnapshotStore, dead_letter, reference_time
from agents.resync import ANSWER_EVERY
from agents.state import ModelHolder
from agents.status import ModelStatus
from models.bounds import Capacity, over_capacity
from models.config import ModelConfig
from models.evaluation import positive_hits
from models.events import MAX_FUTURE_SKEW_SECONDS, Rating
from models.incremental import BatchResult, Consolidation, IncrementalModel, NonFiniteModel
from models.manifest import Manifest
from models.scoring import ScoringView
from models.signing import Keyring
from models.snapshot import UntrustedSnapshot, sign_manifest
from models.wire import DeadLetter, ModelUpdate, SnapshotRequest, Undecodable, decode_rating
from storage.errors import SnapshotExists

log = logging.getLogger(__name__)

#: The longest a consolidation waits after one of its epochs while the batches have a
#: backlog (:meth:`Trainer._yield_to_batches`): under a sustained flood it still progresses.
CONSOLIDATION_MAX_PAUSE = 2.0

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
    positives = [r for r in ratings if r.rating >= config.positive_threshold]
    step = max(1, -(-len(positives) // sample))
    marks = positive_hits(view, positives[::step], threshold=config.positive_threshold, k=k)
    return sum(hit for hit, _ in marks) / len(marks) if marks else None


def offset_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


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
            payload, manifest = await store.get(version)
            model = await asyncio.to_thread(IncrementalModel.from_bytes, payload, manifest, keys)
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
class DecodedBatch:
    """One fetched batch, decoded and validated (in a worker thread, while the previous
    batch trains): what to train, what to dead-letter, and which offsets it spans."""

    ratings: list[Rating]
    positions: list[tuple[int, int]]  # (partition, offset) of each rating
    dead_letters: list[DeadLetter]
    first_offsets: dict[str, int]  # "topic:partition" -> lowest offset in the batch
    next_offsets: dict[str, int]  # "topic:partition" -> next offset after the batch
    events: int  # messages in the batch
    topic: str | None = None
    messages: Sequence[Message] = ()  # as fetched (the original bytes of dead letters)

    @classmethod
    def of(
        cls,
        messages: Sequence[Message],
        max_bytes: int,
        max_skew: float = MAX_FUTURE_SKEW_SECONDS,
    ) -> DecodedBatch:
        """Decode ``messages``; a rating stamped more than ``max_skew`` seconds past its
        record's timestamp (:func:`agents.ports.reference_time`) is a ``ts_in_future`` dead
        letter."""
        wall = time.time()
        ratings: list[Rating] = []
        positions: list[tuple[int, int]] = []
        letters: list[DeadLetter] = []
        spans: dict[tuple[str, int], list[int]] = {}  # (topic, partition) -> [lowest, highest]
        append, position = ratings.append, positions.append
        for m in messages:
            offset = m.offset
            span = spans.get((m.topic, m.partition))
            if span is None:
                spans[(m.topic, m.partition)] = [offset, offset]
            elif offset < span[0]:
                span[0] = offset
            elif offset > span[1]:
                span[1] = offset
            try:
                append(
                    decode_rating(
                        m.key,
                        m.value,
                        max_bytes=max_bytes,
                        reference=reference_time(m, wall),
                        max_skew=max_skew,
                    )
                )
            except Undecodable as exc:
                letters.append(dead_letter(m, exc))
                continue
            except Exception as exc:  # last resort: this record is dead, not the trainer
                letters.append(dead_letter(m, record_error("trainer", exc)))
                continue
            position((m.partition, offset))
        first = {offset_key(*tp): low for tp, (low, _) in spans.items()}
        next_ = {offset_key(*tp): high + 1 for tp, (_, high) in spans.items()}
        topic = messages[0].topic if messages else None
        return cls(ratings, positions, letters, first, next_, len(messages), topic, messages)

    def within(self, model: IncrementalModel, capacity: Capacity) -> DecodedBatch:
        """This batch without the ratings that would grow ``model`` past ``capacity``
        (:func:`models.bounds.over_capacity`): they become dead letters of kind
        ``capacity``, in offset order with the others."""
        refused = over_capacity(
            self.ratings, model.users, model.items, model.n_users, model.n_items, capacity
        )
        if not refused:
            return self
        by_position = {(m.partition, m.offset): m for m in self.messages}
        letters = list(self.dead_letters)
        for n, reason in refused:
            message = by_position[self.positions[n]]
            letters.append(dead_letter(message, Undecodable("capacity", reason)))
        letters.sort(key=lambda d: (d.partition, d.offset))
        out = {n for n, _ in refused}
        keep = [n for n in range(len(self.ratings)) if n not in out]
        return replace(
            self,
            ratings=[self.ratings[n] for n in keep],
            positions=[self.positions[n] for n in keep],
            dead_letters=letters,
        )

    def after(self, covered: Mapping[str, int], dead_lettered: Mapping[int, int]) -> DecodedBatch:
        """This batch without what ``covered`` (the model's offsets) already trained and
        without dead letters already sent (``dead_lettered``: partition -> highest offset)."""
        topic = self.topic or ""
        stale = any(first < covered.get(key, 0) for key, first in self.first_offsets.items())
        letters = [
            d
            for d in self.dead_letters
            if d.offset > dead_lettered.get(d.partition, -1)
            and d.offset >= covered.get(offset_key(d.topic, d.partition), 0)
        ]
        if not stale:
            if len(letters) != len(self.dead_letters):
                metrics.SKIPPED_EVENTS.labels("already_dead_lettered").inc(
                    len(self.dead_letters) - len(letters)
                )
                return replace(self, dead_letters=letters)
            return self
        keep = [
            i
            for i, (p, offset) in enumerate(self.positions)
            if offset >= covered.get(offset_key(topic, p), 0)
        ]
        skipped = self.events - len(keep) - len(letters)
        metrics.SKIPPED_EVENTS.labels("already_trained").inc(skipped)
        return replace(
            self,
            ratings=[self.ratings[i] for i in keep],
            positions=[self.positions[i] for i in keep],
            dead_letters=letters,
            events=len(keep) + len(letters),
        )


@dataclass
class Trainer:
    """State and dependencies of the one trainer (Kafka clients are passed in by ``app/``)."""

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
    _answered_at: float = -math.inf
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _in_flight: asyncio.Task[None] | None = None  # the newest batch's step
    _in_flight_before: asyncio.Task[None] | None = None  # the one before it, if running
    _stopping: bool = False
    _full_logged: bool = False  # the first capacity dead letter was logged
    _uncommitted: dict[str, int] | None = None  # offsets of a snapshot not yet committed
    _batches_since_snapshot: int = 0
    _last_snapshot_at: float = field(default_factory=time.monotonic)
    _snapshot_version: int = -1
    _snapshot_offsets: dict[str, int] = field(default_factory=dict)
    _writer: asyncio.Task[bool] | None = None  # the snapshot write in progress, if any
    #: The newest delta that needs a snapshot soon (a marker, or a consolidation's whose
    #: neighbours travel with it): a snapshot of its version (or later) is due at once.
    _urgent_version: int = -1
    #: The consolidation running in its own thread, if any (see :meth:`_start_consolidation`).
    _consolidating: tuple[Consolidation, threading.Event] | None = None  # the job, its end
    #: The last fetch brought at least half of ``batch_max``: ratings are waiting.
    _backlog: bool = False
    _loop: asyncio.AbstractEventLoop | None = None  # run()'s, for the consolidation thread
    _background: set[asyncio.Future[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        # Consolidations (a retrain on the whole window, seconds) run beside the batches
        # instead of inside one, and are installed when done (models.incremental).
        self.model.defer_consolidation = True
        self.model.max_future_skew = self.max_future_skew  # its popularity clock's ceiling
        self._snapshot_version = self.model.version
        self._snapshot_offsets = dict(self.model.offsets)
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
        self._loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                records = await consumer.getmany(
                    timeout_ms=int(poll_seconds * 1000), max_records=batch_max
                )
                messages = [m for batch in records.values() for m in batch]
                # Half a batch_max or more: fetched in bulk, i.e. ratings are waiting.
                self._backlog = 2 * len(messages) >= batch_max
                await self._commit_snapshot_offsets()
                if not messages:
                    continue
                if self._in_flight_before is not None:  # two in flight: let the older end
                    # re-raises a failed batch: the worker crashes, loudly
                    task, self._in_flight_before = self._in_flight_before, None
                    await task
                self._in_flight_before = self._in_flight
                self._in_flight = asyncio.create_task(self._step(messages, self._in_flight))
            await self.wait_idle()
        finally:
            if self._in_flight is not None and not self._in_flight.done():
                await asyncio.shield(self._in_flight)

    def stop(self) -> None:
        """Make :meth:`run` return after the current fetch (a clean shutdown)."""
        self._stopping = True

    async def wait_idle(self) -> None:
        """Wait for the batches in flight (if any); re-raises a failure."""
        if self._in_flight is not None:
            task, self._in_flight, self._in_flight_before = self._in_flight, None, None
            await task  # the newest batch ends after every older one (it awaits them)

    async def _step(self, messages: Sequence[Message], previous: asyncio.Task[None] | None) -> None:
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
        self._start_snapshot()

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
        self._batches_since_snapshot += 1
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
            self._urgent_version = max(self._urgent_version, published["version"])
            self._snapshot_soon()

    def _snapshot_soon(self) -> None:
        """Scorers ignore deltas from a "snapshot needed" marker on until they have loaded
        a snapshot, and blend with old neighbours after a consolidation's delta until a
        snapshot brings the new ones: write it at once, or as soon as the write in progress
        ends (cut before, that one does not cover it), not at the next batch or tick."""
        writer = self._writer
        if writer is None or writer.done():
            self._start_snapshot()
        else:
            writer.add_done_callback(self._snapshot_after)

    def _snapshot_after(self, _: object) -> None:
        """A write in progress ended: start the one :meth:`_snapshot_soon` asked for."""
        if not self._stopping:
            self._start_snapshot()

    def snapshot_requested(self, request: SnapshotRequest) -> bool:
        """A scorer's delta chain broke (:mod:`agents.resync`): snapshot at once, so that it
        serves the trainer's state within seconds, not after the snapshot interval. At most
        one per :attr:`answer_every` seconds; with nothing unsaved, the next batch's state
        is snapshotted at once. True if answered."""
        now = time.monotonic()
        if now - self._answered_at < self.answer_every:
            metrics.SNAPSHOT_REQUESTS.labels("rate_limited").inc()
            return False
        self._answered_at = now
        metrics.SNAPSHOT_REQUESTS.labels("answered").inc()
        unsaved = self._progress_unsaved()
        log.info(
            "A scorer asked for a snapshot (%s; it serves v%d): %s",
            request.reason,
            request.version,
            "writing one now" if unsaved else "the next batch's state will be snapshotted",
        )
        self._urgent_version = max(self._urgent_version, self.model.version + (not unsaved))
        if unsaved:
            self._snapshot_soon()
        return True

    def _fit(self, ratings: list[Rating]) -> tuple[BatchResult, float | None, ScoringView]:
        """Runs in a worker thread: install a finished consolidation, score-then-train,
        start a consolidation the batch cut, copy out an immutable view."""
        self._install_consolidation()
        hit_rate = hit_rate_before_training(
            self.holder.view, ratings, self.model.config, self.eval_k
        )
        result = self.model.train_batch(ratings)
        self._start_consolidation(self.model.take_consolidation())
        return result, hit_rate, self.model.view()

    # --- consolidations ------------------------------------------------------------------
    def _start_consolidation(self, job: Consolidation | None) -> None:
        """Run ``job`` in a thread of its own while batches go on training (its fit releases
        the GIL); installed as soon as it ends (or by a training step that comes first)."""
        if job is None:
            return
        job.between_epochs = self._yield_to_batches
        done = threading.Event()
        self._consolidating = (job, done)
        threading.Thread(
            target=self._consolidate, args=(job, done), name="consolidation", daemon=True
        ).start()

    def _consolidate(self, job: Consolidation, done: threading.Event) -> None:
        # (Not niced: a low-priority thread descheduled while it holds the GIL stalls the
        # batches behind it; measured 3.5x slower micro-batches at niceness 10.)
        try:
            job.run()
        except Exception:  # the model goes on without it; the next mark cuts another
            log.exception("Consolidation of %d interactions failed", job.events)
        finally:
            done.set()  # the thread touches the job no more
        loop = self._loop
        if loop is not None and not loop.is_closed():  # install it now, not at the next tick
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._consolidated)

    def _consolidated(self) -> None:
        """On the loop, when a consolidation thread ends: install it (unless a batch does
        first) and start the next one if due."""
        task = asyncio.ensure_future(self.tick_consolidation())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _yield_to_batches(self) -> None:
        """Between a consolidation's epochs (its thread): wait while the batches have a
        backlog, at most :data:`CONSOLIDATION_MAX_PAUSE`. On a machine without a spare core
        the stream is trained first and the consolidation takes what is left; a cooperative
        pause, because a lower OS priority stalls the batches (see :meth:`_consolidate`)."""
        deadline = time.monotonic() + CONSOLIDATION_MAX_PAUSE
        while self._backlog and not self._stopping and time.monotonic() < deadline:
            time.sleep(0.02)

    def consolidation_ready(self) -> bool:
        """A finished consolidation waits to be installed, or one is due to start."""
        if self._consolidating is not None:
            return self._consolidating[1].is_set()
        return self.model.consolidation_due()

    def _install_consolidation(self) -> bool:
        """Install the consolidation that ended, if any (in the training thread)."""
        if self._consolidating is None or not self._consolidating[1].is_set():
            return False
        (job, _), self._consolidating = self._consolidating, None
        installed = self.model.install(job)
        log.info(
            "Consolidation %s: %d interactions, %.1f s, %d batches replayed onto it",
            "installed" if installed else "failed (non-finite); the model goes on without it",
            job.events,
            job.seconds,
            len(job.tail),
        )
        return installed

    def _consolidate_idle(self) -> ScoringView | None:
        """In a worker thread, with no batch to train: install a finished consolidation and
        start one that is due; the new view if one was installed (a new version)."""
        installed = self._install_consolidation()
        if installed:
            self.model.version += 1  # a new state: deltas and snapshots need a new version
        self._start_consolidation(self.model.cut_consolidation())
        return self.model.view() if installed else None

    # --- snapshots and commits ---------------------------------------------------------
    async def tick(self) -> None:
        """Called by a timer: install a finished consolidation (or start a due one) when no
        batch did; snapshot when training is pending and the interval has passed."""
        await self.tick_consolidation()
        self._start_snapshot()

    async def tick_consolidation(self) -> None:
        """Install a finished consolidation and start a due one, then publish the view."""
        if self.consolidation_ready():
            async with self._lock:
                view = await asyncio.to_thread(self._consolidate_idle)
            if view is not None:
                self.holder.publish(view, **self._info())
                await self._publish_delta(view)

    def _start_snapshot(self) -> None:
        """Write a snapshot in the background if one is due and none is being written.

        Training goes on meanwhile: a slow or unreachable store (S3 retrying for tens of
        seconds) must not stop the model from learning, only delay the commit.
        """
        if (self._writer is None or self._writer.done()) and self._snapshot_due():
            self._writer = asyncio.create_task(self._snapshot())

    async def snapshot_now(self, reason: str) -> None:
        if self._writer is not None:
            await asyncio.shield(self._writer)
        if self._progress_unsaved():
            log.info("Writing a snapshot (%s)", reason)
            await self._snapshot()
        await self._commit_snapshot_offsets()

    def _progress_unsaved(self) -> bool:
        return (
            self.model.version != self._snapshot_version
            or self.model.offsets != self._snapshot_offsets
        )

    def _snapshot_due(self) -> bool:
        if not self._progress_unsaved():
            return False
        return (
            self._snapshot_version < self._urgent_version
            or self._batches_since_snapshot >= self.snapshot_every_batches
            or time.monotonic() - self._last_snapshot_at >= self.snapshot_every_seconds
        )

    async def _snapshot(self) -> bool:
        """Write, promote and announce a snapshot; its offsets are committed afterwards.

        The state and the offsets it covers are cut under the lock (training waits only for
        the serialisation); the write itself runs while training continues. A failure (the
        store is down, say) is logged and retried at the next chance: nothing is committed,
        so nothing is lost, and the worker keeps training.
        """
        async with self._lock:
            if self.model.version == self._snapshot_version:
                # Only offsets moved (duplicates, invalid events): a new state, so a new
                # version; snapshots are write-once.
                await self._next_version()
            payload, manifest = await asyncio.to_thread(self.model.to_bytes)
            manifest = sign_manifest(manifest, self.keys)
            covered_batches = self._batches_since_snapshot
            info = self._info()
            batch_info = {
                "prequential_hit_rate": self.holder.info.get("prequential_hit_rate"),
                "last_batch": self.holder.info.get("last_batch"),
            }
        try:
            uri = await self._write_snapshot(payload, manifest, info, batch_info)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, SnapshotExists):  # e.g. written, but the answer was lost
                async with self._lock:
                    if self.model.version <= manifest["version"]:
                        await self._next_version()
            log.error("Snapshot failed (%s: %s); will retry", type(exc).__name__, exc)
            self._last_snapshot_at = time.monotonic()  # retry after the interval, not at once
            return False
        version = manifest["version"]
        self._snapshot_version = version
        self._snapshot_offsets = dict(manifest["offsets"])
        self._uncommitted = self._snapshot_offsets
        # Batches trained while it was written are not in it: they count towards the next.
        self._batches_since_snapshot = max(0, self._batches_since_snapshot - covered_batches)
        self._last_snapshot_at = time.monotonic()
        self.holder.info["snapshot"] = {"version": version, "uri": uri, "at": time.time()}
        metrics.SNAPSHOTS.inc()
        log.info(
            "Snapshot v%d written (%d bytes, %d trained events, offsets %s)",
            version,
            len(payload),
            manifest["trained_events"],
            manifest["offsets"],
        )
        return True

    async def _next_version(self) -> None:
        """A new version without trained rows, carried to the scorers by a delta without
        rows: every delta makes exactly the next version (:func:`models.delta.next_step`
        refuses any other step). Called under the lock."""
        self.model.version += 1
        view = self.model.view()
        self.holder.publish(view, **self._info())
        await self._publish_delta(view)

    async def _write_snapshot(
        self,
        payload: bytes,
        manifest: Manifest,
        info: ModelStatus,
        batch_info: dict[str, Any],
    ) -> str:
        """Put (verified, write-once), promote, then announce: never announce before that."""
        version = manifest["version"]
        uri = await self.store.put(version, payload, manifest)
        await self.store.promote(version)
        update = ModelUpdate.from_manifest(
            uri,
            manifest,
            **batch_info,
            n_users=info["n_users"],
            n_items=info["n_items"],
            created_at=manifest["created_at"],
        ).signed(self.keys)
        key, value = update.encode()
        await self.updates.send(key=key, value=value)
        return uri

    async def _commit_snapshot_offsets(self) -> None:
        """Commit the newest snapshot's offsets for the assigned partitions (for lag
        monitoring: a restart seeks to the snapshot's offsets, never to committed ones)."""
        offsets, self._uncommitted = self._uncommitted, None
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
        try:
            await self.consumer.commit(commit)
        except KafkaError as exc:  # a rebalance in progress: the next snapshot commits
            log.warning("Committing snapshot offsets failed (%s); will retry", exc)

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
