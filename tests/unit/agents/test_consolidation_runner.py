"""The trainer's consolidation runner (:mod:`agents.consolidation`): its pure decisions, and
its thread, install and idle steps over a fake model (no asyncio needed)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import agents.consolidation as consolidation_module
from agents.consolidation import ConsolidationRunner, consolidation_action, keep_yielding


@pytest.mark.parametrize(
    ("running", "finished", "due", "action"),
    [
        (True, True, False, "install"),
        (True, True, True, "install"),  # the next one is cut after the install
        (True, False, False, "wait"),
        (True, False, True, "wait"),  # one at a time
        (False, False, True, "start"),
        (False, False, False, "none"),
    ],
)
def test_what_to_do_about_consolidations(
    running: bool, finished: bool, due: bool, action: str
) -> None:
    assert consolidation_action(running, finished, due) == action


@given(
    backlog=st.booleans(),
    stopping=st.booleans(),
    now=st.floats(allow_nan=False),
    deadline=st.floats(allow_nan=False),
)
def test_a_consolidation_yields_only_to_a_backlog_only_until_its_deadline(
    backlog: bool, stopping: bool, now: float, deadline: float
) -> None:
    waits = keep_yielding(backlog, stopping, now, deadline)
    assert waits == (backlog and not stopping and now < deadline)
    if waits:
        assert not keep_yielding(backlog, stopping, deadline, deadline)  # the bound holds


@dataclass
class FakeJob:
    """A consolidation that runs until ``release`` is set."""

    release: threading.Event = field(default_factory=threading.Event)
    fail: bool = False
    events: int = 100
    user_rows: int = 10  # what it held and trained (logged)
    item_rows: int = 20
    seconds: float = 0.1
    tail: list[Any] = field(default_factory=list)
    between_epochs: Any = None
    ran: bool = False

    def run(self) -> None:
        self.release.wait(10)
        if self.between_epochs is not None:
            self.between_epochs()
        self.ran = True
        if self.fail:
            raise RuntimeError("the retrain failed")


@dataclass
class FakeModel:
    """What the runner reads and calls of ``IncrementalModel``."""

    due: bool = False
    version: int = 7
    installed: list[FakeJob] = field(default_factory=list)
    cut: list[FakeJob] = field(default_factory=list)
    finite: bool = True

    def consolidation_due(self) -> bool:
        return self.due

    def install(self, job: FakeJob) -> bool:
        self.installed.append(job)
        return self.finite

    def take_consolidation(self) -> FakeJob | None:
        return self.cut.pop() if self.cut else None

    def cut_consolidation(self) -> FakeJob | None:
        if self.due:
            self.cut.append(FakeJob())
            self.due = False
        return self.take_consolidation()

    def view(self) -> str:
        return f"view v{self.version}"


def runner(model: FakeModel) -> ConsolidationRunner:
    async def on_end() -> None:  # no loop attached: never called
        raise AssertionError

    return ConsolidationRunner(model, on_end)  # type: ignore[arg-type]


def until(predicate: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_running_consolidation_is_installed_only_once_it_has_ended() -> None:
    model = FakeModel()
    run = runner(model)
    assert not run.ready() and run.action() == "none"
    job = FakeJob()
    model.cut.append(job)
    run.after_batch()  # the batch cut one: it runs in its own thread
    assert job.between_epochs == run.yield_to_batches
    assert run.action() == "wait" and not run.ready()
    assert not run.install() and model.installed == []  # a batch before it ends
    job.release.set()
    until(lambda: run.action() == "install")
    assert run.ready()
    assert run.install() and model.installed == [job]
    assert not run.install() and model.installed == [job]  # installed once


def test_idle_installs_a_new_version_then_cuts_and_starts_the_next_due() -> None:
    model = FakeModel()
    run = runner(model)
    assert run.idle() is None and model.version == 7  # nothing to do: no new version
    model.due = True
    assert run.ready() and run.action() == "start"
    assert run.idle() is None  # started, not installed
    assert run.action() == "wait"
    assert run._running is not None
    job = run._running[0]
    assert isinstance(job, FakeJob) and not model.cut
    job.release.set()
    until(lambda: run.action() == "install")
    assert run.idle() == "view v8" and model.version == 8  # a new state: a new version
    assert run.action() == "none"


def test_a_failed_or_non_finite_consolidation_leaves_the_model_as_it_was() -> None:
    model = FakeModel()
    run = runner(model)
    failing = FakeJob(fail=True)
    failing.release.set()
    run.start(failing)
    until(lambda: run.action() == "install")  # it ended (failed): the thread is done with it
    model.finite = False  # the model refuses it
    assert run.idle() is None and model.version == 7


def test_yielding_waits_for_a_backlog_at_most_the_pause_and_not_when_stopping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consolidation_module, "CONSOLIDATION_MAX_PAUSE", 0.2)
    run = runner(FakeModel())
    started = time.monotonic()
    run.yield_to_batches()
    assert time.monotonic() - started < 0.1  # no backlog
    run.backlog = True
    started = time.monotonic()
    run.yield_to_batches()
    assert 0.2 <= time.monotonic() - started < 2.0
    run.stopping = True
    started = time.monotonic()
    run.yield_to_batches()
    assert time.monotonic() - started < 0.1  # a shutdown does not wait for the backlog
