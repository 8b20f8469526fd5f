"""A scorer's share (issue 19): the partition rule is the producers', and a view that holds
some partitions' users scores them exactly as the full view does, through deltas, loads
and narrowing."""

import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as kafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from models.delta import ModelDelta
from models.errors import SnapshotError
from models.idmap import encode_strings
from models.incremental import IncrementalModel
from models.ownership import Share, key_hashes, murmur2, partition_of, partitions_of
from models.scoring import ScoringView
from models.segment import assemble, decode_chain, decode_segment, load_chain_view
from models.snapshot import load_scoring_view
from tests.unit.models import test_segment as segment_tests
from tests.unit.models.test_delta import assert_same_view, trained
from tests.unit.models.test_incremental import ratings


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_murmur2_is_kafkas(data):
    assert murmur2(data) == kafka_murmur2(data) & 0xFFFFFFFF


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=30), st.integers(1, 64))
def test_partitions_are_the_default_partitioners(users, n):
    """Any unicode (lone surrogates too: ids are canonical strings, which encode_strings
    refuses with the rest of the id rules) lands where a keyed producer puts it."""
    try:
        keys = [u.encode("utf-8") for u in users]
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            partitions_of(users, n)
        return
    every = list(range(n))
    expected = [DefaultPartitioner()(k, every, every) for k in keys]
    assert partitions_of(users, n).tolist() == expected
    assert [partition_of(u, n) for u in users] == expected
    blob, offsets = encode_strings(users)
    assert [int(h) for h in key_hashes(blob, offsets)] == [
        kafka_murmur2(k) & 0xFFFFFFFF for k in keys
    ]


def test_share_rules():
    assert Share.of(4, range(4)).everything
    assert Share.of(4, {1, 2}).covers(Share.of(4, {2}))
    assert not Share.of(4, {1}).covers(Share.of(4, {1, 2}))
    assert not Share.of(4, {1}).covers(Share.of(2, {1}))
    with pytest.raises(ValueError):
        Share.of(4, {4})
    with pytest.raises(ValueError):
        Share.of(0, ())


def _held_users(view: ScoringView, share: Share) -> list[str]:
    return [u for u in view.user_ids() if share.holds(u)]


def _same_for_share(full: ScoringView, part: ScoringView, share: Share) -> None:
    """``part`` holds exactly ``share``'s users of ``full``, with the same rows and items."""
    assert part.version == full.version and part.item_ids() == full.item_ids()
    assert part.model_users == full.n_users
    held = _held_users(full, share)
    assert part.user_ids() == held
    assert 0 < len(held) < full.n_users  # the test data have users on both sides
    a, b = full.scoring_arrays(), part.scoring_arrays()
    rows = [full.user_ids().index(u) for u in held]
    for name in ("user_embeddings", "user_biases", "user_positives"):
        np.testing.assert_array_equal(a[name][rows], b[name], err_msg=name)
    for name in ("item_embeddings", "item_biases", "popularity"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for user in full.user_ids()[:20]:
        got = part.recommend(user, exclude=["i1"])
        if share.holds(user):
            assert got == full.recommend(user, exclude=["i1"])
        else:
            assert got.source == "popularity"


SHARE = Share.of(4, {0, 3})


def test_deltas_keep_only_the_shares_rows():
    model, deltas = trained(4)
    view = ScoringView.empty(8, share=SHARE)
    for n, delta in enumerate(deltas):
        view = view.with_delta(ModelDelta.decode(delta.encode()), join=(n == 0))
    _same_for_share(model.full_view(), view, SHARE)


def test_a_shares_load_plus_deltas_equals_the_model_restricted():
    model, _ = trained(2)
    payload, manifest = model.to_bytes()
    view, _ = load_scoring_view(payload, manifest, share=SHARE)
    _same_for_share(model.full_view(), view, SHARE)
    _, later = trained(3, model, seed=10)  # new users and old ones touched
    for delta in later:
        view = view.with_delta(delta)
    _same_for_share(model.full_view(), view, SHARE)
    whole, _ = load_scoring_view(*model.to_bytes())
    assert_same_view(whole, model.full_view())


def test_restricting_drops_the_revoked_users_and_deltas_go_on():
    model, _ = trained(2)
    full, _ = load_scoring_view(*model.to_bytes())
    three = full.restricted(Share.of(4, {0, 2, 3}))
    view = three.restricted(SHARE)  # a share of a share
    _same_for_share(model.full_view(), view, SHARE)
    _, later = trained(2, model, seed=20)
    for delta in later:
        view = view.with_delta(delta)
    _same_for_share(model.full_view(), view, SHARE)
    with pytest.raises(ValueError):
        view.restricted(Share.of(4, {1}))  # it never held partition 1


def test_the_empty_share_holds_no_user_but_every_item():
    model, _ = trained(2)
    view, _ = load_scoring_view(*model.to_bytes(), share=Share.of(4, ()))
    assert view.n_users == 0 and view.model_users == model.n_users
    assert view.item_ids() == model.full_view().item_ids()
    assert view.recommend("u1").source == "popularity"


def test_every_partitions_share_loads_every_user_without_hashing_an_id(monkeypatch):
    """A survivor owning every partition (issue 19's leave at 1M users) holds every user:
    no id is hashed to find them, and the view is the full load's, with deltas on top."""
    import models.snapshot

    model, _ = trained(2)
    payload, manifest = model.to_bytes()
    whole, _ = load_scoring_view(payload, manifest)

    def no_hashing(*_: object) -> None:
        raise AssertionError("hashed the ids of a share of every partition")

    monkeypatch.setattr(models.snapshot, "key_hashes", no_hashing)
    every = Share.of(4, range(4))
    view, _ = load_scoring_view(payload, manifest, share=every)
    assert view.share == every
    assert_same_view(view, whole)
    _, later = trained(2, model, seed=30)
    for delta in later:
        view = view.with_delta(delta)
    assert_same_view(view, model.full_view())


def test_a_checkpoint_chain_loads_only_the_shares_users():
    """A base and its segments (new users in both): the base's other ids are never
    decoded, the segments' new ones are filtered, and the rows are the full chain's."""
    model = IncrementalModel(segment_tests.CONFIG)
    model.train_batch(ratings(6, 12, 60, seed=3, prefix="base-"))  # u0..u5; then u6..
    model.view()
    written = segment_tests.chain(model, 6)
    assert len(written) > 2
    assert len(decode_chain(written[:1]).user_ids) < len(decode_chain(written).user_ids)
    full, mark = load_chain_view(written)
    part, share_mark = load_chain_view(written, None, SHARE)
    assert share_mark == mark
    _same_for_share(full, part, SHARE)
    state = decode_chain(written, training=False, share=SHARE)
    assert state.user_ids == part.user_ids()  # only the share's ids were kept
    base = decode_chain(written[:1], training=False, share=SHARE)
    with pytest.raises(SnapshotError, match="needs the share"):  # a share's base, no share
        assemble(base, [decode_segment(*written[1])], training=False)
