"""The trainer agent: micro-batches of ratings → ``fit_partial`` off the loop → views, snapshots.

Exactly-once training without Kafka transactions: the snapshot is the commit.

* Events are consumed with ``noack_take``: Faust does not ack (and so never commits) a rating
  until a snapshot that covers it has been written. The committed offset of the trainer's
  group therefore never runs ahead of the newest snapshot.
* Every snapshot records the next offset per ``ratings`` partition it covers. A restarted
  trainer restores the newest snapshot; redelivered events below those offsets are acked and
  skipped, so a SIGKILL loses no training and trains nothing twice.
* Duplicate ``event_id`` s (a producer retry) are dropped by the model itself.

There is exactly one trainer per deployment (LightFM trains on one node).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agents import metrics
from agents.deltas import DeltaPublisher
from agents.follower import REFUSED
from agents.ports import Sink, SnapshotStore
from agents.state import ModelHolder
from models.config import ModelConfig
from models.evaluation import positive_hits
from models.events import Rating
from models.incremental import BatchResult, IncrementalModel, NonFiniteModel
from models.scoring import ScoringView
from models.wire import ModelUpdate, Undecodable, decode_rating
from storage.errors import SnapshotExists

log = logging.getLogger(__name__)


def hit_rate_before_training(
    view: ScoringView | None, ratings: list[Rating], config: ModelConfig, k: int
) -> float | None:
    """Prequential (test-then-train) hit-rate@k of this batch's positives under ``view``.

    Counted as the offline evaluator counts (:func:`models.evaluation.positive_hits`), except
    that seen items are not excluded: the trainer keeps no per-user history.
    """
    if view is None:
        return None
    marks = positive_hits(view, ratings, threshold=config.positive_threshold, k=k)
    return sum(hit for hit, _ in marks) / len(marks) if marks else None


def offset_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


async def restore_model(
    store: SnapshotStore, config: ModelConfig, holder: ModelHolder | None = None
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
            model = await asyncio.to_thread(IncrementalModel.from_bytes, payload, manifest)
        except REFUSED as exc:
            reason = f"{type(exc).__name__}: {exc}"
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


@dataclass
class Trainer:
    """State and dependencies of the one trainer (Faust objects are passed in by ``app/``)."""

    model: IncrementalModel
    holder: ModelHolder
    store: SnapshotStore
    updates: Sink  # model-updates
    max_bytes: int
    snapshot_every_batches: int
    snapshot_every_seconds: float
    eval_k: int = 10
    deltas: DeltaPublisher | None = None  # model-deltas (None: scorers follow snapshots only)
    #: ``seek(topic, partition, offset)``: moves the consumer (app/ passes Faust's). Used once
    #: per partition when the stream starts past what the restored snapshot covers.
    seek: Callable[[str, int, int], Awaitable[None]] | None = None
    _started: set[str] = field(default_factory=set)  # partitions whose first event was seen
    _rewinding: dict[str, int] = field(default_factory=dict)  # partition -> first stale offset
    _reseek: dict[str, tuple[str, int]] = field(default_factory=dict)
    _pending: list[Any] = field(default_factory=list)  # events awaiting a covering snapshot
    _stream: Any = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _batches_since_snapshot: int = 0
    _last_snapshot_at: float = field(default_factory=time.monotonic)
    _snapshot_version: int = -1
    _writer: asyncio.Task[bool] | None = None  # the snapshot write in progress, if any

    def __post_init__(self) -> None:
        self._snapshot_version = self.model.version
        if self.model.n_items:  # a fresh, empty model is not worth serving (health stays 503)
            self.holder.publish(self.model.view(), **self._info())

    async def run(self, stream: Any, *, max_batch: int, within: float) -> None:
        """Train each micro-batch while Faust gathers the next one (at most one in flight).

        ``take`` stalls the stream until the loop body returns, so training in the body
        would serialise fetching and fitting; handing the batch to a task overlaps them.
        """
        self._stream = stream
        in_flight: asyncio.Task[None] | None = None
        try:
            async for events in stream.noack_take(max_batch, within=within):
                if in_flight is not None:
                    await in_flight  # re-raises a failed batch: the agent crashes, loudly
                in_flight = asyncio.create_task(self._step(events))
            if in_flight is not None:
                await in_flight
        finally:
            if in_flight is not None and not in_flight.done():
                await asyncio.shield(in_flight)
            # On a clean shutdown, persist what was trained since the last snapshot.
            await asyncio.shield(self.snapshot_now("shutdown"))

    async def _step(self, events: list[Any]) -> None:
        async with self._lock:
            await self._train(events)
        self._start_snapshot()

    async def tick(self) -> None:
        """Called by a timer: snapshot when training is pending and the interval has passed."""
        self._start_snapshot()

    def _start_snapshot(self) -> None:
        """Write a snapshot in the background if one is due and none is being written.

        Training goes on meanwhile: a slow or unreachable store (S3 retrying for tens of
        seconds) must not stop the model from learning, only delay the acks.
        """
        if (self._writer is None or self._writer.done()) and self._snapshot_due():
            self._writer = asyncio.create_task(self._snapshot())

    async def snapshot_now(self, reason: str) -> None:
        if self._writer is not None:
            await asyncio.shield(self._writer)
        if self.model.version != self._snapshot_version or self._pending:
            log.info("Writing a snapshot (%s)", reason)
            await self._snapshot()

    def _snapshot_due(self) -> bool:
        if self.model.version == self._snapshot_version and not self._pending:
            return False
        return (
            self._batches_since_snapshot >= self.snapshot_every_batches
            or time.monotonic() - self._last_snapshot_at >= self.snapshot_every_seconds
        )

    async def _train(self, events: list[Any]) -> None:
        covered = self.model.offsets
        fresh: list[Any] = []
        next_offsets: dict[str, int] = {}
        for event in events:
            message = event.message
            key = offset_key(message.topic, message.partition)
            if await self._rewound_past(key, message.topic, message.partition, message.offset):
                continue  # not trained, not acked: it comes again after the rewind
            if message.offset < covered.get(key, 0):
                metrics.SKIPPED_EVENTS.labels("already_trained").inc()
                await self._stream.ack(event)  # covered by the restored snapshot
                continue
            fresh.append(event)
            next_offsets[key] = max(next_offsets.get(key, 0), message.offset + 1)
        for key, (topic, partition) in self._reseek.items():
            if key in self._rewinding and self.seek is not None:
                await self.seek(topic, partition, self.model.offsets.get(key, 0))
        self._reseek.clear()
        if not fresh:
            return
        metrics.EVENTS_IN.labels(fresh[0].message.topic).inc(len(fresh))
        started = time.perf_counter()
        try:
            raw = [(e.message.key, e.message.value) for e in fresh]
            n_ratings, result, hit_rate, view = await asyncio.to_thread(self._fit, raw)
        except NonFiniteModel as exc:
            # The model restored its pre-batch state; the events stay accounted for so a
            # poisoned batch is not retried forever. Nothing non-finite is ever published.
            log.error("Batch of %d events made the model non-finite; dropped: %s", len(fresh), exc)
            metrics.SKIPPED_EVENTS.labels("non_finite").inc(len(fresh))
            n_ratings, result, hit_rate, view = 0, None, None, None
        self.model.offsets.update(next_offsets)
        self._pending.extend(fresh)
        if result is None:
            return
        seconds = time.perf_counter() - started
        self._batches_since_snapshot += 1
        metrics.BATCH_SECONDS.observe(seconds)
        metrics.BATCH_SIZE.observe(n_ratings)
        metrics.TRAINED_EVENTS.inc(result.applied)
        metrics.MODEL_VERSION.set(self.model.version)
        self.holder.publish(
            view,
            **self._info(),
            last_batch={
                "events": len(fresh),
                "applied": result.applied,
                "positives": result.positives,
                "duplicates": result.duplicates,
                "new_users": result.new_users,
                "new_items": result.new_items,
                "seconds": round(seconds, 4),
                "at": time.time(),
            },
            **({"prequential_hit_rate": hit_rate} if hit_rate is not None else {}),
        )
        await self._publish_delta(view)

    async def _publish_delta(self, view: ScoringView) -> None:
        """Send this batch's delta to the scorers (:mod:`agents.deltas`); one too large for
        a message makes the next snapshot due at once."""
        if self.deltas is None:
            return
        published = await self.deltas.publish(self.model, view)
        if published is None:
            return
        self.holder.info["delta"] = published
        if published["snapshot_needed"]:
            self._batches_since_snapshot = self.snapshot_every_batches

    async def _rewound_past(self, key: str, topic: str, partition: int, offset: int) -> bool:
        """True if this event must wait: the stream starts after the snapshot's offset.

        The group's committed offsets are those of the newest snapshot this trainer wrote. A
        restore that fell back to an older snapshot (the newest was refused) or followed a
        rollback covers less, so the ratings in between would never come again: rewind the
        partition to the restored snapshot's offset, once, and drop the events fetched
        before the rewind took effect (the first one whose offset is below them).
        """
        if key in self._rewinding:
            if offset >= self._rewinding[key]:
                # Fetched before the seek took effect. Such a message also moves Faust's
                # read offset past the rewound ones (it would then drop them): seek again,
                # once per batch, until the first rewound rating arrives.
                self._reseek[key] = (topic, partition)
                return True
            del self._rewinding[key]
            return False
        if key in self._started:
            return False
        self._started.add(key)
        covered = self.model.offsets.get(key, 0)
        if self.seek is None or offset <= covered:
            return False
        log.warning(
            "%s starts at offset %d but the restored snapshot covers it up to %d only (a "
            "fallback or a rollback): rewinding to retrain the %d ratings in between, once",
            key,
            offset,
            covered,
            offset - covered,
        )
        self._rewinding[key] = offset
        await self.seek(topic, partition, covered)
        return True

    def _fit(
        self, raw: list[tuple[bytes | None, bytes | None]]
    ) -> tuple[int, BatchResult, float | None, Any]:
        """Runs in a worker thread: decode, score-then-train, copy out an immutable view."""
        ratings: list[Rating] = []
        for key, value in raw:
            try:
                ratings.append(decode_rating(key, value, max_bytes=self.max_bytes))
            except Undecodable:
                metrics.SKIPPED_EVENTS.labels("invalid").inc()  # the ingest agent dead-letters it
        hit_rate = hit_rate_before_training(
            self.holder.view, ratings, self.model.config, self.eval_k
        )
        result = self.model.train_batch(ratings)
        return len(ratings), result, hit_rate, self.model.view()

    async def _snapshot(self) -> bool:
        """Write, promote and announce a snapshot, then ack what it covers.

        The state and the events it covers are cut under the lock (training waits only for
        the serialisation); the write itself runs while training continues. A failure (the
        store is down, say) is logged and retried at the next chance: the events it would
        have covered go back to the pending ones, unacked, so nothing is lost.
        """
        async with self._lock:
            if self.model.version == self._snapshot_version:
                # Only offsets moved (duplicates, invalid events): a new state, so a new
                # version; snapshots are write-once.
                self.model.version += 1
            payload, manifest = await asyncio.to_thread(self.model.to_bytes)
            covered, self._pending = self._pending, []
            info = self._info()
            batch_info = {
                "prequential_hit_rate": self.holder.info.get("prequential_hit_rate"),
                "last_batch": self.holder.info.get("last_batch"),
            }
        try:
            uri = await self._write_snapshot(payload, manifest, info, batch_info)
        except asyncio.CancelledError:
            self._pending[:0] = covered
            raise
        except Exception as exc:
            self._pending[:0] = covered  # still unacked: a later snapshot covers them
            if isinstance(exc, SnapshotExists):  # e.g. written, but the answer was lost
                self.model.version = max(self.model.version, manifest["version"] + 1)
            log.error("Snapshot failed (%s: %s); will retry", type(exc).__name__, exc)
            self._last_snapshot_at = time.monotonic()  # retry after the interval, not at once
            return False
        for event in covered:
            await self._stream.ack(event)
        version = manifest["version"]
        self._snapshot_version = version
        self._batches_since_snapshot = 0
        self._last_snapshot_at = time.monotonic()
        self.holder.info["snapshot"] = {"version": version, "uri": uri, "at": time.time()}
        metrics.SNAPSHOTS.inc()
        log.info(
            "Snapshot v%d written (%d bytes, %d events acked, offsets %s)",
            version,
            len(payload),
            len(covered),
            manifest["offsets"],
        )
        return True

    async def _write_snapshot(
        self,
        payload: bytes,
        manifest: dict[str, Any],
        info: dict[str, Any],
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
        )
        key, value = update.encode()
        await self.updates.send(key=key, value=value)
        return uri

    def _info(self) -> dict[str, Any]:
        return {
            "trained_events": self.model.trained_events,
            "n_users": self.model.n_users,
            "n_items": self.model.n_items,
            "offsets": dict(self.model.offsets),
        }
