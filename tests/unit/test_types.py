"""The type checker holds every layer: ``mypy`` (strict; settings in pyproject.toml)
over ``models/``, ``storage/``, ``agents/`` and ``app/`` finds nothing (Faust's
untyped decorators allowed in ``app/``).

A renamed field of a typed record, an ``Any`` escaping a typed function or an unchecked
``None`` fails here, not in a user's hands."""

from __future__ import annotations

import pytest
from mypy import api

from app.settings import PROJECT_ROOT


def test_every_layer_type_checks_strictly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PROJECT_ROOT)  # the configured `files` are relative to the project
    stdout, stderr, status = api.run(["--config-file", "pyproject.toml"])
    assert status == 0, f"mypy found problems:\n{stdout}{stderr}"
    assert "no issues found in" in stdout
