"""Small cluster-metadata helpers the agents and clients share (public aiokafka admin API)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from agents.health import HEALTHY_SECONDS, ReaderHealth
from models.wire import DeadLetter, Undecodable

KafkaOptions = Mapping[str, Any]
"""Connection keyword arguments for every aiokafka client (``bootstrap_servers``, security);
built once by ``app.kafka.kafka_client_options`` and passed down to the agents."""

log = logging.getLogger(__name__)


async def retry_forever(
    what: str,
    attempt: Callable[[], Awaitable[None]],
    retry_seconds: float = 5.0,
    *,
    health: ReaderHealth | None = None,
    healthy_seconds: float = HEALTHY_SECONDS,
) -> None:
    """Run ``attempt`` for ever: a failure (a broken connection, a store down) is logged
    and retried after ``retry_seconds``, never fatal; cancelling stops it. With ``health``,
    failures are reported there as reader ``what`` (logged once per kind; one that keeps
    failing degrades /health/), and an attempt that has run ``healthy_seconds`` without
    failing is reported as working again (the attempt may report it sooner itself)."""
    loop = asyncio.get_running_loop()
    while True:
        working = None if health is None else loop.call_later(healthy_seconds, health.ok, what)
        try:
            await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = exc
        else:
            continue  # it returned: start it over
        finally:
            if working is not None:
                working.cancel()
        if health is not None:
            health.failed(what, failure, retry_seconds=retry_seconds)
        else:
            log.error(
                "%s failed (%s: %s); retrying in %gs",
                what,
                type(failure).__name__,
                failure,
                retry_seconds,
            )
        await asyncio.sleep(retry_seconds)


async def partitions_of(options: KafkaOptions, topic: str) -> list[int]:
    """The partition ids of ``topic``; empty if it does not exist."""
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"]:
        return []
    return sorted(p["partition"] for p in described["partitions"])


async def committed_offsets(
    options: KafkaOptions, group_id: str, partitions: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    """The offsets ``group_id`` has committed for ``partitions`` (those it never committed
    are left out). Read with the admin API: it works whether or not the group has members."""
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group_id, partitions=list(partitions))
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in found.items() if meta.offset >= 0}


class KnownTopics:
    """Which topics exist, for validating ``reply_to``: one long-lived admin client and
    one topic list for every name.

    A name in the list is known. An unknown name makes the list be read again, but at most
    once per ``refresh_seconds`` for all names together: a flood of requests naming random
    topics costs one metadata request per interval, never one connection or request each
    (they are refused at once, without waiting). So a client that creates its reply topic
    and sends a request at once is answered, unless the list was read for another unknown
    name less than ``refresh_seconds`` before (then its first requests are dead-lettered:
    create reply topics a moment before using them). :meth:`close` closes the client.
    """

    def __init__(self, options: KafkaOptions, refresh_seconds: float = 1.0) -> None:
        self._options = options
        self._refresh = refresh_seconds
        self._names: set[str] = set()
        self._read_at = float("-inf")  # when the list was last read (monotonic)
        self._admin: AIOKafkaAdminClient | None = None
        self._lock = asyncio.Lock()
        self.reads = 0  # lists read (tests, /model/)

    async def exists(self, name: str) -> bool:
        if name in self._names:
            return True
        if time.monotonic() - self._read_at < self._refresh:
            return False
        async with self._lock:
            if name not in self._names and time.monotonic() - self._read_at >= self._refresh:
                self._read_at = time.monotonic()  # also when it fails: no retry storm
                if self._admin is None:
                    admin = AIOKafkaAdminClient(**self._options)
                    await admin.start()
                    self._admin = admin
                self.reads += 1
                self._names = set(await self._admin.list_topics())
        return name in self._names

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()


Record = tuple[int | None, bytes | None, bytes | None]
"""(partition, key, value): a partition of ``None`` is the key's default partition."""


