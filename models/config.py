"""Hyperparameters of the incremental model, validated once at construction."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

LOSSES = ("warp", "bpr", "logistic", "warp-kos")
SCHEDULES = ("adagrad", "adadelta")


_TYPES: dict[str, type | tuple[type, ...]] = {
    "int": int,
    "float": (int, float),
    "str": str,
    "bool": bool,
}
"""The Python types each annotated field type accepts (checked in ``__post_init__``)."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything that determines how the model trains; stored in every snapshot.

    ``positive_threshold``: ratings >= it are trained as implicit positives (0 makes every
    rating positive). ``use_weights``: weight each positive by ``rating / 5`` (LightFM
    sample weights; not supported by warp-kos). ``popularity_half_life_seconds``: the
    half-life of the recency-decayed popularity counts used for cold-start users.
    ``dedupe_memory``: how many recent event ids are remembered to drop redelivered events.
    ``initial_capacity``: first allocation of user/item rows (grows by doubling; it never
    changes results, only how often the arrays are reallocated).

    Consolidation (``models.consolidation``): after every ``consolidate_every`` events
    applied by streaming micro-batches (0: never), the rows of the last
    ``consolidation_window`` events' users (and the items) are retrained for
    ``consolidate_epochs`` epochs on those events, warm-started from their current values,
    and written back; every other row stays as it is. Each consolidation (and each
    offline batch) also rebuilds the item-kNN neighbours of the window's positives, the
    ``blend_neighbours`` most similar items per item (0: no blending), that the scoring view
    blends in with ``blend_weight`` for requests that bring the user's rated items.
    """

    no_components: int = 32
    loss: str = "warp"
    learning_rate: float = 0.05
    learning_schedule: str = "adagrad"
    rho: float = 0.95
    epsilon: float = 1e-6
    item_alpha: float = 0.0
    user_alpha: float = 0.0
    max_sampled: int = 30
    kos_k: int = 5
    kos_n: int = 10
    epochs_per_batch: int = 2
    positive_threshold: float = 4.0
    use_weights: bool = False
    num_threads: int = 1
    seed: int = 42
    popularity_half_life_seconds: float = 7 * 24 * 3600.0
    dedupe_memory: int = 100_000
    initial_capacity: int = 1024
    consolidate_every: int = 10_000
    consolidate_epochs: int = 20
    consolidation_window: int = 1_000_000
    blend_neighbours: int = 300
    blend_weight: float = 0.5

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    def _problems(self) -> Iterator[str]:
        for f in fields(self):
            value = getattr(self, f.name)
            expected: type | tuple[type, ...] = _TYPES[str(f.type)]
            if isinstance(value, bool) != (f.type == "bool") or not isinstance(value, expected):
                yield f"{f.name} must be {f.type}, got {type(value).__name__}"
                return
            if f.type == "float" and not math.isfinite(getattr(self, f.name)):
                yield f"{f.name} must be finite"
        if self.loss not in LOSSES:
            yield f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}"
        if self.learning_schedule not in SCHEDULES:
            yield f"learning_schedule must be one of {', '.join(SCHEDULES)}"
        for name in (
            "no_components",
            "max_sampled",
            "kos_k",
            "kos_n",
            "epochs_per_batch",
            "consolidate_epochs",
        ):
            if getattr(self, name) < 1:
                yield f"{name} must be >= 1"
        for name in ("num_threads", "dedupe_memory", "initial_capacity"):
            if getattr(self, name) < 1:
                yield f"{name} must be >= 1"
        for name in ("consolidate_every", "consolidation_window", "blend_neighbours"):
            if getattr(self, name) < 0:
                yield f"{name} must be >= 0"
        if self.blend_weight < 0:
            yield "blend_weight must be >= 0"
        if self.learning_rate <= 0:
            yield "learning_rate must be > 0"
        if not 0 < self.rho < 1:
            yield "rho must be in (0, 1)"
        if self.epsilon < 0 or self.item_alpha < 0 or self.user_alpha < 0:
            yield "epsilon, item_alpha and user_alpha must be >= 0"
        if not 0 <= self.positive_threshold <= 5:
            yield "positive_threshold must be between 0 and 5"
        if self.seed < 0:
            yield "seed must be >= 0"
        if self.popularity_half_life_seconds <= 0:
            yield "popularity_half_life_seconds must be > 0"
        if self.use_weights and self.loss == "warp-kos":
            yield "use_weights is not supported with the warp-kos loss (LightFM)"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the snapshot manifest stores it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild from :meth:`to_dict`; unknown keys are an error, missing keys take defaults."""
        if not isinstance(data, dict):
            raise ValueError("model config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s): {', '.join(unknown)}")
        return cls(**data)
