"""Model deltas: the rows one trained micro-batch changed, as a checksummed binary message.

The trainer publishes one :class:`ModelDelta` per batch on the ``model-deltas`` topic;
every scorer applies them in order to its :class:`models.scoring.ScoringView`
(:func:`apply_delta`, copy-on-write of the touched rows). Snapshots stay the durable
checkpoint; deltas carry freshness.

A delta holds, for the rows the batch changed: user embeddings, biases and positives
counts; item embeddings and biases; popularity values; the ids that are new; and the
global popularity decay as one scalar factor (the model decays every item at every batch,
so the factor is sent instead of every item). Its size is proportional to the touched
rows, not to the model.

The chain
---------
``base_version -> version`` says which state a delta applies to and which it makes. A
*lineage* is one trainer run (a random id): a restarted trainer restores a snapshot, so
its versions may repeat those of the run before it, and only ``(lineage, version)``
names a state. Every delta also says where its lineage began: ``origin`` (the snapshot
version the run restored, :data:`FRESH` for an empty model) and ``start`` (the run's
first base version). Every delta makes exactly the next version (``version ==
base_version + 1``), except a run's first (it may continue after the newest version in
the store). :func:`next_step` is the one rule a scorer follows.

Encoding
--------
``MAGIC | sha256(rest) | u32 header length | header (JSON) | arrays`` — the header lists
each array's dtype, shape and offset; arrays are raw little-endian bytes, 8-byte aligned.
Decoding checks the checksum, then accepts only the expected arrays with their fixed
dtypes: no pickle, no object arrays, nothing allocated beyond the message's own size.
On the topic the encoding travels signed by the trainer (:func:`models.wire.seal_delta`,
:mod:`models.signing`); the checksum only proves it is intact, the signature who wrote it.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from models.errors import ModelError
from models.idmap import decode_strings, encode_strings

MAGIC = b"SRDELTA1"
FRESH = -1
"""``origin`` of a lineage that started from an empty model (no snapshot)."""

_DIGEST = hashlib.sha256().digest_size
_HEADER_LEN = struct.Struct("<I")
_PREFIX = len(MAGIC) + _DIGEST + _HEADER_LEN.size
_SCALARS: dict[str, type | tuple[type, ...]] = {
    "lineage": str,
    "origin": int,
    "start": int,
    "base_version": int,
    "version": int,
    "n_users": int,
    "n_items": int,
    "trained_events": int,
    "popularity_decay": (int, float),
    "popularity_ts": (int, float, type(None)),
    "snapshot_needed": bool,
    "replaces_neighbours": bool,
}
#: Scalars a message may leave out (older trainers did not send them), with their default.
_OPTIONAL_SCALARS: dict[str, Any] = {"replaces_neighbours": False}
#: name -> (dtype, ndim); 2-d arrays are (rows, no_components).
_ARRAYS: dict[str, tuple[str, int]] = {
    "user_rows": ("<i8", 1),
    "user_embeddings": ("<f4", 2),
    "user_biases": ("<f4", 1),
    "user_positives": ("<i8", 1),
    "item_rows": ("<i8", 1),
    "item_embeddings": ("<f4", 2),
    "item_biases": ("<f4", 1),
    "popularity_rows": ("<i8", 1),
    "popularity_values": ("<f8", 1),
    "new_user_ids_blob": ("|u1", 1),
    "new_user_ids_offsets": ("<i8", 1),
    "new_item_ids_blob": ("|u1", 1),
    "new_item_ids_offsets": ("<i8", 1),
}
_DTYPES = {name: np.dtype(dtype) for name, (dtype, _) in _ARRAYS.items()}
_ROW_GROUPS = {
    "user_rows": ("user_embeddings", "user_biases", "user_positives"),
    "item_rows": ("item_embeddings", "item_biases"),
    "popularity_rows": ("popularity_values",),
}


class DeltaError(ModelError, ValueError):
    """A delta that cannot be decoded or does not apply; the message says why."""


def _empty(name: str, k: int = 0) -> np.ndarray:
    dtype, ndim = _ARRAYS[name]
    return np.zeros((0, k) if ndim == 2 else (0,), dtype=np.dtype(dtype))


@dataclass(frozen=True, eq=False)
class ModelDelta:
    """What one batch changed, from state ``(lineage, base_version)`` to ``version``."""

    lineage: str
    origin: int
    start: int
    base_version: int
    version: int
    n_users: int  # after the delta
    n_items: int
    trained_events: int
    new_user_ids: list[str] = field(default_factory=list)
    new_item_ids: list[str] = field(default_factory=list)
    user_rows: np.ndarray = field(default_factory=lambda: _empty("user_rows"))
    user_embeddings: np.ndarray = field(default_factory=lambda: _empty("user_embeddings"))
    user_biases: np.ndarray = field(default_factory=lambda: _empty("user_biases"))
    user_positives: np.ndarray = field(default_factory=lambda: _empty("user_positives"))
    item_rows: np.ndarray = field(default_factory=lambda: _empty("item_rows"))
    item_embeddings: np.ndarray = field(default_factory=lambda: _empty("item_embeddings"))
    item_biases: np.ndarray = field(default_factory=lambda: _empty("item_biases"))
    popularity_rows: np.ndarray = field(default_factory=lambda: _empty("popularity_rows"))
    popularity_values: np.ndarray = field(default_factory=lambda: _empty("popularity_values"))
    popularity_decay: float = 1.0
    """Factor every existing item's popularity is multiplied by before the rows are set."""
    popularity_ts: float | None = None
    snapshot_needed: bool = False
    """A marker without rows: the batch was too large for a message; load the snapshot of
    ``version`` (the trainer writes it at once)."""
    replaces_neighbours: bool = False
    """This delta's state (a consolidation) has new blending neighbours. Neighbours travel
    with snapshots only: a scorer applies the rows, blends with its old neighbours for the
    moment and takes the new ones from the trainer's next snapshot (written at once)."""

    @property
    def rows_touched(self) -> int:
        return len(self.user_rows) + len(self.item_rows)

    def as_marker(self) -> ModelDelta:
        """This delta without rows: "load the snapshot of ``version``"."""
        return ModelDelta(
            lineage=self.lineage,
            origin=self.origin,
            start=self.start,
            base_version=self.base_version,
            version=self.version,
            n_users=self.n_users,
            n_items=self.n_items,
            trained_events=self.trained_events,
            popularity_ts=_finite_or_none(self.popularity_ts),
            snapshot_needed=True,
        )

    def verify(self) -> None:
        """Raise :class:`DeltaError` if scorers would refuse this delta's message: the very
        checks :meth:`decode` applies to every message (fields, ranges, every float finite
        at its wire dtype, row groups), on this object. The trainer calls it before it
        sends a delta (:mod:`agents.deltas`); a refused one goes out as a marker instead."""
        _check_scalars({name: getattr(self, name) for name in _SCALARS})
        _check_arrays(
            {name: getattr(self, name) for name in _ARRAYS if not name.startswith("new_")}
        )

    # --- wire --------------------------------------------------------------------------
    def encode(self) -> bytes:
        """The binary message (see the module docstring)."""
        scalars = {name: getattr(self, name) for name in _SCALARS}
        arrays: dict[str, np.ndarray] = {}
        for name in _ARRAYS:
            if name.startswith("new_"):
                continue
            arrays[name] = getattr(self, name)
        for side in ("user", "item"):
            blob, offsets = encode_strings(getattr(self, f"new_{side}_ids"))
            arrays[f"new_{side}_ids_blob"] = blob
            arrays[f"new_{side}_ids_offsets"] = offsets
        layout = []
        chunks = []
        offset = 0
        for name, (dtype, _) in _ARRAYS.items():
            data = np.ascontiguousarray(arrays[name], dtype=np.dtype(dtype)).tobytes()
            layout.append([name, list(arrays[name].shape), offset])
            pad = -len(data) % 8
            chunks.append(data + b"\0" * pad)
            offset += len(data) + pad
        header = json.dumps({"scalars": scalars, "arrays": layout}, separators=(",", ":"))
        header_bytes = header.encode()
        header_bytes += b" " * (-(_PREFIX + len(header_bytes)) % 8)
        body = _HEADER_LEN.pack(len(header_bytes)) + header_bytes + b"".join(chunks)
        return MAGIC + hashlib.sha256(body).digest() + body

    @classmethod
    def decode(cls, raw: bytes | None) -> ModelDelta:
        """Verify and parse one message; raises :class:`DeltaError` with the reason."""
        if raw is None:
            raise DeltaError("delta message has no value")
        if len(raw) < _PREFIX or not raw.startswith(MAGIC):
            raise DeltaError("not a streamrec model delta (bad magic)")
        digest = raw[len(MAGIC) : len(MAGIC) + _DIGEST]
        body = memoryview(raw)[len(MAGIC) + _DIGEST :]
        if hashlib.sha256(body).digest() != digest:
            raise DeltaError("delta checksum mismatch")
        (header_len,) = _HEADER_LEN.unpack_from(body)
        data_start = _HEADER_LEN.size + header_len
        if data_start > len(body):
            raise DeltaError("delta header runs past the message")
        try:
            header = json.loads(bytes(body[_HEADER_LEN.size : data_start]))
            scalars, layout = header["scalars"], header["arrays"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DeltaError(f"delta header is not valid: {exc}") from None
        values = _check_scalars(scalars)
        data = body[data_start:]
        arrays = _read_arrays(layout, data)
        _check_arrays(arrays)
        ids = {}
        for side in ("user", "item"):
            try:
                ids[side] = decode_strings(
                    arrays.pop(f"new_{side}_ids_blob"), arrays.pop(f"new_{side}_ids_offsets")
                )
            except ValueError as exc:
                raise DeltaError(f"new {side} ids: {exc}") from None
        fields: dict[str, Any] = {**values, **arrays}
        return cls(**fields, new_user_ids=ids["user"], new_item_ids=ids["item"])


def _check_scalars(scalars: Any) -> dict[str, Any]:
    if isinstance(scalars, dict):
        scalars = {**_OPTIONAL_SCALARS, **scalars}
    if not isinstance(scalars, dict) or set(scalars) != set(_SCALARS):
        raise DeltaError("delta header has the wrong fields")
    for name, kind in _SCALARS.items():
        value = scalars[name]
        if (kind is not bool and isinstance(value, bool)) or not isinstance(value, kind):
            raise DeltaError(f"delta field {name!r} has the wrong type")
    for name in ("start", "base_version", "version", "n_users", "n_items", "trained_events"):
        if scalars[name] < 0:
            raise DeltaError(f"delta field {name!r} must be >= 0")
    if scalars["origin"] < FRESH:
        raise DeltaError("delta origin must be a version or -1")
    if scalars["version"] <= scalars["base_version"]:
        raise DeltaError("a delta must make a newer version than its base")
    decay = scalars["popularity_decay"]
    if not (math.isfinite(decay) and 0 < decay <= 1):
        raise DeltaError("popularity_decay must be in (0, 1]")
    ts = scalars["popularity_ts"]
    if ts is not None and not math.isfinite(ts):
        raise DeltaError("popularity_ts must be finite")
    return dict(scalars)


def _read_arrays(layout: Any, data: memoryview) -> dict[str, np.ndarray]:
    if not isinstance(layout, list) or len(layout) != len(_ARRAYS):
        raise DeltaError("delta has the wrong arrays")
    out = {}
    for entry in layout:
        try:
            name, shape, offset = entry
        except (TypeError, ValueError):
            raise DeltaError("delta array entry is malformed") from None
        if name not in _ARRAYS or name in out:
            raise DeltaError(f"unexpected delta array {name!r}")
        ndim = _ARRAYS[name][1]
        if (
            not isinstance(shape, list)
            or len(shape) != ndim
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or not isinstance(offset, int)
            or offset < 0
        ):
            raise DeltaError(f"delta array {name!r} has a bad shape or offset")
        dt = _DTYPES[name]
        size = math.prod(shape) * dt.itemsize
        if offset + size > len(data):
            raise DeltaError(f"delta array {name!r} runs past the message")
        array = np.frombuffer(data, dtype=dt, count=math.prod(shape), offset=offset)
        out[name] = array.reshape(shape).copy()  # own, aligned, writable until frozen
    return out


def _check_arrays(arrays: dict[str, np.ndarray]) -> None:
    """Every float finite at its wire dtype; the rows of each group agree; one width."""
    for name, array in arrays.items():
        ndim = _ARRAYS[name][1]
        if array.ndim != ndim:
            raise DeltaError(f"delta array {name!r} has {array.ndim} dimensions, not {ndim}")
        wire = _DTYPES[name]
        if wire.kind == "f" and array.size:
            if array.dtype != wire:
                with np.errstate(over="ignore"):  # a float64 past float32's range: inf, refused
                    array = array.astype(wire)
            if not np.isfinite(array).all():
                raise DeltaError(f"delta array {name!r} has NaN or infinite values")
    k = arrays["user_embeddings"].shape[1]
    for rows_name, names in _ROW_GROUPS.items():
        n = len(arrays[rows_name])
        for name in names:
            if len(arrays[name]) != n:
                raise DeltaError(f"{name} has {len(arrays[name])} rows, {rows_name} {n}")
    if arrays["item_embeddings"].shape[1] != k and len(arrays["item_embeddings"]):
        raise DeltaError("user and item embeddings have different widths")


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# --- applying --------------------------------------------------------------------------
def check_applies(delta: ModelDelta, *, version: int, n_users: int, n_items: int, k: int) -> None:
    """Raise :class:`DeltaError` unless ``delta`` fits a state with these sizes exactly:
    every row in range, every new row written, no known id added again."""
    if delta.snapshot_needed:
        raise DeltaError(f"delta v{delta.version} carries no rows: load the snapshot")
    if delta.base_version != version:
        raise DeltaError(f"delta applies to v{delta.base_version}, the view is v{version}")
    for side, old, new, ids in (
        ("user", n_users, delta.n_users, delta.new_user_ids),
        ("item", n_items, delta.n_items, delta.new_item_ids),
    ):
        if new != old + len(ids):
            raise DeltaError(f"{len(ids)} new {side}s do not grow {old} {side}s to {new}")
        if len(set(ids)) != len(ids):
            raise DeltaError(f"new {side} ids repeat")
    for rows_name, n_old, n_new in (
        ("user_rows", n_users, delta.n_users),
        ("item_rows", n_items, delta.n_items),
        ("popularity_rows", n_items, delta.n_items),
    ):
        rows = getattr(delta, rows_name)
        if len(rows) and (rows.min() < 0 or rows.max() >= n_new):
            raise DeltaError(f"{rows_name} out of range")
        if len(rows) > 1 and not (rows[1:] > rows[:-1]).all():
            raise DeltaError(f"{rows_name} must be strictly increasing (no row twice)")
        if int(np.count_nonzero(rows >= n_old)) != n_new - n_old:
            raise DeltaError(f"{rows_name} do not set every new row")
    for name in ("user_embeddings", "item_embeddings"):
        array = getattr(delta, name)  # empty ones too: (0, 0) made with_delta raise
        if array.shape[1] != k:
            raise DeltaError(f"{name} have {array.shape[1]} components, the view has {k}")
    if (delta.user_positives < 0).any() or (delta.popularity_values < 0).any():
        raise DeltaError("user positives and popularity must be >= 0")


# --- the chain rule ---------------------------------------------------------------------
Step = Literal["apply", "skip", "join", "reload_origin", "resync", "ignore", "refuse"]


@dataclass(frozen=True, slots=True)
class Chain:
    """Where a scorer's view stands in the delta chain."""

    lineage: str | None = None
    """Lineage of the deltas applied (or of the snapshot loaded)."""
    version: int = -1
    """Version served (-1: nothing loaded)."""
    snapshot: int | None = FRESH
    """Version of the snapshot loaded while no delta has been applied since
    (:data:`FRESH`: the empty model; None once a delta has been applied)."""
    pinned: bool = False
    """Loaded by an operator's promote/rollback: only a lineage that starts from it moves on."""
    target: str | None = None
    """After a resync: the lineage being caught up to; other lineages' deltas are skipped."""

    def applied(self, delta: ModelDelta) -> Chain:
        return Chain(delta.lineage, delta.version, None, self.pinned, None)


def next_step(chain: Chain, delta: ModelDelta) -> Step:
    """What a scorer at ``chain`` does with the next ``delta`` read from the topic.

    * ``apply`` — it continues the chain (same lineage, base = version served);
    * ``skip`` — already applied, or of a lineage older than the one being caught up to;
    * ``join`` — the first delta of a new lineage that began from exactly the (untouched)
      snapshot served: apply it and follow that lineage;
    * ``reload_origin`` — the first delta of a new lineage that began from another
      snapshot: load that snapshot, then join;
    * ``resync`` — a gap: load the newest snapshot and read on from where it ends;
    * ``ignore`` — pinned by promote/rollback: deltas of other states do not win;
    * ``refuse`` — it does not extend its chain by exactly one version (``version !=
      base_version + 1``): no trainer writes it; dropped, and the chain goes on as if it
      had never been read (a huge version must not make the real deltas look old). Only
      a run's first delta (a new lineage, ``base_version == start``) may make a later
      version: a restored trainer's versions continue after the newest in the store.
    """
    first_of_run = delta.lineage != chain.lineage and delta.base_version == delta.start
    if delta.version != delta.base_version + 1 and not first_of_run:
        return "refuse"
    if chain.target is not None and delta.lineage != chain.target:
        return "skip"
    if delta.lineage == chain.lineage:
        if delta.version <= chain.version:
            return "skip"
        if delta.base_version == chain.version:
            return "apply"
        return "ignore" if chain.pinned else "resync"
    starts = delta.base_version == delta.start
    if starts and chain.snapshot is not None and delta.origin == chain.snapshot:
        return "join"
    if chain.pinned:
        return "ignore"
    return "reload_origin" if starts else "resync"
