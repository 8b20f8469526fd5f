"""Every command, given a missing file, a malformed file, a wrong URL scheme, a bad number or
services that do not answer, prints one clear ``Error:`` line and exits non-zero (2 for bad
arguments, 1 for the rest), with no traceback unless ``--debug``.

Cases that reach settings or services run ``python -m app.cli`` as a real process (what a
user sees, logging included); bad arguments run in-process. "Unreachable" services are
addresses nothing listens on, so no service is needed here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

DOWN = {
    "STREAMREC_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    "STREAMREC_S3_ENDPOINT": "http://127.0.0.1:1",
    "STREAMREC_S3_MAX_ATTEMPTS": "1",
}
S3_URL = "s3://no-such-bucket/p"
GOOD = "user,item,rating,timestamp\n1,10,5,100\n2,10,4,101\n2,11,3,102\n"
BAD = "user;item\n\x00\x01 not, a ratings: file\n"

# (name, argv with {good}/{bad}/{tmp} placeholders, env, exit code, text the line contains)
CASES: list[tuple[str, list[str], dict[str, str], int, str]] = [
    ("train/missing file", ["train", "{tmp}/nope.csv"], {}, 2, "does not exist"),
    ("train/malformed file", ["train", "{bad}", "--out", "file://{tmp}/m"], {}, 1, "line 1"),
    ("train/url scheme", ["train", "{good}", "--out", "ftp://host/x"], {}, 1, "scheme 'ftp'"),
    ("train/bad number", ["train", "{good}", "--epochs", "many"], {}, 2, "'many' is not"),
    (
        "train/s3 down",
        ["train", "{good}", "--out", S3_URL],
        DOWN,
        1,
        "127.0.0.1:1",
    ),
    ("generate/bad number", ["generate", "{tmp}/g.csv", "--users", "-3"], {}, 2, "-3"),
    ("publish/missing file", ["publish", "{tmp}/nope.csv"], {}, 2, "does not exist"),
    ("publish/malformed file", ["publish", "{bad}"], DOWN, 1, "line 1"),
    ("publish/bad number", ["publish", "{good}", "--rate", "fast"], {}, 2, "'fast' is not"),
    ("publish/kafka down", ["publish", "{good}"], DOWN, 1, "Kafka is not reachable"),
    ("recommend/bad number", ["recommend", "u1", "-k", "0"], {}, 2, "0 is not in the range"),
    ("recommend/kafka down", ["recommend", "u1"], DOWN, 1, "Kafka is not reachable"),
    ("catalog/missing file", ["catalog", "load", "{tmp}/nope.csv"], {}, 2, "does not exist"),
    ("catalog/malformed file", ["catalog", "load", "{bad}"], DOWN, 1, ""),
    ("models/url scheme", ["models", "list", "--store", "ftp://x"], {}, 1, "scheme 'ftp'"),
    ("models/bad number", ["models", "show", "seven"], {}, 2, "'seven' is not"),
    (
        "models/s3 down",
        ["models", "list", "--store", S3_URL],
        DOWN,
        1,
        "127.0.0.1:1",
    ),
    ("models/missing store", ["models", "promote", "3", "--store", "file://{tmp}/no"], {}, 1, "3"),
    ("worker/bad role", ["worker", "--role", "boss"], {}, 2, "'boss' is not one of"),
    ("worker/bad number", ["worker", "--web-port", "70000"], {}, 2, "70000"),
    ("worker/kafka down", ["worker", "--role", "scorer"], DOWN, 1, "Kafka is not reachable"),
    ("dev/bad choice", ["dev", "up", "--only", "redis"], {}, 2, "'redis' is not one of"),
    ("demo/bad number", ["demo", "--users", "3"], {}, 2, "3 is not in the range"),
    ("settings/bad number", ["models", "list"], {"STREAMREC_TOPIC_PARTITIONS": "x"}, 1, "x"),
    ("unknown command", ["frobnicate"], {}, 2, "No such command"),
]


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


def run(argv: list[str], env: dict[str, str], tmp: Path) -> Outcome:
    """One invocation: a real process when ``env`` matters (services down, settings), else
    in-process through click's runner (a bad argument never reaches the settings)."""
    files = {"good": tmp / "good.csv", "bad": tmp / "bad.csv"}
    args = [a.format(tmp=tmp, **{k: str(v) for k, v in files.items()}) for a in argv]
    if not env:
        from click.testing import CliRunner

        from app.cli import main

        result = CliRunner().invoke(main, args)
        return Outcome(result.exit_code, result.stdout, result.stderr)
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**os.environ, "STREAMREC_MODEL_STORE": f"file://{tmp}/models", **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """All cases; the processes run side by side (each start is a second of imports)."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "good.csv").write_text(GOOD)
    (tmp / "bad.csv").write_text(BAD)
    out = {name: run(argv, env, tmp) for name, argv, env, _, _ in CASES if not env}
    with ThreadPoolExecutor(4) as pool:
        done = {name: pool.submit(run, argv, env, tmp) for name, argv, env, _, _ in CASES if env}
        return out | {name: future.result() for name, future in done.items()}


@pytest.mark.parametrize(("name", "code", "text"), [(c[0], c[3], c[4]) for c in CASES])
def test_each_bad_invocation_is_one_clear_line(
    results: dict[str, Outcome], name: str, code: int, text: str
) -> None:
    done = results[name]
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1, f"expected one line, got:\n{done.stderr}"
    assert lines[0].startswith("Error: ") and text in lines[0], lines[0]
    assert "Traceback" not in done.stderr + done.stdout


def test_debug_shows_the_traceback_of_an_unexpected_error() -> None:
    """An error no command expects is one line naming its type; ``--debug`` re-raises it."""
    import click
    from click.testing import CliRunner

    from app.cli import main

    @click.command()
    def boom() -> None:
        raise RuntimeError("something\nunexpected")

    main.add_command(boom)
    try:
        plain = CliRunner().invoke(main, ["boom"])
        debug = CliRunner().invoke(main, ["--debug", "boom"])
    finally:
        main.commands.pop("boom")
    assert plain.exit_code == 1
    assert plain.output == (
        "Error: RuntimeError: something unexpected (--debug shows the traceback)\n"
    )
    assert isinstance(debug.exception, RuntimeError)  # the traceback is shown
