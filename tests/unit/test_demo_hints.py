"""The demo's closing hints (printed once its workers have stopped) name only what is still
reachable: its files and its model store, never the workers' URLs. The hints are run."""

import asyncio
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import main
from app.settings import Settings
from app.stores import write_current_snapshot
from devtools.demo import closing_hints
from models.config import ModelConfig
from models.incremental import IncrementalModel
from models.synthetic import generate_ratings


@pytest.fixture
def demo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """What a finished demo leaves: a model store with a snapshot, the workers' logs."""
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "var" / "demo" / "20261202-010203"
    (home / "logs").mkdir(parents=True)
    (home / "logs" / "scorer.log").write_text("Serving model v1\n")
    model = IncrementalModel(ModelConfig(no_components=4))
    model.train_batch(generate_ratings(20, 20, 100, 2, seed=1))
    asyncio.run(write_current_snapshot(f"file://{home / 'models'}", Settings(), model))
    return home


def test_without_keep_the_hints_name_only_what_is_still_there(demo_home: Path) -> None:
    store = f"file://{demo_home / 'models'}"
    hints = closing_hints(demo_home, demo_home / "logs", store, keep=False)
    text = "\n".join(hints)
    assert "http" not in text and "127.0.0.1" not in text and "localhost" not in text
    assert "var/demo/20261202-010203/" in hints[0] and Path("var/demo/20261202-010203").is_dir()
    commands = [shlex.split(line.split("   (")[0]) for line in hints[1:3]]
    assert [c[:2] for c in commands] == [["streamrec", "models"], ["less", commands[1][1]]]
    listed = CliRunner().invoke(main, commands[0][1:], catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines()[1].split()[:3] == ["*", "1", "complete"], listed.output
    assert Path(commands[1][1]).read_text() == "Serving model v1\n"  # relative to here
    assert "--keep" in text  # how to get the dashboard instead


def test_with_keep_there_is_no_advice_to_keep(demo_home: Path) -> None:
    hints = closing_hints(demo_home, demo_home / "logs", "file:///x", keep=True)
    assert "--keep" not in "\n".join(hints) and "http" not in "\n".join(hints)
