"""``streamrec train`` and ``streamrec generate``: the offline bootstrap job and synthetic data.

This is the only place ratings *files* are opened (models/ parses text lines): the encoding
is UTF-8, falling back to latin-1 (MovieLens 100K's own files are latin-1).
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import itertools
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar

import click

from models.datasets import FORMATS

if TYPE_CHECKING:
    from app.settings import Settings
    from models.config import ModelConfig
    from models.evaluation import Metrics
    from models.events import Rating
    from models.incremental import IncrementalModel

_CHUNK = 1 << 20
T = TypeVar("T")


def file_encoding(path: Path) -> str:
    """``utf-8`` if the whole file decodes as UTF-8, else ``latin-1`` (which never fails)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def read_ratings(path: Path, fmt: str = "auto") -> list[Rating]:
    """Every rating in ``path``; a bad line or an unreadable file is a one-line ClickException."""
    from models.datasets import DatasetError, iter_ratings

    if fmt != "auto" and fmt not in FORMATS:
        raise click.BadParameter(
            f"{fmt!r} is not one of auto, {', '.join(FORMATS)}", param_hint="--format"
        )
    return read_text_file(
        path, lambda f: list(iter_ratings(f, fmt, source=path.name)), DatasetError
    )


def read_text_file(
    path: Path, parse: Callable[[TextIO], list[T]], errors: type[ValueError]
) -> list[T]:
    """``parse`` the file (UTF-8, else latin-1); ``errors`` and I/O errors are one clear line."""
    try:
        with path.open(encoding=file_encoding(path), newline="") as f:
            return parse(f)
    except errors as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None


@click.command()
@click.argument("ratings_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", *FORMATS]),
    default="auto",
    show_default=True,
    help="File format (auto detects it from the first line).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Default: STREAMREC_CONSOLIDATE_EPOCHS (a bootstrap is the service's consolidation).",
)
@click.option(
    "--loss",
    type=click.Choice(["warp", "bpr", "logistic", "warp-kos"]),
    default=None,
    help="Default: STREAMREC_LOSS.",
)
@click.option("--components", type=click.IntRange(min=1), default=None, help="Latent dimensions.")
@click.option(
    "--threshold",
    type=click.FloatRange(0, 5),
    default=None,
    help="Ratings >= this are positives (0: all). Default: STREAMREC_POSITIVE_THRESHOLD.",
)
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option(
    "--holdout-per-user",
    type=click.IntRange(min=0),
    default=None,
    help="Evaluate on each user's N latest ratings (default 10; 0: no evaluation).",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="Evaluate on a random fraction of the ratings instead.",
)
@click.option("--k", "k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--out", "store_url", default=None, help="Store URL. Default: STREAMREC_MODEL_STORE.")
@click.option(
    "--force",
    is_flag=True,
    help="Promote even over a current model that streaming trained (rolls it back).",
)
@click.option(
    "--skip-if-streamed",
    is_flag=True,
    help="If streaming already trained the current model, say so and exit 0 without "
    "training (for bootstrap jobs that run on every deploy).",
)
def train(
    ratings_file: Path,
    fmt: str,
    epochs: int | None,
    loss: str | None,
    components: int | None,
    threshold: float | None,
    learning_rate: float | None,
    holdout_per_user: int | None,
    test_fraction: float | None,
    k: int,
    as_json: bool,
    store_url: str | None,
    force: bool,
    skip_if_streamed: bool,
) -> None:
    """Train a model offline from a ratings file, evaluate it and write a snapshot.

    The held-out ratings are not trained (the snapshot is the model that was evaluated);
    use --holdout-per-user 0 to train on everything. The snapshot becomes the store's
    current version, so workers start from it. If the current model was trained by
    streaming (it covers Kafka offsets), training refuses to replace it unless --force.
    """
    from app.progress import progress_bar
    from app.settings import get_settings
    from app.stores import StreamedModelError
    from models.evaluation import split_latest_per_user, split_random
    from models.incremental import IncrementalModel

    if holdout_per_user is not None and test_fraction is not None:
        raise click.UsageError("use either --holdout-per-user or --test-fraction, not both")
    settings = get_settings()
    url = store_url or settings.model_store
    config = _model_config(settings, loss, components, threshold, learning_rate)
    if force and skip_if_streamed:
        raise click.UsageError("use either --force or --skip-if-streamed, not both")
    # Fail before training, not after: the store must answer and (unless --force) its
    # current model must not be a streamed one. Checked again right before the promotion.
    streamed = asyncio.run(_check_store(url, settings, inspect=not force))
    if streamed is not None:
        _refuse_streamed(streamed, skip_if_streamed)
    epochs = config.consolidate_epochs if epochs is None else epochs

    ratings = read_ratings(ratings_file, fmt)
    if not ratings:
        raise click.ClickException(f"{ratings_file}: no ratings")
    _check_like_the_trainer(ratings_file, ratings, settings)
    if test_fraction is not None:
        train_set, test_set = split_random(ratings, test_fraction, seed=config.seed)
        split = {"kind": "random", "test_fraction": test_fraction}
    else:
        holdout = 10 if holdout_per_user is None else holdout_per_user
        train_set, test_set = split_latest_per_user(ratings, holdout)
        split = {"kind": "latest_per_user", "holdout_per_user": holdout}

    model = IncrementalModel(config)
    started = time.perf_counter()
    with progress_bar(total=epochs, unit="epoch", desc="training") as bar:
        model.train_batch(train_set, epochs=epochs, on_epoch=lambda _: bar.update())
    seconds = time.perf_counter() - started

    metrics = _evaluate(model, train_set, test_set, config.positive_threshold, k)
    try:
        uri = asyncio.run(_write_snapshot(url, settings, model, over_streamed=force))
    except StreamedModelError as exc:  # streaming promoted a model while this one trained
        _refuse_streamed(f"model store {url}: {exc}", skip_if_streamed)
    report = {
        "file": str(ratings_file),
        "ratings": len(ratings),
        "users": model.n_users,
        "items": model.n_items,
        "split": {**split, "train": len(train_set), "test": len(test_set)},
        "config": config.to_dict(),
        "epochs": epochs,
        "train_seconds": round(seconds, 3),
        "metrics": {name: m.as_dict() for name, m in metrics.items()},
        "snapshot": {"uri": uri, "version": model.version},
    }
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
    else:
        click.echo(_table(report, metrics, k))


