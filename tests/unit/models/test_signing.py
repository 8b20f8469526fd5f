"""models.signing: deltas, announcements and snapshot manifests signed with HMAC-SHA256."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import ModelConfig
from models.events import Rating
from models.incremental import IncrementalModel
from models.signing import DEV_KEY, Keyring, SignatureError, key_id, parse_keys, seal, verify
from models.snapshot import SnapshotError, UntrustedSnapshot, load_scoring_view, sign_manifest
from models.wire import ModelDelta, ModelUpdate, Undecodable, open_delta, seal_delta

OLD = Keyring(b"old-key-0123456789abcdef")
NEW = Keyring(b"new-key-0123456789abcdef")
ROTATING = Keyring(NEW.signing, (OLD.signing,))  # signs with new, still verifies old


@pytest.fixture(scope="module")
def model() -> IncrementalModel:
    model = IncrementalModel(ModelConfig(no_components=4, initial_capacity=4))
    events = [
        Rating(f"e{i}", f"u{i % 7}", f"item-{i % 5}", float(1 + i % 5), 1000.0 + i)
        for i in range(40)
    ]
    model.train_batch(events)
    model.view()
    return model


@pytest.fixture(scope="module")
def snapshot(model) -> tuple[bytes, dict]:
    payload, manifest = model.to_bytes()
    return payload, sign_manifest(manifest, OLD)


def update(**extra) -> ModelUpdate:
    manifest = {"version": 7, "sha256": "ab" * 32, "trained_events": 99}
    manifest["delta_chain"] = {"lineage": "L", "version": 7, "offset": 3}
    return ModelUpdate.from_manifest("s3://b/models/7", manifest, **{"reason": "rollback", **extra})


# --- keys ---------------------------------------------------------------------------------
def test_key_ids_are_public_names_not_the_key():
    assert key_id(b"k" * 20) == key_id(b"k" * 20) != key_id(b"j" * 20)
    assert len(key_id(b"k" * 20)) == 8 and "k" not in repr(Keyring(b"k" * 20))
    assert ROTATING.key_ids == (NEW.signing_id, OLD.signing_id)
    assert Keyring.dev().signing == DEV_KEY


def test_parse_keys_skips_blanks_and_comments():
    assert parse_keys(["# rotation\n", "  \n", " first-key \n", "second"]) == (
        b"first-key",
        b"second",
    )


def test_empty_keys_are_refused():
    with pytest.raises(ValueError):
        Keyring(b"")
    with pytest.raises(ValueError):
        Keyring(b"k" * 16, (b"",))


# --- the binary envelope (deltas) --------------------------------------------------------
def test_seal_then_verify_gives_the_payload():
    assert verify(seal(b"payload", OLD, purpose="delta"), OLD, purpose="delta") == b"payload"


@pytest.mark.parametrize(
    ("message", "keys", "purpose", "kind"),
    [
        (None, OLD, "delta", "unsigned"),
        (b"", OLD, "delta", "unsigned"),
        (b"SRDELTA1" + b"\0" * 100, OLD, "delta", "unsigned"),  # a pre-signing delta
        (seal(b"x", NEW, purpose="delta"), OLD, "delta", "unknown_key"),
        (seal(b"x", OLD, purpose="model-update"), OLD, "delta", "bad_signature"),
    ],
)
def test_verify_refuses(message, keys, purpose, kind):
    with pytest.raises(SignatureError) as err:
        verify(message, keys, purpose=purpose)
    assert err.value.kind == kind


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=300), data=st.data())
def test_any_byte_tampered_anywhere_is_refused(payload, data):
    sealed = seal(payload, OLD, purpose="delta")
    at = data.draw(st.integers(0, len(sealed) - 1), label="at")
    flip = data.draw(st.integers(1, 255), label="flip")
    tampered = bytearray(sealed)
    tampered[at] ^= flip
    with pytest.raises(SignatureError):
        verify(bytes(tampered), OLD, purpose="delta")
    cut = data.draw(st.integers(0, len(sealed) - 1), label="cut")
    with pytest.raises(SignatureError):  # truncated, or bytes appended
        verify(sealed[:cut], OLD, purpose="delta")
    with pytest.raises(SignatureError):
        verify(sealed + data.draw(st.binary(min_size=1, max_size=8)), OLD, purpose="delta")


@given(st.binary(max_size=400))
def test_any_bytes_are_refused_never_crash(raw):
    with pytest.raises(SignatureError):
        verify(raw, OLD, purpose="delta")


def test_a_delta_decoded_and_encoded_again_keeps_its_signature(model):
    delta = model.last_delta
    sealed = seal_delta(delta.encode(), OLD)
    again = ModelDelta.decode(open_delta(sealed, OLD))
    assert seal_delta(again.encode(), OLD) == sealed


# --- announcements (JSON) ----------------------------------------------------------------
def test_a_signed_announcement_survives_the_wire():
    signed = update(created_at="2026-12-07T10:00:00.000+00:00", hit_rate=0.125).signed(OLD)
    _, value = signed.encode()
    back = ModelUpdate.parse(value)
    back.check(OLD)
    _, again = back.encode()  # encode after decode: still valid
    ModelUpdate.parse(again).check(OLD)
    assert back == signed


def test_unsigned_and_foreign_announcements_are_refused():
    for candidate, kind in (
        (update(), "unsigned"),
        (update().signed(NEW), "unknown_key"),
        (update(reason="promote").signed(OLD), None),
    ):
        if kind is None:
            candidate.check(OLD)
            continue
        with pytest.raises(SignatureError) as err:
            candidate.check(OLD)
        assert err.value.kind == kind


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_byte_tampered_in_an_announcement_is_refused(data):
    signed = update(note=data.draw(st.text(max_size=20), label="note")).signed(OLD)
    _, value = signed.encode()
    at = data.draw(st.integers(0, len(value) - 1), label="at")
    tampered = bytearray(value)
    tampered[at] ^= data.draw(st.integers(1, 255), label="flip")
    try:
        back = ModelUpdate.parse(bytes(tampered))
        back.check(OLD)
    except (Undecodable, SignatureError):
        return
    assert back == signed  # only a change that means the same (e.g. \u001f vs \u001F)


def test_a_signature_has_one_spelling() -> None:
    """Hex is case-blind; a signature is not: its one spelling is lowercase, so a parsed
    and re-encoded announcement is the one that was signed (hypothesis found an upper-case
    digit that verified and compared unequal)."""
    signed = update().signed(OLD)
    kid, _, mac = signed.signature.partition(":")
    upper = replace(signed, signature=f"{kid}:{mac.upper()}")
    assert mac != mac.upper()
    with pytest.raises(SignatureError, match="malformed signature"):
        upper.check(OLD)


# --- snapshots ---------------------------------------------------------------------------
def test_a_signed_snapshot_loads(snapshot, model):
    view, _ = load_scoring_view(*snapshot, OLD)
    assert view.version == model.version
    assert IncrementalModel.from_bytes(*snapshot, OLD).version == model.version


def test_unsigned_snapshots_are_refused_unless_allowed(model):
    payload, manifest = model.to_bytes()
    with pytest.raises(UntrustedSnapshot, match="unsigned"):
        load_scoring_view(payload, manifest, OLD)
    with pytest.raises(SnapshotError, match="unsigned"):
        IncrementalModel.from_bytes(payload, manifest, OLD)
    legacy = Keyring(OLD.signing, allow_unsigned_snapshots=True)
    load_scoring_view(payload, manifest, legacy)  # an explicit setting lets old stores load
    wrong = sign_manifest(manifest, NEW)
    with pytest.raises(UntrustedSnapshot, match="unknown_key"):
        load_scoring_view(payload, wrong, legacy)  # ... but never a wrong signature


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(version=m["version"] + 1),
        lambda m: m.update(sha256="0" * 64),
        lambda m: m["offsets"].update({"ratings:0": 10**9}),
        lambda m: m.update(signature=m["signature"][:-1] + "01"[m["signature"][-1] == "0"]),
        lambda m: m.update(extra_field=1),
    ],
)
def test_a_tampered_manifest_is_refused(snapshot, change):
    payload, manifest = snapshot
    tampered = json.loads(json.dumps(manifest))
    change(tampered)
    assert tampered != manifest
    with pytest.raises(SnapshotError):
        load_scoring_view(payload, tampered, OLD)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_byte_of_a_stored_manifest_tampered_is_refused(snapshot, data):
    payload, manifest = snapshot
    text = bytearray(json.dumps(manifest, sort_keys=True, indent=2).encode())  # as stored
    at = data.draw(st.integers(0, len(text) - 1), label="at")
    text[at] ^= data.draw(st.integers(1, 255), label="flip")
    try:
        tampered = json.loads(bytes(text))
    except ValueError:
        return  # the store refuses it as unreadable
    if tampered == manifest:
        return  # whitespace: the same manifest
    with pytest.raises(SnapshotError):
        load_scoring_view(payload, tampered, OLD)


def test_a_payload_checked_by_the_store_is_not_hashed_again_but_its_manifest_is_verified(
    snapshot,
):
    """``payload_checked`` (a store's ``get`` checked the payload's sha256) skips only the
    hash: the manifest's signature (over its sha256 too) still decides."""
    payload, manifest = snapshot
    view, _ = load_scoring_view(payload[:-1] + b"?", manifest, OLD, payload_checked=True)
    assert view.n_users > 0  # not hashed: the caller vouches for the payload
    for change in (
        lambda m: m.update(sha256="0" * 64),
        lambda m: m.update(version=m["version"] + 1),
        lambda m: m.pop("signature"),
    ):
        tampered = json.loads(json.dumps(manifest))
        change(tampered)
        with pytest.raises(UntrustedSnapshot):
            load_scoring_view(payload, tampered, OLD, payload_checked=True)


