"""Small fakes of what app/ passes the agents: consumed records, sinks, the seen table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None = None  # ms, as aiokafka's ConsumerRecord


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

    async def send_many(self, messages: list[tuple[bytes | None, bytes | None]]) -> list[Any]:
        """As a producer's bulk send: one delivery per message that returned one."""
        deliveries = [await self.send(key=key, value=value) for key, value in messages]
        return [d for d in deliveries if d is not None]


@dataclass
class FakeSeenTable:
    """The table and its changelog: ``changelog`` lists every flushed (partition, user, row)."""

    rows: dict[str, bytes] = field(default_factory=dict)
    changelog: list[tuple[int, str, bytes]] = field(default_factory=list)
    dirty: dict[str, int] = field(default_factory=dict)

    def get(self, user: str) -> bytes | None:
        return self.rows.get(user)

    def __len__(self) -> int:
        return len(self.rows)

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
