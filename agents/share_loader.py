"""A scorer's newly owned users (issue 19): the latest checkpoint loaded for its new share,
then the deltas since replayed beside the served view (a consumer of their own) until they
reach the version the follower serves, when the follower swaps the loaded view in."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.checkpoints import load_view
from agents.errors import AgentError
from agents.kafka import KafkaOptions
from agents.ports import SnapshotStore
from models.delta import Chain, next_step
from models.ownership import Share
from models.scoring import ScoringView
from models.signing import Keyring, SignatureError
from models.wire import ModelDelta, open_delta

log = logging.getLogger(__name__)


def delta_reader(kafka: KafkaOptions, max_delta_bytes: int) -> AIOKafkaConsumer:
    """A consumer (no group: it only reads) able to fetch the largest delta allowed."""
    return AIOKafkaConsumer(
        **kafka,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=max_delta_bytes + (1 << 20),
        fetch_max_bytes=2 * max_delta_bytes + (1 << 20),
    )


class ShareLoadFailed(AgentError):
    """The loaded checkpoint and its deltas cannot reach the served chain (another trainer
    run, a gap, a marker), or there is no checkpoint yet: the follower starts again from
    the newest checkpoint."""

    retriable = True


@dataclass
class ShareLoader:
    """The view of ``share`` from checkpoint ``version`` on, caught up delta by delta."""

    store: SnapshotStore
    kafka: KafkaOptions = field(repr=False)
    deltas_topic: str
    share: Share
    version: int
    keys: Keyring = field(repr=False)
    max_delta_bytes: int = 16 * 1024 * 1024
    bad: Collection[int] = ()  # delta offsets the follower refused (never served)
    view: ScoringView | None = None
    chain: Chain = field(default_factory=Chain)
    replayed: int = 0
    _consumer: AIOKafkaConsumer | None = None
    _pending: deque[Any] = field(default_factory=deque)  # fetched, not yet applied

    async def load(self) -> None:
        """Load the checkpoint for the share and point a consumer at the deltas after it."""
        view, mark, _ = await load_view(self.store, self.version, self.keys, self.share)
        if mark is None or mark["offset"] is None:
            raise ShareLoadFailed(f"snapshot v{self.version} does not say where its deltas start")
        self.view = view
        self.chain = Chain(mark["lineage"], mark["version"], self.version)
        self._consumer = await self._open(mark["offset"])

    async def _open(self, offset: int) -> AIOKafkaConsumer:
        """A consumer of the delta topic from ``offset`` (no group: it only reads)."""
        consumer = delta_reader(self.kafka, self.max_delta_bytes)
        await consumer.start()
        tp = TopicPartition(self.deltas_topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        return consumer

    def at(self, served: Chain) -> bool:
        """This view stands where the served one does (same lineage and version)."""
        return (self.chain.lineage, self.chain.version) == (served.lineage, served.version)

    def ahead_of(self, served: Chain) -> bool:
        return self.chain.lineage == served.lineage and self.chain.version > served.version

    async def catch_up(self, served: Chain, within: float) -> bool:
        """Apply the deltas after this view's version, never past ``served``'s; True once
        it stands where ``served`` does. Raises :class:`ShareLoadFailed` when it cannot."""
        deadline = time.monotonic() + within
        while not self.at(served):
            if self.ahead_of(served):
                return False  # the served view catches up first
            if self.chain.lineage != served.lineage and self.chain.version >= served.version:
                raise ShareLoadFailed("the served chain is of another trainer run")
            if not self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                await self._fetch(remaining)
                continue
            await self._apply(self._pending.popleft())
        return True

    async def _fetch(self, seconds: float) -> None:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=int(max(1, min(seconds, 1.0) * 1000)))
        for messages in batch.values():
            self._pending.extend(messages)

    async def _apply(self, message: Any) -> None:
        if message.offset in self.bad:
            return
        try:
            raw = open_delta(message.value, self.keys)
        except SignatureError:  # not the trainer's: the follower skips it too
            return
        delta = await asyncio.to_thread(ModelDelta.decode, raw)  # DeltaError: failed
        step = next_step(self.chain, delta)
        if step in ("skip", "refuse"):
            return
        if step not in ("apply", "join") or delta.snapshot_needed:
            raise ShareLoadFailed(f"delta v{delta.version} does not continue v{self.chain.version}")
        assert self.view is not None
        self.view = await asyncio.to_thread(self.view.with_delta, delta, join=True)
        self.chain = self.chain.applied(delta)
        self.replayed += 1

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
