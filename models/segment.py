"""Checkpoint segments: the training state's rows changed since a parent checkpoint, as .npz
bytes + a signed manifest; a restore is a full snapshot (the chain's base) with its segments
applied in order (:func:`assemble`), bit-identical to the state that was cut.

A segment holds, for the user and item rows changed since its parent (every new row
included): the LightFM arrays' rows (all twelve; adagrad's four momentum arrays, which it
never writes and so stay zero, are left out), ``user_positives`` and the event counts; the
new ids; those item rows' popularity counts and the factors the counts were decayed by
since the parent, in order (every other count is the parent's decayed by them: the same
multiplications, so exactly); the event ids and consolidation-window entries appended
since the parent (both are FIFOs: the state is the parent's followed by the tail, cut to
the new size); the neighbours when a consolidation replaced them; and the scalars
(version, offsets, counters). The manifest names its ``parent`` version and that
payload's sha256, which a restore checks, and the chain's ``base``. Decoding refuses
anything :func:`encode_segment` would not write; segments of the first layout (every
item's count, the momentum rows) still decode.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp

from models.config import ModelConfig
from models.consolidation import DTYPES as WINDOW_DTYPES
from models.consolidation import FIELDS as WINDOW_FIELDS
from models.errors import SnapshotError
from models.fitter import PARTS
from models.idmap import decode_strings, encode_strings
from models.manifest import SEGMENT_FORMAT, ChainMark, Manifest
from models.ownership import Share
from models.scoring import ScoringView
from models.signing import Keyring
from models.snapshot import (
    EVENT_COUNTS,
    MIRRORED,
    SnapshotState,
    check_accumulators,
    check_neighbours,
    check_window,
    decode,
    decode_scoring,
    library_versions,
    load_scoring_view,
    read_meta,
    read_npz,
    scoring_view_of,
    verify,
    write_npz,
)

USER_ARRAYS = (*(f"user_{part}" for part in PARTS), "user_positives", "user_events")
ITEM_ARRAYS = (*(f"item_{part}" for part in PARTS), "item_events")
"""The per-row arrays a segment carries the changed rows of, per side."""
MOMENTUM = tuple(name for name in (*USER_ARRAYS, *ITEM_ARRAYS) if name.endswith("_momentum"))
"""Left out of a segment under adagrad (:func:`carried`)."""
_DECAYS = "popularity_decays"
_Fifo = TypeVar("_Fifo", list[str], np.ndarray)
_STRING_LISTS = ("new_user_ids", "new_item_ids", "recent_tail")
_NEIGHBOURS = ("neighbours_data", "neighbours_indices", "neighbours_indptr")
_MIRRORED = (*MIRRORED, "parent", "parent_sha256", "base")
"""A segment's mirrored manifest fields: a snapshot's, and where its chain hangs."""


@dataclass(frozen=True)
class ChainHead:
    """The newest checkpoint written, where the next segment may continue: its version
    and payload sha256, and its chain's base and sizes."""

    version: int
    sha256: str
    base: int  # the chain's full snapshot
    base_bytes: int  # its payload's size
    chain_bytes: int  # the payload bytes of the segments since it
    segments: int  # how many

    @classmethod
    def of(
        cls, manifest: Mapping[str, Any], payload_bytes: int, head: ChainHead | None
    ) -> ChainHead:
        """The head after writing ``manifest`` (a segment continues ``head``)."""
        version, sha = manifest["version"], manifest["sha256"]
        if "parent" not in manifest or head is None:
            return cls(version, sha, version, payload_bytes, 0, 0)
        return cls(
            version, sha, head.base, head.base_bytes, manifest["chain_bytes"], head.segments + 1
        )

    @classmethod
    def stored(cls, chain: Sequence[tuple[bytes, Mapping[str, Any]]]) -> ChainHead:
        """The head at the end of a stored ``chain`` (base first, as
        :func:`decode_chain` reads it): a restored model's next segment continues it."""
        (base, first), manifest = chain[0], chain[-1][1]
        chain_bytes = manifest.get("chain_bytes", 0) if len(chain) > 1 else 0
        return cls(
            manifest["version"], manifest["sha256"], first["version"], len(base), chain_bytes,
            len(chain) - 1,
        )  # fmt: skip


