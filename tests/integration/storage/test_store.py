"""The snapshot store's behaviour, the same for the local adapter and for S3 (real SeaweedFS)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import signal
import time
import warnings

import pytest
from aiobotocore.session import get_session
from click.testing import CliRunner, Result

from app.cli import main
from app.settings import Settings
from app.stores import s3_config_from_settings, store_from_settings
from devtools.seaweed import DEV_BUCKET, SeaweedServer
from models.signing import Keyring
from models.snapshot import sign_manifest
from storage import S3Config, SnapshotInfo, SnapshotStore, open_store
from storage.errors import (
    AccessDenied,
    ConfigError,
    IntegrityError,
    SnapshotExists,
    SnapshotNotFound,
    StorageError,
    StoreUnavailable,
)
from tests.integration.storage.conftest import OWN_S3_KEYS, PATH_STYLE, Backdoor, snapshot

PAYLOAD = "models/{:012d}/model.npz"
MANIFEST = "models/{:012d}/manifest.json"


async def put(store: SnapshotStore, *versions: int) -> dict[int, bytes]:
    payloads = {}
    for version in versions:
        payloads[version], manifest = snapshot(version)
        await store.put(version, payloads[version], manifest)
    return payloads


# --- round trip and write-once ---------------------------------------------------------------


async def test_round_trip(store: SnapshotStore, store_url: str) -> None:
    assert await store.latest() is None
    assert await store.list() == []
    payload, manifest = snapshot(7, offsets={"ratings:0": 12}, n_users=3)

    uri = await store.put(7, payload, manifest)

    assert uri == f"{store_url}/models/000000000007/model.npz"
    assert await store.get(7) == (payload, manifest)
    assert await store.latest() == 7
    [info] = await store.list()
    assert isinstance(info, SnapshotInfo)
    assert (info.version, info.uri, info.complete, info.size) == (7, uri, True, len(payload))
    assert info.modified is not None and info.modified.tzinfo is not None


async def test_versions_are_write_once(store: SnapshotStore) -> None:
    original = await put(store, 1)
    payload, manifest = snapshot(1)

    with pytest.raises(SnapshotExists, match="000000000001"):
        await store.put(1, payload, manifest)

    assert (await store.get(1))[0] == original[1]


async def test_identical_re_put_is_an_idempotent_success(store: SnapshotStore) -> None:
    payload, manifest = snapshot(3, created_at=1.5)
    first = await store.put(3, payload, manifest)
    assert await store.put(3, payload, dict(manifest)) == first
    with pytest.raises(SnapshotExists):
        await store.put(3, payload, {**manifest, "created_at": 2.5})  # same bytes, new manifest


@pytest.mark.parametrize("same_payload", [False, True], ids=["distinct", "same-payload"])
async def test_concurrent_writers_of_one_version_exactly_one_wins(
    store_url: str, store_config: S3Config, same_payload: bool
) -> None:
    """20 writers (10 when all upload the same bytes, which doubles SeaweedFS's lock waits),
    each with its own store and client, race for version 5."""
    shared = snapshot(5)[0]
    snapshots = [
        snapshot(5, shared if same_payload else None, writer=i)
        for i in range(10 if same_payload else 20)
    ]
    stores = [open_store(store_url, store_config) for _ in snapshots]
    try:
        results = await asyncio.gather(
            *(s.put(5, p, m) for s, (p, m) in zip(stores, snapshots, strict=True)),
            return_exceptions=True,
        )
    finally:
        await asyncio.gather(*(s.close() for s in stores))

    winners = [i for i, r in enumerate(results) if isinstance(r, str)]
    losers = [r for r in results if not isinstance(r, str)]
    assert len(winners) == 1, results
    assert all(isinstance(r, SnapshotExists) for r in losers), losers
    async with open_store(store_url, store_config) as reader:
        assert await reader.get(5) == snapshots[winners[0]]


async def test_retry_after_crash_between_payload_and_manifest(
    store: SnapshotStore, backdoor: Backdoor
) -> None:
    """A writer died after its payload: it (same bytes) may finish; another writer may not."""
    payload, manifest = snapshot(4)
    await store.put(4, payload, manifest)
    await backdoor.delete(MANIFEST.format(4))
    assert await store.latest() is None

    other_payload, other_manifest = snapshot(4)
    with pytest.raises(SnapshotExists, match="claimed by another writer"):
        await store.put(4, other_payload, other_manifest)

    await store.put(4, payload, manifest)
    assert await store.get(4) == (payload, manifest)


async def test_put_refuses_an_inconsistent_manifest_and_writes_nothing(
    store: SnapshotStore,
) -> None:
    payload, manifest = snapshot(2)
    with pytest.raises(IntegrityError, match="sha256"):
        await store.put(2, payload + b"x", manifest)
    with pytest.raises(ValueError, match="version"):
        await store.put(3, payload, manifest)
    with pytest.raises(ValueError, match="JSON"):
        await store.put(2, payload, {**manifest, "bad": object()})
    for bad in (-1, True, 1.5, "2", 10**12):
        with pytest.raises(ValueError, match="version"):
            await store.put(bad, payload, manifest)  # type: ignore[arg-type]
    assert await store.list() == []


# --- completeness and integrity ------------------------------------------------------------


async def test_latest_skips_incomplete_versions(store: SnapshotStore, backdoor: Backdoor) -> None:
    await put(store, 1, 2)
    payload, manifest = snapshot(3)
    await backdoor.write(PAYLOAD.format(3), payload)  # payload, no manifest
    payload, manifest = snapshot(4)
    await backdoor.write(MANIFEST.format(4), json.dumps(manifest).encode())  # the reverse

    assert await store.latest() == 2
    assert [(i.version, i.complete) for i in await store.list()] == [
        (1, True),
        (2, True),
        (3, False),
        (4, False),
    ]
    for version in (3, 4):
        with pytest.raises(SnapshotNotFound, match=f"{version:012d}"):
            await store.get(version)
        with pytest.raises(SnapshotNotFound):
            await store.promote(version)


async def test_missing_version_is_not_found(store: SnapshotStore, store_url: str) -> None:
    await put(store, 1)
    with pytest.raises(SnapshotNotFound) as missing:
        await store.get(9)
    assert f"{store_url}/models/000000000009/manifest.json" in str(missing.value)


async def test_corrupted_payload_is_refused(store: SnapshotStore, backdoor: Backdoor) -> None:
    payloads = await put(store, 1)
    damaged = bytearray(payloads[1])
    damaged[500] ^= 0xFF
    await backdoor.write(PAYLOAD.format(1), bytes(damaged))

    with pytest.raises(IntegrityError, match=r"000000000001/model\.npz is corrupt"):
        await store.get(1)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"version": 1}', "no valid sha256"),
        (b'{"version": 2, "sha256": "' + b"0" * 64 + b'"}', "names version 2"),
    ],
    ids=["not-json", "not-object", "no-sha", "wrong-version"],
)
async def test_invalid_manifest_is_refused(
    store: SnapshotStore, backdoor: Backdoor, content: bytes, reason: str
) -> None:
    await put(store, 1)
    await backdoor.write(MANIFEST.format(1), content)
    with pytest.raises(IntegrityError, match=reason) as refused:
        await store.get(1)
    assert "000000000001/manifest.json" in str(refused.value)


# --- pointer, promote, rollback, prune -----------------------------------------------------


async def test_promote_and_rollback(store: SnapshotStore, backdoor: Backdoor) -> None:
    await put(store, 1, 2, 3)
    assert await store.current() is None
    with pytest.raises(SnapshotNotFound, match="no current pointer"):
        await store.rollback()

    for version in (1, 2, 3):
        await store.promote(version)
        assert await store.current() == version
    await store.promote(3)  # promoting the current version changes nothing
    pointer = json.loads(await backdoor.read("current.json"))
    assert (pointer["version"], pointer["previous"]) == (3, [2, 1])
    assert pointer["updated_at"]

    assert await store.rollback() == 2
    assert await store.current() == 2
    assert await store.rollback() == 1
    with pytest.raises(SnapshotNotFound, match="only version promoted"):
        await store.rollback()
    assert await store.current() == 1

    assert await store.rollback(to=3) == 3  # outside the history: a promote that remembers 1
    assert await store.rollback() == 1
    with pytest.raises(SnapshotNotFound):
        await store.promote(9)
    with pytest.raises(SnapshotNotFound):
        await store.rollback(to=9)
    assert await store.current() == 1


async def test_rollback_skips_versions_deleted_since(store: SnapshotStore) -> None:
    await put(store, 1, 2, 3, 4)
    for version in (1, 2, 3):
        await store.promote(version)
    await store.promote(4)
    await store.prune(keep=1)  # keeps 4 (newest, current); deletes 1..3
    with pytest.raises(SnapshotNotFound, match="still exists"):
        await store.rollback()
    await put(store, 5)
    await store.promote(5)
    assert await store.rollback() == 4


async def test_corrupt_pointer_is_refused(store: SnapshotStore, backdoor: Backdoor) -> None:
    await backdoor.write("current.json", b'{"version": "latest"}')
    with pytest.raises(IntegrityError, match=r"current\.json"):
        await store.current()


async def test_prune_keeps_newest_and_current(store: SnapshotStore, backdoor: Backdoor) -> None:
    await put(store, 2, 3, 4, 5, 6, 7)
    await backdoor.write(PAYLOAD.format(0), b"abandoned write")  # incomplete, older
    await backdoor.write("models/000000000001/leftover", b"crashed before the payload")
    await backdoor.write(PAYLOAD.format(9), b"write in progress")  # incomplete, newer
    await store.promote(3)

    assert await store.prune(keep=2) == [0, 1, 2, 4, 5]

    assert [(i.version, i.complete) for i in await store.list()] == [
        (3, True),
        (6, True),
        (7, True),
        (9, False),
    ]
    assert await store.current() == 3
    for version in (3, 6, 7):
        await store.get(version)
    assert await store.prune(keep=2) == []
    with pytest.raises(ValueError, match="keep"):
        await store.prune(keep=0)


@pytest.mark.s3
@pytest.mark.parametrize("kind", ["s3"], indirect=True)  # multipart uploads exist only on S3
async def test_prune_aborts_unfinished_uploads_of_pruned_versions(
    store: SnapshotStore, backdoor: Backdoor
) -> None:
    await put(store, 2, 3)
    await backdoor.write("models/000000000001/claim.json", b"{}")  # as a killed writer leaves it
    for version in (1, 3):
        await backdoor.s3.create_multipart_upload(
            Bucket=backdoor.bucket, Key=f"{backdoor.prefix}/{PAYLOAD.format(version)}"
        )

    assert await store.prune(keep=1) == [1, 2]

    pending = await backdoor.s3.list_multipart_uploads(
        Bucket=backdoor.bucket, Prefix=f"{backdoor.prefix}/"
    )
    assert [u["Key"] for u in pending.get("Uploads", ())] == [
        f"{backdoor.prefix}/{PAYLOAD.format(3)}"  # a kept version's upload is left alone
    ]


# --- sizes, lifecycle -----------------------------------------------------------------------


async def test_100_mib_snapshot_round_trip(
    store: SnapshotStore, backdoor: Backdoor, kind: str, big_payload: bytes
) -> None:
    payload, manifest = snapshot(1, big_payload)
    await store.put(1, payload, manifest)
    got, _ = await store.get(1)
    assert hashlib.sha256(got).hexdigest() == manifest["sha256"]
    if kind == "s3":
        etag = (await backdoor.head(PAYLOAD.format(1)))["ETag"].strip('"')
        assert etag.endswith("-7"), f"not a 7-part multipart upload: ETag {etag}"


async def test_close_releases_everything(store_url: str, store_config: S3Config) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = open_store(store_url, store_config)  # used without "async with"
        await put(store, 1)
        await store.close()
        await store.close()  # idempotent
        del store
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []

    closed = open_store(store_url, store_config)
    await closed.close()
    with pytest.raises(StorageError, match="closed"):
        await closed.get(1)


# --- configuration and failures ------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://bucket/x",
        "/var/models",
        "file://",
        "s3://Bad_Bucket/x",
        "s3://b/x",
        "s3://okay/a//b",
    ],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="store URL"):
        open_store(url)


@pytest.mark.s3
@pytest.mark.parametrize("wrong", ["secret_key", "access_key"])
async def test_wrong_credentials_are_a_clear_error(
    bucket: str, store_config: S3Config, wrong: str
) -> None:
    config = S3Config(**{**_fields(store_config), wrong: "not-the-right-one"})
    async with open_store(f"s3://{bucket}/creds", config) as store:
        with pytest.raises(AccessDenied, match=f"s3://{bucket}/creds.*access key and secret"):
            await store.latest()
        with pytest.raises(AccessDenied):
            await store.put(*(1, *snapshot(1)))


@pytest.mark.s3
async def test_no_credentials_at_all_is_a_config_error(
    bucket: str, store_config: S3Config, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    config = S3Config(**{**_fields(store_config), "access_key": None, "secret_key": None})
    async with open_store(f"s3://{bucket}/x", config) as store:
        with pytest.raises(ConfigError, match="no usable S3 credentials"):
            await store.latest()


@pytest.mark.s3
async def test_missing_bucket_is_a_config_error(store_config: S3Config) -> None:
    async with open_store("s3://no-such-bucket-for-streamrec/x", store_config) as store:
        with pytest.raises(ConfigError, match="bucket 'no-such-bucket-for-streamrec'"):
            await store.get(1)


async def test_unreachable_endpoint_is_store_unavailable() -> None:
    from devtools.process import port_free

    port = next(p for p in range(39_000, 39_100) if port_free(p))
    config = S3Config(
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key="a",
        secret_key="b",
        max_attempts=2,
        connect_timeout=1,
    )
    async with open_store("s3://some-bucket/x", config) as store:
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}.*after 2 attempts"):
            await store.latest()


def _fields(config: S3Config) -> dict:
    return {name: getattr(config, name) for name in S3Config.__dataclass_fields__}


# --- the S3 server dies mid-upload ----------------------------------------------------------


@pytest.mark.s3
async def test_server_killed_mid_upload_then_restarted(own_s3: SeaweedServer) -> None:
    """Never a half-visible snapshot: the put fails clearly (or succeeds), a retry completes."""
    access_key, secret_key = OWN_S3_KEYS
    config = S3Config(
        endpoint_url=own_s3.endpoint,
        access_key=access_key,
        secret_key=secret_key,
        max_attempts=2,
        connect_timeout=1,
        read_timeout=10,
        part_size=5 * 1024 * 1024,
        multipart_threshold=5 * 1024 * 1024,
        max_concurrency=2,
    )
    payload, manifest = snapshot(2, os.urandom(64 * 1024 * 1024))
    raw = get_session().create_client(
        "s3",
        endpoint_url=own_s3.endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=config.region,
        config=PATH_STYLE,
    )
    async with open_store(f"s3://{DEV_BUCKET}/restart", config) as store:
        await put(store, 1)
        upload = asyncio.create_task(store.put(2, payload, manifest))
        async with raw as s3:  # kill the server once the multipart upload is under way
            while not (await s3.list_multipart_uploads(Bucket=DEV_BUCKET)).get("Uploads"):
                assert not upload.done(), "the upload finished before the server could be killed"
                await asyncio.sleep(0.02)
        os.killpg(own_s3.pid(), signal.SIGKILL)
        try:
            outcome: str | StorageError = await upload
        except StoreUnavailable as exc:
            outcome = exc
            assert "restart/models/000000000002/model.npz" in str(exc)
            assert own_s3.endpoint in str(exc)

        own_s3.stop(timeout=5)
        own_s3.start(timeout=60)

        if isinstance(outcome, StorageError):
            assert await store.latest() == 1
            assert 2 not in [i.version for i in await store.list() if i.complete]
            with pytest.raises(SnapshotNotFound):
                await store.get(2)
        # The retry (same bytes) completes the version. Just after a restart SeaweedFS may
        # still answer 500 for a while (volumes re-registering): a clear error, retried the
        # way the trainer retries at its next snapshot.
        deadline = time.monotonic() + 30
        while True:
            try:
                await store.put(2, payload, manifest)
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the restarted server never recovered"
                await asyncio.sleep(0.5)
        assert await store.get(2) == (payload, manifest)
        assert await store.latest() == 2
        await store.get(1)


# --- the CLI --------------------------------------------------------------------------------


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["models", *args])


def test_cli_refuses_to_promote_a_snapshot_scorers_would_refuse(
    store_url: str, store_config: S3Config
) -> None:
    async def setup() -> None:
        async with open_store(store_url, store_config) as store:
            await put(store, 1)  # unsigned

    asyncio.run(setup())
    refused = cli("promote", "1", "--store", store_url, "--no-announce")
    assert refused.exit_code == 1
    assert "untrusted snapshot (unsigned)" in refused.output
    assert "scorers would refuse it" in refused.output
    assert cli("list", "--json", "--store", store_url).stdout.count('"current": null') == 1


def test_cli_manages_snapshots(store_url: str, store_config: S3Config) -> None:
    async def setup() -> None:
        # The CLI moves the pointer only to snapshots scorers would trust: signed with the
        # model key (the dev key, as no STREAMREC_MODEL_KEY is set here).
        async with open_store(store_url, store_config) as store:
            for version in (1, 2, 3):
                payload, manifest = snapshot(version)
                await store.put(version, payload, sign_manifest(manifest, Keyring.dev()))

    asyncio.run(setup())
    listed = cli("list", "--store", store_url)
    assert listed.exit_code == 0, listed.output
    assert [line.split()[:2] for line in listed.stdout.splitlines()[1:]] == [
        ["1", "complete"],
        ["2", "complete"],
        ["3", "complete"],
    ]

    # (Announcing on Kafka is the service's business; tests/integration/service covers it.)
    quiet = ("--store", store_url, "--no-announce")
    assert cli("promote", "2", *quiet).stdout == "current: 2 (was none)\n"
    assert cli("promote", "3", *quiet).stdout == "current: 3 (was 2)\n"
    assert cli("rollback", *quiet).stdout == "current: 2 (was 3)\n"
    assert cli("rollback", "--to", "1", *quiet).stdout == "current: 1 (was 2)\n"
    assert cli("rollback", *quiet).stdout == "current: 2 (was 1)\n"

    shown = cli("show", "2", "--store", store_url)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["version"] == 2
    assert "sha256 verified" in shown.stderr

    assert cli("prune", "--keep", "1", "--store", store_url).stdout == "deleted 1: 1\n"
    doc = json.loads(cli("list", "--json", "--store", store_url).stdout)
    assert doc["current"] == 2
    assert [(s["version"], s["current"]) for s in doc["snapshots"]] == [(2, True), (3, False)]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["show", "9"], 1, "Error: no snapshot version 9: "),
        (["promote", "9"], 1, "Error: no snapshot version 9: "),
        (["rollback"], 1, "Error: nothing to roll back: no current pointer"),
        (["promote", "x"], 2, "'x' is not a valid integer"),
        (["prune"], 2, "Missing option '--keep'"),
        (["prune", "--keep", "0"], 2, "0 is not in the range x>=1"),
    ],
)
def test_cli_errors_are_one_clear_line(
    store_url: str, args: list[str], code: int, message: str
) -> None:
    result = cli(*args, "--store", store_url)
    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output
    if code == 1:
        assert result.output.count("\n") == 1


def test_cli_bad_store_url() -> None:
    result = cli("list", "--store", "ftp://models")
    assert result.exit_code == 1
    assert result.output.startswith("Error: store URL 'ftp://models' has unsupported scheme")


# --- settings → store (app.stores) ----------------------------------------------------------


async def test_store_from_settings_uses_model_store(store_url: str, settings: Settings) -> None:
    configured = settings.model_copy(update={"model_store": store_url})
    async with store_from_settings(configured) as store:
        await put(store, 4)
    async with open_store(store_url, s3_config_from_settings(settings)) as store:
        assert await store.latest() == 4


def test_empty_s3_settings_mean_botocore_defaults() -> None:
    config = s3_config_from_settings(
        Settings(s3_endpoint="", s3_access_key="", s3_secret_key="", s3_max_attempts=7)
    )
    assert (config.endpoint_url, config.access_key, config.secret_key) == (None, None, None)
    assert config.max_attempts == 7
    assert "secret" not in repr(s3_config_from_settings(Settings()))
