"""An experiment on live traffic (issue 20): its definition record and who takes part.

:class:`Experiment` is the value of one key of the compacted experiments topic: a control
and one candidate :class:`Variant`, a method (``ab`` or ``interleave``), a traffic share, a
start time and a status. Its ``parse`` refuses anything else with one clear reason
(:class:`models.wire.Undecodable`); its ``encode`` reads back to the same record.

:func:`assign` says what a user gets: a stable keyed hash of (experiment, user) puts a
``share`` of the users in the experiment (the others get control and are not counted) and,
with an independent half of the same digest, splits them 50/50 between control and
candidate (``ab``) for the experiment's whole life; with ``interleave`` every user in the
share gets interleaved rankings (:mod:`models.interleaving`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from models.events import InvalidEvent, check_text
from models.wire import Undecodable, decode_object, encode_json

METHODS = ("ab", "interleave")
Method = Literal["ab", "interleave"]
STATUSES = ("running", "stopped", "promoted", "guardrail-stopped")
Status = Literal["running", "stopped", "promoted", "guardrail-stopped"]
Assignment = Literal["control", "candidate", "interleaved"]
"""What a user in an experiment gets (:func:`assign`); ``None`` there: not in it."""

MAX_NAME_LENGTH = 64
MAX_REASON_LENGTH = 500
MAX_EXPERIMENT_BYTES = 4096
MAX_VERSION = 2**63 - 1
LATEST_TIME = 4_102_444_800.0
"""2100-01-01 in unix seconds: a later ``start`` (or impression time) is milliseconds or
microseconds."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_FIELDS = frozenset({"name", "control", "candidate", "method", "share", "start", "status"})
_VARIANT_FIELDS = frozenset({"model", "blend_weight"})


class InvalidExperiment(InvalidEvent):
    """An experiment definition that breaks a rule; ``reason`` says which, in one line."""


