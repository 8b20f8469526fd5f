"""External string ids <-> dense row indices, append-only, serialisable without pickle."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import numpy as np


class IdMap:
    """Maps ids (``str``) to dense indices 0..n-1 in order of first appearance.

    Indices are never reused or reordered, so an index is valid for the model's whole
    life; :meth:`truncate` only exists to undo the additions of a failed batch.
    """

    __slots__ = ("_ids", "_index")

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        for value in ids:
            if value in self._index:
                raise ValueError(f"duplicate id {value!r}")
            self.add(value)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, value: object) -> bool:
        return value in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def get(self, value: str) -> int | None:
        """The index of ``value``, or None if it was never added."""
        return self._index.get(value)

    def add(self, value: str) -> int:
        """The index of ``value``, adding it at the end if it is new."""
        index = self._index.get(value)
        if index is None:
            if not isinstance(value, str):
                raise TypeError(f"ids are strings, got {type(value).__name__}")
            index = len(self._ids)
            self._ids.append(value)
            self._index[value] = index
        return index

    def add_many(self, values: list[str]) -> np.ndarray:
        """:meth:`add` for each value (int64 indices); one C-speed dict pass when all are known."""
        get = self._index.get
        found = [get(v) for v in values]
        if None in found:
            found = [self.add(v) if i is None else i for v, i in zip(values, found, strict=True)]
        return np.array(found, dtype=np.int64)

    def id_of(self, index: int) -> str:
        return self._ids[index]

    def ids(self, stop: int | None = None, start: int = 0) -> list[str]:
        """A copy of the ids in index order (those from ``start`` to ``stop``, if given)."""
        return self._ids[start:stop]

    def extend_at(self, start: int, values: list[str]) -> None:
        """Make the ids from index ``start`` on exactly ``values``.

        Scoring views share one append-only map and each reads only its first n ids, so a
        view built from another appends here: ids already in place (the trainer's own map)
        are kept, anything after ``start`` that differs (left by a failed apply) is
        dropped first. Raises ValueError if a value is already known below ``start``.
        """
        if self._ids[start : start + len(values)] == values:
            return
        self.truncate(start)
        for value in values:
            if value in self._index:
                raise ValueError(f"id {value!r} is already known")
            self.add(value)

    def index_copy(self) -> dict[str, int]:
        """A copy of the id -> index dict (for immutable scoring views)."""
        return dict(self._index)

    def truncate(self, n: int) -> None:
        """Forget every id with index >= n (rolls back a failed batch)."""
        for value in self._ids[n:]:
            del self._index[value]
        del self._ids[n:]

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(blob, offsets)``: UTF-8 bytes of all ids concatenated (uint8) and n+1 int64
        offsets. Compact for long ids, unlike a fixed-width unicode array, and loadable
        with ``allow_pickle=False``."""
        return encode_strings(self._ids)

    @classmethod
    def from_arrays(cls, blob: np.ndarray, offsets: np.ndarray) -> IdMap:
        """Inverse of :meth:`to_arrays`; raises ValueError on malformed or duplicate ids."""
        return cls(decode_strings(blob, offsets))


def encode_strings(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pack strings as (uint8 UTF-8 blob, int64 offsets of length n+1)."""
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return blob, offsets


def check_strings(blob: np.ndarray, offsets: np.ndarray) -> None:
    """Raise ValueError unless ``blob`` and ``offsets`` are :func:`encode_strings`' shapes."""
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise ValueError("id blob must be a 1-d uint8 array")
    if offsets.dtype != np.int64 or offsets.ndim != 1 or len(offsets) < 1:
        raise ValueError("id offsets must be a non-empty 1-d int64 array")
    if offsets[0] != 0 or offsets[-1] != len(blob) or np.any(np.diff(offsets) < 0):
        raise ValueError("id offsets do not describe the blob")


def decode_strings(
    blob: np.ndarray, offsets: np.ndarray, rows: np.ndarray | None = None
) -> list[str]:
    """Unpack :func:`encode_strings` (only the strings at ``rows``, if given: the others
    are never decoded); raises ValueError if the arrays are inconsistent."""
    check_strings(blob, offsets)
    data = blob.tobytes()
    try:
        if rows is None:
            return [data[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets.tolist())]
        starts, ends = offsets[rows].tolist(), offsets[np.asarray(rows) + 1].tolist()
        return [data[a:b].decode("utf-8") for a, b in zip(starts, ends, strict=True)]
    except UnicodeDecodeError as exc:
        raise ValueError(f"id blob is not valid UTF-8: {exc}") from None
