"""The service through the dev broker's SASL_SSL listener, with secrets nobody else knows.

One trainer and one scorer run as real worker processes that speak only SASL_SSL
(SCRAM-SHA-512, a user created for this run through Kafka's admin API, the CA made by
``dev up --secure``), with snapshots on a private SeaweedFS whose secret key is made for
this run too. The CLI publishes ratings and asks for a recommendation the same way; a
wrong password or an untrusted certificate is one clear line and exit 1. Finally every log,
web view, CLI output and ``dev status --json`` is searched for the two secrets.

The tests share the deployment and run in file order; the last one reads what all left.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.settings import PROJECT_ROOT, Settings
from app.topics import ensure_topics
from devtools import KafkaBroker, SeaweedServer
from devtools.settings import DevSettings
from devtools.workers import WorkerProcess, free_port, isolated_env, settings_for
from tests.integration.service.conftest import create_bucket, wait_for
from tests.integration.storage.conftest import free_port_block

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(240)]

USERS, ITEMS = 30, 12
# streamrec's views (the dashboard at / included), and Faust's own (table routes, stats)
VIEWS = ("/health/", "/model/", "/metrics", "/users/u3/", "/items/popular/?k=5", "/items/i1/",
         "/", "/dashboard/series/", "/router/", "/stats/")  # fmt: skip


@dataclass
class SecureDeployment:
    env: dict[str, str]
    settings: Settings
    secrets: dict[str, str]  # what must never be shown, by name
    trainer: WorkerProcess
    scorer: WorkerProcess
    s3: SeaweedServer
    broker: KafkaBroker
    shown: dict[str, str] = field(default_factory=dict)  # everything a user saw, by source

    def streamrec(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env={**os.environ, **self.env, **env},
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        where = f"streamrec {' '.join(args)} (with {', '.join(env)})"  # names, not values
        self.shown[where] = done.stdout + done.stderr
        return done


@pytest.fixture(scope="module")
def deployment(
    secure_broker: KafkaBroker, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureDeployment]:
    run = uuid.uuid4().hex[:10]
    tmp = tmp_path_factory.mktemp(f"secure-{run}")
    sasl_user, sasl_password = f"e2e-{run}", f"sasl-{secrets.token_hex(12)}"
    s3_secret = f"s3-{secrets.token_hex(12)}"
    web_token = f"web-{secrets.token_urlsafe(18)}"  # WorkerProcess.get sends it
    s3 = SeaweedServer(
        DevSettings(
            dev_dir=tmp / "dev",
            s3_port=free_port_block(),
            s3_access_key=f"sec-{run}",
            s3_secret_key=s3_secret,
        )
    )
    s3.start(wait=False)  # boots while Kafka's admin tool creates the user
    secure_broker.add_scram_user(sasl_user, sasl_password)  # through the admin API
    s3.wait_ready(timeout=60)
    base = Settings(
        **{
            **secure_broker.client_settings(
                settings, username=sasl_user, password=sasl_password
            ).model_dump(),
            "s3_endpoint": s3.endpoint,
            "s3_access_key": s3.access_key,
            "s3_secret_key": s3_secret,
        }
    )
    bucket = f"secure-{run}"
    asyncio.run(create_bucket(base, bucket))
    env = isolated_env(
        f"secure-{run}",
        base,
        model_store=f"s3://{bucket}/{run}",
        datadir=tmp / "faust",
        s3_endpoint=s3.endpoint,
        s3_access_key=s3.access_key,
        s3_secret_key=s3_secret,
        web_token=web_token,
        topic_partitions=2,
        batch_seconds=0.3,
        snapshot_every_seconds=1,
        snapshot_every_batches=1,
        no_components=8,
        session_timeout=8,
        log_level="info",
    )
    worker_settings = settings_for(env)
    asyncio.run(ensure_topics(worker_settings))  # over SASL_SSL too
    trainer = WorkerProcess("trainer", free_port(), tmp / "trainer.log", env).start()
    scorer = WorkerProcess("scorer", free_port(), tmp / "scorer.log", env).start()
    deployment = SecureDeployment(
        env,
        worker_settings,
        {"SASL password": sasl_password, "S3 secret key": s3_secret, "web token": web_token},
        trainer,
        scorer,
        s3,
        secure_broker,
    )
    try:
        trainer.wait_ready(model=False)
        scorer.wait_ready(model=False)
        yield deployment
    finally:
        for worker in (trainer, scorer):  # both shut down at once
            if worker.running():
                worker.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        trainer.stop()
        scorer.stop()
        s3.stop(timeout=10)


def test_workers_and_cli_serve_through_sasl_ssl(deployment: SecureDeployment, tmp_path: Path):
    settings = deployment.settings
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_bootstrap == deployment.broker.secure_bootstrap
    csv = tmp_path / "ratings.csv"
    rows = [
        f"u{u},i{(u + j) % ITEMS},{5 if j < 4 else 1},{1000 + u * ITEMS + j}"
        for u in range(USERS)
        for j in range(6)
    ]
    csv.write_text("user,item,rating,timestamp\n" + "\n".join(rows) + "\n")
    published = deployment.streamrec("publish", str(csv))
    assert published.returncode == 0, published.stderr
    assert f"published {len(rows)} ratings" in published.stdout
    wait_for(
        lambda: deployment.scorer.get("/health/")[0] == 200,
        timeout=60,
        what="the scorer to load the model trained over SASL_SSL",
    )
    reply = deployment.streamrec("recommend", "u3", "-k", "3", "--json")
    assert reply.returncode == 0, reply.stderr
    body = json.loads(reply.stdout)
    assert body["user"] == "u3" and body["source"] == "model" and len(body["items"]) == 3


def test_wrong_password_is_one_clear_line_and_exit_1(deployment: SecureDeployment):
    wrong = f"wrong-{secrets.token_hex(8)}"
    deployment.secrets["wrong SASL password"] = wrong
    for args in (("recommend", "u3"), ("worker", "--role", "scorer")):
        done = deployment.streamrec(*args, STREAMREC_KAFKA_SASL_PASSWORD=wrong)
        assert done.returncode == 1, done.stderr
        assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
        assert "refused the login" in done.stderr and "SaslAuthenticationFailed" in done.stderr
        assert "Traceback" not in done.stderr


def test_untrusted_broker_certificate_is_one_clear_line(deployment: SecureDeployment):
    done = deployment.streamrec("recommend", "u3", STREAMREC_KAFKA_SSL_CA_FILE="")  # system CAs
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr
    assert "STREAMREC_KAFKA_SSL_CA_FILE" in done.stderr


def test_secrets_never_appear_in_logs_views_or_outputs(deployment: SecureDeployment):
    shown = dict(deployment.shown)
    for worker in (deployment.trainer, deployment.scorer):
        for path in VIEWS:
            status, body = worker.get(path)
            assert status in (200, 404, 503), (worker.role, path, status)  # 404: trainer /users/
            shown[f"{worker.role} {path}"] = body if isinstance(body, str) else json.dumps(body)
    deployment.streamrec("dev", "status", "--json")
    deployment.streamrec("models", "list")
    deployment.streamrec("worker", STREAMREC_TOPIC_PARTITIONS="0")  # an invalid setting
    deployment.streamrec(  # refused by S3 (403), at once
        "models",
        "list",
        STREAMREC_S3_SECRET_KEY="wrong-s3-secret-key",
        STREAMREC_S3_MAX_ATTEMPTS="1",
    )
    shown.update(deployment.shown)
    logs = [
        deployment.trainer.log_path,
        deployment.scorer.log_path,
        deployment.s3.logfile,
        deployment.broker.logfile,
    ]
    for log in logs:
        shown[str(log)] = log.read_text(errors="replace")
    assert len(shown) >= 20
    for worker in (deployment.trainer, deployment.scorer):  # the search reads real SASL logs
        user = deployment.settings.kafka_sasl_username
        assert f"Authenticated as {user} via SCRAM-SHA-512" in shown[str(worker.log_path)]
    leaks = [
        f"{name} in {where}"
        for where, text in shown.items()
        for name, secret in deployment.secrets.items()
        if secret in text
    ]
    assert not leaks, leaks
    assert "wrong-s3-secret-key" not in "".join(deployment.shown.values())
