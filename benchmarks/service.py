"""End-to-end speed of the running service, each figure a ratio against raw Kafka.

Runs a real trainer and scorer (``streamrec worker`` subprocesses) on the broker the
settings point at (start it with ``streamrec dev up``), with topics of their own, and
measures in the same run:

* request → reply latency through the scorer vs an echo round trip through raw aiokafka
  (a plain consumer that produces every request straight back): the transport floor;
* reply throughput with many requests in flight vs the same echo;
* ingest: ratings/s from publish until the trainer has trained them vs raw aiokafka
  consuming the same topic.

    python -m benchmarks.service [--requests 2000] [--ratings 30000] [--json]
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
from app.settings import Settings, model_config_of
from app.stores import write_current_snapshot
from app.topics import TopicSpec, ensure_topics
from benchmarks.common import namespace, table
from benchmarks.trainer import publish_until_trained, raw_consume_rate
from devtools.workers import WorkerProcess, free_port
from models.incremental import IncrementalModel
from models.synthetic import generate_ratings

#: What ``figures(quick=True)`` takes on the dev machine, roughly (benchmarks.run_all).
QUICK_SECONDS = 1  # no figures: benchmarks.scorer owns the request figures


async def tail_consumer(settings: Settings, topic: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        **kafka_client_options(settings), group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    return consumer


async def echo(settings: Settings, source: str, target: str, ready: asyncio.Event) -> None:
    """The raw baseline's 'scorer': consume each message and produce it straight back."""
    consumer = await tail_consumer(settings, source)
    producer = AIOKafkaProducer(**kafka_client_options(settings), linger_ms=0)
    await producer.start()
    ready.set()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for messages in batch.values():
                for m in messages:
                    await producer.send(target, key=m.key, value=m.value)
    finally:
        await producer.stop()
        await consumer.stop()


async def round_trips(
    settings: Settings,
    send_to: str,
    reply_on: str,
    users: list[str],
    *,
    sequential: int,
    pipelined: int,
) -> dict[str, float]:
    """Latency of ``sequential`` one-at-a-time requests; throughput of ``pipelined`` at once."""
    consumer = await tail_consumer(settings, reply_on)
    producer = AIOKafkaProducer(**kafka_client_options(settings), linger_ms=0)
    await producer.start()

    async def send(n: int) -> str:
        rid = uuid.uuid4().hex
        user = users[n % len(users)]
        body = {"request_id": rid, "user": user, "k": 10}
        await producer.send(send_to, key=user.encode(), value=json.dumps(body).encode())
        return rid

    async def collect(wanted: set[str]) -> None:
        while wanted:
            batch = await consumer.getmany(timeout_ms=1000)
            for messages in batch.values():
                for m in messages:
                    wanted.discard(json.loads(m.value)["request_id"])

    try:
        latencies = []
        for n in range(sequential):
            start = time.perf_counter()
            await asyncio.wait_for(collect({await send(n)}), 30)
            latencies.append(time.perf_counter() - start)
        start = time.perf_counter()
        wanted = {await send(n) for n in range(pipelined)}
        await producer.flush()
        await asyncio.wait_for(collect(wanted), 120)
        seconds = time.perf_counter() - start
    finally:
        await producer.stop()
        await consumer.stop()
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
        "per_second": pipelined / seconds,
    }


def run(n_requests: int, n_ratings: int, *, training: bool = True) -> dict[str, Any]:
    ns = namespace("service", snapshot_every_seconds=5)
    settings, env, home = ns.settings, ns.env, ns.home
    echo_in, echo_out = f"{ns.prefix}-echo-in", f"{ns.prefix}-echo-out"
    asyncio.run(
        ensure_topics(
            settings,
            [
                TopicSpec(echo_in, settings.topic_partitions),
                TopicSpec(echo_out, settings.topic_partitions),
            ],
        )
    )

    data = generate_ratings(2000, 1000, n_ratings, 8, seed=3)
    model = IncrementalModel(model_config_of(settings))
    model.train_batch(data[: n_ratings // 2], epochs=5)
    asyncio.run(write_current_snapshot(settings.model_store, settings, model))
    users = sorted({r.user for r in data})

    workers = [
        WorkerProcess("trainer", free_port(), home / "trainer.log", env).start(),
        WorkerProcess("scorer", free_port(), home / "scorer.log", env).start(),
    ]
    try:
        for w in workers:
            w.wait_ready(timeout=120)

        async def service_and_echo() -> tuple[dict[str, float], dict[str, float]]:
            ready = asyncio.Event()
            echo_task = asyncio.create_task(echo(settings, echo_in, echo_out, ready))
            await ready.wait()
            raw = await round_trips(
                settings, echo_in, echo_out, users, sequential=200, pipelined=n_requests
            )
            echo_task.cancel()
            svc = await round_trips(
                settings,
                settings.requests_topic,
                settings.responses_topic,
                users,
                sequential=200,
                pipelined=n_requests,
            )
            return raw, svc

        raw, svc = asyncio.run(service_and_echo())

        live = data[n_ratings // 2 :]
        if training:
            trained_rate, _ = asyncio.run(publish_until_trained(settings, workers[0], live))
            raw_rate = asyncio.run(raw_consume_rate(settings, settings.ratings_topic, len(live)))
    finally:
        for w in workers:
            w.stop()
    report: dict[str, Any] = {
        "requests": n_requests,
        "ratings": len(live),
        "latency_p50_ms": {
            "service": svc["p50_ms"],
            "raw_echo": raw["p50_ms"],
            "ratio": svc["p50_ms"] / raw["p50_ms"],
        },
        "latency_p99_ms": {
            "service": svc["p99_ms"],
            "raw_echo": raw["p99_ms"],
            "ratio": svc["p99_ms"] / raw["p99_ms"],
        },
        "replies_per_second": {
            "service": svc["per_second"],
            "raw_echo": raw["per_second"],
            "ratio": svc["per_second"] / raw["per_second"],
        },
    }
    if training:
        report["ratings_trained_per_second"] = {
            "service": trained_rate,
            "raw_consume": raw_rate,
            "ratio": trained_rate / raw_rate,
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--ratings", type=int, default=30000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.requests, args.ratings)
    if args.json:
        print(json.dumps(result))
        return
    rows = [
        (name, *(float(v) for v in fig.values()))
        for name, fig in result.items()
        if isinstance(fig, dict)
    ]
    print(table(["figure", "streamrec", "raw baseline", "ratio"], rows))


if __name__ == "__main__":
    main()
