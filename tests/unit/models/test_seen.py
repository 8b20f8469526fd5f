"""The seen-items row format and exclusion by hash (models/seen.py)."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from models.seen import (
    ROW_HEADER,
    ItemHashIndex,
    decode_row,
    encode_row,
    item_hashes,
    merge_row,
    remember,
)
from tests.unit.models.conftest import ITEMS


def test_row_is_eight_bytes_per_item_and_round_trips():
    row = remember(None, ["a", "b", "c"], limit=10)
    assert len(row) == ROW_HEADER + 3 * 8
    assert decode_row(row).tolist() == item_hashes(["a", "b", "c"]).tolist()
    assert decode_row(encode_row(decode_row(row))).tolist() == decode_row(row).tolist()
    assert len(decode_row(None)) == 0


def test_hash_is_stable_across_processes():
    # Pinned: rows written by one worker are read by another after a rebalance.
    assert item_hashes(["1193"]).tolist() == [int.from_bytes(_blake("1193"), "little")]


def _blake(item: str) -> bytes:
    import hashlib

    return hashlib.blake2b(item.encode(), digest_size=8).digest()


def test_a_re_rated_item_moves_to_the_recent_end_and_the_oldest_go_first():
    row = remember(None, ["a", "b", "c"], limit=3)
    row = remember(row, ["a", "d"], limit=3)
    assert decode_row(row).tolist() == item_hashes(["c", "a", "d"]).tolist()
    # Repeats within one batch keep the last occurrence.
    row = remember(None, ["x", "y", "x"], limit=5)
    assert decode_row(row).tolist() == item_hashes(["y", "x"]).tolist()


@given(
    st.lists(st.lists(st.sampled_from("abcdefghij"), max_size=8), max_size=6),
    st.integers(1, 12),
)
def test_merging_batches_equals_remembering_one_by_one(batches, limit):
    one_by_one: list[str] = []
    row = None
    for batch in batches:
        row = remember(row, batch, limit)
        for item in batch:
            one_by_one = [*(i for i in one_by_one if i != item), item][-limit:]
    assert decode_row(row).tolist() == item_hashes(one_by_one).tolist()


def test_rows_of_an_older_json_list_are_read_as_hashes():
    legacy = json.dumps(["a", "b"]).encode()
    assert decode_row(legacy).tolist() == item_hashes(["a", "b"]).tolist()
    assert len(decode_row(b"\x00garbage")) == 0


def test_index_maps_hashes_to_rows_and_drops_unknown_items():
    index = ItemHashIndex(ITEMS)
    rows = index.rows(item_hashes(["c", "zzz", "a"]))
    assert rows.tolist() == [2, 0]
    assert index.items(item_hashes(["d", "nope", "b"])) == ["d", "b"]
    assert len(index.rows(item_hashes([]))) == 0


def test_extended_index_equals_a_fresh_one():
    index = ItemHashIndex(ITEMS)
    grown = [*ITEMS, "e", "f"]
    probe = item_hashes(["f", "a", "e"])
    assert index.extended(grown).rows(probe).tolist() == ItemHashIndex(grown).rows(probe).tolist()
    # Not an extension (a rollback to another lineage): rebuilt from scratch.
    other = ["f", "e", "a"]
    assert index.extended(other).rows(probe).tolist() == [0, 2, 1]


def test_merge_keeps_at_most_limit():
    row = merge_row(item_hashes([]), item_hashes([str(i) for i in range(50)]), limit=10)
    assert row.tolist() == item_hashes([str(i) for i in range(40, 50)]).tolist()
    assert isinstance(row, np.ndarray)


def test_many_new_items_on_a_long_row_take_the_array_path_with_the_same_result():
    old = [f"x{n}" for n in range(10_000)]
    new = [f"y{n}" for n in range(1_000)] + ["x5"]  # one re-rated: it moves to the end
    row = remember(remember(None, old, 10_000), new, 10_000)
    kept = [i for i in old if i != "x5"][-(10_000 - len(new)) :] + new
    assert decode_row(row).tolist() == item_hashes(kept).tolist()
    fresh = [f"z{n}" for n in range(1_000)]  # all new: the byte path would append them
    row = remember(row, fresh, 10_000)
    assert decode_row(row).tolist() == item_hashes((kept + fresh)[-10_000:]).tolist()
