"""The Dockerfile: hadolint clean, and the rules hadolint does not know about."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.deploy.checks import ROOT, check_dockerfile, parse_dockerfile, run_hadolint


def test_hadolint_finds_nothing() -> None:
    assert run_hadolint(ROOT) == []


def test_dockerfile_rules_hold() -> None:
    assert check_dockerfile(ROOT) == []


def test_hadolint_bites(deploy_copy: Path) -> None:
    dockerfile = deploy_copy / "Dockerfile"
    dockerfile.write_text(
        dockerfile.read_text().replace("FROM ${PYTHON_IMAGE} AS runtime", "FROM python:latest")
    )
    assert any("DL3007" in p for p in run_hadolint(deploy_copy))


def _replace(old: str, new: str):
    def edit(text: str) -> str:
        assert old in text, f"test is stale: {old!r} not in Dockerfile"
        return text.replace(old, new)

    return edit


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_replace("USER 10001:10001", ""), "no USER"),
        (_replace("USER 10001:10001", "USER root"), "numeric non-zero uid"),
        (_replace("ENV LIGHTFM_NO_CFLAGS=1 \\", "ENV \\"), "without LIGHTFM_NO_CFLAGS=1"),
        (
            _replace("install -y --no-install-recommends libgomp1", "install -y gcc libgomp1"),
            "installs compiler 'gcc'",
        ),
        (_replace('CMD ["python", "-c",', 'CMD ["curl", "-fsS", "/health/", "-c",'), "curl/wget"),
        (
            _replace('ENTRYPOINT ["streamrec"]', 'ENTRYPOINT ["python", "-m", "app.cli"]'),
            'exec form ["streamrec"]',
        ),
        (_replace("COPY storage ./storage", ""), "storage (needed by pyproject.toml)"),
        (_replace("RUN pip wheel --wheel-dir /wheels .", "RUN true"), "no builder stage"),
        (lambda text: text[text.index("FROM ${PYTHON_IMAGE} AS runtime") :], "multi-stage"),
    ],
)
def test_dockerfile_rules_bite(deploy_copy: Path, edit, expected: str) -> None:
    dockerfile = deploy_copy / "Dockerfile"
    dockerfile.write_text(edit(dockerfile.read_text()))
    problems = check_dockerfile(deploy_copy)
    assert any(expected in p for p in problems), problems


def test_dockerignore_must_not_hide_sources(deploy_copy: Path) -> None:
    with (deploy_copy / ".dockerignore").open("a") as f:
        f.write("models\n")
    assert any("COPY models is in .dockerignore" in p for p in check_dockerfile(deploy_copy))


def _healthcheck_command() -> list[str]:
    stages = parse_dockerfile((ROOT / "Dockerfile").read_text())
    args = stages[-1].all("HEALTHCHECK")[0].args
    return json.loads(args[args.index("CMD") + 3 :])


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_follows_health_status(status: int, healthy: bool) -> None:
    """Run the image's HEALTHCHECK command itself against a stand-in /health/ view."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/health/" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        command = _healthcheck_command()
        assert command[0] == "python"
        env = {**os.environ, "STREAMREC_WEB_PORT": str(server.server_address[1])}
        proc = subprocess.run([sys.executable, *command[1:]], env=env, timeout=30, check=False)
        assert (proc.returncode == 0) is healthy
    finally:
        server.shutdown()
        server.server_close()
