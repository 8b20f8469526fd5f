"""Scorers run single-threaded BLAS everywhere; bootstrap jobs never roll back a streamed model."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from devtools.workers import SCORER_ENV, WorkerProcess
from tests.deploy.checks import ROOT


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _k8s(name: str) -> dict:
    return yaml.safe_load((ROOT / "k8s" / name).read_text())


def test_compose_and_k8s_scorers_run_single_threaded_blas():
    services = _compose()["services"]
    scorers = [s for s in services.values() if "scorer" in (s.get("command") or [])]
    assert len(scorers) == 2
    for service in scorers:
        for key, value in SCORER_ENV.items():
            assert str(service["environment"].get(key)) == value
    container = _k8s("scorer.yaml")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert all(env.get(k) == v for k, v in SCORER_ENV.items())


def test_dev_scorers_get_the_scorer_env(tmp_path, monkeypatch):
    seen = {}

    class Recorder:
        def __init__(self, args, env, **kwargs):
            seen[args[-1]] = env

    monkeypatch.setattr("devtools.workers.subprocess.Popen", Recorder)
    for role in ("scorer", "trainer"):
        WorkerProcess(role, 1, tmp_path / f"{role}.log", {}).start()
    assert all(seen["scorer"].get(k) == v for k, v in SCORER_ENV.items())
    assert seen["trainer"].get("OPENBLAS_NUM_THREADS") == os.environ.get("OPENBLAS_NUM_THREADS")


def test_bootstrap_jobs_skip_when_streaming_trained_the_current_model():
    assert "--skip-if-streamed" in _compose()["services"]["bootstrap"]["command"]
    job = _k8s("bootstrap-job.yaml")["spec"]["template"]["spec"]["containers"][0]
    assert "--skip-if-streamed" in job["args"]


def test_compose_and_the_bootstrap_job_load_the_generated_catalog():
    from app.commands.offline import catalog_path

    catalog = str(catalog_path(Path("/data/ratings.csv")))
    assert _compose()["services"]["catalog"]["command"] == ["catalog", "load", catalog]
    pod = _k8s("bootstrap-job.yaml")["spec"]["template"]["spec"]
    loads = [c for c in pod["initContainers"] if c["args"][:2] == ["catalog", "load"]]
    assert [c["args"][2] for c in loads] == [catalog]