def check_name(value: Any, field: str) -> str:
    """``value`` if it is a name: 1 to 64 ASCII letters, digits, ``.``, ``_`` or ``-``,
    starting with a letter or digit (an experiment's name is its Kafka key and appears in
    metric labels); else :class:`InvalidExperiment`."""
    if type(value) is not str:
        raise InvalidExperiment(f"{field} must be a string, got {_type_name(value)}")
    if not 0 < len(value) <= MAX_NAME_LENGTH or not (value.isascii() and _NAME.fullmatch(value)):
        raise InvalidExperiment(
            f"{field} {value[: MAX_NAME_LENGTH + 1]!r} must be 1 to {MAX_NAME_LENGTH} ASCII "
            "letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


@dataclass(frozen=True, slots=True)
class Variant:
    """What one side of an experiment serves.

    ``model``: ``None`` for the model being served now, an ``int`` for that snapshot
    version, or a ``str`` naming a config or delta lineage (:func:`check_name`'s charset).
    ``blend_weight``: a serving parameter in [0, 1] (the item-kNN blend), ``None`` for the
    model's own.
    """

    model: int | str | None = None
    blend_weight: float | None = None

    def __post_init__(self) -> None:
        model, weight = self.model, self.blend_weight
        if type(model) is int:
            if not 0 <= model <= MAX_VERSION:
                raise InvalidExperiment(f"model version must be between 0 and {MAX_VERSION}")
        elif model is not None:
            check_name(model, "model")
        if weight is not None:
            number = _number(weight, "blend_weight")
            if not 0 <= number <= 1:
                raise InvalidExperiment(f"blend_weight must be between 0 and 1, got {number:g}")
            object.__setattr__(self, "blend_weight", number)

    def to_dict(self) -> dict[str, Any]:
        """The variant as JSON: only the fields that are set."""
        body: dict[str, Any] = {}
        if self.model is not None:
            body["model"] = self.model
        if self.blend_weight is not None:
            body["blend_weight"] = self.blend_weight
        return body

    @classmethod
    def from_dict(cls, obj: Any, field: str) -> Variant:
        """The variant in a decoded JSON object, or :class:`InvalidExperiment`."""
        if type(obj) is not dict:
            raise InvalidExperiment(f"{field} must be an object, got {_type_name(obj)}")
        _refuse_unknown(obj, _VARIANT_FIELDS, field)
        model = obj.get("model")
        if type(model) not in (int, str, type(None)):
            raise InvalidExperiment(
                f"{field}.model must be a version (integer) or a name, got {_type_name(model)}"
            )
        try:
            return cls(model=model, blend_weight=obj.get("blend_weight"))
        except InvalidExperiment as exc:
            raise InvalidExperiment(f"{field}.{exc.reason}") from None


@dataclass(frozen=True, slots=True)
class Experiment:
    """One experiment: ``candidate`` against ``control`` on a ``share`` of the users.

    ``share`` is in (0, 1]; ``start`` is unix seconds; ``reason`` says why the status is
    what it is (required for ``guardrail-stopped``, the guardrail's verdict). Every rule is
    checked at construction, so an ``Experiment`` in hand is a valid one.
    """

    name: str
    control: Variant
    candidate: Variant
    method: Method
    share: float
    start: float
    status: Status = "running"
    reason: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        for side in ("control", "candidate"):
            if type(getattr(self, side)) is not Variant:
                raise InvalidExperiment(f"{side} must be a Variant")
        if self.candidate == self.control:
            raise InvalidExperiment("candidate is the same as control: nothing to compare")
        if self.method not in METHODS:
            raise InvalidExperiment(f"method must be one of {', '.join(METHODS)}")
        share = _number(self.share, "share")
        if not 0 < share <= 1:
            raise InvalidExperiment(f"share must be in (0, 1], got {share:g}")
        start = _number(self.start, "start")
        if not 0 <= start <= LATEST_TIME:
            raise InvalidExperiment(
                f"start must be unix seconds between 0 and {LATEST_TIME:.0f}, got "
                f"{start:.17g} (milliseconds instead of seconds?)"
            )
        if self.status not in STATUSES:
            raise InvalidExperiment(f"status must be one of {', '.join(STATUSES)}")
        reason = self.reason
        if reason is not None:
            if type(reason) is not str or not reason.strip():
                raise InvalidExperiment("reason must be a non-empty string")
            if len(reason) > MAX_REASON_LENGTH:
                raise InvalidExperiment(f"reason is longer than {MAX_REASON_LENGTH} characters")
            try:
                check_text(reason, "reason")
            except InvalidEvent as exc:
                raise InvalidExperiment(exc.reason) from None
        elif self.status == "guardrail-stopped":
            raise InvalidExperiment("a guardrail-stopped experiment needs the reason")
        object.__setattr__(self, "share", share)
        object.__setattr__(self, "start", start)

    @property
    def running(self) -> bool:
        return self.status == "running"

    def with_status(self, status: Status, reason: str | None = None) -> Experiment:
        """This experiment with another status (and its reason), validated again."""
        return replace(self, status=status, reason=reason)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "control": self.control.to_dict(),
            "candidate": self.candidate.to_dict(),
            "method": self.method,
            "share": self.share,
            "start": self.start,
            "status": self.status,
        }
        if self.reason is not None:
            body["reason"] = self.reason
        return body

    @property
    def key(self) -> bytes:
        """The Kafka key of this experiment on the compacted topic: its name."""
        return self.name.encode()

    def encode(self) -> tuple[bytes, bytes]:
        """Key and value of the experiments-topic message for this experiment."""
        return self.key, encode_json(self.to_dict())

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Experiment:
        """The experiment in a decoded JSON object, or :class:`InvalidExperiment`."""
        if type(obj) is not dict:
            raise InvalidExperiment(f"an experiment must be an object, got {_type_name(obj)}")
        _refuse_unknown(obj, _FIELDS | {"reason"}, "an experiment")
        missing = sorted(_FIELDS - obj.keys() - {"status"})
        if missing:
            raise InvalidExperiment(f"missing field(s): {', '.join(missing)}")
        for field in ("method", "status"):
            if field in obj and type(obj[field]) is not str:
                raise InvalidExperiment(f"{field} must be a string, got {_type_name(obj[field])}")
        return cls(
            name=check_name(obj["name"], "name"),
            control=Variant.from_dict(obj["control"], "control"),
            candidate=Variant.from_dict(obj["candidate"], "candidate"),
            method=obj["method"],
            share=obj["share"],
            start=obj["start"],
            status=obj.get("status", "running"),
            reason=obj.get("reason"),
        )

    @classmethod
    def parse(
        cls, value: bytes | None, *, key: bytes | None = None, max_bytes: int = MAX_EXPERIMENT_BYTES
    ) -> Experiment:
        """The experiment in one message (anyone may write to the topic: whatever it holds
        is refused with :class:`Undecodable`, never another error). With ``key``, the
        message must be keyed by the experiment's name."""
        try:
            experiment = cls.from_dict(decode_object(value, max_bytes=max_bytes))
        except InvalidEvent as exc:
            raise Undecodable("invalid", f"not an experiment: {exc.reason}") from None
        if key is not None and key != experiment.key:
            raise Undecodable("invalid", "an experiment must be keyed by its name")
        return experiment


