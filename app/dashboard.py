"""The dashboard's data: a time series sampled by a timer into a ring buffer, and its assets.

Every worker samples what it knows (model version, trained events, rates from the Prometheus
counters, batch latency, prequential hit-rate, dead letters by kind) every
``STREAMREC_DASHBOARD_SAMPLE_SECONDS`` into a ``deque`` of at most
``STREAMREC_DASHBOARD_POINTS`` points: memory is bounded however long the worker runs.
The page itself (``app/static/``) is plain HTML, CSS and JavaScript, served by the worker.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from agents import metrics
from agents.state import ModelHolder

#: The page's assets: URL name -> content type. Nothing else is served from app/static.
ASSETS = {
    "dashboard.html": "text/html",
    "dashboard.css": "text/css",
    "dashboard.js": "application/javascript",
}


def asset(name: str) -> bytes:
    """The bytes of one of :data:`ASSETS` (package data, so it works when installed)."""
    if name not in ASSETS:
        raise KeyError(name)
    return resources.files("app").joinpath("static", name).read_bytes()


def counter_samples(name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` in the process's registry, with its labels."""
    return [
        (dict(sample.labels), sample.value)
        for family in metrics.REGISTRY.collect()
        for sample in family.samples
        if sample.name == name
    ]


def dead_letters_by_kind() -> dict[str, int]:
    """Dead letters this process sent, summed over source topics, by kind."""
    counts: dict[str, int] = {}
    for labels, value in counter_samples("streamrec_dead_letters_total"):
        counts[labels["kind"]] = counts.get(labels["kind"], 0) + int(value)
    return counts


def model_fact(info: Mapping[str, Any], key: str) -> Any:
    """A fact of the served model: the trainer has it at the top of ``/model/``, a scorer in
    the announcement's ``metrics``."""
    if key in info:
        return info[key]
    nested = info.get("metrics")
    return nested.get(key) if isinstance(nested, Mapping) else None


def freshness_seconds(info: Mapping[str, Any]) -> float | None:
    """How far behind the trainer this worker serves: the lag of the last model delta it
    applied (``/model/``'s ``deltas.lag_seconds``), or None where no deltas are applied."""
    deltas = info.get("deltas")
    lag = deltas.get("lag_seconds") if isinstance(deltas, Mapping) else None
    return float(lag) if isinstance(lag, int | float) else None


def _total(name: str, **match: str) -> float:
    return sum(
        value
        for labels, value in counter_samples(name)
        if all(labels.get(k) == v for k, v in match.items())
    )


@dataclass
class Series:
    """The bounded time series behind the dashboard's charts (one per worker)."""

    role: str
    holder: ModelHolder
    ratings_topic: str
    interval: float
    max_points: int
    points: deque[dict[str, Any]] = field(init=False)
    _last: tuple[float, float, float] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.points = deque(maxlen=self.max_points)

    def _ratings_seen(self) -> float:
        # A trainer counts what it trained; a scorer what its ingest agent validated.
        if self.role in ("trainer", "all"):
            return _total("streamrec_trained_events_total")
        return _total("streamrec_events_in_total", topic=self.ratings_topic)

    def sample(self, now: float | None = None) -> dict[str, Any]:
        """Append one point (rates are per second since the previous point) and return it."""
        now = time.time() if now is None else now
        ratings, replies = self._ratings_seen(), _total("streamrec_replies_total")
        rates: dict[str, float | None] = {"ratings_per_s": None, "requests_per_s": None}
        if self._last is not None and now > self._last[0]:
            dt = now - self._last[0]
            rates = {
                "ratings_per_s": round(max(0.0, ratings - self._last[1]) / dt, 3),
                "requests_per_s": round(max(0.0, replies - self._last[2]) / dt, 3),
            }
        self._last = (now, ratings, replies)
        info = self.holder.info
        view = self.holder.view
        batch = model_fact(info, "last_batch")
        point = {
            "t": round(now, 3),
            "model_version": None if view is None else view.version,
            "trained_events": model_fact(info, "trained_events"),
            **rates,
            "batch_seconds": batch.get("seconds") if isinstance(batch, Mapping) else None,
            "hit_rate": model_fact(info, "prequential_hit_rate"),
            "freshness_seconds": freshness_seconds(info),
            "dead_letters": dead_letters_by_kind(),
        }
        self.points.append(point)
        return point

    def as_json(self, since: float | None = None) -> dict[str, Any]:
        points = [p for p in self.points if since is None or p["t"] > since]
        return {
            "role": self.role,
            "interval_seconds": self.interval,
            "max_points": self.max_points,
            "points": points,
        }
