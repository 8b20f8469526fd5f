"""What the world sends, as hypothesis strategies: the one input space every decoder's
property tests draw from (tests/unit/agents/test_fuzz.py, tests/unit/models/).

* text: any unicode, **lone surrogates included** (hypothesis' default text never makes
  them; ``json`` decodes ``"\\ud800"`` and the bytes ``ED A0 80`` into one);
* integers past Python's 4,300-digit ``str()`` limit (``json.loads`` refuses them with a
  ValueError, ``str()`` of one raises);
* NaN, ±Infinity, -0.0, 1e300, and timestamps in seconds, milliseconds and microseconds;
* the JSON of all that, written with NaN literals, huge integers and escaped surrogates
  (:func:`to_json`), and any bytes.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from hypothesis import strategies as st

from models.events import MAX_ID_LENGTH

SURROGATES = ["\ud800", "\udfff", "a\udc80b", "\ud83d"]  # lone halves; "\ud83d\ude00" is fine


def huge_int(digits: int) -> int:
    """An integer of ``digits + 1`` digits (hypothesis' reprs cannot print one as a literal:
    ``repr`` itself raises past 4,300 digits)."""
    return 10**digits


#: Integers past int's 4,300-digit str() limit, positive and negative.
HUGE_INTS = st.builds(huge_int, st.integers(4300, 5000)) | st.builds(
    lambda n: -huge_int(n), st.integers(4300, 5000)
)
NOW = 1.7e9
TIMES = [NOW, NOW * 1e3, NOW * 1e6, 1e300, 2**53, 2**64, 0, -1]  # s, ms, µs, absurd

#: Every code point, surrogates too (``blacklist_categories=()`` lifts the default "Cs" ban).
ANY_CHAR = st.characters(codec=None, blacklist_categories=())
ANY_TEXT = st.one_of(
    st.text(alphabet=ANY_CHAR, max_size=MAX_ID_LENGTH + 2),
    st.sampled_from(["", " ", "\x00", "é", "🎬", *SURROGATES, "a" * (MAX_ID_LENGTH + 1)]),
)
NUMBERS = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 5.000001, 1e308, 2**63, *TIMES]),
    HUGE_INTS,
    st.integers(),
    st.floats(),
)
IDS = st.one_of(ANY_TEXT, st.integers(), NUMBERS, st.booleans(), st.none())
JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | st.text(alphabet=ANY_CHAR, max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(alphabet=ANY_CHAR, max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def to_json(obj: Any) -> bytes:
    """``obj`` as JSON bytes the way a hostile producer may write it: NaN/Infinity
    literals, integers of any length, lone surrogates as ``\\ud800`` escapes."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # write integers of any length
    try:
        return json.dumps(obj, allow_nan=True).encode()  # ensure_ascii: surrogates escaped
    finally:
        sys.set_int_max_str_digits(limit)


def objects_like(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with any of ``fields`` (each hostile or valid), plus an odd extra field."""
    return st.fixed_dictionaries({}, optional=fields).flatmap(
        lambda d: st.dictionaries(st.text(max_size=6), JSON, max_size=2).map(lambda e: {**e, **d})
    )


#: Raw message values: any bytes, surrogate bytes (ED A0 80) inside JSON strings, and JSON.
RAW = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b'"\xed\xa0\x80"', b'{"user": "\xed\xa0\x80"}', b"{}", b"null", b""]),
    JSON.map(to_json),
)
