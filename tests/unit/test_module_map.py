"""docs/architecture.md's module map names every module once, and only modules that exist.

The map is the newcomer's door (issue 22): one row per module, the one idea it holds. A
module added, moved or removed without its row fails here, so the map cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from app.settings import PROJECT_ROOT

MAP_HEADING = "## Module map"
PACKAGES = ("models", "storage", "agents", "app", "dev/devtools")
ROW = re.compile(r"^\|\s*`([\w/]+\.py)`\s*\|\s*(.+?)\s*\|\s*$")


def mapped(doc: Path) -> dict[str, str]:
    """Each module path the map's table names, with the idea its row gives."""
    text = doc.read_text()
    section = text.split(MAP_HEADING, 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            assert match[1] not in rows, f"{match[1]} has two rows"
            rows[match[1]] = match[2]
    return rows


def modules(root: Path) -> set[str]:
    """Every module of the project's packages (a package's ``__init__`` excluded)."""
    return {
        str(path.relative_to(root))
        for package in PACKAGES
        if (root / package).is_dir()
        for path in (root / package).rglob("*.py")
        if path.name != "__init__.py"
    }


def test_the_map_names_every_module_and_only_those() -> None:
    rows = mapped(PROJECT_ROOT / "docs" / "architecture.md")
    have = modules(PROJECT_ROOT)
    assert sorted(have - rows.keys()) == [], "modules missing from the map"
    assert sorted(rows.keys() - have) == [], "rows naming no module"
    assert all(idea and idea != "—" for idea in rows.values())


def test_a_missing_row_is_found(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a.py").write_text("")
    (tmp_path / "models" / "b.py").write_text("")
    doc = tmp_path / "arch.md"
    doc.write_text(f"{MAP_HEADING}\n\n| module | idea |\n|---|---|\n| `models/a.py` | A |\n")
    assert modules(tmp_path) - mapped(doc).keys() == {"models/b.py"}
