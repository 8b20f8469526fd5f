"""What an experiment showed a user, and which later ratings count as hits on it.

:class:`Impressions` is one recommendation list served in an experiment (the items, each
with the variant that placed it), with a compact JSON encoding keyed by user, like ratings,
so the two are co-partitioned. :class:`HitMatcher` keeps the impressions of the last
``window`` seconds, bounded in memory, and matches ratings against them: a rating >= the
positive threshold by the same user on an item recommended to them at most ``window``
seconds before is a hit for the variant that placed the item, once.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from models.events import MAX_K, InvalidEvent, Rating, canonical_id
from models.experiment import LATEST_TIME, check_name
from models.interleaving import Team
from models.wire import Undecodable, check_user_key, decode_object, encode_json, user_key

MAX_IMPRESSIONS_BYTES = 300 * 1024
"""Largest impressions message: MAX_K items of the longest ids, and the rest."""

_TEAM_CODES = {"control": "0", "candidate": "1"}
_CODE_TEAMS: dict[str, Team] = {"0": "control", "1": "candidate"}
_FIELDS = frozenset({"experiment", "user", "ts", "items", "teams"})


@dataclass(frozen=True, slots=True)
class Impressions:
    """The ``items`` that ``experiment`` showed ``user`` at ``ts`` (unix seconds), and for
    each the variant that placed it (``teams[n]`` for ``items[n]``). On the wire the teams
    are one string, ``"0"`` for control and ``"1"`` for candidate per item."""

    experiment: str
    user: str
    ts: float
    items: tuple[str, ...]
    teams: tuple[Team, ...]

    def __post_init__(self) -> None:
        check_name(self.experiment, "experiment")
        canonical_id(self.user, "user")
        _time(self.ts)
        if len(self.items) != len(self.teams):
            raise InvalidEvent(f"{len(self.items)} items but {len(self.teams)} teams")
        if len(self.items) > MAX_K:
            raise InvalidEvent(f"at most {MAX_K} items, got {len(self.items)}")
        if len(set(self.items)) != len(self.items):
            raise InvalidEvent("an item appears twice")
        if not all(team in _TEAM_CODES for team in self.teams):
            raise InvalidEvent("every team must be control or candidate")
        for item in self.items:
            canonical_id(item, "item")

    @classmethod
    def of(
        cls, experiment: str, user: str, ts: float, placed: Iterable[tuple[str, Team]]
    ) -> Impressions:
        """From :func:`models.interleaving.team_draft`'s list, or ``(item, team)`` pairs."""
        pairs = list(placed)
        return cls(
            experiment,
            user,
            ts,
            tuple(item for item, _ in pairs),
            tuple(team for _, team in pairs),
        )

    def __iter__(self) -> Iterator[tuple[str, Team]]:
        return zip(self.items, self.teams, strict=True)

    def encode(self) -> tuple[bytes, bytes]:
        """Key (the user) and compact JSON value of the impressions message."""
        body = {
            "experiment": self.experiment,
            "user": self.user,
            "ts": self.ts,
            "items": list(self.items),
            "teams": "".join(_TEAM_CODES[team] for team in self.teams),
        }
        return user_key(self.user), encode_json(body)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Impressions:
        """The impressions in a decoded JSON object, or :class:`InvalidEvent`."""
        unknown = sorted(set(obj) - _FIELDS)
        if unknown:
            raise InvalidEvent(f"unknown field(s): {', '.join(repr(u[:32]) for u in unknown[:5])}")
        missing = sorted(_FIELDS - obj.keys())
        if missing:
            raise InvalidEvent(f"missing field(s): {', '.join(missing)}")
        items, codes = obj["items"], obj["teams"]
        if type(items) is not list or len(items) > MAX_K:
            raise InvalidEvent(f"items must be a list of at most {MAX_K} ids")
        if type(codes) is not str or len(codes) != len(items) or set(codes) - {"0", "1"}:
            raise InvalidEvent("teams must be a string of one '0' or '1' per item")
        return cls(
            experiment=check_name(obj["experiment"], "experiment"),
            user=canonical_id(obj["user"], "user"),
            ts=_time(obj["ts"]),
            items=tuple(canonical_id(item, "item") for item in items),
            teams=tuple(_CODE_TEAMS[code] for code in codes),
        )

    @classmethod
    def parse(
        cls, key: bytes | None, value: bytes | None, *, max_bytes: int = MAX_IMPRESSIONS_BYTES
    ) -> Impressions:
        """The impressions in one message keyed by its user, or :class:`Undecodable`."""
        try:
            impressions = cls.from_dict(decode_object(value, max_bytes=max_bytes))
        except InvalidEvent as exc:
            raise Undecodable("invalid", f"not impressions: {exc.reason}") from None
        check_user_key(key, impressions.user, "impressions")
        return impressions


