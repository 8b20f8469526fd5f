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
    MOMENTUM,
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
    # popularity: the changed items' counts and the decays, not every item's count;
    # adagrad's momentum (never written, zero) is left out
    assert cut.popularity.shape == cut.item_rows.shape and cut.popularity_decays is not None
    assert not set(MOMENTUM) & set(cut.rows)
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


def test_an_adadelta_chain_carries_momentum_and_restores_bit_for_bit():
    model = IncrementalModel(dataclasses.replace(CONFIG, learning_schedule="adadelta"))
    written = chain(model, 9)
    assert all(set(MOMENTUM) <= set(decode_segment(*w).rows) for w in written[1:])
    same_state(decode_chain(written), model.snapshot_state())


def test_segments_of_the_first_format_still_restore(written):
    """Every item's popularity count and the momentum rows, as the first segments had."""
    legacy = [written[0]]
    for at, (payload, manifest) in enumerate(written[1:], start=2):
        segment = decode_segment(payload, manifest)
        assert segment.popularity_decays is not None
        old = copy.copy(segment)
        old.popularity = decode_chain(written[:at]).arrays["popularity"]
        old.popularity_decays = None
        old.rows = dict(segment.rows)
        for name in MOMENTUM:
            k = () if "bias" in name else (CONFIG.no_components,)
            old.rows[name] = np.zeros(
                (len(segment.rows[name.replace("momentum", "gradients")]), *k), np.float32
            )
        legacy.append(encode_segment(old, legacy[-1][1]["sha256"], manifest["base"]))
        again = decode_segment(*legacy[-1])
        assert again.popularity_decays is None and set(MOMENTUM) <= set(again.rows)
        assert encode_segment(again, legacy[-2][1]["sha256"], manifest["base"])[0] == legacy[-1][0]
    same_state(decode_chain(legacy), decode_chain(written))


def test_refuses_bad_decays_or_missing_momentum(written):
    segment = decode_segment(*written[1])
    for decays in ([1.5], [np.nan], [-0.1], [[0.5]]):
        bad = copy.copy(segment)
        bad.popularity_decays = np.array(decays, dtype=np.float64)
        with pytest.raises(SnapshotError, match="popularity_decays"):
            decode_segment(*encode_segment(bad, "0" * 64, 0))
    bad = copy.copy(segment)
    bad.popularity = np.ones(len(segment.item_rows) + 1)
    with pytest.raises(SnapshotError, match="popularity must be"):
        decode_segment(*encode_segment(bad, "0" * 64, 0))
    bad = copy.copy(segment)
    bad.config = dataclasses.replace(CONFIG, learning_schedule="adadelta")
    with pytest.raises(SnapshotError, match="momentum"):
        decode_segment(*encode_segment(bad, "0" * 64, 0))
    bad = copy.copy(segment)
    k = CONFIG.no_components
    bad.rows = {
        **segment.rows,
        "user_embedding_momentum": np.zeros((len(segment.user_rows), k), np.float32),
    }
    with pytest.raises(SnapshotError, match="only some momentum"):
        decode_segment(*encode_segment(bad, "0" * 64, 0))


def test_untouched_items_counts_are_the_parents_decayed_one_factor_at_a_time():
    model = IncrementalModel(dataclasses.replace(CONFIG, popularity_half_life_seconds=7.0))
    rng = random.Random(5)
    model.train_batch(batch(rng, 0, 400, 40, 200))
    written = [encode(model.cut_checkpoint(segment=False))]
    for b in range(6):  # a few of the 200 items rated (WARP's negatives train others)
        model.train_batch(batch(rng, 390 + 2 * b, 10, 40, 8))  # time moves on each batch
    cut = model.cut_checkpoint(segment=True)
    assert isinstance(cut, Segment) and len(cut.item_rows) < 100
    assert cut.popularity_decays is not None and len(cut.popularity_decays) == 5
    written.append(encode_segment(cut, written[0][1]["sha256"], written[0][1]["version"]))
    live, parent = model.snapshot_state(), decode(*written[0])
    untouched = np.setdiff1d(np.arange(len(parent.item_ids)), cut.item_rows)
    decayed = live.arrays["popularity"][untouched]
    assert (decayed > 0).all() and (decayed < parent.arrays["popularity"][untouched]).all()
    same_state(decode_chain(written), live)


def test_a_cut_not_written_is_merged_into_the_next_one():
    model = IncrementalModel(
        dataclasses.replace(CONFIG, popularity_half_life_seconds=7.0, dedupe_memory=100)
    )
    rng = random.Random(6)
    model.train_batch(batch(rng, 0, 400, 40, 200))
    written = [encode(model.cut_checkpoint(segment=False))]
    model.checkpoint_written(written[0][1]["version"])
    for b in range(3):
        model.train_batch(batch(rng, 400 + 10 * b, 10, 45, 8))
    lost = model.cut_checkpoint(segment=True)  # its write fails
    for b in range(3):
        model.train_batch(batch(rng, 500 + 10 * b, 10, 50, 8))
    model.checkpoint_written(written[0][1]["version"])  # still the newest written
    assert model.checkpoint_parent == written[0][1]["version"]
    cut = model.cut_checkpoint(segment=True)
    assert isinstance(lost, Segment) and isinstance(cut, Segment)
    assert set(lost.user_rows) <= set(cut.user_rows) and len(cut.recent_tail) == 60
    assert cut.popularity_decays is not None and len(cut.popularity_decays) == 6
    written.append(encode_segment(cut, written[0][1]["sha256"], written[0][1]["version"]))
    same_state(decode_chain(written), model.snapshot_state())
    model.checkpoint_written(cut.version)  # written: the next one continues it
    assert model.checkpoint_parent == cut.version
