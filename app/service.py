"""The Faust app: one factory wires settings, topics, tables, agents and web views for a role.

Roles are separate consumer groups, because a consumer group splits partitions between its
members and the trainer must see every rating:

* ``trainer`` (exactly one worker): the trainer, which reads ``ratings`` in bulk with a
  consumer of its own (group ``<app_id>-trainer-ratings``, :func:`trainer_service`);
* ``scorer`` (group ``<app_id>-scorer``, N workers): the ingest and scorer agents, the
  ``seen-items`` table, and a model follower per worker;
* ``all`` (group ``<app_id>-all``, one worker): everything in one process, for development.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import faust
import mode
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agents.follower import ModelFollower
from agents.ingest import Ingest
from agents.kafka import DeadLetterQueue, KnownTopics, dead_letter_marks
from agents.scorer import Scorer
from agents.state import ModelHolder
from agents.trainer import Trainer, TrainerRebalance, restore_model
from app import web
from app.kafka import faust_broker_options, kafka_client_options
from app.settings import Settings
from app.stores import store_from_settings
from app.topics import (
    DLQ_MAX_MESSAGE_BYTES,
    SEEN_TABLE,
    TopicSpec,
    faust_app_id,
    seen_changelog,
    topic_specs,
    trainer_group,
)
from models.config import ModelConfig

log = logging.getLogger(__name__)

ROLES = ("trainer", "scorer", "all")


def model_config(settings: Settings) -> ModelConfig:
    """The model hyperparameters the settings choose."""
    return ModelConfig(
        no_components=settings.no_components,
        loss=settings.loss,
        learning_rate=settings.learning_rate,
        epochs_per_batch=settings.epochs_per_batch,
        positive_threshold=settings.positive_threshold,
        num_threads=settings.num_threads,
        seed=settings.seed,
    )


@dataclass
class Runtime:
    """What the agents and views of one worker share."""

    settings: Settings
    role: str
    holder: ModelHolder = field(default_factory=ModelHolder)
    trainer: Trainer | None = None
    seen: FaustSeenTable | None = None  # the seen-items table (scorer/all roles)
    topics: dict[str, Any] = field(default_factory=dict)


class FaustSeenTable:
    """The Faust ``seen-items`` table as :class:`agents.ports.SeenTable`.

    ``put`` is what ``Table.__setitem__`` does, with the changelog partition given rather
    than taken from the current event (one batch holds ratings of many partitions), and the
    key written raw, as the changelog topic reads it back on recovery (the table's own key
    serializer for ``str`` is JSON: recovered keys would be ``'"u7"'``, not ``'u7'``).
    """

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, user: str) -> bytes | None:
        return self.table.get(user)

    def put(self, user: str, row: bytes, partition: int) -> None:
        self.table.data[user] = row
        self.table.send_changelog(partition, user, row, key_serializer="raw")


def raw_topic(app: faust.App, name: str, spec: TopicSpec | None = None) -> faust.TopicT:
    """A topic of raw bytes (agents decode and validate themselves); declared as ``spec`` says."""
    declared = {} if spec is None else {"partitions": spec.partitions, "config": spec.config}
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        **declared,
    )


def create_app(settings: Settings, role: str | None = None) -> faust.App:
    role = role or settings.role
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    datadir = settings.datadir / f"{role}-{settings.web_port}"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        faust_app_id(settings, role),
        **faust_broker_options(settings),
        datadir=str(datadir),
        store="memory://",
        # Keys are the raw utf-8 user ids producers use, so the table router hashes a user
        # to the same partition as the ratings and requests keyed by that user.
        key_serializer="raw",
        value_serializer="json",
        autodiscover=False,
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_bind,
        web_port=settings.web_port,
        canonical_url=f"http://{settings.web_host}:{settings.web_port}",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        producer_max_request_size=DLQ_MAX_MESSAGE_BYTES + 1024 * 1024,
        consumer_max_fetch_size=DLQ_MAX_MESSAGE_BYTES + 1024 * 1024,
        producer_acks=-1,
        # A scorer hands on at most this many fetched records at once, so a request never
        # queues behind a whole fetch of ratings (the trainer reads its own way).
        broker_max_poll_records=settings.max_poll_records if role != "trainer" else None,
        # The trainer holds its events unacked until a snapshot covers them, so a stop that
        # waits for empty streams would wait for ever; scorers drain before a rebalance.
        stream_wait_empty=(role == "scorer"),
        # No standbys: the memory store drops standby rows after every recovery anyway, and
        # with standbys Faust's router can send /users/{id}/ to a standby (empty) worker.
        table_standby_replicas=0,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=max(1.0, settings.session_timeout / 10),
        logging_config=None,
    )
    runtime = Runtime(settings=settings, role=role)
    app.streamrec = runtime  # type: ignore[attr-defined]  # read by the web views
    specs = {spec.name: spec for spec in topic_specs(settings)}
    topics = {name: raw_topic(app, name, spec) for name, spec in specs.items()}
    runtime.topics = topics
    ratings = topics[settings.ratings_topic]
    model_updates = topics[settings.model_updates_topic]

    if role in ("trainer", "all"):
        _add_trainer(app, runtime, model_updates)
    if role in ("scorer", "all"):
        _add_scorer(app, runtime, ratings, follow_updates=(role == "scorer"))
    web.register(app, runtime)
    return app


def _add_trainer(app: faust.App, runtime: Runtime, updates: Any) -> None:
    s = runtime.settings
    app.service(trainer_service(runtime, updates))

    @app.timer(interval=max(0.5, min(5.0, s.snapshot_every_seconds / 4)), name="snapshot-timer")
    async def snapshot_timer() -> None:
        if runtime.trainer is not None:
            await runtime.trainer.tick()


def trainer_service(runtime: Runtime, updates: Any) -> type[mode.Service]:
    """The trainer as a service of the Faust app, reading ``ratings`` in bulk.

    Faust's per-event stream delivers a few thousand events/s (docs/benchmarks.md); the
    trainer needs whole batches, so it drains its own aiokafka consumer (group
    :func:`app.topics.trainer_group`) with ``getmany`` and sends dead letters with its own
    idempotent producer. Faust still runs the web views, the snapshot timer, and the
    model-updates topic the snapshots are announced on.
    """
    s = runtime.settings
    options = kafka_client_options(s)

    class TrainerService(mode.Service):
        _stack: contextlib.AsyncExitStack
        _task: asyncio.Task[None] | None = None

        async def on_start(self) -> None:
            self._stack = contextlib.AsyncExitStack()
            store = await self._stack.enter_async_context(store_from_settings(s))
            model = await restore_model(store, model_config(s), runtime.holder)
            marks = await dead_letter_marks(options, s.ratings_dlq_topic, s.ratings_topic)
            producer = AIOKafkaProducer(
                **options,
                acks="all",
                enable_idempotence=True,
                max_batch_size=1024 * 1024,
                max_request_size=DLQ_MAX_MESSAGE_BYTES + 1024 * 1024,
            )
            await producer.start()
            self._stack.push_async_callback(producer.stop)
            consumer = AIOKafkaConsumer(
                **options,
                group_id=trainer_group(s),
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=DLQ_MAX_MESSAGE_BYTES + 1024 * 1024,
                session_timeout_ms=int(s.session_timeout * 1000),
                heartbeat_interval_ms=int(max(1.0, s.session_timeout / 10) * 1000),
            )
            trainer = Trainer(
                model=model,
                holder=runtime.holder,
                store=store,
                updates=updates,
                dead_letters=DeadLetterQueue(producer, s.ratings_dlq_topic),
                dead_lettered=marks,
                max_bytes=s.max_message_bytes,
                snapshot_every_batches=s.snapshot_every_batches,
                snapshot_every_seconds=s.snapshot_every_seconds,
                consumer=consumer,
            )
            await consumer.start()
            self._stack.push_async_callback(consumer.stop)
            consumer.subscribe([s.ratings_topic], listener=TrainerRebalance(trainer))
            if marks:
                log.info("Ratings already dead-lettered, by partition: up to offsets %s", marks)
            runtime.trainer = trainer

        async def on_started(self) -> None:
            assert runtime.trainer is not None
            self._task = asyncio.create_task(self._run(runtime.trainer))

        async def _run(self, trainer: Trainer) -> None:
            try:
                await trainer.run(batch_max=s.batch_max, poll_seconds=s.batch_seconds)
            except Exception as exc:
                log.exception("The trainer failed: %r", exc)
                await self.crash(exc)

        async def on_stop(self) -> None:
            trainer, runtime.trainer = runtime.trainer, None
            try:
                if trainer is not None:
                    trainer.stop()
                    if self._task is not None:
                        await self._task
                    # On a clean shutdown, persist what was trained since the last snapshot.
                    await trainer.snapshot_now("shutdown")
            finally:
                await self._stack.aclose()

    return TrainerService


def _add_scorer(app: faust.App, runtime: Runtime, ratings: Any, *, follow_updates: bool) -> None:
    s = runtime.settings
    # Keys are raw utf-8 user ids, exactly as producers key ratings and requests: then the
    # router (app.table_route) hashes a user to the partition whose rows this worker holds.
    # (Faust's default JSON key would hash '"u1"', another partition: /users/ would 404.)
    spec = next(
        t for t in topic_specs(s, runtime.role) if t.name == seen_changelog(s, runtime.role)
    )
    changelog = app.topic(
        spec.name,
        key_type=str,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=spec.partitions,
        config=spec.config,
    )
    # Rows are models.seen bytes; no default (a default would write an empty row, and a
    # changelog record, on every read of an unknown user).
    table = app.Table(
        SEEN_TABLE,
        key_type=str,
        value_type=bytes,  # raw bytes, as the changelog topic says
        partitions=s.topic_partitions,
        changelog_topic=changelog,
    )
    seen = FaustSeenTable(table)
    runtime.seen = seen
    requests = runtime.topics[s.requests_topic]
    responses = runtime.topics[s.responses_topic]
    requests_dlq = runtime.topics[s.requests_dlq_topic]
    reply_topics: dict[str, Any] = {}

    def reply_topic(name: str) -> Any:
        if name not in reply_topics:
            reply_topics[name] = raw_topic(app, name)
        return reply_topics[name]

    ingest = Ingest(
        seen=seen,
        max_bytes=s.max_message_bytes,
        seen_limit=s.seen_items_max,
        max_batch=s.ingest_batch_max,
    )
    scorer = Scorer(
        holder=runtime.holder,
        seen=seen,
        default_reply=responses,
        dlq=requests_dlq,
        reply_topic=reply_topic,
        topic_exists=KnownTopics(kafka_client_options(s)).exists,
        forbidden_replies=frozenset(
            {
                s.ratings_topic,
                s.requests_topic,
                s.model_updates_topic,
                s.ratings_dlq_topic,
                s.requests_dlq_topic,
            }
        ),
        max_bytes=s.max_message_bytes,
        max_batch=s.request_batch_max,
    )

    # Each agent takes what its stream has buffered (its channel's queue) as one batch.
    @app.agent(ratings, name="ingest")
    async def ingest_agent(stream: Any) -> None:
        await ingest.run(stream, idle=stream.channel.empty)

    @app.agent(requests, name="scorer")
    async def scorer_agent(stream: Any) -> None:
        await scorer.run(stream, idle=stream.channel.empty)

    if follow_updates:

        @app.task
        async def follow_model_updates() -> None:
            async with store_from_settings(s) as store:
                follower = ModelFollower(
                    runtime.holder, store, kafka_client_options(s), s.model_updates_topic
                )
                await follower.run()
