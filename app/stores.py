"""The only place settings become a snapshot store.

The offline job (``streamrec train --out URL``), the agents and ``streamrec models`` all call
these, so a ``file://`` or ``s3://`` URL means the same thing everywhere.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from app.settings import Settings, get_settings
from storage import S3Config, SnapshotStore, open_store

if TYPE_CHECKING:
    from models.incremental import IncrementalModel


def s3_config_from_settings(settings: Settings | None = None) -> S3Config:
    """Endpoint, region, credentials and retries from ``STREAMREC_S3_*``.

    An empty endpoint means AWS; empty keys mean botocore's default credential chain
    (env vars, ~/.aws, instance or pod role).
    """
    settings = settings or get_settings()
    return S3Config(
        endpoint_url=settings.s3_endpoint or None,
        region=settings.s3_region,
        access_key=settings.s3_access_key or None,
        secret_key=settings.s3_secret_key.get_secret_value() or None,
        max_attempts=settings.s3_max_attempts,
    )


def store_from_url(url: str, settings: Settings | None = None) -> SnapshotStore:
    """The store at ``url``; S3 connection details come from the settings."""
    return open_store(url, s3_config_from_settings(settings))


def store_from_settings(settings: Settings | None = None) -> SnapshotStore:
    """The configured model store (``STREAMREC_MODEL_STORE``)."""
    settings = settings or get_settings()
    return store_from_url(settings.model_store, settings)


async def write_current_snapshot(url: str, settings: Settings, model: IncrementalModel) -> str:
    """Write ``model`` as the next version of the store at ``url`` and promote it to current.

    Used by the offline job, the demo and the benchmarks. Versions only grow (the store is
    write-once), so ``model.version`` moves past the newest version already there.
    """
    async with store_from_url(url, settings) as store:
        latest = await store.latest()
        if latest is not None and latest >= model.version:
            model.version = latest + 1
        payload, manifest = await asyncio.to_thread(model.to_bytes)
        uri = await store.put(model.version, payload, manifest)
        await store.promote(model.version)
        return uri
