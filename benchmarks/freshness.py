"""Freshness: from a rating's publish (acks=all) to the first scorer reply that reflects it.

Runs real workers (``streamrec worker`` subprocesses) on the broker and S3 server of
``streamrec dev up``, with topics, groups and an S3 prefix of their own, at the default
settings (batching, snapshots), from a bootstrap snapshot of a synthetic model:

* the production shape: one trainer and two scorers, S3 store — scorers learn of each
  trained batch through the model deltas;
* the one-process shape: ``--role all`` (the scorer serves the trainer's own view).

A trial is a brand-new user publishing a few 5-star ratings; the probe then asks for that
user's recommendations back to back until a reply says ``source: model`` (the user's
positives reached the served view). Beside the freshness figures, the same run measures:

* delta bytes per batch (the trainer's ``streamrec_delta_bytes``) vs the snapshot's bytes;
* scorer CPU per applied delta (``streamrec_delta_apply_cpu_seconds``: the loop thread's
  without other tasks, plus a worker thread's; the wall time ``streamrec_delta_apply_seconds``
  in the note) vs loading the snapshot;
* the trainer's per-batch view: :meth:`IncrementalModel.view` (O(batch)) vs a full copy
  of the scoring arrays, for a large model (in process);
* where the time goes: publish → trainer's delta sent → scorer applied → reply.

    python -m benchmarks.freshness [--trials 20] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.checkpoints import fetch_chain
from app.kafka import kafka_client_options
from app.settings import PROJECT_ROOT, Settings, model_config_of
from app.stores import store_from_settings, write_current_snapshot
from app.topics import ensure_topics
from benchmarks.common import Figure, figures_table, machine
from devtools.workers import WorkerProcess, create_bucket, free_port, isolated_env, settings_for
from models.config import ModelConfig
from models.events import Rating, RecRequest
from models.incremental import IncrementalModel
from models.segment import load_chain_view
from models.synthetic import generate_ratings
from models.wire import Reply, encode_rating, encode_request

QUICK_SECONDS = 110  # run_all --quick: 10 trials per shape, 3 consolidations (~35 s)

TARGET_P50, TARGET_P95, GOAL_ALL_P50 = 2.0, 3.0, 1.0  # seconds (issue 10)


class Probe:
    """Asks for recommendations back to back over plain aiokafka and times replies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = AIOKafkaProducer(**kafka_client_options(settings), acks="all", linger_ms=0)
        self.consumer = AIOKafkaConsumer(
            **kafka_client_options(settings), group_id=None, enable_auto_commit=False
        )
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Probe:
        await self.producer.start()
        await self.consumer.start()
        s = self.settings
        tps = [TopicPartition(s.responses_topic, p) for p in range(s.topic_partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.producer.stop()
        await self.consumer.stop()

    async def _read(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                for m in messages:
                    reply = Reply.parse(m.value)
                    future = self._waiting.pop(reply.request_id, None)
                    if future is not None and not future.done():
                        future.set_result(reply)

    async def publish(self, ratings: list[Rating]) -> float:
        """Send and wait for every ack (acks=all); returns the wall time of the last ack."""
        futures = []
        for rating in ratings:
            key, value = encode_rating(rating)
            topic = self.settings.ratings_topic
            futures.append(await self.producer.send(topic, key=key, value=value))
        await asyncio.gather(*futures)
        return time.time()

    async def ask(self, user: str, wait: float = 10.0) -> Reply:
        request = RecRequest(uuid.uuid4().hex, user, 10, True, None)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[request.request_id] = future
        key, value = encode_request(request)
        await self.producer.send_and_wait(self.settings.requests_topic, key=key, value=value)
        return await asyncio.wait_for(future, wait)

    async def until_model(self, user: str, deadline: float) -> float:
        """Wall time of the first reply for ``user`` that comes from the model."""
        while time.monotonic() < deadline:
            reply = await self.ask(user)
            if reply.source == "model":
                return time.time()
        raise TimeoutError(f"no model reply for {user}")


async def _trials(settings: Settings, n: int, workers: dict[str, WorkerProcess]) -> list[dict]:
    items = [f"i{j}" for j in range(5)]
    rng = random.Random(7)
    out = []
    async with Probe(settings) as probe:
        for t in range(n):
            user = f"fresh-{t}-{uuid.uuid4().hex[:6]}"
            reply = await probe.ask(user)
            assert reply.source == "popularity", reply
            ratings = [
                Rating(uuid.uuid4().hex, user, item, 5.0, 1e9 + t * 10 + j)
                for j, item in enumerate(items)
            ]
            acked = await probe.publish(ratings)
            served = await probe.until_model(user, time.monotonic() + 30)
            trial = {"seconds": served - acked}
            trial.update(_stages(workers, acked))
            out.append(trial)
            # The next rating lands at a random point of the trainer's batching window.
            await asyncio.sleep(rng.uniform(0.1, 2.5))
    return out


async def _consolidation_trials(
    settings: Settings, workers: dict[str, WorkerProcess], cycles: int
) -> list[dict]:
    """Trials that straddle a consolidation. Each cycle streams ``consolidate_every``
    ratings of known users (the mark is crossed, a consolidation is cut and runs beside
    the batches), then runs trials back to back until one has started after the trainer
    sent the consolidation's delta (``/model/``'s ``snapshot_due``: a delta whose state
    needs a snapshot soon). A trial *straddles* if that delta was sent between its publish
    and its first model reply, or is the first trial published after it. (While it was a
    "snapshot needed" marker, scorers ignored deltas from it until they had loaded the
    snapshot: the stall this measures.)"""
    trainer = workers["trainer"]
    every = model_config_of(settings).consolidate_every
    out = []
    async with Probe(settings) as probe:
        for cycle in range(cycles):
            before = _snapshot_due_at(trainer)
            filler = generate_ratings(400, 300, every, 8, seed=100 + cycle)
            await probe.publish([dataclasses.replace(r, event_id=uuid.uuid4().hex) for r in filler])
            deadline = time.monotonic() + 120
            sent = None  # when the consolidation's delta was sent
            t = 0
            while time.monotonic() < deadline:
                user = f"straddle-{cycle}-{t}-{uuid.uuid4().hex[:6]}"
                t += 1
                ratings = [
                    Rating(uuid.uuid4().hex, user, f"i{j}", 5.0, time.time() + j * 1e-3)
                    for j in range(5)
                ]
                acked = await probe.publish(ratings)
                served = await probe.until_model(user, time.monotonic() + 60)
                sent = sent or _snapshot_due_at(trainer, after=before)
                if sent is None or sent > served:
                    continue  # before the consolidation was installed: an ordinary trial
                out.append({"seconds": served - acked, "delta_to_served": served - sent})
                if acked > sent:
                    break  # the first trial published after it: the cycle is done
            else:
                raise TimeoutError("no consolidation delta within 120 s")
    return out


def _snapshot_due_at(trainer: WorkerProcess, after: float | None = None) -> float | None:
    """When the trainer last sent a delta that needs a snapshot soon (``/model/``), if
    after ``after``; with ``after`` None, the last one's time (0.0 if none)."""
    at = (trainer.get("/model/")[1].get("snapshot_due") or {}).get("at") or 0.0
    if after is None:
        return at
    return at if at > after else None


def _stages(workers: dict[str, WorkerProcess], acked: float) -> dict[str, float]:
    """Where the time went, from the workers' /model/ views (wall clocks on one machine)."""
    stages: dict[str, float] = {}
    trainer = workers.get("trainer") or workers.get("all")
    if trainer is None:
        return stages
    info = trainer.get("/model/")[1]
    batch_at = (info.get("last_batch") or {}).get("at")
    if batch_at:
        stages["to_trained"] = batch_at - acked
    delta_at = (info.get("delta") or {}).get("at")
    if delta_at:
        stages["to_delta_sent"] = delta_at - acked
    applied = [
        ((w.get("/model/")[1].get("deltas") or {}).get("last_applied") or {}).get("applied_at")
        for name, w in workers.items()
        if name.startswith("scorer")
    ]
    applied = [a for a in applied if a]
    if applied:
        stages["to_scorer_applied_max"] = max(applied) - acked
    return stages


def _metric(worker: WorkerProcess, name: str) -> float:
    _, text = worker.get("/metrics")
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


@contextmanager
def _deployment(shape: str, home: Path, quick: bool) -> Iterator[tuple[Settings, dict]]:
    """Workers of ``shape`` (``production`` or ``all``) at default settings, bootstrapped
    from a snapshot of a synthetic model."""
    base = Settings()
    prefix = f"fresh-{shape}-{uuid.uuid4().hex[:8]}"
    bucket = prefix
    asyncio.run(create_bucket(base, bucket))
    env = isolated_env(prefix, base, model_store=f"s3://{bucket}/m", datadir=home / prefix)
    settings = settings_for(env)
    asyncio.run(ensure_topics(settings))
    users, items, n = (500, 300, 10_000) if quick else (2000, 1000, 50_000)
    model = IncrementalModel(model_config_of(settings))
    model.train_batch(generate_ratings(users, items, n, 8, seed=5), epochs=3)
    asyncio.run(write_current_snapshot(settings.model_store, settings, model))
    roles = ["trainer", "scorer", "scorer"] if shape == "production" else ["all"]
    workers: dict[str, WorkerProcess] = {}
    for i, role in enumerate(roles):
        name = f"{role}-{i}" if role == "scorer" else role
        workers[name] = WorkerProcess(role, free_port(), home / f"{prefix}-{name}.log", env)
    try:
        for w in workers.values():
            w.start()
        for w in workers.values():
            w.wait_ready(timeout=120)
        _settle(settings, [w for n, w in workers.items() if n != "trainer"])
        yield settings, workers
    finally:
        for w in workers.values():
            w.stop()


def _settle(settings: Settings, scorers: list[WorkerProcess], timeout: float = 120) -> None:
    """Wait until the scorers' group has settled: no rebalance running, and together they
    own every request partition (a trial must not time out in a rebalance)."""
    wanted = {f"{settings.requests_topic}:{p}" for p in range(settings.topic_partitions)}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owned: set[str] = set()
        settled = True
        for scorer in scorers:
            _, health = scorer.get("/health/")
            settled &= not health.get("rebalancing", True)
            owned |= {p for p in health.get("partitions", []) if p in wanted}
        if settled and owned == wanted:
            time.sleep(1.0)
            return
        time.sleep(0.5)
    raise TimeoutError("the scorers did not settle")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _view_costs(quick: bool) -> tuple[float, float, int, int]:
    """Seconds of the trainer's per-batch view (incremental) and of a full copy, the model's
    users and the batch's ratings, for a large model (k=64) after a batch of known users:
    2,000 ratings of 500,000 users, or in the quick run 200 of 50,000 (the same share of the
    users: a 2,000-rating batch would touch most of a small model's 32-row blocks, and the
    figure would measure the model's size, not the view's cost per batch)."""
    users = 50_000 if quick else 500_000
    batch = users // 250
    model = IncrementalModel(ModelConfig(no_components=64))
    model.train_batch(
        [Rating(f"e{u}", f"u{u}", f"i{u % 2000}", 5.0, 1e9) for u in range(users)], epochs=1
    )
    model.view()
    incremental, full = [], []
    rng = random.Random(3)
    for seed in range(3):
        model.train_batch(
            [
                Rating(f"b{seed}-{j}", f"u{rng.randrange(users)}", f"i{j}", 5.0, 1e9 + seed)
                for j in range(batch)
            ]
        )
        start = time.perf_counter()
        model.view()
        incremental.append(time.perf_counter() - start)
        start = time.perf_counter()
        model.full_view()
        full.append(time.perf_counter() - start)
    return min(incremental), min(full), model.n_users, batch


def _delta_costs(settings: Settings, workers: dict[str, WorkerProcess]) -> dict[str, Any]:
    """Delta bytes and scorer CPU per delta so far, beside the snapshot's bytes and load."""
    trainer = workers["trainer"]
    scorers = [w for name, w in workers.items() if name.startswith("scorer")]
    entry: dict[str, Any] = {}
    count = _metric(trainer, "streamrec_delta_bytes_count")
    entry["delta_bytes_mean"] = _metric(trainer, "streamrec_delta_bytes_sum") / count
    applied = sum(_metric(s, "streamrec_delta_apply_seconds_count") for s in scorers)
    spent = sum(_metric(s, "streamrec_delta_apply_seconds_sum") for s in scorers)
    entry["apply_seconds_mean"] = spent / applied  # wall: thread hand-offs, GIL waits, load
    cpu = sum(_metric(s, "streamrec_delta_apply_cpu_seconds_sum") for s in scorers)
    entry["apply_cpu_seconds_mean"] = cpu / applied
    entry["deltas_applied"] = applied
    entry["resyncs"] = sum(_metric(s, "streamrec_resyncs_total") for s in scorers)

    async def snapshot() -> list[tuple[bytes, dict]]:
        async with store_from_settings(settings) as store:
            return await fetch_chain(store, await store.current())  # base + segments

    chain = asyncio.run(snapshot())
    entry["snapshot_bytes"] = sum(len(payload) for payload, _ in chain)
    start = time.perf_counter()
    load_chain_view(chain)
    entry["snapshot_load_seconds"] = time.perf_counter() - start
    return entry


def run(trials: int, quick: bool) -> dict[str, Any]:
    home = PROJECT_ROOT / "var" / "bench"
    home.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "machine": machine(),
        "trials": trials,
        "consolidation_cycles": 3 if quick else 5,
    }
    for shape in ("production", "all"):
        with _deployment(shape, home, quick) as (settings, workers):
            measured = asyncio.run(_trials(settings, trials, workers))
            seconds = [t["seconds"] for t in measured]
            entry: dict[str, Any] = {
                "p50": statistics.median(seconds),
                "p95": _percentile(seconds, 0.95),
                "max": max(seconds),
                "stages_p50": {
                    key: statistics.median(t[key] for t in measured if key in t)
                    for key in sorted({k for t in measured for k in t if k != "seconds"})
                },
            }
            if shape == "production":
                entry.update(_delta_costs(settings, workers))
                # After the figures above: the consolidations' big deltas are not theirs.
                straddling = asyncio.run(
                    _consolidation_trials(settings, workers, result["consolidation_cycles"])
                )
                across = [t["seconds"] for t in straddling]
                entry["consolidation"] = {
                    "trials": len(across),
                    "p50": statistics.median(across),
                    "max": max(across),
                    "delta_to_served_max": max(t["delta_to_served"] for t in straddling),
                    "seconds": [round(x, 3) for x in across],
                }
            result[shape] = entry
    incremental, full, users, batch = _view_costs(quick)
    result["trainer_view"] = {
        "incremental": incremental,
        "full_copy": full,
        "users": users,
        "batch": batch,
    }
    return result


def figures_from(result: dict[str, Any]) -> list[Figure]:
    prod, one = result["production"], result["all"]
    cons = prod["consolidation"]
    n = result["trials"]
    stages = ", ".join(f"{k} {v:.3f}s" for k, v in prod["stages_p50"].items())
    view = result["trainer_view"]
    return [
        Figure(
            "freshness p50, trainer + 2 scorers vs the 2 s target",
            TARGET_P50,
            prod["p50"],
            1.0,
            "lower",
            "s",
            f"{n} trials, S3 store, default settings; median stages from publish: {stages}",
        ),
        Figure(
            "freshness p95, trainer + 2 scorers vs the 3 s target",
            TARGET_P95,
            prod["p95"],
            1.0,
            "lower",
            "s",
            f"{n} trials; max {prod['max']:.3f}s",
        ),
        Figure(
            "freshness across a consolidation (worst), trainer + 2 scorers vs the 3 s p95 target",
            TARGET_P95,
            cons["max"],
            1.0,
            "lower",
            "s",
            f"{cons['trials']} trials straddling {result['consolidation_cycles']} consolidations "
            f"(default consolidate_every): p50 {cons['p50']:.3f}s; its delta -> reply max "
            f"{cons['delta_to_served_max']:.3f}s",
        ),
        Figure(
            "freshness p50, --role all vs the 1 s goal",
            GOAL_ALL_P50,
            one["p50"],
            1.0,
            "lower",
            "s",
            f"{n} trials; p95 {one['p95']:.3f}s",
        ),
        Figure(
            "freshness p50 the deltas add (trainer + 2 scorers minus --role all) vs the 1 s goal",
            GOAL_ALL_P50,
            max(0.0, prod["p50"] - one["p50"]),
            0.1,
            "lower",
            "s",
            f"publish (acks=all), fetch, verify and apply on the scorers; --role all p50 "
            f"{one['p50']:.3f}s, production {prod['p50']:.3f}s",
        ),
        Figure(
            "delta bytes per batch vs snapshot bytes",
            float(prod["snapshot_bytes"]),
            prod["delta_bytes_mean"],
            0.05,
            "lower",
            "B",
            "trials of one new user each: 5 ratings per batch",
        ),
        Figure(
            "scorer CPU per delta vs loading the snapshot",
            prod["snapshot_load_seconds"],
            prod["apply_cpu_seconds_mean"],
            0.1,
            "lower",
            "s",
            f"{prod['deltas_applied']:.0f} deltas applied by 2 scorers, "
            f"{prod['resyncs']:.0f} resyncs; wall per delta "
            f"{prod['apply_seconds_mean'] * 1e3:.3f} ms (the apply CPU: "
            "streamrec_delta_apply_cpu_seconds; benchmarks.delta_apply in process)",
        ),
        Figure(
            f"trainer view per batch: O(batch) vs full copy ({view['users']} users x 64)",
            view["full_copy"],
            view["incremental"],
            0.25,
            "lower",
            "s",
            f"after a {view.get('batch', 2000):,}-rating batch; in process",
        ),
    ]


def figures(quick: bool) -> list[Figure]:
    """The figures for ``benchmarks.run_all`` (``quick``: 10 trials and a smaller model, to
    fit its time budget; the issue's figure is the full run's 20 trials)."""
    return figures_from(run(10 if quick else 20, quick))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="a smaller model")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.trials, args.quick)
    found = figures_from(result)
    if args.json:
        print(json.dumps({"result": result, "figures": [f.to_dict() for f in found]}))
        return
    print(figures_table(found))
    for shape in ("production", "all"):
        print(f"{shape}: median stages from publish {result[shape]['stages_p50']}")


if __name__ == "__main__":
    main()
