"""The web views behind STREAMREC_WEB_TOKEN on a real deployment (a trainer and two scorers
on the real Kafka and S3): every protected view refuses a missing or wrong token and answers
the right one, a user's history routed between the scorers included; the probes' and the
scrape's views stay open; the dashboard works in a real headless Chromium with the token
and says so without it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.workers import WorkerProcess, http_json
from tests.integration.dashboard.browser import chromium_or_skip, chromium_page
from tests.integration.service.conftest import (
    E2E_SETTINGS,
    Deployment,
    KafkaClient,
    new_deployment,
    wait_for,
)
from tests.integration.service.test_service import publish, rating, trained

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

TOKEN = f"web-{uuid.uuid4().hex}"
USERS = [f"u{n}" for n in range(8)]  # spread over the 4 partitions: both scorers own some
PROTECTED = ["/model/", "/items/popular/?k=3", "/items/i1/", "/dashboard/series/",
             "/router/",  # Faust's own: which worker holds which partitions
             *(f"/users/{u}/" for u in USERS)]  # fmt: skip
UNKNOWN = ["/table/", "/no/such/view/"]  # refused too: they tell nothing exists
OPEN = ["/health/", "/metrics", "/", "/static/dashboard.js"]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp(f"webauth-{uuid.uuid4().hex[:8]}")
    deployments = new_deployment("webauth", tmp, **E2E_SETTINGS, web_token=TOKEN)
    deployment = next(deployments)
    try:
        events = [rating(u, f"i{(n * 7 + i) % 20}", 5.0, 1000.0 + n * 10 + i)
                  for n, u in enumerate(USERS) for i in range(6)]  # fmt: skip
        publish(KafkaClient(deployment.settings), deployment, events)
        wait_for(lambda: trained(deployment) >= len(events), timeout=60, what="training them")
        wait_for(
            lambda: all(s.get("/model/")[0] == 200 for s in deployment.scorers),
            timeout=60,
            what="the scorers to load the model",
        )
        yield deployment
    finally:
        deployments.close()  # stops the workers


def workers(d: Deployment) -> list[WorkerProcess]:
    return [d.trainer, *d.scorers]


def test_protected_views_need_the_token(guarded: Deployment) -> None:
    for worker in workers(guarded):
        for path in PROTECTED + UNKNOWN:
            for headers in ({}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN}):
                status, body = http_json(worker.url + path, headers=headers)
                assert status == 401, (worker.role, path, headers, body)
                assert "bearer token" in body["error"]


def test_the_token_opens_them_on_every_worker(guarded: Deployment) -> None:
    for worker in workers(guarded):  # WorkerProcess.get sends the worker's own token
        for path in PROTECTED:
            status, body = worker.get(path)
            assert status == 200, (worker.role, path, body)
        for path in UNKNOWN:
            assert worker.get(path)[0] == 404


def test_routed_lookups_carry_the_token(guarded: Deployment) -> None:
    """Each scorer answers for every user: half of them through Faust's table routing to
    the other scorer, which sees the client's token (and refuses a request without it)."""

    def histories(scorer: WorkerProcess) -> dict[str, Any] | None:
        bodies = {u: scorer.get(f"/users/{u}/")[1] for u in USERS}
        return bodies if all(b.get("seen_total") == 6 for b in bodies.values()) else None

    first, second = (
        wait_for(lambda s=s: histories(s), timeout=30, what="every user's 6 ratings")
        for s in guarded.scorers
    )
    assert first == second
    owners = {
        p.split(":")[1]
        for p in guarded.scorers[0].get("/health/")[1]["partitions"]
        if p.startswith(guarded.settings.requests_topic)
    }
    assert 0 < len(owners) < guarded.settings.topic_partitions  # so some lookups were routed


def test_probes_and_the_scrape_stay_open(guarded: Deployment) -> None:
    for worker in workers(guarded):
        for path in OPEN:
            status, _ = http_json(worker.url + path)
            assert status == 200, (worker.role, path)
        _, text = http_json(worker.url + "/metrics")
        assert 'streamrec_web_unauthorized_total{reason="missing"}' in text


def _dashboard(url: str, *, lookup: str | None = None) -> dict[str, Any]:
    binary = chromium_or_skip()

    async def drive() -> dict[str, Any]:
        async with chromium_page(binary) as page:
            await page.open(url)
            await page.wait_for(
                "window.streamrecDashboard.refreshes + window.streamrecDashboard.failures >= 2"
            )
            if lookup is not None:
                await page.evaluate(
                    f"document.getElementById('user-id').value = '{lookup}';"
                    "document.getElementById('lookup').requestSubmit(); true"
                )
                await page.wait_for(
                    "window.streamrecDashboard.lookups >= 1"
                    " || document.getElementById('user-summary').textContent.includes('HTTP')"
                )
            return await page.evaluate(
                """({
                  location: location.href,
                  stored: sessionStorage.getItem('streamrec.token'),
                  unauthorized: window.streamrecDashboard.unauthorized,
                  status: document.getElementById('status').textContent,
                  authShown: !document.getElementById('auth').hidden,
                  version: document.getElementById('stat-version').textContent,
                  popular: document.querySelectorAll('#popular li .score').length,
                  recs: document.querySelectorAll('#user-recs li .score').length,
                  summary: document.getElementById('user-summary').textContent,
                  failures: window.streamrecDashboard.failures,
                })"""
            )

    return asyncio.run(drive())


def test_dashboard_with_the_token_shows_data(guarded: Deployment) -> None:
    scorer = guarded.scorers[0]
    facts = _dashboard(f"{scorer.url}/?user=u3#token={TOKEN}", lookup="u5")
    assert facts["location"] == f"{scorer.url}/?user=u3"  # the token left the URL ...
    assert facts["stored"] == TOKEN  # ... for this tab's sessionStorage
    assert facts["unauthorized"] == 0 and facts["failures"] == 0 and not facts["authShown"]
    assert facts["status"] == "serving" and facts["version"].startswith("v")
    assert facts["popular"] == 10 and facts["recs"] >= 1, facts


def test_dashboard_without_the_token_says_so(guarded: Deployment) -> None:
    scorer = guarded.scorers[0]
    facts = _dashboard(f"{scorer.url}/", lookup="u5")
    assert facts["unauthorized"] >= 1 and facts["authShown"]
    assert facts["status"] == "token needed (HTTP 401)"
    assert facts["popular"] == 0 and facts["recs"] == 0
    assert "HTTP 401" in facts["summary"] and "bearer token" in facts["summary"]
    wrong = _dashboard(f"{scorer.url}/?token=not-{TOKEN}")
    assert wrong["location"] == f"{scorer.url}/" and wrong["status"] == "token rejected (HTTP 401)"
