"""agents.kafka.DeadLetterQueue and dead_letter_marks on the real broker: each dead letter on
the DLQ partition of its source partition, and the tails say what was already sent."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from agents.kafka import DeadLetterQueue, dead_letter_marks, send_bulk
from app.kafka import kafka_client_options
from app.settings import Settings
from app.topics import TopicSpec, ensure_topics
from models.wire import DeadLetter, Undecodable

PARTITIONS = 4


def letter(partition: int, offset: int, topic: str = "ratings") -> DeadLetter:
    exc = Undecodable("malformed", f"bad at {offset}")
    return DeadLetter.of(
        exc, key=b"u", value=b"x" * 100, topic=topic, partition=partition, offset=offset
    )


async def test_marks_are_the_newest_source_offset_per_partition(
    settings: Settings, kafka_bootstrap: str, unique_name
) -> None:
    dlq = unique_name("dlq")
    await ensure_topics(settings, [TopicSpec(dlq, PARTITIONS)])
    options = kafka_client_options(settings)
    assert await dead_letter_marks(options, dlq, "ratings") == {}  # an empty DLQ
    producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        queue = DeadLetterQueue(producer, dlq)
        await queue.send([letter(0, 5), letter(2, 7), letter(0, 9)])
        # More than one record batch holds (the producer's default batch is 16 KiB).
        await queue.send([letter(1, n) for n in range(10, 400)])
        await queue.send([letter(3, 4, topic="other-topic")])  # another source topic
        # Newer records without dead-letter headers, more than one chunk of them per
        # partition: the marks are found further back.
        junk = [(f"j{n}".encode(), b"not a dead letter") for n in range(400)]
        await send_bulk(producer, dlq, junk)
    finally:
        await producer.stop()
    marks = await dead_letter_marks(options, dlq, "ratings", chunk=50)
    assert marks == {0: 9, 1: 399, 2: 7}
    assert await dead_letter_marks(options, dlq, "other-topic") == {3: 4}
