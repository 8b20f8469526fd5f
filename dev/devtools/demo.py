"""``streamrec demo``: the whole service, end to end, on one machine, in about a minute.

Kafka is the real broker (started with the dev launcher if it is not running); the model
store is the embedded default, local files. Nothing here is simulated: the demo runs the
same ``streamrec worker`` processes a deployment runs and talks to them over Kafka. A dev
tool: only a dev checkout (dev/pyproject.toml's entry point) offers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click

from app.settings import Settings
from devtools.settings import PROJECT_ROOT, load_dev_settings


def _say(text: str = "") -> None:
    click.echo(text)


def _genre(item: str) -> str:
    return item.split("-", 1)[0]  # synthetic ids: g3-m17 is movie 17 of genre 3


def _genre_mix(reply: dict[str, Any]) -> str:
    counts = Counter(_genre(e["item"]) for e in reply["items"])
    return ", ".join(f"{g}:{n}" for g, n in counts.most_common())


def _show(title: str, reply: dict[str, Any]) -> None:
    items = " ".join(e["item"] for e in reply["items"])
    pad = " " * len(title)
    _say(f"  {title}: [{reply['source']}, model v{reply['model_version']}] {items}")
    _say(f"  {pad}  genres: {_genre_mix(reply)}")
    named = [e["title"] for e in reply["items"][:3] if "title" in e]
    if named:
        _say(f"  {pad}  top: {' · '.join(named)}")


def _shown(path: Path) -> Path:
    """``path`` as the user can reach it from where they ran the demo."""
    here = Path.cwd()
    return path.relative_to(here) if path.is_relative_to(here) else path


def closing_hints(home: Path, logs: Path, model_store: str, *, keep: bool) -> list[str]:
    """What the demo prints once its workers have stopped: only what is still there (the
    files under ``home``: ``logs`` and the model store), never the workers' URLs, which are
    gone."""
    lines = [
        f"Done; the workers have stopped. Everything the demo wrote is under {_shown(home)}/:",
        f"   streamrec models list --store {model_store}   (its snapshots)",
        f"   less {_shown(logs / 'scorer.log')}   (the workers' logs)",
    ]
    if not keep:
        lines += [
            "   Run `streamrec demo --keep` (or `bash dev/demo.sh --keep`) to keep the workers",
            "   and open the live dashboard.",
        ]
    return lines


@click.command()
@click.option("--users", type=click.IntRange(min=10), default=600, show_default=True)
@click.option("--items", type=click.IntRange(min=20), default=300, show_default=True)
@click.option("--ratings", type=click.IntRange(min=1000), default=30_000, show_default=True)
@click.option("--genres", type=click.IntRange(min=2), default=6, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=1),
    default=3000,
    show_default=True,
    help="Events per second when streaming the live part of the data.",
)
@click.option(
    "--keep", is_flag=True, help="Keep the workers running until Ctrl-C and show the dashboard URL."
)
@click.option("--seed", type=int, default=1, show_default=True)
def demo(
    users: int, items: int, ratings: int, genres: int, rate: float, keep: bool, seed: int
) -> None:
    """Run the end-to-end demo on the embedded default (local model store).

    Starts Kafka if needed, bootstraps a model offline from synthetic ratings, starts a
    trainer and a scorer worker, streams more ratings through Kafka and shows
    recommendations changing as a user discovers a new genre.
    """
    from app.kafka import kafka_client_options
    from devtools import DevServiceError, KafkaBroker, metadata_ready

    base = load_dev_settings()
    broker = None
    if not metadata_ready(kafka_client_options(base)):
        _say(f"Kafka is not running at {base.kafka_bootstrap}: starting the dev broker ...")
        broker = KafkaBroker(base)
        try:
            broker.start(wait=True)
        except DevServiceError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        _run(base, users, items, ratings, genres, rate, keep, seed)
    finally:
        if broker is not None:
            _say("Stopping the dev broker the demo started ...")
            broker.stop()


def _run(
    base: Settings,
    users: int,
    items: int,
    ratings: int,
    genres: int,
    rate: float,
    keep: bool,
    seed: int,
) -> None:
    from app.commands.catalog import publish_catalog
    from app.commands.service import publish_ratings, request_recommendation
    from app.progress import progress_bar
    from app.settings import model_config_of
    from app.stores import write_current_snapshot
    from app.topics import ensure_topics
    from devtools.workers import WorkerProcess, free_port, isolated_env, settings_for
    from models.events import Rating
    from models.incremental import IncrementalModel
    from models.synthetic import generate_catalog, generate_ratings

    run = time.strftime("%Y%m%d-%H%M%S")
    home = PROJECT_ROOT / "var" / "demo" / run
    env = isolated_env(
        f"demo-{run}",
        base,
        model_store=f"file://{home / 'models'}",
        datadir=home / "faust",
        session_timeout=10,  # default batching and snapshots: deltas keep the scorers fresh
        epochs_per_batch=5,
    )
    settings = settings_for(env)
    asyncio.run(ensure_topics(settings))

    _say(
        f"1. Synthetic data: {ratings} ratings by {users} users of {items} movies in "
        f"{genres} genres (power-law popularity)."
    )
    try:
        data = generate_ratings(users, items, ratings, genres, seed=seed)
        catalog = generate_catalog(items, genres, seed=seed)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    asyncio.run(publish_catalog(settings, catalog))
    _say(f"   Their titles and genres are on the {settings.items_topic!r} topic (the catalog).")
    cut = int(len(data) * 0.8)
    history, live = data[:cut], data[cut:]

    _say(f"2. Offline bootstrap: training on the first {len(history)} ratings ...")
    model = IncrementalModel(model_config_of(settings))
    epochs = 10
    with progress_bar(total=epochs, unit="epoch", desc="   training") as bar:
        model.train_batch(history, epochs=epochs, on_epoch=lambda _: bar.update())
    uri = asyncio.run(write_current_snapshot(settings.model_store, settings, model))
    _say(f"   snapshot v{model.version} -> {uri}")

    _say("3. Starting a trainer and a scorer worker (real Faust processes) ...")
    logs = home / "logs"
    trainer = WorkerProcess("trainer", free_port(), logs / "trainer.log", env)
    scorer = WorkerProcess("scorer", free_port(), logs / "scorer.log", env)
    workers = [trainer.start(), scorer.start()]
    try:
        for worker in workers:
            worker.wait_ready(timeout=120)
        _say(f"   trainer {trainer.url}/   scorer {scorer.url}/   (logs: {logs})")

        _say(f"4. Streaming the other {len(live)} ratings through Kafka at {rate:g}/s ...")
        asyncio.run(publish_ratings(settings, live, rate=rate, progress=True))

        def ask(user: str, k: int = 8) -> dict[str, Any]:
            return asyncio.run(request_recommendation(settings, user, k, wait=20)).to_dict()

        per_user = Counter(r.user for r in data)
        user = min(per_user, key=lambda u: (abs(per_user[u] - 15), u))  # a light user
        before = ask(user)
        rated = Counter(_genre(r.item) for r in data if r.user == user)
        new_genre = (
            next(f"g{g}" for g in range(genres) if rated[f"g{g}"] == 0)
            if any(rated[f"g{g}"] == 0 for g in range(genres))
            else min(rated, key=rated.get)
        )
        _say(
            f"5. User {user} has rated genres {dict(rated.most_common())}; "
            f"now they binge {new_genre}:"
        )
        _show("before", before)
        seen = {r.item for r in data if r.user == user}
        binge = [
            it
            for it, _ in Counter(r.item for r in data if _genre(r.item) == new_genre).most_common()
            if it not in seen
        ][:12]
        now = time.time()
        events = [
            Rating(f"demo-{run}-{user}-{i}", user, it, 5.0, now + i) for i, it in enumerate(binge)
        ]
        asyncio.run(publish_ratings(settings, events))
        after = before
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = ask(user)
            if sum(_genre(e["item"]) == new_genre for e in after["items"]) > sum(
                _genre(e["item"]) == new_genre for e in before["items"]
            ):
                break
            time.sleep(0.5)
        _show("after ", after)

        newcomer = f"newcomer-{run}"
        _say(f"6. A brand-new user {newcomer} (no restart needed):")
        _show("cold  ", ask(newcomer))
        asyncio.run(
            publish_ratings(
                settings,
                [
                    Rating(f"demo-{run}-{newcomer}-{i}", newcomer, it, 5.0, now + 100 + i)
                    for i, it in enumerate(binge[:6])
                ],
            )
        )
        deadline = time.monotonic() + 30
        warm = ask(newcomer)
        while warm["source"] != "model" and time.monotonic() < deadline:
            time.sleep(0.5)
            warm = ask(newcomer)
        _show("warm  ", warm)

        _, info = trainer.get("/model/")
        _say(
            f"7. Trainer: model v{info.get('version')}, {info.get('trained_events')} events "
            f"trained, prequential hit-rate@10 {info.get('prequential_hit_rate', 0):.3f}"
        )
        if keep:
            _say(f"8. Dashboard: {scorer.url}/?user={user}   (the trainer's: {trainer.url}/)")
            _say(
                f"   Try: curl {scorer.url}/users/{user}/   curl {scorer.url}/items/popular/   "
                f"curl {scorer.url}/metrics"
            )
            if scorer.token is not None:
                _say(
                    "   The views need STREAMREC_WEB_TOKEN: add #token=<it> to the dashboard URL "
                    "and -H 'Authorization: Bearer <it>' to curl."
                )
            _say("   Workers keep running; Ctrl-C stops them.")
            with contextlib.suppress(KeyboardInterrupt):
                while all(w.running() for w in workers):
                    time.sleep(1)
    finally:
        for worker in workers:
            worker.stop()
    for line in closing_hints(home, logs, settings.model_store, keep=keep):
        _say(line)
