import numpy as np
import pytest

from models.idmap import IdMap, decode_strings, encode_strings


def test_ids_get_dense_indices_in_order_of_first_appearance():
    ids = IdMap()
    assert [ids.add(x) for x in ["b", "a", "b", "c"]] == [0, 1, 0, 2]
    assert ids.get("a") == 1
    assert ids.get("zz") is None
    assert ids.id_of(2) == "c"
    assert len(ids) == 3
    assert "c" in ids
    assert ids.ids() == ["b", "a", "c"]


def test_only_strings_are_ids():
    with pytest.raises(TypeError):
        IdMap().add(1)  # type: ignore[arg-type]


def test_round_trip_through_arrays_keeps_unicode_and_order():
    ids = IdMap(["1", "Amélie", "東京", "x" * 256, "a,b"])
    blob, offsets = ids.to_arrays()
    assert blob.dtype == np.uint8 and offsets.dtype == np.int64
    again = IdMap.from_arrays(blob, offsets)
    assert again.ids() == ids.ids()
    assert again.get("東京") == 2


def test_truncate_forgets_later_ids():
    ids = IdMap(["a", "b", "c"])
    ids.truncate(1)
    assert ids.ids() == ["a"]
    assert ids.get("b") is None
    assert ids.add("c") == 1


def test_duplicates_are_refused_when_loading():
    with pytest.raises(ValueError, match="duplicate"):
        IdMap(["a", "a"])


@pytest.mark.parametrize(
    ("blob", "offsets", "message"),
    [
        (np.frombuffer(b"ab", np.uint8), np.array([0, 3], np.int64), "offsets"),
        (np.frombuffer(b"ab", np.uint8), np.array([0, 2, 1, 2], np.int64), "offsets"),
        (np.frombuffer(b"\xff", np.uint8), np.array([0, 1], np.int64), "UTF-8"),
        (np.zeros(2, np.int32), np.array([0, 2], np.int64), "uint8"),
        (np.zeros(2, np.uint8), np.array([0, 2], np.int32), "int64"),
    ],
)
def test_malformed_arrays_are_refused(blob, offsets, message):
    with pytest.raises(ValueError, match=message):
        decode_strings(blob, offsets)


def test_empty_list_round_trips():
    assert decode_strings(*encode_strings([])) == []


def test_extend_at_appends_keeps_shared_ids_and_drops_leftovers():
    ids = IdMap(["a", "b"])
    ids.extend_at(2, ["c"])
    ids.extend_at(2, ["c"])  # already in place (a map shared with its producer)
    assert ids.ids() == ["a", "b", "c"]
    ids.extend_at(2, ["d", "e"])  # "c" was left by a view that was never published
    assert ids.ids() == ["a", "b", "d", "e"] and ids.get("c") is None
    with pytest.raises(ValueError, match="already known"):
        ids.extend_at(4, ["a"])
    assert ids.ids(3, start=1) == ["b", "d"]
