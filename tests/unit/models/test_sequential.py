"""The guardrail's mSPRT, by simulation: looking after every batch, it falsely stops at
most alpha of the experiments with no difference, and it stops a worse candidate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.online_metric import Counts
from models.sequential import SequentialTest, Verdict


def run(
    test: SequentialTest,
    control_rate: float,
    candidate_rate: float,
    *,
    experiments: int,
    seed: int,
    batch: int = 200,
    looks: int = 100,
    ratio: int = 1,
) -> dict[str, int]:
    """How many of ``experiments`` simulated experiments end with each decision, with a
    look (continuous peeking) after every ``batch`` impressions of the control (and
    ``ratio`` times as many of the candidate)."""
    rng = np.random.default_rng(seed)
    outcomes = {"continue": 0, "candidate_worse": 0, "candidate_better": 0}
    for _ in range(experiments):
        control = np.cumsum(rng.binomial(batch, control_rate, looks))
        candidate = np.cumsum(rng.binomial(batch * ratio, candidate_rate, looks))
        verdict = None
        for look in range(looks):
            n = (look + 1) * batch
            verdict = test.verdict(
                Counts(n, int(control[look])), Counts(n * ratio, int(candidate[look])), verdict
            )
            if verdict.significant:
                break
        assert verdict is not None
        outcomes[verdict.decision] += 1
    return outcomes


def slack(experiments: int, alpha: float) -> float:
    """alpha of the experiments plus three binomial standard deviations."""
    return experiments * alpha + 3 * math.sqrt(experiments * alpha * (1 - alpha))


@pytest.mark.parametrize(
    ("rate", "tau", "ratio"), [(0.05, 0.01, 1), (0.2, 0.003, 1), (0.02, 0.05, 1), (0.05, 0.01, 3)]
)
def test_with_no_difference_and_a_look_after_every_batch_false_stops_stay_below_alpha(
    rate: float, tau: float, ratio: int
) -> None:
    test = SequentialTest(alpha=0.05, tau=tau)
    outcomes = run(test, rate, rate, experiments=300, seed=int(rate * 1000), ratio=ratio)
    assert outcomes["candidate_worse"] + outcomes["candidate_better"] <= slack(300, 0.05)


def test_a_worse_candidate_is_stopped_and_a_better_one_declared() -> None:
    test = SequentialTest()
    worse = run(test, 0.10, 0.085, experiments=40, seed=1)
    assert worse["candidate_worse"] >= 36 and worse["candidate_better"] == 0
    better = run(test, 0.10, 0.115, experiments=40, seed=2)
    assert better["candidate_better"] >= 36 and better["candidate_worse"] == 0


def test_the_verdict_says_why() -> None:
    test = SequentialTest(alpha=0.05, tau=0.01, min_impressions=1000)
    early = test.verdict(Counts(999, 10), Counts(5000, 500))
    assert early.decision == "continue" and early.p_value == 1.0
    assert "not enough impressions yet (need 1000 each)" in early.reason
    stop = test.verdict(Counts(20_000, 2000), Counts(20_000, 1600))
    assert stop.stop and stop.decision == "candidate_worse" and stop.p_value < 1e-6
    assert stop.difference == pytest.approx(-0.02)
    assert stop.reason.startswith("candidate hit-rate is significantly worse than control's")
    assert "candidate 0.0800 (1600/20000) vs control 0.1000 (2000/20000)" in stop.reason
    none = test.verdict(Counts(5000, 0), Counts(5000, 0))
    assert none.decision == "continue" and none.p_value == 1.0
    assert "no significant difference (always-valid p = 1)" in none.reason


def test_the_p_value_never_rises_and_a_declared_difference_stays() -> None:
    test = SequentialTest()
    better = test.verdict(Counts(20_000, 1600), Counts(20_000, 2000))
    assert better.decision == "candidate_better" and not better.stop
    # later the candidate looks a little worse: the declared difference stays, no stop
    later = test.verdict(Counts(40_000, 4000), Counts(40_000, 3990), better)
    assert later.decision == "candidate_better" and later.p_value == better.p_value
    assert not later.stop and later.difference < 0
    calm = test.verdict(Counts(20_000, 2000), Counts(20_000, 2010))
    assert calm.decision == "continue" and calm.p_value > 0.05
    assert test.verdict(Counts(20_000, 2000), Counts(20_000, 2000), calm).p_value == calm.p_value


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0}, "alpha must be in"),
        ({"alpha": math.nan}, "alpha must be in"),
        ({"tau": 0}, "tau must be a positive number"),
        ({"tau": math.inf}, "tau must be a positive number"),
        ({"min_impressions": 0}, "min_impressions must be an integer >= 1"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SequentialTest(**kwargs)  # type: ignore[arg-type]


def test_a_verdict_is_a_plain_record() -> None:
    verdict = Verdict("continue", 1.0, 0.0, "why")
    assert not verdict.stop and not verdict.significant
