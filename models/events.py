"""The rating event, the recommendation request, and their validation rules.

This module is the only place the rules live: the ingest agent (JSON from Kafka), the
request agent and the file readers (models.datasets) all call :func:`parse_rating` /
:func:`parse_request`, so a rule changed here changes everywhere at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.errors import ModelError

MAX_ID_LENGTH = 256
"""Longest user, item, event or request id (characters, after canonicalisation)."""

MAX_FUTURE_SKEW_SECONDS = 300.0
"""How far past its reference clock a rating's ``ts`` may be by default
(``STREAMREC_MAX_FUTURE_SKEW_SECONDS``; :func:`check_event_time`)."""

MIN_RATING = 0.0
MAX_RATING = 5.0
MAX_K = 1000

# Kafka's own rule for topic names (kafka.common.internals.Topic): legal characters, at
# most 249 of them, and not "." or "..".
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


class InvalidEvent(ModelError, ValueError):
    """An event or request that breaks a validation rule; ``reason`` is human-readable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EventInFuture(InvalidEvent):
    """A rating stamped further in the future than its reference clock allows
    (:func:`check_event_time`): dead-lettered as ``ts_in_future``."""


@dataclass(frozen=True, slots=True)
class Rating:
    """One explicit rating: ``user`` rated ``item`` with ``rating`` (0..5) at unix time ``ts``."""

    event_id: str
    user: str
    item: str
    rating: float
    ts: float


@dataclass(frozen=True, slots=True)
class RecRequest:
    """A request for ``k`` recommendations for ``user``; the reply goes to ``reply_to``."""

    request_id: str
    user: str
    k: int
    exclude_seen: bool = True
    reply_to: str | None = None