def _check_like_the_trainer(path: Path, ratings: list[Rating], settings: Settings) -> None:
    """The streaming trainer's rules, applied to the whole file before any training: a
    rating stamped past now + STREAMREC_MAX_FUTURE_SKEW_SECONDS (a timestamp in ms or µs)
    or a model past STREAMREC_MAX_USERS/_ITEMS refuses the file with one line naming the
    first offender and how many there are (nothing is written)."""
    from models.bounds import Capacity, over_capacity
    from models.events import EventInFuture, check_event_time

    now, skew = time.time(), settings.max_future_skew_seconds
    future: list[tuple[Rating, str]] = []
    for rating in ratings:
        try:
            check_event_time(rating.ts, now, skew)
        except EventInFuture as exc:
            future.append((rating, str(exc)))
    if future:
        first, reason = future[0]
        raise click.ClickException(
            f"{path}: {len(future)} rating(s) stamped in the future; the first, "
            f"{first.event_id}: {reason}"
        )
    capacity = Capacity(settings.max_users, settings.max_items)
    refused = over_capacity(ratings, (), (), 0, 0, capacity)
    if refused:
        index, reason = refused[0]
        raise click.ClickException(
            f"{path}: {len(refused)} rating(s) past the model's bounds; the first, "
            f"{ratings[index].event_id}: {reason}"
        )


