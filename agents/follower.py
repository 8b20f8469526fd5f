"""Every scorer follows ``model-updates`` and swaps in each announced snapshot.

The follower is not part of a consumer group: each worker reads the whole (compacted,
one-partition) topic itself. Loading, verifying and building the view happen off the
event loop; the swap is one reference assignment, so no request ever waits on a load.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents import metrics
from agents.kafka import KafkaOptions, partitions_of
from agents.ports import SnapshotStore
from agents.state import ModelHolder
from models.incremental import IncrementalModel
from models.snapshot import SnapshotError
from models.wire import ModelUpdate, Undecodable
from storage.errors import IntegrityError, SnapshotNotFound

#: Why a snapshot is refused rather than retried: its bytes are wrong, not the connection.
REFUSED = (IntegrityError, SnapshotError, SnapshotNotFound)

log = logging.getLogger(__name__)


@dataclass
class ModelFollower:
    holder: ModelHolder
    store: SnapshotStore
    kafka: KafkaOptions = field(repr=False)  # holds the SASL login
    topic: str

    async def run(self, retry_seconds: float = 5.0) -> None:
        """Follow forever; a broken connection or store is logged and retried, never fatal."""
        while True:
            try:
                await self.follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error(
                    "Model follower failed (%s: %s); retrying in %gs",
                    type(exc).__name__,
                    exc,
                    retry_seconds,
                )
                await asyncio.sleep(retry_seconds)

    async def follow(self) -> None:
        consumer = AIOKafkaConsumer(
            **self.kafka,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            partitions = await self._partitions()
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            latest = await self._read_until(consumer, ends)
            if latest is None:
                # Nothing announced yet (e.g. only an offline bootstrap): serve the promoted one.
                current = await self.store.current()
                if current is not None:
                    await self.load(current, None)
            else:
                await self.load(latest.version, latest)
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                update = _last_update([m for msgs in batch.values() for m in msgs])
                if update is not None and update.version != self._version():
                    await self.load(update.version, update)
        finally:
            await consumer.stop()

    async def load(self, version: int, update: ModelUpdate | None) -> None:
        """Load, verify and serve snapshot ``version`` (``update`` announced it, if any)."""
        try:
            payload, manifest = await self.store.get(version)
            view = await asyncio.to_thread(_view_from_snapshot, payload, manifest)
        except REFUSED as exc:  # corrupt or not a snapshot: refused, the current view stays
            metrics.MODEL_LOADS.labels("refused").inc()
            self.holder.refuse(version, f"{type(exc).__name__}: {exc}")
            log.error("Refused snapshot v%s; still serving v%s: %s", version, self._version(), exc)
            return
        except Exception as exc:  # any other failure (store down): keep serving the current view
            metrics.MODEL_LOADS.labels("failed").inc()
            log.error(
                "Could not load snapshot v%s; still serving v%s: %s", version, self._version(), exc
            )
            return
        info: dict[str, Any] = {"source": "store pointer"}
        if update is not None:
            info = {k: v for k, v in update.to_dict().items() if k != "version"}
        self.holder.publish(view, **info, created_at=manifest.get("created_at"))
        metrics.MODEL_LOADS.labels("ok").inc()
        metrics.MODEL_VERSION.set(view.version)
        log.info("Serving model v%d", view.version)

    def _version(self) -> int | None:
        view = self.holder.view
        return None if view is None else view.version

    async def _partitions(self) -> list[TopicPartition]:
        for _ in range(50):
            parts = await partitions_of(self.kafka, self.topic)
            if parts:
                return [TopicPartition(self.topic, p) for p in parts]
            await asyncio.sleep(0.2)
        raise RuntimeError(f"topic {self.topic!r} does not exist; start a worker to create it")

    async def _read_until(
        self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]
    ) -> ModelUpdate | None:
        latest = None
        while await _behind(consumer, ends):
            batch = await consumer.getmany(timeout_ms=1000)
            latest = _last_update([m for msgs in batch.values() for m in msgs]) or latest
        return latest


async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


def _last_update(messages: list[Any]) -> ModelUpdate | None:
    for message in reversed(messages):
        try:
            return ModelUpdate.parse(message.value)
        except Undecodable as exc:
            log.warning("Ignoring a malformed model update at offset %d: %s", message.offset, exc)
    return None


def _view_from_snapshot(payload: bytes, manifest: dict[str, Any]) -> Any:
    return IncrementalModel.from_bytes(payload, manifest).view()
