"""The guardrail's always-valid sequential test: a mixture SPRT (mSPRT) on the difference
of two hit-rates (Johari, Koomen, Pekelis and Walsh, "Always Valid Inference", 2017/2022).

The candidate's hit-rate minus the control's, ``d``, is approximately normal with variance
``V = p(1 - p) (1/n_control + 1/n_candidate)`` under the null (``p`` the pooled rate). With a
normal mixing distribution N(0, tau^2) over the true difference, the mixture likelihood
ratio is::

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

and ``p = min over every look so far of 1 / Lambda`` is a p-value that stays valid however
often it is looked at (no peeking penalty): the chance that it ever falls to ``alpha``
under the null is at most ``alpha``. When it does, the difference is significant: the
candidate is worse (the guardrail stops it) or better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from models.online_metric import Counts

Decision = Literal["continue", "candidate_worse", "candidate_better"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The test's answer after one look."""

    decision: Decision
    p_value: float
    """The always-valid p-value (never rises from one look to the next)."""
    difference: float
    """The candidate's hit-rate minus the control's."""
    reason: str
    """One line saying why, with the numbers."""

    @property
    def stop(self) -> bool:
        """Whether the guardrail stops the candidate."""
        return self.decision == "candidate_worse"

    @property
    def significant(self) -> bool:
        return self.decision != "continue"


@dataclass(frozen=True, slots=True)
class SequentialTest:
    """The guardrail's parameters.

    ``alpha``: the chance of ever declaring a difference when there is none (0.05: 95%
    confidence). ``tau``: the standard deviation of the mixing distribution, in hit-rate
    units: the size of difference the test is most sensitive to (differences much smaller
    or larger take longer to detect; validity holds for any ``tau``). ``min_impressions``:
    no verdict before each variant has this many (the normal approximation needs them).
    """

    alpha: float = 0.05
    tau: float = 0.01
    min_impressions: int = 1000

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0 < self.tau < math.inf:
            raise ValueError(f"tau must be a positive number, got {self.tau}")
        if type(self.min_impressions) is not int or self.min_impressions < 1:
            raise ValueError(f"min_impressions must be an integer >= 1, got {self.min_impressions}")

    def verdict(
        self, control: Counts, candidate: Counts, previous: Verdict | None = None
    ) -> Verdict:
        """The verdict on ``control`` and ``candidate``'s counts so far. Pass the previous
        look's verdict: its p-value is the running minimum's start, and a significant
        decision stays (the difference was significant when it was declared)."""
        difference = candidate.rate - control.rate
        p_value = min(previous.p_value if previous else 1.0, self.p_value(control, candidate))
        decision: Decision = "continue"
        if previous is not None and previous.significant:
            decision = previous.decision
        elif p_value <= self.alpha:
            decision = "candidate_worse" if difference < 0 else "candidate_better"
        return Verdict(
            decision, p_value, difference, self._reason(decision, p_value, control, candidate)
        )

    def p_value(self, control: Counts, candidate: Counts) -> float:
        """``1 / Lambda`` of this look alone, capped at 1 (1 before ``min_impressions``)."""
        n_a, n_b = control.impressions, candidate.impressions
        if min(n_a, n_b) < self.min_impressions:
            return 1.0
        pooled = (control.hits + candidate.hits) / (n_a + n_b)
        variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
        if variance <= 0:  # no hits at all, or only hits: no evidence either way
            return 1.0
        difference = candidate.rate - control.rate
        tau2 = self.tau * self.tau
        log_ratio = 0.5 * math.log(variance / (variance + tau2)) + (
            tau2 * difference * difference / (2 * variance * (variance + tau2))
        )
        return math.exp(-log_ratio) if log_ratio > 0 else 1.0

    def _reason(
        self, decision: Decision, p_value: float, control: Counts, candidate: Counts
    ) -> str:
        rates = (
            f"candidate {candidate.rate:.4f} ({candidate.hits}/{candidate.impressions}) vs "
            f"control {control.rate:.4f} ({control.hits}/{control.impressions})"
        )
        if decision == "continue":
            if min(control.impressions, candidate.impressions) < self.min_impressions:
                return f"not enough impressions yet (need {self.min_impressions} each): {rates}"
            return f"no significant difference (always-valid p = {p_value:.3g}): {rates}"
        worse = "worse" if decision == "candidate_worse" else "better"
        return (
            f"candidate hit-rate is significantly {worse} than control's (always-valid "
            f"p = {p_value:.3g} <= alpha {self.alpha:g}): {rates}"
        )
