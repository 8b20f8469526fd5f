"""Snapshots on demand: a scorer whose delta chain broke asks the trainer for one.

A follower that cannot continue its delta chain (a gap, a delta it refused) resyncs from
the store's current snapshot, which may be a whole snapshot interval
(``STREAMREC_SNAPSHOT_EVERY_SECONDS``) older than the deltas it needs; then it waits for the
next announcement. Instead of serving that old state until the next scheduled snapshot, it
sends a :class:`models.wire.SnapshotRequest` on the one-partition ``model-requests`` topic
(:class:`SnapshotAsker`: at once when it resyncs, again every :data:`ASK_EVERY` seconds while
it waits). The trainer reads that topic from its end (:func:`serve_snapshot_requests`) and
writes a snapshot at once (:meth:`agents.trainer.Trainer.snapshot_requested`, at most one per
:data:`ANSWER_EVERY` seconds however many scorers ask); its announcement brings every
waiting scorer back to the trainer's state.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents import metrics
from agents.health import ReaderHealth
from agents.kafka import KafkaOptions, partitions_of, retry_forever
from agents.ports import Sink
from models.delta import Chain
from models.signing import Keyring, SignatureError
from models.wire import (
    SnapshotRequest,
    Undecodable,
    open_snapshot_request,
    seal_snapshot_request,
)

log = logging.getLogger(__name__)

ASK_EVERY = 5.0
"""A waiting scorer asks again after this many seconds (a request may be lost, or arrive
while the trainer restarts)."""

ANSWER_EVERY = 2.0
"""The trainer writes at most one requested snapshot per this many seconds."""

REQUEST_MAX_AGE = 60.0
"""Requests older than this (sent while the trainer was down) are ignored."""


@dataclass
class SnapshotAsker:
    """A follower's side: send a request, at most one per ``every`` seconds."""

    sink: Sink  # model-requests
    every: float = ASK_EVERY
    keys: Keyring = field(default_factory=Keyring.dev, repr=False)  # signs the requests
    _last: float = -math.inf

    async def ask(self, reason: str, chain: Chain) -> bool:
        """Ask for a snapshot unless one was asked for less than ``every`` seconds ago."""
        now = time.monotonic()
        if now - self._last < self.every:
            return False
        self._last = now
        request = SnapshotRequest(reason, time.time(), chain.lineage, chain.version)
        key, value = seal_snapshot_request(request, self.keys)
        try:
            await self.sink.send(key=key, value=value)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next ask retries; the scheduled snapshot still comes
            log.warning(
                "Could not ask the trainer for a snapshot (%s: %s)", type(exc).__name__, exc
            )
            return False
        metrics.SNAPSHOT_REQUESTS.labels("sent").inc()
        log.info("Asked the trainer for a snapshot (%s; serving v%d)", reason, chain.version)
        return True


async def serve_snapshot_requests(
    kafka: KafkaOptions,
    topic: str,
    on_request: Callable[[SnapshotRequest], object],
    *,
    keys: Keyring,
    max_age: float = REQUEST_MAX_AGE,
    retry_seconds: float = 5.0,
    health: ReaderHealth | None = None,
) -> None:
    """The trainer's side: read ``topic`` from its end, for ever, and call ``on_request``
    with every fresh, well-formed request (a broken connection is logged and retried)."""
    await retry_forever(
        "Reading snapshot requests",
        functools.partial(_serve, kafka, topic, on_request, keys, max_age),
        retry_seconds,
        health=health,
    )


async def _serve(
    kafka: KafkaOptions,
    topic: str,
    on_request: Callable[[SnapshotRequest], object],
    keys: Keyring,
    max_age: float,
) -> None:
    parts: list[int] = []
    while not parts:
        parts = await partitions_of(kafka, topic)
        if not parts:
            await asyncio.sleep(1.0)
    consumer = AIOKafkaConsumer(**kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        warned: set[str] = set()
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for messages in batch.values():
                for message in messages:
                    try:
                        request = open_snapshot_request(message.value, keys)
                    except (Undecodable, SignatureError) as exc:  # one log line per kind
                        kind = "untrusted" if isinstance(exc, SignatureError) else "malformed"
                        metrics.SNAPSHOT_REQUESTS.labels(kind).inc()
                        if kind not in warned:
                            log.warning("Ignoring %s snapshot requests: %s", kind, exc)
                            warned.add(kind)
                        continue
                    if time.time() - request.at > max_age:
                        continue
                    on_request(request)
    finally:
        await consumer.stop()
