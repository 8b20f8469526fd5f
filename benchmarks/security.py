"""What TLS and SASL cost a Kafka client: SASL_SSL (SCRAM-SHA-512) against PLAINTEXT.

Both sides are raw aiokafka clients built by ``app.kafka.kafka_client_options`` against the
same dev broker (``streamrec dev up --secure``: the plaintext listener and the SASL_SSL one),
rounds interleaved so that load from other processes hits both alike:

* throughput: N messages of 1 KiB produced (acks=all) and consumed back, messages/s;
* connect: a producer's ``start()`` (bootstrap, TLS handshake, SCRAM login, metadata), ms.

Run with ``python -m benchmarks.security [--messages N] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.kafka import kafka_client_options
from app.settings import Settings
from app.topics import TopicSpec, ensure_topics
from benchmarks.common import Figure, machine, table
from devtools import DevSettings, KafkaBroker

QUICK_SECONDS = 10  # run_all --quick

PAYLOAD = b"x" * 1024
ROUNDS = 5  # best of, interleaved: the machine is shared and its load swings


async def _round_trip(settings: Settings, topic: str, count: int) -> float:
    """Messages/s to produce ``count`` messages (acks=all) and read them all back."""
    options = kafka_client_options(settings)
    producer = AIOKafkaProducer(**options, acks="all", linger_ms=5)
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        start_offset = await consumer.position(tp)
        began = time.perf_counter()
        for _ in range(count):
            await producer.send(topic, PAYLOAD, partition=0)
        await producer.flush()
        seen = 0
        while seen < count:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            seen += len(batch.get(tp, []))
        took = time.perf_counter() - began
        assert await consumer.position(tp) >= start_offset + count
        return count / took
    finally:
        await producer.stop()
        await consumer.stop()


async def _connect_ms(settings: Settings) -> float:
    producer = AIOKafkaProducer(**kafka_client_options(settings))
    began = time.perf_counter()
    await producer.start()
    took = (time.perf_counter() - began) * 1000
    await producer.stop()
    return took


def measure(messages: int, rounds: int = ROUNDS) -> dict[str, dict[str, float]]:
    plain = DevSettings()
    broker = KafkaBroker(plain)
    if not (broker.secure and broker.secure_probe()):
        raise SystemExit(
            f"skipped: no SASL_SSL listener at {broker.secure_bootstrap}; "
            "run `streamrec dev down --only kafka && streamrec dev up --secure`"
        )
    secure = broker.client_settings(plain)
    topic = f"bench-security-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(plain, [TopicSpec(topic, 1)]))
    rates: dict[str, list[float]] = {"plaintext": [], "sasl_ssl": []}
    connects: dict[str, list[float]] = {"plaintext": [], "sasl_ssl": []}
    for _ in range(rounds):
        for name, settings in (("plaintext", plain), ("sasl_ssl", secure)):
            rates[name].append(asyncio.run(_round_trip(settings, topic, messages)))
            connects[name].append(
                statistics.median(asyncio.run(_connect_ms(settings)) for _ in range(5))
            )
    return {
        "messages_per_second": {k: max(v) for k, v in rates.items()},
        "connect_ms": {k: min(v) for k, v in connects.items()},
    }


def figures(quick: bool) -> list[Figure]:
    result = measure(1000, rounds=3) if quick else measure(5000)
    rate, connect = result["messages_per_second"], result["connect_ms"]
    return [
        Figure(
            "produce+consume over SASL_SSL vs PLAINTEXT",
            baseline=rate["plaintext"],
            value=rate["sasl_ssl"],
            goal=0.33,  # measured 0.39-0.65 on a loaded machine: TLS may cost, not triple
            unit="msg/s",
        ),
        Figure(
            "client start over SASL_SSL vs PLAINTEXT",
            baseline=connect["plaintext"],
            value=connect["sasl_ssl"],
            goal=30.0,  # measured 9-21x (10-25 ms more): one handshake and login per client
            better="lower",
            unit="ms",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="per round")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = measure(args.messages, args.rounds)
    if args.json:
        print(json.dumps({**result, "machine": machine()}))
        return
    rows = [
        (name, fig["sasl_ssl"], fig["plaintext"], fig["sasl_ssl"] / fig["plaintext"])
        for name, fig in result.items()
    ]
    print(table(["figure", "SASL_SSL", "PLAINTEXT", "ratio"], rows))


if __name__ == "__main__":
    main()
