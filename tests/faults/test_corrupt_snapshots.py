"""Fault 5: corrupted snapshots in the store (flipped bytes, a truncated payload, a swapped
manifest, a pickle payload, an object array) are promoted and announced like a buggy or
hostile writer would. Scorers refuse each with a clear reason and keep serving the previous
model; the refusal shows in ``/model/`` and ``/metrics``; a restarted trainer falls back to
the newest good snapshot (and says so) instead of crash-looping, and when that snapshot is
older than the group's committed offsets (bit rot in the newest one), retrains the ratings
in between, once."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import pickle
import re
import time
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from aiobotocore.session import get_session
from aiokafka import AIOKafkaProducer

from app.kafka import kafka_client_options
from app.settings import model_keys
from devtools.workers import WorkerProcess
from models.snapshot import sign_manifest
from models.wire import ModelUpdate
from storage.base import manifest_key, payload_key
from tests.faults.harness import Cluster, Traffic, assert_counts_exact, ratings, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]


def flipped(payload: bytes, manifest: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    middle = len(payload) // 2
    bad = payload[:middle] + bytes(b ^ 0xFF for b in payload[middle : middle + 16])
    return bad + payload[middle + 16 :], manifest  # the manifest's sha256 is the original's


def truncated(payload: bytes, manifest: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    cut = payload[: len(payload) // 2]  # and a writer that hashed what it (partly) wrote
    return cut, {**manifest, "sha256": hashlib.sha256(cut).hexdigest()}


def swapped(payload: bytes, manifest: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    return payload, {**manifest, "version": manifest["version"] - 1}  # another version's


def pickled(payload: bytes, manifest: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    bad = pickle.dumps({"user_embeddings": [1.0, 2.0]})  # written here, never loaded
    return bad, {**manifest, "sha256": hashlib.sha256(bad).hexdigest()}


def object_array(payload: bytes, manifest: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The real archive with one entry replaced by a pickled object array."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(payload)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "item_biases.npy":
                entry = io.BytesIO()
                np.save(entry, np.array([{"x": 1}], dtype=object), allow_pickle=True)
                data = entry.getvalue()
            dst.writestr(info, data)
    bad = out.getvalue()
    return bad, {**manifest, "sha256": hashlib.sha256(bad).hexdigest()}


CORRUPTIONS: dict[str, tuple[Callable[..., tuple[bytes, dict[str, Any]]], str]] = {
    "flipped": (flipped, "IntegrityError"),
    "truncated": (truncated, "SnapshotError"),
    "swapped": (swapped, "IntegrityError"),
    "pickled": (pickled, "SnapshotError"),
    "object_array": (object_array, "object array"),
}


async def _s3(cluster: Cluster) -> Any:
    s = cluster.settings
    return get_session().create_client(
        "s3",
        endpoint_url=s.s3_endpoint,
        region_name=s.s3_region,
        aws_access_key_id=s.s3_access_key,
        aws_secret_access_key=s.s3_secret_key.get_secret_value(),
    )


async def plant(cluster: Cluster, good: int, version: int, corrupt: Callable[..., Any]) -> None:
    """Write a corrupted copy of snapshot ``good`` as ``version`` straight into the bucket,
    promote it (the pointer only checks that both objects exist) and announce it, signed
    with the deployment's model key: a buggy trainer, not a forger (tests/integration/
    service/test_model_trust.py has those)."""
    keys = model_keys(cluster.settings)
    bucket, _, prefix = cluster.settings.model_store.removeprefix("s3://").partition("/")
    async with cluster.store() as store:
        payload, manifest = await store.get(good)
    payload, manifest = corrupt(payload, {**manifest, "version": version})
    manifest = sign_manifest(manifest, keys)
    async with await _s3(cluster) as s3:
        await s3.put_object(Bucket=bucket, Key=f"{prefix}/{payload_key(version)}", Body=payload)
        await s3.put_object(
            Bucket=bucket, Key=f"{prefix}/{manifest_key(version)}", Body=json.dumps(manifest)
        )
    async with cluster.store() as store:
        await store.promote(version)
    producer = AIOKafkaProducer(**kafka_client_options(cluster.settings), acks="all")
    await producer.start()
    try:
        key, value = ModelUpdate(version, "planted", manifest["sha256"], 0).signed(keys).encode()
        await producer.send_and_wait(cluster.settings.model_updates_topic, key=key, value=value)
    finally:
        await producer.stop()


async def rot(cluster: Cluster, version: int) -> None:
    """Flip bytes in the middle of a stored payload, as a failing disk would."""
    bucket, _, prefix = cluster.settings.model_store.removeprefix("s3://").partition("/")
    key = f"{prefix}/{payload_key(version)}"
    async with await _s3(cluster) as s3:
        body = await (await s3.get_object(Bucket=bucket, Key=key))["Body"].read()
        bad, _ = flipped(body, {})
        await s3.put_object(Bucket=bucket, Key=key, Body=bad)


def refused(worker: WorkerProcess) -> float:
    samples = Cluster.metric(worker, "streamrec_model_loads_total")
    return samples.get('{outcome="refused"}', 0.0)


def test_corrupt_snapshots_are_refused_and_the_trainer_falls_back(cluster: Cluster) -> None:
    events = ratings(2000, users=50, items=30, seed=5, prefix="cs")
    before = cluster.trained()
    # In two halves, each covered by a snapshot: the bit rot below needs a good snapshot
    # older than the newest to fall back to (on a loaded machine the trainer's batches
    # grow, and one snapshot could cover all 2,000 with nothing older in the store).
    half = len(events) // 2
    for sent in (half, len(events)):
        with Traffic(cluster.settings, events=events[sent - half : sent]) as traffic:
            wait_for(lambda t=traffic: t.done_sending, timeout=60, what="ratings sent")
        good_model = cluster.wait_snapshot_covers(before + sent, timeout=90)
    good = good_model.version
    wait_for(
        lambda: all(cluster.info(s).get("version") == good for s in cluster.scorers),
        timeout=30,
        what=f"scorers to serve v{good}",
    )
    time.sleep(4)  # let the group commit v{good}'s offsets (the trainer commits them late)
    cluster.trainer.kill()  # restarted below, with a corrupt snapshot as the current one

    planted = {}
    for n, (kind, (corrupt, reason)) in enumerate(CORRUPTIONS.items()):
        version = good + 100 + n
        counts = [refused(s) for s in cluster.scorers]
        asyncio.run(plant(cluster, good, version, corrupt))
        planted[version] = kind
        for scorer, count in zip(cluster.scorers, counts, strict=True):
            wait_for(
                lambda s=scorer, c=count: refused(s) > c,
                timeout=30,
                what=f"a scorer to refuse the {kind} snapshot",
            )
            info = cluster.info(scorer)
            assert info["version"] == good, f"{kind}: the previous model must keep serving"
            assert info["last_refused"]["version"] == version
            assert reason in info["last_refused"]["reason"], info["last_refused"]
            status, health = scorer.get("/health/")
            assert status == 200 and health["model_version"] == good

    # Bit rot in the trainer's own newest snapshot: the restart must fall back further, to
    # a snapshot that covers fewer ratings than the group's committed offsets, and retrain
    # the ratings in between (it rewinds the consumer), once.
    asyncio.run(rot(cluster, good))
    trainer = cluster.start_trainer()
    trainer.wait_ready(model=True)
    log = trainer.log_path.read_text()
    fallback = re.search(r"Falling back to snapshot v(\d+), the newest good one", log)
    assert fallback and int(fallback.group(1)) < good, log[-2000:]
    for version in [*planted, good]:
        assert f"Refused snapshot v{version} on restore" in log
    assert cluster.info(trainer)["last_refused"]["version"] in {*planted, good}
    more = ratings(500, users=50, items=30, seed=6, prefix="cx")
    with Traffic(cluster.settings, events=more) as traffic:
        wait_for(lambda: traffic.done_sending, timeout=60, what="more ratings sent")
    # The trainer's consumer starts at the restored snapshot's offsets, not the group's
    # committed ones: the ratings after the fallback snapshot are retrained, once.
    model = cluster.wait_snapshot_covers(before + len(events) + len(more), timeout=90)
    assert model.version > max(planted), "new versions continue after the planted ones"
    assert_counts_exact(model, events, prefix="cs", before=before + len(more))
    wait_for(
        lambda: all(cluster.info(s).get("version") == model.version for s in cluster.scorers),
        timeout=30,
        what="scorers to serve the trainer's next good snapshot",
    )
    assert trainer.running(), "the trainer must not crash-loop"
