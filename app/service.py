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
import functools
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
import mode
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.serializers import codecs
from faust.types import ConsumerT

from agents import metrics
from agents.bulk import PartitionedReader
from agents.deltas import DeltaPublisher
from agents.follower import ModelFollower
from agents.health import ReaderHealth, record_error
from agents.ingest import Ingest
from agents.kafka import (
    DeadLetterQueue,
    KnownTopics,
    Record,
    committed_offsets,
    dead_letter_marks,
    send_records,
)
from agents.lease import Lease
from agents.resync import SnapshotAsker, serve_snapshot_requests
from agents.scorer import NO_CATALOG, Catalog, Scorer
from agents.state import ModelHolder
from agents.trainer import Trainer, TrainerRebalance, restore_model
from app import web
from app.dashboard import Series
from app.kafka import faust_broker_options, kafka_client_options
from app.settings import Settings, model_config_of, model_keys
from app.stores import store_from_settings
from app.topics import (
    CATALOG_PARTITIONS,
    CATALOG_TABLE,
    DLQ_MAX_MESSAGE_BYTES,
    SEEN_TABLE,
    TopicSpec,
    bulk_group,
    delta_topic_max_bytes,
    faust_app_id,
    seen_changelog,
    topic_specs,
    trainer_group,
)
from models.bounds import Capacity
from models.config import ModelConfig
from models.signing import DEV_KEY, Keyring
from models.wire import (
    Undecodable,
    catalog_item_body,
    decode_catalog_value,
    encode_json,
    user_key,
)

log = logging.getLogger(__name__)

ROLES = ("trainer", "scorer", "all")


def model_config(settings: Settings) -> ModelConfig:
    """The model hyperparameters the settings choose (:func:`app.settings.model_config_of`)."""
    return model_config_of(settings)


@dataclass
class Runtime:
    """What the agents and views of one worker share."""

    settings: Settings
    role: str
    holder: ModelHolder = field(default_factory=ModelHolder)
    trainer: Trainer | None = None
    seen: FaustSeenTable | None = None  # the seen-items table (scorer/all roles)
    ingest: Ingest | None = None  # the ingest agent (scorer/all roles)
    catalog: Any = None  # the catalog GlobalTable (every role)
    series: Series | None = None  # the dashboard's sampled time series
    health: ReaderHealth = field(default_factory=ReaderHealth)  # readers failing: /health/ 503
    topics: dict[str, Any] = field(default_factory=dict)

    @property
    def catalog_rows(self) -> Catalog:
        """The catalog's rows as a Mapping: the table's store, which holds the same rows
        without the Table's per-read hooks (measured 0.3-0.7 us a title instead of 2.4-3.3;
        a reply reads ten)."""
        return NO_CATALOG if self.catalog is None else self.catalog.data


