"""What the agents need from the outside world, as small Protocols (app/ passes Faust in).

Agents never import Faust: a Faust ``TopicT`` satisfies :class:`Sink`, and unit tests pass
a list-backed fake. The snapshot store's port is :class:`storage.SnapshotStore`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Protocol

from models.wire import DeadLetter, Undecodable
from storage import SnapshotStore

__all__ = [
    "BatchSink",
    "Message",
    "SeenTable",
    "Sink",
    "SnapshotStore",
    "dead_letter",
    "received_at",
    "reference_time",
]


class Sink(Protocol):
    """Somewhere messages are sent: a topic (``faust.TopicT`` with raw serializers)."""

    async def send(
        self,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> Any: ...


class BatchSink(Protocol):
    """A topic messages go to in bulk (``(key, value)`` pairs, partitioned by key):
    ``send_many`` queues them all and returns their deliveries, not awaited."""

    async def send_many(
        self, messages: Sequence[tuple[bytes | None, bytes | None]]
    ) -> list[Awaitable[Any]]: ...


class Message(Protocol):
    """One consumed Kafka record (aiokafka's ``ConsumerRecord``: the agents read in bulk)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None  # milliseconds since the epoch, as Kafka stores it (-1: none)


def received_at(message: Message) -> float:
    """The record's Kafka timestamp in unix seconds; now, if it has none."""
    stamp = message.timestamp
    return stamp / 1000 if stamp is not None and stamp > 0 else time.time()


def reference_time(message: Message, wall: float) -> float:
    """The clock a rating's ``ts`` is judged by (:func:`models.events.check_event_time`):
    its Kafka record's timestamp, capped by the reader's wall clock ``wall``.

    The record's timestamp (the producer's clock at send time, which a broker refuses when
    it is more than the topic's ``message.timestamp.after.max.ms`` ahead of its own; or the
    broker's own clock under ``message.timestamp.type=LogAppendTime``) is a property of the
    record: the trainer and every scorer's ingest judge a rating alike, and so does a
    restarted trainer reading it again, however late (a backlog, a replay); the wall clock
    would let the verdict change with the delay and break "dead-lettered exactly once". The
    cap keeps a producer clock set ahead from widening the window. A record without a
    timestamp is judged by ``wall``.
    """
    stamp = message.timestamp
    if stamp is None or stamp < 0:
        return wall
    seconds = stamp / 1000
    return seconds if seconds < wall else wall  # min() without its call (once per rating)


class SeenTable(Protocol):
    """The ``seen-items`` table: per user, a row of :mod:`models.seen` bytes.

    ``put`` writes the local row (readers see it at once; it may be called from a worker
    thread) and marks it for the changelog under ``partition``, the partition the user's
    ratings came from; ``flush`` (on the event loop) sends each marked row once, latest
    value only, and waits until the broker has them. A restarted worker thus recovers the
    same rows into the same partitions; app/ adapts the Faust table.
    """

    def get(self, user: str) -> bytes | None: ...

    def put(self, user: str, row: bytes, partition: int) -> None: ...

    async def flush(self) -> None: ...

    def __len__(self) -> int:  # the users it holds
        ...


def dead_letter(message: Message, exc: Undecodable) -> DeadLetter:
    """The dead letter of ``message`` (its original key and bytes), rejected with ``exc``."""
    return DeadLetter.of(
        exc,
        key=message.key,
        value=message.value,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
    )
