"""models.paired: the per-list outcomes of interleaving and the always-valid sign test.

The type-I error and power are measured by seeded simulation (counts, never timings): a
look after every decided list, as the guardrail may.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.interleaving import Credit
from models.paired import ListOutcomes, PairedTest, Wins


def ever_declared(test: PairedTest, outcomes: np.ndarray) -> tuple[bool, int]:
    """Look after every list (1 = a candidate win, 0 = a control win); whether the test
    ever declared a difference, and after how many lists."""
    verdict = None
    candidate = 0
    for n, won in enumerate(outcomes, 1):
        candidate += int(won)
        verdict = test.verdict(Wins(control=n - candidate, candidate=candidate), verdict)
        if verdict.significant:
            return True, n
    return False, len(outcomes)


def test_type_one_error_stays_below_alpha_when_looking_after_every_list() -> None:
    rng = np.random.default_rng(7)
    test = PairedTest(alpha=0.05)
    runs, lists = 300, 1500
    declared = sum(ever_declared(test, rng.random(lists) < 0.5)[0] for _ in range(runs))
    # exact validity: P(ever) <= alpha; 0.05 * 300 = 15 expected at most, 1.5x margin for
    # the simulation's own noise (a fixed-horizon test looked at this way declares ~40%)
    assert declared <= 22, f"declared a difference in {declared} of {runs} null runs"


def test_fixed_horizon_sign_test_peeked_at_every_list_is_not_valid() -> None:
    """The same simulation catches a naive test (so the check above can fail)."""
    rng = np.random.default_rng(7)
    declared = 0
    for _ in range(100):
        wins = np.cumsum(rng.random(1500) < 0.5)
        n = np.arange(1, 1501)
        z = np.abs(2 * wins - n) / np.sqrt(n)
        declared += bool((z[20:] > 1.96).any())
    assert declared > 20


@pytest.mark.parametrize("share, decision", [(0.6, "candidate_better"), (0.4, "candidate_worse")])
def test_power_on_a_clear_difference(share: float, decision: str) -> None:
    rng = np.random.default_rng(11)
    test = PairedTest()
    found = []
    for _ in range(30):
        outcomes = rng.random(3000) < share
        verdict = None
        candidate = 0
        for n, won in enumerate(outcomes, 1):
            candidate += int(won)
            verdict = test.verdict(Wins(n - candidate, candidate), verdict)
            if verdict.significant:
                break
        assert verdict is not None
        found.append((verdict.decision, n))
    assert all(d == decision for d, _ in found), found
    assert max(n for _, n in found) < 3000
    assert 50 < np.median([n for _, n in found]) < 1000


def test_verdict_shape_reason_and_stays() -> None:
    test = PairedTest()
    first = test.verdict(Wins(control=300, candidate=200, ties=40))
    assert first.decision == "candidate_worse" and first.stop
    assert first.difference == pytest.approx(0.4 - 0.5)
    assert "candidate 200 vs control 300" in first.reason and "40 ties" in first.reason
    assert "significantly worse: it wins fewer" in first.reason
    later = test.verdict(Wins(control=300, candidate=300), first)
    assert later.decision == "candidate_worse" and later.p_value == first.p_value
    undecided = test.verdict(Wins(control=10, candidate=12, ties=3))
    assert undecided.decision == "continue" and "no significant difference" in undecided.reason
    assert test.verdict(Wins()).reason.startswith("no interleaved list won yet")


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_p_value_is_a_probability_and_symmetric(control: int, candidate: int) -> None:
    test = PairedTest()
    p = test.p_value(Wins(control, candidate))
    assert 0 <= p <= 1 and not math.isnan(p)
    assert p == pytest.approx(test.p_value(Wins(candidate, control)))
    if control == candidate:
        assert p == 1.0 or p > 0.05


@pytest.mark.parametrize("bad", [{"alpha": 0}, {"alpha": 1}, {"tau": 0}, {"tau": 0.5}])
def test_parameters_are_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PairedTest(**bad)


def test_wins_refuse_negative_and_non_integers() -> None:
    with pytest.raises(ValueError):
        Wins(-1, 0)
    with pytest.raises(ValueError):
        Wins(0, 1.5)  # type: ignore[arg-type]


def test_wins_add_a_list_outcome() -> None:
    wins = Wins().add(Credit(0, 0)).add(Credit(2, 1)).add(Credit(0, 3)).add(Credit(1, 1))
    assert wins == Wins(control=1, candidate=1, ties=1)


def test_list_outcomes_credit_each_hit_to_the_list_that_showed_it() -> None:
    lists = ListOutcomes(window=100.0)
    lists.show("u", 0.0, [("a", "control"), ("b", "candidate")])
    lists.show("u", 10.0, [("c", "candidate")])  # a second list of the same user
    lists.show("v", 20.0, [("a", "control"), ("d", "candidate")])
    lists.hit("u", "a", "control")
    lists.hit("u", "c", "candidate")
    lists.hit("v", "a", "control")
    lists.hit("v", "d", "candidate")
    lists.hit("w", "a", "control")  # never shown: ignored
    assert lists.close(now=50.0) == Wins()  # every window still open
    assert len(lists) == 3
    assert lists.close(now=105.0) == Wins(control=1)  # u's first list
    assert lists.close(now=1000.0) == Wins(control=1, candidate=1, ties=1)
    assert len(lists) == 0
    lists.hit("u", "a", "control")  # its list is closed: nothing
    assert lists.close() == Wins(control=1, candidate=1, ties=1)


def test_list_outcomes_memory_is_bounded() -> None:
    lists = ListOutcomes(window=1e9, max_pending=2)
    for n in range(5):
        lists.show("u", float(n), [(str(n), "candidate")])
        lists.hit("u", str(n), "candidate")
    assert len(lists) == 2
    assert lists.wins == Wins(candidate=3)
    assert lists.close() == Wins(candidate=5)
    lists.show("u", 0.0, [])  # a list with no new impression is no list
    assert len(lists) == 0


OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("show"),
            st.text(max_size=3),
            st.floats(0, 1e6, allow_nan=False),
            st.lists(st.tuples(st.text(max_size=2), st.sampled_from(["control", "candidate"]))),
        ),
        st.tuples(
            st.just("hit"),
            st.text(max_size=3),
            st.text(max_size=2),
            st.sampled_from(["control", "candidate"]),
        ),
        st.tuples(st.just("close"), st.floats(0, 2e6, allow_nan=False)),
    ),
    max_size=60,
)


@given(OPS)
def test_list_outcomes_never_count_more_lists_than_were_shown(ops) -> None:
    """Any users (lone surrogates too), items, times and order of calls."""
    lists = ListOutcomes(window=100.0, max_pending=5)
    shown = 0
    before = Wins()
    for op in ops:
        if op[0] == "show":
            _, user, ts, placed = op
            shown += bool(placed)
            lists.show(user, ts, placed)
        elif op[0] == "hit":
            lists.hit(*op[1:])
        else:
            lists.close(op[1])
        wins = lists.wins
        assert wins.decided + wins.ties + len(lists) <= shown
        assert len(lists) <= 5
        assert (wins.control, wins.candidate, wins.ties) >= (0, 0, 0)
        assert wins.control >= before.control and wins.candidate >= before.candidate
        before = wins
    final = lists.close()
    assert len(lists) == 0 and final.decided + final.ties <= shown
