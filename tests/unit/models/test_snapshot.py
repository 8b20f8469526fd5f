import copy
import hashlib
import io
import json
import sys
import zipfile

import numpy as np
import pytest

from models import snapshot
from models.config import ModelConfig
from models.events import Rating
from models.incremental import IncrementalModel
from models.snapshot import FORMAT, STATE_ARRAYS, SnapshotError


@pytest.fixture(scope="module")
def model() -> IncrementalModel:
    model = IncrementalModel(ModelConfig(no_components=4, initial_capacity=4))
    events = [
        Rating(f"e{i}", f"u{i % 7}", f"Amélie-{i % 5}", float(1 + i % 5), 1000.0 + i)
        for i in range(60)
    ]
    model.train_batch(events)
    model.offsets.update({"ratings:0": 40, "ratings:1": 20})
    model.view()  # as the trainer does after every batch: the changes went into a delta
    return model


@pytest.fixture(scope="module")
def good(model) -> tuple[bytes, dict]:
    return model.to_bytes()


def state_of(good) -> snapshot.SnapshotState:
    return snapshot.decode(*good)


def reencode(state: snapshot.SnapshotState) -> tuple[bytes, dict]:
    """A snapshot whose checksum and manifest are consistent with a tampered state."""
    return snapshot.encode(state)


