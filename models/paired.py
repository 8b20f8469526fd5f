"""The interleaving guardrail: an always-valid paired test on per-list outcomes (each
interleaved list that got a hit is a win for control, the candidate, or a tie).

:class:`ListOutcomes` credits each hit to the list that showed its item and, once the
list's hit window has passed, adds the list's winner (:func:`models.interleaving.credit`'s
rule) to :class:`Wins`. :class:`PairedTest` is a sign test made sequential: under the null
(neither ranking better) a decided list is a fair coin, and with a Beta(a, a) mixing
prior over the candidate's win share ``q`` the mixture likelihood ratio::

    Lambda = B(a + wins_candidate, a + wins_control) / B(a, a) * 2^n   (n decided lists)

is a non-negative martingale under the null with mean 1, so by Ville's inequality the
chance that ``1 / Lambda`` ever falls to ``alpha`` is at most ``alpha``, exactly (no
normal approximation): it may be looked at after every list. Ties carry no evidence and
are left out (the sign test's rule). The unit is a list, not an impression, so the items of
one list that rise and fall together are one trial.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from models.interleaving import Credit, Team
from models.sequential import Decision, Verdict


@dataclass(frozen=True, slots=True)
class Wins:
    """Interleaved lists that got at least one hit: won by each team, or tied."""

    control: int = 0
    candidate: int = 0
    ties: int = 0

    def __post_init__(self) -> None:
        for name in ("control", "candidate", "ties"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")

    @property
    def decided(self) -> int:
        """Lists one team won (the sign test's trials)."""
        return self.control + self.candidate

    @property
    def share(self) -> float:
        """The candidate's share of the decided lists, 0.5 before the first."""
        return self.candidate / self.decided if self.decided else 0.5

    def add(self, credit: Credit) -> Wins:
        """These wins and one more list's outcome (a list with no hit changes nothing)."""
        if credit.control == credit.candidate == 0:
            return self
        winner = credit.winner
        return Wins(
            self.control + (winner == "control"),
            self.candidate + (winner == "candidate"),
            self.ties + (winner == "tie"),
        )


@dataclass(slots=True)
class _List:
    user: str
    ts: float
    items: list[str]
    control: int = 0
    candidate: int = 0


class ListOutcomes:
    """Interleaved lists whose hit window is open, and the wins of the closed ones.

    Feed it what :meth:`models.impressions.HitMatcher.show` returns as new for a list
    (:meth:`show`) and each :class:`models.impressions.Hit` (:meth:`hit`): a hit goes to the
    list that first showed its item to that user. :meth:`close` ends the lists older than
    ``now - window`` (event time); at most ``max_pending`` lists stay open (the oldest is
    closed early, with the hits it has).
    """

    def __init__(self, window: float, *, max_pending: int = 200_000) -> None:
        if not 0 < window < math.inf:
            raise ValueError(f"window must be a positive number of seconds, got {window}")
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self.window = window
        self.max_pending = max_pending
        self.wins = Wins()
        self._lists: OrderedDict[int, _List] = OrderedDict()
        self._owner: dict[tuple[str, str], int] = {}
        self._next = 0

    def __len__(self) -> int:
        """How many lists are open."""
        return len(self._lists)

    def show(self, user: str, ts: float, placed: Iterable[tuple[str, Team]]) -> None:
        """One list served to ``user`` at ``ts``: its new impressions."""
        items = [item for item, _ in placed]
        if not items:
            return
        n = self._next
        self._next += 1
        self._lists[n] = _List(user, ts, items)
        for item in items:
            self._owner[(user, item)] = n
        while len(self._lists) > self.max_pending:
            self._end(next(iter(self._lists)))

    def hit(self, user: str, item: str, team: Team) -> None:
        """A hit on ``item`` shown to ``user`` by ``team`` (ignored if its list is closed)."""
        n = self._owner.pop((user, item), None)
        shown = self._lists.get(n) if n is not None else None
        if shown is None:
            return
        if team == "control":
            shown.control += 1
        else:
            shown.candidate += 1

    def close(self, now: float | None = None) -> Wins:
        """End the lists shown before ``now - window`` (every list when ``now`` is None);
        the wins so far."""
        while self._lists:
            n, shown = next(iter(self._lists.items()))
            if now is not None and now - shown.ts <= self.window:
                break
            self._end(n)
        return self.wins

    def _end(self, n: int) -> None:
        shown = self._lists.pop(n)
        for item in shown.items:
            if self._owner.get((shown.user, item)) == n:
                del self._owner[(shown.user, item)]
        self.wins = self.wins.add(Credit(shown.control, shown.candidate))


@dataclass(frozen=True, slots=True)
class PairedTest:
    """The interleaving guardrail's parameters.

    ``alpha``: the chance of ever declaring a difference when there is none. ``tau``: the
    standard deviation of the Beta(a, a) mixing prior over the candidate's win share (0.05:
    most sensitive to shares of about 0.45 or 0.55; validity holds for any value in (0, 0.5)).
    """

    alpha: float = 0.05
    tau: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0 < self.tau < 0.5:
            raise ValueError(f"tau must be in (0, 0.5), got {self.tau}")

    @property
    def a(self) -> float:
        """The Beta prior's parameter: its standard deviation 1 / (2 sqrt(2a + 1)) = tau."""
        return (1 / (4 * self.tau * self.tau) - 1) / 2

    def p_value(self, wins: Wins) -> float:
        """``1 / Lambda`` of this look alone, capped at 1."""
        s, f, a = wins.candidate, wins.control, self.a
        log_ratio = (
            math.lgamma(a + s)
            + math.lgamma(a + f)
            - math.lgamma(2 * a + s + f)
            - (2 * math.lgamma(a) - math.lgamma(2 * a))
            + (s + f) * math.log(2)
        )
        return math.exp(-log_ratio) if log_ratio > 0 else 1.0

    def verdict(self, wins: Wins, previous: Verdict | None = None) -> Verdict:
        """The verdict on the lists decided so far; pass the previous look's verdict (its
        p-value starts the running minimum, and a significant decision stays). The
        verdict's ``difference`` is the candidate's win share minus 0.5."""
        p_value = min(previous.p_value if previous else 1.0, self.p_value(wins))
        difference = wins.share - 0.5
        decision: Decision = "continue"
        if previous is not None and previous.significant:
            decision = previous.decision
        elif p_value <= self.alpha:
            decision = "candidate_worse" if difference < 0 else "candidate_better"
        return Verdict(decision, p_value, difference, self._reason(decision, p_value, wins))

    def _reason(self, decision: Decision, p_value: float, wins: Wins) -> str:
        lists = (
            f"interleaved lists won: candidate {wins.candidate} vs control {wins.control} "
            f"(share {wins.share:.3f}, {wins.ties} ties)"
        )
        if decision == "continue":
            if wins.decided == 0:
                return f"no interleaved list won yet: {lists}"
            return f"no significant difference (always-valid p = {p_value:.3g}): {lists}"
        worse, fewer = ("worse", "fewer") if decision == "candidate_worse" else ("better", "more")
        return (
            f"candidate is significantly {worse}: it wins {fewer} interleaved lists than "
            f"control (paired sign test, always-valid p = {p_value:.3g} <= alpha "
            f"{self.alpha:g}): {lists}"
        )
