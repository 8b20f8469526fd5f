"""Real deployments, traffic and checks for the fault tests.

A :class:`Cluster` is one trainer and N scorers as ``streamrec worker`` subprocesses (as the
end-to-end suite starts them) with topics, consumer groups and a store prefix of its own, on
a real broker and a real S3 server. :class:`Traffic` is what clients do to it: ratings and
requests from plain aiokafka producers (``acks=all``, idempotent), each send retried until
the broker acknowledges it (same bytes, same ``event_id``), and replies read back.

Everything is observed from the outside: Kafka topics, the store, the web views and logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from agents.checkpoints import restore_version
from agents.errors import is_refusal
from app.kafka import kafka_client_options
from app.settings import Settings
from app.stores import store_from_url
from app.topics import TopicSpec, ensure_topics
from devtools.process import port_free
from devtools.workers import WorkerProcess, free_port, isolated_env, settings_for
from models.incremental import IncrementalModel
from models.wire import DeadLetter
from tests.integration.service.conftest import KafkaClient, create_bucket

#: Worker settings for fault runs: small batches and frequent snapshots so that crashes hit
#: every phase (fetch, fit, snapshot write, promote, announce) many times in a short run.
WORKER_SETTINGS: dict[str, object] = {
    "topic_partitions": 4,
    "batch_seconds": 0.3,
    "batch_max": 1000,
    "snapshot_every_seconds": 1,
    "snapshot_every_batches": 3,
    "epochs_per_batch": 1,
    "no_components": 8,
    "session_timeout": 6,
    "log_level": "info",
}


def stacks(worker: WorkerProcess) -> str:
    """What ``worker`` is doing: py-spy's dump of its threads and asyncio tasks' frames."""
    import subprocess
    import sys

    if worker.proc is None:
        return "(not running)"
    spy = Path(sys.executable).parent / "py-spy"
    try:
        done = subprocess.run(
            [str(spy), "dump", "--pid", str(worker.proc.pid)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(py-spy failed: {exc})"
    return (done.stdout + done.stderr)[-8000:]


def wait_for(
    predicate: Callable[[], Any], *, timeout: float, what: str, every: float = 0.25
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except OSError as exc:  # a worker that is restarting does not answer
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def free_port_block(size: int, offset: int = 0) -> int:
    """A base port P such that P..P+size-1 (and each + ``offset`` if given) are free."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 30000)
        ports = [base + i for i in range(size)]
        ports += [p + offset for p in ports] if offset else []
        if all(port_free(p) for p in ports):
            return base
    raise RuntimeError(f"no block of {size} free ports found")


def ratings(n: int, *, users: int, items: int, seed: int, prefix: str) -> list[dict[str, Any]]:
    """``n`` ratings with unique event ids over ``users`` x ``items`` (seeded)."""
    rng = random.Random(seed)
    return [
        {
            "event_id": f"{prefix}-{j}",
            "user": f"{prefix}u{rng.randrange(users)}",
            "item": f"{prefix}i{rng.randrange(items)}",
            "rating": float(rng.choice((1, 2, 3, 4, 5, 5))),
            "ts": 1_700_000_000 + j,
        }
        for j in range(n)
    ]


