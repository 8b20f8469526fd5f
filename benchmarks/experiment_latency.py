"""A lone request's latency through the running service with an experiment on (issue 20: at
most 1.2x): a trainer and a scorer (``streamrec worker`` processes) on the dev services,
request → reply over Kafka one at a time, with no experiment, then an ``interleave`` and an
``ab`` experiment (share 1, the candidate a stored version), then none again; each against
the no-experiment baseline of the same run.

    python -m benchmarks.experiment_latency [--requests 200] [--json]

``benchmarks.experiments`` measures the scorer's own share in-process (no Kafka): there an
interleaving doubles the product, since both views are scored; here that share is set
beside the transport a client waits for. Each setting also reports the CPU the trainer and
the scorer spent per request (from ``/proc``, Linux; None elsewhere): an experiment's
work outside the reply path (the impressions, the trainer's hit counter) competes for the
same cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import click

from app.commands.service import request_recommendation
from app.settings import Settings, model_config_of
from app.stores import write_current_snapshot
from benchmarks.common import machine, namespace
from benchmarks.service import round_trips
from devtools.workers import WorkerProcess, free_port
from models.incremental import IncrementalModel
from models.synthetic import generate_ratings

#: A tool, like benchmarks.service (no ``figures()``: run_all does not run it); its figures
#: are in docs/benchmarks.md ("Experiments on replayed traffic").
QUICK_SECONDS = 1
METHODS = ("interleave", "ab")


def _cli(env: dict[str, str], *argv: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "experiment", *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"experiment {' '.join(argv)}: {done.stderr.strip()}")


def _cpu_seconds(worker: WorkerProcess) -> float | None:
    """User + system CPU seconds of ``worker`` so far (None without ``/proc``)."""
    if worker.proc is None:
        return None
    try:
        with open(f"/proc/{worker.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_served(settings: Settings, users: list[str], name: str | None) -> None:
    """Until a reply says it is in experiment ``name`` (None: in none)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reply = asyncio.run(request_recommendation(settings, users[0], 10, wait=20))
        if reply.experiment == name:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the scorer never served experiment {name!r}")


def run(requests: int = 200) -> dict[str, Any]:
    key = f"bench-experiment-latency-{uuid.uuid4().hex}"
    ns = namespace("explat", snapshot_every_seconds=600, model_key=key)
    settings, env, home = ns.settings, ns.env, ns.home
    data = generate_ratings(2000, 2000, 20_000, 8, seed=3)
    users = sorted({r.user for r in data})
    for seed in (1, 2):  # v1 the candidate, v2 the served control
        model = IncrementalModel(model_config_of(settings, seed=seed))
        model.train_batch(data, epochs=5)
        asyncio.run(write_current_snapshot(settings.model_store, settings, model))
    workers = [
        WorkerProcess("trainer", free_port(), home / "trainer.log", env).start(),
        WorkerProcess("scorer", free_port(), home / "scorer.log", env).start(),
    ]
    p50: dict[str, list[float]] = {"none": [], **{m: [] for m in METHODS}}
    p99: dict[str, list[float]] = {k: [] for k in p50}
    cpu: dict[str, dict[str, list[float]]] = {w.role: {k: [] for k in p50} for w in workers}

    def measure(setting: str) -> None:
        before = {w.role: _cpu_seconds(w) for w in workers}
        got = asyncio.run(
            round_trips(
                settings,
                settings.requests_topic,
                settings.responses_topic,
                users,
                sequential=requests,
                pipelined=1,
            )
        )
        p50[setting].append(got["p50_ms"])
        p99[setting].append(got["p99_ms"])
        for w in workers:
            start, end = before[w.role], _cpu_seconds(w)
            if start is not None and end is not None:
                cpu[w.role][setting].append((end - start) / (requests + 1) * 1000)

    try:
        for w in workers:
            w.wait_ready(timeout=120)
        _wait_served(settings, users, None)
        measure("none")
        for method in METHODS:
            name = f"latency-{method}"
            _cli(env, "start", name, "--candidate", "1", "--method", method, "--share", "1")
            _wait_served(settings, users, name)
            measure(method)
            _cli(env, "stop", name)
            _wait_served(settings, users, None)
            measure("none")
    finally:
        for w in workers:
            w.stop()
    baseline = statistics.mean(p50["none"])
    return {
        "requests": requests,
        "p50_ms": {k: statistics.mean(v) for k, v in p50.items()},
        "p99_ms": {k: statistics.mean(v) for k, v in p99.items()},
        "p50_ratio": {m: statistics.mean(p50[m]) / baseline for m in METHODS},
        "baseline_runs_ms": p50["none"],
        "cpu_ms_per_request": {
            role: {k: statistics.mean(v) if v else None for k, v in by.items()}
            for role, by in cpu.items()
        },
        "machine": machine(),
    }


@click.command()
@click.option("--requests", default=200, show_default=True, help="One at a time, per setting.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def main(requests: int, as_json: bool) -> None:
    """A lone request's latency through the service with an experiment running."""
    report = run(requests)
    if as_json:
        click.echo(json.dumps(report))
        return
    for setting, ms in report["p50_ms"].items():
        ratio = report["p50_ratio"].get(setting, 1.0)
        cpu = ", ".join(
            f"{role} {by[setting]:.2f}"
            for role, by in report["cpu_ms_per_request"].items()
            if by[setting] is not None
        )
        click.echo(
            f"{setting:>10}: p50 {ms:.2f} ms, p99 {report['p99_ms'][setting]:.2f} ms, "
            f"p50 {ratio:.2f}x of none; CPU ms per request: {cpu or 'not measured'}"
        )


if __name__ == "__main__":
    main()
