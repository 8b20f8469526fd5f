"""The storage layer's own exceptions.

Callers catch these, never botocore's or OSError: the adapters translate at the boundary
and every message names the bucket/key or path involved, so a log line is enough to act on.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error the storage layer raises."""


class ConfigError(StorageError, ValueError):
    """The store URL or its settings are wrong (bad scheme, missing bucket, no credentials)."""


class SnapshotNotFound(StorageError, LookupError):
    """The version, or one of its objects, does not exist (or is incomplete)."""


class SnapshotExists(StorageError):
    """The version was already written with different content; versions are write-once."""


class IntegrityError(StorageError):
    """Stored bytes do not match their manifest, or a manifest/pointer is not valid JSON."""


class StoreUnavailable(StorageError):
    """The store could not be reached after bounded retries (connection, timeout, 5xx)."""


class AccessDenied(StorageError):
    """The credentials were refused (HTTP 403: unknown key, wrong secret, no permission)."""