def canonical_id(value: Any, field: str) -> str:
    """Canonicalise an id to ``str`` (``1`` and ``"1"`` are the same id) or raise InvalidEvent.

    Ints are accepted because JSON producers and file readers send them; bools and
    floats are not ids (``True`` or ``1.0`` would silently become another id).
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidEvent(f"{field} must be a string or an integer, got {_type_name(value)}")
    if isinstance(value, int):
        if value.bit_length() > _ID_INT_BITS:  # str() would be too long, or raise (4,300 digits)
            raise InvalidEvent(f"{field} is an integer of more than {MAX_ID_LENGTH} digits")
        text = str(value)
    else:
        text = value
    if not text:
        raise InvalidEvent(f"{field} must not be empty")
    if len(text) > MAX_ID_LENGTH:
        raise InvalidEvent(f"{field} is longer than {MAX_ID_LENGTH} characters ({len(text)})")
    check_text(text, field)
    return text


#: An int id of more bits than this has more than MAX_ID_LENGTH digits (and str() of one
#: past 4,300 digits raises ValueError): refused before it is converted.
_ID_INT_BITS = math.ceil((MAX_ID_LENGTH + 1) * math.log2(10))


def check_text(text: str, field: str) -> None:
    """Raise :class:`InvalidEvent` unless ``text`` can be encoded as UTF-8: a lone
    surrogate (``"\\ud800"`` in JSON) cannot, and would fail every key, reply, changelog
    row and snapshot the string reached. The one rule for every string read from outside."""
    if text.isascii():  # O(1): the common case
        return
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise InvalidEvent(
            f"{field} is not valid UTF-8: a lone surrogate {text[exc.start]!r} "
            f"at character {exc.start}"
        ) from None


def parse_rating(obj: Mapping[str, Any], *, default_event_id: str | None = None) -> Rating:
    """Validate a decoded rating event and return it as a :class:`Rating`.

    ``default_event_id`` is used when the event carries no ``event_id`` (e.g. the ingest
    agent passes ``"topic:partition:offset"``), so every event has a stable id to dedupe on.
    """
    fast = _well_formed_rating(obj)
    if fast is not None:
        return fast
    if not isinstance(obj, Mapping):
        raise InvalidEvent(f"a rating must be a JSON object, got {_type_name(obj)}")
    missing = [f for f in ("user", "item", "rating", "ts") if f not in obj]
    if "event_id" not in obj and default_event_id is None:
        missing.insert(0, "event_id")
    if missing:
        raise InvalidEvent(f"missing field(s): {', '.join(missing)}")
    event_id = canonical_id(obj.get("event_id", default_event_id), "event_id")
    user = canonical_id(obj["user"], "user")
    item = canonical_id(obj["item"], "item")
    rating = _finite_number(obj["rating"], "rating")
    if not MIN_RATING <= rating <= MAX_RATING:
        raise InvalidEvent(
            f"rating must be between {MIN_RATING:g} and {MAX_RATING:g}, got {rating:g}"
        )
    ts = _finite_number(obj["ts"], "ts")
    if ts < 0:
        raise InvalidEvent(f"ts must be >= 0, got {ts:g}")
    return Rating(event_id=event_id, user=user, item=item, rating=rating, ts=ts)


def _well_formed_rating(obj: Any) -> Rating | None:
    """The rating if ``obj`` is the common case that passes every rule at a glance
    (:func:`well_formed_fields`); otherwise ``None``, and :func:`parse_rating` applies the
    rules one by one (and says which failed)."""
    fields = well_formed_fields(obj)
    return None if fields is None else Rating(*fields)


def well_formed_fields(obj: Any) -> tuple[str, str, str, float, float] | None:
    """``(event_id, user, item, rating, ts)`` if ``obj`` is the common case that passes
    every rule at a glance (string ids within the length limit, a number rating in range, a
    finite number ts >= 0), exactly the fields :func:`parse_rating` would give; otherwise
    ``None`` (and :func:`parse_rating` decides, rule by rule). The trainer decodes every
    rating, so this is its hot path."""
    if type(obj) is not dict:
        return None
    get = obj.get
    event_id, user, item, rating, ts = (
        get("event_id"),
        get("user"),
        get("item"),
        get("rating"),
        get("ts"),
    )
    if (
        type(event_id) is str
        and type(user) is str
        and type(item) is str
        and 0 < len(event_id) <= MAX_ID_LENGTH
        and 0 < len(user) <= MAX_ID_LENGTH
        and 0 < len(item) <= MAX_ID_LENGTH
        and event_id.isascii()  # O(1); other ids go through canonical_id's UTF-8 check
        and user.isascii()
        and item.isascii()
        and (type(rating) is float or type(rating) is int)  # not bool (a subclass of int)
        and MIN_RATING <= rating <= MAX_RATING
        and (type(ts) is float or (type(ts) is int and ts < _EXACT_INT))
        and 0 <= ts < math.inf
    ):
        # floats, as the slow path's _finite_number returns
        return event_id, user, item, float(rating), float(ts)
    return None


#: Integers below this convert to float exactly and never overflow (MovieLens timestamps
#: are integers: the common case, so the fast path takes them).
_EXACT_INT = 2**53


def parse_request(obj: Mapping[str, Any], *, default_k: int = 10) -> RecRequest:
    """Validate a decoded recommendation request (``k`` defaults to ``default_k``)."""
    if type(obj) is dict:  # the common case at a glance: the scorer's hot path
        request_id, user = obj.get("request_id"), obj.get("user")
        k, exclude_seen = obj.get("k", default_k), obj.get("exclude_seen", True)
        if (
            type(request_id) is str
            and type(user) is str
            and 0 < len(request_id) <= MAX_ID_LENGTH
            and 0 < len(user) <= MAX_ID_LENGTH
            and request_id.isascii()
            and user.isascii()
            and type(k) is int
            and 1 <= k <= MAX_K
            and type(exclude_seen) is bool
            and obj.get("reply_to") is None
        ):
            return RecRequest(request_id, user, k, exclude_seen, None)
    if not isinstance(obj, Mapping):
        raise InvalidEvent(f"a request must be a JSON object, got {_type_name(obj)}")
    missing = [f for f in ("request_id", "user") if f not in obj]
    if missing:
        raise InvalidEvent(f"missing field(s): {', '.join(missing)}")
    request_id = canonical_id(obj["request_id"], "request_id")
    user = canonical_id(obj["user"], "user")
    k = obj.get("k", default_k)
    if isinstance(k, bool) or not isinstance(k, int):
        raise InvalidEvent(f"k must be an integer, got {_type_name(k)}")
    if not 1 <= k <= MAX_K:
        raise InvalidEvent(f"k must be between 1 and {MAX_K}, got {k}")
    exclude_seen = obj.get("exclude_seen", True)
    if not isinstance(exclude_seen, bool):
        raise InvalidEvent(f"exclude_seen must be true or false, got {_type_name(exclude_seen)}")
    reply_to = obj.get("reply_to")
    if reply_to is not None and not is_topic_name(reply_to):
        shown = reply_to[:60] if isinstance(reply_to, str) else _type_name(reply_to)
        raise InvalidEvent(f"reply_to is not a valid Kafka topic name: {shown!r}")
    return RecRequest(
        request_id=request_id, user=user, k=k, exclude_seen=exclude_seen, reply_to=reply_to
    )


def latest_event_time(reference: float, max_skew: float = MAX_FUTURE_SKEW_SECONDS) -> float:
    """The latest ``ts`` a rating may carry when its reference clock reads ``reference``
    (unix seconds): ``reference + max_skew``."""
    return reference + max_skew


def check_event_time(
    ts: float, reference: float, max_skew: float = MAX_FUTURE_SKEW_SECONDS
) -> None:
    """Raise :class:`EventInFuture` if ``ts`` is past :func:`latest_event_time`.

    The one event-time rule. ``reference`` is the clock the rating is judged by (the agents
    pass its Kafka record's timestamp, capped by their wall clock:
    :func:`agents.ports.reference_time`). A ``ts`` in milliseconds or microseconds (a
    common producer mistake) or far in the future would move the popularity's reference
    time ahead, and every later rating would count as decades old.
    """
    if ts > reference + max_skew:  # latest_event_time, inline: this runs once per rating
        raise EventInFuture(
            f"ts {ts:.17g} is {ts - reference:.3g} s past its reference clock "
            f"{reference:.17g} (at most {max_skew:g} s allowed; milliseconds instead of "
            "seconds?)"
        )


def is_topic_name(value: Any) -> bool:
    """True if ``value`` is a legal Kafka topic name."""
    return (
        isinstance(value, str)
        and value not in (".", "..")
        and _TOPIC_NAME.fullmatch(value) is not None
    )


def _finite_number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(f"{field} must be a number, got {_type_name(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidEvent(f"{field} is out of range") from None
    if not math.isfinite(number):
        raise InvalidEvent(f"{field} must be finite, got {number}")
    return number


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__
