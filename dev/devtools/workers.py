"""Faust workers as real subprocesses: used by ``streamrec demo`` and the end-to-end tests.

Unlike the dev services these are children of the caller: they die with it (the caller
stops them), their output goes to a log file, and readiness is the ``/health/`` view.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from app.kafka import connection_env
from app.settings import Settings, read_web_token

SCORER_ENV = {"OPENBLAS_NUM_THREADS": "1"}
"""Scorers run single-threaded BLAS (docs/benchmarks.md): compose, k8s and dev workers alike."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(
    url: str, timeout: float = 5.0, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """GET ``url``; returns (status, decoded JSON or text). Connection errors raise OSError."""
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


@dataclass
class WorkerProcess:
    """One ``streamrec worker --role ROLE`` process with its own web port and log file."""

    role: str
    web_port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **(SCORER_ENV if self.role in ("scorer", "all") else {}),
            **self.env,
            "STREAMREC_WEB_PORT": str(self.web_port),
            "PYTHONUNBUFFERED": "1",  # a killed worker's log ends where the worker did
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", "--role", self.role],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def token(self) -> bytes | None:
        """The web token the worker runs with (its env over the caller's), or None."""
        env = {**os.environ, **self.env}
        token, file = env.get("STREAMREC_WEB_TOKEN"), env.get("STREAMREC_WEB_TOKEN_FILE")
        return read_web_token(SecretStr(token) if token else None, Path(file) if file else None)

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        """GET one of the worker's views, with its bearer token when it has one."""
        token = self.token
        auth = {} if token is None else {"Authorization": f"Bearer {token.decode()}"}
        return http_json(self.url + path, timeout=timeout, headers=auth)

    def wait_ready(self, timeout: float = 90.0, *, model: bool = True) -> None:
        """Wait until the web views answer (and ``/health/`` is 200 when ``model``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"{self.role} worker exited:\n{self.log_tail()}")
            try:
                status, _ = self.get("/health/", timeout=2)
                if status == 200 or (not model and status == 503):
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{self.role} worker not ready after {timeout:g}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Faust shuts down cleanly), then SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the worker's whole process group: a crash, nothing gets to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


TOPIC_FIELDS = (
    "ratings",
    "requests",
    "responses",
    "model_updates",
    "model_deltas",
    "model_requests",
    "ratings_dlq",
    "requests_dlq",
    "items",
    "experiments",
    "experiment_results",
    "impressions",
)


def isolated_env(
    prefix: str, base: Settings, *, model_store: str, datadir: Path, **overrides: str
) -> dict[str, str]:
    """Env vars for workers whose topics, consumer groups and store are theirs alone.

    The demo, the end-to-end tests and the benchmarks each run a deployment side by side
    with whatever else uses the broker; ``prefix`` keeps them apart.
    """
    env = {
        **connection_env(base),
        "STREAMREC_APP_ID": prefix,
        "STREAMREC_MODEL_STORE": model_store,
        "STREAMREC_DATADIR": str(datadir),
        **{
            f"STREAMREC_{name.upper()}_TOPIC": f"{prefix}-{getattr(base, name + '_topic')}"
            for name in TOPIC_FIELDS
        },
        # Clients' own reply topics: "<responses topic>-<name>" (tests, fault harness).
        "STREAMREC_REPLY_TOPIC_PREFIXES": f"{prefix}-{base.responses_topic}-",
    }
    env.update({f"STREAMREC_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


async def create_bucket(settings: Settings, bucket: str) -> None:
    """Create ``bucket`` at ``settings``' S3 endpoint: an isolated deployment's store of its
    own (the end-to-end tests, fault tests and benchmarks each make one per run)."""
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
    ) as s3:
        await s3.create_bucket(Bucket=bucket)


def isolated_s3_env(
    prefix: str, base: Settings, datadir: Path, **overrides: object
) -> dict[str, str]:
    """:func:`isolated_env` for a run ``<prefix>-<random id>`` with a bucket of its own
    (created here) as its model store: what an end-to-end test's deployment needs."""
    run = f"{prefix}-{uuid.uuid4().hex[:10]}"
    asyncio.run(create_bucket(base, run))
    return isolated_env(
        run, base, model_store=f"s3://{run}/models", datadir=datadir,
        **{k: str(v) for k, v in overrides.items()},
    )  # fmt: skip


def settings_for(env: dict[str, str]) -> Settings:
    """The Settings a worker started with ``env`` sees (ignoring the caller's own env)."""
    return Settings(**{k.removeprefix("STREAMREC_").lower(): v for k, v in env.items()})