class FaustSeenTable:
    """The Faust ``seen-items`` table as :class:`agents.ports.SeenTable`.

    ``put`` does what ``Table.__setitem__`` does, differently in three ways: the changelog
    partition is given, not taken from the current event (ingest reads outside Faust's
    streams, and one slice holds ratings of many partitions); the key is written raw, as the
    changelog topic reads it back on recovery (the table's own key serializer for ``str``
    is JSON: keys would come back as ``'"u7"'``); and the record is sent at ``flush``, once
    per changed row per commit, in whole record batches by a producer of the ingest's own
    (Faust's ``send_changelog`` queues in its producer buffer, whose back-pressure stalls
    every stream of the worker; one ``send`` per row cost the ingest ~12% of its CPU).
    Rows are read and written in the memory store's dict (``store="memory://"``): the
    Table's and the Store's own accessors add hooks per call that the ingest pays per user.

    With a ``lease`` (:mod:`agents.lease`), a flush after the process stood still past its
    session timeout sends nothing: it drops the changed rows (the reader has not committed
    their ratings and reads them again) and raises :class:`~agents.lease.LeaseLost`.
    """

    def __init__(
        self,
        table: Any,
        make_way: Callable[[], Awaitable[None]] | None = None,
        lease: Lease | None = None,
    ) -> None:
        self.table = table
        self.rows: dict[str, bytes] = table.data.data  # the memory store's dict
        self.changelog = table.changelog_topic.get_topic_name()
        self.make_way = make_way
        self.lease = lease
        self.producer: AIOKafkaProducer | None = None  # started by the ingest (app/)
        self._dirty: dict[str, int] = {}
        self._lock = threading.Lock()  # put runs in the ingest thread, flush on the loop

    def get(self, user: str) -> bytes | None:
        return self.rows.get(user)

    def put(self, user: str, row: bytes, partition: int) -> None:
        self.rows[user] = row
        with self._lock:
            self._dirty[user] = partition

    async def flush(self, chunk: int = 500) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, {}
        if self.lease is not None:
            self.lease.check()  # stale rows must not become the changelog's last word
        if not dirty:
            return
        producer = self.producer
        if producer is None:
            raise RuntimeError("the seen-items table has no producer to flush with")
        rows = self.rows
        records: list[Record] = [
            (partition, user_key(user), row)
            for user, partition in dirty.items()
            if (row := rows.get(user)) is not None
        ]
        sent = []
        for start in range(0, len(records), chunk):  # requests get the loop between chunks
            sent += await send_records(producer, self.changelog, records[start : start + chunk])
            if self.make_way is not None:
                await self.make_way()
        await asyncio.gather(*sent)  # durable before the reader commits their ratings


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


def table_topic(app: faust.App, spec: TopicSpec) -> faust.TopicT:
    """A table's changelog: raw UTF-8 string keys (as producers key), JSON values."""
    return app.topic(
        spec.name,
        key_type=str,
        key_serializer="raw",
        value_serializer="json",
        partitions=spec.partitions,
        config=spec.config,
    )


_dev_key_said = False


def worker_model_keys(settings: Settings) -> Keyring:
    """:func:`app.settings.model_keys`; with no key set, the warning that the dev key is
    used goes to the log once per process."""
    global _dev_key_said
    keys = model_keys(settings)
    if keys.signing == DEV_KEY and not _dev_key_said:
        _dev_key_said = True
        log.warning(
            "No STREAMREC_MODEL_KEY or STREAMREC_MODEL_KEY_FILE: model deltas, announcements "
            "and snapshots are signed with the fixed dev key, which anyone can forge; set a "
            "secret key outside development (docs/deploy.md, 'Model key')"
        )
    return keys


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
        # /table/ would expose whole table rows without paging; streamrec's own views page.
        web_tables_enabled=False,
        canonical_url=f"http://{settings.web_host}:{settings.web_port}",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        producer_max_request_size=DLQ_MAX_MESSAGE_BYTES + 1024 * 1024,
        consumer_max_fetch_size=DLQ_MAX_MESSAGE_BYTES + 1024 * 1024,
        producer_acks=-1,
        # aiokafka keeps one open batch per partition and one request in flight per broker:
        # bigger batches carry a flush of changelog rows in a few requests, not hundreds.
        producer_max_batch_size=1024 * 1024,
        # A scorer's Faust consumer hands on at most this many fetched records at once, so a
        # request never queues behind a whole fetch of another topic (ratings, in the `all`
        # role); the scorer's ingest reads ratings itself, the trainer its own way.
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
    model_updates = topics[settings.model_updates_topic]
    _add_catalog(app, runtime, specs[settings.items_topic])
    _add_series(app, runtime)

    if role in ("trainer", "all"):
        deltas = None
        if role == "trainer":  # in one process the scorer shares the trainer's own view
            deltas = DeltaPublisher(
                ImmediateSink(topics[settings.model_deltas_topic]),
                settings.delta_max_bytes,
                keys=model_keys(settings),  # said in the log when the trainer starts
            )
        _add_trainer(app, runtime, model_updates, deltas)
    if role in ("scorer", "all"):
        _add_scorer(app, runtime, follow_updates=(role == "scorer"))
    web.register(app, runtime)
    return app


