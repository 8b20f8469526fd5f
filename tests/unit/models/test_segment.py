"""Checkpoint segments (models.segment): a base plus its segments restores the live model
bit for bit; the decoder refuses whatever encode_segment would not write."""

from __future__ import annotations

import copy
import dataclasses
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.config import ModelConfig
from models.consolidation import InteractionWindow
from models.dedupe import RecentEventIds
from models.errors import SnapshotError
from models.events import Rating
from models.incremental import IncrementalModel
from models.segment import (
    Segment,
    assemble,
    decode_chain,
    decode_segment,
    encode_segment,
    load_chain_view,
)
from models.snapshot import SnapshotState, decode, encode

CONFIG = ModelConfig(
    no_components=4,
    initial_capacity=4,
    dedupe_memory=50,
    consolidation_window=80,
    consolidate_every=150,
)


def batch(rng: random.Random, start: int, size: int, users: int, items: int) -> list[Rating]:
    return [
        Rating(
            f"e{start + i}",
            f"u{rng.randrange(users)}",
            f"i{rng.randrange(items)}",
            float(rng.randint(1, 5)),
            1000.0 + start + i,
        )
        for i in range(size)
    ]


def chain(model: IncrementalModel, batches: int, seed: int = 1, every: int = 3):
    """Train ``batches`` batches, cutting a base first and then a segment every ``every``
    batches; returns the encoded [(payload, manifest), ...] (base first)."""
    rng = random.Random(seed)
    written = [encode(model.cut_checkpoint(segment=False))]
    for b in range(batches):
        users = 10 + 3 * b  # new users keep arriving
        model.train_batch(batch(rng, 1000 * seed + 20 * b, 20, users, 12 + b // 2))
        model.offsets[f"ratings:{b % 2}"] = b + 1
        model.view()
        if (b + 1) % every == 0:
            cut = model.cut_checkpoint(segment=True, max_rows=1.0)
            assert isinstance(cut, Segment)
            parent = written[-1][1]
            written.append(encode_segment(cut, parent["sha256"], written[0][1]["version"]))
    return written


def restore(written) -> IncrementalModel:
    base = decode(*written[0])
    return IncrementalModel.from_state(assemble(base, [decode_segment(*w) for w in written[1:]]))


def same_state(a: SnapshotState, b: SnapshotState, *, chain: bool = True) -> None:
    assert a.arrays.keys() == b.arrays.keys()
    for name in a.arrays:
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=name)
        assert a.arrays[name].dtype == b.arrays[name].dtype
    for name in a.window:
        np.testing.assert_array_equal(a.window[name], b.window[name], err_msg=name)
    assert (a.user_ids, a.item_ids, a.recent_event_ids) == (
        b.user_ids,
        b.item_ids,
        b.recent_event_ids,
    )
    assert (a.version, a.trained_events, a.offsets, a.popularity_ts) == (
        b.version,
        b.trained_events,
        b.offsets,
        b.popularity_ts,
    )
    assert a.since_consolidation == b.since_consolidation
    assert not chain or a.chain == b.chain
    assert (a.neighbours is None) == (b.neighbours is None)
    if a.neighbours is not None:
        assert (a.neighbours != b.neighbours).nnz == 0


def test_base_plus_segments_restores_the_live_model_bit_for_bit():
    model = IncrementalModel(CONFIG)
    written = chain(model, 24)  # consolidations (every 150 events) happen in between
    assert len(written) == 9
    base = decode(*written[0])
    assembled = assemble(base, [decode_segment(*w) for w in written[1:]])
    same_state(assembled, model.snapshot_state())
    assert encode(assembled)[0] == model.to_bytes()[0]  # the very same full snapshot
    # and the restored model (a new lineage) trains on exactly like the live one
    restored = restore(written)
    more = batch(random.Random(9), 99_000, 20, 50, 20)
    restored.train_batch(more)
    model.train_batch(more)
    same_state(restored.snapshot_state(), model.snapshot_state(), chain=False)


def test_segments_carry_only_the_rows_that_changed():
    model = IncrementalModel(dataclasses.replace(CONFIG, no_components=16))
    rng = random.Random(3)
    model.train_batch(batch(rng, 0, 6000, 3000, 30))
    full = encode(model.cut_checkpoint(segment=False))[0]
    model.train_batch(batch(rng, 10_000, 10, 5, 30))  # 5 of 3000 users
    cut = model.cut_checkpoint(segment=True)
    assert isinstance(cut, Segment) and len(cut.user_rows) <= 5
    assert len(encode_segment(cut, "0" * 64, 0)[0]) < len(full) / 20


def test_a_segment_of_most_rows_is_cut_as_a_base():
    model = IncrementalModel(CONFIG)
    rng = random.Random(4)
    model.train_batch(batch(rng, 0, 100, 20, 10))
    model.cut_checkpoint(segment=False)
    model.train_batch(batch(rng, 1000, 100, 20, 10))
    assert isinstance(model.cut_checkpoint(segment=True, max_rows=0.1), SnapshotState)


@pytest.fixture(scope="module")
def written():
    return chain(IncrementalModel(CONFIG), 6)


def test_refuses_a_segment_that_does_not_continue_its_parent(written):
    base = decode(*written[0])
    segments = [decode_segment(*w) for w in written[1:]]
    with pytest.raises(SnapshotError, match="continues"):
        assemble(base, segments[1:])  # the first segment is missing
    with pytest.raises(SnapshotError, match="continues"):
        assemble(base, segments[::-1])


def test_refuses_a_corrupt_or_tampered_segment(written):
    payload, manifest = written[1]
    corrupt = bytearray(payload)
    corrupt[len(corrupt) // 2] ^= 1
    with pytest.raises(SnapshotError, match="checksum"):
        decode_segment(bytes(corrupt), manifest)
    with pytest.raises(SnapshotError, match="parent"):
        decode_segment(payload, {**manifest, "parent_sha256": "f" * 64})
    with pytest.raises(SnapshotError):
        decode_segment(*written[0])  # a full snapshot is not a segment
    with pytest.raises(SnapshotError):
        decode(payload, manifest)  # nor a segment a full snapshot


def test_refuses_rows_out_of_order_or_missing_new_rows(written):
    segment = decode_segment(*written[1])
    bad = copy.copy(segment)
    bad.user_rows = segment.user_rows[::-1].copy()
    with pytest.raises(SnapshotError, match="sorted"):
        decode_segment(*encode_segment(bad, "0" * 64, 0))
    bad = copy.copy(segment)
    keep = segment.user_rows < segment.parent_sizes[0]
    bad.user_rows = segment.user_rows[keep]
    bad.rows = {
        name: (array[keep] if name.startswith("user") else array)
        for name, array in segment.rows.items()
    }
    with pytest.raises(SnapshotError, match="new rows"):
        decode_segment(*encode_segment(bad, "0" * 64, 0))
    bad = copy.copy(segment)
    bad.rows = {**segment.rows, "user_biases": segment.rows["user_biases"] * np.nan}
    with pytest.raises(SnapshotError, match="NaN"):
        decode_segment(*encode_segment(bad, "0" * 64, 0))
    bad = copy.copy(segment)
    bad.recent_size = 10**6
    with pytest.raises(SnapshotError, match="only"):
        assemble(decode(*written[0]), [decode_segment(*encode_segment(bad, "0" * 64, 0))])


def test_an_encode_after_every_decode_gives_the_same_bytes(written):
    for payload, manifest in written[1:]:
        segment = decode_segment(payload, manifest)
        again = encode_segment(segment, manifest["parent_sha256"], manifest["base"])
        assert again[0] == payload


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2000), flip=st.integers(min_value=0))
def test_the_decoder_refuses_any_bytes_with_a_snapshot_error(written, data, flip):
    payload, manifest = written[1]
    for candidate in (data, payload[: flip % len(payload)] + data):
        forged = {**manifest, "sha256": __import__("hashlib").sha256(candidate).hexdigest()}
        with pytest.raises(SnapshotError):
            decode_segment(candidate, forged)


