import hashlib
import json
import struct
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import ModelConfig
from models.delta import FRESH, MAGIC, Chain, DeltaError, ModelDelta, check_applies, next_step
from models.incremental import IncrementalModel
from models.scoring import ScoringView
from models.snapshot import load_scoring_view
from tests.unit.models.test_incremental import ratings

SMALL = dict(no_components=8, initial_capacity=4)


def trained(batches: int = 3, model: IncrementalModel | None = None, seed: int = 0):
    """A model and the deltas of its batches (as the trainer takes them: one per view)."""
    model = model or IncrementalModel(ModelConfig(**SMALL))
    deltas = []
    for b in range(batches):
        ts0 = 1000.0 * (seed + b)
        model.train_batch(
            ratings(40 + 20 * b, 30 + 10 * b, 200, seed=seed + b, prefix=f"s{seed}b{b}-", ts0=ts0)
        )
        model.view()
        deltas.append(model.last_delta)
    return model, deltas


def assert_same_view(a: ScoringView, b: ScoringView) -> None:
    assert a.version == b.version
    assert a.user_ids() == b.user_ids() and a.item_ids() == b.item_ids()
    for name, array in a.scoring_arrays().items():
        np.testing.assert_array_equal(array, b.scoring_arrays()[name], err_msg=name)


