"""Parsing of store URLs: ``file:///abs/dir``, ``file://relative/dir``, ``s3://bucket/prefix``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from storage.errors import ConfigError

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]$")
_EXAMPLES = "file:///abs/dir, file://relative/dir or s3://bucket/prefix"


@dataclass(frozen=True, slots=True)
class LocalLocation:
    root: Path  # absolute


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str  # no leading/trailing slash; "" for the bucket root


def parse_store_url(url: str) -> LocalLocation | S3Location:
    """Parse a store URL; a relative ``file://`` path is resolved against the working directory."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"store URL {url!r} is not a URL; use {_EXAMPLES}")
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "file":
        if not rest.strip("/"):
            raise ConfigError(f"store URL {url!r} names no directory; use {_EXAMPLES}")
        return LocalLocation(Path(rest).absolute())
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise ConfigError(
                f"store URL {url!r}: {bucket!r} is not a valid bucket name "
                "(3-63 characters: lowercase letters, digits, '.', '-')"
            )
        prefix = prefix.strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise ConfigError(f"store URL {url!r}: prefix {prefix!r} has empty or dot segments")
        return S3Location(bucket, prefix)
    raise ConfigError(f"store URL {url!r} has unsupported scheme {scheme!r}; use {_EXAMPLES}")
