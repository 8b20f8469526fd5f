"""Serving the running experiments: each reply in an experiment comes from its variant.

:class:`ExperimentServing` is the scorer's one hook (:meth:`ExperimentServing.replies`, in
place of :func:`agents.scorer.replies_for`): a user in a running experiment's share gets the ``ab``
arm :func:`models.experiment.assign` gives them for the experiment's whole life, or a
team-draft interleaving of both rankings (:mod:`models.interleaving`); every such reply
says the experiment and variant (and each item's team), and is written as impressions.
A variant's view is the served one, a stored snapshot (loaded and verified like any), a
second trainer lineage's (followed like the served one), or any of them with another
blend weight. A candidate this worker has not loaded is answered
from control, and the reply says so (no impression: it is neither arm). Impressions wait
``impressions_linger`` seconds to go out together, after the replies: not one produce
request per reply beside it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from agents import experiment_metrics as em
from agents.experiment_registry import ExperimentRegistry
from agents.ports import BatchSink
from agents.scorer import NO_CATALOG, Catalog, replies_for
from agents.state import ModelHolder
from models.events import RecRequest
from models.experiment import Experiment, Variant, assign, request_seed
from models.impressions import Impressions
from models.interleaving import team_draft
from models.scoring import ScoringView
from models.wire import Reply, ReplyItem

log = logging.getLogger(__name__)

LoadVersion = Callable[[int], Awaitable[ScoringView]]
"""A stored snapshot version as a verified scoring view (app/ reads the store)."""

RETRY_SECONDS = 30.0
"""How long a version that failed to load waits before the next try."""

IMPRESSIONS_LINGER = 0.25
"""The service's ``impressions_linger``: a reply's impressions are sent with the others of
this long, one produce request (and one fetch of the trainer's hit reader) for them all,
after the replies are on their way. Each request sent alone cost a lone request ~1 ms more
through Kafka (docs/benchmarks.md); 0.25 s is nothing to hit windows of hours."""

MAX_WAITING = 1000
"""Impressions messages held before they are sent without waiting out the linger."""

Shown = tuple[str, str, float, Sequence[ReplyItem], Sequence[str]]
"""What one stamped reply showed (experiment, user, time, items, each item's team): its
impressions message, made when it is sent (off the reply path)."""


@dataclass
class ExperimentServing:
    """The variants' views, and the replies of the users in experiments."""

    registry: ExperimentRegistry
    control: ModelHolder
    impressions: BatchSink | None = None
    load_version: LoadVersion | None = None
    lineages: dict[str, ModelHolder] = field(default_factory=dict)
    """Candidate trainer lineages this worker follows (each its own follower), by name."""
    frozen: dict[int, ScoringView] = field(default_factory=dict)
    """Stored versions loaded for a running experiment."""
    failed: dict[int, tuple[float, str]] = field(default_factory=dict)
    """Versions that could not be loaded: when, and why."""
    _holders: dict[tuple[int, float | None], tuple[ScoringView, ModelHolder]] = field(
        default_factory=dict
    )
    impressions_linger: float = 0.0
    """Seconds a reply's impressions wait to be sent with later ones (0: at once)."""
    lost: int = 0
    """Impressions messages that could not be delivered."""
    _pending: set[asyncio.Future[Any]] = field(default_factory=set)
    _waiting: list[Shown] = field(default_factory=list)
    _timer: asyncio.Handle | None = None

    # --- the variants' views ----------------------------------------------------------
    def missing(self, variant: Variant) -> str | None:
        """Why ``variant`` cannot be served on this worker now, or None."""
        base = self._base(variant)
        if base is None:
            model = variant.model
            if model is None:
                return "no model served yet"
            if isinstance(model, str):
                if model not in self.lineages:
                    return (
                        f"model lineage {model!r} is not followed by this worker "
                        "(STREAMREC_EXPERIMENT_LINEAGES)"
                    )
                return f"model lineage {model!r} has no model yet"
            failed = self.failed.get(model)
            if failed is not None:
                return f"model v{model} could not be loaded ({failed[1]})"
            return f"model v{model} is not loaded yet"
        if variant.blend_weight and base.blending()[0] is None:
            return (
                f"model v{base.version} has no item-kNN neighbours to blend with (they come "
                "with a blending model: STREAMREC_BLEND_WEIGHT > 0)"
            )
        return None

    def _base(self, variant: Variant) -> ScoringView | None:
        """The view ``variant`` starts from: the served one, or its stored version."""
        model = variant.model
        if model is None:
            return self.control.view
        if isinstance(model, str):
            lineage = self.lineages.get(model)
            return None if lineage is None else lineage.view
        return self.frozen.get(model)

    def holder(self, variant: Variant) -> ModelHolder | None:
        """A holder of ``variant``'s view (cached per view), or None if it is missing."""
        base = self._base(variant)
        if base is None or self.missing(variant) is not None:
            return None
        if variant.blend_weight is None and variant.model is None:
            return self.control
        if variant.blend_weight is None and isinstance(variant.model, str):
            return self.lineages[variant.model]  # its follower keeps it fresh
        key = (id(base), variant.blend_weight)
        cached = self._holders.get(key)
        if cached is not None and cached[0] is base:
            return cached[1]
        view = base
        if variant.blend_weight is not None:
            neighbours, _ = base.blending()
            view = base.with_neighbours(neighbours, variant.blend_weight)
        holder = ModelHolder(view=view)
        if len(self._holders) > 16:  # old views of the served model: let them go
            self._holders.clear()
        self._holders[key] = (base, holder)
        return holder

    async def maintain(self, interval: float = 1.0) -> None:
        """For ever: load the stored versions running experiments need; drop the others.
        When it is stopped, the impressions still waiting are sent and their deliveries
        awaited (at most ``interval`` + 10 s)."""
        try:
            while True:
                await self.refresh()
                await asyncio.sleep(interval)
        finally:
            await self.flush(most=interval + 10.0)

    async def refresh(self) -> None:
        needed = {
            v.model
            for e in self.registry.running()
            for v in (e.control, e.candidate)
            if isinstance(v.model, int)
        }
        for version in list(self.frozen):
            if version not in needed:
                del self.frozen[version]
        for version in sorted(needed - self.frozen.keys()):
            if self.load_version is None:
                self.failed[version] = (time.monotonic(), "no model store")
                continue
            failed = self.failed.get(version)
            if failed is not None and time.monotonic() - failed[0] < RETRY_SECONDS:
                continue
            try:
                self.frozen[version] = await self.load_version(version)
                self.failed.pop(version, None)
                log.info("Loaded model v%d for an experiment", version)
            except Exception as exc:  # refused or unavailable: control answers meanwhile
                why = f"{type(exc).__name__}: {exc}"[:300]
                self.failed[version] = (time.monotonic(), why)
                log.error("Could not load model v%d for an experiment: %s", version, why)

    # --- serving ----------------------------------------------------------------------
    def experiment_of(
        self, user: str, running: Sequence[Experiment] | None = None
    ) -> tuple[Experiment, str] | None:
        """The one running experiment ``user`` takes part in (the first by name), and
        what they get there."""
        for experiment in self.registry.running() if running is None else running:
            got = assign(experiment, user)
            if got is not None:
                return experiment, got
        return None

    def active(self) -> bool:
        """An experiment is running: :meth:`replies` may answer other than
        :func:`agents.scorer.replies_for`."""
        return bool(self.registry.running())

    def replies(
        self,
        requests: Sequence[RecRequest],
        holder: ModelHolder,
        seen: Sequence[np.ndarray],
        received: Sequence[float] | None = None,
        *,
        catalog: Catalog = NO_CATALOG,
    ) -> list[Reply]:
        """The replies to ``requests`` (the scorer's :func:`agents.scorer.replies_for`, with
        the experiments in): each request is scored once per view it needs (its arm's, or
        both for an interleaving), one batch per view; replies in an experiment are
        stamped and written as impressions."""
        running = self.registry.running()
        if not running or holder is not self.control:
            return replies_for(requests, holder, seen, received, catalog=catalog)
        plans = [self.experiment_of(r.user, running) for r in requests]
        batches: dict[int, tuple[ModelHolder, list[int]]] = {}
        for n, plan in enumerate(plans):
            for answering in self._holders_for(plan):
                batches.setdefault(id(answering), (answering, []))[1].append(n)
        scored: list[dict[int, Reply]] = [{} for _ in requests]
        for answering, indices in batches.values():
            answered = replies_for(
                [requests[n] for n in indices],
                answering,
                [seen[n] for n in indices],
                None if received is None else [received[n] for n in indices],
                catalog=catalog,
            )
            for n, reply in zip(indices, answered, strict=True):
                scored[n][id(answering)] = reply
        out = []
        shown: list[Shown] = []
        now = time.time()
        for request, plan, by_holder in zip(requests, plans, scored, strict=True):
            if plan is None:
                out.append(by_holder[id(self.control)])
                continue
            experiment, got = plan
            served = self._one(experiment, got, request, by_holder)
            out.append(served)
            variant = served.variant or "control"
            em.REPLIES.labels(experiment.name, variant).inc()
            if served.latency_ms is not None:
                em.LATENCY.labels(experiment.name, variant).observe(served.latency_ms / 1000)
            if served.note is not None:
                em.FALLBACKS.labels(experiment.name).inc()
            elif served.items:
                teams = served.teams or (variant,) * len(served.items)
                shown.append((experiment.name, request.user, now, served.items, teams))
        if shown and self.impressions is not None:
            self._write(shown)
        return out

    def _holders_for(self, plan: tuple[Experiment, str] | None) -> list[ModelHolder]:
        """The views a request needs scored: its arm's (control when the candidate is
        missing), both for an interleaving, the served one outside experiments or when
        even the control is missing."""
        if plan is None:
            return [self.control]
        experiment, got = plan
        control = self.holder(experiment.control)
        if control is None:
            return [self.control]
        if got == "control":
            return [control]
        candidate = self.holder(experiment.candidate)
        if candidate is None:
            return [control]
        return [candidate] if got == "candidate" else [control, candidate]

    def _one(
        self, experiment: Experiment, got: str, request: RecRequest, scored: dict[int, Reply]
    ) -> Reply:
        """The stamped reply of ``request`` in ``experiment`` from the replies ``scored``
        by each view it needed (keyed by holder)."""

        control_holder = self.holder(experiment.control)
        if control_holder is None:  # the control itself is missing: the served model answers
            why = self.missing(experiment.control)
            return replace(
                scored[id(self.control)],
                experiment=experiment.name,
                variant="control",
                note=f"control {why}: answered from the served model",
            )
        control = scored.get(id(control_holder))
        candidate_holder = self.holder(experiment.candidate)
        if candidate_holder is None:
            why = self.missing(experiment.candidate)
            assert control is not None
            return replace(
                control,
                experiment=experiment.name,
                variant="control",
                note=None if got == "control" else f"candidate {why}: answered from control",
            )
        candidate = scored.get(id(candidate_holder))
        if got != "interleaved":
            arm = control if got == "control" else candidate
            assert arm is not None
            return replace(arm, experiment=experiment.name, variant=got)
        assert control is not None and candidate is not None
        # interleaved: team-draft of both rankings, each item from the team that placed it
        by_item = {i.item: i for i in candidate.items}
        by_item.update({i.item: i for i in control.items})
        placed = team_draft(
            [i.item for i in control.items],
            [i.item for i in candidate.items],
            request.k,
            request_seed(experiment.name, request.request_id),
        )
        latency = control.latency_ms
        if latency is not None and candidate.latency_ms is not None:
            latency = max(latency, candidate.latency_ms)
        return replace(
            control,
            items=[by_item[p.item] for p in placed],
            experiment=experiment.name,
            variant="interleaved",
            teams=tuple(p.team for p in placed),
            latency_ms=latency,
        )

    # --- impressions --------------------------------------------------------------------
    def _write(self, shown: list[Shown]) -> None:
        """Queue what replies ``shown``: made into impressions messages and sent once they
        have waited ``impressions_linger`` (with whatever joined them meanwhile; 0: as soon
        as the scorer has sent the replies, at its next await), or at once past
        :data:`MAX_WAITING`; never awaited by the reply path."""
        self._waiting += shown
        if len(self._waiting) >= MAX_WAITING:
            self._send_waiting()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            if self.impressions_linger <= 0:  # made after the replies, not before them
                self._timer = loop.call_soon(self._send_waiting)
            else:
                self._timer = loop.call_later(self.impressions_linger, self._send_waiting)

    def _send_waiting(self) -> None:
        """Send every impression waiting now (its delivery checked by :meth:`_sent`)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        shown, self._waiting = self._waiting, []
        messages = []
        for experiment, user, ts, items, teams in shown:
            try:
                placed = [(i.item, t) for i, t in zip(items, teams, strict=True)]
                messages.append(Impressions.of(experiment, user, ts, placed).encode())  # type: ignore[arg-type]
            except Exception as exc:  # not a valid message (cannot happen to a served reply)
                self._lost(1, exc)
        if messages:
            self._send(messages)

    async def flush(self, most: float = 10.0) -> None:
        """Send the impressions waiting, and wait (at most ``most`` seconds) until every
        send so far is delivered or counted lost."""
        self._send_waiting()
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=most)

    @property
    def waiting(self) -> int:
        """Impressions messages not yet handed to the producer."""
        return len(self._waiting)

    def _send(self, messages: list[tuple[bytes, bytes]]) -> None:
        assert self.impressions is not None
        sink = self.impressions

        async def send() -> None:
            deliveries = await sink.send_many(messages)
            await asyncio.gather(*deliveries)

        future = asyncio.ensure_future(send())
        self._pending.add(future)
        future.add_done_callback(functools.partial(self._sent, len(messages)))

    def _sent(self, count: int, future: asyncio.Future[Any]) -> None:
        """A send of ``count`` messages is over: if it failed, they count as lost (all of
        them, also when only one of its record batches failed)."""
        self._pending.discard(future)
        if future.cancelled() or future.exception() is not None:
            self._lost(count, "cancelled" if future.cancelled() else future.exception())

    def _lost(self, count: int, why: object) -> None:
        em.IMPRESSIONS_LOST.inc(count)
        first = self.lost == 0
        self.lost += count
        if first:  # one line, not one per failure
            log.error("Could not send impressions: %s", why)

    def status(self) -> dict[str, Any]:
        """What this worker serves for the experiments (the /experiments/ view)."""
        return {
            "loaded": sorted(self.frozen),
            "failed": {str(v): why for v, (_, why) in sorted(self.failed.items())},
        }
