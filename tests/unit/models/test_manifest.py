"""The snapshot manifest and its delta-chain mark as typed records (models.manifest): what
the trainer writes parses to itself, byte for byte; a missing or renamed field is refused
by name; whatever the world stores is refused with SnapshotError and nothing else."""

from __future__ import annotations

import contextlib
import json
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.config import ModelConfig
from models.errors import SnapshotError
from models.incremental import IncrementalModel
from models.manifest import FORMAT, ChainMark, Manifest, parse_chain_mark, parse_manifest
from models.signing import Keyring
from models.snapshot import sign_manifest
from tests.unit.hostile import ANY_TEXT, HUGE_INTS, JSON, RAW
from tests.unit.models.test_incremental import SMALL, ratings

FIELDS = Manifest.__required_keys__ | Manifest.__optional_keys__

#: Huge ints and long texts are slow to draw on a shared machine: no per-example deadline.
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def canonical(obj: object) -> bytes:
    """The bytes the store writes (and the signature covers, but for its indent)."""
    return json.dumps(obj, sort_keys=True, indent=2, allow_nan=False).encode()


@pytest.fixture(scope="module")
def written() -> list[dict]:
    """Manifests as the trainer writes them: without a chain mark, with one, signed."""
    model = IncrementalModel(ModelConfig(**SMALL))
    model.train_batch(ratings(5, 5, 20))
    unchained = model.to_bytes()[1]
    model.view()
    model.delta_offset = 17
    chained = model.to_bytes()[1]
    return [unchained, chained, sign_manifest(chained, Keyring.dev())]


def test_a_written_manifest_parses_to_itself_and_uses_only_typed_fields(written) -> None:
    for manifest in written:
        parsed = parse_manifest(json.loads(canonical(manifest)))
        assert parsed == manifest and canonical(parsed) == canonical(manifest)
        assert set(manifest) <= FIELDS  # a field renamed by the writer is not typed: fails here
    assert written[1]["delta_chain"] == parse_chain_mark(written[1]["delta_chain"])


def test_a_missing_or_renamed_field_is_refused_by_name(written) -> None:
    for manifest in written:
        for key in sorted(Manifest.__required_keys__):
            without = {k: v for k, v in manifest.items() if k != key}
            for broken in (without, {**without, f"{key}s": manifest[key]}):
                with pytest.raises(SnapshotError, match=f"manifest is missing '{key}'"):
                    parse_manifest(broken)
    chain = written[1]["delta_chain"]
    for key in chain:
        renamed = {("_" + k if k == key else k): v for k, v in chain.items()}
        with pytest.raises(SnapshotError, match="delta_chain must be"):
            parse_chain_mark(renamed)
        with pytest.raises(SnapshotError, match="delta_chain must be"):
            parse_manifest({**written[1], "delta_chain": renamed})


def test_each_field_is_checked() -> None:
    good = valid_manifest()
    for key, bad, reason in [
        ("version", True, "'version' must be int"),
        ("version", -1, "'version' must be >= 0"),
        ("format", "other/1", "unknown snapshot format"),
        ("sha256", "AB" * 32, "64 lowercase hex"),
        ("offsets", {"t:0": "1"}, "'offsets' must map"),
        ("payload_bytes", -1, "'payload_bytes' must be an int >= 0"),
        ("config", [], "'config' must be dict"),
    ]:
        with pytest.raises(SnapshotError, match=reason):
            parse_manifest({**good, key: bad})
    with pytest.raises(SnapshotError, match="must be a JSON object, got list"):
        parse_manifest([good])


def valid_manifest(**fields: object) -> dict:
    return {
        "format": FORMAT,
        "version": 3,
        "sha256": "ab" * 32,
        "created_at": "2026-12-07T16:00:00.000+00:00",
        "offsets": {"ratings:0": 4},
        "trained_events": 10,
        "n_users": 2,
        "n_items": 3,
        "config": {"no_components": 8},
        "library_versions": {"python": "3.11.7"},
        **fields,
    }


COUNTS = st.integers(min_value=0) | HUGE_INTS.filter(lambda n: n > 0)
CHAINS = st.none() | st.fixed_dictionaries(
    {"lineage": ANY_TEXT, "version": st.integers() | HUGE_INTS, "offset": st.none() | COUNTS}
)
MANIFESTS = st.fixed_dictionaries(
    {
        "format": st.just(FORMAT),
        "version": COUNTS,
        "sha256": st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
        "created_at": ANY_TEXT,
        "offsets": st.dictionaries(ANY_TEXT, st.integers() | HUGE_INTS, max_size=4),
        "trained_events": COUNTS,
        "n_users": COUNTS,
        "n_items": COUNTS,
        "config": st.dictionaries(ANY_TEXT, JSON, max_size=4),
        "library_versions": st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=3),
    },
    optional={
        "payload_bytes": COUNTS,
        "delta_chain": CHAINS,
        "signature": ANY_TEXT,
        "written_by_a_newer_trainer": JSON,  # kept as it is: the signature covers it
    },
)


@settings(PROPERTY, max_examples=200)
@given(MANIFESTS)
def test_encode_after_decode_gives_the_same_manifest(manifest: dict) -> None:
    parsed = parse_manifest(manifest)
    assert parsed == manifest and list(parse_manifest(parsed)) == list(parsed)
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # ints of any length (the store refuses those on write)
    try:
        assert json.dumps(parsed, sort_keys=True) == json.dumps(manifest, sort_keys=True)
    finally:
        sys.set_int_max_str_digits(limit)


@settings(PROPERTY, max_examples=200)
@given(MANIFESTS, st.sampled_from(sorted(FIELDS)), JSON | RAW)
def test_any_value_in_any_field_is_accepted_whole_or_refused_with_snapshot_error(
    manifest: dict, key: str, value: object
) -> None:
    try:
        parsed = parse_manifest({**manifest, key: value})
    except SnapshotError:
        return
    assert parsed == {**manifest, key: value}


@settings(PROPERTY, max_examples=200)
@given(JSON | RAW | st.dictionaries(ANY_TEXT, JSON))
def test_anything_else_is_refused_with_snapshot_error(obj: object) -> None:
    if isinstance(obj, bytes):
        try:
            obj = json.loads(obj)
        except ValueError:  # not JSON: storage's IntegrityError, before any parse
            return
    for parse in (parse_manifest, parse_chain_mark):
        with contextlib.suppress(SnapshotError):
            parse(obj)


@settings(PROPERTY)
@given(CHAINS)
def test_a_chain_mark_round_trips(chain: ChainMark | None) -> None:
    assert parse_chain_mark(chain) == chain
