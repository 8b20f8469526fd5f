"""The online metric of an experiment: per variant, impressions, hits, hit-rate with a
Wilson confidence interval, and catalog coverage.

:class:`Tally` adds up what :class:`models.impressions.HitMatcher` reports (each new
impression is one trial, each hit a success of that trial) and summarises it per variant
(:class:`VariantSummary`); :class:`Counts` are what the guardrail's sequential test reads
(:mod:`models.sequential`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import NormalDist

from models.interleaving import TEAMS, Team


@dataclass(frozen=True, slots=True)
class Counts:
    """Trials and successes of one variant: ``hits`` of its ``impressions``."""

    impressions: int = 0
    hits: int = 0

    def __post_init__(self) -> None:
        for name in ("impressions", "hits"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.hits > self.impressions:
            raise ValueError(f"{self.hits} hits of only {self.impressions} impressions")

    @property
    def rate(self) -> float:
        """The hit-rate, 0 before the first impression."""
        return self.hits / self.impressions if self.impressions else 0.0


def wilson_interval(counts: Counts, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of ``counts``' hit-rate at ``confidence`` (two-sided):
    within [0, 1] even at 0 or all hits, unlike the normal interval; (0, 1) with no
    impressions."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = counts.impressions
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = counts.hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # the rate itself is always inside (rounding at 0 or n hits may miss it by an ulp)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


@dataclass(frozen=True, slots=True)
class VariantSummary:
    """One variant's online metric."""

    impressions: int
    hits: int
    hit_rate: float
    low: float
    high: float
    """The hit-rate's confidence interval."""
    coverage: float
    """Distinct items recommended, as a fraction of the catalog."""


@dataclass(slots=True)
class Tally:
    """Impressions, hits and distinct recommended items per variant (mutable; one per
    experiment). Memory: the distinct items, at most the catalog's size."""

    impressions: dict[Team, int] = field(default_factory=lambda: dict.fromkeys(TEAMS, 0))
    hits: dict[Team, int] = field(default_factory=lambda: dict.fromkeys(TEAMS, 0))
    items: dict[Team, set[str]] = field(default_factory=lambda: {t: set() for t in TEAMS})

    def show(self, placed: Iterable[tuple[str, Team]]) -> None:
        """Count new impressions (what :meth:`models.impressions.HitMatcher.show` returns)."""
        for item, team in placed:
            self.impressions[team] += 1
            self.items[team].add(item)

    def hit(self, team: Team) -> None:
        """Count a hit of ``team`` (a :class:`models.impressions.Hit`'s team)."""
        self.hits[team] += 1

    def counts(self, team: Team) -> Counts:
        return Counts(self.impressions[team], self.hits[team])

    def summary(self, catalog_size: int, confidence: float = 0.95) -> dict[Team, VariantSummary]:
        """Each variant's impressions, hits, hit-rate with its Wilson interval at
        ``confidence``, and coverage of a catalog of ``catalog_size`` items."""
        out = {}
        for team in TEAMS:
            counts = self.counts(team)
            low, high = wilson_interval(counts, confidence)
            covered = len(self.items[team])
            out[team] = VariantSummary(
                impressions=counts.impressions,
                hits=counts.hits,
                hit_rate=counts.rate,
                low=low,
                high=high,
                coverage=min(1.0, covered / catalog_size) if catalog_size > 0 else 0.0,
            )
        return out