# --- who takes part ---------------------------------------------------------------------
_PERSON = b"streamrec-exp"


def _digest(experiment: str, unit: str) -> bytes:
    """16 bytes of BLAKE2b over the experiment's name and ``unit`` (a user or request id).
    The name's charset has no NUL, so the separator makes the pair unambiguous; a lone
    surrogate in ``unit`` is hashed as its surrogatepass bytes instead of raising."""
    h = hashlib.blake2b(digest_size=16, person=_PERSON)
    h.update(experiment.encode())
    h.update(b"\x00")
    h.update(unit.encode("utf-8", "surrogatepass"))
    return h.digest()


def in_share(experiment: Experiment, user: str) -> bool:
    """Whether ``user`` is in ``experiment``'s share of the traffic: the digest's first 8
    bytes, as a fraction of 2**64, are below ``share``. Growing the share only adds users."""
    fraction = int.from_bytes(_digest(experiment.name, user)[:8], "big")
    return fraction < experiment.share * 2**64


def ab_arm(experiment: Experiment, user: str) -> Literal["control", "candidate"]:
    """The arm of ``user`` in an ``ab`` experiment, by the digest's last 8 bytes (half and
    half), independent of the share: changing the share never moves a user between arms."""
    half = int.from_bytes(_digest(experiment.name, user)[8:], "big") >> 63
    return "candidate" if half else "control"


def assign(experiment: Experiment, user: str) -> Assignment | None:
    """What ``user`` gets: ``None`` if the experiment is not running or the user is outside
    its share (control, not counted); else the ``ab`` arm, or ``"interleaved"``."""
    if not experiment.running or not in_share(experiment, user):
        return None
    if experiment.method == "interleave":
        return "interleaved"
    return ab_arm(experiment, user)


def request_seed(experiment: str, request_id: str) -> bytes:
    """The seed of an interleaved request's coin (:func:`models.interleaving.team_draft`):
    the same request interleaves the same way on every worker and every retry."""
    return _digest(experiment, request_id)


# --- helpers ----------------------------------------------------------------------------
def _number(value: Any, field: str) -> float:
    """A finite number (not a bool, not a string) as a float, or :class:`InvalidExperiment`."""
    if type(value) is int:
        if value.bit_length() > 1023:  # float() would overflow
            raise InvalidExperiment(f"{field} is out of range")
        return float(value)
    if type(value) is not float:
        raise InvalidExperiment(f"{field} must be a number, got {_type_name(value)}")
    if not math.isfinite(value):
        raise InvalidExperiment(f"{field} must be finite, got {value}")
    return value


def _refuse_unknown(obj: Mapping[str, Any], known: frozenset[str], what: str) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        shown = ", ".join(repr(name[:32]) for name in unknown[:5])
        raise InvalidExperiment(f"unknown field(s) in {what}: {shown}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__
