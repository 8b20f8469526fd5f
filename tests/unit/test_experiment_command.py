"""``streamrec experiment``: a bad definition is one ``Error:`` line and exit status 1
before anything is sent (no service needed); Kafka down is one line too."""

from __future__ import annotations

import subprocess
import sys

import pytest

DOWN = {"STREAMREC_KAFKA_BOOTSTRAP": "127.0.0.1:1", "STREAMREC_S3_ENDPOINT": "http://127.0.0.1:1"}

CASES = [
    (["start", "bad name!", "--blend-weight", "0.3"], "name 'bad name!' must be"),
    (["start", "x", "--blend-weight", "0.3", "--share", "0"], "share must be in (0, 1]"),
    (["start", "x", "--blend-weight", "nan"], "blend_weight must be finite"),
    (["start", "x", "--blend-weight", "1.5"], "blend_weight must be between 0 and 1"),
    (["start", "x"], "a candidate is needed"),
    (["start", "x", "--config", "{bad}"], "not a JSON variant"),
    (["start", "x", "--config", "{unknown}"], "unknown field(s) in candidate"),
    (["start", "x", "--config", "{empty}"], "candidate is the same as control"),
    (["start", "x", "--candidate", "3", "--config", "{empty}"], "not both"),
    (["start", "x", "--blend-weight", "0.2", "--share", "1e400"], "share must be finite"),
    (["status"], "kafka is not reachable"),
]


@pytest.mark.parametrize(("argv", "says"), CASES, ids=[" ".join(c[0])[:40] for c in CASES])
def test_bad_definitions_are_one_error_line(tmp_path, argv, says):
    files = {"bad": "{not json", "unknown": '{"model": 3, "colour": 1}', "empty": "{}"}
    for name, text in files.items():
        (tmp_path / f"{name}.json").write_text(text)
    argv = [a.format(**{n: str(tmp_path / f"{n}.json") for n in files}) for a in argv]
    import os

    env = {**os.environ, **DOWN, "STREAMREC_KAFKA_REQUEST_TIMEOUT_SECONDS": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "experiment", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, done.stderr
    assert lines[-1].startswith("Error: ") and says.lower() in lines[-1].lower(), done.stderr
    assert "Traceback" not in done.stderr
