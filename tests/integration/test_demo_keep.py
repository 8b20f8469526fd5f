"""`streamrec demo --keep`: the workers stay up, the dashboard URL it prints answers, and
Ctrl-C stops everything with closing hints that point only at what is still there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from app.dev.workers import http_json
from app.settings import PROJECT_ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]


def test_demo_keep_serves_the_dashboard_until_ctrl_c() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "demo",
            "--keep",
            "--users",
            "200",
            "--items",
            "40",
            "--ratings",
            "3000",
            "--genres",
            "4",
        ],
        cwd=PROJECT_ROOT,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        url = None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("8. Dashboard: "):
                url = line.split()[2]
        assert url is not None, "".join(lines)
        assert "Done;" not in "".join(lines)  # the workers are still up
        status, page = http_json(url)
        assert status == 200 and "/static/dashboard.js" in page
        status, popular = http_json(url.split("?")[0] + "items/popular/?limit=3")
        assert status == 200 and all("title" in e for e in popular["items"])
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + rest
    assert "Done; the workers have stopped" in rest
    assert "streamrec models list --store file://" in rest
    closing = rest.split("Done;")[1]
    assert "--keep" not in closing  # no advice to do what was just done
    assert "http://" not in closing  # the workers' URLs are gone now
    with pytest.raises(OSError):
        http_json(url, timeout=2)
