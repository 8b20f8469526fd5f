"""Every benchmark figure in one command.

    python -m benchmarks.run_all [--quick] [--json] [--only NAME ...] [--write-docs]

Collects the figures of every module in ``benchmarks/`` that defines
``figures(quick: bool) -> list[Figure]`` (:class:`benchmarks.common.Figure`). Each module
runs in a process of its own (a crash, a hang or a memory figure of one module never
touches another), against the dev services of the settings (``streamrec dev up``); the
modules that start workers use a fresh namespace of topics and store
(:func:`benchmarks.common.namespace`). A module that fails or runs out of time yields one
figure with ``value=None`` and a note saying why; the run goes on. Modules run cheapest
first (a module may say ``QUICK_SECONDS = 20``), each within a share of the time left in
proportion to what it expects, so one slow module times out alone instead of starving the
rest.

Prints a table (``--json``: one JSON object per figure, ``Figure.to_dict()``), and with
``--write-docs`` replaces the results block of docs/benchmarks.md with the table and the
machine description. ``--quick`` keeps the whole run under 8 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import pkgutil
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import benchmarks
from benchmarks.common import PROJECT_ROOT, Figure, machine, table

NOT_BENCHMARKS = frozenset({"common", "run_all"})
#: Seconds the whole run may take (quick / full); each module gets what is left, at most
#: its share below.
BUDGET = {True: 600.0, False: 3600.0}  # quick: the modules declare 585 s
MODULE_LIMIT = {True: 150.0, False: 1800.0}
DOCS = PROJECT_ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- run_all:begin -->", "<!-- run_all:end -->"


#: Seconds a module's quick figures are expected to take when it does not say
#: (``QUICK_SECONDS = ...`` at module level).
DEFAULT_QUICK_SECONDS = 60.0


def module_names() -> list[str]:
    """Every module of the ``benchmarks`` package except the helpers (figures or not)."""
    return sorted(
        m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name not in NOT_BENCHMARKS
    )


def expected_seconds(name: str) -> float:
    """The module's ``QUICK_SECONDS`` (read from its source: nothing is imported here)."""
    path = Path(benchmarks.__path__[0]) / f"{name}.py"
    if not path.is_file():
        return DEFAULT_QUICK_SECONDS
    found = re.search(r"^QUICK_SECONDS\s*=\s*([0-9.]+)", path.read_text(), re.M)
    return float(found.group(1)) if found else DEFAULT_QUICK_SECONDS


def has_figures(name: str) -> bool:
    """Whether the module defines ``figures()`` (read from its source, like
    :func:`expected_seconds`): a tool such as ``benchmarks.service`` is not run at all,
    where a child process would only time out importing it."""
    path = Path(benchmarks.__path__[0]) / f"{name}.py"
    return path.is_file() and re.search(r"^def figures\(", path.read_text(), re.M) is not None


def schedule(names: list[str]) -> list[str]:
    """Cheapest first: each module gets its share (:func:`share_of`) of what is left, so
    time a fast module leaves goes to the slower ones after it, and one slow module cannot
    starve all the others (it times out in its share, with a note saying so)."""
    return sorted(names, key=lambda n: (expected_seconds(n), n))


def share_of(name: str, pending: list[str], left: float) -> float:
    """``name``'s part of the ``left`` seconds: in proportion to its expected time among the
    ``pending`` modules (itself included), so a slow module is not cut to a fast one's share
    and time a module leaves unused goes to those after it."""
    expected = [expected_seconds(n) for n in pending]
    return left * expected_seconds(name) / max(sum(expected), 1e-9)


def failed(name: str, note: str) -> Figure:
    """The one figure a module that could not be measured yields."""
    return Figure(figure=f"{name}: not measured", baseline=None, value=None, goal=0, note=note)


def collect(name: str, quick: bool) -> list[Figure]:
    """Run ``benchmarks.<name>.figures(quick)`` in this process; never raises."""
    try:
        module = importlib.import_module(f"benchmarks.{name}")
        figures = getattr(module, "figures", None)
        if figures is None:
            return []
        return list(figures(quick))
    except (Exception, SystemExit) as exc:  # SystemExit: a benchmark's "skipped: ..." exit
        return [failed(name, f"{type(exc).__name__}: {exc}".strip()[:500])]


