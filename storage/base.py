"""The snapshot-store protocol and every rule both adapters share.

Layout (relative to the store's root directory or ``s3://bucket/prefix``)::

    models/<version:012d>/model.npz       payload (write-once)
    models/<version:012d>/manifest.json   manifest (write-once; its existence commits the version)
    current.json                          {"version", "previous": [...], "updated_at"}

Zero-padded version directories make lexical listing order equal version order. A version
is *complete* when both payload and manifest exist; ``latest()`` and ``promote()`` only
consider complete versions. The rules (key names, manifest and pointer validation, sha256,
promote/rollback/prune decisions, the put protocol) live here once; the adapters only
provide byte-level primitives.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, Self, runtime_checkable

from storage.errors import IntegrityError, SnapshotExists, SnapshotNotFound, StorageError

MODELS_DIR = "models"
PAYLOAD_NAME = "model.npz"
MANIFEST_NAME = "manifest.json"
POINTER_NAME = "current.json"
CLAIM_NAME = "claim.json"  # S3 only: who may write a version's payload (see storage/s3.py)
VERSION_DIGITS = 12
MAX_VERSION = 10**VERSION_DIGITS - 1
POINTER_HISTORY = 32  # promoted versions remembered for rollback
_VERSION_DIR = re.compile(rf"^\d{{{VERSION_DIGITS}}}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_HASH_OFF_LOOP_BYTES = 1 << 20  # hashing larger payloads moves to a thread (hashlib drops the GIL)


@dataclass(frozen=True, slots=True)
class S3Config:
    """How to reach S3. ``None`` access/secret keys mean botocore's default credential chain.

    Retries use botocore's own policy (``retry_mode`` standard/adaptive: jittered exponential
    backoff on throttling, 5xx and connection errors, at most ``max_attempts`` tries).
    """

    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    max_attempts: int = 5
    retry_mode: str = "standard"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    multipart_threshold: int = 16 * 1024 * 1024
    part_size: int = 16 * 1024 * 1024
    max_concurrency: int = 4

    def __post_init__(self) -> None:
        if self.retry_mode not in ("standard", "adaptive"):
            raise ValueError(f"retry_mode must be standard or adaptive, not {self.retry_mode!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, not {self.max_attempts}")
        if self.part_size < 5 * 1024 * 1024:
            raise ValueError("part_size must be at least 5 MiB (the S3 minimum part size)")
        if self.multipart_threshold < self.part_size:
            raise ValueError("multipart_threshold must be >= part_size")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One version as listed; ``complete`` is False when payload or manifest is missing."""

    version: int
    uri: str
    complete: bool
    size: int | None  # payload bytes, None when the payload is missing
    modified: datetime | None  # last write of the manifest (or payload if no manifest)


@runtime_checkable
class SnapshotStore(Protocol):
    """Versioned, write-once model snapshots with a ``current`` pointer. Async context manager."""

    async def put(self, version: int, payload: bytes, manifest: Mapping[str, Any]) -> str: ...
    async def get(self, version: int) -> tuple[bytes, dict[str, Any]]: ...
    async def latest(self) -> int | None: ...
    async def list(self) -> list[SnapshotInfo]: ...
    async def current(self) -> int | None: ...
    async def promote(self, version: int) -> None: ...
    async def rollback(
        self, to: int | None = None, *, check: Callable[[int], Awaitable[object]] | None = None
    ) -> int: ...
    async def prune(self, keep: int) -> builtins.list[int]: ...
    async def retain(self, keep_bases: int) -> builtins.list[int]: ...
    async def close(self) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc_info: object) -> None: ...


# --- keys -------------------------------------------------------------------------------


def check_version(version: object) -> int:
    """Versions are plain non-negative ints that fit the zero-padded key."""
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"snapshot version must be an int, not {type(version).__name__}")
    if not 0 <= version <= MAX_VERSION:
        raise ValueError(f"snapshot version must be in 0..{MAX_VERSION}, not {version}")
    return version


def version_dir(version: int) -> str:
    return f"{MODELS_DIR}/{check_version(version):0{VERSION_DIGITS}d}"