def _time(value: Any) -> float:
    """A time in unix seconds from 0 to :data:`models.experiment.LATEST_TIME`, or
    :class:`InvalidEvent`."""
    if type(value) is int and value.bit_length() <= 1023:
        value = float(value)
    if type(value) is not float or not 0 <= value <= LATEST_TIME:
        raise InvalidEvent(
            f"ts must be unix seconds between 0 and {LATEST_TIME:.0f} (milliseconds instead "
            "of seconds?)"
        )
    return value


class Hit(NamedTuple):
    """A positive rating credited to the variant that recommended its item."""

    experiment: str
    user: str
    item: str
    team: Team


@dataclass(slots=True)
class _Shown:
    experiment: str
    team: Team
    ts: float


class HitMatcher:
    """The impressions of the last ``window`` seconds, matched against ratings.

    Memory is bounded: at most ``max_users`` users (the least recently shown user's
    impressions are dropped first) and ``max_per_user`` items per user (the oldest first).
    An item shown again to the same user while still pending is not a new impression (it
    keeps its first variant and time), so every counted impression is one trial that is
    hit at most once: hits never exceed impressions. Time is the impressions' and the
    ratings' own (event time), never a clock read here.
    """

    def __init__(
        self,
        window: float,
        positive_threshold: float,
        *,
        max_users: int = 100_000,
        max_per_user: int = 1000,
    ) -> None:
        if not 0 < window < math.inf:
            raise ValueError(f"window must be a positive number of seconds, got {window}")
        if max_users < 1 or max_per_user < 1:
            raise ValueError("max_users and max_per_user must be >= 1")
        self.window = window
        self.positive_threshold = positive_threshold
        self.max_users = max_users
        self.max_per_user = max_per_user
        self._users: OrderedDict[str, OrderedDict[str, _Shown]] = OrderedDict()
        self.dropped = 0
        """Impressions forgotten to keep memory bounded before their window ended."""

    def __len__(self) -> int:
        """How many impressions are pending."""
        return sum(map(len, self._users.values()))

    def show(self, impressions: Impressions) -> list[tuple[str, Team]]:
        """Remember ``impressions``; the (item, team) pairs that are new impressions (the
        ones to count), in order."""
        shown = self._users.get(impressions.user)
        if shown is None:
            shown = self._users[impressions.user] = OrderedDict()
            while len(self._users) > self.max_users:
                _, evicted = self._users.popitem(last=False)
                self.dropped += len(evicted)
        else:
            self._users.move_to_end(impressions.user)
            self._expire(shown, impressions.ts)
        new = []
        for item, team in impressions:
            if item in shown:
                continue
            shown[item] = _Shown(impressions.experiment, team, impressions.ts)
            new.append((item, team))
            if len(shown) > self.max_per_user:
                shown.popitem(last=False)
                self.dropped += 1
        return new

    def match(self, rating: Rating) -> Hit | None:
        """The hit ``rating`` makes, if any: it is positive, and its item was shown to its
        user in ``[rating.ts - window, rating.ts]``. A matched impression is forgotten."""
        if rating.rating < self.positive_threshold:
            return None
        shown = self._users.get(rating.user)
        if shown is None:
            return None
        entry = shown.get(rating.item)
        if entry is None or not 0 <= rating.ts - entry.ts <= self.window:
            return None
        del shown[rating.item]
        if not shown:
            del self._users[rating.user]
        return Hit(entry.experiment, rating.user, rating.item, entry.team)

    def _expire(self, shown: OrderedDict[str, _Shown], now: float) -> None:
        """Forget ``shown``'s impressions older than ``now - window`` (oldest first)."""
        while shown:
            item, entry = next(iter(shown.items()))
            if now - entry.ts <= self.window:
                break
            del shown[item]
