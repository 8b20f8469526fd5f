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
    # >= k fair coins, one a tie: bit n of the SHAKE-256 digest (never random or hash())
    coins = int.from_bytes(hashlib.shake_256(seed).digest(k // 8 + 1), "little")
    placed: list[Placed] = []
    taken: set[str] = set()
    at0 = at1 = picks0 = picks1 = flips = 0
    end0, end1 = len(control), len(candidate)
    for _ in range(k):
        while at0 < end0 and control[at0] in taken:  # each cursor past the items placed
            at0 += 1
        while at1 < end1 and candidate[at1] in taken:
            at1 += 1
        if at0 == end0 and at1 == end1:
            break
        if picks0 != picks1:
            second = picks1 < picks0
        else:
            second = bool(coins >> flips & 1)
            flips += 1
        if (at1 == end1) if second else (at0 == end0):  # nothing left: the other picks
            second = not second
        if second:
            item = candidate[at1]
            picks1 += 1
            placed.append(Placed(item, "candidate"))
        else:
            item = control[at0]
            picks0 += 1
            placed.append(Placed(item, "control"))
        taken.add(item)
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
