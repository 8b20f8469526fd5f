"""`streamrec generate` and `streamrec train` end to end on a local file:// store."""

import asyncio
import json
import time

import click
import pytest
from click.testing import CliRunner

from app.cli import main
from app.commands.offline import file_encoding, read_ratings
from app.settings import load_settings, model_keys
from app.stores import store_from_url
from models.incremental import IncrementalModel


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_generate_then_train_writes_a_current_snapshot(tmp_path):
    data = tmp_path / "demo.csv"
    store = f"file://{tmp_path / 'store'}"
    result = run("generate", str(data), "--users", "300", "--items", "120", "--ratings", "8000")
    assert result.exit_code == 0, result.output
    assert data.read_text().startswith("user,item,rating,timestamp\n")
    catalog = tmp_path / "demo.items.csv"  # beside the ratings: every rated item has a title
    assert catalog.read_text().startswith("item,title,genres\n")
    titled = {line.split(",")[0] for line in catalog.read_text().splitlines()[1:]}
    assert {r.item for r in read_ratings(data)} <= titled

    result = run("train", str(data), "--epochs", "5", "--components", "8", "--json", "--out", store)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ratings"] == 8000
    assert report["split"]["kind"] == "latest_per_user"
    assert report["split"]["test"] > 0
    model, popularity = report["metrics"]["model"], report["metrics"]["popularity"]
    assert model["exclude_train"] is True
    assert model["precision"] > 2 * popularity["precision"]  # clustered data: clearly learnt
    assert report["snapshot"]["version"] == 1

    async def current():
        async with store_from_url(store) as s:
            version = await s.current()
            return version, await s.get(version)

    version, (payload, manifest) = asyncio.run(current())
    assert version == 1
    # The bootstrap signs what it writes (here with the dev key: no key is set).
    restored = IncrementalModel.from_bytes(payload, manifest, model_keys(load_settings()))
    assert restored.n_users == report["users"]
    assert restored.config.no_components == 8

    table = run("train", str(data), "--epochs", "1", "--test-fraction", "0.1", "--out", store)
    assert table.exit_code == 0, table.output
    assert "model, train items excluded" in table.stdout
    assert "snapshot v2" in table.stdout  # the next version, now current
    assert asyncio.run(current())[0] == 2


