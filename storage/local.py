"""Snapshots in a local directory: the embedded default.

Every write goes to a temp file in the target directory, is fsynced, and then becomes visible
in one step: ``os.link`` for write-once objects (fails if the name exists, so of two writers
exactly one wins) and ``os.replace`` for the pointer. The directory is fsynced afterwards so
the new name survives a crash. Blocking file I/O runs in ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from storage.base import (
    MANIFEST_NAME,
    MODELS_DIR,
    PAYLOAD_NAME,
    BaseStore,
    VersionFiles,
    parse_version_dir,
    payload_key,
    sha256_hex_async,
    version_dir,
)
from storage.errors import StorageError

T = TypeVar("T")


class LocalSnapshotStore(BaseStore):
    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"LocalSnapshotStore({str(self.root)!r})"

    def uri(self, key: str) -> str:
        return (self.root / key).as_uri() if key else self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / key

    async def _run(self, what: str, key: str, fn: Callable[..., T], *args: object) -> T:
        """Run blocking I/O in a thread and turn OSError into a StorageError naming the path."""
        try:
            return await asyncio.to_thread(fn, *args)
        except OSError as exc:
            raise StorageError(f"cannot {what} {self._path(key)}: {exc.strerror or exc}") from exc

    async def _read(self, key: str) -> bytes | None:
        return await self._run("read", key, _read_or_none, self._path(key))

    async def _create(self, key: str, data: bytes) -> bool:
        return await self._run("create", key, _write_atomic, self._path(key), data, False)

    async def _replace(self, key: str, data: bytes) -> None:
        await self._run("write", key, _write_atomic, self._path(key), data, True)

    async def _write_payload(self, version: int, payload: bytes, sha256: str) -> None:
        # The payload's own write-once link is the claim; a leftover with the same bytes is
        # an earlier attempt of this very snapshot, so the write continues.
        key = payload_key(version)
        if not await self._create(key, payload):
            existing = await self._read(key)
            if existing is None or await sha256_hex_async(existing) != sha256:
                raise self._taken(version, key)

    async def _scan(self, version: int | None = None) -> dict[int, VersionFiles]:
        key = MODELS_DIR if version is None else version_dir(version)
        return await self._run("list", key, _scan_sync, self._path(MODELS_DIR), version)

    async def _delete_version(self, version: int) -> None:
        key = version_dir(version)
        await self._run("delete", key, _delete_dir, self._path(key))


# --- blocking helpers (run in a thread) ---------------------------------------------------


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs(path: Path) -> None:
    """mkdir -p that fsyncs each parent it adds an entry to."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
        _fsync_dir(directory.parent)


def _write_atomic(path: Path, data: bytes, overwrite: bool) -> bool:
    """Write ``data`` via an fsynced temp file; False if it exists and not ``overwrite``."""
    _makedirs(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return True


def _files(directory: Path) -> VersionFiles | None:
    """What exists of one version; None if its directory does not exist. A directory with
    only leftovers (temp files of a crashed write) is an incomplete version prune can remove."""
    try:
        newest = directory.stat()
    except FileNotFoundError:
        return None
    stats = {}
    for name in (PAYLOAD_NAME, MANIFEST_NAME):
        with contextlib.suppress(FileNotFoundError):
            stats[name] = (directory / name).stat()
    payload, manifest = stats.get(PAYLOAD_NAME), stats.get(MANIFEST_NAME)
    newest = manifest or payload or newest
    return VersionFiles(
        has_payload=payload is not None,
        has_manifest=manifest is not None,
        size=payload.st_size if payload else None,
        modified=datetime.fromtimestamp(newest.st_mtime, UTC),
    )


def _scan_sync(models: Path, version: int | None) -> dict[int, VersionFiles]:
    names = [version_dir(version).rpartition("/")[2]] if version is not None else []
    if version is None:
        try:
            names = os.listdir(models)
        except FileNotFoundError:
            return {}
    result = {}
    for name in names:
        v = parse_version_dir(name)
        found = _files(models / name) if v is not None else None
        if v is not None and found is not None:
            result[v] = found
    return result


def _delete_dir(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(directory / MANIFEST_NAME)  # first: the version is incomplete from here on
        _fsync_dir(directory)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(directory):
            os.unlink(directory / entry)
        os.rmdir(directory)
        _fsync_dir(directory.parent)
