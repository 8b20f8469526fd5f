"""app.service.reread_uncommitted_from_start: what Faust drops on a partition that was never
committed is read again (the scorer-kill fault test lost requests without it)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from app.service import reread_uncommitted_from_start


class FakeConsumer:
    """The two calls Faust's perform_seek makes, with aiokafka's behaviour: seek_to_committed
    moves only partitions whose committed offset is > 0 and returns every committed offset."""

    def __init__(self, committed: dict[TopicPartition, int | None]) -> None:
        self.committed = committed
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
        self.seeks += [(tp, o) for tp, o in self.committed.items() if o and o > 0]
        return dict(self.committed)

    async def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def test_partitions_never_committed_are_read_from_their_start() -> None:
    requests = [TopicPartition("rec-requests", p) for p in range(4)]
    changelog = TopicPartition("seen-items-changelog", 0)
    committed: dict[TopicPartition, Any] = {
        requests[0]: None,  # never committed: aiokafka leaves it where the dropped fetch ended
        requests[1]: 0,  # committed at 0: left alone by aiokafka as well
        requests[2]: 500,
        requests[3]: None,
        changelog: None,  # Faust's recovery seeks changelogs itself
    }
    consumer = FakeConsumer(committed)
    reread_uncommitted_from_start(consumer, "rec-requests")  # type: ignore[arg-type]
    returned = asyncio.run(consumer.seek_to_committed())
    assert returned == committed
    assert sorted(consumer.seeks) == sorted(
        [(requests[2], 500), (requests[0], 0), (requests[1], 0), (requests[3], 0)]
    )
