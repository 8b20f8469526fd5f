"""Team-draft interleaving: k distinct items, fair drafts, each team's picks in its own
order, the same list for the same seed; and the credit rule."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.experiment import request_seed
from models.interleaving import TEAMS, Credit, Placed, credit, team_draft

RANKING = st.lists(st.sampled_from("abcdefghijklmnop"), max_size=16)


@settings(max_examples=300, deadline=None)
@given(RANKING, RANKING, st.integers(0, 20), st.binary(max_size=16))
def test_team_draft_properties(control: list[str], candidate: list[str], k: int, seed: bytes):
    placed = team_draft(control, candidate, k, seed)
    items = [p.item for p in placed]
    # k distinct items, or every distinct item of the two rankings when they have fewer
    assert len(items) == len(set(items)) == min(k, len(set(control) | set(candidate)))
    assert placed == team_draft(control, candidate, k, seed)  # deterministic
    # a team only places items of its own ranking, in that ranking's order
    for team, ranking in (("control", control), ("candidate", candidate)):
        picks = [p.item for p in placed if p.team == team]
        assert set(picks) <= set(ranking)
        positions = [ranking.index(i) for i in picks]
        assert positions == sorted(positions)
    # the draft is fair while both teams have items to give
    counts = Counter(p.team for p in placed)
    if set(control).isdisjoint(candidate) and min(len(control), len(candidate)) >= k:
        assert abs(counts["control"] - counts["candidate"]) <= 1
    # each prefix is the k-prefix interleaving: longer lists extend shorter ones
    assert team_draft(control, candidate, max(k - 1, 0), seed) == placed[: max(k - 1, 0)]


def reference_draft(control: list[str], candidate: list[str], k: int, seed: bytes) -> list[Placed]:
    """Team-draft as first written (a round per item, both cursors moved every round): the
    lists and coin flips every later version keeps."""
    rankings, cursors, counts = (control, candidate), [0, 0], [0, 0]
    placed: list[Placed] = []
    coins = hashlib.shake_256(seed).digest(k // 8 + 1)
    flips = 0
    while len(placed) < k:
        for t in (0, 1):
            while cursors[t] < len(rankings[t]) and rankings[t][cursors[t]] in {
                p.item for p in placed
            }:
                cursors[t] += 1
        has = [cursors[t] < len(rankings[t]) for t in (0, 1)]
        if not any(has):
            break
        if counts[0] != counts[1]:
            team = 0 if counts[0] < counts[1] else 1
        else:
            team = coins[flips // 8] >> (flips % 8) & 1
            flips += 1
        if not has[team]:
            team = 1 - team
        counts[team] += 1
        placed.append(Placed(rankings[team][cursors[team]], TEAMS[team]))
    return placed


@settings(max_examples=500, deadline=None)
@given(RANKING, RANKING, st.integers(0, 20), st.binary(max_size=16))
def test_team_draft_is_the_reference_draft(
    control: list[str], candidate: list[str], k: int, seed: bytes
):
    assert team_draft(control, candidate, k, seed) == reference_draft(control, candidate, k, seed)


def test_a_known_draft_and_both_orders_over_seeds() -> None:
    control, candidate = ["a", "b", "c", "d"], ["b", "e", "a", "f"]
    c, d = "control", "candidate"
    drafts = {  # the coin of round 1 (who picks first), then of round 2
        ((c, "a"), (d, "b"), (c, "c"), (d, "e")),
        ((c, "a"), (d, "b"), (d, "e"), (c, "c")),
        ((d, "b"), (c, "a"), (c, "c"), (d, "e")),
        ((d, "b"), (c, "a"), (d, "e"), (c, "c")),
    }
    seen = Counter()
    for n in range(800):
        placed = team_draft(control, candidate, 4, request_seed("exp", f"r{n}"))
        seen[tuple((p.team, p.item) for p in placed)] += 1
    assert set(seen) == drafts and all(150 < count < 250 for count in seen.values())
    assert team_draft(control, candidate, 4, request_seed("exp", "r0")) == [
        Placed("a", "control"),
        Placed("b", "candidate"),
        Placed("e", "candidate"),
        Placed("c", "control"),
    ]


def test_an_exhausted_ranking_lets_the_other_fill() -> None:
    placed = team_draft(["a"], ["b", "c", "d"], 4, b"seed")
    assert [p.item for p in placed if p.team == "candidate"] == ["b", "c", "d"]
    assert team_draft([], [], 5, b"") == [] and team_draft(["a"], ["b"], 0, b"") == []
    with pytest.raises(ValueError, match="k must be >= 0"):
        team_draft(["a"], ["b"], -1, b"")


def test_credit_goes_to_the_team_that_placed_the_item() -> None:
    placed = [Placed("a", "control"), Placed("b", "candidate"), Placed("c", "candidate")]
    assert credit(placed, {"b", "c", "z"}) == Credit(control=0, candidate=2)
    assert credit(placed, {"b", "c"}).winner == "candidate"
    assert credit(placed, {"a"}).winner == "control"
    assert credit(placed, {"a", "b"}).winner == "tie"
    assert credit(placed, set()).winner == "tie"