def payload_key(version: int) -> str:
    return f"{version_dir(version)}/{PAYLOAD_NAME}"


def manifest_key(version: int) -> str:
    return f"{version_dir(version)}/{MANIFEST_NAME}"


def parse_version_dir(name: str) -> int | None:
    """The version a directory name denotes, or None for anything else (temp files, strays)."""
    return int(name) if _VERSION_DIR.match(name) else None


# --- hashing, manifest, pointer ------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def sha256_hex_async(data: bytes) -> str:
    """sha256 without blocking the event loop on large payloads."""
    if len(data) < _HASH_OFF_LOOP_BYTES:
        return sha256_hex(data)
    return await asyncio.to_thread(sha256_hex, data)


def encode_manifest(version: int, payload_sha256: str, manifest: Mapping[str, Any]) -> bytes:
    """Canonical manifest bytes; refuses a manifest that would fail verification on read.

    Canonical (sorted keys) so that re-putting the identical snapshot is recognisably identical.
    """
    if not isinstance(manifest, Mapping):
        raise ValueError(f"manifest must be a mapping, not {type(manifest).__name__}")
    if manifest.get("version") != version or isinstance(manifest.get("version"), bool):
        raise ValueError(
            f"manifest version {manifest.get('version')!r} is not the snapshot version {version}"
        )
    if manifest.get("sha256") != payload_sha256:
        raise IntegrityError(
            f"refusing to write version {version}: manifest sha256 {manifest.get('sha256')!r} "
            f"does not match the payload's {payload_sha256}"
        )
    try:
        text = json.dumps(dict(manifest), sort_keys=True, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"manifest of version {version} is not plain JSON: {exc}") from exc
    return text.encode() + b"\n"