@dataclass(frozen=True)
class ImmediateSink:
    """A topic whose sends go out now; ``send`` returns the delivery future.

    For the trainer's deltas and the scorer's request dead letters. Faust attaches a send
    made while an event is being processed to that event and delays it until the event is
    acked (the trainer acks only at snapshots, so its deltas would wait for the next one).
    The send goes to the app's producer directly, not through ``Topic.send``: that path
    awaits ``app.maybe_start_producer`` (a mode ``stampede``: three ``asyncio.sleep(0)``
    per call; measured ~1.3 ms a reply when replies went this way, docs/benchmarks.md
    "Profiles: scorer"). The producer is started with the app. Replies go in bulk
    (:class:`BulkTopic`)."""

    topic: faust.TopicT

    async def send(
        self,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> Any:
        producer = self.topic.app.producer
        name = self.topic.get_topic_name()
        return await producer.send(name, key, value, None, None, headers)


@dataclass
class OwnProducer:
    """An idempotent aiokafka producer of the worker's own (``acks=all``), started and
    stopped by the task that sends with it (Faust's producer sends one record at a time,
    and its buffer's back-pressure pauses every stream of the worker)."""

    options: Mapping[str, Any]
    producer: AIOKafkaProducer | None = None

    async def start(self) -> AIOKafkaProducer:
        self.producer = AIOKafkaProducer(
            **self.options,
            acks="all",
            enable_idempotence=True,
            max_batch_size=1024 * 1024,
            max_request_size=DLQ_MAX_MESSAGE_BYTES + 1024 * 1024,
        )
        await self.producer.start()
        return self.producer

    async def stop(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            await producer.stop()

    def started(self) -> AIOKafkaProducer:
        if self.producer is None:
            raise RuntimeError("the worker's producer is not started")
        return self.producer


@dataclass(frozen=True)
class BulkTopic:
    """A topic as :class:`agents.ports.BatchSink`: messages go out in record batches
    (:func:`agents.kafka.send_records`), through ``producer``."""

    name: str
    producer: OwnProducer

    async def send_many(
        self, messages: Sequence[tuple[bytes | None, bytes | None]]
    ) -> list[Awaitable[Any]]:
        records = [(None, key, value) for key, value in messages]
        return list(await send_records(self.producer.started(), self.name, records))


def never_fetch_through_faust(consumer: ConsumerT, topic: str) -> None:
    """Keep Faust's consumer from ever handing on ``topic``'s records: its partitions stay
    paused in it, while Faust's group still assigns them (they decide which ``seen-items``
    partitions a worker holds, and which partitions the bulk readers read).

    Faust pauses every assigned partition when a rebalance starts and resumes them through
    ``resume_partitions`` once recovery is done (faust/tables/recovery.py); that one call is
    wrapped to leave ``topic`` out. The records are read in bulk instead (:mod:`agents.bulk`),
    under a group of their own; Faust neither acks nor commits them. So Faust's check for
    streams that stopped processing (``verify_event_path``, every few seconds after the
    first 5 minutes: an error per partition whose records arrive but are not processed) is
    left out for them as well."""
    resume_partitions = consumer.resume_partitions
    verify_event_path = consumer.verify_event_path

    def resume_all_but_topic(tps: Any) -> None:
        resume_partitions({tp for tp in tps if tp.topic != topic})

    def verify_all_but_topic(now: float, tp: Any) -> None:
        if tp.topic != topic:
            verify_event_path(now, tp)

    consumer.resume_partitions = resume_all_but_topic  # type: ignore[method-assign]
    consumer.verify_event_path = verify_all_but_topic  # type: ignore[method-assign]


async def faust_group_positions(
    settings: Settings, role: str, partitions: Sequence[TopicPartition]
) -> Mapping[TopicPartition, int]:
    """Where Faust's own group got to (an upgrade from streamrec versions whose Faust stream
    read the requests): a new request reader starts there, not at the topic's beginning."""
    return await committed_offsets(
        kafka_client_options(settings), faust_app_id(settings, role), partitions
    )


class CatalogTable(faust.GlobalTable):
    """A GlobalTable whose changelog is a topic of our choosing.

    Faust's assignor names a global table's changelog ``<app id>-<table>-changelog`` even
    when ``changelog_topic`` says otherwise, and then fails the assignment (KeyError) and
    hangs the group; the items topic is shared by every role's app id.
    """

    def _changelog_topic_name(self) -> str:
        return self.changelog_topic.get_topic_name()


class CatalogKeys(codecs.Codec):
    """Item ids as the CLI keys them (raw UTF-8); bytes that are not UTF-8 become an id no
    lookup asks for, instead of an exception in every worker's table recovery."""

    def _dumps(self, obj: Any) -> bytes:
        return obj.encode() if isinstance(obj, str) else bytes(obj)

    def _loads(self, s: bytes) -> str:
        return s.decode("utf-8", errors="replace")


class CatalogValues(codecs.Codec):
    """The items topic's values, decoded by their wire owner (:mod:`models.wire`).

    A malformed entry (not JSON, no title, ...) reads as an empty row, so the item has no
    title; it is logged, and never fails the GlobalTable's recovery, which would keep every
    worker rebalancing for ever (measured: one ``{not json`` did). Not ``None``: Faust's
    memory store ignores a tombstone that follows a value in the same changelog batch.
    """

    def __init__(self, max_bytes: int, topic: str = "items") -> None:
        super().__init__(max_bytes=max_bytes, topic=topic)
        self.max_bytes = max_bytes
        self.topic = topic
        self._logged: set[str] = set()  # the kinds of malformed entries logged so far

    def _dumps(self, obj: Any) -> bytes:
        return encode_json(obj)

    def _loads(self, s: bytes) -> dict[str, Any]:
        try:
            return catalog_item_body(decode_catalog_value(s, max_bytes=self.max_bytes))
        except Undecodable as exc:
            rejected = exc
        except Exception as exc:  # last resort: one entry, never the table's recovery
            rejected = record_error("catalog", exc)
        metrics.SKIPPED_MESSAGES.labels(self.topic, rejected.kind).inc()
        if rejected.kind not in self._logged:  # one line per kind, not one per entry
            self._logged.add(rejected.kind)
            log.warning(
                "Ignoring malformed catalog entries (%s), e.g.: %s", rejected.kind, rejected.reason
            )
        return {}


def _add_catalog(app: faust.App, runtime: Runtime, spec: TopicSpec) -> None:
    """The item catalog: a GlobalTable whose changelog *is* the compacted items topic.

    ``streamrec catalog load`` produces to that topic; every worker reads all of it (one
    partition, as Faust recommends for global tables) and keeps following it.
    """
    items = app.topic(
        spec.name,
        key_type=str,
        key_serializer=CatalogKeys(),
        value_serializer=CatalogValues(runtime.settings.max_message_bytes, spec.name),
        partitions=spec.partitions,
        config=spec.config,
    )
    runtime.catalog = app.tables.add(
        CatalogTable(
            app,
            name=CATALOG_TABLE,
            key_type=str,
            partitions=CATALOG_PARTITIONS,
            changelog_topic=items,
            beacon=app.tables.beacon,
            is_global=True,
            # Apply changes as they come, and recover with a buffer of one (Faust's advice
            # for global tables shared by several workers).
            standby_buffer_size=1,
            recovery_buffer_size=1,
            # Nobody in the group writes the table (the CLI produces to the topic), so every
            # worker must keep reading every partition, actives included (faust issue 283).
            synchronize_all_active_partitions=True,
        )
    )


def _add_series(app: faust.App, runtime: Runtime) -> None:
    s = runtime.settings
    runtime.series = Series(
        role=runtime.role,
        holder=runtime.holder,
        ratings_topic=s.ratings_topic,
        interval=s.dashboard_sample_seconds,
        max_points=s.dashboard_points,
    )

    @app.timer(interval=s.dashboard_sample_seconds, name="dashboard-sampler")
    async def sample_dashboard() -> None:
        runtime.series.sample()


def _add_trainer(
    app: faust.App, runtime: Runtime, updates: Any, deltas: DeltaPublisher | None
) -> None:
    s = runtime.settings
    app.service(trainer_service(runtime, updates, deltas))

    @app.timer(interval=max(0.5, min(5.0, s.snapshot_every_seconds / 4)), name="snapshot-timer")
    async def snapshot_timer() -> None:
        if runtime.trainer is not None:
            await runtime.trainer.tick()


def trainer_service(
    runtime: Runtime, updates: Any, deltas: DeltaPublisher | None
) -> type[mode.Service]:
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
        _requests: asyncio.Task[None] | None = None  # scorers asking for a snapshot

        async def on_start(self) -> None:
            self._stack = contextlib.AsyncExitStack()
            store = await self._stack.enter_async_context(store_from_settings(s))
            keys = worker_model_keys(s)
            model = await restore_model(store, model_config(s), runtime.holder, keys)
            marks = await dead_letter_marks(options, s.ratings_dlq_topic, s.ratings_topic)
            own = OwnProducer(options)
            producer = await own.start()
            self._stack.push_async_callback(own.stop)
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
                capacity=Capacity(s.max_users, s.max_items),
                dead_lettered=marks,
                max_bytes=s.max_message_bytes,
                snapshot_every_batches=s.snapshot_every_batches,
                snapshot_every_seconds=s.snapshot_every_seconds,
                deltas=deltas,
                consumer=consumer,
                max_future_skew=s.max_future_skew_seconds,
                keys=keys,
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
            if deltas is not None:  # scorers follow deltas: they may ask for a snapshot
                self._requests = asyncio.create_task(
                    serve_snapshot_requests(
                        options,
                        s.model_requests_topic,
                        runtime.trainer.snapshot_requested,
                        keys=runtime.trainer.keys,
                        health=runtime.health,
                    )
                )

        async def _run(self, trainer: Trainer) -> None:
            try:
                await trainer.run(batch_max=s.batch_max, poll_seconds=s.batch_seconds)
            except Exception as exc:
                log.exception("The trainer failed: %r", exc)
                runtime.health.failed("trainer", exc)
                await self.crash(exc)

        async def on_stop(self) -> None:
            trainer, runtime.trainer = runtime.trainer, None
            if self._requests is not None:
                self._requests.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._requests
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


def _add_scorer(app: faust.App, runtime: Runtime, *, follow_updates: bool) -> None:
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
    lease = Lease(s.session_timeout)
    seen = FaustSeenTable(table, lease=lease)
    runtime.seen = seen
    requests = runtime.topics[s.requests_topic]
    requests_dlq = runtime.topics[s.requests_dlq_topic]
    replies = OwnProducer(kafka_client_options(s))
    reply_topics: dict[str, BulkTopic] = {}

    def reply_topic(name: str) -> BulkTopic:
        if name not in reply_topics:
            reply_topics[name] = BulkTopic(name, replies)
        return reply_topics[name]

    known_topics = KnownTopics(kafka_client_options(s))  # one admin client per process
    never_fetch_through_faust(app.consumer, s.requests_topic)
    ingest = Ingest(
        seen=seen,
        max_bytes=s.max_message_bytes,
        seen_limit=s.seen_items_max,
        max_future_skew=s.max_future_skew_seconds,
    )
    runtime.ingest = ingest
    scorer = Scorer(
        holder=runtime.holder,
        seen=seen,
        default_reply=reply_topic(s.responses_topic),
        dlq=ImmediateSink(requests_dlq),
        reply_topic=reply_topic,
        topic_exists=known_topics.exists,
        # Every topic streamrec owns, except the default reply topic itself.
        forbidden_replies=frozenset(t.name for t in topic_specs(s, runtime.role))
        - {s.responses_topic},
        max_bytes=s.max_message_bytes,
        responses_topic=s.responses_topic,
        reply_prefixes=s.reply_prefixes,
        max_reply_bytes=s.max_reply_bytes,
        max_batch=s.request_batch_max,
        catalog=runtime.catalog_rows,
    )

    # Ratings and requests are read in bulk, outside Faust's streams (agents/bulk.py), from
    # the partitions Faust assigned this worker for requests and the table: the same
    # numbers, co-partitioned. Requests first: the ingest yields to them between slices.
    readers = [
        PartitionedReader(
            kafka_client_options(s),
            s.requests_topic,
            group_id=bulk_group(s, runtime.role, "requests"),
            handle=scorer.handle,
            flush=scorer.delivered,  # replies delivered before their requests are committed
            max_records=s.request_batch_max,
            slice_records=s.request_batch_max,
            start_from=functools.partial(faust_group_positions, s, runtime.role),
            health=runtime.health,
            name="requests",
        ),
        PartitionedReader(
            kafka_client_options(s),
            s.ratings_topic,
            group_id=bulk_group(s, runtime.role, "ingest"),
            handle=ingest.handle,
            flush=seen.flush,
            max_records=s.ingest_batch_max,  # a slice a fetch: aiokafka unpacks it on the loop
            slice_records=s.ingest_batch_max,
            make_way=scorer.make_way,
            health=runtime.health,
            name="ingest",
        ),
    ]
    seen.make_way = scorer.make_way

    @app.task
    async def read_requests() -> None:
        await replies.start()
        try:
            await readers[0].run()
        finally:
            await known_topics.close()
            await replies.stop()

    @app.task
    async def read_ratings() -> None:
        # The ingest thread would hold the GIL for up to 5 ms (the default switch interval)
        # at a time, and a request needs the loop several times on its way through: each
        # of those steps may wait one interval for the GIL (docs/benchmarks.md, session 4).
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0002))
        changelog = OwnProducer(kafka_client_options(s))  # not the replies': a flush of
        seen.producer = await changelog.start()  # many rows must not delay a reply
        lease.start()
        try:
            await readers[1].run()
        finally:
            lease.stop()
            await changelog.stop()

    @app.on_rebalance_complete.connect
    async def own_partitions(sender: Any, **kwargs: Any) -> None:  # after table recovery
        mine = {tp.partition for tp in app.consumer.assignment() if tp.topic == s.requests_topic}
        lease.renew()
        for reader in readers:
            reader.own(mine)

    @app.on_partitions_revoked.connect
    async def release_partitions(sender: Any, revoked: Any, **kwargs: Any) -> None:
        try:
            await asyncio.wait_for(
                asyncio.gather(*(reader.release() for reader in readers)),
                timeout=s.session_timeout,
            )
        except TimeoutError:
            log.error("Bulk readers did not release their partitions in %gs", s.session_timeout)

    # Faust's group assigns the request partitions to the workers through this agent's
    # subscription; its consumer never hands their records on (never_fetch_through_faust).
    @app.agent(requests, name="scorer")
    async def scorer_agent(stream: Any) -> None:
        warned = False
        async for _ in stream:  # the request reader (its own group) answers these too
            if not warned:
                log.warning("Requests reached Faust's stream; they are not answered there")
                warned = True

    if follow_updates:

        @app.task
        async def follow_model_updates() -> None:
            keys = worker_model_keys(s)
            async with store_from_settings(s) as store:
                follower = ModelFollower(
                    runtime.holder,
                    store,
                    kafka_client_options(s),
                    s.model_updates_topic,
                    deltas_topic=s.model_deltas_topic,
                    max_delta_bytes=delta_topic_max_bytes(s),
                    health=runtime.health,
                    asker=SnapshotAsker(
                        ImmediateSink(runtime.topics[s.model_requests_topic]), keys=keys
                    ),
                    keys=keys,
                )
                await follower.run()