def test_a_tampered_payload_is_refused(snapshot):
    payload, manifest = snapshot
    with pytest.raises(SnapshotError, match="checksum"):
        load_scoring_view(payload[:-1] + bytes([payload[-1] ^ 1]), manifest, OLD)


# --- rotation ----------------------------------------------------------------------------
def test_rotation_accepts_old_and_new_then_only_new(model):
    payload, manifest = model.to_bytes()
    by_old, by_new = sign_manifest(manifest, OLD), sign_manifest(manifest, ROTATING)
    delta_old = seal_delta(model.last_delta.encode(), OLD)
    delta_new = seal_delta(model.last_delta.encode(), ROTATING)
    # step 1: every scorer verifies with both (signing key new or old, verify-keys the other)
    for keys in (ROTATING, Keyring(OLD.signing, (NEW.signing,))):
        for signed in (by_old, by_new):
            load_scoring_view(payload, signed, keys)
        for sealed in (delta_old, delta_new):
            open_delta(sealed, keys)
        for announcement in (update().signed(OLD), update().signed(NEW)):
            announcement.check(keys)
    # step 3: the old key dropped: what it signed is refused
    load_scoring_view(payload, by_new, NEW)
    with pytest.raises(UntrustedSnapshot, match="unknown_key"):
        load_scoring_view(payload, by_old, NEW)
    with pytest.raises(SignatureError):
        open_delta(delta_old, NEW)
    with pytest.raises(SignatureError):
        update().signed(OLD).check(NEW)


HOSTILE = st.one_of(
    st.integers(min_value=-(10**5000), max_value=10**5000),
    st.floats(),
    st.text(alphabet=st.characters(codec=None, categories=None)),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.dictionaries(
        st.sampled_from(
            ["version", "uri", "sha256", "trained_events", "metrics", "lineage", "signature"]
        ),
        HOSTILE,
    ),
    huge=st.booleans(),
)
def test_any_announcement_is_parsed_or_refused_never_a_crash(fields, huge):
    """Anyone can write to model-updates: huge integers, NaN, lone surrogates, wrong types
    are Undecodable or unsigned (on main some raised ValueError/OverflowError, which
    restarted the follower in a loop)."""
    body = {"version": 3, **fields}
    if huge:
        body["metrics"] = {"reason": "rollback", "n": 10**5000}
    try:
        text = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    except ValueError:  # the stdlib refuses to write integers past 4,300 digits itself
        text = b'{"version": 3, "trained_events": ' + b"9" * 5000 + b"}"
    try:
        update = ModelUpdate.parse(text)
    except Undecodable:
        return
    with pytest.raises(SignatureError):
        update.check(OLD)
