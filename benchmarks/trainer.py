"""Training at Kafka speed (``python -m benchmarks.trainer [--ratings N] [--json]``).

One trainer (a ``streamrec worker --role trainer`` subprocess) in a fresh namespace of
topics and store on the dev broker. After a warm-up, ``--ratings`` synthetic ratings are
published as fast as the broker takes them (whole record batches); the figure is ratings/s
from the first publish until the trainer's ``/model/`` counts them all trained. Baseline,
the same run: a raw aiokafka consumer reading the same topic from the start (``getmany``).

``--profile out.svg`` records the saturated trainer with py-spy meanwhile (the conclusions
are in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.kafka import send_bulk
from app.commands.service import publish_ratings
from app.kafka import kafka_client_options
from app.settings import Settings
from benchmarks.common import Figure, machine, namespace, table
from devtools.workers import WorkerProcess, free_port
from models.synthetic import generate_ratings
from models.wire import encode_rating

#: What ``figures(quick=True)`` takes on the dev machine, roughly (benchmarks.run_all).
QUICK_SECONDS = 45

#: The issue's target (goal: 0.5) for publish -> trained vs raw consume.
TARGET = 0.25


def trained_events(worker: WorkerProcess) -> int:
    status, body = worker.get("/model/")
    return body.get("trained_events", 0) if status == 200 else 0


def batch_counters(worker: WorkerProcess) -> dict[str, float]:
    """The trainer's batch counters from ``/metrics``: batches, events in them, seconds
    spent in them (differences between two reads describe the batches in between)."""
    _, text = worker.get("/metrics")
    wanted = {
        "streamrec_batch_events_count": "batches",
        "streamrec_batch_events_sum": "events",
        "streamrec_batch_seconds_sum": "seconds",
    }
    out = dict.fromkeys(wanted.values(), 0.0)
    for line in str(text).splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[wanted[name]] = float(value)
    return out


def batch_stats(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Batches trained between two :func:`batch_counters` reads: how many, their mean size
    and the mean seconds one took (the fit thread's wall time per batch)."""
    batches = max(1.0, after["batches"] - before["batches"])
    return {
        "batches": after["batches"] - before["batches"],
        "mean_events": round((after["events"] - before["events"]) / batches, 1),
        "mean_seconds": round((after["seconds"] - before["seconds"]) / batches, 4),
    }


