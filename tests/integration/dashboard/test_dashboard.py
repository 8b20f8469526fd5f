"""The catalog table, the paged read-only views and the dashboard, against a real worker;
the dashboard itself in a real headless Chromium."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from pathlib import Path

import pytest

from app.commands.catalog import publish_catalog
from app.commands.service import format_reply, request_recommendation
from app.settings import PROJECT_ROOT
from app.web import PAGE_MAX
from models.catalog import CatalogItem
from models.wire import reply_item_body
from tests.integration.dashboard.browser import (
    NO_VALUE,
    chromium_or_skip,
    chromium_page,
    shown_seconds,
)
from tests.integration.dashboard.conftest import RATINGS, Served
from tests.integration.service.conftest import wait_for
from tests.unit.test_catalog_command import u_item_line

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

SCREENSHOT = PROJECT_ROOT / "var" / "dashboard-browser.png"


def titles(served: Served) -> dict[str, str]:
    return {c.item: c.title for c in served.catalog}


def test_dashboard_in_a_real_browser(served: Served) -> None:
    binary = chromium_or_skip()
    user = "u1"

    async def drive() -> tuple[dict, list[str]]:
        async with chromium_page(binary) as page:
            await page.open(served.worker.url + "/")
            circles = await page.wait_for(
                "document.querySelectorAll('#hit-chart circle').length >= 2"
                " && document.querySelectorAll('#hit-chart circle').length"
            )
            await page.wait_for("document.querySelectorAll('#popular li .id').length >= 5")
            await page.evaluate(
                f"document.getElementById('user-id').value = {json.dumps(user)};"
                "document.getElementById('lookup').requestSubmit(); true"
            )
            await page.wait_for("window.streamrecDashboard.lookups >= 1")
            dead = await page.wait_for(
                "(() => { const rows = [...document.querySelectorAll('#dlq tr')]"
                ".map(tr => [tr.children[0].textContent, tr.children[1].textContent]);"
                " return rows.length >= 2 && rows; })()"
            )
            facts = await page.evaluate(
                """({
                  rateDots: document.querySelectorAll('#rate-chart circle').length,
                  recs: [...document.querySelectorAll('#user-recs li')].map(li => ({
                    title: li.children[0].textContent,
                    item: li.querySelector('.id') && li.querySelector('.id').textContent})),
                  seen: document.querySelectorAll('#user-seen li').length,
                  version: document.getElementById('stat-version').textContent,
                  trained: document.getElementById('stat-trained').textContent,
                  batch: document.getElementById('stat-batch').textContent,
                  batchNote: document.getElementById('stat-batch-note').textContent,
                  fresh: document.getElementById('stat-fresh').textContent,
                  role: document.getElementById('role').textContent,
                  failures: window.streamrecDashboard.failures,
                })"""
            )
            facts["circles"] = circles
            facts["dead"] = dict(dead)
            await asyncio.sleep(2.5)  # one more refresh cycle: it must not error either
            await page.screenshot(SCREENSHOT)
            return facts, page.errors

    facts, errors = asyncio.run(drive())
    assert errors == [], errors
    assert facts["failures"] == 0
    assert facts["circles"] >= 2 and facts["rateDots"] >= 2
    assert facts["role"] == "all" and facts["version"].startswith("v")
    assert facts["trained"] == f"{RATINGS:,}"
    # Batch latency: the last micro-batch's fit, as the series has it (training is over).
    last = served.worker.get("/dashboard/series/")[1]["points"][-1]
    assert last["batch_seconds"] is not None
    assert shown_seconds(facts["batch"]) == pytest.approx(last["batch_seconds"], abs=0.051)
    assert facts["batchNote"] == "last micro-batch fit"
    assert facts["fresh"] == NO_VALUE  # role all applies no deltas (see test_deltas for a scorer)
    known = titles(served)
    assert len(facts["recs"]) == 10
    assert all(known[r["item"]] == r["title"] for r in facts["recs"]), facts["recs"]
    assert facts["seen"] >= 1
    assert facts["dead"] == {"invalid": "1", "malformed": "2"}
    assert SCREENSHOT.stat().st_size > 10_000


def test_replies_carry_titles_and_the_cli_prints_them(served: Served) -> None:
    reply = asyncio.run(request_recommendation(served.settings, "u2", 5, wait=20))
    assert reply.source == "model" and len(reply.items) == 5
    known = titles(served)
    for entry in reply.items:
        assert entry.title == known[entry.item]
        assert set(reply_item_body(entry)) == {"item", "score", "title"}
    printed = format_reply(reply)
    assert all(e.title in printed for e in reply.items)


def test_catalog_table_follows_the_items_topic(served: Served) -> None:
    item = served.catalog[0].item
    status, body = served.worker.get(f"/items/{item}/")
    assert status == 200 and body["title"] == served.catalog[0].title
    assert body["in_model"] is True and body["genres"] == list(served.catalog[0].genres)
    renamed = CatalogItem(item, "A Brand New Title (2026)", ("Drama",))
    newcomer = CatalogItem("catalog-only", "Not Rated Yet (2026)", ())
    asyncio.run(publish_catalog(served.settings, [renamed, newcomer]))
    wait_for(
        lambda: served.worker.get(f"/items/{item}/")[1].get("title") == renamed.title,
        timeout=20,
        what="the running worker to see the new title",
    )
    status, body = served.worker.get("/items/catalog-only/")
    assert status == 200 and body == {
        "item": "catalog-only",
        "in_model": False,
        "title": "Not Rated Yet (2026)",
        "genres": [],
    }
    assert served.worker.get("/items/no-such-item/")[0] == 404
    asyncio.run(publish_catalog(served.settings, [served.catalog[0]]))  # as it was


def test_popular_items_are_paged(served: Served) -> None:
    status, whole = served.worker.get("/items/popular/?limit=30")
    assert status == 200 and len(whole["items"]) == 30 and whole["total"] >= 30
    _, page = served.worker.get("/items/popular/?limit=10&offset=10")
    assert [e["item"] for e in page["items"]] == [e["item"] for e in whole["items"][10:20]]
    assert all("title" in e for e in page["items"])
    _, tail = served.worker.get(f"/items/popular/?offset={whole['total'] - 2}")
    assert len(tail["items"]) == 2
    _, default = served.worker.get("/items/popular/")
    assert len(default["items"]) <= PAGE_MAX
    for query in (f"limit={PAGE_MAX + 1}", "limit=0", "offset=-1", "limit=ten", "k=100000"):
        status, body = served.worker.get(f"/items/popular/?{query}")
        assert status == 400 and "error" in body, query


def test_seen_items_are_paged_newest_first(served: Served) -> None:
    status, whole = served.worker.get(f"/users/u1/?limit={PAGE_MAX}")
    assert status == 200
    total = whole["seen_total"]
    assert total == len(whole["seen"]) >= 4
    _, page = served.worker.get("/users/u1/?limit=2&offset=1")
    assert page["seen"] == whole["seen"][1:3] and page["seen_total"] == total
    assert set(page["titles"]) == set(page["seen"])
    assert {e["item"] for e in page["recommendation"]["items"]}.isdisjoint(whole["seen"])
    assert served.worker.get(f"/users/u1/?limit={PAGE_MAX + 1}")[0] == 400


def test_views_are_read_only(served: Served) -> None:
    paths = [
        "/",
        "/health/",
        "/model/",
        "/items/popular/",
        "/users/u1/",
        "/metrics",
        "/dashboard/series/",
        "/static/dashboard.js",
        f"/items/{served.catalog[0].item}/",
    ]
    for path in paths:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            request = urllib.request.Request(served.worker.url + path, data=b"{}", method=method)
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(request, timeout=5)
            assert info.value.code == 405, (method, path)
    # Faust's own /table/ views (whole rows, unpaged) are off.
    assert served.worker.get("/table/")[0] == 404


def test_web_server_binds_the_configured_host_only(served: Served) -> None:
    assert served.settings.web_bind == "127.0.0.1"
    listening = _listening_addresses(served.worker.web_port)
    assert listening == {"127.0.0.1"}, listening
    other = _non_loopback_address()
    if other is not None:
        with pytest.raises(OSError):
            socket.create_connection((other, served.worker.web_port), timeout=2).close()


def test_series_is_bounded_and_feeds_the_charts(served: Served) -> None:
    status, series = served.worker.get("/dashboard/series/")
    assert status == 200 and series["max_points"] == 120 and series["interval_seconds"] == 0.5
    points = series["points"]
    assert 2 <= len(points) <= 120
    last = points[-1]
    assert last["model_version"] >= 1 and last["trained_events"] == RATINGS
    # Batch latency: the fit of the last micro-batch, the one /model/ reports.
    _, model = served.worker.get("/model/")
    assert last["batch_seconds"] == model["last_batch"]["seconds"] > 0
    assert sum(p["batch_seconds"] is not None for p in points) >= 2
    assert any(p["ratings_per_s"] for p in points) and any(p["hit_rate"] for p in points)
    assert isinstance(last["dead_letters"], dict)
    _, newer = served.worker.get(f"/dashboard/series/?since={last['t']}")
    assert all(p["t"] > last["t"] for p in newer["points"])
    assert served.worker.get("/dashboard/series/?since=yesterday")[0] == 400
    status, html = served.worker.get("/")
    assert status == 200 and "/static/dashboard.js" in html
    assert served.worker.get("/static/app.py")[0] == 404


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: picks the outbound address
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_catalog_load_command(served: Served, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from benchmarks.common import data_dir

    def streamrec(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", "catalog", "load", *args],
            env={**os.environ, **served.env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    bad = tmp_path / "movies.csv"
    bad.write_text("movieId,title,genres\n1,Heat (1995),Crime\n2,,Drama\n")
    refused = streamrec(str(bad))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "movies.csv: line 3: title must be a non-empty string" in refused.stderr
    # A latin-1 u.item (as MovieLens 100K ships it) reaches the worker decoded.
    latin1 = tmp_path / "u.item"
    latin1.write_bytes(u_item_line("90001", "Misérables, Les (1995)", ("Drama",)).encode("latin-1"))
    loaded = streamrec(str(latin1))
    assert loaded.returncode == 0, loaded.stderr
    assert f"published 1 items to {served.settings.items_topic!r}" in loaded.stdout
    wait_for(
        lambda: served.worker.get("/items/90001/")[1].get("title") == "Misérables, Les (1995)",
        timeout=20,
        what=lambda: (
            f"the decoded title in the worker's catalog ({served.worker.get('/items/90001/')})"
        ),
    )
    u_item = data_dir() / "ml-100k" / "u.item"
    if not u_item.is_file():
        pytest.skip(
            f"MovieLens is not shipped and is not in {u_item.parent}; set STREAMREC_DATA_DIR"
        )
    loaded = streamrec(str(u_item))
    assert loaded.returncode == 0, loaded.stderr
    assert f"published 1682 items to {served.settings.items_topic!r}" in loaded.stdout
    wait_for(
        lambda: (
            served.worker.get("/items/1682/")[1].get("title")
            == "Scream of Stone (Schrei aus Stein) (1991)"
        ),
        timeout=20,
        what="MovieLens titles in the worker's catalog",
    )
    assert served.worker.get("/items/1/")[1]["genres"] == ["Animation", "Children's", "Comedy"]


def test_malformed_catalog_entries_never_stall_a_worker(served: Served) -> None:
    from devtools.workers import WorkerProcess, free_port
    from tests.integration.service.conftest import KafkaClient

    renamed, other = served.catalog[1], served.catalog[2]
    bad = [
        (b"no-json", b"{not json"),
        (renamed.item.encode(), b'{"item": "%s"}' % renamed.item.encode()),  # no title
        (b"\xff\xfe", b'{"item": "x", "title": "a key that is not UTF-8"}'),
    ]
    asyncio.run(KafkaClient(served.settings).produce(served.settings.items_topic, bad))
    wait_for(
        lambda: "title" not in served.worker.get(f"/items/{renamed.item}/")[1],
        timeout=20,
        what="the bad entry to replace the item's title",
    )
    assert served.worker.get("/items/no-json/")[0] == 404
    # A worker that starts now recovers the table through the bad entries and serves.
    late = WorkerProcess("scorer", free_port(), served.tmp / "late-scorer.log", served.env)
    try:
        late.start().wait_ready(model=False)
        wait_for(
            lambda: (body := late.get("/health/")[1]) and not body["rebalancing"],
            timeout=60,
            what=lambda: f"the late scorer to finish recovery:\n{late.log_tail()}",
        )
        wait_for(
            lambda: late.get(f"/items/{other.item}/")[1].get("title") == other.title,
            timeout=30,
            what=lambda: f"the late scorer's catalog:\n{late.log_tail()}",
        )
        wait_for(  # it read on through the bad entries, to the last one
            lambda: "title" not in late.get(f"/items/{renamed.item}/")[1],
            timeout=60,
            what=lambda: f"the late scorer to read the bad entries:\n{late.log_tail()}",
        )
    finally:
        late.stop()
    assert "Ignoring malformed catalog entries (malformed)" in late.log_path.read_text()
    asyncio.run(publish_catalog(served.settings, [renamed]))  # as it was
