"""The dev tools stay out of production: the wheel has no ``devtools``, the CLI offers
``dev`` and ``demo`` only where the dev tools are installed, and production settings have
no dev fields and no default S3 secret (an S3 store without one is one ``Error:`` line)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

from app.settings import PROJECT_ROOT, Settings, SettingsError, load_settings
from devtools.settings import DEV_S3_SECRET_KEY, DevSettings

DEV_FIELDS = {
    "dev_dir",
    "dev_cache",
    "dev_kafka_secure",
    "kafka_port",
    "kafka_controller_port",
    "s3_port",
    "kafka_version",
}
HIDE_PLUGINS = "import importlib.metadata as m; m.entry_points = lambda **_: ()\n"


def test_the_wheel_packages_no_dev_tools() -> None:
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = set(find_packages(PROJECT_ROOT, include=include))
    assert {"app", "agents", "models", "storage"} <= packages
    assert not {p for p in packages if p.split(".")[0] in {"devtools", "dev", "tests"}}


def _cli(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )


def _commands(help_text: str) -> set[str]:
    listed = help_text.split("Commands:", 1)[1].splitlines()
    return {line.split()[0] for line in listed if line.startswith("  ") and line.split()}


@pytest.mark.parametrize("installed", [True, False])
def test_dev_and_demo_are_offered_only_with_the_dev_tools(installed: bool) -> None:
    hide = "" if installed else HIDE_PLUGINS
    done = _cli(hide + "from app.cli import main; main(['--help'])")
    assert done.returncode == 0, done.stderr
    commands = _commands(done.stdout)
    assert {"worker", "train", "models"} <= commands
    assert ({"dev", "demo"} <= commands) == installed
    assert ({"dev", "demo"} & commands == set()) == (not installed)


def test_production_settings_have_no_dev_fields_and_no_default_s3_secret() -> None:
    assert not DEV_FIELDS & set(Settings.model_fields)
    assert Settings.model_fields["s3_secret_key"].default is None
    assert set(DevSettings.model_fields) >= DEV_FIELDS


def test_the_dev_settings_read_the_same_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMREC_S3_SECRET_KEY", raising=False)
    monkeypatch.setenv("STREAMREC_KAFKA_PORT", "12392")
    monkeypatch.setenv("STREAMREC_S3_PORT", "12333")
    monkeypatch.setenv("STREAMREC_DEV_KAFKA_SECURE", "true")
    monkeypatch.setenv("STREAMREC_DEV_DIR", "/tmp/elsewhere")
    dev = DevSettings()
    assert (dev.kafka_port, dev.s3_port, dev.dev_kafka_secure) == (12392, 12333, True)
    assert dev.dev_dir == Path("/tmp/elsewhere")
    assert dev.s3_secret_key.get_secret_value() == DEV_S3_SECRET_KEY
    assert Settings().s3_secret_key is None
    monkeypatch.setenv("STREAMREC_S3_SECRET_KEY", "from-the-env")
    assert DevSettings().s3_secret_key.get_secret_value() == "from-the-env"


def test_an_s3_store_needs_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMREC_S3_SECRET_KEY", raising=False)
    monkeypatch.delenv("STREAMREC_S3_ACCESS_KEY", raising=False)
    with pytest.raises(SettingsError, match="needs STREAMREC_S3_SECRET_KEY"):
        load_settings(model_store="s3://bucket/models")
    assert load_settings(model_store="file://var/m").s3_secret_key is None  # files need none
    chain = load_settings(model_store="s3://bucket/models", s3_access_key="")  # botocore's chain
    assert chain.s3_secret_key is None
    assert load_settings(model_store="s3://b/m", s3_secret_key="given").s3_secret_key is not None


@pytest.mark.parametrize(
    ("argv", "store"),
    [
        (["worker", "--role", "scorer"], "s3://bucket/models"),  # the configured store
        (["models", "list", "--store", "s3://bucket/models"], "file://var/m"),  # a given one
    ],
    ids=["worker", "models-list"],
)
def test_a_command_on_s3_without_the_secret_is_one_error_line(argv: list[str], store: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "STREAMREC_S3_SECRET_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *argv],
        env={**env, "STREAMREC_MODEL_STORE": store},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ") and "needs STREAMREC_S3_SECRET_KEY" in lines[0]
