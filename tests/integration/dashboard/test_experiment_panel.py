"""The experiments panel in a real headless Chromium: an experiment started with the CLI on
a real worker, requests answered in it, positive ratings on what the control showed; the
panel draws both variants' hit-rate curves with their interval bands and says the numbers
``/experiments/`` has."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from app.commands.service import publish_ratings, request_recommendation
from app.settings import PROJECT_ROOT
from models.events import Rating
from tests.integration.dashboard.browser import chromium_or_skip, chromium_page
from tests.integration.dashboard.conftest import Served
from tests.integration.service.conftest import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

SCREENSHOT = PROJECT_ROOT / "var" / "dashboard-experiments.png"


def experiments(served: Served) -> dict:
    return served.worker.get("/experiments/")[1]


def test_the_experiment_panel_draws_both_curves_and_their_intervals(served: Served) -> None:
    binary = chromium_or_skip()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "experiment",
            "start",
            "panel",
            "--blend-weight",
            "0",
            "--share",
            "1",
        ],
        env={**os.environ, **served.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    wait_for(lambda: experiments(served)["experiments"], timeout=30, what="the worker to see it")
    users = [f"u{n}" for n in range(1, 41)]

    async def ask() -> list:
        return list(
            await asyncio.gather(
                *(request_recommendation(served.settings, u, 5, wait=30) for u in users)
            )
        )

    replies = asyncio.run(ask())
    assert {r.variant for r in replies} == {"control", "candidate"}
    now = time.time() + 1
    liked = [
        Rating(uuid.uuid4().hex, r.user, i.item, 5.0, now)
        for r in replies
        for n, i in enumerate(r.items)
        if r.variant == "control" or n == 0
    ]
    asyncio.run(publish_ratings(served.settings, liked))

    def two_points() -> dict | None:
        doc = experiments(served)["experiments"][0]
        hits = doc.get("variants", {}).get("control", {}).get("hits", 0)
        return doc if len(doc["curve"]) >= 2 and hits > 0 else None

    doc = wait_for(two_points, timeout=60, what="two published tallies with hits")

    async def drive() -> dict:
        async with chromium_page(binary) as page:
            await page.open(served.worker.url + "/")
            await page.wait_for("window.streamrecDashboard.experiments.shown >= 2")
            facts = await page.evaluate(
                """({
                  lines: [...document.querySelectorAll('#exp-chart path.line')]
                    .map(p => p.getAttribute('class')),
                  bands: [...document.querySelectorAll('#exp-chart polygon.band')]
                    .map(p => p.getAttribute('class')),
                  dots: document.querySelectorAll('#exp-chart circle').length,
                  summary: document.getElementById('exp-summary').textContent,
                  options: [...document.querySelectorAll('#exp-select option')].map(o => o.value),
                  failures: window.streamrecDashboard.failures,
                })"""
            )
            await page.screenshot(SCREENSHOT)
            return facts

    facts = asyncio.run(drive())
    assert sorted(facts["lines"]) == ["line candidate", "line control"], facts
    assert sorted(facts["bands"]) == ["band candidate", "band control"], facts
    assert facts["dots"] >= 4 and facts["options"] == ["panel"] and facts["failures"] == 0
    summary = facts["summary"]
    assert summary.startswith("panel: running, ab, share 1"), summary
    assert "control " in summary and "candidate " in summary and "p = " in summary
    rate = doc["variants"]["control"]["hit_rate"]
    assert rate > 0 and json.dumps(doc)  # the page shows what /experiments/ says
    assert SCREENSHOT.stat().st_size > 10_000