def expected_counts(events: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    return dict(Counter(e["user"] for e in events)), dict(Counter(e["item"] for e in events))


@dataclass
class Cluster:
    """One isolated streamrec deployment on real services."""

    settings: Settings
    env: dict[str, str]
    tmp: Path
    trainer: WorkerProcess | None = None
    scorers: list[WorkerProcess] = field(default_factory=list)
    _logs: int = 0

    @classmethod
    @contextlib.contextmanager
    def run(
        cls, tmp: Path, *, scorers: int = 2, base: Settings | None = None, **overrides: object
    ) -> Iterator[Cluster]:
        base = base or Settings()
        run = uuid.uuid4().hex[:10]
        bucket = f"faults-{run}"
        asyncio.run(create_bucket(base, bucket))
        env = isolated_env(
            f"faults-{run}",
            base,
            model_store=f"s3://{bucket}/models",
            datadir=tmp / "faust",
            **{k: str(v) for k, v in {**WORKER_SETTINGS, **overrides}.items()},
        )
        env["STREAMREC_S3_ENDPOINT"] = base.s3_endpoint or ""
        cluster = cls(settings_for(env), env, tmp)
        asyncio.run(ensure_topics(cluster.settings))
        try:
            cluster.start_trainer()
            for _ in range(scorers):
                cluster.add_scorer(wait=False)
            for worker in cluster.workers():
                worker.wait_ready(model=False)
            cluster.wait_settled()
            yield cluster
        finally:
            for worker in cluster.workers():
                worker.stop(timeout=15)

    # --- workers -----------------------------------------------------------------------
    def _worker(self, role: str) -> WorkerProcess:
        self._logs += 1
        log = self.tmp / f"{role}-{self._logs}.log"
        return WorkerProcess(role, free_port(), log, self.env).start()

    def workers(self) -> list[WorkerProcess]:
        return [w for w in [self.trainer, *self.scorers] if w is not None]

    def start_trainer(self) -> WorkerProcess:
        self.trainer = self._worker("trainer")
        return self.trainer

    def add_scorer(self, *, wait: bool = True) -> WorkerProcess:
        scorer = self._worker("scorer")
        self.scorers.append(scorer)
        if wait:
            scorer.wait_ready(model=False)
        return scorer

    def wait_settled(self, timeout: float = 90) -> None:
        """Every live scorer owns request partitions, together all of them, none rebalancing."""
        topic = self.settings.requests_topic
        want = sorted(f"{topic}:{p}" for p in range(self.settings.topic_partitions))

        def settled() -> bool:
            owned: list[str] = []
            for scorer in self.scorers:
                _, body = scorer.get("/health/", timeout=3)
                if not isinstance(body, dict) or body.get("rebalancing", True):
                    return False
                mine = [p for p in body.get("partitions", []) if p.startswith(f"{topic}:")]
                if not mine:
                    return False
                owned += mine
            return sorted(owned) == want

        wait_for(settled, timeout=timeout, what="the scorers to share the request partitions")

    def pause(self, worker: WorkerProcess) -> None:
        assert worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGSTOP)

    def resume(self, worker: WorkerProcess) -> None:
        assert worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGCONT)

    # --- observations --------------------------------------------------------------------
    @staticmethod
    def info(worker: WorkerProcess | None) -> dict[str, Any]:
        """The worker's ``/model/`` view, or {} if it does not answer (yet)."""
        if worker is None:
            return {}
        try:
            status, body = worker.get("/model/", timeout=3)
        except OSError:
            return {}
        return body if status == 200 and isinstance(body, dict) else {}

    def trained(self) -> int:
        return self.info(self.trainer).get("trained_events", 0)

    def store(self) -> Any:
        return store_from_url(self.settings.model_store, self.settings)

    async def _current_model(self) -> IncrementalModel | None:
        async with self.store() as store:
            version = await store.current()
            if version is None:
                return None
            model, _ = await restore_version(store, version)  # base + segments
        return model

    def current_model(self) -> IncrementalModel | None:
        """The model of the store's current snapshot, loaded and verified as a worker would."""
        return asyncio.run(self._current_model())

    def wait_snapshot_covers(self, n: int, timeout: float) -> IncrementalModel:
        """The current snapshot once it covers ``n`` trained events (fails if it overshoots)."""

        def covered() -> IncrementalModel | None:
            try:
                model = self.current_model()
            except Exception as exc:
                if not is_refusal(exc):
                    raise
                return None  # a corrupt current snapshot (planted by a test) is not it
            if model is not None and model.trained_events > n:
                pytest.fail(f"the snapshot trained {model.trained_events} events, sent {n}")
            return model if model is not None and model.trained_events == n else None

        try:
            return wait_for(
                covered, timeout=timeout, what=f"a snapshot covering {n} events", every=1
            )
        except pytest.fail.Exception as exc:  # say what the trainer was doing
            trainer = self.trainer
            if trainer is None:
                raise
            pytest.fail(
                f"{exc}\ntrainer /model/: {self.info(trainer)}\n"
                f"trainer's stacks:\n{stacks(trainer)}\ntrainer log:\n{trainer.log_tail(80)}"
            )

    @staticmethod
    def metric(worker: WorkerProcess, name: str) -> dict[str, float]:
        """Samples of one Prometheus metric of ``worker``, by label string."""
        _, text = worker.get("/metrics")
        samples = (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith(name))
        return {labels.removeprefix(name): float(value) for labels, value in samples}

    def owned(self, worker: WorkerProcess, topic: str) -> list[int]:
        """The partitions of ``topic`` that ``worker`` says (in ``/health/``) it owns."""
        _, body = worker.get("/health/", timeout=3)
        return sorted(
            int(p.rsplit(":", 1)[1]) for p in body["partitions"] if p.startswith(f"{topic}:")
        )

    async def _uncommitted(self, group: str, topic: str, partitions: list[int]) -> int:
        parts = [TopicPartition(topic, p) for p in partitions]
        admin = AIOKafkaAdminClient(**kafka_client_options(self.settings))
        consumer = AIOKafkaConsumer(**kafka_client_options(self.settings), group_id=None)
        await admin.start()
        await consumer.start()
        try:
            ends = await consumer.end_offsets(parts)
            committed = await admin.list_consumer_group_offsets(group, partitions=parts)
        finally:
            await consumer.stop()
            await admin.close()
        at = {tp: max(0, meta.offset) for tp, meta in committed.items()}
        return sum(end - at.get(tp, 0) for tp, end in ends.items())

    def uncommitted(self, group: str, topic: str, partitions: list[int]) -> int:
        """Records of ``topic``'s ``partitions`` after ``group``'s committed offsets (all of
        them where it committed none): what its members have not acknowledged yet."""
        return asyncio.run(self._uncommitted(group, topic, partitions))

    def reply_topic(self, name: str) -> str:
        topic = f"{self.settings.responses_topic}-{name}"
        spec = TopicSpec(topic, self.settings.topic_partitions)
        asyncio.run(ensure_topics(self.settings, [spec]))
        return topic


