"""Which requests partition owns a user, and a scorer's share of the partitions: the
producers' rule (Kafka's default partitioner: murmur2 of the raw UTF-8 user key), in one
place, for one id or a million at once (vectorised over the id blobs snapshots store)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from models.idmap import encode_strings

_SEED = 0x9747B28C
_M = np.uint32(0x5BD1E995)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` (an unsigned 32-bit value)."""
    blob = np.frombuffer(data, dtype=np.uint8)
    offsets = np.array([0, len(data)], dtype=np.int64)
    return int(key_hashes(blob, offsets)[0])


def key_hashes(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Kafka's murmur2 (uint32) of each key ``blob[offsets[i]:offsets[i+1]]``, all at once
    (the id maps' stored form, :func:`models.idmap.encode_strings`: no key is decoded)."""
    starts = offsets[:-1].astype(np.int64)
    lengths = np.diff(offsets).astype(np.int64)
    b = blob.astype(np.uint32)
    with np.errstate(over="ignore"):
        h = np.uint32(_SEED) ^ lengths.astype(np.uint32)
        words = lengths >> 2
        for i in range(int(words.max(initial=0))):
            at = np.flatnonzero(words > i)
            p = starts[at] + 4 * i
            k = b[p] | (b[p + 1] << 8) | (b[p + 2] << 16) | (b[p + 3] << 24)
            k *= _M
            k ^= k >> 24
            k *= _M
            h[at] = (h[at] * _M) ^ k
        extra = lengths & 3
        tail = starts + (lengths & ~3)
        for shift, need in ((16, 3), (8, 2), (0, 1)):
            at = np.flatnonzero(extra >= need)
            h[at] ^= b[tail[at] + (need - 1)] << shift
        at = np.flatnonzero(extra >= 1)
        h[at] *= _M
        h ^= h >> 13
        h *= _M
        h ^= h >> 15
    return h


def partitions_of_hashes(hashes: np.ndarray, n_partitions: int) -> np.ndarray:
    """The partition of each key hash: Kafka's ``(murmur2 & 0x7fffffff) % n``."""
    return ((hashes & np.uint32(0x7FFFFFFF)) % np.uint32(n_partitions)).astype(np.int64)


def partitions_of(users: Sequence[str], n_partitions: int) -> np.ndarray:
    """The requests partition of each user id (int64)."""
    blob, offsets = encode_strings(list(users))
    return partitions_of_hashes(key_hashes(blob, offsets), n_partitions)


def partition_of(user: str, n_partitions: int) -> int:
    """The requests partition that owns ``user``."""
    return (murmur2(user.encode("utf-8")) & 0x7FFFFFFF) % n_partitions


@dataclass(frozen=True)
class Share:
    """The partitions (of ``n_partitions``) whose users a scorer holds rows for."""

    n_partitions: int
    owned: frozenset[int]

    def __post_init__(self) -> None:
        if self.n_partitions < 1:
            raise ValueError(f"n_partitions must be >= 1, got {self.n_partitions}")
        if any(not 0 <= p < self.n_partitions for p in self.owned):
            raise ValueError(f"partitions {sorted(self.owned)} not all below {self.n_partitions}")

    @classmethod
    def of(cls, n_partitions: int, owned: Iterable[int]) -> Share:
        return cls(n_partitions, frozenset(owned))

    @property
    def everything(self) -> bool:
        return len(self.owned) == self.n_partitions

    def holds(self, user: str) -> bool:
        return self.everything or partition_of(user, self.n_partitions) in self.owned

    def held_hashes(self, hashes: np.ndarray) -> np.ndarray:
        """A boolean mask: which key hashes (from :func:`key_hashes`) this share holds."""
        if self.everything:
            return np.ones(len(hashes), dtype=bool)
        parts = partitions_of_hashes(hashes, self.n_partitions)
        return np.isin(parts, np.fromiter(self.owned, dtype=np.int64, count=len(self.owned)))

    def held(self, users: Sequence[str]) -> np.ndarray:
        """A boolean mask: which of ``users`` this share holds."""
        blob, offsets = encode_strings(list(users))
        return self.held_hashes(key_hashes(blob, offsets))

    def covers(self, other: Share) -> bool:
        """Every user ``other`` holds, this share holds too."""
        if self.everything:
            return True
        return self.n_partitions == other.n_partitions and other.owned <= self.owned

    def describe(self) -> str:
        return f"{sorted(self.owned)} of {self.n_partitions}"
