"""The experiments every worker knows: the compacted experiments topic, signed, replayed.

A record on the topic is :class:`models.experiment.Experiment`'s JSON plus a ``signature``
(HMAC with the model key, purpose ``experiment``, :mod:`models.signing`): anyone who can
write the topic is untrusted, so an unsigned or forged record, a tombstone, or an old
record replayed (an earlier ``start``, or ``running`` again after a stop) changes nothing.
:class:`ExperimentRegistry` applies records; :class:`ExperimentReader` follows the topic
from its beginning (no group: every worker needs every experiment) and :func:`read_all`
reads it once to its end (the CLI).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.experiment_results import ResultBook, open_consumer
from agents.health import ReaderHealth
from agents.kafka import retry_forever
from models.experiment import MAX_EXPERIMENT_BYTES, Experiment, InvalidExperiment
from models.signing import SIGNATURE_FIELD, Keyring, SignatureError, check_fields, sign_fields
from models.wire import Undecodable, decode_object

log = logging.getLogger(__name__)

PURPOSE = "experiment"
"""What an experiment record's signature is for (never valid as another message)."""

MAX_RECORD_BYTES = MAX_EXPERIMENT_BYTES + 256
"""An experiment's largest JSON plus its signature field."""


def encode_signed(experiment: Experiment, keys: Keyring) -> tuple[bytes, bytes]:
    """Key (the name) and signed value of ``experiment``'s record on the topic."""
    from models.wire import encode_json

    body = experiment.to_dict()
    body[SIGNATURE_FIELD] = sign_fields(body, keys, purpose=PURPOSE)
    return experiment.key, encode_json(body)


def decode_signed(key: bytes | None, value: bytes | None, keys: Keyring) -> Experiment:
    """The experiment in a signed record keyed by its name: :class:`Undecodable` if it is
    not one, :class:`models.signing.SignatureError` if no trusted key signed it."""
    obj = decode_object(value, max_bytes=MAX_RECORD_BYTES)
    check_fields(obj, keys, purpose=PURPOSE)
    body = {k: v for k, v in obj.items() if k != SIGNATURE_FIELD}
    try:
        experiment = Experiment.from_dict(body)
    except InvalidExperiment as exc:
        raise Undecodable("invalid", f"not an experiment: {exc.reason}") from None
    if key != experiment.key:
        raise Undecodable("invalid", "an experiment must be keyed by its name")
    return experiment


def stale_reason(known: Experiment | None, new: Experiment) -> str | None:
    """Why ``new`` must not replace ``known`` (a replayed older record), or None."""
    if known is None:
        return None
    if new.start < known.start:
        return f"an older definition of {new.name!r} (start {new.start:.3f} < {known.start:.3f})"
    if new.start == known.start and not known.running and new.running:
        return f"{new.name!r} was {known.status}; running again needs a new start"
    return None


@dataclass
class ExperimentRegistry:
    """Experiment name → its newest trusted definition."""

    keys: Keyring
    experiments: dict[str, Experiment] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    """Records refused, by kind (``unsigned``, ``bad_signature``, ``invalid``, ``stale``...)."""
    last_refusal: str | None = None
    changed: Callable[[Experiment], None] | None = None
    """Called with every definition applied (app/ counts them, the serving reloads)."""

    def apply(self, key: bytes | None, value: bytes | None) -> Experiment | None:
        """Apply one record; the experiment it defines, or None if it was refused."""
        try:
            if value is None:
                raise Undecodable("empty", "a tombstone cannot delete an experiment")
            experiment = decode_signed(key, value, self.keys)
            stale = stale_reason(self.experiments.get(experiment.name), experiment)
            if stale is not None:
                raise Undecodable("invalid", stale)
        except (Undecodable, SignatureError) as exc:
            kind = exc.kind
            if not self.refused[kind]:  # one line per kind, not per record
                log.warning("Refused an experiments record (%s): %s", kind, exc.reason)
            self.refused[kind] += 1
            self.last_refusal = f"{kind}: {exc.reason}"[:500]
            return None
        self.experiments[experiment.name] = experiment
        if self.changed is not None:
            self.changed(experiment)
        return experiment

    def get(self, name: str) -> Experiment | None:
        return self.experiments.get(name)

    def running(self) -> list[Experiment]:
        """The running experiments, by name."""
        return sorted((e for e in self.experiments.values() if e.running), key=lambda e: e.name)

    def all(self) -> list[Experiment]:
        return sorted(self.experiments.values(), key=lambda e: e.name)


@dataclass
class ExperimentReader:
    """Follows the experiments topic into a registry, for ever (no consumer group)."""

    registry: ExperimentRegistry
    kafka: Mapping[str, Any]
    topic: str
    results: ResultBook | None = None
    """With a book, the results topic is followed into it too."""
    results_topic: str | None = None
    health: ReaderHealth | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the records on the topic when the reader started are applied."""

    async def run(self, retry_seconds: float = 5.0) -> None:
        await retry_forever("experiments", self.follow, retry_seconds, health=self.health)

    async def follow(self) -> None:
        consumer = await open_consumer(self.kafka)
        try:
            topics = [self.topic]
            if self.results is not None and self.results_topic:
                topics.append(self.results_topic)
            partitions = await _assign_all(consumer, *topics)
            ends = await consumer.end_offsets(partitions)
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                for tp, records in batch.items():
                    for record in records:
                        if tp.topic == self.topic:
                            self.registry.apply(record.key, record.value)
                        elif self.results is not None:
                            self.results.apply(record.key, record.value)
                if not self.ready.is_set() and await _reached(consumer, ends):
                    self.ready.set()
        finally:
            await consumer.stop()


async def _assign_all(consumer: AIOKafkaConsumer, *topics: str) -> list[TopicPartition]:
    partitions = [TopicPartition(topic, 0) for topic in topics]  # one partition each
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    return partitions


async def _reached(consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int]) -> bool:
    """Whether ``consumer`` read every partition up to ``ends``."""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def read_all(kafka: Mapping[str, Any], topic: str, keys: Keyring) -> ExperimentRegistry:
    """The registry the topic holds now: every record up to its end, read once."""
    registry = ExperimentRegistry(keys)
    consumer = await open_consumer(kafka)
    try:
        partitions = await _assign_all(consumer, topic)
        ends = await consumer.end_offsets(partitions)
        while not await _reached(consumer, ends):
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp]:
                        registry.apply(record.key, record.value)
    finally:
        await consumer.stop()
    return registry