@dataclass
class Segment:
    """What changed between the parent checkpoint (``parent``) and ``version``."""

    config: ModelConfig
    version: int
    parent: int
    trained_events: int
    offsets: dict[str, int]
    popularity_ts: float | None
    n_users: int
    n_items: int
    new_user_ids: list[str]  # rows n_users - len(new_user_ids) .. n_users - 1
    new_item_ids: list[str]
    user_rows: np.ndarray  # int64, sorted, unique; every new row included
    item_rows: np.ndarray
    rows: dict[str, np.ndarray]  # USER_ARRAYS at user_rows, ITEM_ARRAYS at item_rows
    popularity: np.ndarray  # float64 at item_rows (every item when popularity_decays is None)
    recent_tail: list[str]  # event ids remembered since the parent (the newest, in order)
    recent_size: int
    window_tail: dict[str, np.ndarray]  # window entries appended since the parent
    window_size: int
    since_consolidation: int
    neighbours: sp.csr_matrix | None = None  # None: the parent's
    chain: ChainMark | None = None
    #: The factors the popularity counts were decayed by since the parent, in order (None:
    #: a segment of the first format, with every item's count).
    popularity_decays: np.ndarray | None = None

    @property
    def parent_sizes(self) -> tuple[int, int]:
        """The parent's ``(n_users, n_items)``."""
        return self.n_users - len(self.new_user_ids), self.n_items - len(self.new_item_ids)


