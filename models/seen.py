"""What a user has rated, compactly: a fixed-width hash per item, and exclusion in numpy.

The ``seen-items`` table keeps one row per user: the 64-bit hashes of the items the user
rated, oldest first, without repeats, at most ``limit`` of them (``STREAMREC_SEEN_ITEMS_MAX``).
A row is 8 bytes per item plus an 8-byte header, encoded by :func:`encode_row` and read by
:func:`decode_row` (no JSON, no strings).

Hashes, not the model's item indices: indices belong to one model lineage (a rollback to
an older snapshot forgets the items added after it, and the next new item takes a freed
index), while the hash of an item id never changes. Each scoring view maps hashes to its
own rows (:class:`ItemHashIndex`), so the table stays right across promotes and rollbacks.

The hash is the first 8 bytes of BLAKE2b of the UTF-8 item id (stable across processes,
unlike Python's ``hash``). Two ids of one catalogue sharing a hash is a ~n²/2⁶⁵ event; it
would only hide an unseen item from that user.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import cast

import numpy as np

HASH_DTYPE = np.dtype("<u8")
ROW_MAGIC = b"SEEN\x01\x00\x00\x00"  # format 1: little-endian uint64 hashes, oldest first
ROW_HEADER = len(ROW_MAGIC)
BYTES_PER_ITEM = HASH_DTYPE.itemsize

_EMPTY = np.zeros(0, dtype=HASH_DTYPE)
_EMPTY.flags.writeable = False


@lru_cache(maxsize=1 << 17)  # a catalogue's ids repeat in every slice of ratings
def item_hash(item: str) -> bytes:
    """The 8-byte hash of one item id (little-endian uint64 in a row)."""
    # surrogatepass: the same bytes for every valid id, and no exception for a string that
    # is not valid UTF-8 (rejected upstream; an old row may still hold one)
    return hashlib.blake2b(
        item.encode("utf-8", "surrogatepass"), digest_size=BYTES_PER_ITEM
    ).digest()


def item_hashes(items: Iterable[str]) -> np.ndarray:
    """The hashes of ``items``, in order, as a uint64 array."""
    joined = b"".join(item_hash(i) for i in items)
    return np.frombuffer(joined, dtype=HASH_DTYPE) if joined else _EMPTY


def encode_row(hashes: np.ndarray) -> bytes:
    """The table value for a row of hashes (oldest first)."""
    return ROW_MAGIC + np.ascontiguousarray(hashes, dtype=HASH_DTYPE).tobytes()


def decode_row(raw: bytes | None) -> np.ndarray:
    """The hashes of one table value (read-only); empty for ``None``.

    A row written by an older streamrec (a JSON list of item ids) is read as those items'
    hashes, so an existing changelog keeps working; anything else is treated as empty.
    """
    if not raw:
        return _EMPTY
    if raw[:ROW_HEADER] == ROW_MAGIC and (len(raw) - ROW_HEADER) % BYTES_PER_ITEM == 0:
        return np.frombuffer(raw, dtype=HASH_DTYPE, offset=ROW_HEADER)
    try:
        legacy = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: 4,300+ digits
        return _EMPTY
    if isinstance(legacy, list):
        return item_hashes(str(i) for i in legacy)
    return _EMPTY


def merge_row(row: np.ndarray, new: np.ndarray, limit: int) -> np.ndarray:
    """``row`` with the hashes ``new`` (in rating order) moved to the most recent end, at
    most ``limit`` kept (the oldest go first). Vectorised: O((len(row) + len(new)) log)."""
    if not len(new):
        return row[-limit:]
    # Keep the last occurrence of each new hash, in order.
    reversed_new = new[::-1]
    _, first = np.unique(reversed_new, return_index=True)
    fresh = reversed_new[np.sort(first)][::-1]
    kept = row[~np.isin(row, fresh)] if len(row) else row
    return np.concatenate([kept, fresh])[-limit:]


def remember(raw: bytes | None, items: Sequence[str], limit: int) -> bytes:
    """The table value after the user rated ``items`` (in order) on top of row ``raw``."""
    new = [item_hash(i) for i in items]
    # The common case, a few items new to the row: append bytes, no arrays (see merge_row).
    # Each new item scans the row once, so many items on a long row take the arrays.
    if (
        raw
        and raw[:ROW_HEADER] == ROW_MAGIC
        and len(new) * len(raw) <= _SCAN_BYTES
        and len(set(new)) == len(new)
        and not any(_contains(raw, h) for h in new)
    ):
        row = raw + b"".join(new)
        extra = (len(row) - ROW_HEADER) // BYTES_PER_ITEM - limit
        if extra > 0:
            row = ROW_MAGIC + row[ROW_HEADER + extra * BYTES_PER_ITEM :]
        return row
    joined = b"".join(new)
    fresh = np.frombuffer(joined, dtype=HASH_DTYPE) if joined else _EMPTY
    return encode_row(merge_row(decode_row(raw), fresh, limit))


#: The most row bytes :func:`remember`'s byte path scans (new items x row length); beyond,
#: numpy's sorted merge is cheaper (a user with 10,000 items rating 1,000 more scanned 80 MB).
_SCAN_BYTES = 1 << 18


def _contains(row: bytes, digest: bytes) -> bool:
    """Whether ``row`` holds ``digest`` as one of its 8-byte items (aligned matches only)."""
    pos = row.find(digest, ROW_HEADER)
    while pos != -1:
        if (pos - ROW_HEADER) % BYTES_PER_ITEM == 0:
            return True
        pos = row.find(digest, pos + 1)
    return False


class ItemHashIndex:
    """Item hashes → dense item rows of one catalogue (a scoring view's ``item_ids``).

    Built once per catalogue; :meth:`extended` reuses the work when a newer view only
    appended items (the usual case: ids are append-only within a model lineage).
    """

    __slots__ = ("_hashes", "_ids", "_order", "_sorted")

    def __init__(self, item_ids: Sequence[str], hashes: np.ndarray | None = None) -> None:
        self._ids = list(item_ids)
        self._hashes = item_hashes(self._ids) if hashes is None else hashes
        self._order = np.argsort(self._hashes, kind="stable")
        self._sorted = self._hashes[self._order]

    def __len__(self) -> int:
        return len(self._ids)

    def extended(self, item_ids: Sequence[str]) -> ItemHashIndex:
        """The index of ``item_ids``; hashes only the new tail when this one is its prefix."""
        n = len(self._ids)
        if len(item_ids) >= n and list(item_ids[:n]) == self._ids:
            tail = item_hashes(item_ids[n:])
            return ItemHashIndex(item_ids, np.concatenate([self._hashes, tail]))
        return ItemHashIndex(item_ids)

    def rows(self, hashes: np.ndarray) -> np.ndarray:
        """The item rows of the known hashes among ``hashes`` (unknown ones are dropped)."""
        if not len(hashes) or not len(self._sorted):
            return np.zeros(0, dtype=np.int64)
        pos = np.searchsorted(self._sorted, hashes)
        pos[pos == len(self._sorted)] = 0
        found = self._sorted[pos] == hashes
        return cast(np.ndarray, self._order[pos[found]].astype(np.int64, copy=False))

    def items(self, hashes: np.ndarray) -> list[str]:
        """The ids of the known hashes among ``hashes``, in the order given."""
        ids = self._ids
        return [ids[r] for r in self.rows(hashes).tolist()]