def test_decode_chain_refuses_a_parent_that_is_not_the_one_the_segment_names(written):
    state = decode(*written[0])
    state.trained_events += 1  # another valid snapshot of the same version
    with pytest.raises(SnapshotError, match="is not the stored one"):
        decode_chain([encode(state), *written[1:]])
    assert decode_chain(written).version == decode_segment(*written[-1]).version


def test_a_chain_restores_a_scorers_view_of_the_same_rows(written):
    view, mark = load_chain_view(written)
    state = decode_chain(written)
    assert view.version == state.version and mark == state.chain
    assert view.user_ids() == state.user_ids
    np.testing.assert_array_equal(
        view.scoring_arrays()["user_embeddings"], state.arrays["user_embeddings"]
    )


@given(
    limit=st.integers(min_value=0, max_value=30),
    batches=st.lists(st.integers(min_value=0, max_value=12), max_size=8),
    n=st.integers(min_value=-3, max_value=60),
)
def test_the_tails_a_segment_takes_are_the_fifos_newest_entries(limit, batches, n):
    recent, window, at = RecentEventIds(limit), InteractionWindow(limit), 0
    for size in batches:
        ids = np.arange(at, at + size)
        recent.remember_ids([f"e{i}" for i in ids])
        window.append(ids, ids + 1, np.full(size, 3.0), ids.astype(np.float64))
        at += size
    newest = window.newest(n)
    whole = window.arrays()
    for name, array in whole.items():
        expected = array[max(0, len(array) - max(0, n)) :]
        np.testing.assert_array_equal(newest[name], expected)
        assert newest[name].dtype == array.dtype
    ids = recent.ids()
    assert recent.newest(n) == ids[max(0, len(ids) - max(0, n)) :] and len(recent) == len(ids)