def assert_counts_exact(
    model: IncrementalModel, events: list[dict[str, Any]], *, prefix: str, before: int = 0
) -> None:
    """Per user and per item, the trained event counts equal the input's.

    Only ids starting with ``prefix`` (one run's) are compared, and ``before`` events
    trained earlier are allowed: a shared cluster also holds other tests' ratings.
    """
    users, items = (
        {k: v for k, v in counts.items() if k.startswith(prefix)} for counts in model.event_counts()
    )
    want_users, want_items = expected_counts(events)
    assert model.trained_events - before == len(events)
    wrong_users = {u: (users.get(u), n) for u, n in want_users.items() if users.get(u) != n}
    wrong_items = {i: (items.get(i), n) for i, n in want_items.items() if items.get(i) != n}
    assert not wrong_users, f"{len(wrong_users)} users miscounted (got, sent): {wrong_users}"
    assert not wrong_items, f"{len(wrong_items)} items miscounted (got, sent): {wrong_items}"
    extra = (set(users) - set(want_users)) | (set(items) - set(want_items))
    assert not extra, f"ids that were never sent: {sorted(extra)[:10]}"


class Traffic:
    """Clients in a background thread: ratings and requests sent, replies collected.

    Producers use ``acks=all`` and idempotence, and a failed send is sent again (same bytes,
    same ``event_id``/``request_id``) until the broker acknowledges it: the producer side of
    streamrec's at-least-once contract. ``rating_rate``/``request_rate`` are per second
    (None: as fast as the broker takes them).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        events: list[dict[str, Any]] = (),  # type: ignore[assignment]
        rating_rate: float | None = None,
        requests: list[dict[str, Any]] = (),  # type: ignore[assignment]
        request_rate: float | None = None,
        reply_topic: str | None = None,
    ) -> None:
        self.settings = settings
        self.events = list(events)
        self.rating_rate = rating_rate
        self.requests = list(requests)
        self.request_rate = request_rate
        self.reply_topic = reply_topic
        self.sent_ratings = 0
        self.sent_requests = 0
        self.sent_at: dict[str, float] = {}
        self.replies: list[dict[str, Any]] = []
        self.send_failures = 0
        self.producer_restarts = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="traffic", daemon=True)
        self._ready = threading.Event()

    def __enter__(self) -> Traffic:
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError("traffic clients did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    # --- what the test reads -----------------------------------------------------------
    @property
    def done_sending(self) -> bool:
        return self.sent_ratings == len(self.events) and self.sent_requests == len(self.requests)

    def answered(self) -> Counter[str]:
        return Counter(r.get("request_id") for r in list(self.replies))

    def unanswered(self) -> set[str]:
        return set(self.sent_at) - set(self.answered())

    def wait_answered(self, timeout: float) -> None:
        """Wait until every request sent so far has a reply; fail saying how many have none."""
        deadline = time.monotonic() + timeout
        while self.unanswered() and time.monotonic() < deadline:
            time.sleep(0.25)
        missing = self.unanswered()
        if missing:
            pytest.fail(
                f"{len(missing)} of {len(self.sent_at)} requests unanswered after {timeout:g}s, "
                f"e.g. {sorted(missing)[:5]}; dead-lettered: {self.dead_lettered(missing)}"
            )

    def dead_lettered(self, request_ids: set[str]) -> dict[str, int]:
        """How many of ``request_ids`` are in the requests DLQ, by reason (for diagnosis)."""
        letters = asyncio.run(KafkaClient(self.settings).read_all(self.settings.requests_dlq_topic))
        reasons: Counter[str] = Counter()
        for message in letters:
            letter = DeadLetter.parse(message.key, message.value, dict(message.headers))
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                if json.loads(letter.value or b"").get("request_id") in request_ids:
                    reasons[letter.reason] += 1
        return dict(reasons)

    def check(self) -> None:
        if self.errors:
            raise self.errors[0]

    # --- the clients -------------------------------------------------------------------
    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self.errors.append(exc)
            self._ready.set()

    async def _new_producer(self, patience: float = 0.0) -> AIOKafkaProducer:
        """A started producer; with ``patience``, a broker that is still down is waited for
        that long (a client replacing its producer mid-outage: CI saw the sender die of
        "Unable to bootstrap" when the broker took 46 s to come back)."""
        deadline = time.monotonic() + patience
        while True:
            producer = AIOKafkaProducer(
                **kafka_client_options(self.settings),
                acks="all",
                enable_idempotence=True,
                request_timeout_ms=10_000,
                linger_ms=5,
            )
            try:
                await producer.start()
                return producer
            except KafkaError:
                with contextlib.suppress(Exception):
                    await producer.stop()
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(1.0)

    async def _replace_producer(self, stuck: AIOKafkaProducer) -> None:
        """A client's last resort: a producer that no longer answers is replaced (its
        unacknowledged messages are sent again by the new one, same bytes and ids)."""
        async with self._replacing:
            if self._producer is not stuck:
                return  # the other sender replaced it already
            self.producer_restarts += 1
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stuck.stop(), 5)
            self._producer = await self._new_producer(patience=180)

    async def _run(self) -> None:
        self._replacing = asyncio.Lock()
        self._producer = await self._new_producer()
        consumer = None
        try:
            if self.reply_topic is not None:
                consumer = await self._reply_consumer()
            self._ready.set()
            tasks = [
                asyncio.create_task(self._send_all(self.settings.ratings_topic, "rating")),
                asyncio.create_task(self._send_all(self.settings.requests_topic, "request")),
            ]
            if consumer is not None:
                tasks.append(asyncio.create_task(self._read_replies(consumer)))
            while not self._stop.is_set():
                for task in tasks:
                    if task.done() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                await asyncio.sleep(0.1)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            if consumer is not None:
                await consumer.stop()
            await self._producer.stop()

    async def _reply_consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            **kafka_client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        parts = [TopicPartition(self.reply_topic, p) for p in range(self.settings.topic_partitions)]
        consumer.assign(parts)  # a new topic, no committed offsets: reads from the earliest
        return consumer

    async def _read_replies(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500)
            except KafkaError:
                await asyncio.sleep(0.5)  # the broker is away; the consumer reconnects
                continue
            for messages in batch.values():
                self.replies.extend(json.loads(m.value) for m in messages)

    async def _send_all(self, topic: str, kind: str) -> None:
        items = self.events if kind == "rating" else self.requests
        rate = self.rating_rate if kind == "rating" else self.request_rate
        chunk = max(1, min(500, int(rate / 10) if rate else 500))
        began = time.monotonic()
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            messages = [(m["user"].encode(), json.dumps(m).encode()) for m in part]
            await self._send_chunk(topic, messages)
            if kind == "rating":
                self.sent_ratings += len(part)
            else:
                now = time.time()
                self.sent_at.update((m["request_id"], now) for m in part)
                self.sent_requests += len(part)
            if rate:
                ahead = (start + len(part)) / rate - (time.monotonic() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)

    async def _send_chunk(self, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
        """Send all of ``messages``; whatever the broker did not acknowledge is sent again."""
        pending, attempts = messages, 0
        while pending:
            producer = self._producer
            try:
                results = await asyncio.wait_for(self._attempt(producer, topic, pending), 30)
            except TimeoutError:
                results = [TimeoutError()] * len(pending)
            failed = [m for m, r in zip(pending, results, strict=True) if isinstance(r, Exception)]
            if failed:
                self.send_failures += len(failed)
                attempts += 1
                # aiokafka's idempotent producer does not recover from a broker that lost
                # its in-flight batches (OutOfOrderSequenceNumber, retried for ever): after
                # three failed attempts, a new producer (a new producer id) sends them again.
                if attempts % 3 == 0:
                    await self._replace_producer(producer)
                await asyncio.sleep(0.5)
            pending = failed

    @staticmethod
    async def _attempt(
        producer: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]]
    ) -> list[Any]:
        futures = []
        for key, value in messages:
            try:
                futures.append(await producer.send(topic, key=key, value=value))
            except KafkaError:
                futures.append(None)
        return await asyncio.gather(
            *(f if f is not None else _failed() for f in futures), return_exceptions=True
        )


async def _failed() -> None:
    raise KafkaError("not sent")