def end_session(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the child's whole session (its workers too), SIGKILL what is left after
    ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        if wait is None:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _session_alive(proc.pid):
            time.sleep(0.2)
        if not _session_alive(proc.pid):
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=5)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum} (the run's time budget)")


def _session_alive(sid: int) -> bool:
    try:
        os.killpg(sid, 0)
    except ProcessLookupError:
        return False
    return True


def run_module(name: str, quick: bool, timeout: float) -> list[Figure]:
    """``collect(name)`` in a child process with ``timeout``; its figures come back as JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        command = [sys.executable, "-m", "benchmarks.run_all", "--child", name, "--out", str(out)]
        if quick:
            command.append("--quick")
        # A session of its own, so that a timeout ends the module's worker subprocesses too
        # (subprocess.run's timeout would kill only the child and orphan its workers).
        proc = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            end_session(proc)
            return [failed(name, f"timed out after {timeout:.0f}s")]
        try:
            rows = json.loads(out.read_text())
        except (OSError, ValueError):
            tail = output.decode(errors="replace").strip().splitlines()[-3:]
            return [failed(name, f"exit code {proc.returncode}: {' | '.join(tail)}"[:500])]
    return [Figure(**row) for row in rows]


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def render(figures: list[Figure]) -> str:
    rows = []
    for f in figures:
        d = f.to_dict()
        rows.append(
            [
                f.figure,
                _cell(f.value),
                _cell(f.baseline),
                f.unit,
                _cell(f.ratio),
                d["goal"] if f.value is not None else "-",
                "pass" if f.passed else ("n/a" if f.value is None else "FAIL"),
            ]
        )
    return table(["figure", "ours", "baseline", "unit", "ratio", "goal", ""], rows)


def markdown(figures: list[Figure], quick: bool, seconds: float) -> str:
    """The results block of docs/benchmarks.md."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    m = machine()
    lines = [
        BEGIN,
        f"`python -m benchmarks.run_all{' --quick' if quick else ''} --write-docs`, {when}, "
        f"{seconds:.0f} s; machine: {m['cpus']} CPUs, load average (1 min) "
        f"{m['load_average_1m']:.2f} at the end, OpenBLAS threads {m['openblas_threads']}.",
        "",
        "| figure | ours | baseline | unit | ratio | goal | |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    notes = []
    for f in figures:
        d = f.to_dict()
        verdict = "pass" if f.passed else ("n/a" if f.value is None else "**fail**")
        lines.append(
            f"| {f.figure} | {_cell(f.value)} | {_cell(f.baseline)} | {f.unit} | "
            f"{_cell(f.ratio)} | {d['goal'] if f.value is not None else '-'} | {verdict} |"
        )
        if f.note:
            notes.append(f"- {f.figure}: {f.note}")
    lines += ["", *notes, END] if notes else [END]
    return "\n".join(lines)


def write_docs(block: str, path: Path = DOCS) -> None:
    """Replace the text between the run_all markers (or append a section with them)."""
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n## Latest results: `benchmarks/run_all.py`\n\n" + block
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every benchmark's figures.")
    parser.add_argument("--quick", action="store_true", help="Short variants (< 8 min in all).")
    parser.add_argument("--json", action="store_true", help="One JSON object per figure.")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="Only these modules.")
    parser.add_argument("--write-docs", action="store_true", help="Update docs/benchmarks.md.")
    parser.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # one module, in the process run_module started
        # A timeout's SIGTERM unwinds the module (its ``finally`` blocks stop its workers,
        # which run in sessions of their own) instead of killing it where it stands.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        figures = collect(args.child, args.quick)
        args.out.write_text(json.dumps([dataclasses.asdict(f) for f in figures]))
        return 0

    names = module_names()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"no benchmark module {', '.join(unknown)}; have {', '.join(names)}")
        names = [n for n in names if n in args.only]
    started = time.monotonic()
    figures: list[Figure] = []
    names = schedule([n for n in names if has_figures(n)])
    for done, name in enumerate(names):
        left = BUDGET[args.quick] - (time.monotonic() - started)
        if left < 5:
            figures.append(failed(name, "not run: the run's time budget was spent"))
            continue
        share = min(share_of(name, names[done:], left), MODULE_LIMIT[args.quick])
        t0 = time.monotonic()
        print(f"running benchmarks.{name} (at most {share:.0f}s) ...", file=sys.stderr, flush=True)
        got = run_module(name, args.quick, share)
        print(f"  {len(got)} figure(s) in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        figures += got
        if args.json:
            for f in got:
                print(json.dumps(f.to_dict()), flush=True)
    seconds = time.monotonic() - started
    if not args.json:
        print(render(figures))
        print(f"\n{len(figures)} figures in {seconds:.0f}s; machine: {machine()}")
    if args.write_docs:
        write_docs(markdown(figures, args.quick, seconds))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
