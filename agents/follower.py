"""Every scorer follows the trainer: snapshots from ``model-updates``, deltas from ``model-deltas``.

The follower is not part of a consumer group: each worker reads both one-partition topics
itself. Snapshots are the durable checkpoint; deltas carry each trained batch within a
second or so. The chain rule (which delta applies to which view) is
:func:`models.delta.next_step`:

* at start the follower loads the newest announced snapshot (or the store's current one)
  and seeks the delta topic to the offset that snapshot's manifest records (or, for a
  snapshot without one, to the first delta published after it was created);
* each delta that continues the chain is verified (checksum, sizes, ranges) and applied
  copy-on-write (:meth:`models.scoring.ScoringView.with_delta`), off the event loop when
  large; the new view replaces the old one by one reference assignment, so no request
  ever sees a half-applied delta;
* a gap, a delta that cannot be verified, or a new trainer run makes it *resync*: load the
  snapshot the chain can continue from, then read on. A resync never loads the same
  snapshot twice for the same reason; it then waits for the next announced snapshot. A
  resync, and a wait, ask the trainer for a snapshot at once (:mod:`agents.resync`);
* ``streamrec models promote/rollback`` announcements pin the view: deltas of other states
  are ignored until the trainer announces its next snapshot or a trainer run starts from
  the pinned snapshot;
* only what the trainer signed is trusted (:mod:`models.signing`): a delta, an
  announcement or a snapshot that is unsigned or signed with a key this worker does not
  hold is refused (counted in ``streamrec_model_refused_total``, the last one shown in
  ``/model/``'s ``refused``, one log line per kind) and changes nothing: no resync, no pin;
  so is a delta that does not make exactly the next version (:func:`models.delta.next_step`);
* a consolidation's delta (the rows it changed, ``replaces_neighbours``) is applied like any other;
  its new blending neighbours come with the trainer's next snapshot, fetched beside the
  deltas and swapped into the view then served (the rows stay the deltas');
* with a :class:`models.ownership.Share` (``STREAMREC_SCORER_SHARE``, issue 19) the view holds
  only the users of the partitions this worker owns (and every item): loads and deltas keep
  only their rows; a revocation narrows the view, an assignment loads the new partitions'
  users from the latest checkpoint and the deltas since beside the served view
  (:mod:`agents.share_loader`) and swaps it in once it has caught up; meanwhile the holder
  says which partitions are loading.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, Unpack

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents import metrics
from agents.checkpoints import load_view
from agents.errors import is_refusal
from agents.health import ReaderHealth, record_error
from agents.kafka import KafkaOptions, partitions_of, retry_forever
from agents.memory import released_freed_memory
from agents.ports import Message, SnapshotStore, received_at
from agents.resync import SnapshotAsker
from agents.share_loader import ShareLoader, ShareLoadFailed, delta_reader
from agents.state import ModelHolder
from agents.status import DeltaChain, RefusedMessage, announcement
from models.delta import FRESH, Chain, next_step
from models.manifest import ChainMark, Manifest, parse_manifest
from models.ownership import Share
from models.scoring import ScoringView
from models.signing import Keyring, SignatureError
from models.snapshot import UntrustedSnapshot
from models.wire import DeltaError, ModelDelta, ModelUpdate, Undecodable, open_delta

log = logging.getLogger(__name__)
_T = TypeVar("_T")

OPERATOR_REASONS = frozenset({"promote", "rollback"})
_OFF_LOOP_BYTES = 1 << 20
"""Deltas whose work (message + what the apply copies: :meth:`ScoringView.delta_bytes`) is
larger than this apply in a thread."""


@dataclass
class ModelFollower:
    holder: ModelHolder
    store: SnapshotStore
    kafka: KafkaOptions = field(repr=False)  # holds the SASL login
    topic: str  # model-updates
    deltas_topic: str | None = None  # model-deltas (None: follow snapshots only)
    max_delta_bytes: int = 16 * 1024 * 1024
    snapshot_grace_seconds: float = 10.0
    #: Where failures are reported (app/ passes the worker's: /health/ degrades on it).
    health: ReaderHealth = field(default_factory=ReaderHealth)
    """An announced snapshot ahead of the deltas applied is loaded after this long."""
    asker: SnapshotAsker | None = None
    """Asks the trainer for a snapshot when the chain breaks (None: wait for the next)."""
    keys: Keyring = field(default_factory=Keyring.dev, repr=False)
    """The keys deltas, announcements and snapshots must be signed with."""
    served: bool = True
    """False for a candidate lineage (issue 20): it leaves the model_version gauge alone."""
    chain: Chain = field(default_factory=Chain)
    _refused: dict[str, int] = field(default_factory=dict)  # "what/kind" -> count
    _consumer: AIOKafkaConsumer | None = None
    _waiting: bool = False  # stalled: deltas ignored until the next announced snapshot
    _resynced: set[int] = field(default_factory=set)  # snapshots loaded by resyncs
    _bad: set[int] = field(default_factory=set)  # delta offsets that failed verification
    _announced: tuple[ModelUpdate, float] | None = None
    _applied: int = 0
    _resyncs: int = 0
    _reflected: int | None = None  # the delta offset the served view reflects, if known
    _behind_since: float | None = None  # publish time of the oldest delta not yet served
    _lag: float = 0.0  # publish -> serve seconds of the last delta applied
    #: The version of the newest consolidation delta applied whose neighbours the view
    #: lacks; a snapshot of it or later brings them (fetched by ``_neighbour_fetch``).
    _neighbours_due: int | None = None
    _neighbour_fetch: asyncio.Task[tuple[int, ScoringView] | None] | None = None
    share: Share | None = None
    """The users to hold: those of these partitions (None: every user, the default)."""
    first_share_wait: float = 0.0
    """At start, how long to wait for a share that owns partitions before the first load
    (one load of the share's users instead of a load of none, then of the share)."""
    _share_task: asyncio.Task[ShareLoader] | None = None
    _share_owned: asyncio.Event = field(default_factory=asyncio.Event)
    _share_failures: int = 0
    _share_retry_at: float = 0.0
    _share_started: float = 0.0

    async def run(self, retry_seconds: float = 5.0) -> None:
        """Follow forever; a broken connection or store is logged and retried, never fatal."""
        await retry_forever("follower", self.follow, retry_seconds, health=self.health)

    async def follow(self) -> None:
        consumer = delta_reader(self.kafka, self.max_delta_bytes)
        await consumer.start()
        self._consumer = consumer
        try:
            updates = await self._partitions(self.topic)
            deltas = await self._partitions(self.deltas_topic) if self.deltas_topic else []
            consumer.assign(updates + deltas)
            await consumer.seek_to_beginning(*updates)
            latest = await self._read_until(consumer, await consumer.end_offsets(updates))
            if latest is not None and not await self._still_current(latest):
                latest = None  # a replayed operator's announcement: the pointer rules
            await self._await_first_share()
            self.chain = Chain()
            if latest is not None:
                pinned = latest.reason in OPERATOR_REASONS
                await self.load(latest.version, latest, seek=True, pinned=pinned)
            else:
                # Nothing announced yet (e.g. only an offline bootstrap): the promoted one.
                current = await self.store.current()
                if current is not None:
                    await self.load(current, None, seek=True)
                elif deltas:  # a fresh deployment: the chain starts at the first delta
                    await consumer.seek_to_beginning(*deltas)
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                await self._handle(batch)
                await self.settle_share()
                if self._waiting:  # until an announcement comes (a request may be lost)
                    await self._ask("waiting")
                await self._load_overdue_announcement()
                self.install_neighbours()
                self._refresh_lag()
                self.health.ok("follower")
        finally:
            self._consumer = None
            await self._drop_share_task()
            await consumer.stop()

    # --- the share (issue 19) ------------------------------------------------------------
    async def _await_first_share(self) -> None:
        """Before the first load, give the group a moment to assign this worker partitions
        (at most :attr:`first_share_wait`): their users are then loaded at once."""
        if self.share is None or self.share.owned or self.first_share_wait <= 0:
            return
        try:
            await asyncio.wait_for(self._share_owned.wait(), self.first_share_wait)
        except TimeoutError:
            log.info("No partitions assigned yet: loading the items only")

    def set_share(self, share: Share) -> None:
        """Hold the users of ``share`` from now on (app/ calls this on every assignment):
        the holder says which partitions are loading until the view holds them."""
        if share == self.share:
            return
        log.info("Holding the users of partitions %s", share.describe())
        self.share = share
        self._share_failures = 0
        if share.owned:
            self._share_owned.set()
        self._mark_loading()

    def _mark_loading(self) -> None:
        view, share = self.holder.view, self.share
        if share is None:
            self.holder.loading = frozenset()
            return
        held = None if view is None else view.share
        if held is None and view is not None:
            missing: frozenset[int] = frozenset()
        elif held is None or held.n_partitions != share.n_partitions:
            missing = share.owned
        else:
            missing = share.owned - held.owned
        self.holder.set_loading(share.n_partitions, missing)

    async def settle_share(self, within: float = 5.0) -> None:
        """Bring the served view to :attr:`share`: narrowed at once when it holds more,
        else a :class:`ShareLoader` in the background, swapped in (one reference
        assignment, between deltas) once it stands where the served view does."""
        share, view = self.share, self.holder.view
        settled = view is not None and (
            view.share == share or (view.share is None and share is not None and share.everything)
        )
        if share is None or view is None or settled:
            await self._drop_share_task()
            self._mark_loading()
            return
        if view.share is None or view.share.covers(share):
            await self._drop_share_task()
            narrowed = await asyncio.to_thread(view.restricted, share)
            if self.holder.view is view:
                self.holder.publish(narrowed)
                log.info("Narrowed the view to partitions %s", share.describe())
            del view, narrowed  # the wider view's rows: freed, then given back
            self._mark_loading()
            await released_freed_memory()
            return
        task = self._share_task
        if task is None:
            if time.monotonic() >= self._share_retry_at:
                self._share_started = time.monotonic()
                self._share_task = asyncio.create_task(self._load_share(share))
            return
        if not task.done():
            return
        try:
            loader = task.result()
        except Exception as exc:
            self._share_task = None
            await self._share_failed(exc)
            return
        if loader.share != share:
            await self._drop_share_task()
            return
        try:
            if not await loader.catch_up(self.chain, within):
                return
        except Exception as exc:
            await self._drop_share_task()
            await self._share_failed(exc)
            return
        assert loader.view is not None
        neighbours, weight = view.blending()
        self.holder.publish(loader.view.with_neighbours(neighbours, weight))
        seconds = time.monotonic() - self._share_started
        log.info(
            "Serving partitions %s from the model (v%d, %d deltas replayed, %.1f s)",
            share.describe(),
            loader.chain.version,
            loader.replayed,
            seconds,
        )
        metrics.SHARE_LOAD_SECONDS.observe(seconds)
        await self._drop_share_task()
        self._mark_loading()
        del view, loader  # the old view's rows and the loader's: freed, then given back
        await released_freed_memory()

    async def _load_share(self, share: Share) -> ShareLoader:
        """The background part: the checkpoint for ``share`` and most of the deltas since."""
        version = await self.store.current()
        if version is None:
            version = await self.store.latest()
        if version is None or not self.deltas_topic:
            await self._ask("share")  # the trainer writes one at once
            raise ShareLoadFailed("no checkpoint to load the new partitions from yet")
        loader = ShareLoader(
            self.store,
            self.kafka,
            self.deltas_topic,
            share,
            version,
            self.keys,
            self.max_delta_bytes,
            bad=self._bad,
        )
        try:
            await loader.load()
            while not await loader.catch_up(self.chain, 1.0):
                if loader.ahead_of(self.chain):
                    break
        except BaseException:
            await loader.close()
            raise
        return loader

    async def _share_failed(self, exc: BaseException) -> None:
        """A load of the new partitions failed: try again in a second, from the newest
        checkpoint; the third failure in a row loads that checkpoint as the view."""
        self._share_failures += 1
        self._share_retry_at = time.monotonic() + 1.0
        log.warning("Loading partitions' users failed (%s); trying again", exc)
        if self._share_failures >= 3:
            version = await self.store.current()
            if version is not None and await self.load(version, None, seek=True):
                self._share_failures = 0

    async def _drop_share_task(self) -> None:
        task, self._share_task = self._share_task, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        try:
            loader = await task
        except BaseException:  # cancelled or failed: it closed its own consumer
            return
        await loader.close()

    async def _handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Announcements first (they may move the delta position), then deltas in order."""
        for tp, messages in batch.items():
            if tp.topic == self.topic:
                update = self._last_update(messages)
                if update is not None:
                    await self.on_update(update)
        for tp, messages in batch.items():
            if tp.topic != self.deltas_topic:
                continue
            for message in messages:
                if await self.on_delta(message):
                    break  # the position moved: the rest of this batch is stale

    # --- snapshots ---------------------------------------------------------------------
    async def on_update(self, update: ModelUpdate) -> None:
        """An announcement on ``model-updates``: operators' ones win; the trainer's are
        loaded when the deltas have not already brought the view there."""
        if update.reason in OPERATOR_REASONS:
            if await self._still_current(update):
                await self.load(update.version, update, seek=False, pinned=True)
            return
        if self.chain.pinned or self._waiting or self.holder.view is None or not self.deltas_topic:
            if update.version != self._version() or self._waiting or self.chain.pinned:
                await self.load(update.version, update, seek=True)
            return
        if self._reached(update):  # the deltas got here first: note the checkpoint only
            self._note_snapshot(update)
            self._fetch_neighbours(update)
        elif update.lineage is None:  # not a trainer's (e.g. an offline bootstrap): no
            await self.load(update.version, update, seek=True)  # deltas will bring it
        else:
            self._announced = (update, time.monotonic())

    async def _still_current(self, update: ModelUpdate) -> bool:
        """Whether an operator's announcement (promote, rollback) names the store's current
        version. Operators move the pointer before they announce, and the trainer moves it
        with every snapshot, so a genuinely signed but old announcement written again (a
        replay) names a version the pointer has left: refused, no pin. The trainer's own
        announcements are not asked (the chain rule orders them)."""
        if update.reason not in OPERATOR_REASONS:
            return True
        current = await self.store.current()  # a store that fails: the reader starts over
        if current == update.version:
            return True
        self._untrusted(
            "update",
            "stale",
            f"an operator's {update.reason} of v{update.version}, but the store's current "
            f"version is v{current} (an old announcement written again?)",
            version=update.version,
        )
        return False

    def _note_snapshot(self, update: ModelUpdate) -> None:
        self.holder.info["snapshot"] = {
            "version": update.version,
            "uri": update.uri,
            "at": update.metrics.get("created_at"),
        }

    def _reached(self, update: ModelUpdate) -> bool:
        chain = self.chain
        if update.lineage is None or update.lineage != chain.lineage:
            return False
        return chain.version >= (update.chain_version or update.version)

    async def _load_overdue_announcement(self) -> None:
        if self._announced is None:
            return
        update, since = self._announced
        if self._reached(update):
            self._announced = None
            self._note_snapshot(update)
            self._fetch_neighbours(update)
        elif time.monotonic() - since >= self.snapshot_grace_seconds:
            self._announced = None
            log.warning("Deltas did not reach announced v%d in time: loading it", update.version)
            metrics.RESYNCS.labels("behind").inc()
            self._resyncs += 1
            await self.load(update.version, update, seek=True)

    async def load(
        self,
        version: int,
        update: ModelUpdate | None,
        *,
        seek: bool,
        pinned: bool = False,
        target: str | None = None,
    ) -> bool:
        """Load, verify and serve snapshot ``version`` (``update`` announced it, if any);
        with ``seek``, read deltas on from where the snapshot ends."""
        try:
            view, chain, manifest = await self._fetch(version)
        except Exception as exc:
            if not is_refusal(exc):  # any other failure (store down): keep serving the current view
                metrics.MODEL_LOADS.labels("failed").inc()
                log.error(
                    "Could not load snapshot v%s; still serving v%s: %s",
                    version,
                    self._version(),
                    exc,
                )
                return False
            # corrupt or not a snapshot: refused, the current view stays
            metrics.MODEL_LOADS.labels("refused").inc()
            if isinstance(exc, UntrustedSnapshot):
                self._untrusted("snapshot", exc.kind, str(exc), version=version)
            self.holder.refuse(version, f"{type(exc).__name__}: {exc}")
            log.error("Refused snapshot v%s; still serving v%s: %s", version, self._version(), exc)
            return False
        lineage = None if chain is None else chain["lineage"]
        chain_version = view.version if chain is None else chain["version"]
        self._neighbours_due = None  # the snapshot's own (deltas read again set it again)
        self.chain = Chain(lineage, chain_version, version, pinned, target)
        self._waiting = False
        self._announced = None
        self.holder.publish(view, **announcement(update, created_at=manifest["created_at"]))
        if view.share == self.share:  # it holds every partition owned: none loading
            await self._drop_share_task()
        self._mark_loading()
        self._chain_info()
        metrics.MODEL_LOADS.labels("ok").inc()
        if self.served:
            metrics.MODEL_VERSION.set(view.version)
        log.info("Serving model v%d%s", view.version, " (pinned)" if pinned else "")
        if seek:
            await self._seek_after(manifest, chain)
            offset = None if chain is None else chain["offset"]
            self._reflected = None if offset is None else offset - 1
            self._behind_since, self._lag = None, 0.0
            self._refresh_lag()
        await released_freed_memory()  # the payload's pages and the view replaced
        return True

    async def _fetch(
        self, version: int, *, users: bool = True
    ) -> tuple[ScoringView, ChainMark | None, Manifest]:
        """Snapshot ``version`` as a view, its delta chain and its manifest. The payload (as
        large as the whole training state) is dropped with this frame, before the view is
        published: a worker that reports ready no longer holds it (measured: 93 MiB for
        100k users x 10k items x 64 dims, held another second while the deltas seeked)."""
        share = self.share
        if not users and share is not None:  # e.g. only its neighbours: no user row needed
            share = Share(share.n_partitions, frozenset())
        view, chain, manifest = await load_view(self.store, version, self.keys, share)
        return view, chain, parse_manifest(manifest)  # verified: the typed record

    async def _seek_after(self, manifest: Manifest, chain: ChainMark | None) -> None:
        """Point the delta consumer at the first delta after this snapshot."""
        consumer = self._consumer
        if consumer is None or not self.deltas_topic:
            return
        tp = TopicPartition(self.deltas_topic, 0)
        offset = None if chain is None else chain["offset"]
        if offset is None:  # not recorded: the first delta published after the snapshot
            created = manifest["created_at"]
            try:
                stamp = dt.datetime.fromisoformat(created).timestamp() if created else 0.0
            except ValueError:
                stamp = 0.0
            found = (await consumer.offsets_for_times({tp: int(stamp * 1000)})).get(tp)
            if found is None:
                await consumer.seek_to_end(tp)
                return
            offset = found.offset
        consumer.seek(tp, offset)

    # --- deltas ------------------------------------------------------------------------
    async def on_delta(self, message: Message) -> bool:
        """Handle one delta message; True if the delta position moved (a resync seeked)."""
        self._received(message)
        moved = await self._on_delta(message)
        self._refresh_lag()
        return moved

    async def _on_delta(self, message: Message) -> bool:
        if self._waiting:
            metrics.DELTAS_SKIPPED.labels("waiting").inc()
            return False
        if message.offset in self._bad:  # refused before: never served, nothing it lacks
            metrics.DELTAS_SKIPPED.labels("bad").inc()
            self._reflected, self._behind_since = message.offset, None
            return False
        started, cpu = time.perf_counter(), _CpuClock()
        try:
            raw = open_delta(message.value, self.keys)
        except SignatureError as exc:  # not the trainer's: as if never read (no resync)
            self._untrusted("delta", exc.kind, exc.reason, offset=message.offset)
            self._reflected, self._behind_since = message.offset, None
            return False
        try:
            if len(raw) > _OFF_LOOP_BYTES:
                delta = await cpu.off_loop(ModelDelta.decode, raw)
            else:
                delta = ModelDelta.decode(raw)
        except DeltaError as exc:
            return await self._refuse(message, exc)
        except Exception as exc:  # last resort: refused like any delta that fails to verify
            return await self._refuse(message, record_error("follower", exc))
        step = next_step(self.chain, delta)
        if step == "refuse":
            reason = f"delta v{delta.base_version}->v{delta.version} does not make the next version"
            self._untrusted("delta", "chain", reason, offset=message.offset)
            self._reflected, self._behind_since = message.offset, None
            return False
        if step in ("skip", "ignore"):
            metrics.DELTAS_SKIPPED.labels(step).inc()
            if step == "skip":  # nothing the view lacks (ignored ones: pinned, it lags)
                self._reflected, self._behind_since = message.offset, None
            return False
        if step == "resync":
            return await self.resync("gap", target=delta.lineage)
        if step == "reload_origin":
            if delta.origin == FRESH:
                self.chain = Chain(target=delta.lineage)
            elif not await self.load(delta.origin, None, seek=False, target=delta.lineage):
                return await self.resync("origin missing", target=delta.lineage)
            if next_step(self.chain, delta) != "join":
                return await self.resync("gap", target=delta.lineage)
        if delta.snapshot_needed:  # too large for a message: the trainer writes a snapshot
            log.info("Delta v%d needs a snapshot; waiting for its announcement", delta.version)
            self._waiting = True
            return False
        base = self.holder.view
        if base is None or (step != "apply" and delta.origin == FRESH):
            base = ScoringView.empty(_components(delta), share=self.share)  # from nothing
        try:
            work = len(message.value or b"") + base.delta_bytes(delta)
            if work > _OFF_LOOP_BYTES:
                view = await cpu.off_loop(base.with_delta, delta, join=True)
            else:
                view = base.with_delta(delta, join=True)
        except DeltaError as exc:
            return await self._refuse(message, exc)
        self.chain = self.chain.applied(delta)
        if delta.replaces_neighbours:  # the rows are served now, the neighbours follow
            self._neighbours_due = delta.version
        self.holder.publish(view, trained_events=delta.trained_events)
        now = time.time()
        published = received_at(message)
        lag = max(0.0, now - published)
        self._reflected, self._behind_since, self._lag = message.offset, None, lag
        self._applied += 1
        metrics.DELTAS_APPLIED.inc()
        metrics.DELTA_APPLY_SECONDS.observe(time.perf_counter() - started)
        metrics.DELTA_APPLY_CPU_SECONDS.observe(cpu.seconds())
        metrics.DELTA_LAG.observe(lag)
        if self.served:
            metrics.MODEL_VERSION.set(view.version)
        self._chain_info(
            last_applied={
                "version": delta.version,
                "base_version": delta.base_version,
                "offset": message.offset,
                "rows": delta.rows_touched,
                "published_at": published,
                "applied_at": now,
            },
        )
        return False

    def _received(self, message: Message) -> None:
        """Every delta received, served or not (a scorer waiting for a snapshot ignores
        them), starts the clock of ``/model/``'s lag if the view was not behind yet."""
        reflected = self._reflected
        if self._behind_since is None and (reflected is None or message.offset > reflected):
            self._behind_since = received_at(message)

    def _refresh_lag(self) -> None:
        """``/model/``'s lag, kept live (after every delta received or applied, every load
        and every poll of the topics): ``lag_versions`` is how many trainer states the
        served view is behind (deltas on the topic after the one it reflects, or an
        announced snapshot further on); ``lag_seconds`` is the age of the oldest delta not
        yet served, or if none, the publish -> serve time of the last one applied."""
        behind = self._behind()
        announced = self._announced
        if announced is not None and announced[0].lineage == self.chain.lineage:
            update = announced[0]
            ahead = (update.chain_version or update.version) - self.chain.version
            behind = max(behind or 0, ahead)
        since = self._behind_since
        lag = self._lag if since is None else max(0.0, time.time() - since)
        self._chain_info(lag_seconds=round(lag, 4), lag_versions=behind)

    def _fetch_neighbours(self, update: ModelUpdate) -> None:
        """A snapshot the deltas reached: if it has the neighbours of a consolidation the
        view serves the rows of, fetch it beside the deltas (:meth:`install_neighbours`)."""
        due = self._neighbours_due
        if due is None or (update.chain_version or update.version) < due:
            return
        if self._neighbour_fetch is not None and not self._neighbour_fetch.done():
            return  # the next announcement (or the next consolidation's) tries again
        self._neighbour_fetch = asyncio.create_task(self._neighbours_of(update.version, due))

    async def _neighbours_of(self, version: int, due: int) -> tuple[int, ScoringView] | None:
        try:
            view, _, _ = await self._fetch(version, users=False)
        except Exception as exc:  # kept blending with the old ones; a later snapshot retries
            log.error("Could not fetch the neighbours of snapshot v%d: %s", version, exc)
            return None
        return due, view

    def install_neighbours(self) -> bool:
        """Serve the fetched snapshot's blending neighbours with the current rows (between
        delta batches: one reference assignment, like a delta). True if installed."""
        task = self._neighbour_fetch
        if task is None or not task.done():
            return False
        self._neighbour_fetch = None
        fetched = None if task.cancelled() else task.result()
        view = self.holder.view
        if fetched is None or view is None or self._neighbours_due != fetched[0]:
            return False  # failed, or a load or a later consolidation came first
        due, snapshot = fetched
        neighbours, weight = snapshot.blending()
        try:
            blended = view.with_neighbours(neighbours, weight)
        except ValueError as exc:  # more items than the view (never expected): keep the old
            log.error(
                "Neighbours of snapshot for v%d do not fit view v%d: %s", due, view.version, exc
            )
            return False
        self.holder.publish(blended)
        self._neighbours_due = None
        log.info("Blending neighbours of consolidation v%d installed (view v%d)", due, view.version)
        return True

    async def _refuse(self, message: Message, exc: Exception) -> bool:
        """A delta that cannot be verified: never served; resync from the store."""
        log.error("Refusing delta at offset %d: %s", message.offset, exc)
        self._bad.add(message.offset)
        return await self.resync("invalid delta")

    async def resync(self, reason: str, *, target: str | None = None) -> bool:
        """Load the store's current snapshot and read deltas on from where it ends; if that
        snapshot was already loaded by a resync, wait for the next announcement instead.
        Either way, ask the trainer for a snapshot now: the current one may be a whole
        snapshot interval older than the chain."""
        await self._ask(reason)
        version = await self.store.current()
        if version is None:
            version = await self.store.latest()
        if version is None or version in self._resynced:
            if not self._waiting:
                log.warning("Delta chain broken (%s); waiting for the next snapshot", reason)
            self._waiting = True
            return False
        self._resynced.add(version)
        metrics.RESYNCS.labels(reason).inc()
        self._resyncs += 1
        log.info("Resync (%s): loading snapshot v%d", reason, version)
        if not await self.load(version, None, seek=True, target=target):
            self._waiting = True
            return False
        if self.chain.lineage == target:
            self.chain = Chain(
                self.chain.lineage, self.chain.version, self.chain.snapshot, self.chain.pinned
            )
        return True

    async def _ask(self, reason: str) -> None:
        if self.asker is not None:
            await self.asker.ask(reason, self.chain)

    def _behind(self) -> int | None:
        """Deltas on the topic after the one the served view reflects (None: unknown)."""
        consumer, offset = self._consumer, self._reflected
        if consumer is None or not self.deltas_topic or offset is None:
            return None
        high = consumer.highwater(TopicPartition(self.deltas_topic, 0))
        return None if high is None else max(0, high - offset - 1)

    def _chain_info(self, **extra: Unpack[DeltaChain]) -> None:
        chain = self.chain
        info: DeltaChain = {
            **self.holder.info.get("deltas", DeltaChain()),
            "lineage": chain.lineage,
            "chain_version": chain.version,
            "pinned": chain.pinned,
            "waiting_for_snapshot": self._waiting,
            "applied": self._applied,
            "resyncs": self._resyncs,
            **extra,
        }
        self.holder.info["deltas"] = info

    def _version(self) -> int | None:
        view = self.holder.view
        return None if view is None else view.version

    async def _partitions(self, topic: str) -> list[TopicPartition]:
        for _ in range(50):
            parts = await partitions_of(self.kafka, topic)
            if parts:
                return [TopicPartition(topic, p) for p in parts]
            await asyncio.sleep(0.2)
        raise RuntimeError(f"topic {topic!r} does not exist; start a worker to create it")

    async def _read_until(
        self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]
    ) -> ModelUpdate | None:
        latest = None
        while await _short_of(consumer, ends):
            batch = await consumer.getmany(*ends, timeout_ms=1000)
            latest = self._last_update([m for msgs in batch.values() for m in msgs]) or latest
        return latest

    def _last_update(self, messages: list[Any]) -> ModelUpdate | None:
        """The newest well-formed announcement signed by a trusted key, if any."""
        for message in reversed(messages):
            try:
                update = ModelUpdate.parse(message.value)
            except Undecodable as exc:
                log.warning(
                    "Ignoring a malformed model update at offset %d: %s", message.offset, exc
                )
                continue
            except Exception as exc:  # last resort: ignored like a malformed one
                record_error("follower", exc)
                continue
            try:
                update.check(self.keys)
            except SignatureError as exc:
                self._untrusted("update", exc.kind, exc.reason, offset=message.offset)
                continue
            return update
        return None

    def _untrusted(
        self,
        what: str,
        kind: str,
        reason: str,
        *,
        offset: int | None = None,
        version: int | None = None,
    ) -> None:
        """Count and show a refused message or snapshot; log the first of each kind."""
        label = f"{what}/{kind}"
        metrics.MODEL_REFUSED.labels(what, kind).inc()
        if label not in self._refused:
            log.error(
                "Refusing an untrusted model %s (%s): %s; further ones are counted in "
                "streamrec_model_refused_total and shown in /model/",
                what,
                kind,
                reason,
            )
        self._refused[label] = self._refused.get(label, 0) + 1
        last: RefusedMessage = {"message": what, "kind": kind, "reason": reason[:500]}
        if offset is not None:
            last["offset"] = offset
        if version is not None:
            last["version"] = version
        self.holder.info["refused"] = {
            "counts": dict(self._refused),
            "last": last,
            "at": time.time(),
        }


def _components(delta: ModelDelta) -> int:
    for array in (delta.user_embeddings, delta.item_embeddings):
        if array.ndim == 2 and len(array):
            return int(array.shape[1])
    raise DeltaError("the first delta of a fresh model has no embedding rows")


async def _short_of(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """The consumer has not reached every end offset yet."""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


class _CpuClock:
    """CPU seconds one delta costs: this thread's, without what other tasks run while it
    awaits, plus a worker thread's own when part of the apply runs off the loop."""

    __slots__ = ("_mark", "_spent")

    def __init__(self) -> None:
        self._spent, self._mark = 0.0, time.thread_time()

    async def off_loop(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``fn(*args, **kwargs)`` in a worker thread, its CPU time counted."""
        self._spent += time.thread_time() - self._mark

        def timed() -> tuple[_T, float]:
            start = time.thread_time()
            return fn(*args, **kwargs), time.thread_time() - start

        try:
            out, spent = await asyncio.to_thread(timed)
        finally:
            self._mark = time.thread_time()
        self._spent += spent
        return out

    def seconds(self) -> float:
        return self._spent + time.thread_time() - self._mark
