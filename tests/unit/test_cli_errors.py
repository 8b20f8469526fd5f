"""Every command, given a missing file, a malformed file, a wrong URL scheme, a bad number or
services that do not answer, prints one clear ``Error:`` line and exits non-zero (2 for bad
arguments, 1 for the rest), with no traceback unless ``--debug``.

Cases that reach settings or services run ``python -m app.cli`` as a real process (what a
user sees, logging included); bad arguments run in-process. "Unreachable" services are
addresses nothing listens on, so no service is needed here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
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
ITEMS = "item,title,genres\n10,Toy Story,Comedy\n"
#: Stores the fixture fills (two snapshots each, trained from GOOD) for the cases that need
#: a version to promote or roll back to: one store per case, as the cases run side by side.
STORES = ("promote", "rollback")

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
    ("train/zero epochs", ["train", "{good}", "--epochs", "0"], {}, 2, "0 is not in the range"),
    ("generate/bad number", ["generate", "{tmp}/g.csv", "--users", "-3"], {}, 2, "-3"),
    ("publish/missing file", ["publish", "{tmp}/nope.csv"], {}, 2, "does not exist"),
    ("publish/malformed file", ["publish", "{bad}"], DOWN, 1, "line 1"),
    ("publish/bad number", ["publish", "{good}", "--rate", "fast"], {}, 2, "'fast' is not"),
    ("publish/kafka down", ["publish", "{good}"], DOWN, 1, "Kafka is not reachable"),
    ("recommend/bad number", ["recommend", "u1", "-k", "0"], {}, 2, "0 is not in the range"),
    ("recommend/kafka down", ["recommend", "u1"], DOWN, 1, "Kafka is not reachable"),
    ("catalog/missing file", ["catalog", "load", "{tmp}/nope.csv"], {}, 2, "does not exist"),
    (
        "catalog/malformed file",
        ["catalog", "load", "{bad}"],
        DOWN,
        1,
        "line 1: cannot detect the catalog format",
    ),
    ("catalog/bad choice", ["catalog", "load", "{items}", "--format", "xml"], {}, 2, "'xml'"),
    ("catalog/kafka down", ["catalog", "load", "{items}"], DOWN, 1, "Kafka is not reachable"),
    ("models/url scheme", ["models", "list", "--store", "ftp://x"], {}, 1, "scheme 'ftp'"),
    ("models/bad number", ["models", "show", "seven"], {}, 2, "'seven' is not"),
    (
        "models/s3 down",
        ["models", "list", "--store", S3_URL],
        DOWN,
        1,
        "127.0.0.1:1",
    ),
    (
        "models/missing store",
        ["models", "promote", "3", "--store", "file://{tmp}/no"],
        {},
        1,
        "no snapshot version 3",
    ),
    ("models show/s3 down", ["models", "show", "3", "--store", S3_URL], DOWN, 1, "127.0.0.1:1"),
    ("models promote/bad number", ["models", "promote", "v3"], {}, 2, "'v3' is not"),
    (
        "models promote/s3 down",
        ["models", "promote", "3", "--store", S3_URL],
        DOWN,
        1,
        "127.0.0.1:1",
    ),
    (
        "models promote/kafka down",
        ["models", "promote", "1", "--store", "file://{tmp}/promote"],
        DOWN,
        1,
        "announcing it on 'model-updates' failed (Kafka is not reachable",
    ),
    ("models prune/bad number", ["models", "prune", "--keep", "0"], {}, 2, "0 is not in the range"),
    ("models prune/missing option", ["models", "prune"], {}, 2, "Missing option '--keep'"),
    (
        "models prune/url scheme",
        ["models", "prune", "--keep", "2", "--store", "ftp://x"],
        {},
        1,
        "scheme 'ftp'",
    ),
    (
        "models prune/s3 down",
        ["models", "prune", "--keep", "2", "--store", S3_URL],
        DOWN,
        1,
        "127.0.0.1:1",
    ),
    ("models rollback/bad number", ["models", "rollback", "--to", "x"], {}, 2, "'x' is not"),
    (
        "models rollback/nothing to roll back",
        ["models", "rollback", "--store", "file://{tmp}/no"],
        {},
        1,
        "nothing to roll back",
    ),
    (
        "models rollback/no such version",
        ["models", "rollback", "--to", "9", "--store", "file://{tmp}/rollback"],
        {},
        1,
        "cannot roll back to version 9",
    ),
    ("models rollback/s3 down", ["models", "rollback", "--store", S3_URL], DOWN, 1, "127.0.0.1:1"),
    (
        "models rollback/kafka down",
        ["models", "rollback", "--store", "file://{tmp}/rollback"],
        DOWN,
        1,
        "announcing it on 'model-updates' failed (Kafka is not reachable",
    ),
    ("worker/bad role", ["worker", "--role", "boss"], {}, 2, "'boss' is not one of"),
    ("worker/bad number", ["worker", "--web-port", "70000"], {}, 2, "70000"),
    ("worker/kafka down", ["worker", "--role", "scorer"], DOWN, 1, "Kafka is not reachable"),
    ("dev/bad choice", ["dev", "up", "--only", "redis"], {}, 2, "'redis' is not one of"),
    ("dev status/bad choice", ["dev", "status", "--only", "db"], {}, 2, "'db' is not one of"),
    ("dev status/bad option", ["dev", "status", "--bogus"], {}, 2, "No such option: --bogus"),
    ("dev ping/extra argument", ["dev", "ping", "now"], {}, 2, "unexpected extra argument (now)"),
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
    files = {"good": tmp / "good.csv", "bad": tmp / "bad.csv", "items": tmp / "items.csv"}
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
    (tmp / "items.csv").write_text(ITEMS)
    urls = {f"file://{{tmp}}/{store}" for store in STORES}
    done: dict[str, Outcome | Future[Outcome]] = {}
    with ThreadPoolExecutor(4) as pool:
        stores = pool.submit(make_stores, tmp)
        for on_store in (False, True):  # cases on a filled store once it is filled
            if on_store:
                stores.result()
            for name, argv, env, _, _ in CASES:
                if bool(urls & set(argv)) == on_store:
                    done[name] = pool.submit(run, argv, env, tmp) if env else run(argv, env, tmp)
        return {n: o.result() if isinstance(o, Future) else o for n, o in done.items()}


def make_stores(tmp: Path) -> None:
    """Each of :data:`STORES` with snapshots 1 and 2, the pointer at 2."""
    first, *others = STORES
    for _ in range(2):
        trained = run(["train", "{good}", "--out", f"file://{{tmp}}/{first}"], DOWN, tmp)
        assert trained.returncode == 0, trained.stderr
    for other in others:
        shutil.copytree(tmp / first, tmp / other)


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
