"""benchmarks.run_all: one failing module never stops the run; the docs block is replaced."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from benchmarks import run_all
from benchmarks.common import Figure


@pytest.fixture
def fake_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("benchmarks.fake_bench")
    monkeypatch.setitem(sys.modules, "benchmarks.fake_bench", module)
    return module


def test_a_module_that_raises_yields_one_unmeasured_figure(fake_module: types.ModuleType) -> None:
    def figures(quick: bool) -> list[Figure]:
        raise RuntimeError("broker gone")

    fake_module.figures = figures  # type: ignore[attr-defined]
    (figure,) = run_all.collect("fake_bench", quick=True)
    assert figure.value is None and not figure.passed
    assert "RuntimeError: broker gone" in figure.note


def test_a_module_that_exits_is_caught_too(fake_module: types.ModuleType) -> None:
    def figures(quick: bool) -> list[Figure]:
        sys.exit("skipped: no MovieLens")

    fake_module.figures = figures  # type: ignore[attr-defined]
    (figure,) = run_all.collect("fake_bench", quick=True)
    assert "skipped: no MovieLens" in figure.note


def test_figures_come_back_from_the_child_process() -> None:
    # A module without figures() yields nothing; an unknown one a note, not a crash.
    assert run_all.run_module("common_missing_xyz", quick=True, timeout=60)[0].value is None


def test_every_benchmark_module_is_found() -> None:
    names = run_all.module_names()
    assert {"training", "scoring", "storage", "service", "quality", "trainer"} <= set(names)
    assert "run_all" not in names and "common" not in names
    # service is a tool (no figures: benchmarks.scorer owns the request figures): not run
    assert not run_all.has_figures("service") and run_all.has_figures("scorer")


def test_write_docs_replaces_only_the_results_block(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nintro\n")
    figures = [
        Figure("a", baseline=100.0, value=50.0, goal=0.25, unit="ev/s"),
        Figure("b: not measured", baseline=None, value=None, goal=0, note="timed out"),
    ]
    run_all.write_docs(run_all.markdown(figures, quick=True, seconds=12), docs)
    first = docs.read_text()
    assert first.startswith("# Benchmarks\n\nintro\n") and first.count(run_all.BEGIN) == 1
    assert "| a | 50 | 100 | ev/s | 0.5 | >= 0.25 | pass |" in first
    assert "- b: not measured: timed out" in first
    docs.write_text(first + "\n## After\n")
    run_all.write_docs(run_all.markdown(figures[:1], quick=False, seconds=1), docs)
    second = docs.read_text()
    assert second.count(run_all.BEGIN) == 1 and "timed out" not in second
    assert second.rstrip().endswith("## After")


def test_cheap_modules_run_first_each_in_a_share_of_the_budget() -> None:
    order = run_all.schedule(run_all.module_names())
    costs = [run_all.expected_seconds(n) for n in order]
    assert costs == sorted(costs) and order[-1] == "scorer"  # the slowest, QUICK_SECONDS = 130
    assert run_all.expected_seconds("no_such_module_hint") == run_all.DEFAULT_QUICK_SECONDS
    # Shares follow the expected times, and together they are exactly what is left.
    pending = ["training", "scorer"]
    shares = [run_all.share_of(n, pending, 270.0) for n in pending]
    assert shares[1] == 26 * shares[0] and sum(shares) == 270.0