def _model_config(
    settings: Settings,
    loss: str | None,
    components: int | None,
    threshold: float | None,
    learning_rate: float | None,
) -> ModelConfig:
    """The service's model config (:func:`app.settings.model_config_of`), with the options."""
    from app.settings import model_config_of

    try:
        return model_config_of(
            settings,
            loss=loss,
            no_components=components,
            learning_rate=learning_rate,
            positive_threshold=threshold,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _evaluate(
    model: IncrementalModel,
    train_set: list[Rating],
    test_set: list[Rating],
    threshold: float,
    k: int,
) -> dict[str, Metrics]:
    from models.evaluation import evaluate, positives_by_user

    if not test_set:
        return {}
    view = model.view()
    test = positives_by_user(test_set, threshold)
    seen = positives_by_user(train_set)  # every rated item counts as seen, as in serving
    return {
        "model": evaluate(view, test, train=seen, k=k, exclude_train=True),
        "model_including_train": evaluate(view, test, train=seen, k=k, exclude_train=False),
        "popularity": evaluate(view, test, train=seen, k=k, exclude_train=True, popularity=True),
    }


async def _check_store(url: str, settings: Settings, *, inspect: bool = True) -> str | None:
    """Check the store answers; say so if its current model was trained by streaming
    (:func:`app.stores.streamed_model`)."""
    from app.stores import store_from_url, streamed_model
    from storage.errors import StorageError

    try:
        async with store_from_url(url, settings) as store:
            await store.current()
            streamed = await streamed_model(store) if inspect else None
    except StorageError as exc:
        raise click.ClickException(f"model store {url}: {exc}") from None
    return None if streamed is None else f"model store {url}: {streamed}"


def _refuse_streamed(streamed: str, skip_if_streamed: bool) -> NoReturn:
    """Not promoting over a streamed model: one clear line and exit 1, or with
    --skip-if-streamed a note and exit 0 (bootstrap jobs run on every deploy)."""
    if skip_if_streamed:
        click.echo(f"{streamed}; not replacing it (--skip-if-streamed)")
        click.get_current_context().exit(0)
    raise click.ClickException(f"{streamed}; not replacing it (use --force to roll it back)")


async def _write_snapshot(
    url: str, settings: Settings, model: IncrementalModel, *, over_streamed: bool
) -> str:
    """:func:`app.stores.write_current_snapshot`, with storage errors as one clear line."""
    from app.stores import write_current_snapshot
    from storage.errors import StorageError

    try:
        return await write_current_snapshot(url, settings, model, over_streamed=over_streamed)
    except StorageError as exc:
        raise click.ClickException(f"writing the snapshot to {url}: {exc}") from None


def _table(report: dict[str, Any], metrics: dict[str, Metrics], k: int) -> str:
    config, split = report["config"], report["split"]
    lines = [
        f"{report['file']}: {report['ratings']} ratings, {report['users']} users, "
        f"{report['items']} items",
        f"split {split['kind']}: {split['train']} train / {split['test']} test; "
        f"{config['loss']}, {config['no_components']} components, positives >= "
        f"{config['positive_threshold']:g}, {report['epochs']} epochs in "
        f"{report['train_seconds']:.1f} s",
    ]
    if metrics:
        lines.append("")
        lines.append(
            f"{'ranking':<34}{'P@' + str(k):>8}{'R@' + str(k):>8}{'NDCG@' + str(k):>9}"
            f"{'HR@' + str(k):>8}{'AUC':>8}{'users':>7}"
        )
        labels = {
            "model": "model, train items excluded",
            "model_including_train": "model, train items included",
            "popularity": "popularity, train items excluded",
        }
        for name, m in metrics.items():
            lines.append(
                f"{labels[name]:<34}{m.precision:>8.4f}{m.recall:>8.4f}{m.ndcg:>9.4f}"
                f"{m.hit_rate:>8.4f}{m.auc:>8.4f}{m.users:>7}"
            )
    else:
        lines.append("no test ratings: nothing evaluated")
    lines.append("")
    lines.append(
        f"snapshot v{report['snapshot']['version']} -> {report['snapshot']['uri']} (current)"
    )
    return "\n".join(lines)


def catalog_path(ratings: Path) -> Path:
    """Where ``streamrec generate`` writes the catalog of the ratings file ``ratings``."""
    return ratings.with_name(f"{ratings.stem}.items.csv")


def _write_csv(path: Path, rows: Iterable[list[str]]) -> None:
    try:
        with path.open("w", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None


@click.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--users", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--items", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--ratings", type=click.IntRange(min=1), default=50_000, show_default=True)
@click.option("--clusters", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--catalog",
    "catalog",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the items' titles and genres (default: OUT's name + .items.csv).",
)
@click.option("--force", is_flag=True, help="Overwrite OUT (and the catalog) if they exist.")
def generate(
    out: Path,
    users: int,
    items: int,
    ratings: int,
    clusters: int,
    seed: int,
    catalog: Path | None,
    force: bool,
) -> None:
    """Write synthetic power-law ratings as CSV (user,item,rating,timestamp) and their catalog.

    Items are named by genre (g3-m17), so a demo can show recommendations following a
    user into a new genre. The ratings file is readable by `streamrec train` and `streamrec
    publish`; the catalog (item,title,genres) by `streamrec catalog load`.
    """
    from models.catalog import catalog_rows
    from models.synthetic import generate_catalog, generate_ratings

    catalog = catalog or catalog_path(out)
    for path in (out, catalog):
        if path.exists() and not force:
            raise click.ClickException(f"{path} exists (use --force to overwrite)")
    try:
        events = generate_ratings(users, items, ratings, clusters, seed)
        entries = generate_catalog(items, clusters, seed)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _write_csv(
        out,
        itertools.chain(
            [["user", "item", "rating", "timestamp"]],
            ([e.user, e.item, f"{e.rating:g}", f"{e.ts:.0f}"] for e in events),
        ),
    )
    _write_csv(catalog, catalog_rows(entries))
    click.echo(
        f"wrote {len(events)} ratings ({users} users, {items} items, {clusters} genres) to {out}"
        f" and their catalog to {catalog}"
    )
