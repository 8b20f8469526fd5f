"""What ``/model/`` shows: :class:`ModelStatus`, the facts a worker keeps about the model it
serves, with its one renderer (:func:`render_status`) and its one parser (:func:`parse_status`).

The record stays a JSON object (a ``TypedDict``, so ``/model/``'s bytes are what they were);
mypy checks every key the agents write, and the parser refuses a key it does not know (a
renamed one) or a value of the wrong type with :class:`StatusError`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import types
import typing
from typing import Any, Literal, TypedDict

from agents.errors import AgentError
from models.wire import ModelUpdate


class StatusError(AgentError, ValueError):
    """A ``/model/`` body that is not a :class:`ModelStatus`; the message names the key."""


class LastBatch(TypedDict):
    """The trainer's last micro-batch."""

    events: int
    applied: int
    positives: int
    duplicates: int
    dead_letters: int
    new_users: int
    new_items: int
    seconds: float
    at: float


class SnapshotNote(TypedDict):
    """The newest snapshot written (trainer) or announced and reached (scorer)."""

    version: int
    uri: str
    at: float | str | None  # unix seconds (trainer) or the manifest's created_at (scorer)


class SnapshotDue(TypedDict):
    """A delta that made a snapshot due at once, and why."""

    version: int
    at: float
    reason: str  # "refused" | "marker" | "neighbours"


class PublishedDelta(TypedDict, total=False):
    """The trainer's last delta sent (:meth:`agents.deltas.DeltaPublisher.publish`)."""

    refused: str
    lineage: str
    version: int
    base_version: int
    bytes: int
    rows: int
    offset: int | None
    at: float
    snapshot_needed: bool
    neighbours_follow: bool
    error: str


class AppliedDelta(TypedDict):
    """A scorer's last delta applied."""

    version: int
    base_version: int
    offset: int
    rows: int
    published_at: float
    applied_at: float


class DeltaChain(TypedDict, total=False):
    """Where a scorer's view stands in the delta chain, and how far behind it is."""

    lineage: str | None
    chain_version: int
    pinned: bool
    waiting_for_snapshot: bool
    applied: int
    resyncs: int
    lag_seconds: float
    lag_versions: int | None
    last_applied: AppliedDelta
    last_delta_age_seconds: float | None  # rendered by /model/


class RefusedMessage(TypedDict, total=False):
    """The last untrusted message or snapshot refused (``offset`` or ``version``)."""

    message: str
    kind: str
    reason: str
    offset: int
    version: int


class Refusals(TypedDict):
    """Untrusted messages refused, counted per ``"what/kind"``."""

    counts: dict[str, int]
    last: RefusedMessage
    at: float


class LastRefused(TypedDict):
    """The last snapshot refused for its bytes (corrupt, unreadable, untrusted)."""

    version: int
    reason: str
    at: float


class ModelStatus(TypedDict, total=False):
    """Everything ``/model/`` shows; which keys are present depends on the role."""

    version: int
    # the trainer's
    trained_events: int
    n_users: int
    n_items: int
    offsets: dict[str, int]
    consolidation_pending: bool
    last_batch: LastBatch
    prequential_hit_rate: float
    delta: PublishedDelta
    snapshot_due: SnapshotDue
    snapshot: SnapshotNote
    # a scorer's: the announcement loaded (ModelUpdate's fields but version), or the pointer
    source: Literal["store pointer"]
    uri: str
    sha256: str
    metrics: dict[str, Any]
    lineage: str | None
    chain_version: int | None
    signature: str | None
    created_at: str | None
    deltas: DeltaChain
    refused: Refusals
    last_refused: LastRefused
    loading_partitions: str  # issue 19: owned partitions whose users are loading ("1,3")
    held_partitions: str  # issue 19: the partitions whose users the view holds ("0,2")
    held_users: int  # issue 19: the users the view holds (of the model's n_users)
    # added when rendered
    snapshot_age_seconds: float
    role: str
    loaded_at: float | None


