"""streamrec storage layer: versioned, write-once, verified model snapshots.

``open_store(url)`` is the one entry point; see docs/storage.md for layout and guarantees.
"""

from __future__ import annotations

from storage.base import S3Config, SnapshotInfo, SnapshotStore
from storage.url import LocalLocation, parse_store_url

__all__ = ["S3Config", "SnapshotInfo", "SnapshotStore", "open_store"]


def open_store(url: str, s3: S3Config | None = None) -> SnapshotStore:
    """The store a URL names (no I/O yet): ``file:///abs``, ``file://rel/dir``, ``s3://bucket/prefix``.

    ``s3`` supplies endpoint, region, credentials and retries for ``s3://`` URLs; without it
    botocore's defaults apply (AWS endpoint, default credential chain).
    """
    location = parse_store_url(url)
    if isinstance(location, LocalLocation):
        from storage.local import LocalSnapshotStore

        return LocalSnapshotStore(location.root)
    from storage.s3 import S3SnapshotStore  # imports aiobotocore only when needed

    return S3SnapshotStore(location.bucket, location.prefix, s3)
