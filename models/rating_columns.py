"""A batch of ratings as columns (ids as lists of str, ratings and times as float64 arrays):
what the trainer decodes into and trains from, without a Python object per rating.

It is also a ``Sequence[Rating]`` (an item is built on access), so code that reads ratings
one by one (bounds, evaluation, tests) takes it as it took a list.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np

from models.events import Rating


class RatingColumns(Sequence[Rating]):
    """``len(event_ids)`` ratings: the i-th is ``Rating(event_ids[i], users[i], items[i],
    float(ratings[i]), float(stamps[i]))``."""

    __slots__ = ("event_ids", "items", "ratings", "stamps", "users")

    def __init__(
        self,
        event_ids: list[str],
        users: list[str],
        items: list[str],
        ratings: np.ndarray,
        stamps: np.ndarray,
    ) -> None:
        n = len(event_ids)
        if not len(users) == len(items) == len(ratings) == len(stamps) == n:
            raise ValueError("columns of different lengths")
        self.event_ids = event_ids
        self.users = users
        self.items = items
        self.ratings = np.asarray(ratings, dtype=np.float64)
        self.stamps = np.asarray(stamps, dtype=np.float64)

    @classmethod
    def of(cls, ratings: Iterable[Rating]) -> RatingColumns:
        """The columns of ``ratings`` (a :class:`RatingColumns` is returned as it is)."""
        if isinstance(ratings, RatingColumns):
            return ratings
        rows = ratings if isinstance(ratings, Sequence) else list(ratings)
        return cls(
            [r.event_id for r in rows],
            [r.user for r in rows],
            [r.item for r in rows],
            np.array([r.rating for r in rows], dtype=np.float64),
            np.array([r.ts for r in rows], dtype=np.float64),
        )

    def take(self, indices: Sequence[int] | np.ndarray) -> RatingColumns:
        """The ratings at ``indices``, in that order."""
        picked = np.asarray(indices, dtype=np.int64)
        event_ids, users, items = self.event_ids, self.users, self.items
        return RatingColumns(
            [event_ids[i] for i in picked.tolist()],
            [users[i] for i in picked.tolist()],
            [items[i] for i in picked.tolist()],
            self.ratings[picked],
            self.stamps[picked],
        )

    def __len__(self) -> int:
        return len(self.event_ids)

    @overload
    def __getitem__(self, index: int) -> Rating: ...

    @overload
    def __getitem__(self, index: slice) -> RatingColumns: ...

    def __getitem__(self, index: int | slice) -> Rating | RatingColumns:
        if isinstance(index, slice):
            return RatingColumns(
                self.event_ids[index],
                self.users[index],
                self.items[index],
                self.ratings[index],
                self.stamps[index],
            )
        return Rating(
            self.event_ids[index],
            self.users[index],
            self.items[index],
            float(self.ratings[index]),
            float(self.stamps[index]),
        )

    def __iter__(self) -> Iterator[Rating]:
        ratings, stamps = self.ratings.tolist(), self.stamps.tolist()
        for row in zip(self.event_ids, self.users, self.items, ratings, stamps, strict=True):
            yield Rating(*row)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RatingColumns | list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return f"RatingColumns({len(self)} ratings)"
