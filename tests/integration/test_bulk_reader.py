"""agents.bulk.PartitionedReader on the real broker: it reads only the partitions it owns,
and a release hands them over at a committed offset (nothing lost, nothing read twice)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from agents.bulk import PartitionedReader
from agents.health import ReaderHealth
from agents.ports import Message
from app.settings import Settings
from app.topics import TopicSpec, ensure_topics

pytestmark = pytest.mark.kafka


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.flushes = 0
        self._grew = asyncio.Condition()

    async def handle(self, messages: Sequence[Message]) -> None:
        async with self._grew:
            self.seen += [(m.partition, m.offset) for m in messages]
            self._grew.notify_all()

    async def reach(self, n: int) -> None:
        async with self._grew:
            await asyncio.wait_for(self._grew.wait_for(lambda: len(self.seen) >= n), 30)

    async def flush(self) -> None:
        self.flushes += 1


async def produce(options: dict[str, Any], topic: str, partition: int, n: int) -> None:
    producer = AIOKafkaProducer(**options, acks="all")
    await producer.start()
    try:
        for i in range(n):
            await producer.send(topic, key=b"k", value=str(i).encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def two_partitions(settings: Settings, options: dict[str, Any], topic: str, n: int) -> None:
    """``topic`` with two partitions of ``n`` records each."""
    await ensure_topics(settings, [TopicSpec(topic, 2)])
    await produce(options, topic, 0, n)
    await produce(options, topic, 1, n)


async def test_release_hands_partitions_over_at_the_committed_offset(
    settings: Settings, kafka_options: dict[str, Any], unique_name: Callable[[str], str]
) -> None:
    topic, group = unique_name("bulk"), unique_name("bulk-group")
    await two_partitions(settings, kafka_options, topic, 50)

    def reader(recorder: Recorder) -> PartitionedReader:
        return PartitionedReader(
            kafka_options, topic, group, recorder.handle, recorder.flush, slice_records=7
        )

    first, second = Recorder(), Recorder()
    a = reader(first)
    task_a = asyncio.create_task(a.run())
    try:
        a.own({0})
        await first.reach(50)
        await asyncio.sleep(0.3)
        assert {p for p, _ in first.seen} == {0}  # partition 1 is not this worker's
        await asyncio.wait_for(a.release(), 30)
        assert first.flushes >= 1  # flushed before committing
    finally:
        task_a.cancel()
    b = reader(second)
    task_b = asyncio.create_task(b.run())
    try:
        b.own({0, 1})
        await second.reach(50)
        await produce(kafka_options, topic, 0, 10)
        await second.reach(60)
        await asyncio.sleep(0.3)
    finally:
        task_b.cancel()
    assert first.seen == [(0, o) for o in range(50)]
    assert sorted(second.seen) == [(0, o) for o in range(50, 60)] + [(1, o) for o in range(50)]


async def test_a_partition_the_group_never_committed_starts_where_start_from_says(
    settings: Settings, kafka_options: dict[str, Any], unique_name: Callable[[str], str]
) -> None:
    topic, group = unique_name("bulk-start"), unique_name("bulk-start-group")
    await two_partitions(settings, kafka_options, topic, 30)
    asked: list[list[int]] = []

    async def start_from(tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        asked.append(sorted(tp.partition for tp in tps))
        return {tp: 20 for tp in tps if tp.partition == 0}  # partition 1: no earlier group

    recorder = Recorder()
    reader = PartitionedReader(
        kafka_options, topic, group, recorder.handle, recorder.flush, start_from=start_from
    )
    task = asyncio.create_task(reader.run())
    try:
        reader.own({0, 1})
        await recorder.reach(40)
        await asyncio.wait_for(reader.release(), 30)
        expected = [(0, o) for o in range(20, 30)] + [(1, o) for o in range(30)]
        assert sorted(recorder.seen) == expected
        # Once the group has committed, its own offsets win: start_from is not asked again.
        await produce(kafka_options, topic, 0, 5)
        reader.own({0, 1})
        await recorder.reach(45)
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
    assert asked == [[0, 1]]
    assert sorted(recorder.seen) == sorted(expected + [(0, o) for o in range(30, 35)])


async def test_a_reader_that_keeps_failing_is_reported_until_it_works_again(
    settings: Settings, kafka_options: dict[str, Any], unique_name: Callable[[str], str]
) -> None:
    """A handler that fails on every fetch (a poison record no rule catches, a sink that is
    gone) makes the reader start over again and again: after two failed rounds it is
    *failing* (what /health/ answers 503 on), and once a round works it is not."""
    topic, group = unique_name("bulk-failing"), unique_name("bulk-group")
    await two_partitions(settings, kafka_options, topic, 5)
    recorder, broken = Recorder(), True

    async def handle(messages: Sequence[Message]) -> None:
        if broken:
            raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")
        await recorder.handle(messages)

    health = ReaderHealth()
    reader = PartitionedReader(
        kafka_options, topic, group, handle, recorder.flush, health=health, name="ingest"
    )
    task = asyncio.create_task(reader.run(retry_seconds=0.2))
    try:
        reader.own({0, 1})
        async with asyncio.timeout(30):
            while "ingest" not in health.problems():  # noqa: ASYNC110 (state, not an event)
                await asyncio.sleep(0.05)
        assert "ValueError: Exceeds the limit" in health.problems()["ingest"]
        broken = False
        await recorder.reach(10)  # nothing was committed past the failing records
        assert health.problems() == {}
    finally:
        task.cancel()
