"""Fixtures of the storage suite: one behavioural suite, parametrised over both adapters.

``store_url`` is a fresh store per test: a directory under ``tmp_path`` or a unique prefix in
a bucket created for the module on the real S3 server. ``backdoor`` reaches the stored bytes
without going through the store (raw file I/O / raw aiobotocore), to corrupt or half-write
versions the way a crash or a bug elsewhere would.
"""

from __future__ import annotations

import hashlib
import os
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from aiobotocore.session import get_session
from botocore.config import Config

from app.settings import Settings
from app.stores import s3_config_from_settings
from devtools.seaweed import SeaweedServer
from devtools.settings import DevSettings
from storage import S3Config, SnapshotStore, open_store

PATH_STYLE = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2})
KINDS = ["local", pytest.param("s3", marks=pytest.mark.s3)]


def snapshot(version: int, payload: bytes | None = None, **extra: Any) -> tuple[bytes, dict]:
    """A payload and its valid manifest (what models.IncrementalModel.to_bytes returns)."""
    payload = os.urandom(1000) if payload is None else payload
    manifest = {"version": version, "sha256": hashlib.sha256(payload).hexdigest(), **extra}
    return payload, manifest


def empty_and_delete_bucket(s3_config: dict[str, str], bucket: str) -> None:
    client = botocore.session.get_session().create_client("s3", config=PATH_STYLE, **s3_config)
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", ()):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", ())
        for upload in uploads:
            client.abort_multipart_upload(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        client.delete_bucket(Bucket=bucket)
    finally:
        client.close()


@pytest.fixture(scope="module")
def bucket(s3_config: dict[str, str]) -> Iterator[str]:
    """A bucket of its own for this module on the shared S3 server, deleted afterwards."""
    name = f"storage-{uuid.uuid4().hex[:16]}"
    client = botocore.session.get_session().create_client("s3", config=PATH_STYLE, **s3_config)
    try:
        client.create_bucket(Bucket=name)
    finally:
        client.close()
    yield name
    empty_and_delete_bucket(s3_config, name)


@pytest.fixture
def store_config(settings: Settings) -> S3Config:
    """The S3 settings exactly as the services build them."""
    return s3_config_from_settings(settings)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store of the parametrised kind."""
    if kind == "local":
        return f"file://{tmp_path / 'store'}"
    return f"s3://{request.getfixturevalue('bucket')}/t-{uuid.uuid4().hex[:12]}/snapshots"


@pytest.fixture
async def store(store_url: str, store_config: S3Config) -> AsyncIterator[SnapshotStore]:
    async with open_store(store_url, store_config) as opened:
        yield opened


class Backdoor:
    """Raw access to a store's objects by key relative to the store root."""

    def __init__(self, url: str, s3: Any = None) -> None:
        self.url = url
        self.s3 = s3
        if url.startswith("file://"):
            self.root = Path(url.removeprefix("file://"))
        else:
            self.bucket, _, self.prefix = url.removeprefix("s3://").partition("/")

    async def write(self, key: str, data: bytes) -> None:
        if self.s3 is None:
            (self.root / key).parent.mkdir(parents=True, exist_ok=True)
            (self.root / key).write_bytes(data)
        else:
            await self.s3.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=data)

    async def read(self, key: str) -> bytes:
        if self.s3 is None:
            return (self.root / key).read_bytes()
        response = await self.s3.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")
        async with response["Body"] as body:
            return await body.read()

    async def delete(self, key: str) -> None:
        if self.s3 is None:
            (self.root / key).unlink()
        else:
            await self.s3.delete_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")

    async def head(self, key: str) -> dict[str, Any]:
        """S3 only: the object's metadata (ETag tells a multipart upload: ``"...-N"``)."""
        return await self.s3.head_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")


@pytest.fixture
async def backdoor(
    store_url: str, kind: str, request: pytest.FixtureRequest
) -> AsyncIterator[Backdoor]:
    if kind == "local":
        yield Backdoor(store_url)
        return
    s3_config = request.getfixturevalue("s3_config")
    async with get_session().create_client("s3", config=PATH_STYLE, **s3_config) as s3:
        yield Backdoor(store_url, s3)


@pytest.fixture(scope="session")
def big_payload() -> bytes:
    """100 MiB of random bytes, made once per session."""
    return os.urandom(100 * 1024 * 1024)


OWN_S3_KEYS = ("storage-test", "storage-test-secret")


def free_port_block(count: int = 5) -> int:
    """A port P with P..P+count-1 and each +10000 free (the SeaweedFS launcher's layout)."""
    from devtools.process import port_free

    for base in random.sample(range(30_000, 50_000, 10), 200):
        ports = [base + i for i in range(count)]
        if all(port_free(p) and port_free(p + 10_000) for p in ports):
            return base
    raise RuntimeError("no free block of ports for a private SeaweedFS")


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[SeaweedServer]:
    """A private SeaweedFS (never the shared one) that a test may kill and restart."""
    access_key, secret_key = OWN_S3_KEYS
    settings = DevSettings(
        s3_port=free_port_block(),
        dev_dir=tmp_path / "dev",
        s3_access_key=access_key,
        s3_secret_key=secret_key,
    )
    server = SeaweedServer(settings)
    server.start(timeout=60)
    try:
        yield server
    finally:
        server.stop(timeout=5)
