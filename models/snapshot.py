"""Model snapshots as ``.npz`` bytes + a JSON manifest, with no pickle anywhere.

The payload is a zip of ``.npy`` arrays written with fixed timestamps (the same state
gives the same bytes). It holds every array of the training state plus a ``meta`` entry
(UTF-8 JSON) with the config, version, offsets and counters, so the sha256 in the manifest
covers all of it. Loading refuses anything that is not exactly what :func:`encode` writes:
wrong checksum, a compressed or unexpected zip entry, an object (pickle) array, a wrong
dtype or shape, a non-finite value, a zero adagrad accumulator, duplicate ids, or a
manifest that disagrees with the payload.

Authenticity: the trainer (and ``streamrec train``) signs the manifest
(:func:`sign_manifest`, HMAC over every manifest field, the payload's sha256 included);
every load that is given a :class:`models.signing.Keyring` refuses a snapshot whose
signature is missing (unless ``allow_unsigned_snapshots``) or is not from a trusted key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import platform
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import IO, Any

import numpy as np
import scipy.sparse as sp

from models.config import ModelConfig
from models.consolidation import DTYPES as WINDOW_DTYPES
from models.consolidation import FIELDS as WINDOW_FIELDS
from models.errors import SnapshotError as SnapshotError
from models.errors import UntrustedSnapshot as UntrustedSnapshot
from models.fitter import PARTS, SIDES, STATE_ARRAYS
from models.idmap import IdMap, check_strings, decode_strings, encode_strings
from models.manifest import FORMAT, ChainMark, Manifest, parse_manifest
from models.ownership import Share, key_hashes
from models.scoring import ScoringView
from models.signing import Keyring, SignatureError, check_fields, sign_fields

_ID_LISTS = ("user_ids", "item_ids", "recent_event_ids")
_WINDOW_ENTRIES = {f"window_{name}": name for name in WINDOW_FIELDS}
"""The consolidation window's arrays; optional (snapshots written before it have none)."""
_NEIGHBOUR_ENTRIES: dict[str, np.dtype] = {
    "neighbours_data": np.dtype(np.float32),
    "neighbours_indices": np.dtype(np.int32),
    "neighbours_indptr": np.dtype(np.int64),
}
"""The item-kNN neighbours for blending, as CSR arrays; optional, like the window."""
EVENT_COUNTS = ("user_events", "item_events")
"""Exact applied-event counts per user and per item (int64). Optional on read: snapshots
written before they existed load with the counts starting from zero."""
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
MIRRORED = (
    "format",
    "version",
    "offsets",
    "trained_events",
    "n_users",
    "n_items",
    "config",
    "delta_chain",
)
"""Manifest fields that must equal the checksummed copy inside the payload."""
SCORING_ARRAYS = (
    "user_embeddings",
    "user_biases",
    "item_embeddings",
    "item_biases",
    "popularity",
    "user_positives",
)
"""What a scorer loads from a snapshot (plus the id maps): a sixth of the training state."""
_ALL_ARRAYS = (*STATE_ARRAYS, "popularity", "user_positives", *EVENT_COUNTS)


