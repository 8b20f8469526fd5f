"""Scorer processes at Kafka speed: each figure a ratio against raw aiokafka, same run.

Runs real ``streamrec worker --role scorer`` subprocesses (no trainer: the model is a
snapshot written up front and promoted) on the broker the settings point at (start it with
``streamrec dev up``), with topics of their own, and measures:

* lone-request p50 and idle p99 vs an echo round trip through raw aiokafka;
* replies/s with 2,000 requests in flight vs the same echo;
* ingest: ratings/s into the ``seen-items`` table (the slope of the scorer's own counter)
  while a backlog of ratings streams in, vs raw aiokafka consuming the same topic;
* request p99 while that backlog streams in at the scorer's maximum ingest rate vs the
  idle p99 of the same scorer;
* scaling: replies/s with 2 scorer processes vs 1, and the CPU each used;
* memory: RSS a scorer adds to serve 100k users x 10k items x 64 dims vs the raw bytes of
  the arrays scoring needs (the RSS of the same process serving a tiny model subtracted).

    python -m benchmarks.scorer [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from app.kafka import kafka_client_options
from app.settings import PROJECT_ROOT, Settings, model_config_of
from app.stores import write_current_snapshot
from app.topics import TopicSpec, ensure_topics
from benchmarks.common import Figure, machine, table
from benchmarks.service import echo, round_trips, tail_consumer
from benchmarks.trainer import raw_consume_rate
from devtools.workers import WorkerProcess, free_port, isolated_env, settings_for
from models.config import ModelConfig
from models.events import Rating
from models.incremental import IncrementalModel
from models.synthetic import generate_ratings
from models.wire import Reply, encode_rating

QUICK_SECONDS = 130  # run_all --quick: four scorer starts dominate


@dataclass
class Deployment:
    settings: Settings
    env: dict[str, str]
    home: Path
    prefix: str


def deployment(name: str, **overrides: Any) -> Deployment:
    base = Settings()
    prefix = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    home = PROJECT_ROOT / "var" / "bench" / prefix
    env = isolated_env(
        prefix, base, model_store=f"file://{home / 'models'}", datadir=home / "faust", **overrides
    )
    settings = settings_for(env)
    asyncio.run(ensure_topics(settings, role="scorer"))
    return Deployment(settings, env, home, prefix)


async def drop_topics(dep: Deployment) -> None:
    """Delete the deployment's topics: a broker that keeps every run's namespace makes each
    client's metadata update parse all of them (measured: 127 ms of one scorer's event loop
    with 923 topics, the largest stall of a flood; docs/benchmarks.md "Profiles: scorer")."""
    admin = AIOKafkaAdminClient(**kafka_client_options(dep.settings))
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(f"{dep.prefix}-")]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


def serve_model(dep: Deployment, model: IncrementalModel) -> None:
    asyncio.run(write_current_snapshot(dep.settings.model_store, dep.settings, model))


def start_scorer(dep: Deployment, n: int) -> WorkerProcess:
    worker = WorkerProcess("scorer", free_port(), dep.home / f"scorer-{n}.log", dep.env).start()
    worker.wait_ready(timeout=180)
    return worker


def metric(worker: WorkerProcess, name: str) -> float:
    """The sum of a Prometheus metric's samples on ``worker``."""
    _, text = worker.get("/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {")
    )


def settled(workers: list[WorkerProcess], topic: str, partitions: int) -> bool:
    owned: list[str] = []
    for w in workers:
        _, body = w.get("/health/")
        if body.get("rebalancing", True):
            return False
        mine = [p for p in body.get("partitions", []) if p.startswith(f"{topic}:")]
        if not mine:
            return False
        owned += mine
    return len(owned) == partitions


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