def rezip(payload: bytes, replace: dict[str, bytes], compress=False) -> bytes:
    """Rebuild the zip with some raw .npy entries replaced (None removes one)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(payload)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            name = info.filename.removesuffix(".npy")
            data = replace.get(name, src.read(info))
            if data is not None:
                kind = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
                dst.writestr(info.filename, data, compress_type=kind)
        for name, data in replace.items():
            if f"{name}.npy" not in src.namelist() and data is not None:
                dst.writestr(f"{name}.npy", data)
    return out.getvalue()


def with_checksum(payload: bytes, manifest: dict) -> tuple[bytes, dict]:
    return payload, {**manifest, "sha256": hashlib.sha256(payload).hexdigest()}


def npy(array: np.ndarray, allow_pickle=False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def test_round_trip_restores_everything(model, good):
    payload, manifest = good
    assert json.loads(json.dumps(manifest)) == manifest  # JSON-serialisable
    for key in ("version", "sha256", "created_at", "offsets", "trained_events", "n_users"):
        assert key in manifest
    assert manifest["format"] == FORMAT
    assert manifest["sha256"] == hashlib.sha256(payload).hexdigest()
    assert set(manifest["library_versions"]) >= {"lightfm-next", "numpy", "python"}
    restored = IncrementalModel.from_bytes(payload, json.loads(json.dumps(manifest)))
    assert restored.config == model.config
    assert (restored.version, restored.trained_events) == (model.version, model.trained_events)
    assert restored.offsets == model.offsets
    assert restored.items.ids() == model.items.ids()
    for name in STATE_ARRAYS:
        np.testing.assert_array_equal(restored.state_arrays()[name], model.state_arrays()[name])
    assert restored.view().recommend("u1").items == model.view().recommend("u1").items
    assert restored.view().popular(3) == model.view().popular(3)


def test_same_state_gives_the_same_bytes(model, good):
    assert model.to_bytes()[0] == good[0]


def test_empty_model_round_trips():
    payload, manifest = IncrementalModel(ModelConfig()).to_bytes()
    restored = IncrementalModel.from_bytes(payload, manifest)
    assert (restored.n_users, restored.n_items, restored.version) == (0, 0, 0)


def test_bad_checksum_is_refused(good):
    payload, manifest = good
    corrupted = bytearray(payload)
    corrupted[len(corrupted) // 2] ^= 0x01
    with pytest.raises(SnapshotError, match="checksum mismatch"):
        IncrementalModel.from_bytes(bytes(corrupted), manifest)


def test_not_a_zip_is_refused(good):
    with pytest.raises(SnapshotError, match="not a valid npz"):
        IncrementalModel.from_bytes(*with_checksum(b"garbage", good[1]))


LOADERS = [IncrementalModel.from_bytes, snapshot.load_scoring_view]  # copies, views


@pytest.mark.parametrize("load", LOADERS)
def test_pickled_object_array_is_refused(good, load):
    payload = rezip(good[0], {"user_biases": npy(np.array([{"x": 1}], dtype=object), True)})
    with pytest.raises(SnapshotError, match="object array"):
        load(*with_checksum(payload, good[1]))


@pytest.mark.parametrize("load", LOADERS)
def test_a_header_that_declares_more_than_is_stored_is_refused(good, load):
    forged = npy(np.zeros(3, dtype=np.float32)).replace(b"(3,)", b"(9999999,)")
    payload = rezip(good[0], {"item_biases": forged})
    with pytest.raises(SnapshotError, match="declares more data"):
        load(*with_checksum(payload, good[1]))


@pytest.mark.parametrize(
    ("name", "mutate", "message"),
    [
        ("item_embeddings", lambda a: a.astype(np.float64), "dtype float64, expected float32"),
        ("user_biases", lambda a: a.astype(np.float16), "dtype float16"),
        ("item_biases", lambda a: a[:-1], "shape"),
        ("user_embeddings", lambda a: a[:, :2].copy(), "shape"),
        ("user_embeddings", lambda a: np.where(a > 0, np.nan, a).astype(np.float32), "NaN"),
        ("item_bias_momentum", lambda a: np.full_like(a, np.inf), "NaN or infinite"),
        ("item_embedding_gradients", lambda a: np.zeros_like(a), "adagrad accumulators"),
        ("popularity", lambda a: -a, "must be >= 0"),
        ("user_positives", lambda a: a.astype(np.int32), "dtype int32"),
    ],
)
def test_bad_arrays_are_refused(good, name, mutate, message):
    state = state_of(good)
    state.arrays = {**state.arrays, name: mutate(state.arrays[name])}
    with pytest.raises(SnapshotError, match=message):
        IncrementalModel.from_bytes(*reencode(state))


def test_missing_array_is_refused(good):
    payload = rezip(good[0], {"item_bias_gradients": None})
    with pytest.raises(SnapshotError, match=r"missing \['item_bias_gradients'\]"):
        IncrementalModel.from_bytes(*with_checksum(payload, good[1]))


def test_unexpected_array_is_refused(good):
    payload = rezip(good[0], {"extra": npy(np.zeros(3))})
    with pytest.raises(SnapshotError, match=r"unexpected \['extra'\]"):
        IncrementalModel.from_bytes(*with_checksum(payload, good[1]))


def test_compressed_entries_are_refused(good):
    with pytest.raises(SnapshotError, match="compressed"):
        IncrementalModel.from_bytes(*with_checksum(rezip(good[0], {}, compress=True), good[1]))


def test_forged_array_header_is_refused(good):
    forged = bytearray(npy(np.zeros(3, np.float32)))
    header_end = forged.index(b"\n") + 1
    header = forged[:header_end].replace(b"(3,)", b"(9999999999,)")
    payload = rezip(good[0], {"item_biases": bytes(header + forged[header_end:])})
    with pytest.raises(SnapshotError, match="declares more data"):
        IncrementalModel.from_bytes(*with_checksum(payload, good[1]))


def test_duplicate_ids_are_refused(good):
    state = state_of(good)
    state.item_ids = [state.item_ids[0]] * len(state.item_ids)
    with pytest.raises(SnapshotError, match="item_ids contains duplicates"):
        IncrementalModel.from_bytes(*reencode(state))


def test_id_count_must_match(good):
    state = state_of(good)
    state.user_ids = [*state.user_ids, "one-more"]
    with pytest.raises(SnapshotError, match="shape"):
        IncrementalModel.from_bytes(*reencode(state))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "3"}, "'version' must be int"),
        ({"version": True}, "'version' must be int"),
        ({"format": "pickle/1"}, "unknown snapshot format"),
        ({"sha256": "ABC"}, "64 lowercase hex"),
        ({"offsets": {"ratings:0": "40"}}, "offsets"),
        ({"n_users": -1}, "must be >= 0"),
        ({"version": 99}, "manifest version 99 != payload"),
        ({"offsets": {"ratings:0": 41, "ratings:1": 20}}, "manifest offsets"),
        ({"config": {**ModelConfig(no_components=4).to_dict(), "loss": "bpr"}}, "manifest config"),
    ],
)
def test_bad_manifests_are_refused(good, change, message):
    payload, manifest = good
    with pytest.raises(SnapshotError, match=message):
        IncrementalModel.from_bytes(payload, {**manifest, **change})


def test_missing_manifest_key_is_refused(good):
    payload, manifest = good
    manifest = copy.deepcopy(manifest)
    del manifest["created_at"]
    with pytest.raises(SnapshotError, match="missing 'created_at'"):
        IncrementalModel.from_bytes(payload, manifest)
    with pytest.raises(SnapshotError, match="JSON object"):
        IncrementalModel.from_bytes(payload, [])  # type: ignore[arg-type]


def test_bad_config_in_payload_is_refused(good):
    state = state_of(good)
    payload, manifest = reencode(state)
    meta = json.loads(np.load(io.BytesIO(payload))["meta"].tobytes())
    meta["config"]["loss"] = "hinge"
    payload = rezip(payload, {"meta": npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))})
    manifest = {**manifest, "config": meta["config"]}
    with pytest.raises(SnapshotError, match="bad model config"):
        IncrementalModel.from_bytes(*with_checksum(payload, manifest))


def test_scoring_load_reads_only_the_scoring_arrays(model, good):
    payload, manifest = good
    view, chain = snapshot.load_scoring_view(payload, manifest)
    full = model.full_view()
    for name, array in full.scoring_arrays().items():
        np.testing.assert_array_equal(array, view.scoring_arrays()[name], err_msg=name)
    assert view.user_ids() == full.user_ids() and chain["lineage"] == model.lineage
    scoring = snapshot.decode_scoring(payload, manifest)
    assert set(scoring.arrays) == set(snapshot.SCORING_ARRAYS)
    # A broken training array (consistent checksum): the trainer refuses it, a scorer
    # never even reads it ...
    state = state_of(good)
    state.arrays["user_embedding_gradients"] = -state.arrays["user_embedding_gradients"]
    tampered = reencode(state)
    with pytest.raises(SnapshotError, match="accumulators"):
        snapshot.decode(*tampered)
    snapshot.decode_scoring(*tampered)
    # ... but the checksum still covers the whole payload.
    bad = bytearray(payload)
    bad[-100] ^= 1
    with pytest.raises(SnapshotError, match="checksum"):
        snapshot.decode_scoring(bytes(bad), manifest)


def test_scoring_load_copies_nothing_it_does_not_keep(good):
    payload, manifest = good
    scoring = snapshot.decode_scoring(payload, manifest)
    whole = np.frombuffer(payload, dtype=np.uint8)
    for name, array in scoring.arrays.items():  # read in place, not copied
        assert np.shares_memory(array, whole) and not array.flags.writeable, name
    del scoring
    before = sys.getrefcount(payload)
    view, _ = snapshot.load_scoring_view(payload, manifest)
    assert sys.getrefcount(payload) == before  # the view holds no part of the payload
    assert view.n_users > 0


def test_bad_delta_chain_is_refused(good):
    state = state_of(good)
    state.chain = {"lineage": 5, "version": 1, "offset": None}
    with pytest.raises(SnapshotError, match="delta_chain"):
        snapshot.decode(*reencode(state))