@dataclass
class SnapshotState:
    """Everything a model needs to continue training exactly where it stopped."""

    config: ModelConfig
    version: int
    trained_events: int
    offsets: dict[str, int]
    popularity_ts: float | None
    user_ids: list[str]
    item_ids: list[str]
    recent_event_ids: list[str]
    arrays: dict[str, np.ndarray]  # the twelve LightFM arrays, popularity, user_positives
    # (and, when present, the EVENT_COUNTS)
    window: dict[str, np.ndarray] = field(default_factory=dict)  # models.consolidation
    since_consolidation: int = 0
    neighbours: sp.csr_matrix | None = None  # models.consolidation.item_neighbours
    chain: ChainMark | None = None
    """Where the state sits in the delta chain (the lineage's last delta version and the
    delta topic's next offset), None if unknown."""
    held_rows: np.ndarray | None = None
    """A scorer's share (issue 19): ``user_ids`` are only the users at these rows (the
    arrays still have every row); None: every user."""


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("lightfm-next", "numpy", "scipy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions


def write_npz(entries: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> bytes:
    """``entries`` and ``meta`` (as the ``meta`` entry, UTF-8 JSON) as an uncompressed zip of
    ``.npy`` files in name order with fixed timestamps: the same content, the same bytes."""
    entries = {
        **entries,
        "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            with archive.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(
                    f, np.ascontiguousarray(entries[name]), allow_pickle=False
                )
    return buffer.getvalue()


def encode(state: SnapshotState) -> tuple[bytes, Manifest]:
    """Serialise ``state`` to ``(payload, manifest)``."""
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": state.version,
        "offsets": dict(state.offsets),
        "trained_events": state.trained_events,
        "n_users": len(state.user_ids),
        "n_items": len(state.item_ids),
        "config": state.config.to_dict(),
        "popularity_ts": state.popularity_ts,
        "since_consolidation": state.since_consolidation,
    }
    if state.chain is not None:
        meta["delta_chain"] = dict(state.chain)
    entries = dict(state.arrays)
    if state.window:  # {}: no window (as in snapshots written before consolidation)
        entries.update({entry: state.window[name] for entry, name in _WINDOW_ENTRIES.items()})
    if state.neighbours is not None:
        for entry, dtype in _NEIGHBOUR_ENTRIES.items():  # scipy may narrow indptr to int32
            part = getattr(state.neighbours, entry.removeprefix("neighbours_"))
            entries[entry] = np.asarray(part, dtype=dtype)
    for name in _ID_LISTS:
        blob, offsets = encode_strings(getattr(state, name))
        entries[f"{name}_blob"] = blob
        entries[f"{name}_offsets"] = offsets
    payload = write_npz(entries, meta)
    manifest: Manifest = {
        "format": FORMAT,
        "version": state.version,
        "offsets": meta["offsets"],
        "trained_events": state.trained_events,
        "n_users": len(state.user_ids),
        "n_items": len(state.item_ids),
        "config": meta["config"],
        "sha256": hashlib.sha256(payload).hexdigest(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "library_versions": library_versions(),
        "payload_bytes": len(payload),
    }
    if state.chain is not None:
        manifest["delta_chain"] = meta["delta_chain"]
    return payload, manifest


SIGNATURE_PURPOSE = "snapshot"


def sign_manifest(manifest: Manifest, keys: Keyring) -> Manifest:
    """``manifest`` with its ``signature`` (over every other field, the payload's sha256
    included) made with ``keys``' signing key."""
    signature = sign_fields(manifest, keys, purpose=SIGNATURE_PURPOSE)
    return {**manifest, "signature": signature}


def check_signature(manifest: Mapping[str, Any], keys: Keyring) -> None:
    """Raise :class:`UntrustedSnapshot` unless ``manifest`` is signed by a key of ``keys``
    (an unsigned one passes only with ``keys.allow_unsigned_snapshots``)."""
    if "signature" not in manifest and keys.allow_unsigned_snapshots:
        return
    try:
        check_fields(manifest, keys, purpose=SIGNATURE_PURPOSE)
    except SignatureError as exc:
        raise UntrustedSnapshot(exc.kind, exc.reason) from None


def decode(
    payload: bytes, manifest: Mapping[str, Any], keys: Keyring | None = None
) -> SnapshotState:
    """Verify and deserialise a snapshot; raises :class:`SnapshotError` with the reason.
    With ``keys``, the manifest's signature is checked first (:func:`check_signature`)."""
    meta, config, ids, arrays, extra = _decode(
        payload, manifest, _ALL_ARRAYS, _ID_LISTS, window=True, neighbours=True, keys=keys
    )
    check_accumulators(config, arrays)
    return SnapshotState(
        config=config,
        version=meta["version"],
        trained_events=meta["trained_events"],
        offsets=dict(meta["offsets"]),
        popularity_ts=meta["popularity_ts"],
        user_ids=ids["user_ids"],
        item_ids=ids["item_ids"],
        recent_event_ids=ids["recent_event_ids"],
        arrays=arrays,
        chain=extra["chain"],
        window=extra["window"],
        since_consolidation=extra["since_consolidation"],
        neighbours=extra["neighbours"],
    )


def check_accumulators(config: ModelConfig, arrays: Mapping[str, np.ndarray]) -> None:
    """The gradient accumulators of ``arrays`` are >= 0 (> 0 under adagrad: a zero turns
    the next update NaN)."""
    for side in SIDES:
        for part in ("embedding_gradients", "bias_gradients"):
            name = f"{side}_{part}"
            if config.learning_schedule == "adagrad" and (arrays[name] <= 0).any():
                raise SnapshotError(f"{name} has adagrad accumulators <= 0 (would turn NaN)")
            if (arrays[name] < 0).any():
                raise SnapshotError(f"{name} has negative accumulators")


@dataclass
class ScoringSnapshot:
    """Only what scoring needs from a snapshot: no gradients, momentum or event ids.

    ``arrays`` are read-only views of the payload (no copy while loading: a scorer's peak
    memory is the payload plus what the view copies out of it)."""

    version: int
    config: ModelConfig
    popularity_ts: float | None
    user_ids: list[str]
    item_ids: list[str]
    arrays: dict[str, np.ndarray]  # SCORING_ARRAYS
    chain: ChainMark | None
    neighbours: sp.csr_matrix | None = None  # for blending
    held_rows: np.ndarray | None = None
    """With a share: the rows of the users in ``user_ids`` (only those were decoded)."""


def decode_scoring(
    payload: bytes,
    manifest: Mapping[str, Any],
    keys: Keyring | None = None,
    share: Share | None = None,
    *,
    payload_checked: bool = False,
) -> ScoringSnapshot:
    """Verify a snapshot (checksum over the whole payload, manifest) and read only the
    :data:`SCORING_ARRAYS` and id maps — a scorer never holds the training state. With
    ``share``, only the user ids of that share are decoded (the others are hashed from the
    stored bytes, :func:`models.ownership.key_hashes`, and skipped). ``payload_checked``:
    see :func:`verify`."""
    meta, config, ids, arrays, extra = _decode(
        payload,
        manifest,
        SCORING_ARRAYS,
        ("user_ids", "item_ids"),
        neighbours=True,
        views=True,
        keys=keys,
        share=share,
        payload_checked=payload_checked,
    )
    return ScoringSnapshot(
        version=meta["version"],
        config=config,
        popularity_ts=meta["popularity_ts"],
        user_ids=ids["user_ids"],
        item_ids=ids["item_ids"],
        arrays=arrays,
        chain=extra["chain"],
        neighbours=extra["neighbours"],
        held_rows=extra.get("held_rows"),
    )


def load_scoring_view(
    payload: bytes,
    manifest: Mapping[str, Any],
    keys: Keyring | None = None,
    share: Share | None = None,
    *,
    payload_checked: bool = False,
) -> tuple[ScoringView, ChainMark | None]:
    """A verified snapshot as a :class:`ScoringView` (scoring arrays only) and its
    ``delta_chain`` (where deltas continue from it; None if it does not say). With
    ``keys``, the manifest's signature is checked first; with ``share``, the view holds
    only that share's users (every item). ``payload_checked``: see :func:`verify`."""
    state = decode_scoring(payload, manifest, keys, share, payload_checked=payload_checked)
    return scoring_view_of(state, share)


def scoring_view_of(
    state: ScoringSnapshot | SnapshotState, share: Share | None = None
) -> tuple[ScoringView, ChainMark | None]:
    """A decoded snapshot (or a checkpoint chain's state) as a :class:`ScoringView`, and
    its ``delta_chain``; with ``share``, holding only that share's users."""
    user_ids, held, n_users = state.user_ids, None, len(state.user_ids)
    if state.held_rows is not None:  # decoded for this share already
        held, n_users = state.held_rows, len(state.arrays["user_biases"])
    elif share is not None:
        held = np.flatnonzero(share.held(user_ids))
        user_ids = [user_ids[i] for i in held.tolist()]
    view = ScoringView.from_arrays(
        version=state.version,
        users=IdMap(user_ids),
        items=IdMap(state.item_ids),
        arrays=state.arrays,
        popularity_ts=state.popularity_ts,
        neighbours=state.neighbours,
        blend_weight=state.config.blend_weight,
        share=share,
        held_rows=held,
        n_global=n_users,
    )
    return view, state.chain


def _decode(
    payload: bytes,
    raw_manifest: Mapping[str, Any],
    names: tuple[str, ...],
    id_lists: tuple[str, ...],
    *,
    window: bool = False,
    neighbours: bool = False,
    views: bool = False,
    keys: Keyring | None = None,
    share: Share | None = None,
    payload_checked: bool = False,
) -> tuple[
    dict[str, Any], ModelConfig, dict[str, list[str]], dict[str, np.ndarray], dict[str, Any]
]:
    """The checks every load shares, reading only the entries ``names`` and ``id_lists``,
    and (into the last dict) the consolidation ``window`` and the blending ``neighbours``.
    ``views``: the arrays are read-only views of ``payload`` instead of copies."""
    manifest = verify(payload, raw_manifest, keys, payload_checked=payload_checked)
    if manifest["format"] != FORMAT:
        raise SnapshotError(
            f"v{manifest['version']} is a {manifest['format']}, not a full snapshot"
        )
    wanted = {"meta", *names, *(f"{n}_{s}" for n in id_lists for s in ("blob", "offsets"))}
    wanted |= set(_WINDOW_ENTRIES) if window else set()
    wanted |= set(_NEIGHBOUR_ENTRIES) if neighbours else set()
    entries = _read_entries(payload, wanted, views=views)
    meta, config = read_meta(entries.pop("meta"), manifest, MIRRORED)

    ids: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    extra: dict[str, Any] = {}
    for name in id_lists:
        blob, offsets = entries[f"{name}_blob"], entries[f"{name}_offsets"]
        try:
            rows = None
            if share is not None and name == "user_ids":  # decode only the share's ids
                check_strings(blob, offsets)
                if share.everything:  # every partition (a survivor's): no id to hash
                    extra["held_rows"] = np.arange(len(offsets) - 1)
                else:
                    rows = np.flatnonzero(share.held_hashes(key_hashes(blob, offsets)))
                    extra["held_rows"] = rows
            ids[name] = decode_strings(blob, offsets, rows)
        except ValueError as exc:
            raise SnapshotError(f"{name}: {exc}") from None
        counts[name] = len(offsets) - 1
        if len(set(ids[name])) != len(ids[name]):  # a repeated id: the same share holds both
            raise SnapshotError(f"{name} contains duplicates")
    n = {"user": meta["n_users"], "item": meta["n_items"]}
    for side in SIDES:
        if counts[f"{side}_ids"] != n[side]:
            raise SnapshotError(f"{side}_ids has {counts[f'{side}_ids']} ids, expected {n[side]}")

    k = config.no_components
    expected: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    for side in SIDES:
        for part in PARTS:
            shape: tuple[int, ...] = (n[side], k) if part.startswith("embedding") else (n[side],)
            expected[f"{side}_{part}"] = (np.dtype(np.float32), shape)
    expected["popularity"] = (np.dtype(np.float64), (n["item"],))
    expected["user_positives"] = (np.dtype(np.int64), (n["user"],))
    for name in EVENT_COUNTS:
        if name in entries:
            expected[name] = (np.dtype(np.int64), (n[name.partition("_")[0]],))
    arrays = {}
    for name in names:
        if name in EVENT_COUNTS and name not in entries:
            continue  # optional: snapshots older than the counts have none
        dtype, shape = expected[name]
        array = entries[name]
        if array.dtype != dtype:
            raise SnapshotError(f"{name} has dtype {array.dtype}, expected {dtype}")
        if array.shape != shape:
            raise SnapshotError(f"{name} has shape {array.shape}, expected {shape}")
        if dtype.kind == "f" and not np.isfinite(array).all():
            raise SnapshotError(f"{name} contains NaN or infinite values")
        arrays[name] = array
    if (arrays["popularity"] < 0).any() or (arrays["user_positives"] < 0).any():
        raise SnapshotError("popularity and user_positives must be >= 0")
    if any((arrays[name] < 0).any() for name in EVENT_COUNTS if name in arrays):
        raise SnapshotError("user_events and item_events must be >= 0")
    extra["chain"] = manifest.get("delta_chain")  # == meta's (mirrored)
    if window:
        extra["window"] = check_window(entries, n)
        since = meta.get("since_consolidation", 0)
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise SnapshotError("since_consolidation must be an int >= 0")
        extra["since_consolidation"] = since
    if neighbours:
        extra["neighbours"] = check_neighbours(entries, n["item"])
    return meta, config, ids, arrays, extra


def verify(
    payload: bytes,
    raw_manifest: Mapping[str, Any],
    keys: Keyring | None,
    *,
    payload_checked: bool = False,
) -> Manifest:
    """The parsed manifest of ``payload`` once its signature (with ``keys``) and the
    payload's sha256 check out; :class:`SnapshotError` otherwise. ``payload_checked``: the
    caller has just checked the payload against this very manifest's sha256 (a store's
    ``get`` does), so it is not hashed again: at 1M users that is 800 MB, about a second
    of a scorer's load (issue 19, ``python -m benchmarks.share --join``)."""
    manifest = parse_manifest(raw_manifest)
    if keys is not None:
        check_signature(manifest, keys)
    if payload_checked:
        return manifest
    digest = hashlib.sha256(payload).hexdigest()
    if digest != manifest["sha256"]:
        raise SnapshotError(
            f"checksum mismatch: payload sha256 {digest}, manifest {manifest['sha256']}"
        )
    return manifest


def read_meta(
    array: np.ndarray, manifest: Mapping[str, Any], mirrored: tuple[str, ...]
) -> tuple[dict[str, Any], ModelConfig]:
    """The payload's ``meta`` entry, checked against the ``mirrored`` manifest fields, and
    its model config; ``popularity_ts`` becomes a float or None."""
    meta = _read_meta(array)
    for key in mirrored:
        if meta.get(key) != manifest.get(key):
            raise SnapshotError(
                f"manifest {key} {manifest.get(key)!r} != payload {meta.get(key)!r}"
            )
    try:
        config = ModelConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"bad model config: {exc}") from None
    popularity_ts = meta.get("popularity_ts")
    if popularity_ts is not None and not (
        isinstance(popularity_ts, int | float) and math.isfinite(popularity_ts)
    ):
        raise SnapshotError("popularity_ts must be a finite number or null")
    meta["popularity_ts"] = None if popularity_ts is None else float(popularity_ts)
    return meta, config


def check_neighbours(entries: dict[str, np.ndarray], n_items: int) -> sp.csr_matrix | None:
    """The blending neighbours: all three CSR arrays or none (no neighbours)."""
    present = [entry for entry in _NEIGHBOUR_ENTRIES if entry in entries]
    if not present:
        return None
    if len(present) != len(_NEIGHBOUR_ENTRIES):
        raise SnapshotError(f"neighbours incomplete: only {sorted(present)}")
    for entry, dtype in _NEIGHBOUR_ENTRIES.items():
        if entries[entry].dtype != dtype or entries[entry].ndim != 1:
            raise SnapshotError(f"{entry} must be 1-d {dtype}, got {entries[entry].dtype}")
    # copies: the matrix outlives the load, and a view would keep the whole payload alive
    data, indices, indptr = (np.array(entries[entry]) for entry in _NEIGHBOUR_ENTRIES)
    m = len(indptr) - 1
    if not 0 <= m <= n_items:
        raise SnapshotError(f"neighbours has {m} rows, expected 0..{n_items}")
    if indptr[0] != 0 or (np.diff(indptr) < 0).any() or indptr[-1] != len(indices):
        raise SnapshotError("neighbours_indptr is not a valid CSR row index")
    if len(data) != len(indices):
        raise SnapshotError("neighbours_data and neighbours_indices differ in length")
    if len(indices) and (indices.min() < 0 or indices.max() >= m):
        raise SnapshotError(f"neighbours_indices has a column outside 0..{m - 1}")
    if not np.isfinite(data).all():
        raise SnapshotError("neighbours_data contains NaN or infinite values")
    matrix = sp.csr_matrix((data, indices, indptr), shape=(m, m))
    for array in (matrix.data, matrix.indices, matrix.indptr):
        array.flags.writeable = False
    return matrix


def check_window(entries: dict[str, np.ndarray], n: dict[str, int]) -> dict[str, np.ndarray]:
    """The consolidation window: all four arrays or none (an older snapshot: empty)."""
    present = [entry for entry in _WINDOW_ENTRIES if entry in entries]
    if not present:
        return {name: np.zeros(0, dtype=WINDOW_DTYPES[name]) for name in WINDOW_FIELDS}
    if len(present) != len(_WINDOW_ENTRIES):
        raise SnapshotError(f"consolidation window incomplete: only {sorted(present)}")
    window = {name: entries[entry] for entry, name in _WINDOW_ENTRIES.items()}
    lengths = set()
    for name, array in window.items():
        if array.dtype != WINDOW_DTYPES[name] or array.ndim != 1:
            raise SnapshotError(
                f"window_{name} must be 1-d {np.dtype(WINDOW_DTYPES[name])}, got "
                f"{array.ndim}-d {array.dtype}"
            )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise SnapshotError(f"window_{name} contains NaN or infinite values")
        lengths.add(len(array))
    if len(lengths) != 1:
        raise SnapshotError("window arrays differ in length")
    for side in SIDES:
        rows = window[f"{side}s"]
        if len(rows) and (rows.min() < 0 or rows.max() >= n[side]):
            raise SnapshotError(f"window_{side}s has a row outside 0..{n[side] - 1}")
    ratings = window["ratings"]
    if len(ratings) and (ratings.min() < 0 or ratings.max() > 5):
        raise SnapshotError("window_ratings must be between 0 and 5")
    return window


def _read_entries(
    payload: bytes, wanted: set[str], *, views: bool = False
) -> dict[str, np.ndarray]:
    expected = {"meta", "popularity", "user_positives"}
    expected |= {f"{side}_{part}" for side in SIDES for part in PARTS}
    expected |= {f"{name}_{suffix}" for name in _ID_LISTS for suffix in ("blob", "offsets")}
    optional = set(_WINDOW_ENTRIES) | set(_NEIGHBOUR_ENTRIES) | set(EVENT_COUNTS)
    return read_npz(payload, expected, optional, wanted, views=views)


def read_npz(
    payload: bytes,
    expected: set[str],
    optional: set[str],
    wanted: set[str],
    *,
    views: bool = False,
) -> dict[str, np.ndarray]:
    """The ``wanted`` entries of a :func:`write_npz` payload that must hold every
    ``expected`` entry and may hold the ``optional`` ones, nothing else; any other archive
    (compressed, duplicate names, object arrays, forged sizes) is a :class:`SnapshotError`."""
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            infos = archive.infolist()
            names = [info.filename.removesuffix(".npy") for info in infos]
            if len(set(names)) != len(names):
                raise SnapshotError("payload has duplicate entries")
            if not expected <= set(names) <= expected | optional:
                missing = sorted(expected - set(names))
                extra = sorted(set(names) - expected - optional)
                raise SnapshotError(
                    f"payload entries differ: missing {missing}, unexpected {extra}"
                )
            entries = {}
            for info, name in zip(infos, names, strict=True):
                if name not in wanted:
                    continue  # covered by the checksum; not needed by this reader
                if info.compress_type != zipfile.ZIP_STORED:
                    raise SnapshotError(
                        f"{name} is compressed; snapshots store arrays uncompressed"
                    )
                entries[name] = (
                    _npy_view(payload, info, name) if views else _read_npy(archive, info, name)
                )
            return entries
    except SnapshotError:
        raise
    except ValueError as exc:  # includes numpy's refusal of object (pickle) arrays
        raise SnapshotError(f"unreadable array in payload: {exc}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise SnapshotError(f"payload is not a valid npz archive: {exc}") from None


def _read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> np.ndarray:
    """Read one .npy entry after checking its header: no object dtype, and a declared size
    that fits the stored bytes (so a forged header cannot make us allocate gigabytes)."""
    with archive.open(info) as f:
        shape, _, dtype = _npy_header(f, name)
        if math.prod(shape) * dtype.itemsize > info.file_size:
            raise SnapshotError(f"{name}: header declares more data than is stored")
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _npy_header(f: IO[bytes], name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the .npy at ``f``; refuses object dtypes."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise SnapshotError(f"{name}: unsupported .npy version {version}")
    if dtype.hasobject:
        raise SnapshotError(f"{name} is an object array (pickle); refused")
    return shape, fortran, dtype


def _npy_view(payload: bytes, info: zipfile.ZipInfo, name: str) -> np.ndarray:
    """One stored (uncompressed) .npy entry as a read-only view of ``payload``, with the
    checks of :func:`_read_npy` (no object dtype, a declared size that fits the entry).
    The zip CRC is not read; the payload's sha256 was checked before."""
    at = info.header_offset
    local = payload[at : at + 30]
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise SnapshotError(f"{name}: bad local zip header")
    start = (
        at + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
    )
    data = memoryview(payload)[start : start + info.file_size]
    if len(data) != info.file_size or bytes(data[:6]) != b"\x93NUMPY":
        raise SnapshotError(f"{name}: not a .npy entry")
    size_bytes = 2 if data[6] == 1 else 4
    header_end = 8 + size_bytes + int.from_bytes(data[8 : 8 + size_bytes], "little")
    if header_end > len(data):
        raise SnapshotError(f"{name}: .npy header longer than the entry")
    head = io.BytesIO(bytes(data[:header_end]))
    shape, fortran, dtype = _npy_header(head, name)
    count = math.prod(shape)
    if head.tell() != header_end or header_end + count * dtype.itemsize > len(data):
        raise SnapshotError(f"{name}: header declares more data than is stored")
    array = np.frombuffer(payload, dtype=dtype, count=count, offset=start + header_end)
    return array.reshape(shape, order="F" if fortran else "C")


def _read_meta(array: np.ndarray) -> dict[str, Any]:
    if array.dtype != np.uint8 or array.ndim != 1:
        raise SnapshotError("meta must be a 1-d uint8 array of JSON")
    try:
        meta = json.loads(array.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"meta is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise SnapshotError("meta must be a JSON object")
    return meta
