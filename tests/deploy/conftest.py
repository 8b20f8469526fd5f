"""Fixtures for the offline deployment checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.checks import ROOT, copy_deploy_files


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    """A throwaway copy of the deployment files, for tests that break them on purpose."""
    return copy_deploy_files(ROOT, tmp_path)