async def publish_until_trained(
    settings: Settings, worker: WorkerProcess, ratings: list[Any], wait: float = 600
) -> tuple[float, float]:
    """(ratings trained/s from the first publish, ratings published/s) for ``ratings``.

    The producer is started and the ratings encoded before the clock starts, and they go
    out as whole record batches (:func:`agents.kafka.send_bulk`), so the publisher is as
    little of the figure as a Python producer can be.
    """
    messages = [encode_rating(r) for r in ratings]
    producer = AIOKafkaProducer(
        **kafka_client_options(settings), acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        before = await asyncio.to_thread(trained_events, worker)
        start = time.perf_counter()
        await send_bulk(producer, settings.ratings_topic, messages)
        published = time.perf_counter() - start
    finally:
        await producer.stop()
    deadline = time.monotonic() + wait
    while await asyncio.to_thread(trained_events, worker) < before + len(ratings):
        if time.monotonic() > deadline or not worker.running():
            tail = worker.log_tail()
            raise TimeoutError(f"trainer did not train {len(ratings)} ratings:\n{tail}")
        await asyncio.sleep(0.05)
    return len(ratings) / (time.perf_counter() - start), len(ratings) / published


async def raw_consume_rate(settings: Settings, topic: str, count: int) -> float:
    """Messages/s of a raw aiokafka consumer reading ``count`` messages of ``topic`` (the
    best of three: one read of a short topic is at the mercy of the machine's load)."""
    return max([await _raw_consume_once(settings, topic, count) for _ in range(3)])


async def _raw_consume_once(settings: Settings, topic: str, count: int) -> float:
    consumer = AIOKafkaConsumer(
        **kafka_client_options(settings),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    consumer.assign([TopicPartition(topic, p) for p in range(settings.topic_partitions)])
    start, seen = time.perf_counter(), 0
    try:
        while seen < count:
            batch = await consumer.getmany(timeout_ms=1000)
            seen += sum(len(m) for m in batch.values())
    finally:
        await consumer.stop()
    return seen / (time.perf_counter() - start)


def run(
    n_ratings: int, profile: Path | None = None, phase: str = "backlog", **overrides: Any
) -> dict[str, Any]:
    """Both figures in one namespace: publish -> trained with the trainer running, then
    backlog -> trained (a backlog published while the trainer was stopped: its capacity).
    ``profile`` records the trainer during ``phase`` (``publish`` or ``backlog``)."""
    ns = namespace("trainer", **overrides)
    settings = ns.settings
    data = generate_ratings(5000, 2000, 2 * n_ratings + 5000, 16, seed=3)
    warm, live, backlog = data[:5000], data[5000 : 5000 + n_ratings], data[5000 + n_ratings :]
    worker = WorkerProcess("trainer", free_port(), ns.home / "trainer.log", ns.env).start()
    spy = None
    try:
        worker.wait_ready(timeout=120, model=False)
        asyncio.run(publish_until_trained(settings, worker, warm))
        if profile is not None and phase == "publish":
            spy = start_profile(worker, profile)
        counters = batch_counters(worker)
        trained_rate, publish_rate = asyncio.run(publish_until_trained(settings, worker, live))
        publish_batches = batch_stats(counters, batch_counters(worker))
        spy = stop_profile(spy)
        worker.stop()
        asyncio.run(publish_ratings(settings, backlog))
        worker = WorkerProcess("trainer", free_port(), ns.home / "trainer-2.log", ns.env).start()
        worker.wait_ready(timeout=120, model=True)
        if profile is not None and phase == "backlog":
            spy = start_profile(worker, profile)
        counters = batch_counters(worker)
        backlog_rate = asyncio.run(drain_rate(worker, len(warm) + len(live) + len(backlog)))
        backlog_batches = batch_stats(counters, batch_counters(worker))
        spy = stop_profile(spy)
        _, info = worker.get("/model/")
        worker.stop()  # the baseline gets the machine the trainer had (no consolidation left)
        raw_rate = asyncio.run(raw_consume_rate(settings, settings.ratings_topic, len(data)))
    finally:
        worker.stop()
        if spy is not None and spy.poll() is None:
            spy.kill()
    return {
        "ratings": len(live),
        "trained_per_second": trained_rate,
        "published_per_second": publish_rate,
        "backlog_trained_per_second": backlog_rate,
        "raw_consume_per_second": raw_rate,
        "ratio": trained_rate / raw_rate,
        "backlog_ratio": backlog_rate / raw_rate,
        "last_batch": info.get("last_batch"),
        "publish_batches": publish_batches,
        "backlog_batches": backlog_batches,
        "machine": machine(),
    }


async def drain_rate(worker: WorkerProcess, total: int, wait: float = 600) -> float:
    """Ratings/s from the first batch the (restarted) trainer trains until ``total``."""
    deadline = time.monotonic() + wait
    restored = begun = await asyncio.to_thread(trained_events, worker)
    start = time.perf_counter()
    while (done := await asyncio.to_thread(trained_events, worker)) < total:
        if begun == restored and done > restored:  # the first batch: start the clock
            begun, start = done, time.perf_counter()
        if time.monotonic() > deadline or not worker.running():
            raise TimeoutError(f"trainer stuck at {done} of {total}:\n{worker.log_tail()}")
        await asyncio.sleep(0.05)
    return (done - begun) / (time.perf_counter() - start)


def start_profile(worker: WorkerProcess, out: Path) -> subprocess.Popen[bytes]:
    """py-spy recording ``worker`` (and its threads) until terminated."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    assert worker.proc is not None
    return subprocess.Popen(
        [py_spy, "record", "-p", str(worker.proc.pid), "-o", str(out), "-r", "200", "--idle"]
        + ["--threads"]  # per-thread stacks: the loop, the decode and fit workers, consolidation
        + (["-f", "raw"] if out.suffix == ".txt" else []),
        stdout=subprocess.DEVNULL,
        stderr=sys.stderr,
    )


def stop_profile(spy: subprocess.Popen[bytes] | None) -> subprocess.Popen[bytes] | None:
    """Stop a py-spy recording (it writes its output on SIGINT); None, what is left of it."""
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    return None


def figures(quick: bool) -> list[Figure]:
    r = run(50_000 if quick else 300_000)
    cases = (
        (
            "publish -> trained",
            "trained_per_second",
            f"the publisher (same machine) sent {r['published_per_second']:,.0f}/s",
        ),
        (
            "backlog -> trained (trainer capacity)",
            "backlog_trained_per_second",
            "from the restarted trainer's first batch to its last",
        ),
    )
    return [
        Figure(
            f"ratings/s {what}, one trainer, {r['ratings']:,} ratings, vs raw aiokafka consume",
            baseline=round(r["raw_consume_per_second"]),
            value=round(r[field]),
            goal=TARGET,
            unit="ratings/s",
            note=note,
        )
        for what, field, note in cases
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=200_000)
    parser.add_argument("--profile", type=Path, help="py-spy output (.svg, or .txt: raw)")
    parser.add_argument(
        "--profile-phase",
        choices=("publish", "backlog"),
        default="backlog",
        help="The phase --profile records (default: the restarted trainer's backlog).",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="A trainer setting."
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    result = run(args.ratings, args.profile, args.profile_phase, **overrides)
    if args.json:
        print(json.dumps(result))
        return
    print(
        table(
            ["figure", "value"],
            [
                ("ratings", result["ratings"]),
                ("trained/s (publish -> trained)", f"{result['trained_per_second']:,.0f}"),
                ("published/s", f"{result['published_per_second']:,.0f}"),
                ("backlog trained/s", f"{result['backlog_trained_per_second']:,.0f}"),
                ("raw consume/s", f"{result['raw_consume_per_second']:,.0f}"),
                ("ratio publish -> trained", f"{result['ratio']:.3f}"),
                ("ratio backlog -> trained", f"{result['backlog_ratio']:.3f}"),
                ("batches while publishing", result["publish_batches"]),
                ("batches draining the backlog", result["backlog_batches"]),
            ],
        )
    )


if __name__ == "__main__":
    main()
