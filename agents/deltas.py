"""The trainer's side of the delta chain: publish each batch's model delta to the scorers.

After every trained batch the trainer's model has made its new view from the previous one
by a :class:`models.delta.ModelDelta` (``model.last_delta``); this sends exactly that delta
on the one-partition ``model-deltas`` topic and records the topic offset after it in the
model (``model.delta_offset``), so the next snapshot tells scorers where to read on.

A delta larger than the topic accepts is replaced by a "snapshot needed" marker and the
trainer writes a snapshot at once; scorers load that snapshot instead.

A consolidation's delta carries the rows it changed (its window's) but not its new blending
neighbours, which travel with snapshots: scorers apply the rows and go on applying the
deltas after it, blending with their old neighbours until the trainer's next snapshot
(written at once) brings the new ones. (Until 2026-12-02 it was a marker, and scorers
ignored every delta until the snapshot was written and loaded: 1.7-3.1 s of stall, see
docs/benchmarks.md "Freshness across a consolidation".)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from agents import metrics
from agents.ports import Sink
from agents.status import PublishedDelta
from models.incremental import IncrementalModel
from models.scoring import ScoringView
from models.signing import Keyring
from models.wire import DeltaError, ModelDelta, delta_key, seal_delta

log = logging.getLogger(__name__)

_ENCODE_OFF_LOOP_ROWS = 20_000
"""Deltas with more touched rows than this are encoded in a worker thread."""


@dataclass
class DeltaPublisher:
    """Sends the trainer's deltas (Faust objects are passed in by ``app/``)."""

    sink: Sink  # model-deltas; send() must not wait for the batch's events to be acked
    max_bytes: int
    keys: Keyring = field(default_factory=Keyring.dev, repr=False)
    """Every delta is signed with ``keys.signing`` (scorers refuse what is not)."""
    send_timeout: float = 30.0
    """How long a delta's delivery may take: past it the publish counts as failed (scorers
    resync from the next snapshot) and training goes on. An idempotent producer retries a
    record for ever, and the trainer awaits each delta: a broker that came back without
    answering it must not stop training."""

    async def publish(self, model: IncrementalModel, view: ScoringView) -> PublishedDelta | None:
        """Publish the delta that made ``view``; returns what ``/model/`` shows about it, with
        ``snapshot_needed`` True if the delta was too large and a snapshot must follow, and
        ``neighbours_follow`` True if the scorers take its blending neighbours from the next
        snapshot (a consolidation's)."""
        delta = model.last_delta
        if delta is None or delta.version != view.version:
            return None  # the view was built whole (the first one): nothing to chain to
        refused = self._refused(delta)
        if refused is not None:  # scorers would refuse it, resync and wait for a snapshot
            log.error(
                "Delta v%d would be refused by the scorers (%s): sending 'snapshot needed' "
                "instead, and a snapshot at once",
                delta.version,
                refused,
            )
            raw = self._encode(delta.as_marker())
        elif delta.rows_touched > _ENCODE_OFF_LOOP_ROWS:
            raw = await asyncio.to_thread(self._encode, delta)
        else:
            raw = self._encode(delta)
        marker = refused is not None
        if not marker and len(raw) > self.max_bytes:
            marker = True
            log.warning(
                "Delta v%d is %d bytes (limit %d): sending 'snapshot needed' instead",
                delta.version,
                len(raw),
                self.max_bytes,
            )
            raw = self._encode(delta.as_marker())
        elif not marker and delta.replaces_neighbours:
            log.info(
                "Delta v%d (a consolidation, %d rows) sent; its blending neighbours follow "
                "with the next snapshot",
                delta.version,
                delta.rows_touched,
            )
        try:
            offset = await asyncio.wait_for(self._send(delta, raw), self.send_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # scorers see a gap and resync from the next snapshot
            log.error(
                "Could not publish delta v%d (%s: %s)", delta.version, type(exc).__name__, exc
            )
            metrics.DELTAS_PUBLISHED.labels("failed").inc()
            return {"version": delta.version, "error": str(exc), "snapshot_needed": True}
        if offset is not None:
            model.delta_offset = offset + 1
        kind = "refused" if refused is not None else "marker" if marker else "rows"
        metrics.DELTAS_PUBLISHED.labels(kind).inc()
        metrics.DELTA_BYTES.observe(len(raw))
        return {
            **({"refused": refused} if refused is not None else {}),
            "lineage": delta.lineage,
            "version": delta.version,
            "base_version": delta.base_version,
            "bytes": len(raw),
            "rows": delta.rows_touched,
            "offset": offset,
            "at": time.time(),
            "snapshot_needed": marker,
            "neighbours_follow": delta.replaces_neighbours and not marker,
        }

    @staticmethod
    def _refused(delta: ModelDelta) -> str | None:
        """Why scorers would refuse ``delta`` (the checks of their decode, on the object:
        :meth:`models.delta.ModelDelta.verify`), or None. A delta the model already made a
        marker (it did not apply to the trainer's own view) is refused as well."""
        if delta.snapshot_needed:
            return "it did not apply to the trainer's own view"
        try:
            delta.verify()
        except DeltaError as exc:
            return str(exc)
        return None

    def _encode(self, delta: ModelDelta) -> bytes:
        return seal_delta(delta.encode(), self.keys)

    async def _send(self, delta: ModelDelta, raw: bytes) -> int | None:
        """Send and wait for the broker's ack; the record's offset (if the sink reports it)."""
        result: Any = await self.sink.send(key=delta_key(delta), value=raw)
        if inspect.isawaitable(result):  # Faust returns a future of the RecordMetadata
            result = await result
        offset = getattr(result, "offset", None)
        return offset if isinstance(offset, int) else None
