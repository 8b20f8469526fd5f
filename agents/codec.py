"""Wire format: JSON bytes in, JSON bytes out, and dead letters for what cannot be decoded.

Validation rules for the *content* of events live in ``models.events``; this module only
turns bytes into a mapping (or a reason why not) and builds the outgoing messages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.events import InvalidEvent, Rating, RecRequest, parse_rating, parse_request

#: Headers carried by every dead letter; the value is the original bytes, untouched.
DLQ_REASON = "streamrec.dlq.reason"
DLQ_KIND = "streamrec.dlq.kind"
DLQ_TOPIC = "streamrec.dlq.topic"
DLQ_PARTITION = "streamrec.dlq.partition"
DLQ_OFFSET = "streamrec.dlq.offset"


class Undecodable(ValueError):
    """A message whose bytes are not a JSON object of acceptable size."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def decode_object(raw: bytes | None, *, max_bytes: int) -> Mapping[str, Any]:
    """Decode one message value into a JSON object, or raise :class:`Undecodable`."""
    if raw is None:
        raise Undecodable("empty", "message has no value (tombstone)")
    if len(raw) > max_bytes:
        raise Undecodable("too_large", f"message is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Undecodable("malformed", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Undecodable("malformed", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def decode_rating(key: bytes | None, value: bytes | None, *, max_bytes: int) -> Rating:
    """The rating in one ``ratings`` message, or :class:`Undecodable` saying why not.

    The key must be the rating's user: ratings, requests and the seen-items table are
    co-partitioned by user, and a mis-keyed rating would land on another worker's partition.
    Both the ingest agent (which dead-letters) and the trainer (which skips) use this rule.
    """
    try:
        rating = parse_rating(decode_object(value, max_bytes=max_bytes))
    except InvalidEvent as exc:
        raise Undecodable("invalid", str(exc)) from None
    if key is None:
        raise Undecodable("invalid", "message has no key; ratings must be keyed by user id")
    if key != rating.user.encode():
        raise Undecodable("invalid", f"message key {key[:64]!r} is not the rating's user")
    return rating


def decode_request(value: bytes | None, *, max_bytes: int) -> RecRequest:
    """The request in one ``rec-requests`` message, or :class:`Undecodable` saying why not."""
    try:
        return parse_request(decode_object(value, max_bytes=max_bytes))
    except InvalidEvent as exc:
        raise Undecodable("invalid", str(exc)) from None


def encode(obj: Mapping[str, Any]) -> bytes:
    """Compact JSON bytes for an outgoing message."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that goes to a DLQ: the original key and bytes, the reason in headers."""

    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def dead_letter(
    *,
    key: bytes | None,
    value: bytes | None,
    kind: str,
    reason: str,
    topic: str,
    partition: int,
    offset: int,
) -> DeadLetter:
    """Build a dead letter that keeps the original bytes and says why and where it came from."""
    return DeadLetter(
        key=key,
        value=value,
        headers={
            DLQ_KIND: kind.encode(),
            DLQ_REASON: reason.encode(),
            DLQ_TOPIC: topic.encode(),
            DLQ_PARTITION: str(partition).encode(),
            DLQ_OFFSET: str(offset).encode(),
        },
    )
