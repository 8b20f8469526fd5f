"""Faust and aiokafka as the agents' ports: the ``seen-items`` table, sinks and producers,
raw topics, the item catalog's table and codecs, and the patch that keeps Faust's consumer off
the topics streamrec reads in bulk."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka import AIOKafkaProducer, TopicPartition
from faust.serializers import codecs
from faust.types import ConsumerT

from agents import metrics
from agents.health import record_error
from agents.kafka import Record, committed_offsets, send_records
from agents.lease import Lease
from app.kafka import kafka_client_options
from app.settings import Role, Settings
from app.topics import DLQ_MAX_MESSAGE_BYTES, TopicSpec, faust_app_id
from models.wire import (
    Undecodable,
    catalog_item_body,
    decode_catalog_value,
    encode_json,
    user_key,
)

log = logging.getLogger(__name__)


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

    def __len__(self) -> int:
        return len(self.rows)

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
    declared: dict[str, Any] = {}
    if spec is not None:
        declared = {"partitions": spec.partitions, "config": spec.config}
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        **declared,
    )


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
    verify_event_path = consumer.verify_event_path  # type: ignore[attr-defined]

    def resume_all_but_topic(tps: Any) -> None:
        resume_partitions({tp for tp in tps if tp.topic != topic})

    def verify_all_but_topic(now: float, tp: Any) -> None:
        if tp.topic != topic:
            verify_event_path(now, tp)

    consumer.resume_partitions = resume_all_but_topic  # type: ignore[method-assign]
    consumer.verify_event_path = verify_all_but_topic  # type: ignore[attr-defined]


async def faust_group_positions(
    settings: Settings, role: Role, partitions: Sequence[TopicPartition]
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