async def send_records(
    producer: AIOKafkaProducer, topic: str, records: Iterable[Record]
) -> list[asyncio.Future[Any]]:
    """Produce ``records`` as whole record batches, one open batch per partition, each sent
    as it fills; returns the batches' delivery futures, not awaited. ~3-4x cheaper per
    record than one ``send`` each (which looks up metadata and partitions every time).

    A record without a partition goes where ``send`` and the Java client would put it (the
    murmur2 of its key), so keyed co-partitioning is unchanged.
    """
    partitioner = DefaultPartitioner()
    partitions: list[int] | None = None
    batches: dict[int, Any] = {}
    pending = []
    for partition, key, value in records:
        if partition is None:
            if partitions is None:
                partitions = sorted(await producer.partitions_for(topic))
            partition = partitioner(key, partitions, partitions)
        batch = batches.get(partition)
        if batch is None:
            batch = batches[partition] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it
            pending.append(await producer.send_batch(batch, topic, partition=partition))
            batch = batches[partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a message of {len(value or b'')} bytes exceeds the batch size")
    for partition, batch in batches.items():
        if batch.record_count():
            pending.append(await producer.send_batch(batch, topic, partition=partition))
    return pending


async def send_bulk(
    producer: AIOKafkaProducer,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes | None]],
) -> int:
    """Produce keyed ``messages`` (:func:`send_records`); returns once every batch is
    acknowledged, with how many messages were sent."""
    records = [(None, key, value) for key, value in messages]
    await asyncio.gather(*await send_records(producer, topic, records))
    return len(records)


class DeadLetterQueue:
    """Dead letters to a DLQ topic, each on the partition numbered as its source partition.

    :meth:`send` writes one atomic record batch per partition (more, one after the other,
    if they do not fit) and returns when all are acknowledged. Sent one call after the
    other, the newest record of DLQ partition *p* then names the highest source offset of
    partition *p* dead-lettered so far, with every lower one before it
    (:func:`dead_letter_marks`). The producer should be idempotent with ``acks="all"``.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        by_partition: dict[int, list[DeadLetter]] = {}
        for letter in letters:
            by_partition.setdefault(letter.partition, []).append(letter)
        await asyncio.gather(*(self._send_in_order(p, ls) for p, ls in by_partition.items()))

    async def _send_in_order(self, partition: int, letters: list[DeadLetter]) -> None:
        batch = self.producer.create_batch()
        for letter in letters:
            headers = list(letter.headers.items())
            if batch.append(key=letter.key, value=letter.value, timestamp=None, headers=headers):
                continue
            await (await self.producer.send_batch(batch, self.topic, partition=partition))
            batch = self.producer.create_batch()
            batch.append(key=letter.key, value=letter.value, timestamp=None, headers=headers)
        if batch.record_count():
            await (await self.producer.send_batch(batch, self.topic, partition=partition))


async def dead_letter_marks(
    options: KafkaOptions, dlq_topic: str, source_topic: str, *, chunk: int = 500
) -> dict[int, int]:
    """The highest source offset per partition of ``source_topic`` already in ``dlq_topic``.

    Reads each DLQ partition backwards from its end, ``chunk`` records at a time, until a
    dead letter of ``source_topic`` for that partition number is found (the newest one, see
    :class:`DeadLetterQueue`); records that are not dead letters are skipped.
    """
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    await consumer.start()
    marks: dict[int, int] = {}
    try:
        partitions = [TopicPartition(dlq_topic, p) for p in await partitions_of(options, dlq_topic)]
        if not partitions:
            return marks
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        consumer.assign(partitions)
        for tp in partitions:
            stop = ends[tp]
            while stop > starts[tp] and tp.partition not in marks:
                start = max(starts[tp], stop - chunk)
                found = await _newest_mark(consumer, tp, start, stop, source_topic)
                if found is not None:
                    marks[tp.partition] = found
                stop = start
    finally:
        await consumer.stop()
    return marks


async def _newest_mark(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, stop: int, source_topic: str
) -> int | None:
    """The source offset of the newest dead letter for ``tp.partition`` in ``[start, stop)``."""
    consumer.seek(tp, start)
    best = None
    position = start
    while position < stop:
        records = (await consumer.getmany(tp, timeout_ms=2000)).get(tp, [])
        if not records:
            break  # only control records (or nothing) left below ``stop``
        for record in records:
            if record.offset >= stop:
                return best
            position = record.offset + 1
            try:
                letter = DeadLetter.parse(record.key, record.value, dict(record.headers))
            except Undecodable:
                continue
            if letter.topic == source_topic and letter.partition == tp.partition:
                best = letter.offset if best is None else max(best, letter.offset)
    return best