async def publish_fast(settings: Settings, ratings: list[Rating]) -> float:
    """Produce ``ratings`` as fast as one aiokafka producer can; returns ratings/s."""
    producer = AIOKafkaProducer(
        **kafka_client_options(settings), acks=1, linger_ms=10, max_batch_size=512 * 1024
    )
    await producer.start()
    start = time.perf_counter()
    try:
        for rating in ratings:
            key, value = encode_rating(rating)
            await producer.send(settings.ratings_topic, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()
    return len(ratings) / (time.perf_counter() - start)


async def latencies_until(
    settings: Settings,
    users: list[str],
    done: asyncio.Event,
    go: asyncio.Event | None = None,
) -> list[float]:
    """Round-trip seconds of one-at-a-time requests, sent from when ``go`` is set (the
    client is started before it) until ``done`` is set."""
    consumer = await tail_consumer(settings, settings.responses_topic)
    producer = AIOKafkaProducer(**kafka_client_options(settings), linger_ms=0)
    await producer.start()
    out: list[float] = []
    try:
        if go is not None:
            await go.wait()
        n = 0
        while not done.is_set():
            rid, user = uuid.uuid4().hex, users[n % len(users)]
            n += 1
            body = {"request_id": rid, "user": user, "k": 10}
            start = time.perf_counter()
            await producer.send(
                settings.requests_topic, key=user.encode(), value=json.dumps(body).encode()
            )
            got = False
            while not got:
                batch = await consumer.getmany(timeout_ms=1000)
                got = any(
                    Reply.parse(m.value).request_id == rid for ms in batch.values() for m in ms
                )
            out.append(time.perf_counter() - start)
    finally:
        await producer.stop()
        await consumer.stop()
    return out


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[int(0.99 * (len(values) - 1))]


def ingest_under_requests(
    dep: Deployment, worker: WorkerProcess, total: int, users: list[str]
) -> dict[str, float]:
    """Start ``worker`` (not yet started) on a backlog of ratings and time one-at-a-time
    requests from the moment it is ready until the backlog is in (the request client is
    started first, so that no part of the flood goes unprobed). The ingest rate is the
    slope of its ``seen_ratings`` counter, sampled from the process start, from the last
    sample at 10% of the backlog or less to the first at 90% or more."""
    samples: list[tuple[float, float]] = []

    def ready() -> bool:
        try:
            return worker.get("/health/", timeout=2)[0] == 200
        except OSError:
            return False

    async def run() -> list[float]:
        done, go = asyncio.Event(), asyncio.Event()
        timing = asyncio.create_task(latencies_until(dep.settings, users, done, go))
        await asyncio.sleep(2)  # the client's consumer and producer start meanwhile
        worker.start()
        deadline = time.monotonic() + 600
        try:
            while time.monotonic() < deadline:
                if not worker.running():
                    raise RuntimeError(f"scorer exited:\n{worker.log_tail()}")
                try:
                    count = await asyncio.to_thread(seen_ratings, worker)
                except OSError:  # not serving yet
                    count = 0.0
                samples.append((time.perf_counter(), count))
                if not go.is_set() and await asyncio.to_thread(ready):
                    go.set()
                if count >= total and go.is_set():
                    break
                await asyncio.sleep(0.05)
        finally:
            go.set()
            done.set()
        return await timing

    latencies = asyncio.run(run())
    # The last sample at or below 10% and the first at or above 90%: never the same sample
    # (a scorer that ingests faster than it is sampled had a slope of 0/0 -> 0).
    low = [(t, c) for t, c in samples if c <= 0.1 * total]
    t_lo, c_lo = low[-1] if low else samples[0]
    (t_hi, c_hi) = next((t, c) for t, c in samples if c >= 0.9 * total)
    return {
        "ingest_per_second": (c_hi - c_lo) / max(t_hi - t_lo, 1e-3),
        "flood_p99_s": p99(latencies) if latencies else float("nan"),
        "flood_p50_s": statistics.median(latencies) if latencies else float("nan"),
        "flood_requests": len(latencies),
    }


def seen_ratings(worker: WorkerProcess) -> float:
    """The ratings the scorer's ingest recorded, from ``/health/``: rendering ``/metrics``
    takes ~20 ms of the scorer's event loop, which a probe every 50 ms would steal from the
    ingest and the requests it measures."""
    _, body = worker.get("/health/", timeout=2)
    return float(body.get("seen_ratings", 0))


def cpu_seconds(worker: WorkerProcess) -> float:
    return metric(worker, "process_cpu_seconds_total")


def rss_bytes(worker: WorkerProcess) -> float:
    return metric(worker, "process_resident_memory_bytes")


def peak_rss_bytes(worker: WorkerProcess) -> float:
    """The worker's peak RSS so far (``VmHWM``; the benchmark runs on the worker's machine)."""
    assert worker.proc is not None
    status = Path(f"/proc/{worker.proc.pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return float(kib) * 1024


def speed_figures(quick: bool) -> tuple[list[Figure], float]:
    n_requests = 2000
    n_ratings = 200_000 if quick else 300_000  # a flood of at least a few seconds
    dep = deployment("scorer")
    s = dep.settings
    echo_in, echo_out = f"{dep.prefix}-echo-in", f"{dep.prefix}-echo-out"
    asyncio.run(
        ensure_topics(
            s, [TopicSpec(echo_in, s.topic_partitions), TopicSpec(echo_out, s.topic_partitions)]
        )
    )
    data = generate_ratings(2000, 1000, 15_000, 8, seed=3)
    model = IncrementalModel(model_config_of(s))
    model.train_batch(data, epochs=5)
    serve_model(dep, model)
    users = sorted({r.user for r in data})
    backlog = generate_ratings(2000, 1000, n_ratings, 8, seed=4)

    workers = [start_scorer(dep, 1)]
    try:

        async def baselines() -> tuple[dict[str, float], dict[str, float]]:
            ready = asyncio.Event()
            task = asyncio.create_task(echo(s, echo_in, echo_out, ready))
            await ready.wait()
            raw = await round_trips(
                s, echo_in, echo_out, users, sequential=200, pipelined=n_requests
            )
            task.cancel()
            ours = await round_trips(
                s, s.requests_topic, s.responses_topic, users, sequential=200, pipelined=n_requests
            )
            return raw, ours

        raw, ours = asyncio.run(baselines())

        # Scaling: the same pipelined load on one scorer, then on two.
        cpu0 = cpu_seconds(workers[0])
        start = time.perf_counter()
        one = asyncio.run(
            round_trips(
                s, s.requests_topic, s.responses_topic, users, sequential=20, pipelined=4000
            )
        )
        one_cpu = (cpu_seconds(workers[0]) - cpu0) / (time.perf_counter() - start)
        workers.append(start_scorer(dep, 2))
        wait(lambda: settled(workers, s.requests_topic, s.topic_partitions), 120, "two scorers")
        cpus = [cpu_seconds(w) for w in workers]
        start = time.perf_counter()
        two = asyncio.run(
            round_trips(
                s, s.requests_topic, s.responses_topic, users, sequential=20, pipelined=4000
            )
        )
        elapsed = time.perf_counter() - start
        two_cpu = [(cpu_seconds(w) - c) / elapsed for w, c in zip(workers, cpus, strict=True)]
        small_rss = rss_bytes(workers[0])
        for w in workers:
            w.stop()

        # The flood: a backlog published while no scorer runs, so that the restarted scorer
        # ingests as fast as it can (not as fast as one producer publishes).
        publish_rate = asyncio.run(publish_fast(s, backlog))
        workers = [WorkerProcess("scorer", free_port(), dep.home / "scorer-3.log", dep.env)]
        flood = ingest_under_requests(dep, workers[0], n_ratings, users)
        raw_consume = asyncio.run(raw_consume_rate(s, s.ratings_topic, n_ratings))
    finally:
        for w in workers:
            w.stop()
        asyncio.run(drop_topics(dep))

    idle_p99 = ours["p99_ms"]
    figures = [
        Figure(
            "scorer: lone request p50 vs raw echo",
            raw["p50_ms"],
            ours["p50_ms"],
            1.5,
            "lower",
            "ms",
        ),
        Figure(
            "scorer: replies/s, 2,000 in flight, one process, vs raw echo",
            raw["per_second"],
            ours["per_second"],
            0.3,
            "higher",
            "replies/s",
            note="goal 0.5",
        ),
        Figure(
            "ingest: ratings/s into seen-items, one scorer, vs raw aiokafka consume",
            raw_consume,
            flood["ingest_per_second"],
            0.25,
            "higher",
            "ratings/s",
            note=f"goal 0.5; a backlog of {n_ratings:,} (published at {publish_rate:,.0f}/s "
            "before the scorer started)",
        ),
        Figure(
            "scorer: request p99 while ratings stream at max rate vs idle p99",
            idle_p99,
            flood["flood_p99_s"] * 1000,
            2.0,
            "lower",
            "ms",
            note=f"{flood['flood_requests']} requests during the flood, "
            f"p50 {flood['flood_p50_s'] * 1000:.1f} ms; idle p50 {ours['p50_ms']:.1f} ms",
        ),
        Figure(
            "scaling: replies/s with 2 scorer processes vs 1",
            one["per_second"],
            two["per_second"],
            1.0,
            "higher",
            "replies/s",
            note=f"2 cores shared with the client and broker; CPU cores used: one scorer "
            f"{one_cpu:.2f}, two scorers {', '.join(f'{c:.2f}' for c in two_cpu)}",
        ),
    ]
    return figures, small_rss


def memory_figure(small_rss: float, quick: bool) -> Figure:
    """RSS a scorer adds to serve 100k users x 10k items x 64 dims vs the raw array bytes."""
    n_users, n_items, dims = 100_000, 10_000, 64
    dep = deployment("memory")
    config = ModelConfig(no_components=dims, epochs_per_batch=1)
    model = IncrementalModel(config)
    rng = np.random.default_rng(5)
    # Every user and item appears; one pass of training is enough for a memory figure.
    users = np.concatenate([np.arange(n_users), rng.integers(0, n_users, n_users)])
    items = np.concatenate([rng.integers(0, n_items, n_users), np.arange(n_items)])
    items = np.resize(items, len(users))
    ratings = [
        Rating(f"e{n}", f"u{u}", f"i{i}", 5.0, float(n))
        for n, (u, i) in enumerate(zip(users.tolist(), items.tolist(), strict=True))
    ]
    model.train_batch(ratings)
    serve_model(dep, model)
    view = model.view()
    raw_bytes = (
        view.n_users * (dims * 4 + 4 + 8)  # user embeddings (float32), bias, positives
        + view.n_items * (dims * 4 + 4 + 8 + 8)  # item embeddings, bias, popularity, order
    )
    worker = start_scorer(dep, 1)
    try:
        rss = rss_bytes(worker)
        peak = peak_rss_bytes(worker)
    finally:
        worker.stop()
        asyncio.run(drop_topics(dep))
    return Figure(
        "memory: RSS a scorer adds for 100k users x 10k items x 64 dims vs raw array bytes",
        float(raw_bytes),
        max(0.0, rss - small_rss),
        2.0,
        "lower",
        "bytes",
        note=f"total RSS {rss / 2**20:.0f} MiB (peak while loading {peak / 2**20:.0f} MiB); "
        f"the same scorer on a 2k x 1k model "
        f"{small_rss / 2**20:.0f} MiB; arrays {raw_bytes / 2**20:.1f} MiB",
    )


def figures(quick: bool) -> list[Figure]:
    """Every figure of this module (``benchmarks.run_all`` collects them)."""
    speed, small_rss = speed_figures(quick)
    return [*speed, memory_figure(small_rss, quick)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller backlog of ratings")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = figures(args.quick)
    if args.json:
        for fig in result:
            print(json.dumps(fig.to_dict()))
        return
    rows = [
        (f.figure, f.baseline, f.value, f.ratio, "pass" if f.passed else "FAIL", f.note)
        for f in result
    ]
    print(table(["figure", "baseline", "streamrec", "ratio", "", "note"], rows))
    print(machine())


if __name__ == "__main__":
    main()
