"""Smoke test of the real Kafka broker: admin, acks=all producer, consumer group."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytestmark = pytest.mark.kafka

MESSAGES = 1000
PARTITIONS = 4


async def test_admin_creates_a_topic_with_four_partitions(kafka_options, unique_name):
    topic = unique_name("smoke-admin")
    admin = AIOKafkaAdminClient(**kafka_options)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        # The controller has it; the broker's metadata may lag a moment (KRaft propagates
        # asynchronously: a loaded broker once answered UNKNOWN_TOPIC_OR_PARTITION here).
        for _ in range(50):
            described = await admin.describe_topics([topic])
            if described[0]["error_code"] != 3:
                break
            await asyncio.sleep(0.2)
        assert described[0]["error_code"] == 0
        assert len(described[0]["partitions"]) == PARTITIONS
        await admin.delete_topics([topic])
    finally:
        await admin.close()


async def test_every_acked_message_is_consumed_back_by_a_group(kafka_options, unique_name):
    topic, group = unique_name("smoke-roundtrip"), unique_name("smoke-group")
    admin = AIOKafkaAdminClient(**kafka_options)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()

    sent = {f"message-{i}" for i in range(MESSAGES)}
    producer = AIOKafkaProducer(**kafka_options, acks="all")
    await producer.start()
    try:
        acks = await asyncio.gather(
            *[
                await producer.send(topic, value.encode(), key=f"user-{i % 97}".encode())
                for i, value in enumerate(sorted(sent))
            ]
        )
    finally:
        await producer.stop()
    assert {meta.partition for meta in acks} == set(range(PARTITIONS))

    consumer = AIOKafkaConsumer(
        topic,
        **kafka_options,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[str] = []
    try:
        async with asyncio.timeout(60):
            while len(received) < MESSAGES:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    received += [record.value.decode() for record in records]
        await consumer.commit()
        committed = {tp.partition: await consumer.committed(tp) for tp in consumer.assignment()}
    finally:
        await consumer.stop()

    assert len(received) == MESSAGES  # no duplicates
    assert set(received) == sent
    assert sum(committed.values()) == MESSAGES
