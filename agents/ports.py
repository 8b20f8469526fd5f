"""What the agents need from the outside world, as small Protocols (app/ passes Faust in).

Agents never import Faust: a Faust ``TopicT`` satisfies :class:`Sink`, and unit tests pass
a list-backed fake. The snapshot store's port is :class:`storage.SnapshotStore`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from storage import SnapshotStore

__all__ = ["Message", "Sink", "SnapshotStore"]


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
