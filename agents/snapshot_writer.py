"""The trainer's snapshot writes: one at a time in the background, put (write-once), promoted,
then announced on ``model-updates``; their offsets wait to be committed.

When one is due is :class:`agents.snapshot_schedule.SnapshotSchedule`'s decision; what goes
in one is cut by the trainer under its lock (:meth:`SnapshotSource.cut_snapshot`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from agents import metrics
from agents.checkpoints import Chain, fetch_chain
from agents.ports import Sink, SnapshotStore
from agents.snapshot_schedule import ChainHead, SnapshotSchedule
from agents.state import ModelHolder
from agents.status import ModelStatus
from models.manifest import Manifest
from models.segment import Segment, assemble, decode_chain, encode_segment
from models.signing import Keyring
from models.snapshot import SnapshotState, encode, sign_manifest
from models.wire import ModelUpdate
from storage.errors import SnapshotExists

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotCut:
    """A snapshot's content, cut from the trainer's state under its lock."""

    payload: bytes
    manifest: Manifest  # signed
    info: ModelStatus  # the model's sizes (the trainer's ``/model/`` status)
    batch_info: dict[str, Any]  # the newest batch's, for the announcement
    batches: int  # batches trained since the previous snapshot: this one covers them
    keys: Keyring  # signs the announcement


@dataclass(frozen=True)
class CheckpointCut:
    """A checkpoint's content as cut under the trainer's lock (a copy of the rows changed
    since the last one, or of the whole state): encoded, hashed and signed outside it."""

    content: SnapshotState | Segment
    info: ModelStatus
    batch_info: dict[str, Any]
    batches: int
    keys: Keyring

    def encode(self, head: ChainHead | None, chain: Chain | None = None) -> SnapshotCut:
        """The cut as a signed snapshot; a segment continues ``head`` (its parent), or with
        ``chain`` (``head``'s, as stored) is compacted into a full snapshot: the chain's
        state with the segment applied."""
        content = self.content
        if isinstance(content, Segment) and chain is not None:
            if chain[-1][1]["version"] != content.parent:
                raise ValueError(f"segment v{content.version} does not continue the chain")
            payload, manifest = encode(assemble(decode_chain(chain), [content]))
        elif isinstance(content, Segment):
            if head is None or head.version != content.parent:
                raise ValueError(f"segment v{content.version} does not continue {head}")
            payload, manifest = encode_segment(content, head.sha256, head.base, head.chain_bytes)
        else:
            payload, manifest = encode(content)
        signed = sign_manifest(manifest, self.keys)
        return SnapshotCut(payload, signed, self.info, self.batch_info, self.batches, self.keys)


class SnapshotSource(Protocol):
    """What the writer needs of the trainer (:class:`agents.trainer.Trainer`)."""

    def snapshot_due(self) -> bool: ...

    async def cut_snapshot(self) -> SnapshotCut | CheckpointCut: ...

    async def snapshot_exists(self, version: int) -> None:
        """``version`` is in the store already: move the model past it (under the lock)."""
        ...


@dataclass
class SnapshotWriter:
    """Writes the ``source``'s snapshots, one at a time, and notes them in ``schedule``."""

    source: SnapshotSource
    store: SnapshotStore
    updates: Sink  # model-updates
    holder: ModelHolder
    schedule: SnapshotSchedule
    keep_bases: int = 0
    """After writing a full snapshot, prune the versions older than this many of them
    (:meth:`storage.SnapshotStore.retain`); 0: keep everything."""
    segments: int = 0
    """Segments after a full snapshot before the next segment is compacted into one."""
    chain_fraction: float = 0.5
    """Or once the segments' bytes exceed this fraction of the full snapshot's."""
    stopping: bool = field(default=False, init=False)
    _task: asyncio.Task[bool] | None = field(default=None, init=False, repr=False)
    #: Offsets of a snapshot written and not yet committed to the group.
    _uncommitted: dict[str, int] | None = field(default=None, init=False, repr=False)

    @property
    def task(self) -> asyncio.Task[bool] | None:
        """The write in progress (or the last one)."""
        return self._task

    def start(self) -> None:
        """Write a snapshot in the background if one is due and none is being written.

        Training goes on meanwhile: a slow or unreachable store (S3 retrying for tens of
        seconds) must not stop the model from learning, only delay the commit.
        """
        if (self._task is None or self._task.done()) and self.source.snapshot_due():
            self._task = asyncio.create_task(self.write())

    def soon(self) -> None:
        """Scorers ignore deltas from a "snapshot needed" marker on until they have loaded
        a snapshot, and blend with old neighbours after a consolidation's delta until a
        snapshot brings the new ones: write it at once, or as soon as the write in progress
        ends (cut before, that one does not cover it), not at the next batch or tick."""
        task = self._task
        if task is None or task.done():
            self.start()
        else:
            task.add_done_callback(self._after)

    def _after(self, _: object) -> None:
        """A write in progress ended: start the one :meth:`soon` asked for."""
        if not self.stopping:
            self.start()

    async def settle(self) -> None:
        """Wait for the write in progress, if any."""
        if self._task is not None:
            await asyncio.shield(self._task)

    def take_uncommitted(self) -> dict[str, int] | None:
        """The newest snapshot's offsets if not yet taken for a commit."""
        offsets, self._uncommitted = self._uncommitted, None
        return offsets

    async def write(self) -> bool:
        """Write, promote and announce a snapshot; its offsets are committed afterwards.

        The state and the offsets it covers are cut under the trainer's lock (training waits
        only for the serialisation); the write itself runs while training continues. A
        failure (the store is down, say) is logged and retried at the next chance: nothing
        is committed, so nothing is lost, and the worker keeps training.
        """
        cut = await self.source.cut_snapshot()
        if isinstance(cut, CheckpointCut):  # encoded, hashed and signed outside the lock
            cut = await asyncio.to_thread(cut.encode, self.schedule.head, await self._chain(cut))
        manifest = cut.manifest
        try:
            uri = await self._put(cut)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, SnapshotExists):  # e.g. written, but the answer was lost
                await self.source.snapshot_exists(manifest["version"])
            log.error("Snapshot failed (%s: %s); will retry", type(exc).__name__, exc)
            self.schedule.failed(time.monotonic())
            return False
        version = manifest["version"]
        self.schedule.saved(version, manifest["offsets"], cut.batches, time.monotonic())
        self.schedule.wrote(manifest, len(cut.payload))
        if self.keep_bases and "parent" not in manifest:
            await self._retain()
        self._uncommitted = self.schedule.offsets
        self.holder.info["snapshot"] = {"version": version, "uri": uri, "at": time.time()}
        metrics.SNAPSHOTS.inc()
        log.info(
            "Snapshot v%d written (%s, %d bytes, %d trained events, offsets %s)",
            version,
            f"segment after v{manifest['parent']}" if "parent" in manifest else "full",
            len(cut.payload),
            manifest["trained_events"],
            manifest["offsets"],
        )
        return True

    async def _chain(self, cut: CheckpointCut) -> Chain | None:
        """The stored chain a segment is compacted with when a full snapshot is due (None:
        write the segment; also when reading the chain fails, so the checkpoint is not
        lost: the next one tries again)."""
        head = self.schedule.head
        if not isinstance(cut.content, Segment) or head is None:
            return None
        if not self.schedule.base_due(self.segments, self.chain_fraction):
            return None
        try:
            return await fetch_chain(self.store, head.version)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error(
                "Reading v%d's chain to compact failed (%s: %s)",
                head.version,
                type(exc).__name__,
                exc,
            )
            return None

    async def _retain(self) -> None:
        """Prune by the retention policy; a failure is logged (the next base retries)."""
        try:
            pruned = await self.store.retain(self.keep_bases)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("Pruning old checkpoints failed (%s: %s)", type(exc).__name__, exc)
            return
        if pruned:
            log.info(
                "Pruned %d old checkpoint versions (v%d..v%d)", len(pruned), pruned[0], pruned[-1]
            )

    async def _put(self, cut: SnapshotCut) -> str:
        """Put (verified, write-once), promote, then announce: never announce before that."""
        manifest = cut.manifest
        version = manifest["version"]
        uri = await self.store.put(version, cut.payload, manifest)
        await self.store.promote(version)
        update = ModelUpdate.from_manifest(
            uri,
            manifest,
            **cut.batch_info,
            n_users=cut.info["n_users"],
            n_items=cut.info["n_items"],
            created_at=manifest["created_at"],
        ).signed(cut.keys)
        key, value = update.encode()
        await self.updates.send(key=key, value=value)
        return uri
