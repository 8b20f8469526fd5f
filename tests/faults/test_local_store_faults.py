"""Fault 6: the local snapshot store on a full disk and on a read-only directory.

As root (CI and the dev machines) the faults are real filesystems: a small ``tmpfs`` (disk
full: ENOSPC) and a ``tmpfs`` remounted read-only (EROFS). Without root, the disk-full case
uses a file-size limit (``RLIMIT_FSIZE``, EFBIG) and the read-only case a mode-0555
directory; every write still goes through the real filesystem.

A write that fails leaves no partial file and no temp file; a version never looks complete
unless it is; a retry with the same snapshot once there is room completes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.config import ModelConfig
from models.incremental import IncrementalModel
from models.synthetic import generate_ratings
from storage import open_store
from storage.errors import SnapshotNotFound, StorageError

ROOT = os.geteuid() == 0


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def small_disk(path: Path, size: int) -> Iterator[Path]:
    """A filesystem of ``size`` bytes at ``path`` (tmpfs as root, else an RLIMIT_FSIZE)."""
    path.mkdir()
    if ROOT and _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)):
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
        return
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, old[1]))
    try:
        yield path
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` as a read-only directory (a read-only tmpfs as root, else mode 0555)."""
    path.mkdir()
    if ROOT and _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)):
        try:
            assert _mount("-o", "remount,ro", str(path))
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
        return
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


def leftovers(root: Path) -> list[str]:
    """Every file under ``root`` (directories do not count)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def snapshot(size: int) -> tuple[bytes, dict]:
    """A real snapshot whose payload has at least ``size`` bytes."""
    n = 200
    while True:
        model = IncrementalModel(ModelConfig(no_components=8))
        model.train_batch(generate_ratings(n_users=n, n_items=n, n_ratings=4 * n, seed=1))
        payload, manifest = model.to_bytes()
        if len(payload) >= size:
            return payload, manifest
        n *= 2


async def put(root: Path, payload: bytes, manifest: dict) -> str:
    async with open_store(root.as_uri()) as store:
        return await store.put(manifest["version"], payload, manifest)


async def state(root: Path) -> tuple[list[tuple[int, bool]], int | None]:
    async with open_store(root.as_uri()) as store:
        return [(i.version, i.complete) for i in await store.list()], await store.latest()


def test_disk_full_during_the_payload_leaves_nothing(tmp_path: Path) -> None:
    payload, manifest = snapshot(512 * 1024)
    with small_disk(tmp_path / "full", 256 * 1024) as disk:
        with pytest.raises(StorageError) as refused:
            asyncio.run(put(disk, payload, manifest))
        message = str(refused.value)
        assert "No space left on device" in message or "File too large" in message, message
        assert str(disk) in message, "the error names the path"
        assert leftovers(disk) == [], "no partial payload, no temp file"
        # At most the empty version directory stays: listed incomplete, never loaded,
        # removed by prune.
        versions, latest = asyncio.run(state(disk))
        assert latest is None and not any(complete for _, complete in versions)


def test_disk_full_before_the_manifest_leaves_an_incomplete_version_a_retry_completes(
    tmp_path: Path,
) -> None:
    if not ROOT:
        pytest.skip("needs a tmpfs that can be grown (root)")
    payload, manifest = snapshot(100 * 1024)
    version = manifest["version"]
    pages = -(-len(payload) // 4096)
    # tmpfs keeps a page or so for its own bookkeeping: find the size (of three) at which
    # the payload still fits and the manifest does not.
    for n, extra in enumerate(range(-1, 2)):
        size = (pages + extra) * 4096
        with small_disk(tmp_path / f"full-{n}", size) as disk:
            try:
                asyncio.run(put(disk, payload, manifest))
            except StorageError as exc:
                if leftovers(disk) != [f"models/{version:012d}/model.npz"]:
                    continue  # the payload did not fit either: a smaller case, tested above
                assert "No space left on device" in str(exc)
            else:
                continue
            assert asyncio.run(state(disk)) == ([(version, False)], None)  # listed incomplete
            assert (disk / leftovers(disk)[0]).read_bytes() == payload, "never half a file"

            async def read(root: Path = disk) -> None:
                async with open_store(root.as_uri()) as store:
                    await store.get(version)

            with pytest.raises(SnapshotNotFound):
                asyncio.run(read())
            assert _mount("-o", f"remount,size={3 * size}", str(disk))
            asyncio.run(put(disk, payload, manifest))  # the same snapshot again: completes
            assert asyncio.run(state(disk)) == ([(version, True)], version)
            return
    pytest.fail(f"no tmpfs size around {pages} pages let the payload in and not the manifest")


def test_read_only_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    payload, manifest = snapshot(1)
    with read_only(tmp_path / "ro") as directory:
        with pytest.raises(StorageError) as refused:
            asyncio.run(put(directory, payload, manifest))
        message = str(refused.value)
        assert "Read-only file system" in message or "Permission denied" in message, message
        assert leftovers(directory) == []


def test_train_command_on_a_full_disk_says_so_in_one_line(tmp_path: Path) -> None:
    ratings = tmp_path / "ratings.csv"
    rows = generate_ratings(n_users=400, n_items=300, n_ratings=3000, seed=2)
    ratings.write_text(
        "user,item,rating,timestamp\n"
        + "".join(f"{r.user},{r.item},{r.rating:g},{r.ts:.0f}\n" for r in rows)
    )
    with small_disk(tmp_path / "full", 64 * 1024) as disk:
        run = subprocess.run(
            [sys.executable, "-m", "app.cli", "train", str(ratings), "--epochs", "1",
             "--out", disk.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert leftovers(disk) == []
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: writing the snapshot to file://"), run.stderr
    assert "No space left on device" in last or "File too large" in last
    assert "Traceback" not in run.stderr
