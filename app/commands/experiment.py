"""``streamrec experiment start|status|stop``: experiments on the compacted experiments
topic, signed with the model key (docs/experiments.md). A bad definition, an unknown
name or an unusable Kafka or store is one ``Error:`` line and exit status 1."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from models.experiment import METHODS, Experiment, InvalidExperiment, Variant


def _settings() -> Any:
    from app.settings import get_settings

    return get_settings()


def _read(settings: Any) -> tuple[Any, dict[str, Any]]:
    """The experiments and their newest results, read from the topics."""
    from agents.experiment_registry import read_all
    from agents.experiment_results import read_results
    from app.commands.service import run_kafka
    from app.kafka import kafka_client_options
    from app.settings import model_keys

    keys = model_keys(settings)
    options = kafka_client_options(settings)

    async def both() -> tuple[Any, dict[str, Any]]:
        registry = await read_all(options, settings.experiments_topic, keys)
        results = await read_results(options, settings.experiment_results_topic, keys)
        return registry, results

    return run_kafka(settings, both())


def _publish(settings: Any, experiment: Experiment) -> None:
    from aiokafka import AIOKafkaProducer

    from agents.experiment_registry import encode_signed
    from app.commands.service import run_kafka, start_client
    from app.kafka import kafka_client_options
    from app.settings import model_keys

    key, value = encode_signed(experiment, model_keys(settings))

    async def send() -> None:
        producer = AIOKafkaProducer(**kafka_client_options(settings), acks="all")
        await start_client(producer)
        try:
            await producer.send_and_wait(settings.experiments_topic, key=key, value=value)
        finally:
            await producer.stop()

    run_kafka(settings, send())


def _ensure_topics(settings: Any) -> None:
    from app.commands.service import run_kafka
    from app.topics import TopicMismatch, ensure_topics, topic_specs

    names = {
        settings.experiments_topic,
        settings.experiment_results_topic,
        settings.impressions_topic,
    }
    specs = [s for s in topic_specs(settings) if s.name in names]
    try:
        run_kafka(settings, ensure_topics(settings, specs))
    except TopicMismatch as exc:
        raise click.ClickException(str(exc)) from None


def _check_version(version: int) -> None:
    """Refuse a stored version scorers would refuse (missing, corrupt, unsigned)."""
    from app.commands.store import _run
    from app.settings import model_keys
    from models.snapshot import SnapshotError, check_signature

    async def action(store: Any) -> None:
        _, manifest = await store.get(version)
        try:
            check_signature(manifest, model_keys(_settings()))
        except SnapshotError as exc:
            raise click.ClickException(f"v{version}: {exc}; scorers would refuse it") from None

    _run(None, action)


def _variant_file(path: Path) -> Variant:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise click.ClickException(f"{path}: not a JSON variant: {exc}") from None
    try:
        return Variant.from_dict(obj, "candidate")
    except InvalidExperiment as exc:
        raise click.ClickException(f"{path}: {exc.reason}") from None


@click.group()
def experiment() -> None:
    """Start, watch and stop experiments on live traffic (docs/experiments.md)."""


@experiment.command()
@click.argument("name")
@click.option(
    "--candidate",
    "version",
    type=click.IntRange(min=0),
    default=None,
    help="The candidate is this stored model version (frozen).",
)
@click.option(
    "--config",
    "config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='A JSON file with the candidate variant: {"model": VERSION or LINEAGE, '
    '"blend_weight": W}.',
)
@click.option(
    "--blend-weight",
    type=float,
    default=None,
    help="The candidate serves with this item-kNN blend weight (a serving parameter).",
)
@click.option("--method", type=click.Choice(METHODS), default="ab", show_default=True)
@click.option("--share", type=float, default=0.1, show_default=True, help="Users in it, (0, 1].")
def start(
    name: str,
    version: int | None,
    config: Path | None,
    blend_weight: float | None,
    method: str,
    share: float,
) -> None:
    """Start experiment NAME: the served model (control) against a candidate."""
    if version is not None and config is not None:
        raise click.ClickException("give --candidate or --config, not both")
    if config is not None:
        candidate = _variant_file(config)
        if blend_weight is not None:
            candidate = Variant(candidate.model, blend_weight)
    elif version is not None or blend_weight is not None:
        try:
            candidate = Variant(version, blend_weight)
        except InvalidExperiment as exc:
            raise click.ClickException(exc.reason) from None
    else:
        raise click.ClickException("a candidate is needed: --candidate, --config or --blend-weight")
    try:
        exp = Experiment(name, Variant(), candidate, method, share, time.time())  # type: ignore[arg-type]
    except InvalidExperiment as exc:
        raise click.ClickException(f"not an experiment: {exc.reason}") from None
    if isinstance(candidate.model, int):
        _check_version(candidate.model)
    settings = _settings()
    _ensure_topics(settings)
    registry, _ = _read(settings)
    known = registry.get(name)
    if known is not None and known.running:
        raise click.ClickException(f"experiment {name!r} is already running; stop it first")
    _publish(settings, exp)
    shown = json.dumps(candidate.to_dict())
    click.echo(f"started {name}: {method}, share {exp.share:g}, candidate {shown}")


@experiment.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def status(name: str | None, as_json: bool) -> None:
    """Show every experiment (or NAME): definition, per-variant hit-rate, the guardrail."""
    from agents.experiment_results import summary

    settings = _settings()
    registry, results = _read(settings)
    experiments = registry.all()
    if name is not None:
        experiments = [e for e in experiments if e.name == name]
        if not experiments:
            raise click.ClickException(f"no experiment named {name!r}")
    docs = [summary(e, results.get(e.name)) for e in experiments]
    if as_json:
        click.echo(json.dumps({"experiments": docs}, indent=2))
        return
    if not docs:
        click.echo("no experiments")
        return
    for doc in docs:
        line = f"{doc['name']}: {doc['status']} ({doc['method']}, share {doc['share']:g}, "
        line += f"candidate {json.dumps(doc['candidate'])})"
        click.echo(line)
        if doc.get("reason"):
            click.echo(f"  reason: {doc['reason']}")
        for team, v in doc.get("variants", {}).items():
            low, high = v["interval"]
            click.echo(
                f"  {team:<9} {v['hits']}/{v['impressions']} hit-rate {v['hit_rate']:.4f} "
                f"[{low:.4f}, {high:.4f}] coverage {v['coverage']:.3f}"
            )
        if "verdict" in doc:
            mark = "significant: " if doc["significant"] else ""
            click.echo(f"  {mark}{doc['verdict']}")


@experiment.command()
@click.argument("name")
@click.option(
    "--promote",
    is_flag=True,
    help="Also make the candidate what is served: a stored version is promoted and announced.",
)
def stop(name: str, promote: bool) -> None:
    """Stop experiment NAME (with --promote, promote its candidate)."""
    settings = _settings()
    registry, _ = _read(settings)
    exp = registry.get(name)
    if exp is None:
        raise click.ClickException(f"no experiment named {name!r}")
    if not exp.running and not (promote and exp.status != "promoted"):
        raise click.ClickException(f"experiment {name!r} is already {exp.status}")
    if promote:
        _promote(exp)
    stopped = exp.with_status("promoted" if promote else "stopped", "stopped by the operator")
    _publish(settings, stopped)
    click.echo(f"{stopped.status} {name}")


def _promote(exp: Experiment) -> None:
    from app.commands.store import _announce, _announcement, _run

    candidate = exp.candidate
    if isinstance(candidate.model, int):
        version = candidate.model

        async def action(store: Any) -> Any:
            update = await _announcement(store, version, "promote")
            await store.promote(version)
            return update

        _announce(_run(None, action))
    elif isinstance(candidate.model, str):
        raise click.ClickException(
            f"candidate lineage {candidate.model!r}: promote its newest snapshot with "
            "'streamrec models promote VERSION'"
        )
    if candidate.blend_weight is not None:
        click.echo(
            f"set STREAMREC_BLEND_WEIGHT={candidate.blend_weight:g} on the workers to keep "
            "the candidate's blend weight"
        )