def test_bad_line_is_one_clear_error_with_its_line_number(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,rating,timestamp\na,b,5,1\na,c,seven,2\n")
    result = run("train", str(bad), "--out", f"file://{tmp_path / 'store'}")
    assert result.exit_code == 1
    assert "bad.csv: line 3: rating 'seven' is not a number" in result.output
    assert not (tmp_path / "store" / "models").exists() or not any(
        (tmp_path / "store" / "models").iterdir()
    )


def test_latin1_files_are_read(tmp_path):
    path = tmp_path / "u.data"
    path.write_bytes("Zoë\tMisérables, Les (1995)\t5\t1\r\n".encode("latin-1"))
    assert file_encoding(path) == "latin-1"
    (rating,) = read_ratings(path)
    assert (rating.user, rating.item, rating.event_id.rsplit(":", 1)[0]) == (
        "Zoë",
        "Misérables, Les (1995)",
        "u.data:1",
    )
    utf8 = tmp_path / "utf8.csv"
    utf8.write_text("Zoë,東京,5,1\n", encoding="utf-8")
    assert file_encoding(utf8) == "utf-8"
    assert read_ratings(utf8)[0].item == "東京"


def test_bad_arguments_exit_non_zero(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("a,b,5,1\n")
    both = run("train", str(data), "--holdout-per-user", "1", "--test-fraction", "0.2")
    assert both.exit_code == 2 and "not both" in both.output
    assert run("train", str(data), "--format", "xlsx").exit_code == 2
    assert run("train", str(tmp_path / "missing.csv")).exit_code == 2
    assert run("generate", str(data)).exit_code == 1  # exists, no --force
    impossible = run("generate", str(tmp_path / "x.csv"), "--users", "2", "--items", "2")
    assert impossible.exit_code == 2 and "2 items cannot fill 8 clusters" in impossible.output
    too_many = run(
        "generate", str(tmp_path / "x.csv"), "--users", "2", "--items", "2", "--clusters", "1"
    )
    assert too_many.exit_code == 2 and "more than half" in too_many.output


def test_the_offline_job_bootstraps_with_the_services_model_config(tmp_path, monkeypatch):
    from app.settings import MODEL_FIELDS, Settings, get_settings, model_config_of
    from models.config import ModelConfig

    defaults = ModelConfig()
    assert {name: getattr(Settings(), name) for name in MODEL_FIELDS} == {
        name: getattr(defaults, name) for name in MODEL_FIELDS
    }  # one place for the defaults: ModelConfig
    monkeypatch.setenv("STREAMREC_MAX_SAMPLED", "17")
    monkeypatch.setenv("STREAMREC_CONSOLIDATE_EPOCHS", "2")
    get_settings.cache_clear()
    try:
        data = tmp_path / "demo.csv"
        store = f"file://{tmp_path / 'store'}"
        assert run("generate", str(data), "--ratings", "2000").exit_code == 0
        result = run("train", str(data), "--json", "--out", store)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        service = model_config_of(get_settings())
    finally:
        get_settings.cache_clear()
    assert report["config"] == service.to_dict()
    assert service.max_sampled == 17
    assert report["epochs"] == 2  # the bootstrap trains like a consolidation


def test_train_refuses_to_replace_a_model_that_streaming_trained(tmp_path):
    from app.settings import Settings
    from app.stores import write_current_snapshot
    from models.config import ModelConfig
    from models.synthetic import generate_ratings

    data = tmp_path / "r.csv"
    store = f"file://{tmp_path / 'store'}"
    assert (
        run("generate", str(data), "--users", "50", "--items", "40", "--ratings", "600").exit_code
        == 0
    )
    offline = run("train", str(data), "--epochs", "1", "--out", store)
    assert offline.exit_code == 0, offline.output  # replacing an offline model is fine

    streamed = IncrementalModel(ModelConfig(no_components=4))
    streamed.train_batch(generate_ratings(20, 20, 100, 2, seed=1))
    streamed.offsets = {"ratings:0": 60, "ratings:1": 40}  # what the trainer agent records
    asyncio.run(write_current_snapshot(store, Settings(), streamed))
    version = streamed.version

    refused = CliRunner().invoke(main, ["train", str(data), "--out", store])
    assert refused.exit_code == 1
    assert refused.output.count("\n") == 1, refused.output
    assert f"current v{version} was trained by streaming" in refused.output
    assert "100 Kafka offsets" in refused.output and "--force" in refused.output

    skipped = run("train", str(data), "--out", store, "--skip-if-streamed")
    assert skipped.exit_code == 0 and "not replacing it (--skip-if-streamed)" in skipped.output

    async def current():
        async with store_from_url(store) as s:
            return await s.current()

    assert asyncio.run(current()) == version  # still the streamed model
    forced = run("train", str(data), "--epochs", "1", "--out", store, "--force")
    assert forced.exit_code == 0, forced.output
    assert asyncio.run(current()) > version


def test_train_rechecks_for_a_streamed_model_right_before_promoting(tmp_path, monkeypatch):
    """Streaming promotes a model while the offline job trains: the job must not roll it
    back (one clear line, exit 1), unless --force; --skip-if-streamed exits 0."""
    from app.commands import offline
    from app.settings import Settings
    from app.stores import write_current_snapshot
    from models.config import ModelConfig
    from models.synthetic import generate_ratings

    data = tmp_path / "r.csv"
    store = f"file://{tmp_path / 'store'}"
    assert (
        run("generate", str(data), "--users", "50", "--items", "40", "--ratings", "600").exit_code
        == 0
    )
    assert run("train", str(data), "--epochs", "1", "--out", store).exit_code == 0  # offline v1

    async def current():
        async with store_from_url(store) as s:
            return await s.current()

    evaluate = offline._evaluate
    promoted = []

    def trainer_promotes_meanwhile(*args):  # after training, before the snapshot is written
        streamed = IncrementalModel(ModelConfig(no_components=4))
        streamed.train_batch(generate_ratings(20, 20, 100, 2, seed=1))
        streamed.offsets = {"ratings:0": 70}
        asyncio.run(write_current_snapshot(store, Settings(), streamed))
        promoted.append(streamed.version)
        return evaluate(*args)

    monkeypatch.setattr(offline, "_evaluate", trainer_promotes_meanwhile)
    refused = CliRunner().invoke(main, ["train", str(data), "--epochs", "1", "--out", store])
    assert refused.exit_code == 1, refused.output
    assert refused.stdout == ""  # no report of a promotion that did not happen
    (line,) = [x for x in refused.stderr.splitlines() if "streaming" in x]
    assert f"current v{promoted[-1]} was trained by streaming" in line
    assert "70 Kafka offsets" in line and "--force" in line
    assert asyncio.run(current()) == promoted[-1]  # the streamed model is still current

    async def latest():
        async with store_from_url(store) as s:
            return await s.latest()

    assert asyncio.run(latest()) == promoted[-1]  # and nothing was written after it

    # --force promotes over the model streamed meanwhile; it is offline and current then.
    forced = run("train", str(data), "--epochs", "1", "--out", store, "--force", "--json")
    assert forced.exit_code == 0, forced.output
    offline_version = json.loads(forced.stdout)["snapshot"]["version"]
    assert asyncio.run(current()) == offline_version > promoted[-1]

    skipped = CliRunner().invoke(
        main, ["train", str(data), "--epochs", "1", "--out", store, "--skip-if-streamed"]
    )
    assert skipped.exit_code == 0, skipped.output
    assert len(promoted) == 3  # it trained: the first check passed, the second one held
    assert f"current v{promoted[-1]} was trained by streaming" in skipped.stdout
    assert "not replacing it (--skip-if-streamed)" in skipped.stdout
    assert asyncio.run(current()) == promoted[-1]


def test_operator_announcements_are_signed_and_unsigned_snapshots_refused(tmp_path):
    """``streamrec models promote/rollback`` sign their announcement with the model key,
    and refuse to announce a snapshot scorers would refuse."""
    from app.commands.store import _announcement
    from models.config import ModelConfig
    from models.snapshot import sign_manifest
    from models.synthetic import generate_ratings
    from models.wire import ModelUpdate

    keys = model_keys(load_settings())
    model = IncrementalModel(ModelConfig(no_components=4))
    model.train_batch(generate_ratings(20, 20, 100, 2, seed=1))

    async def announce() -> tuple[ModelUpdate, str]:
        async with store_from_url(f"file://{tmp_path / 'store'}") as store:
            model.version = 1
            payload, manifest = model.to_bytes()
            await store.put(1, payload, sign_manifest(manifest, keys))
            model.version = 2
            payload, manifest = model.to_bytes()
            await store.put(2, payload, manifest)  # unsigned (an old store's)
            update = await _announcement(store, 1, "rollback")
            try:
                await _announcement(store, 2, "promote")
            except click.ClickException as exc:
                return update, exc.message
            return update, ""

    update, refused = asyncio.run(announce())
    ModelUpdate.parse(update.encode()[1]).check(keys)
    assert update.reason == "rollback"
    assert "untrusted snapshot (unsigned)" in refused and "scorers would refuse it" in refused


def test_rollback_to_an_untrusted_snapshot_leaves_the_pointer_where_it_was(tmp_path):
    """The target is checked before the pointer moves: rolling back onto an unsigned (or
    forged) snapshot is one ``Error:`` line, and scorers restarting later still load the
    trusted current one."""
    from models.config import ModelConfig
    from models.snapshot import sign_manifest
    from models.synthetic import generate_ratings

    keys = model_keys(load_settings())
    model = IncrementalModel(ModelConfig(no_components=4))
    model.train_batch(generate_ratings(20, 20, 100, 2, seed=1))
    url = f"file://{tmp_path / 'store'}"

    async def setup() -> None:
        async with store_from_url(url) as store:
            model.version = 1
            payload, manifest = model.to_bytes()
            await store.put(1, payload, manifest)  # unsigned (an old store's, or forged)
            model.version = 2
            payload, manifest = model.to_bytes()
            await store.put(2, payload, sign_manifest(manifest, keys))
            await store.promote(1)
            await store.promote(2)

    async def current() -> int | None:
        async with store_from_url(url) as store:
            return await store.current()

    asyncio.run(setup())
    refused = CliRunner().invoke(main, ["models", "rollback", "--store", url])
    assert refused.exit_code == 1, refused.output
    assert "Error: v1: untrusted snapshot (unsigned)" in refused.output
    assert asyncio.run(current()) == 2


@pytest.mark.parametrize(
    ("env", "line", "said"),
    [
        ({}, "u3,i1,5,{ms}", "1 rating(s) stamped in the future; the first, r.csv:4"),
        ({"STREAMREC_MAX_USERS": "2"}, "u3,i1,5,880000000", "past the model's bounds"),
        ({"STREAMREC_MAX_ITEMS": "2"}, "u1,i3,5,880000000", "STREAMREC_MAX_ITEMS"),
    ],
)
def test_offline_training_applies_the_trainers_time_and_bounds(
    tmp_path, monkeypatch, env, line, said
):
    """``streamrec train`` judges a file by the streaming trainer's rules: a timestamp in
    milliseconds or past the model's bounds refuses the file, one line, nothing written."""
    from app.settings import get_settings

    data = tmp_path / "r.csv"
    rows = ["user,item,rating,ts", "u1,i1,5,880000000", "u2,i2,4,880000100"]
    data.write_text("\n".join([*rows, line.format(ms=int(time.time() * 1000))]) + "\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        store = tmp_path / "store"
        refused = CliRunner().invoke(main, ["train", str(data), "--out", f"file://{store}"])
    finally:
        get_settings.cache_clear()
    assert refused.exit_code == 1, refused.output
    assert refused.output.startswith("Error: ") and refused.output.count("\n") == 1
    assert said in refused.output, refused.output
    assert not store.exists() or not any(store.rglob("manifest*"))
