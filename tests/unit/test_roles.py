"""A worker's role is one typed value (:data:`app.settings.Role`): the setting, the CLI and
the app factory accept exactly its members, an unknown role is one clear line, and every role
builds an app whose web views read the worker's runtime from the app (no import cycle)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest
from click.testing import CliRunner
from hypothesis import assume, given
from hypothesis import strategies as st

from app.cli import main
from app.commands.service import worker
from app.runtime import Runtime
from app.service import create_app
from app.settings import PROJECT_ROOT, ROLES, Role, Settings, SettingsError, load_settings

VIEWS = {
    "/",
    "/static/{name}",
    "/dashboard/series/",
    "/health/",
    "/model/",
    "/items/popular/",
    "/items/{item_id}/",
    "/metrics",
    "/users/{user_id}/",
}


def test_one_definition_of_the_roles() -> None:
    assert ROLES == get_args(Role) == ("trainer", "scorer", "all")
    choice = next(p for p in worker.params if p.name == "role")
    assert tuple(choice.type.choices) == ROLES  # the CLI's --role
    assert Settings.model_fields["role"].annotation == Role


@given(st.text() | st.sampled_from(["boss", "Scorer", "trainer ", "all\n", "\udcff"]))
def test_an_unknown_role_is_one_clear_line(role: str) -> None:
    assume(role not in ROLES)
    with pytest.raises(SettingsError) as err:
        load_settings(role=role)
    message = str(err.value.message)
    assert message.startswith("invalid settings: STREAMREC_ROLE=") and "\n" not in message
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in role):  # a lone surrogate: not a string
        assert "Input should be 'trainer', 'scorer' or 'all'" in message
    if not role:
        return  # create_app(settings, role="") means the settings' role
    with pytest.raises(ValueError, match=r"unknown role .*; expected one of trainer, scorer, all"):
        create_app(Settings(), role=role)  # type: ignore[arg-type]  # as an untyped caller may


def test_an_unknown_role_from_the_environment_is_refused_by_the_cli(monkeypatch) -> None:
    monkeypatch.setenv("STREAMREC_ROLE", "boss")
    from app import settings

    settings.get_settings.cache_clear()
    try:
        done = CliRunner().invoke(main, ["worker", "--web-port", "1"])
    finally:
        settings.get_settings.cache_clear()
    assert done.exit_code == 1
    assert "STREAMREC_ROLE='boss'" in done.output and "Traceback" not in done.output


@pytest.mark.parametrize("role", ROLES)
def test_every_role_serves_every_view_from_its_runtime(tmp_path: Path, role: Role) -> None:
    app = create_app(Settings(datadir=tmp_path / "faust"), role=role)
    runtime = Runtime.of(app)
    assert runtime.role == role and (runtime.seen is None) == (role == "trainer")
    assert set(app.web.views) >= VIEWS
    for path in VIEWS:
        assert Runtime.of(app.web.views[path].app) is runtime


def test_an_app_without_a_runtime_is_a_clear_error(tmp_path: Path) -> None:
    app = create_app(Settings(datadir=tmp_path / "faust"), role="scorer")
    del app.streamrec
    with pytest.raises(RuntimeError, match="has no streamrec runtime"):
        Runtime.of(app)


def _module_imports(path: Path) -> set[str]:
    """The ``app.*`` modules ``path`` imports at module level, type-only imports included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("app"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("app")}
    return found


def test_the_web_views_do_not_import_the_factory() -> None:
    """app.web reads the runtime from the app; it never imports app.service (a cycle once)."""
    web = _module_imports(PROJECT_ROOT / "app" / "web.py")
    assert "app.service" not in web and not any(m.startswith("app.wiring") for m in web)
