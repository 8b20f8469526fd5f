"""When the trainer's next snapshot is due: what the last one saved, how many batches and
seconds have passed since, and who asked for one sooner; pure decisions over a clock passed
in (no asyncio, no I/O), the way :func:`models.delta.next_step` is written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.segment import ChainHead as ChainHead  # re-exported: the writer uses it


@dataclass
class SnapshotSchedule:
    """The marks the trainer's snapshot decisions read; ``now`` is ``time.monotonic()``."""

    version: int  # of the newest snapshot written (or restored)
    offsets: dict[str, int]  # the offsets it covers
    last_at: float  # when it was written (or a write failed: retry after the interval)
    #: Batches trained since the newest snapshot was cut.
    batches: int = 0
    #: The newest version that needs a snapshot at once (a "snapshot needed" marker, a
    #: consolidation's delta, a scorer's request): a snapshot of it (or later) is due now.
    urgent_version: int = -1
    #: When a scorer's request for a snapshot was last answered (rate limit).
    answered_at: float = -math.inf
    #: The newest checkpoint written by this run (None: the next one is a full snapshot).
    head: ChainHead | None = None

    def segment_next(self, parent: int, segments: int) -> bool:
        """May the next checkpoint be cut as a segment continuing ``parent``? If segments
        are on (``segments`` > 0) and this run wrote ``parent``."""
        return segments > 0 and self.head is not None and self.head.version == parent

    def base_due(self, segments: int, fraction: float) -> bool:
        """Should the next segment be compacted into a full snapshot (its chain read back
        and the segment applied, outside the lock)? Once ``segments`` segments follow the
        base, or their bytes exceed ``fraction`` of the base's."""
        head = self.head
        return head is not None and (
            head.segments >= segments or head.chain_bytes > fraction * head.base_bytes
        )

    def wrote(self, manifest: Mapping[str, Any], payload_bytes: int) -> None:
        """A checkpoint with ``manifest`` was written: the next segment continues it."""
        self.head = ChainHead.of(manifest, payload_bytes, self.head)

    def unsaved(self, version: int, offsets: Mapping[str, int]) -> bool:
        """The model (at ``version``, covering ``offsets``) holds progress no snapshot has."""
        return version != self.version or offsets != self.offsets

    def due(
        self,
        version: int,
        offsets: Mapping[str, int],
        now: float,
        every_batches: int,
        every_seconds: float,
    ) -> bool:
        """Is a snapshot of the model (at ``version``, covering ``offsets``) due at ``now``?

        Only with unsaved progress; then if one was asked for urgently, or ``every_batches``
        batches were trained, or ``every_seconds`` passed since the last one (or failure).
        """
        if not self.unsaved(version, offsets):
            return False
        return (
            self.version < self.urgent_version
            or self.batches >= every_batches
            or now - self.last_at >= every_seconds
        )

    def may_answer(self, now: float, every: float) -> bool:
        """A scorer asks for a snapshot: answer it (and note when) unless one was answered
        less than ``every`` seconds ago."""
        if now - self.answered_at < every:
            return False
        self.answered_at = now
        return True

    def urge(self, version: int) -> None:
        """A snapshot of ``version`` (or later) is due at once."""
        self.urgent_version = max(self.urgent_version, version)

    def trained(self) -> None:
        """A batch was trained."""
        self.batches += 1

    def saved(self, version: int, offsets: Mapping[str, int], covered: int, now: float) -> None:
        """A snapshot of ``version`` covering ``offsets`` and ``covered`` batches was
        written; batches trained while it was written are not in it: they count towards the
        next."""
        self.version = version
        self.offsets = dict(offsets)
        self.batches = max(0, self.batches - covered)
        self.last_at = now

    def failed(self, now: float) -> None:
        """A write failed: retry after the interval, not at once; the next segment continues
        the newest checkpoint written (:attr:`head`), the failed cut's rows merged into it."""
        self.last_at = now
