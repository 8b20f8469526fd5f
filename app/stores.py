"""The only place settings become a snapshot store.

The offline job (``streamrec train --out URL``), the agents and ``streamrec models`` all call
these, so a ``file://`` or ``s3://`` URL means the same thing everywhere.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from app.errors import AppError
from app.settings import Settings, SettingsError, get_settings, model_keys, s3_secret_problem
from storage import S3Config, SnapshotStore, open_store

if TYPE_CHECKING:
    from models.incremental import IncrementalModel


def s3_config_from_settings(settings: Settings | None = None) -> S3Config:
    """Endpoint, region, credentials and retries from ``STREAMREC_S3_*``.

    An empty endpoint means AWS; empty keys mean botocore's default credential chain
    (env vars, ~/.aws, instance or pod role).
    """
    settings = settings or get_settings()
    secret = settings.s3_secret_key
    return S3Config(
        endpoint_url=settings.s3_endpoint or None,
        region=settings.s3_region,
        access_key=settings.s3_access_key or None,
        secret_key=(secret.get_secret_value() or None) if secret else None,
        max_attempts=settings.s3_max_attempts,
    )


def store_from_url(url: str, settings: Settings | None = None) -> SnapshotStore:
    """The store at ``url``; S3 connection details come from the settings."""
    settings = settings or get_settings()
    problem = s3_secret_problem(settings, url)
    if problem:
        raise SettingsError(problem)
    return open_store(url, s3_config_from_settings(settings))


def store_from_settings(settings: Settings | None = None) -> SnapshotStore:
    """The configured model store (``STREAMREC_MODEL_STORE``)."""
    settings = settings or get_settings()
    return store_from_url(settings.model_store, settings)


class StreamedModelError(AppError):
    """The store's current model was trained by streaming; an offline one would roll it back."""


async def streamed_model(store: SnapshotStore) -> str | None:
    """Why the store's current model must not be replaced by an offline one, or None.

    A streamed model's manifest covers Kafka offsets (the trainer records the next offset
    per ratings partition); an offline one covers none.
    """
    current = await store.current()
    if current is None:
        return None
    _, manifest = await store.get(current)
    offsets = manifest.get("offsets") or {}
    if not offsets:
        return None
    return (
        f"current v{current} was trained by streaming "
        f"({manifest.get('trained_events')} events, {sum(offsets.values())} Kafka offsets)"
    )


async def write_current_snapshot(
    url: str, settings: Settings, model: IncrementalModel, *, over_streamed: bool = True
) -> str:
    """Write ``model`` as the next version of the store at ``url`` and promote it to current.

    Used by the offline job, the demo and the benchmarks. Versions only grow (the store is
    write-once), so ``model.version`` moves past the newest version already there.

    Unless ``over_streamed``, a current model trained by streaming (streaming may have
    produced one while ``model`` was trained) raises :class:`StreamedModelError`: checked
    before the write, so nothing is written, and again right before the promotion (if it
    came during the write, the version just written stays there, not current).
    """

    async def refuse_streamed() -> None:
        if not over_streamed and (streamed := await streamed_model(store)) is not None:
            raise StreamedModelError(streamed)

    async with store_from_url(url, settings) as store:
        await refuse_streamed()
        latest = await store.latest()
        if latest is not None and latest >= model.version:
            model.version = latest + 1
        from models.snapshot import sign_manifest

        payload, manifest = await asyncio.to_thread(model.to_bytes)
        manifest = sign_manifest(manifest, model_keys(settings))
        uri = await store.put(model.version, payload, manifest)
        await refuse_streamed()
        await store.promote(model.version)
        return uri