def decode_manifest(raw: bytes, version: int, where: str) -> dict[str, Any]:
    """Parse and validate a stored manifest; anything unexpected is an IntegrityError."""
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError(f"manifest {where} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise IntegrityError(f"manifest {where} is not a JSON object")
    if manifest.get("version") != version or isinstance(manifest.get("version"), bool):
        raise IntegrityError(
            f"manifest {where} names version {manifest.get('version')!r}, expected {version}"
        )
    sha = manifest.get("sha256")
    if not isinstance(sha, str) or not _SHA256_HEX.match(sha):
        raise IntegrityError(f"manifest {where} has no valid sha256 (got {sha!r})")
    return manifest


async def verify_payload(payload: bytes, manifest: Mapping[str, Any], where: str) -> None:
    actual = await sha256_hex_async(payload)
    if actual != manifest["sha256"]:
        raise IntegrityError(
            f"payload {where} is corrupt: sha256 {actual} != manifest's {manifest['sha256']} "
            f"({len(payload)} bytes)"
        )


@dataclass(frozen=True, slots=True)
class Pointer:
    """The ``current`` pointer: the promoted version and earlier promoted ones, newest first."""

    version: int
    previous: tuple[int, ...] = ()
    updated_at: str = ""

    def encode(self) -> bytes:
        body = {
            "version": self.version,
            "previous": list(self.previous),
            "updated_at": self.updated_at,
        }
        return json.dumps(body, indent=2).encode() + b"\n"

    @classmethod
    def decode(cls, raw: bytes, where: str) -> Pointer:
        try:
            body = json.loads(raw)
            version = body["version"]
            previous = tuple(body.get("previous", ()))
            updated_at = str(body.get("updated_at", ""))
            for v in (version, *previous):
                check_version(v)
        except (UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise IntegrityError(f"pointer {where} is not a valid pointer object: {exc}") from exc
        return cls(version, previous, updated_at)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def promoted(old: Pointer | None, version: int) -> Pointer:
    """The pointer after promoting ``version`` (the old current goes to the front of history)."""
    if old is None:
        return Pointer(version, (), _now())
    history = (old.version, *old.previous) if old.version != version else old.previous
    history = tuple(v for v in history if v != version)[:POINTER_HISTORY]
    return Pointer(version, history, _now())


def rolled_back(old: Pointer | None, to: int | None, complete: set[int], where: str) -> Pointer:
    """The pointer after a rollback: to the newest previous version that still exists, or ``to``.

    Rolling back to a version in the history drops the history up to it; rolling "back" to a
    version outside the history is a promote (the old current is remembered).
    """
    if to is None:
        if old is None:
            raise SnapshotNotFound(f"nothing to roll back: no current pointer at {where}")
        if not old.previous:
            raise SnapshotNotFound(
                f"nothing to roll back to: {old.version} is the only version promoted at {where}"
            )
        for i, v in enumerate(old.previous):
            if v in complete:
                return Pointer(v, old.previous[i + 1 :], _now())
        raise SnapshotNotFound(
            f"nothing to roll back to: none of the previous versions {list(old.previous)} of "
            f"{where} still exists"
        )
    if to not in complete:
        raise SnapshotNotFound(f"cannot roll back to version {to}: no complete snapshot at {where}")
    if old is not None and to in old.previous:
        return Pointer(to, old.previous[old.previous.index(to) + 1 :], _now())
    return promoted(old, to)


def manifest_parent(manifest: Mapping[str, Any]) -> int | None:
    """The version whose payload a stored version needs too (a checkpoint segment's
    ``parent``), or None (a full snapshot)."""
    parent = manifest.get("parent")
    return parent if isinstance(parent, int) and not isinstance(parent, bool) else None


def _with_ancestors(kept: set[int], parents: Mapping[int, int | None]) -> set[int]:
    """``kept`` plus every version one of them needs (its parent, the parent's, ...)."""
    out, todo = set(), list(kept)
    while todo:
        version = todo.pop()
        if version in out:
            continue
        out.add(version)
        parent = parents.get(version)
        if parent is not None:
            todo.append(parent)
    return out


def prune_plan(
    versions: Mapping[int, bool],
    current: int | None,
    keep: int,
    parents: Mapping[int, int | None] | None = None,
) -> list[int]:
    """Versions to delete: all but the ``keep`` newest complete ones and the current one,
    and the versions those need (``parents``: a segment's parent, see
    :func:`manifest_parent`).

    Incomplete versions are deleted only when older than every kept version: a newer
    incomplete one may be a write in progress.
    """
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ValueError(f"prune keeps at least one version, keep={keep!r}")
    complete = sorted((v for v, ok in versions.items() if ok), reverse=True)
    kept = set(complete[:keep]) | ({current} if current is not None else set())
    return _doomed(versions, _with_ancestors(kept, parents or {}))


def retention_plan(
    versions: Mapping[int, bool],
    current: int | None,
    keep_bases: int,
    parents: Mapping[int, int | None],
) -> list[int]:
    """Versions to delete under the checkpoint retention policy: everything older than the
    ``keep_bases``-th newest full snapshot (a complete version without a parent), except
    the current version and what it needs; incomplete ones as :func:`prune_plan` does."""
    if not isinstance(keep_bases, int) or isinstance(keep_bases, bool) or keep_bases < 1:
        raise ValueError(f"retention keeps at least one base, keep_bases={keep_bases!r}")
    bases = sorted((v for v, ok in versions.items() if ok and parents.get(v) is None), reverse=True)
    if len(bases) < keep_bases:
        return []
    oldest = bases[keep_bases - 1]
    kept = {v for v, ok in versions.items() if ok and v >= oldest}
    kept |= {current} if current is not None else set()
    return _doomed(versions, _with_ancestors(kept, parents))


def _doomed(versions: Mapping[int, bool], kept: set[int]) -> list[int]:
    """Every version not ``kept``: complete ones, and incomplete ones older than every kept
    one (a newer incomplete one may be a write in progress)."""
    oldest_kept = min(kept & set(versions), default=None)
    doomed = []
    for v, ok in versions.items():
        if v in kept:
            continue
        if ok or (oldest_kept is not None and v < oldest_kept):
            doomed.append(v)
    return sorted(doomed)


# --- the shared store logic ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VersionFiles:
    """What an adapter's scan found for one version."""

    has_payload: bool = False
    has_manifest: bool = False
    size: int | None = None
    modified: datetime | None = None

    @property
    def complete(self) -> bool:
        return self.has_payload and self.has_manifest


class BaseStore(abc.ABC):
    """Implements the protocol once on top of a few byte-level primitives per adapter.

    Write protocol of ``put`` (the same for both adapters):
      1. the version's manifest already exists → identical bytes: done (idempotent retry);
         otherwise ``SnapshotExists``;
      2. ``_write_payload``: the adapter claims the version atomically for this payload's
         sha256 (a writer with other bytes gets ``SnapshotExists``; a retry with the same bytes
         continues) and stores the payload;
      3. the manifest is created write-once; this is the commit point. Losing that race to a
         different manifest is ``SnapshotExists``.
    A crash between 2 and 3 leaves an incomplete version that readers skip and that a retry
    with the same payload completes.
    """

    def __init__(self) -> None:
        self._closed = False
        self._pointer_lock = asyncio.Lock()

    # primitives -----------------------------------------------------------------------
    @abc.abstractmethod
    def uri(self, key: str) -> str:
        """Human/URI form of a key relative to the store root (for messages and ``put``)."""

    @abc.abstractmethod
    async def _read(self, key: str) -> bytes | None:
        """The object's bytes, or None if it does not exist."""

    @abc.abstractmethod
    async def _create(self, key: str, data: bytes) -> bool:
        """Atomically create the object unless it exists; False if it already existed."""

    @abc.abstractmethod
    async def _replace(self, key: str, data: bytes) -> None:
        """Atomically create or overwrite the object (readers see old or new, never a mix)."""

    @abc.abstractmethod
    async def _write_payload(self, version: int, payload: bytes, sha256: str) -> None:
        """Claim ``version`` for these bytes (SnapshotExists if claimed by others); store them."""

    @abc.abstractmethod
    async def _scan(self, version: int | None = None) -> dict[int, VersionFiles]:
        """Every version (or just ``version``) with what exists of it."""

    @abc.abstractmethod
    async def _delete_version(self, version: int) -> None:
        """Delete the manifest first (the version stops being complete at once), then the rest."""

    async def _close(self) -> None:  # noqa: B027 - adapters without resources need nothing
        """Release the adapter's resources."""

    # protocol -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"store {self.uri('')} is closed")

    async def put(self, version: int, payload: bytes, manifest: Mapping[str, Any]) -> str:
        """Write a version once; returns the payload's URI. Identical re-puts succeed."""
        self._check_open()
        check_version(version)
        if not isinstance(payload, bytes | bytearray):
            raise ValueError(f"payload must be bytes, not {type(payload).__name__}")
        payload = bytes(payload)
        sha = await sha256_hex_async(payload)
        manifest_bytes = encode_manifest(version, sha, manifest)
        mkey, pkey = manifest_key(version), payload_key(version)
        existing = await self._read(mkey)
        if existing is None:
            await self._write_payload(version, payload, sha)
            if await self._create(mkey, manifest_bytes):
                return self.uri(pkey)
            existing = await self._read(mkey)
        if existing != manifest_bytes:
            raise SnapshotExists(
                f"version {version} already exists at {self.uri(mkey)} with other content; "
                "snapshots are write-once"
            )
        return self.uri(pkey)  # the identical snapshot is already committed

    def _taken(self, version: int, key: str) -> SnapshotExists:
        return SnapshotExists(
            f"version {version} is claimed by another writer with other content at "
            f"{self.uri(key)} (written now, or abandoned without a manifest: prune removes "
            "abandoned versions older than the kept ones)"
        )

    async def get(self, version: int) -> tuple[bytes, dict[str, Any]]:
        """Payload and manifest of a complete version, checksum verified."""
        self._check_open()
        mkey, pkey = manifest_key(version), payload_key(version)
        raw, payload = await asyncio.gather(self._read(mkey), self._read(pkey))
        if raw is None:
            raise SnapshotNotFound(f"no snapshot version {version}: {self.uri(mkey)} is missing")
        manifest = decode_manifest(raw, version, self.uri(mkey))
        if payload is None:
            raise SnapshotNotFound(
                f"snapshot version {version} is incomplete: {self.uri(pkey)} does not exist"
            )
        await verify_payload(payload, manifest, self.uri(pkey))
        return payload, manifest

    async def latest(self) -> int | None:
        """The newest complete version (payload and manifest both present)."""
        self._check_open()
        complete = [v for v, files in (await self._scan()).items() if files.complete]
        return max(complete, default=None)

    async def list(self) -> list[SnapshotInfo]:
        """Every version found, complete or not, oldest first."""
        self._check_open()
        found = await self._scan()
        return [
            SnapshotInfo(v, self.uri(payload_key(v)), f.complete, f.size, f.modified)
            for v, f in sorted(found.items())
        ]

    async def _pointer(self) -> Pointer | None:
        raw = await self._read(POINTER_NAME)
        return None if raw is None else Pointer.decode(raw, self.uri(POINTER_NAME))

    async def current(self) -> int | None:
        """The promoted version scorers should load, or None if nothing was promoted."""
        self._check_open()
        pointer = await self._pointer()
        return None if pointer is None else pointer.version

    async def promote(self, version: int) -> None:
        """Point ``current`` at a complete version (last writer wins across processes)."""
        self._check_open()
        if not (await self._scan(check_version(version))).get(version, VersionFiles()).complete:
            raise SnapshotNotFound(
                f"cannot promote version {version}: no complete snapshot at "
                f"{self.uri(version_dir(version))}"
            )
        async with self._pointer_lock:
            await self._replace(POINTER_NAME, promoted(await self._pointer(), version).encode())

    async def rollback(
        self, to: int | None = None, *, check: Callable[[int], Awaitable[object]] | None = None
    ) -> int:
        """Point ``current`` back at the previous promoted version (or ``to``); returns it.
        ``check`` is awaited with that version before the pointer moves: if it raises (the
        target is not trusted, say), the pointer stays where it was."""
        self._check_open()
        if to is not None:
            check_version(to)
        async with self._pointer_lock:
            complete = {v for v, f in (await self._scan()).items() if f.complete}
            pointer = rolled_back(await self._pointer(), to, complete, self.uri(POINTER_NAME))
            if check is not None:
                await check(pointer.version)
            await self._replace(POINTER_NAME, pointer.encode())
        return pointer.version

    async def prune(self, keep: int) -> builtins.list[int]:
        """Delete all but the ``keep`` newest complete versions and the current one (and
        the versions those need: a segment's chain)."""
        self._check_open()
        found = await self._scan()
        complete = {v: f.complete for v, f in found.items()}
        plan = prune_plan(complete, await self.current(), keep, await self._parents(complete))
        return await self._delete(plan)

    async def retain(self, keep_bases: int) -> builtins.list[int]:
        """Delete the versions older than the ``keep_bases`` newest full snapshots, except
        the current one and the chain it needs (:func:`retention_plan`)."""
        self._check_open()
        found = await self._scan()
        complete = {v: f.complete for v, f in found.items()}
        current = await self.current()
        plan = retention_plan(complete, current, keep_bases, await self._parents(complete))
        return await self._delete(plan)

    async def _delete(self, plan: builtins.list[int]) -> builtins.list[int]:
        for version in plan:
            await self._delete_version(version)
        return plan

    async def _parents(self, complete: Mapping[int, bool]) -> dict[int, int | None]:
        """Each complete version's :func:`manifest_parent` (None where the manifest is
        unreadable: such a version needs nothing)."""
        versions = [v for v, ok in complete.items() if ok]
        raws = await asyncio.gather(*(self._read(manifest_key(v)) for v in versions))
        parents: dict[int, int | None] = {}
        for version, raw in zip(versions, raws, strict=True):
            try:
                manifest = {} if raw is None else decode_manifest(raw, version, "")
            except IntegrityError:
                manifest = {}
            parents[version] = manifest_parent(manifest)
        return parents

    async def close(self) -> None:
        """Release connections; idempotent. The store cannot be used afterwards."""
        if not self._closed:
            self._closed = True
            await self._close()

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
