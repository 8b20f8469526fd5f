"""Small fakes of what app/ passes the agents: a stream of events, sinks, the seen table."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None = None


@dataclass
class FakeEvent:
    message: FakeMessage


@dataclass
class FakeStream:
    """Events in order; ``idle()`` is true once everything put so far has been taken.

    ``arrivals`` splits the messages into groups that "arrive" together: the next group
    becomes buffered only when the agent has taken the previous one (as a consumer would
    see them when a batch is handled slower than requests arrive)."""

    arrivals: list[list[FakeMessage]]
    acked: list[FakeMessage] = field(default_factory=list)
    _buffered: int = 0

    @classmethod
    def of(cls, messages: list[FakeMessage]) -> FakeStream:
        return cls([messages])

    def noack(self) -> FakeStream:
        return self

    def idle(self) -> bool:
        return self._buffered == 0

    async def events(self) -> AsyncIterator[FakeEvent]:
        for group in self.arrivals:
            self._buffered = len(group)
            for message in group:
                self._buffered -= 1
                yield FakeEvent(message)

    async def ack(self, event: FakeEvent) -> bool:
        self.acked.append(event.message)
        return True


@dataclass
class FakeSink:
    sent: list[dict[str, Any]] = field(default_factory=list)

    async def send(
        self,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        self.sent.append({"key": key, "value": value, "headers": dict(headers or {})})


@dataclass
class FakeSeenTable:
    """The table and its changelog: ``changelog`` lists every flushed (partition, user, row)."""

    rows: dict[str, bytes] = field(default_factory=dict)
    changelog: list[tuple[int, str, bytes]] = field(default_factory=list)
    dirty: dict[str, int] = field(default_factory=dict)

    def get(self, user: str) -> bytes | None:
        return self.rows.get(user)

    def put(self, user: str, row: bytes, partition: int) -> None:
        self.rows[user] = row
        self.dirty[user] = partition

    async def flush(self) -> None:
        for user, partition in self.dirty.items():
            self.changelog.append((partition, user, self.rows[user]))
        self.dirty.clear()

    @classmethod
    def recovered(cls, changelog: list[tuple[int, str, bytes]]) -> FakeSeenTable:
        """What a restarted worker rebuilds from the changelog (last write per key wins)."""
        table = cls()
        for _partition, user, row in changelog:
            table.rows[user] = row
        return table
