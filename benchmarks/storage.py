"""Snapshot store throughput on S3 vs raw aiobotocore (``python -m benchmarks.storage [--json]``).

Against the S3 server of the settings (``streamrec dev up``), in a bucket created for the run
and deleted afterwards. For 1 MiB and 64 MiB payloads, each repetition times, interleaved:

* ``raw put``: one ``put_object`` (what a hand-written uploader would do);
* ``store put``: ``SnapshotStore.put`` — sha256, claim, payload (multipart above 16 MiB,
  4 parts in flight) and manifest, all write-once;
* ``raw get``: one ``get_object`` read to the end;
* ``store get``: ``SnapshotStore.get`` — payload and manifest fetched together, sha256 checked.

Both use the same endpoint, credentials and botocore config. The ratio is store time / raw
time (median of the repetitions): the cost of the guarantees.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable
from typing import Any

import click
from aiobotocore.session import get_session
from botocore.config import Config

from app.settings import get_settings
from app.stores import s3_config_from_settings
from benchmarks.common import Figure, table
from storage import open_store

#: What ``figures(quick=True)`` takes on the dev machine, roughly (benchmarks.run_all).
QUICK_SECONDS = 20

MiB = 1024 * 1024
SIZES = {"1 MiB": (1 * MiB, 20), "64 MiB": (64 * MiB, 4)}  # payload bytes, repetitions


async def timed(work: Awaitable[Any]) -> float:
    """Seconds to await ``work`` (a coroutine does nothing until awaited)."""
    start = time.perf_counter()
    await work
    return time.perf_counter() - start


async def raw_get(s3: Any, bucket: str, key: str) -> bytes:
    response = await s3.get_object(Bucket=bucket, Key=key)
    async with response["Body"] as body:
        return await body.read()


async def run(repeat_scale: float) -> list[dict[str, Any]]:
    settings = get_settings()
    config = s3_config_from_settings(settings)
    bucket = f"bench-storage-{uuid.uuid4().hex[:12]}"
    botocore_config = Config(
        s3={"addressing_style": "path"},
        retries={"mode": config.retry_mode, "max_attempts": config.max_attempts},
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        max_pool_connections=10,
    )
    raw_client = get_session().create_client(
        "s3",
        endpoint_url=config.endpoint_url,
        region_name=config.region,
        aws_access_key_id=config.access_key,
        aws_secret_access_key=config.secret_key,
        config=botocore_config,
    )
    results = []
    async with raw_client as s3, open_store(f"s3://{bucket}/bench", config) as store:
        await s3.create_bucket(Bucket=bucket)
        try:
            version = 0
            for label, (size, repetitions) in SIZES.items():
                payload = os.urandom(size)
                times: dict[str, list[float]] = {
                    "raw put": [],
                    "store put": [],
                    "raw get": [],
                    "store get": [],
                }
                for i in range(max(1, round(repetitions * repeat_scale)) + 1):  # +1: warm-up
                    version += 1
                    manifest = {"version": version, "sha256": hashlib.sha256(payload).hexdigest()}
                    key = f"raw/{version}"

                    samples = {
                        "raw put": await timed(s3.put_object(Bucket=bucket, Key=key, Body=payload)),
                        "store put": await timed(store.put(version, payload, manifest)),
                        "raw get": await timed(raw_get(s3, bucket, key)),
                        "store get": await timed(store.get(version)),
                    }
                    if i:
                        for name, seconds in samples.items():
                            times[name].append(seconds)
                    await s3.delete_object(Bucket=bucket, Key=key)
                    await store.prune(keep=1)
                median = {name: statistics.median(values) for name, values in times.items()}
                for op in ("put", "get"):
                    raw, ours = median[f"raw {op}"], median[f"store {op}"]
                    results.append(
                        {
                            "size": label,
                            "op": op,
                            "repetitions": len(times[f"raw {op}"]),
                            "raw_s": raw,
                            "store_s": ours,
                            "raw_mib_s": size / MiB / raw,
                            "store_mib_s": size / MiB / ours,
                            "ratio": ours / raw,
                        }
                    )
        finally:
            await store.prune(keep=1)
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            async for page in pages:
                for obj in page.get("Contents", ()):
                    await s3.delete_object(Bucket=bucket, Key=obj["Key"])
            await s3.delete_bucket(Bucket=bucket)
    return results


#: The store's guarantees (checksums, write-once claim, manifest) may cost this much.
GOAL = 0.5


def figures(quick: bool) -> list[Figure]:
    """Store put/get MiB/s vs raw aiobotocore (the S3 server of the settings)."""
    return [
        Figure(
            f"S3 store {r['op']} vs raw aiobotocore, {r['size']}",
            baseline=round(r["raw_mib_s"], 1),
            value=round(r["store_mib_s"], 1),
            goal=GOAL,
            unit="MiB/s",
            note=f"median of {r['repetitions']}",
        )
        for r in asyncio.run(run(0.25 if quick else 1.0))
    ]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--scale", default=1.0, show_default=True, help="Multiply the repetitions.")
def main(as_json: bool, scale: float) -> None:
    """Put/get throughput of the S3 snapshot store against raw aiobotocore."""
    results = asyncio.run(run(scale))
    if as_json:
        click.echo(json.dumps({"benchmark": "storage", "results": results}, indent=2))
        return
    rows = [
        (
            f"{r['size']} {r['op']}",
            r["repetitions"],
            f"{r['raw_mib_s']:.0f}",
            f"{r['store_mib_s']:.0f}",
            f"{r['ratio']:.2f}",
        )
        for r in results
    ]
    header = ("payload op", "reps", "raw MiB/s", "store MiB/s", "store/raw time")
    click.echo(table(header, rows))


if __name__ == "__main__":
    main()