def reheader(raw: bytes, change) -> bytes:
    """``raw`` with its JSON header edited by ``change`` and the checksum redone."""
    body = raw[len(MAGIC) + 32 :]
    (n,) = struct.unpack_from("<I", body)
    header = json.loads(body[4 : 4 + n])
    change(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    body = struct.pack("<I", len(text)) + text + body[4 + n :]
    return MAGIC + hashlib.sha256(body).digest() + body


# --- encoding ----------------------------------------------------------------------------
def test_round_trip_keeps_every_field():
    _, (delta, *_) = trained(1)
    back = ModelDelta.decode(delta.encode())
    for name in ("lineage", "origin", "start", "base_version", "version", "n_users", "n_items"):
        assert getattr(back, name) == getattr(delta, name), name
    assert back.new_user_ids == delta.new_user_ids and back.new_item_ids == delta.new_item_ids
    for name in (
        "user_rows",
        "user_embeddings",
        "user_positives",
        "item_rows",
        "popularity_values",
    ):
        np.testing.assert_array_equal(getattr(back, name), getattr(delta, name), err_msg=name)
        assert getattr(back, name).dtype == getattr(delta, name).dtype
    assert back.popularity_decay == delta.popularity_decay
    assert back.popularity_ts == delta.popularity_ts and not back.snapshot_needed


def test_any_flipped_byte_is_refused():
    _, (delta, *_) = trained(1)
    raw = bytearray(delta.encode())
    for position in (len(MAGIC) + 40, len(raw) // 2, len(raw) - 1):
        bad = bytearray(raw)
        bad[position] ^= 0x01
        with pytest.raises(DeltaError, match="checksum"):
            ModelDelta.decode(bytes(bad))
    with pytest.raises(DeltaError, match="magic"):
        ModelDelta.decode(b"PK\x03\x04" + bytes(raw[4:]))
    with pytest.raises(DeltaError, match="no value"):
        ModelDelta.decode(None)


def test_replaces_neighbours_is_on_the_wire_and_optional():
    _, (delta, *_) = trained(1)
    flagged = replace(delta, replaces_neighbours=True)
    assert ModelDelta.decode(flagged.encode()).replaces_neighbours
    # An older trainer's message has no such field: it decodes as False.
    older = reheader(flagged.encode(), lambda h: h["scalars"].pop("replaces_neighbours"))
    assert not ModelDelta.decode(older).replaces_neighbours

    def wrong_type(h):
        h["scalars"]["replaces_neighbours"] = 1

    with pytest.raises(DeltaError, match="wrong type"):
        ModelDelta.decode(reheader(flagged.encode(), wrong_type))


def test_a_consistent_but_malformed_header_is_refused():
    _, (delta, *_) = trained(1)
    raw = delta.encode()

    def shape_past_end(h):
        h["arrays"][0][1] = [10**6]

    def wrong_version(h):
        h["scalars"]["version"] = h["scalars"]["base_version"]

    def bool_as_int(h):
        h["scalars"]["n_users"] = True

    def unknown_array(h):
        h["arrays"][0][0] = "pickle"

    for change, reason in (
        (shape_past_end, "runs past"),
        (wrong_version, "newer version"),
        (bool_as_int, "wrong type"),
        (unknown_array, "unexpected"),
    ):
        with pytest.raises(DeltaError, match=reason):
            ModelDelta.decode(reheader(raw, change))


def test_marker_carries_no_rows():
    _, (delta, *_) = trained(1)
    marker = ModelDelta.decode(delta.as_marker().encode())
    assert marker.snapshot_needed and marker.rows_touched == 0
    assert (marker.base_version, marker.version) == (delta.base_version, delta.version)
    with pytest.raises(DeltaError, match="load the snapshot"):
        check_applies(marker, version=0, n_users=0, n_items=0, k=8)


def test_size_is_proportional_to_the_rows_touched():
    big = IncrementalModel(ModelConfig(**SMALL))
    trained(2, big)
    for _ in range(6):  # grow the model; one small batch then touches a few rows
        trained(1, big, seed=len(big.users.ids()))
    big.train_batch(ratings(5, 5, 5, seed=99, prefix="tiny-", ts0=1e6))
    big.view()
    small = big.last_delta
    assert len(small.user_rows) <= 5
    assert len(small.encode()) < len(big.to_bytes()[0]) / 10


# --- applying ----------------------------------------------------------------------------
def test_deltas_rebuild_the_trainers_view_bit_for_bit():
    model, deltas = trained(4)
    view = ScoringView.empty(8)
    for n, delta in enumerate(deltas):
        view = view.with_delta(ModelDelta.decode(delta.encode()), join=(n == 0))
    assert_same_view(view, model.full_view())
    assert view.recommend("u3").items == model.view().recommend("u3").items


def test_a_snapshot_plus_later_deltas_equals_the_model():
    model, _ = trained(2)
    payload, manifest = model.to_bytes()
    view, chain = load_scoring_view(payload, manifest)
    assert chain == {"lineage": model.lineage, "version": model.version, "offset": None}
    _, later = trained(2, model, seed=10)
    for delta in later:
        view = view.with_delta(delta)
    assert_same_view(view, model.full_view())


def test_a_delta_that_does_not_fit_changes_nothing():
    _, deltas = trained(2)
    view = ScoringView.empty(8).with_delta(deltas[0], join=True)
    with pytest.raises(DeltaError, match="applies to"):
        view.with_delta(replace(deltas[1], base_version=deltas[1].base_version + 5, version=99))
    with pytest.raises(DeltaError, match="new users"):
        ScoringView.empty(8).with_delta(deltas[1], join=True)
    assert view.version == deltas[0].version and view.n_users == deltas[0].n_users


def test_a_delta_without_rows_of_the_wrong_width_is_refused_not_a_crash():
    # Found by the forged-delta test: empty (0, 0) embeddings passed the width check and
    # made with_delta raise a ValueError, which restarted the scorer's follower in a loop.
    model, _ = trained(1)
    view = model.view()
    empty = ModelDelta(
        lineage="L",
        origin=-1,
        start=0,
        base_version=view.version,
        version=view.version + 1,
        n_users=view.n_users,
        n_items=view.n_items,
        trained_events=0,
    )
    with pytest.raises(DeltaError, match="components"):
        view.with_delta(empty)
    k = view.no_components
    fits = replace(empty, user_embeddings=np.zeros((0, k), np.float32))
    fits = replace(fits, item_embeddings=np.zeros((0, k), np.float32))
    assert view.with_delta(fits).version == view.version + 1


def test_check_applies_refuses_inconsistent_rows():
    _, (delta, *_) = trained(1)
    fits = dict(version=0, n_users=0, n_items=0, k=8)
    check_applies(delta, **fits)
    with pytest.raises(DeltaError, match="components"):
        check_applies(delta, **{**fits, "k": 4})
    rows = delta.user_rows.copy()
    rows[0] = rows[1]
    with pytest.raises(DeltaError, match="strictly increasing"):
        check_applies(replace(delta, user_rows=rows), **fits)
    with pytest.raises(DeltaError, match="every new row"):
        check_applies(
            replace(
                delta, user_rows=delta.user_rows[1:], user_embeddings=delta.user_embeddings[1:]
            ),
            **fits,
        )
    negative = delta.popularity_values.copy()
    negative[0] = -1
    with pytest.raises(DeltaError, match=">= 0"):
        check_applies(replace(delta, popularity_values=negative), **fits)


def test_popularity_decay_is_one_scalar_not_every_item():
    model, _ = trained(2)
    old_items = model.n_items
    model.train_batch(ratings(3, 3, 3, seed=5, prefix="late-", ts0=1e7))  # far later: decays
    model.view()
    delta = model.last_delta
    assert delta.popularity_decay < 1.0
    assert len(delta.popularity_rows) <= 3 + (model.n_items - old_items)


# --- the chain rule ----------------------------------------------------------------------
def d(lineage="L", base=5, version=6, origin=3, start=3):
    return ModelDelta(
        lineage=lineage,
        origin=origin,
        start=start,
        base_version=base,
        version=version,
        n_users=0,
        n_items=0,
        trained_events=0,
    )


@pytest.mark.parametrize(
    ("chain", "delta", "step"),
    [
        (Chain("L", 5, None), d(), "apply"),
        (Chain("L", 6, None), d(), "skip"),
        (Chain("L", 4, None), d(), "resync"),
        (Chain("L", 4, None, pinned=True), d(), "ignore"),
        (Chain("L", 5, 5, pinned=True), d(), "apply"),
        # a new run that began from the snapshot served, untouched: join it
        (Chain("old", 3, 3), d("L", 3, 4), "join"),
        (Chain("old", 7, 3, pinned=True), d("L", 3, 4), "join"),
        (Chain(), d("L", 0, 1, origin=FRESH, start=0), "join"),
        # ... from another snapshot: load that one first
        (Chain("old", 9, None), d("L", 3, 4), "reload_origin"),
        (Chain("old", 9, None, pinned=True), d("L", 3, 4), "ignore"),
        # mid-chain of a run we never saw: resync from the store
        (Chain("old", 9, None), d("L", 5, 6), "resync"),
        # catching up to a target lineage: others are skipped, even our own
        (Chain("old", 3, 3, target="L"), d("old", 3, 4), "skip"),
        (Chain("old", 3, 3, target="L"), d("L", 3, 4), "join"),
        # a delta must make exactly the next version: a forged huge one is refused, on the
        # live lineage (it would make every real delta after it look applied) or another
        (Chain("L", 5, None), d("L", 5, 10**15), "refuse"),
        (Chain("L", 5, None), d("L", 5, 7), "refuse"),
        (Chain("L", 5, 5, pinned=True), d("L", 5, 10**15), "refuse"),
        (Chain("L", 5, None), d("L", 5, 10**15, origin=5, start=5), "refuse"),
        (Chain("old", 3, 3), d("L", 4, 10**15), "refuse"),
        (Chain("old", 3, 3, target="L"), d("L", 4, 10**15), "refuse"),
        # ... but a run's first delta may continue after the store's newest version
        (Chain("old", 3, 3), d("L", 3, 9), "join"),
        (Chain(), d("L", 0, 2, origin=FRESH, start=0), "join"),
    ],
)
def test_next_step(chain, delta, step):
    assert next_step(chain, delta) == step


def test_a_refused_delta_leaves_the_chain_to_the_real_ones():
    chain = Chain("L", 5, None)
    assert next_step(chain, d("L", 5, 10**15)) == "refuse"  # the scorer keeps `chain`
    real = d("L", 5, 6)
    assert next_step(chain, real) == "apply"
    assert next_step(chain.applied(real), d("L", 6, 7)) == "apply"


@settings(max_examples=300, deadline=None)
@given(
    served=st.integers(0, 10**6),
    base=st.integers(0, 10**6),
    start=st.integers(0, 10**6),
    ahead=st.integers(1, 10**30),
    lineage=st.sampled_from(["L", "other"]),
    pinned=st.booleans(),
)
def test_only_a_one_version_step_is_ever_applied(served, base, start, ahead, lineage, pinned):
    """On the live lineage, or mid-run on another, only version = base + 1 is followed."""
    chain = Chain("L", served, None, pinned)
    step = next_step(chain, d(lineage, base, base + ahead, origin=start, start=start))
    first_of_run = lineage != "L" and base == start
    if step in ("apply", "join", "resync", "reload_origin") and not first_of_run:
        assert ahead == 1
    if ahead != 1 and not first_of_run:
        assert step == "refuse"


def test_chain_after_apply_forgets_the_snapshot_and_target():
    chain = Chain("L", 5, 5, target="L").applied(d())
    assert chain == Chain("L", 6, None, False, None)
