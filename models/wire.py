"""The wire contract: every message on a streamrec topic, each with one typed owner.

Each message type here owns both directions, its ``parse`` (bytes → typed value, or
:class:`Undecodable` with a reason) and its ``encode`` (typed value → key and bytes), so the
agents, the CLI, the web views, the benchmarks and the tests all read and write the same
shape. The *content* rules of ratings and requests (id canonicalisation, ranges) live in
:mod:`models.events`; this module adds what belongs to the transport:

* every value is a compact JSON object of at most ``max_bytes``;
* ratings and requests are **keyed by their user id** (raw UTF-8 bytes): ratings, requests
  and the ``seen-items`` table are co-partitioned by user, and a mis-keyed event would land
  on another worker's partition (:func:`user_key` and :func:`check_user_key` are the rule);
* a dead letter keeps the original key and bytes, and says why in its headers.

================  ============  ===========================================
topic             key           value
================  ============  ===========================================
ratings           user          :class:`models.events.Rating`
rec-requests      user          :class:`models.events.RecRequest`
rec-responses     user          :class:`Reply` (items are :class:`ReplyItem`)
model-updates     ``b"model"``  :class:`ModelUpdate`
model-deltas      lineage       :class:`ModelDelta` (binary, checksummed)
model-requests    ``snapshot``  :class:`SnapshotRequest`
items             item          :class:`models.catalog.CatalogItem` (compacted)
``*-dlq``         original      original bytes; :class:`DeadLetter` headers
================  ============  ===========================================

Model deltas are the one binary message: their owner is :mod:`models.delta`, re-exported
here (:class:`ModelDelta` with ``encode``/``decode``, :class:`DeltaError`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import orjson

from models.catalog import CatalogItem, parse_catalog_item
from models.delta import DeltaError as DeltaError  # re-exported: the delta message's owner
from models.delta import ModelDelta as ModelDelta
from models.errors import ModelError
from models.events import (
    MAX_FUTURE_SKEW_SECONDS,
    EventInFuture,
    InvalidEvent,
    Rating,
    RecRequest,
    canonical_id,
    check_event_time,
    check_text,
    parse_rating,
    parse_request,
    well_formed_fields,
)
from models.rating_columns import RatingColumns
from models.scoring import ScoredItem
from models.signing import Keyring, check_fields, seal, sign_fields, verify

#: Why a message was dead-lettered: the ``streamrec.dlq.kind`` header's values.
DLQ_KINDS = ("malformed", "invalid", "too_large", "reply_to", "empty", "ts_in_future", "capacity")
DlqKind = Literal[
    "malformed", "invalid", "too_large", "reply_to", "empty", "ts_in_future", "capacity"
]

#: Where a reply's items came from (see :class:`models.scoring.Recommendation`).
REPLY_SOURCES = ("model", "popularity", "none")
ReplySource = Literal["model", "popularity", "none"]


class Undecodable(ModelError, ValueError):
    """A message that cannot be accepted; ``kind`` is one of :data:`DLQ_KINDS`."""

    def __init__(self, kind: DlqKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def encode_json(obj: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON bytes (the one JSON encoding of every outgoing value): orjson,
    ~5x faster than the standard library (the scorer spent ~15% of its time encoding
    replies); what orjson refuses (integers beyond 64 bits, keys that are not strings) is
    encoded the standard library's way, with the same compact separators."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def decode_object(raw: bytes | None, *, max_bytes: int) -> Mapping[str, Any]:
    """Decode one message value into a JSON object, or raise :class:`Undecodable`."""
    if raw is None:
        raise Undecodable("empty", "message has no value (tombstone)")
    if len(raw) > max_bytes:
        raise Undecodable("too_large", f"message is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise Undecodable("malformed", f"not valid JSON: {exc}") from None
    except ValueError as exc:  # an integer past 4,300 digits (int's str limit)
        raise Undecodable("invalid", f"a number out of range: {exc}") from None
    if not isinstance(obj, dict):
        raise Undecodable("malformed", f"expected a JSON object, got {type(obj).__name__}")
    _check_strings(obj)
    return obj


def _check_strings(obj: Any) -> None:
    """Raise :class:`Undecodable` (``invalid``) if a string of ``obj`` (keys too) is not
    valid UTF-8: ``json`` turns a ``\\ud800`` escape, and the bytes of a surrogate, into a
    lone surrogate, which no key, reply, changelog row or snapshot can encode again.
    (orjson refuses them: only what it refused comes through ``json``.)"""
    stack: list[tuple[str, Any]] = [("the message", obj)]
    try:
        while stack:
            where, value = stack.pop()
            if type(value) is str:
                check_text(value, where)
            elif type(value) is dict:
                for key, item in value.items():
                    check_text(key, "a field name")
                    stack.append((key, item))
            elif type(value) is list:
                stack.extend((where, item) for item in value)
    except InvalidEvent as exc:
        raise Undecodable("invalid", exc.reason) from None


# --- the keyed-by-user rule ------------------------------------------------------------
def user_key(user: str) -> bytes:
    """The Kafka key of a message about ``user``: its id as raw UTF-8 bytes."""
    return user.encode()


def check_user_key(key: bytes | None, user: str, what: str) -> None:
    """Raise :class:`Undecodable` unless ``key`` is :func:`user_key` of ``user``."""
    if key is None:
        raise Undecodable("invalid", f"message has no key; {what} must be keyed by user id")
    if key != user_key(user):
        raise Undecodable("invalid", f"message key {key[:64]!r} is not the {what[:-1]}'s user")


def _decode_fast(value: bytes | None, max_bytes: int) -> Mapping[str, Any]:
    """:func:`decode_object`, with the common case (a JSON object) parsed by orjson,
    several times faster than ``json``. orjson accepts a subset of what ``json`` accepts
    (no NaN/Infinity, no lone surrogates, no integers beyond 64 bits) and reads it the
    same; whatever it refuses goes through :func:`decode_object`, so the results and the
    reasons are unchanged."""
    if value is not None and len(value) <= max_bytes:
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            obj = None
        if type(obj) is dict:
            return obj
    return decode_object(value, max_bytes=max_bytes)


# --- ratings ---------------------------------------------------------------------------
def decode_rating(
    key: bytes | None,
    value: bytes | None,
    *,
    max_bytes: int,
    reference: float | None = None,
    max_skew: float = MAX_FUTURE_SKEW_SECONDS,
) -> Rating:
    """The rating in one ``ratings`` message, or :class:`Undecodable` saying why not.

    With a ``reference`` time (unix seconds: the agents pass
    :func:`agents.ports.reference_time` of the record), a ``ts`` more than ``max_skew``
    past it is refused as ``ts_in_future`` (:func:`models.events.check_event_time`).

    The trainer decodes every rating, so the common case is parsed with orjson (several
    times faster than ``json``); anything it does not take (and every other value) goes
    through :func:`decode_object`, whose rules and reasons are the contract
    (:func:`_decode_fast`).
    """
    try:
        rating = parse_rating(_decode_fast(value, max_bytes))
    except InvalidEvent as exc:
        raise Undecodable("invalid", str(exc)) from None
    check_user_key(key, rating.user, "ratings")
    if reference is not None:
        try:
            check_event_time(rating.ts, reference, max_skew)
        except EventInFuture as exc:
            raise Undecodable("ts_in_future", str(exc)) from None
    return rating


def decode_ratings(
    keys: Sequence[bytes | None],
    values: Sequence[bytes | None],
    references: Sequence[float | None] | None,
    *,
    max_bytes: int,
    max_skew: float = MAX_FUTURE_SKEW_SECONDS,
    decode: Callable[..., Rating] | None = None,
) -> tuple[RatingColumns, list[int], list[tuple[int, Exception]]]:
    """:func:`decode_rating` of a batch of ``ratings`` messages (the n-th has ``keys[n]``,
    ``values[n]`` and ``references[n]``), with the same verdict and reason for every one,
    and the ratings as columns, without a :class:`~models.events.Rating` per rating.

    Returns the accepted ratings, the index in the input of each, and the refused ones:
    (index, the :class:`Undecodable` saying why; or any other exception decoding raised,
    which is a bug: the caller decides what it makes of it).

    The common case (orjson parses a dict that :func:`models.events.well_formed_fields`
    takes, keyed by its user, not past its reference clock) is decided in line; everything
    else goes through :func:`decode_rating` itself, whose rules and reasons are the contract.
    ``decode`` replaces :func:`decode_rating` for every record (none decided in line: the
    agents pass theirs, so that a test can make one record fail as a bug would).
    """
    event_ids: list[str] = []
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[float] = []
    accepted: list[int] = []
    refused: list[tuple[int, Exception]] = []
    loads = orjson.loads
    in_line = decode is None or decode is decode_rating
    one = decode_rating if decode is None else decode
    for n, value in enumerate(values):
        key = keys[n]
        reference = None if references is None else references[n]
        fields = None
        if in_line and value is not None and len(value) <= max_bytes:
            try:
                fields = well_formed_fields(loads(value))
            except Exception:  # whatever orjson refuses: decode_rating says why
                fields = None
        if (
            fields is None
            or key != fields[1].encode()  # check_user_key
            or (reference is not None and fields[4] > reference + max_skew)  # check_event_time
        ):
            try:
                rating = one(
                    key, value, max_bytes=max_bytes, reference=reference, max_skew=max_skew
                )
            except Exception as exc:
                refused.append((n, exc))
                continue
            fields = (rating.event_id, rating.user, rating.item, rating.rating, rating.ts)
        event_ids.append(fields[0])
        users.append(fields[1])
        items.append(fields[2])
        ratings.append(fields[3])
        stamps.append(fields[4])
        accepted.append(n)
    columns = RatingColumns(
        event_ids,
        users,
        items,
        np.array(ratings, dtype=np.float64),
        np.array(stamps, dtype=np.float64),
    )
    return columns, accepted, refused


def encode_rating(rating: Rating) -> tuple[bytes, bytes]:
    """Key and value of the ``ratings`` message for ``rating``."""
    return user_key(rating.user), encode_json(asdict(rating))


# --- requests --------------------------------------------------------------------------
def decode_request(
    key: bytes | None, value: bytes | None, *, max_bytes: int, default_k: int = 10
) -> RecRequest:
    """The request in one ``rec-requests`` message, or :class:`Undecodable` saying why not."""
    try:
        request = parse_request(_decode_fast(value, max_bytes), default_k=default_k)
    except InvalidEvent as exc:
        raise Undecodable("invalid", str(exc)) from None
    check_user_key(key, request.user, "requests")
    return request


def encode_request(request: RecRequest) -> tuple[bytes, bytes]:
    """Key and value of the ``rec-requests`` message for ``request`` (``None`` fields left out)."""
    body = {k: v for k, v in asdict(request).items() if v is not None}
    return user_key(request.user), encode_json(body)


# --- replies ---------------------------------------------------------------------------
ReplyItem = ScoredItem
"""One recommended item of a reply: ``item``, ``score`` and, when the catalog knows it,
``title`` (the scorer's own :class:`models.scoring.ScoredItem`, sent as it is)."""


def reply_item_body(entry: ReplyItem) -> dict[str, Any]:
    """A reply item as JSON: ``item`` and ``score`` (6 decimals), ``title`` when known."""
    item, score, title = entry
    body: dict[str, Any] = {"item": item, "score": round(float(score), 6)}
    if title is not None:
        body["title"] = title
    return body


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one request, sent to its ``reply_to`` (or ``rec-responses``)."""

    request_id: str
    user: str
    items: list[ReplyItem]
    model_version: int | None
    source: ReplySource
    latency_ms: float | None = None
    experiment: str | None = None
    """The experiment this reply was served in (issue 20), with ``variant`` (``control``,
    ``candidate`` or ``interleaved``), ``teams`` (for an interleaved list, each item's team:
    ``control`` or ``candidate``) and ``note`` (why the variant is not the assigned one)."""
    variant: str | None = None
    teams: tuple[str, ...] | None = None
    note: str | None = None
    loading: bool = False
    """Issue 19: the user's partition was still loading on this scorer, so a popularity
    reply may be one the model would not give (``"loading": true``, absent otherwise)."""

    def to_dict(self) -> dict[str, Any]:
        items = list(map(reply_item_body, self.items))
        body: dict[str, Any] = {
            "request_id": self.request_id,
            "user": self.user,
            "items": items,
            "model_version": self.model_version,
            "source": self.source,
        }
        if self.latency_ms is not None:
            body["latency_ms"] = round(self.latency_ms, 3)
        if self.experiment is not None:
            body["experiment"] = self.experiment
            body["variant"] = self.variant
            if self.teams is not None:
                for entry, team in zip(items, self.teams, strict=True):
                    entry["team"] = team
            if self.note is not None:
                body["experiment_note"] = self.note
        if self.loading:
            body["loading"] = True
        return body

    def encode(self) -> tuple[bytes, bytes]:
        return user_key(self.user), encode_json(self.to_dict())

    @classmethod
    def parse(cls, value: bytes | None, *, max_bytes: int = 16 << 20) -> Reply:
        """A reply read back (clients, tests), or :class:`Undecodable`."""
        obj = decode_object(value, max_bytes=max_bytes)
        try:
            items = [
                ReplyItem(
                    item=canonical_id(i["item"], "item"),
                    score=_finite(i["score"], "score"),
                    title=_optional_text(i.get("title"), "title"),
                )
                for i in obj["items"]
            ]
            source = obj["source"]
            if source not in REPLY_SOURCES:
                raise InvalidEvent(f"unknown source {source!r}")
            version = obj.get("model_version")
            if version is not None and (type(version) is not int or version < 0):
                raise InvalidEvent(f"model_version must be an integer >= 0, got {version!r}")
            latency = obj.get("latency_ms")
            experiment = _optional_text(obj.get("experiment"), "experiment")
            teams = None  # an ab reply: every item is the variant's
            if experiment and obj["items"] and "team" in obj["items"][0]:
                teams = tuple(i["team"] for i in obj["items"])
            if teams is not None and not set(teams) <= {"control", "candidate"}:
                raise InvalidEvent("an item's team must be control or candidate")
            return cls(
                request_id=canonical_id(obj["request_id"], "request_id"),
                user=canonical_id(obj["user"], "user"),
                items=items,
                model_version=version,
                source=source,
                latency_ms=None if latency is None else _finite(latency, "latency_ms"),
                experiment=experiment,
                variant=_optional_text(obj.get("variant"), "variant") if experiment else None,
                teams=teams,
                note=_optional_text(obj.get("experiment_note"), "experiment_note"),
                loading=obj.get("loading") is True,
            )
        except InvalidEvent as exc:
            raise Undecodable("invalid", f"not a reply: {exc.reason}") from None
        except (KeyError, TypeError, AttributeError) as exc:
            raise Undecodable("invalid", f"not a reply: {type(exc).__name__}: {exc}") from None


def _finite(value: Any, field: str) -> float:
    """A finite JSON number (not a bool, not a string), or :class:`InvalidEvent`."""
    if type(value) is int and value.bit_length() > 1023:  # float() would overflow
        raise InvalidEvent(f"{field} is out of range")
    if type(value) not in (int, float):
        raise InvalidEvent(f"{field} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise InvalidEvent(f"{field} must be finite, got {value}")
    return float(value)


def _optional_text(value: Any, field: str) -> str | None:
    if value is not None:
        if type(value) is not str:
            raise InvalidEvent(f"{field} must be a string")
        check_text(value, field)
        return value
    return None


# --- model updates ---------------------------------------------------------------------
MODEL_UPDATE_KEY = b"model"
UPDATE_PURPOSE = "model-update"
DELTA_PURPOSE = "delta"
"""What the signatures of announcements and of deltas are for (:mod:`models.signing`)."""
"""The one key of the compacted ``model-updates`` topic: the latest announcement wins."""


@dataclass(frozen=True, slots=True)
class ModelUpdate:
    """An announcement that snapshot ``version`` at ``uri`` is the one to serve."""

    version: int
    uri: str
    sha256: str
    trained_events: int
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: str | None = None
    """The delta lineage of the snapshot's writer, if it published deltas."""
    chain_version: int | None = None
    """The version of the last delta the snapshot includes (scorers that got there by
    deltas need not load it)."""
    signature: str | None = None
    """``"<key id>:<hex HMAC>"`` over the other fields (:mod:`models.signing`): made by
    :meth:`signed` (the trainer, ``streamrec models promote/rollback``), checked by
    :meth:`check` (every scorer, before acting on it)."""

    def signed(self, keys: Keyring) -> ModelUpdate:
        """This announcement signed with ``keys``' signing key."""
        body = self.to_dict()
        return replace(self, signature=sign_fields(body, keys, purpose=UPDATE_PURPOSE))

    def check(self, keys: Keyring) -> None:
        """Raise :class:`models.signing.SignatureError` unless a key of ``keys`` signed it."""
        check_fields(self.to_dict(), keys, purpose=UPDATE_PURPOSE)

    @property
    def reason(self) -> str | None:
        """``"promote"``/``"rollback"`` for an operator's announcement, else None."""
        reason = self.metrics.get("reason")
        return reason if isinstance(reason, str) else None

    @classmethod
    def from_manifest(cls, uri: str, manifest: Mapping[str, Any], **metrics: Any) -> ModelUpdate:
        """The announcement of a stored snapshot, from its manifest."""
        chain = manifest.get("delta_chain") or {}
        return cls(
            version=int(manifest["version"]),
            uri=uri,
            sha256=str(manifest["sha256"]),
            trained_events=int(manifest.get("trained_events", 0)),
            metrics=dict(metrics),
            lineage=chain.get("lineage"),
            chain_version=chain.get("version"),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def encode(self) -> tuple[bytes, bytes]:
        return MODEL_UPDATE_KEY, encode_json(self.to_dict())

    @classmethod
    def parse(cls, value: bytes | None, *, max_bytes: int = 1 << 20) -> ModelUpdate:
        """An announcement read from ``model-updates`` (anyone may write there: whatever it
        holds is refused with :class:`Undecodable`, never another error), not yet trusted:
        :meth:`check` its signature before acting on it."""
        try:
            obj = decode_object(value, max_bytes=max_bytes)
        except Undecodable:
            raise
        except ValueError as exc:  # an integer past 4,300 digits, say
            raise Undecodable("malformed", f"not valid JSON: {exc}") from None
        version = obj.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise Undecodable("invalid", f"model update without a valid version: {version!r}")
        metrics = obj.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise Undecodable("invalid", "model update metrics must be an object")
        lineage, chain_version = obj.get("lineage"), obj.get("chain_version")
        signature = obj.get("signature")
        if signature is not None and not isinstance(signature, str):
            raise Undecodable("invalid", "model update signature must be a string")
        trained = obj.get("trained_events") or 0
        if isinstance(trained, bool) or not isinstance(trained, int) or trained < 0:
            raise Undecodable("invalid", "model update trained_events must be an int >= 0")
        if lineage is not None and not isinstance(lineage, str):
            raise Undecodable("invalid", "model update lineage must be a string")
        if chain_version is not None and (
            isinstance(chain_version, bool) or not isinstance(chain_version, int)
        ):
            raise Undecodable("invalid", "model update chain_version must be an int")
        trained = obj.get("trained_events") or 0
        if isinstance(trained, bool) or not isinstance(trained, int):
            raise Undecodable("invalid", "model update trained_events must be an int")
        return cls(
            version=version,
            uri=str(obj.get("uri", "")),
            sha256=str(obj.get("sha256", "")),
            trained_events=trained,
            metrics=metrics,
            lineage=lineage,
            chain_version=chain_version,
            signature=signature,
        )


# --- catalog items ---------------------------------------------------------------------
def catalog_item_body(entry: CatalogItem) -> dict[str, Any]:
    """The JSON object of an ``items`` message (what every worker's catalog table holds)."""
    return {"item": entry.item, "title": entry.title, "genres": list(entry.genres)}


def encode_catalog_item(entry: CatalogItem) -> tuple[bytes, bytes]:
    """Key (the item id, raw UTF-8) and value of the ``items`` message for ``entry``."""
    return entry.item.encode(), encode_json(catalog_item_body(entry))


def decode_catalog_value(value: bytes | None, *, max_bytes: int) -> CatalogItem:
    """The catalog entry in an ``items`` message's value, or :class:`Undecodable`."""
    try:
        return parse_catalog_item(decode_object(value, max_bytes=max_bytes))
    except InvalidEvent as exc:
        raise Undecodable("invalid", str(exc)) from None


def decode_catalog_item(key: bytes | None, value: bytes | None, *, max_bytes: int) -> CatalogItem:
    """The catalog entry in one ``items`` message, or :class:`Undecodable` saying why not."""
    entry = decode_catalog_value(value, max_bytes=max_bytes)
    if key != entry.item.encode():
        raise Undecodable("invalid", "items messages must be keyed by their item id")
    return entry


# --- model deltas ----------------------------------------------------------------------
def delta_key(delta: ModelDelta) -> bytes:
    """The Kafka key of a delta message: its lineage (the topic has one partition)."""
    return delta.lineage.encode()


# --- snapshot requests -----------------------------------------------------------------
SNAPSHOT_REQUEST_KEY = b"snapshot"
"""The one key of ``model-requests`` messages."""


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """A scorer whose delta chain broke asks the trainer for a snapshot now
    (``model-requests``), instead of serving an old one until the next interval."""

    reason: str
    """Why (``"gap"``, ``"invalid delta"``, ``"waiting"``, ...)."""
    at: float
    """When it was sent (unix seconds); the trainer ignores requests much older."""
    lineage: str | None = None
    """The lineage the scorer's view belongs to, if any."""
    version: int = -1
    """The version it serves (-1: none)."""

    def encode(self) -> tuple[bytes, bytes]:
        return SNAPSHOT_REQUEST_KEY, encode_json(asdict(self))

    @classmethod
    def parse(cls, value: bytes | None, *, max_bytes: int = 4096) -> SnapshotRequest:
        obj = decode_object(value, max_bytes=max_bytes)
        reason, at = obj.get("reason"), obj.get("at")
        lineage, version = obj.get("lineage"), obj.get("version", -1)
        if not isinstance(reason, str) or len(reason) > MAX_REQUEST_REASON:
            raise Undecodable("invalid", "snapshot request without a short reason")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise Undecodable("invalid", "snapshot request without a finite 'at' time")
        if lineage is not None and not isinstance(lineage, str):
            raise Undecodable("invalid", "snapshot request lineage must be a string")
        if isinstance(version, bool) or not isinstance(version, int):
            raise Undecodable("invalid", "snapshot request version must be an int")
        return cls(reason=reason, at=float(at), lineage=lineage, version=version)


MAX_REQUEST_REASON = 200


SNAPSHOT_REQUEST_PURPOSE = "snapshot-request"


def seal_snapshot_request(request: SnapshotRequest, keys: Keyring) -> tuple[bytes, bytes]:
    """A snapshot request's key and value on ``model-requests``, signed (any worker holding
    the model key may ask; anyone else who can write to the topic cannot)."""
    key, value = request.encode()
    return key, seal(value, keys, purpose=SNAPSHOT_REQUEST_PURPOSE)


def open_snapshot_request(value: bytes | None, keys: Keyring) -> SnapshotRequest:
    """The request in a signed value: :class:`models.signing.SignatureError` if it is not
    signed by a trusted key, :class:`Undecodable` if it is not a request."""
    return SnapshotRequest.parse(verify(value, keys, purpose=SNAPSHOT_REQUEST_PURPOSE))


def seal_delta(raw: bytes, keys: Keyring) -> bytes:
    """A delta's value on the topic: its encoding signed by the trainer."""
    return seal(raw, keys, purpose=DELTA_PURPOSE)


def open_delta(value: bytes | None, keys: Keyring) -> bytes:
    """The encoded delta in a signed value, or :class:`models.signing.SignatureError`."""
    return verify(value, keys, purpose=DELTA_PURPOSE)


# --- dead letters ----------------------------------------------------------------------
#: Headers carried by every dead letter; the value is the original bytes, untouched.
DLQ_REASON = "streamrec.dlq.reason"
DLQ_KIND = "streamrec.dlq.kind"
DLQ_TOPIC = "streamrec.dlq.topic"
DLQ_PARTITION = "streamrec.dlq.partition"
DLQ_OFFSET = "streamrec.dlq.offset"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that goes to a DLQ: the original key and bytes, the reason in headers."""

    key: bytes | None
    value: bytes | None
    kind: str
    reason: str
    topic: str
    partition: int
    offset: int

    @property
    def headers(self) -> dict[str, bytes]:
        # The reason may quote the input: a lone surrogate in it is escaped, never fatal.
        return {
            DLQ_KIND: self.kind.encode(),
            DLQ_REASON: self.reason.encode("utf-8", "backslashreplace"),
            DLQ_TOPIC: self.topic.encode(),
            DLQ_PARTITION: str(self.partition).encode(),
            DLQ_OFFSET: str(self.offset).encode(),
        }

    @classmethod
    def of(
        cls,
        exc: Undecodable,
        *,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
    ) -> DeadLetter:
        """The dead letter for a message that failed to decode with ``exc``."""
        return cls(key, value, exc.kind, exc.reason, topic, partition, offset)

    @classmethod
    def parse(
        cls, key: bytes | None, value: bytes | None, headers: Mapping[str, bytes]
    ) -> DeadLetter:
        """A dead letter read back from a DLQ (operators, tests)."""
        try:
            return cls(
                key=key,
                value=value,
                kind=headers[DLQ_KIND].decode(),
                reason=headers[DLQ_REASON].decode(),
                topic=headers[DLQ_TOPIC].decode(),
                partition=int(headers[DLQ_PARTITION]),
                offset=int(headers[DLQ_OFFSET]),
            )
        except (KeyError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as exc:
            raise Undecodable("invalid", f"not a dead letter: {exc}") from None
