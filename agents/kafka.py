"""Small cluster-metadata helpers the agents and clients share (public aiokafka admin API)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

KafkaOptions = Mapping[str, Any]
"""Connection keyword arguments for every aiokafka client (``bootstrap_servers``, security);
built once by ``app.kafka.kafka_client_options`` and passed down to the agents."""


async def list_topics(options: KafkaOptions) -> set[str]:
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


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


class KnownTopics:
    """Which topics exist, for validating ``reply_to``; refreshed at most every few seconds."""

    def __init__(self, options: KafkaOptions, refresh_seconds: float = 5.0) -> None:
        self._options = options
        self._refresh = refresh_seconds
        self._names: set[str] = set()
        self._checked = float("-inf")
        self._lock = asyncio.Lock()

    async def exists(self, name: str) -> bool:
        if name in self._names:
            return True
        async with self._lock:
            if time.monotonic() - self._checked >= self._refresh:
                self._names = await list_topics(self._options)
                self._checked = time.monotonic()
        return name in self._names


async def send_bulk(
    producer: AIOKafkaProducer,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes | None]],
) -> int:
    """Produce keyed ``messages`` as whole record batches, ~2x faster than one ``send`` each.

    Partitions are chosen by the producer's default partitioner (murmur2 of the key, as
    ``send`` and the Java client choose), so keyed co-partitioning is unchanged. Returns
    once every batch is acknowledged; returns how many messages were sent.
    """
    partitioner = DefaultPartitioner()
    partitions = sorted(await producer.partitions_for(topic))
    batches: dict[int, Any] = {}
    pending = []
    sent = 0
    for key, value in messages:
        partition = partitioner(key, partitions, partitions)
        batch = batches.get(partition)
        if batch is None:
            batch = batches[partition] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it
            pending.append(await producer.send_batch(batch, topic, partition=partition))
            batch = batches[partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a message of {len(value or b'')} bytes exceeds the batch size")
        sent += 1
    for partition, batch in batches.items():
        if batch.record_count():
            pending.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*pending)
    return sent
