"""What the agents need from the outside world, as small Protocols (app/ passes Faust in).

Agents never import Faust: a Faust ``TopicT`` satisfies :class:`Sink`, and unit tests pass
a list-backed fake. The snapshot store's port is :class:`storage.SnapshotStore`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from models.wire import DeadLetter, Undecodable
from storage import SnapshotStore

__all__ = ["Event", "EventStream", "Message", "SeenTable", "Sink", "SnapshotStore", "dead_letter"]


class Sink(Protocol):
    """Somewhere messages are sent: a topic (``faust.TopicT`` with raw serializers)."""

    async def send(
        self,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> Any: ...


class Message(Protocol):
    """One consumed Kafka record (Faust's ``Message``, aiokafka's ``ConsumerRecord``)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | int | None


class Event(Protocol):
    """One event of a stream (Faust's ``EventT``): the consumed message."""

    message: Message


class EventStream(Protocol):
    """A stream an agent iterates (Faust's ``StreamT``): events, acked by the agent."""

    def noack(self) -> EventStream: ...

    def events(self) -> AsyncIterator[Event]: ...

    async def ack(self, event: Event) -> bool: ...


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
