"""`streamrec demo --keep`: the workers stay up, the dashboard URL it prints answers, and
Ctrl-C stops everything with closing hints that point only at what is still there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from app.settings import PROJECT_ROOT
from devtools.workers import http_json

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]


# The open variant is the same path without the bearer check: a long variant (CI's time).
@pytest.mark.parametrize(
    "token",
    [pytest.param(None, marks=pytest.mark.long), f"demo-{uuid.uuid4().hex}"],
    ids=["open", "token"],
)
def test_demo_keep_serves_the_dashboard_until_ctrl_c(token: str | None) -> None:
    env = os.environ.copy()
    env.pop("STREAMREC_WEB_TOKEN_FILE", None)
    if token is None:
        env.pop("STREAMREC_WEB_TOKEN", None)
    else:
        env["STREAMREC_WEB_TOKEN"] = token
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
        env=env,
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
        while "Ctrl-C stops them" not in lines[-1] and time.monotonic() < deadline:
            lines.append(proc.stdout.readline())  # the hints under the URL
        assert "Done;" not in "".join(lines)  # the workers are still up
        status, page = http_json(url)
        assert status == 200 and "/static/dashboard.js" in page
        popular_url = url.split("?")[0] + "items/popular/?limit=3"
        auth = {} if token is None else {"Authorization": f"Bearer {token}"}
        status, popular = http_json(popular_url, headers=auth)
        assert status == 200 and all("title" in e for e in popular["items"])
        shown = "".join(lines)
        assert "7. Trainer: model vNone" not in shown  # the demo read /model/ (with the token)
        assert ("The views need STREAMREC_WEB_TOKEN" in shown) is (token is not None)
        if token is not None:
            assert http_json(popular_url)[0] == 401
            assert token not in shown
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
