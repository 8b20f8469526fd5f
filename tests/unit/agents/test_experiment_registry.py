"""The experiments registry: signed records only, no tombstones, no replays."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.experiment_registry import ExperimentRegistry, decode_signed, encode_signed
from models.experiment import Experiment, Variant
from models.signing import Keyring

KEYS = Keyring(b"k" * 32)
OTHER = Keyring(b"o" * 32)


def exp(name: str = "blend", start: float = 1000.0, **kw) -> Experiment:
    return Experiment(name, Variant(), Variant(blend_weight=0.3), "ab", 0.5, start, **kw)


def test_a_signed_record_reads_back_and_is_applied():
    registry = ExperimentRegistry(KEYS)
    key, value = encode_signed(exp(), KEYS)
    assert decode_signed(key, value, KEYS) == exp()
    assert registry.apply(key, value) == exp()
    assert registry.running() == [exp()]


def test_unsigned_forged_and_misaddressed_records_change_nothing():
    registry = ExperimentRegistry(KEYS)
    registry.apply(*encode_signed(exp(), KEYS))
    stopped = exp().with_status("stopped", "x")
    key, value = stopped.encode()  # unsigned
    assert registry.apply(key, value) is None
    assert registry.apply(*encode_signed(stopped, OTHER)) is None  # another key
    body = json.loads(encode_signed(stopped, KEYS)[1])
    body["share"] = 1.0  # tampered after signing
    assert registry.apply(key, json.dumps(body).encode()) is None
    assert registry.apply(b"other-name", encode_signed(stopped, KEYS)[1]) is None
    assert registry.apply(key, None) is None  # a tombstone
    assert registry.get("blend") == exp() and registry.get("blend").running
    assert set(registry.refused) == {"unsigned", "unknown_key", "bad_signature", "invalid", "empty"}


def test_a_replayed_running_record_does_not_revive_a_stopped_experiment():
    registry = ExperimentRegistry(KEYS)
    running = encode_signed(exp(), KEYS)
    registry.apply(*running)
    registry.apply(*encode_signed(exp().with_status("guardrail-stopped", "worse"), KEYS))
    assert registry.apply(*running) is None
    assert registry.get("blend").status == "guardrail-stopped"
    assert registry.apply(*encode_signed(exp(start=500.0), KEYS)) is None  # older
    assert registry.apply(*encode_signed(exp(start=2000.0), KEYS)) == exp(start=2000.0)
    assert registry.running() == [exp(start=2000.0)]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.binary(max_size=600)), st.one_of(st.none(), st.binary(max_size=600)))
def test_any_bytes_are_refused_or_applied_never_raise(key, value):
    registry = ExperimentRegistry(KEYS)
    assert registry.apply(key, value) is None
    assert registry.experiments == {}


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=30),
    st.one_of(st.floats(), st.integers(min_value=-(10**5000), max_value=10**5000)),
)
def test_hostile_fields_in_a_signed_record_are_refused(name, share):
    from models.signing import sign_fields

    body = {
        "name": name,
        "control": {},
        "candidate": {"blend_weight": 0.3},
        "method": "ab",
        "share": share,
        "start": 1.0,
    }
    try:
        body["signature"] = sign_fields(body, KEYS, purpose="experiment")
        value = json.dumps(body).encode("utf-8", "surrogatepass")
    except (ValueError, TypeError, OverflowError):
        return  # not even encodable as JSON
    registry = ExperimentRegistry(KEYS)
    got = registry.apply(name.encode("utf-8", "surrogatepass"), value)
    if got is not None:
        assert 0 < got.share <= 1 and got.name == name
        assert decode_signed(*encode_signed(got, KEYS), KEYS) == got
