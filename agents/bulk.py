"""Bulk reads of the topic partitions this worker owns, beside Faust's per-event streams.

Faust hands a stream one event at a time (a task and a queue hop per message); that caps an
agent at a few thousand events/s. Ingest needs no per-event machinery: it reads its
partitions with a plain aiokafka consumer (``getmany``), in batches, and commits offsets
under a group of its own once what it read is handled and flushed.

Which partitions: the ones Faust assigned this worker for the co-partitioned topics
(requests and the ``seen-items`` table); app/ calls :meth:`PartitionedReader.own` when a
rebalance (and table recovery) completes, and awaits :meth:`PartitionedReader.release`
when partitions are revoked, so two workers never write the same table partition and the
next owner recovers every row written before it.

A reader's group holds only its commits (partitions are assigned, not subscribed, so the
group has no members and any reader may commit to it). A partition the group has never
committed starts where ``start_from`` says, if given (the position of the group that read
the topic before, so that an upgrade does not re-read history), else at its beginning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.health import HEALTHY_SECONDS, ReaderHealth
from agents.kafka import KafkaOptions, committed_offsets
from agents.ports import Message

log = logging.getLogger(__name__)


@dataclass
class PartitionedReader:
    """Reads ``topic``'s owned partitions in bulk and hands them to ``handle`` in slices."""

    kafka: KafkaOptions
    topic: str
    group_id: str
    handle: Callable[[Sequence[Message]], Awaitable[None]]
    flush: Callable[[], Awaitable[None]]  # make what ``handle`` sent durable before a commit
    make_way: Callable[[], Awaitable[None]] = lambda: asyncio.sleep(0)  # between slices
    max_records: int = 2000  # per fetch
    slice_records: int = 250  # per ``handle`` call; the loop is yielded between slices
    commit_seconds: float = 1.0
    # Where partitions this group never committed start (partitions left out: earliest).
    start_from: (
        Callable[[Sequence[TopicPartition]], Awaitable[Mapping[TopicPartition, int]]] | None
    ) = None
    #: Where failures are reported (app/ passes the worker's: /health/ degrades on it).
    health: ReaderHealth = field(default_factory=ReaderHealth)
    name: str = ""  # the reader's name in health and metrics (default: the topic)
    _wanted: frozenset[int] = frozenset()
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    _holding: frozenset[int] = frozenset()  # the partitions assigned to the consumer now

    def own(self, partitions: Iterable[int]) -> None:
        """Read these partitions (of ``topic``) from now on."""
        self._wanted = frozenset(partitions)
        self._changed.set()

    async def release(self) -> None:
        """Stop reading every partition; returns once what was read is handled and committed
        (at once if the reader holds none yet, e.g. while its consumer is still starting)."""
        self._released.clear()
        self.own(())
        if self._holding:
            await self._released.wait()

    async def run(self, retry_seconds: float = 2.0) -> None:
        """Read until cancelled; a Kafka failure (a broker restart) is logged and the reader
        starts over from the committed offsets (rows are idempotent), never fatal."""
        while True:
            try:
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # logged once per kind; one that keeps failing: 503
                self.health.failed(self.name or self.topic, exc, retry_seconds=retry_seconds)
                await asyncio.sleep(retry_seconds)

    async def _read(self) -> None:
        consumer = AIOKafkaConsumer(
            **self.kafka,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        started = time.monotonic()
        await consumer.start()
        assigned: frozenset[int] = frozenset()
        handled: dict[int, int] = {}  # partition -> the offset after its last handled record
        committing: asyncio.Task[None] | None = None
        committed_at = time.monotonic()
        try:
            while True:
                wanted = self._wanted
                if wanted != assigned:
                    await _finish(committing)
                    committing = None
                    await self._commit(consumer, handled)
                    handled = {}
                    consumer.assign([TopicPartition(self.topic, p) for p in sorted(wanted)])
                    await self._position_new(consumer, wanted - assigned)
                    assigned = self._holding = wanted
                    log.info("Reading %s partitions %s in bulk", self.topic, sorted(assigned))
                if not assigned:
                    self._released.set()
                    self._changed.clear()
                    await self._changed.wait()
                    continue
                batch = await consumer.getmany(timeout_ms=100, max_records=self.max_records)
                messages = [m for tp in sorted(batch) for m in batch[tp]]
                for start in range(0, len(messages), self.slice_records):
                    if self._wanted != assigned:  # released: the rest is the next owner's
                        break
                    part = messages[start : start + self.slice_records]
                    await self.handle(part)
                    for m in part:
                        handled[m.partition] = m.offset + 1
                    await self.make_way()  # requests first: one slice at a time
                if messages or time.monotonic() - started >= HEALTHY_SECONDS:
                    self.health.ok(self.name or self.topic)  # handled some, or ran a while
                # Commit in the background (a flush of many rows waits on the broker), one
                # commit at a time, of what was handled when it started.
                due = time.monotonic() - committed_at >= self.commit_seconds
                if due and handled and (committing is None or committing.done()):
                    await _finish(committing)
                    committing = asyncio.create_task(self._commit(consumer, dict(handled)))
                    committed_at = time.monotonic()
        finally:
            self._holding = frozenset()
            try:
                await _finish(committing)
                await self._commit(consumer, handled)
            except Exception as exc:  # the broker is gone: the next owner re-reads a little
                log.warning("Bulk reader of %s could not commit on stop: %s", self.topic, exc)
            finally:
                self._released.set()  # a failed reader holds nothing either
                await consumer.stop()

    async def _position_new(self, consumer: AIOKafkaConsumer, new: frozenset[int]) -> None:
        """Seek partitions this group never committed to where ``start_from`` says."""
        if self.start_from is None or not new:
            return
        tps = [TopicPartition(self.topic, p) for p in sorted(new)]
        ours = await committed_offsets(self.kafka, self.group_id, tps)  # one round trip
        never = [tp for tp in tps if tp not in ours]
        if never:
            for tp, offset in (await self.start_from(never)).items():
                consumer.seek(tp, offset)

    async def _commit(self, consumer: AIOKafkaConsumer, handled: Mapping[int, int]) -> None:
        """Make what was handled durable (``flush``), then commit exactly the records
        handled: a record fetched but not handled (a release, a failure) is read again."""
        if not handled:
            return
        await self.flush()
        await consumer.commit(
            {TopicPartition(self.topic, p): offset for p, offset in handled.items()}
        )


async def _finish(task: asyncio.Task[None] | None) -> None:
    """Wait for a background commit; its failure is the reader's."""
    if task is not None:
        await task
