"""One exception base per layer (models.errors.ModelError, agents.errors.AgentError,
app.errors.AppError; storage.errors.StorageError), each with aiokafka's ``retriable`` flag,
and the builtins callers catch kept as second bases; and the one rule that decides whether a
snapshot read is refused for good or retried (agents.errors.is_refusal)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from agents.errors import AgentError, is_refusal
from agents.lease import LeaseLost
from app.errors import AppError
from app.settings import PROJECT_ROOT
from models.errors import ModelError, SnapshotError, UntrustedSnapshot
from models.events import InvalidEvent
from models.incremental import NonFiniteModel
from models.wire import Undecodable
from storage.errors import (
    AccessDenied,
    ConfigError,
    IntegrityError,
    SnapshotExists,
    SnapshotNotFound,
    StorageError,
    StoreUnavailable,
)

BASES = {"models": ModelError, "agents": AgentError, "app": AppError, "storage": StorageError}
NOT_IMPORTED = {"app.main"}  # creates topics on a broker when imported


def exception_classes(package: str) -> list[type[BaseException]]:
    """Every exception class defined in ``package``'s modules."""
    found = []
    for info in pkgutil.walk_packages([str(PROJECT_ROOT / package)], prefix=f"{package}."):
        if info.name in NOT_IMPORTED:
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == info.name:
                found.append(cls)
    return found


@pytest.mark.parametrize("package", sorted(BASES))
def test_every_exception_of_a_layer_derives_from_its_base(package: str) -> None:
    classes = exception_classes(package)
    assert BASES[package] in classes
    strays = [c.__qualname__ for c in classes if not issubclass(c, BASES[package])]
    assert not strays, f"{package}: not a {BASES[package].__name__}: {strays}"
    if package != "storage":  # storage's errors keep their own convention (no flag)
        assert all(isinstance(c.retriable, bool) for c in classes)


def test_the_builtins_callers_catch_are_kept() -> None:
    assert issubclass(InvalidEvent, ValueError) and issubclass(Undecodable, ValueError)
    assert issubclass(UntrustedSnapshot, SnapshotError) and issubclass(SnapshotError, ValueError)
    assert issubclass(NonFiniteModel, RuntimeError) and issubclass(LeaseLost, RuntimeError)
    assert LeaseLost.retriable and not ModelError.retriable and not AgentError.retriable


class _Retriable(ModelError):
    retriable = True


@pytest.mark.parametrize(
    ("exc", "refused"),
    [
        (SnapshotError("bad"), True),
        (UntrustedSnapshot("unsigned", "no signature"), True),
        (IntegrityError("bad bytes"), True),
        (SnapshotNotFound("gone"), True),
        (_Retriable("try again"), False),
        (StoreUnavailable("down"), False),
        (AccessDenied("403"), False),
        (ConfigError("bad url"), False),
        (SnapshotExists("v1"), False),
        (RuntimeError("a bug"), False),
        (ValueError("not a model error"), False),
    ],
)
def test_a_snapshot_is_refused_only_for_its_own_bytes(exc: BaseException, refused: bool) -> None:
    assert is_refusal(exc) is refused