def announcement(update: ModelUpdate | None, *, created_at: str) -> ModelStatus:
    """What a scorer shows of the snapshot it loaded: the announcement's fields (but the
    version, the view's) or that it followed the store's pointer, and when it was made."""
    if update is None:
        return {"source": "store pointer", "created_at": created_at}
    return {
        "uri": update.uri,
        "sha256": update.sha256,
        "trained_events": update.trained_events,
        "metrics": dict(update.metrics),
        "lineage": update.lineage,
        "chain_version": update.chain_version,
        "signature": update.signature,
        "created_at": created_at,
    }


def age_seconds(stamp: float | str | None, now: float) -> float | None:
    """Seconds from ``stamp`` (unix seconds or an ISO 8601 string) to ``now``, or None."""
    if isinstance(stamp, str):
        try:
            stamp = dt.datetime.fromisoformat(stamp).timestamp()
        except ValueError:
            return None
    return None if stamp is None else round(now - stamp, 3)


def render_status(
    info: ModelStatus, *, role: str, loaded_at: float | None, now: float | None = None
) -> ModelStatus:
    """The ``/model/`` body: ``info`` with the snapshot's and the last delta's ages, the
    worker's role and when its view was loaded."""
    now = time.time() if now is None else now
    body = info.copy()
    snapshot = info.get("snapshot")
    age = age_seconds(info.get("created_at") or (snapshot["at"] if snapshot else None), now)
    if age is not None:
        body["snapshot_age_seconds"] = age
    chain = info.get("deltas")
    if chain and chain.get("last_applied"):  # how long ago the trainer published it
        published = chain["last_applied"]["published_at"]
        body["deltas"] = {**chain, "last_delta_age_seconds": age_seconds(published, now)}
    body["role"] = role
    body["loaded_at"] = loaded_at
    return body


def parse_status(obj: object) -> ModelStatus:
    """A ``/model/`` body (decoded JSON) as a :class:`ModelStatus`, or :class:`StatusError`
    naming the first key that is unknown, missing or of the wrong type."""
    _check(obj, ModelStatus, "status")
    return typing.cast(ModelStatus, obj)


def decode_status(raw: bytes) -> ModelStatus:
    """:func:`parse_status` of ``/model/``'s bytes; anything else is a :class:`StatusError`."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, an int past 4,300 digits
        raise StatusError(f"status is not JSON: {exc}"[:500]) from None
    return parse_status(obj)


def _check(value: object, kind: Any, where: str) -> None:
    """Raise :class:`StatusError` unless ``value`` (decoded JSON) is of type ``kind``."""
    if typing.is_typeddict(kind):
        _check_record(value, kind, where)
        return
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return
    if origin is types.UnionType or origin is typing.Union:
        errors = []
        for option in args:
            try:
                _check(value, option, where)
            except StatusError as exc:
                errors.append(str(exc))
            else:
                return
        raise StatusError(errors[0])
    if origin is Literal:
        if value not in args:
            raise StatusError(f"{where} must be one of {list(args)}, got {_show(value)}")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise StatusError(f"{where} must be an object, got {_show(value)}")
        for key, item in value.items():
            _check(item, args[1], f"{where}.{key}")
        return
    if kind is type(None):
        ok = value is None
    elif kind is float:  # a finite JSON number
        ok = type(value) is int or (type(value) is float and math.isfinite(value))
    else:  # int, str, bool
        ok = type(value) is kind
    if not ok:
        raise StatusError(f"{where} must be {getattr(kind, '__name__', kind)}, got {_show(value)}")


def _check_record(value: object, record: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise StatusError(f"{where} must be an object, got {_show(value)}")
    hints = typing.get_type_hints(record)
    for key in value:
        if key not in hints:
            raise StatusError(f"{where} has an unknown key {_show(key)}")
    for key in sorted(record.__required_keys__):
        if key not in value:
            raise StatusError(f"{where} is missing {key!r}")
    for key, item in value.items():
        _check(item, hints[key], f"{where}.{key}")


def _show(value: object) -> str:
    """A short description of ``value`` for a message (a huge int has no repr)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "an int past 64 bits"
    if isinstance(value, str | int | float | bool | None):
        return repr(value)[:80]
    return type(value).__name__
