"""Shared helpers of the benchmarks: where MovieLens lives, timing, plain-text tables."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from devtools.settings import use_dev_defaults

PROJECT_ROOT = Path(__file__).resolve().parents[1]
use_dev_defaults()  # the benchmarks run on the dev services: their S3 secret unless given


def data_dir() -> Path:
    """MovieLens lives outside the project (it may not be redistributed):
    ``$STREAMREC_DATA_DIR`` or ``../shared/data`` next to the project."""
    env = os.environ.get("STREAMREC_DATA_DIR")
    return Path(env) if env else (PROJECT_ROOT / ".." / "shared" / "data").resolve()


def require(path: Path) -> Path:
    """``path``, or exit with a clear reason if the data is not there."""
    if not path.is_file():
        sys.exit(f"skipped: {path} not found (MovieLens is not shipped; set STREAMREC_DATA_DIR)")
    return path


def compare(
    ours: Callable[[], Any], baseline: Callable[[], Any], *, number: int, repeat: int = 7
) -> tuple[float, float]:
    """Seconds per call of ``ours`` and ``baseline``: the best of ``repeat`` rounds of
    ``number`` calls, the two interleaved round by round so that load from other processes
    hits both alike (the best round is the least disturbed one, as in ``timeit``)."""
    ours()
    baseline()
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for i, fn in enumerate((ours, baseline)):
            start = time.perf_counter()
            for _ in range(number):
                fn()
            best[i] = min(best[i], (time.perf_counter() - start) / number)
    return best[0], best[1]


def machine() -> dict[str, Any]:
    """What the numbers were measured on (they are only comparable within one run)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "cpus": os.cpu_count(),
        "load_average_1m": load,
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
    }


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned first column, right-aligned others; floats with 4 decimals."""

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Figure:
    """One benchmark figure: ``value`` of ours beside a raw ``baseline`` measured in the same
    run, and their ratio checked against ``goal``.

    ``better`` says which way is good: ``"higher"`` (throughput; passes when
    ``ratio >= goal``) or ``"lower"`` (latency, memory; passes when ``ratio <= goal``).
    A figure that could not be measured has ``value=None`` and a ``note`` saying why.
    ``benchmarks.run_all`` collects the figures of every benchmark module's
    ``figures(quick: bool) -> list[Figure]``.
    """

    figure: str
    baseline: float | None
    value: float | None
    goal: float
    better: Literal["higher", "lower"] = "higher"
    unit: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.baseline in (None, 0):
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool:
        ratio = self.ratio
        if ratio is None:
            return False
        return ratio >= self.goal if self.better == "higher" else ratio <= self.goal

    def to_dict(self) -> dict[str, Any]:
        """The JSON object ``run_all --json`` prints for this figure."""
        ratio = self.ratio
        return {
            "figure": self.figure,
            "baseline": self.baseline,
            "value": self.value,
            "ratio": None if ratio is None else round(ratio, 4),
            "goal": f"{'>=' if self.better == 'higher' else '<='} {self.goal:g}",
            "pass": self.passed,
            "unit": self.unit,
            "note": self.note,
        }


@dataclass(frozen=True)
class Namespace:
    """Topics, consumer groups and a store that belong to one benchmark run alone."""

    prefix: str
    home: Path
    env: dict[str, str]

    @property
    def settings(self) -> Any:  # app.settings.Settings (benchmarks import app lazily)
        from devtools.workers import settings_for

        return settings_for(self.env)


def namespace(name: str, **overrides: Any) -> Namespace:
    """A fresh namespace on the dev services for benchmark ``name``: every streamrec topic
    (created here), consumer groups and a ``file://`` store under ``var/bench/<prefix>``.

    Each benchmark run gets its own, so runs never see each other's messages or snapshots.
    ``overrides`` are settings (``snapshot_every_seconds=5``) for the workers it starts.
    """
    import asyncio
    import uuid

    from app.settings import Settings
    from app.topics import ensure_topics
    from devtools.workers import isolated_env

    prefix = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    home = PROJECT_ROOT / "var" / "bench" / prefix
    env = isolated_env(
        prefix,
        Settings(),
        model_store=f"file://{home / 'models'}",
        datadir=home / "faust",
        **overrides,
    )
    ns = Namespace(prefix, home, env)
    asyncio.run(ensure_topics(ns.settings))
    return ns


def figures_table(found: Sequence[Figure]) -> str:
    """``found`` as a :func:`table`: figure, baseline, value, ratio, goal, pass."""
    return table(
        ["figure", "baseline", "value", "ratio", "goal", "pass"],
        [
            (
                f.figure,
                f.baseline,
                f.value,
                f.ratio,
                f.to_dict()["goal"],
                "yes" if f.passed else "NO",
            )
            for f in found
        ],
    )
