"""The snapshot manifest and the delta-chain mark it carries: typed records and their one parser.

Both stay JSON objects (``TypedDict``): the store writes a manifest as it is given and its
signature covers every field, so the bytes must not change. :func:`parse_manifest` and
:func:`parse_chain_mark` are the only places their fields are checked; a missing or
renamed field is a :class:`~models.errors.SnapshotError` naming it.
"""

# No ``from __future__ import annotations``: TypedDict reads NotRequired from evaluated
# annotations only (Python 3.11), and the tests take the fields from it.
from typing import Any, NotRequired, TypedDict, cast

from models.errors import SnapshotError

FORMAT = "streamrec-lightfm-npz/1"
SEGMENT_FORMAT = "streamrec-lightfm-segment/1"
"""A checkpoint segment (:mod:`models.segment`): the rows changed since its ``parent``."""


class ChainMark(TypedDict):
    """Where a snapshot's state sits in its trainer's delta chain."""

    lineage: str
    """The trainer run whose deltas the state continues."""
    version: int
    """The version of that run's last delta the state includes."""
    offset: int | None
    """The delta topic's next offset after it (None: not recorded)."""


class Manifest(TypedDict):
    """A snapshot's manifest: what the payload holds, its sha256, who signed it."""

    format: str
    version: int
    sha256: str
    created_at: str
    offsets: dict[str, int]
    trained_events: int
    n_users: int
    n_items: int
    config: dict[str, Any]
    library_versions: dict[str, str]
    payload_bytes: NotRequired[int]
    delta_chain: NotRequired[ChainMark | None]
    parent: NotRequired[int]
    """Segments only: the version this one continues (its state = parent's + these rows)."""
    parent_sha256: NotRequired[str]
    """Segments only: the parent's payload sha256 (the link a restore checks)."""
    base: NotRequired[int]
    """Segments only: the full snapshot the chain starts from."""
    chain_bytes: NotRequired[int]
    """Segments only: the payload bytes of the chain's segments since ``base``, this one's too."""
    signature: NotRequired[str]
    """Checked by :func:`models.snapshot.check_signature` (with the keys), not here."""


_REQUIRED: dict[str, type] = {
    "format": str,
    "version": int,
    "sha256": str,
    "created_at": str,
    "offsets": dict,
    "trained_events": int,
    "n_users": int,
    "n_items": int,
    "config": dict,
    "library_versions": dict,
}
_COUNTS = ("version", "trained_events", "n_users", "n_items")
_HEX = frozenset("0123456789abcdef")
_SEGMENT_FIELDS = ("parent", "parent_sha256", "base", "chain_bytes")


def parse_chain_mark(obj: object) -> ChainMark | None:
    """``obj`` as a :class:`ChainMark` (None stays None), or :class:`SnapshotError`."""
    if obj is None:
        return None
    if not (isinstance(obj, dict) and set(obj) == {"lineage", "version", "offset"}):
        raise SnapshotError("delta_chain must be {lineage: str, version: int, offset: int|null}")
    lineage, version, offset = obj["lineage"], obj["version"], obj["offset"]
    if not (
        isinstance(lineage, str)
        and _is_int(version)
        and (offset is None or isinstance(offset, int))
    ):
        raise SnapshotError("delta_chain must be {lineage: str, version: int, offset: int|null}")
    return {"lineage": lineage, "version": version, "offset": offset}


def parse_manifest(obj: object) -> Manifest:
    """``obj`` (a decoded JSON value) as a :class:`Manifest`, or :class:`SnapshotError`
    saying which field is missing or wrong. Fields it does not know are kept as they are
    (the signature covers them), so encoding the result gives the same JSON."""
    if not isinstance(obj, dict):
        raise SnapshotError(f"manifest must be a JSON object, got {type(obj).__name__}")
    for key, kind in _REQUIRED.items():
        if key not in obj:
            raise SnapshotError(f"manifest is missing {key!r}")
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise SnapshotError(f"manifest {key!r} must be {kind.__name__}")
    if obj["format"] not in (FORMAT, SEGMENT_FORMAT):
        raise SnapshotError(f"unknown snapshot format {obj['format']!r} (expected {FORMAT})")
    segment = obj["format"] == SEGMENT_FORMAT
    for key in _SEGMENT_FIELDS:
        if (key in obj) != segment:
            raise SnapshotError(
                f"manifest {key!r} is for segments only"
                if not segment
                else f"segment manifest is missing {key!r}"
            )
    for key in _COUNTS:
        if obj[key] < 0:
            raise SnapshotError(f"manifest {key!r} must be >= 0")
    sha = obj["sha256"]
    if len(sha) != 64 or any(c not in _HEX for c in sha):
        raise SnapshotError("manifest 'sha256' must be 64 lowercase hex digits")
    offsets = obj["offsets"]
    for key, value in offsets.items():
        if not isinstance(key, str) or not _is_int(value):
            raise SnapshotError("manifest 'offsets' must map 'topic:partition' to an int offset")
    if "payload_bytes" in obj and not (_is_int(obj["payload_bytes"]) and obj["payload_bytes"] >= 0):
        raise SnapshotError("manifest 'payload_bytes' must be an int >= 0")
    manifest: Manifest = {
        "format": obj["format"],
        "version": obj["version"],
        "sha256": sha,
        "created_at": obj["created_at"],
        "offsets": dict(offsets),
        "trained_events": obj["trained_events"],
        "n_users": obj["n_users"],
        "n_items": obj["n_items"],
        "config": dict(obj["config"]),
        "library_versions": dict(obj["library_versions"]),
    }
    if "payload_bytes" in obj:
        manifest["payload_bytes"] = obj["payload_bytes"]
    if "delta_chain" in obj:
        manifest["delta_chain"] = parse_chain_mark(obj["delta_chain"])
    if segment:
        parent, base, chain_bytes = obj["parent"], obj["base"], obj["chain_bytes"]
        if not (_is_int(parent) and _is_int(base) and 0 <= base <= parent < obj["version"]):
            raise SnapshotError(
                "segment 'parent' and 'base' must be ints, base <= parent < version"
            )
        if not (_is_int(chain_bytes) and chain_bytes >= 0):
            raise SnapshotError("segment 'chain_bytes' must be an int >= 0")
        parent_sha = obj["parent_sha256"]
        if not (isinstance(parent_sha, str) and len(parent_sha) == 64 and set(parent_sha) <= _HEX):
            raise SnapshotError("segment 'parent_sha256' must be 64 lowercase hex digits")
        manifest["parent"], manifest["parent_sha256"] = parent, parent_sha
        manifest["base"], manifest["chain_bytes"] = base, chain_bytes
    if "signature" in obj:
        manifest["signature"] = obj["signature"]
    result = {**manifest, **{k: v for k, v in obj.items() if k not in manifest}}
    return cast(Manifest, result)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