def carried(config: ModelConfig, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The changed rows a segment carries: under adagrad without the momentum arrays,
    which LightFM's adagrad never writes (:mod:`models.submodel`) and which are zero (new
    rows too, :mod:`models.fitter`); kept if any carried row is not (never expected)."""
    if config.learning_schedule != "adagrad" or any(rows[name].any() for name in MOMENTUM):
        return rows
    return {name: array for name, array in rows.items() if name not in MOMENTUM}


def encode_segment(
    segment: Segment, parent_sha256: str, base: int, chain_bytes: int = 0
) -> tuple[bytes, Manifest]:
    """``(payload, manifest)`` of ``segment``, linked to its parent's payload sha256;
    ``chain_bytes``: the bytes of the chain's earlier segments (the manifest adds these)."""
    meta: dict[str, Any] = {
        "format": SEGMENT_FORMAT,
        "version": segment.version,
        "parent": segment.parent,
        "parent_sha256": parent_sha256,
        "base": base,
        "offsets": dict(segment.offsets),
        "trained_events": segment.trained_events,
        "n_users": segment.n_users,
        "n_items": segment.n_items,
        "config": segment.config.to_dict(),
        "popularity_ts": segment.popularity_ts,
        "since_consolidation": segment.since_consolidation,
        "recent_size": segment.recent_size,
        "window_size": segment.window_size,
    }
    if segment.chain is not None:
        meta["delta_chain"] = dict(segment.chain)
    entries: dict[str, np.ndarray] = {
        "user_rows": np.asarray(segment.user_rows, dtype=np.int64),
        "item_rows": np.asarray(segment.item_rows, dtype=np.int64),
        "popularity": np.asarray(segment.popularity, dtype=np.float64),
        **segment.rows,
        **({} if segment.popularity_decays is None else {_DECAYS: segment.popularity_decays}),
        **{f"window_{name}": segment.window_tail[name] for name in WINDOW_FIELDS},
    }
    if segment.neighbours is not None:
        for entry in _NEIGHBOURS:
            part = getattr(segment.neighbours, entry.removeprefix("neighbours_"))
            entries[entry] = np.asarray(part, dtype=np.int32 if entry.endswith("indices") else None)
        entries["neighbours_data"] = entries["neighbours_data"].astype(np.float32)
        entries["neighbours_indptr"] = entries["neighbours_indptr"].astype(np.int64)
    for name in _STRING_LISTS:
        entries[f"{name}_blob"], entries[f"{name}_offsets"] = encode_strings(getattr(segment, name))
    payload = write_npz(entries, meta)
    manifest: Manifest = {
        "format": SEGMENT_FORMAT,
        "version": segment.version,
        "offsets": meta["offsets"],
        "trained_events": segment.trained_events,
        "n_users": segment.n_users,
        "n_items": segment.n_items,
        "config": meta["config"],
        "sha256": hashlib.sha256(payload).hexdigest(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "library_versions": library_versions(),
        "payload_bytes": len(payload),
        "parent": segment.parent,
        "parent_sha256": parent_sha256,
        "base": base,
        "chain_bytes": chain_bytes + len(payload),
    }
    if segment.chain is not None:
        manifest["delta_chain"] = meta["delta_chain"]
    return payload, manifest


def decode_segment(
    payload: bytes,
    raw_manifest: Mapping[str, Any],
    keys: Any = None,
    *,
    payload_checked: bool = False,
) -> Segment:
    """Verify (signature with ``keys``, sha256, manifest == payload) and read a segment;
    :class:`SnapshotError` with the reason for anything :func:`encode_segment` would not
    have written. ``payload_checked``: :func:`models.snapshot.verify`'s."""
    manifest = verify(payload, raw_manifest, keys, payload_checked=payload_checked)
    if manifest["format"] != SEGMENT_FORMAT:
        raise SnapshotError(f"v{manifest['version']} is not a segment ({manifest['format']})")
    expected = {"meta", "user_rows", "item_rows", "popularity", *USER_ARRAYS, *ITEM_ARRAYS}
    expected -= set(MOMENTUM)
    expected |= {f"window_{name}" for name in WINDOW_FIELDS}
    expected |= {f"{name}_{part}" for name in _STRING_LISTS for part in ("blob", "offsets")}
    optional = {*_NEIGHBOURS, *MOMENTUM, _DECAYS}
    entries = read_npz(payload, expected, optional, expected | optional)
    meta, config = read_meta(entries.pop("meta"), manifest, _MIRRORED)
    momentum = [name for name in MOMENTUM if name in entries]
    if momentum and len(momentum) != len(MOMENTUM):
        raise SnapshotError(f"segment carries only some momentum arrays: {momentum}")
    if not momentum and config.learning_schedule != "adagrad":
        raise SnapshotError(f"a {config.learning_schedule} segment must carry momentum rows")
    sizes: dict[str, int] = {}
    for key in ("recent_size", "window_size", "since_consolidation"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SnapshotError(f"segment {key} must be an int >= 0")
        sizes[key] = value
    strings = {}
    for name in _STRING_LISTS:
        try:
            strings[name] = decode_strings(entries[f"{name}_blob"], entries[f"{name}_offsets"])
        except ValueError as exc:
            raise SnapshotError(f"{name}: {exc}") from None
    n = {"user": manifest["n_users"], "item": manifest["n_items"]}
    rows = {}
    for side, names in (("user", USER_ARRAYS), ("item", ITEM_ARRAYS)):
        new = strings[f"new_{side}_ids"]
        if len(set(new)) != len(new) or len(new) > n[side]:
            raise SnapshotError(f"new_{side}_ids has duplicates or more ids than {side}s")
        rows[side] = _check_rows(
            entries[f"{side}_rows"], f"{side}_rows", n[side] - len(new), n[side]
        )
        for name in names:
            if name in entries:
                _check_array(entries[name], name, len(rows[side]), config.no_components)
    check_accumulators(config, entries)
    popularity, decays = entries["popularity"], entries.get(_DECAYS)
    counts = n["item"] if decays is None else len(rows["item"])
    if popularity.dtype != np.float64 or popularity.shape != (counts,):
        raise SnapshotError(f"popularity must be float64 of shape ({counts},)")
    if not np.isfinite(popularity).all() or (popularity < 0).any():
        raise SnapshotError("popularity must be finite and >= 0")
    if decays is not None and (
        decays.dtype != np.float64
        or decays.ndim != 1
        or not ((decays >= 0) & (decays <= 1)).all()  # NaN too
    ):
        raise SnapshotError("popularity_decays must be 1-d float64 in [0, 1]")
    window = check_window(entries, n)
    return Segment(
        config=config,
        version=manifest["version"],
        parent=meta["parent"],
        trained_events=manifest["trained_events"],
        offsets=dict(manifest["offsets"]),
        popularity_ts=meta["popularity_ts"],
        n_users=n["user"],
        n_items=n["item"],
        new_user_ids=strings["new_user_ids"],
        new_item_ids=strings["new_item_ids"],
        user_rows=rows["user"],
        item_rows=rows["item"],
        rows={name: entries[name] for name in (*USER_ARRAYS, *ITEM_ARRAYS) if name in entries},
        popularity=popularity,
        popularity_decays=decays,
        recent_tail=strings["recent_tail"],
        recent_size=sizes["recent_size"],
        window_tail=window,
        window_size=sizes["window_size"],
        since_consolidation=sizes["since_consolidation"],
        neighbours=check_neighbours(entries, n["item"]),
        chain=manifest.get("delta_chain"),
    )


def _check_rows(rows: np.ndarray, name: str, old: int, n: int) -> np.ndarray:
    """Sorted unique rows in 0..n-1 that include every new row old..n-1."""
    if rows.dtype != np.int64 or rows.ndim != 1:
        raise SnapshotError(f"{name} must be 1-d int64")
    if len(rows) and (rows[0] < 0 or rows[-1] >= n or (np.diff(rows) <= 0).any()):
        raise SnapshotError(f"{name} must be sorted, unique rows in 0..{n - 1}")
    new = rows[rows >= old]
    if len(new) != n - old:  # sorted, unique and < n: then they are exactly old..n-1
        raise SnapshotError(f"{name} lacks some of the new rows {old}..{n - 1}")
    return rows


def _check_array(array: np.ndarray, name: str, count: int, k: int) -> None:
    """One carried array: its dtype, ``count`` rows (of ``k`` for embeddings), finite, and
    counts >= 0."""
    counts = name.endswith(("positives", "events"))
    dtype = np.dtype(np.int64 if counts else np.float32)
    shape = (count, k) if "embedding" in name else (count,)
    if array.dtype != dtype or array.shape != shape:
        raise SnapshotError(
            f"{name} must be {dtype} of shape {shape}, got {array.dtype} {array.shape}"
        )
    if counts and (array < 0).any():
        raise SnapshotError(f"{name} must be >= 0")
    if not counts and not np.isfinite(array).all():
        raise SnapshotError(f"{name} contains NaN or infinite values")


def assemble(
    base: SnapshotState,
    segments: Sequence[Segment],
    *,
    training: bool = True,
    share: Share | None = None,
) -> SnapshotState:
    """``base`` with ``segments`` applied in order (each continues the one before): the
    state of the last one. ``training`` False: only the arrays ``base`` holds, no event
    ids or window (a scorer's load). Arrays are allocated once at the final sizes. A base
    that holds a ``share``'s user ids (``held_rows``) keeps only that share's new ones."""
    if not segments:
        return base
    held = base.held_rows
    if held is not None and share is None:
        raise SnapshotError("a share's base needs the share to assemble its segments")
    base_users = len(base.user_ids) if held is None else len(base.arrays["user_biases"])
    sizes = (base_users, len(base.item_ids))
    version = base.version
    for segment in segments:
        if segment.parent != version:
            raise SnapshotError(
                f"segment v{segment.version} continues v{segment.parent}, not v{version}"
            )
        if segment.parent_sizes != sizes:
            raise SnapshotError(
                f"segment v{segment.version} continues {segment.parent_sizes} users/items, "
                f"its parent has {sizes}"
            )
        if segment.config != base.config:
            raise SnapshotError(
                f"segment v{segment.version} has another model config than its base"
            )
        version, sizes = segment.version, (segment.n_users, segment.n_items)
    last = segments[-1]
    n = {"user": last.n_users, "item": last.n_items}
    arrays = {}
    popularity = np.zeros(n["item"], dtype=np.float64)
    popularity[: len(base.item_ids)] = base.arrays["popularity"]
    for name, array in base.arrays.items():
        if name == "popularity":
            continue
        side = name.partition("_")[0]
        grown = np.zeros((n[side], *array.shape[1:]), dtype=array.dtype)
        grown[: len(array)] = array
        arrays[name] = grown
    if training:
        for name in EVENT_COUNTS:  # absent in snapshots older than the counts: from zero
            side = name.partition("_")[0]
            arrays.setdefault(name, np.zeros(n[side], dtype=np.int64))
    user_ids, item_ids = list(base.user_ids), list(base.item_ids)
    recent, window = list(base.recent_event_ids), dict(base.window)
    neighbours = base.neighbours
    for segment in segments:
        for side, names in (("user", USER_ARRAYS), ("item", ITEM_ARRAYS)):
            rows = segment.user_rows if side == "user" else segment.item_rows
            for name in names:
                if name in arrays and name in segment.rows:
                    arrays[name][rows] = segment.rows[name]
        if segment.popularity_decays is None:
            popularity[: segment.n_items] = segment.popularity
        else:  # the counts the parent had, decayed as the trainer did, one factor at a time
            parent_items = segment.parent_sizes[1]
            for factor in segment.popularity_decays:
                popularity[:parent_items] *= factor
            popularity[segment.item_rows] = segment.popularity
        if held is not None and share is not None:  # only the share's new users
            keep = share.held(segment.new_user_ids) if segment.new_user_ids else _NONE
            first = segment.n_users - len(segment.new_user_ids)
            held = np.concatenate([held, first + np.flatnonzero(keep)])
            user_ids += [u for u, k in zip(segment.new_user_ids, keep.tolist(), strict=True) if k]
        else:
            user_ids += segment.new_user_ids
        item_ids += segment.new_item_ids
        if training:
            recent = _fifo(recent + segment.recent_tail, segment.recent_size, "event ids")
            window = {
                name: _fifo(
                    np.concatenate([window.get(name, np.zeros(0, WINDOW_DTYPES[name])), tail]),
                    segment.window_size,
                    "window",
                )
                for name, tail in segment.window_tail.items()
            }
        if segment.neighbours is not None:
            neighbours = segment.neighbours
    for side, ids in (("user", user_ids), ("item", item_ids)):
        if len(set(ids)) != len(ids):
            raise SnapshotError(f"{side} ids repeat across the chain's segments")
    arrays["popularity"] = popularity
    return SnapshotState(
        config=base.config,
        version=last.version,
        trained_events=last.trained_events,
        offsets=dict(last.offsets),
        popularity_ts=last.popularity_ts,
        user_ids=user_ids,
        item_ids=item_ids,
        recent_event_ids=recent if training else [],
        arrays=arrays,
        window=window if training else {},
        since_consolidation=last.since_consolidation,
        neighbours=neighbours,
        chain=last.chain,
        held_rows=held,
    )


_NONE = np.zeros(0, dtype=bool)


def _fifo(values: _Fifo, size: int, what: str) -> _Fifo:
    """The newest ``size`` of ``values``: a FIFO's contents after appending."""
    if size > len(values):
        raise SnapshotError(f"segment keeps {size} {what} entries, only {len(values)} exist")
    return values[len(values) - size :]


def decode_chain(
    chain: Sequence[tuple[bytes, Mapping[str, Any]]],
    keys: Keyring | None = None,
    *,
    training: bool = True,
    share: Share | None = None,
    payload_checked: bool = False,
) -> SnapshotState:
    """The state at the end of ``chain`` (a full snapshot, then its segments in order, as
    stored), every link verified (signatures with ``keys``, sha256s, each segment's parent
    sha256). ``training`` False: only what a scorer needs; with ``share`` too, only that
    share's user ids (the base's others are never decoded). ``payload_checked``: each
    payload was checked against its manifest's sha256 already (a store's ``get``)."""
    if not chain:
        raise SnapshotError("an empty checkpoint chain")
    (payload, manifest), rest = chain[0], chain[1:]
    if training:
        base = decode(payload, manifest, keys)
    else:
        snap = decode_scoring(payload, manifest, keys, share, payload_checked=payload_checked)
        base = SnapshotState(
            config=snap.config,
            version=snap.version,
            trained_events=0,
            offsets={},
            popularity_ts=snap.popularity_ts,
            user_ids=snap.user_ids,
            item_ids=snap.item_ids,
            recent_event_ids=[],
            arrays=snap.arrays,
            neighbours=snap.neighbours,
            chain=snap.chain,
            held_rows=snap.held_rows,
        )
    segments = []
    parent_sha = manifest.get("sha256")
    for payload, manifest in rest:
        segment = decode_segment(payload, manifest, keys, payload_checked=payload_checked)
        if manifest["parent_sha256"] != parent_sha:
            raise SnapshotError(
                f"segment v{segment.version}'s parent v{segment.parent} is not the stored one "
                f"(sha256 {parent_sha}, the segment names {manifest['parent_sha256']})"
            )
        segments.append(segment)
        parent_sha = manifest["sha256"]
    return assemble(base, segments, training=training, share=share)


def load_chain_view(
    chain: Sequence[tuple[bytes, Mapping[str, Any]]],
    keys: Keyring | None = None,
    share: Share | None = None,
    *,
    payload_checked: bool = False,
) -> tuple[ScoringView, ChainMark | None]:
    """:func:`models.snapshot.load_scoring_view` of the state at the end of ``chain``
    (with ``share``: only that share's users); ``payload_checked``: every payload was
    checked against its manifest's sha256 already (a store's ``get``: not hashed again)."""
    if len(chain) == 1:
        return load_scoring_view(*chain[0], keys, share, payload_checked=payload_checked)
    state = decode_chain(chain, keys, training=False, share=share, payload_checked=payload_checked)
    return scoring_view_of(state, share)
