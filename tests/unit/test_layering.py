"""The four layers import one way: models → storage → agents → app (docs/architecture.md).

Every import of every module is read from its source (``import`` and ``from`` statements,
wherever they stand: inside functions and ``TYPE_CHECKING`` blocks too, since a type-only
import is still a dependency) and checked against the table below. None of them imports the
dev tools (``devtools``, dev/pyproject.toml), which the wheel does not contain."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from app.settings import PROJECT_ROOT

#: What each layer may never import: project layers above it, and the frameworks that
#: belong to another layer (the table in docs/architecture.md).
FORBIDDEN: dict[str, frozenset[str]] = {
    "models": frozenset(
        {
            "storage",
            "agents",
            "app",
            "asyncio",
            "faust",
            "mode",
            "aiokafka",
            "aiobotocore",
            "botocore",
            "aiohttp",
            "devtools",
        }
    ),
    "storage": frozenset({"models", "agents", "app", "faust", "mode", "aiokafka", "devtools"}),
    "agents": frozenset({"app", "faust", "mode", "devtools"}),
    "app": frozenset({"devtools"}),  # the CLI finds the dev commands by entry point
}


def imported_roots(path: Path, package: str) -> set[str]:
    """The top-level names ``path`` imports (a relative import resolves inside ``package``)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(package if node.level else (node.module or "").split(".")[0])
    return roots


def violations(root: Path = PROJECT_ROOT) -> list[str]:
    """``path imports [names]`` for every module that breaks the table."""
    found = []
    for package, banned in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            bad = imported_roots(path, package) & banned
            if bad:
                found.append(f"{path.relative_to(root)} imports {sorted(bad)}")
    return found


def test_every_layer_imports_only_downwards() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("package", "source"),
    [
        ("models", "import asyncio\n"),
        ("models", "from storage.errors import StorageError\n"),
        ("storage", "def f():\n    from models.snapshot import SnapshotError\n"),
        ("agents", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import faust\n"),
        ("agents", "from app.settings import Settings\n"),
        ("app", "def f():\n    from devtools.workers import free_port\n"),
    ],
)
def test_a_violation_is_found(tmp_path: Path, package: str, source: str) -> None:
    for name in FORBIDDEN:
        (tmp_path / name).mkdir()
    (tmp_path / package / "bad.py").write_text(source)
    assert [v.split(" imports")[0] for v in violations(tmp_path)] == [f"{package}/bad.py"]
