"""Team-draft interleaving (Radlinski, Kurup and Joachims, CIKM 2008) and its credit rule.

:func:`team_draft` merges the control's and the candidate's rankings into one list of ``k``
distinct items, each labelled with the team that placed it; the coin that decides which
team picks first in each round comes from a seed (:func:`models.experiment.request_seed`),
so a request interleaves the same way everywhere. :func:`credit` counts the hits of each
team and names the winner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

Team = Literal["control", "candidate"]
TEAMS: tuple[Team, Team] = ("control", "candidate")


class Placed(NamedTuple):
    """One item of an interleaved list and the team that contributed it."""

    item: str
    team: Team


def team_draft(
    control: Sequence[str], candidate: Sequence[str], k: int, seed: bytes
) -> list[Placed]:
    """The first ``k`` items of the team-draft interleaving of two rankings.

    Each round, the team that has placed fewer items picks next (a coin flip from ``seed``
    breaks a tie); a team picks its highest-ranked item not yet in the list. When one
    ranking has nothing left to give, the other fills the list. Duplicates (across or within
    the rankings) appear once, credited to the team that placed them first.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    rankings = (control, candidate)
    ends = (len(control), len(candidate))
    cursors = [0, 0]
    counts = [0, 0]
    placed: list[Placed] = []
    taken: set[str] = set()
    coins = hashlib.shake_256(seed).digest(k // 8 + 1)  # >= k fair coins, one a tie
    flips = 0
    while len(placed) < k:
        for t in (0, 1):  # each cursor past the items already placed
            ranking, n, end = rankings[t], cursors[t], ends[t]
            while n < end and ranking[n] in taken:
                n += 1
            cursors[t] = n
        has = (cursors[0] < ends[0], cursors[1] < ends[1])
        if not (has[0] or has[1]):
            break
        if counts[0] != counts[1]:
            team = 0 if counts[0] < counts[1] else 1
        else:
            team = coins[flips // 8] >> (flips % 8) & 1  # SHAKE-256: never random or hash()
            flips += 1
        if not has[team]:
            team = 1 - team
        item = rankings[team][cursors[team]]
        taken.add(item)
        counts[team] += 1
        placed.append(Placed(item, TEAMS[team]))
    return placed


@dataclass(frozen=True, slots=True)
class Credit:
    """The hits each team earned in one interleaved list, and who won it."""

    control: int
    candidate: int

    @property
    def winner(self) -> Team | Literal["tie"]:
        """The team with more hits; ``"tie"`` when they have as many (none included)."""
        if self.control == self.candidate:
            return "tie"
        return "control" if self.control > self.candidate else "candidate"


def credit(placed: Iterable[Placed], hits: Collection[str]) -> Credit:
    """Credit each hit item (clicked, or rated positively) to the team that placed it;
    hit items that were not in the list earn nothing."""
    counts = {"control": 0, "candidate": 0}
    for item, team in placed:
        if item in hits:
            counts[team] += 1
    return Credit(control=counts["control"], candidate=counts["candidate"])
