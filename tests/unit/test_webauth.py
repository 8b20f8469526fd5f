"""The web views' bearer token: the settings that give it, the constant-time check, and the
middleware on a real worker's aiohttp application (every route it serves, Faust's own too),
served by a real aiohttp server; no Kafka needed (the views that need a broker are only
asked without a token, which is refused before they run)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from app.service import create_app
from app.settings import Settings, SettingsError, load_settings, web_token_of
from app.webauth import OPEN_ROUTES, bearer_matches, is_loopback

TOKEN = "t0k3n-for-the-unit-tests_0123456789"
OPEN = {"/", "/static/{name}", "/health/", "/metrics"}
"""No user data, no lineage: the probes, the scrape, the dashboard page and its assets."""


# --- the settings --------------------------------------------------------------------------


def test_no_token_is_the_open_default() -> None:
    assert web_token_of(Settings()) is None
    assert web_token_of(Settings(web_token="", web_token_file="")) is None  # empty = unset


def test_the_token_or_its_file(tmp_path: Path) -> None:
    assert web_token_of(Settings(web_token=TOKEN)) == TOKEN.encode()
    file = tmp_path / "token"
    file.write_text(f"  {TOKEN}\n")  # as `echo` or a mounted Secret leaves it
    assert web_token_of(Settings(web_token_file=file)) == TOKEN.encode()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"web_token": TOKEN, "web_token_file": "/etc/hosts"}, "not both"),
        ({"web_token_file": "/no/such/token"}, "cannot be read: FileNotFoundError"),
        ({"web_token": "too-short"}, "must be 16 or more"),
        ({"web_token": "spaces are not allowed in it"}, "must be 16 or more"),
        ({"web_token": "n\u00f6n-ascii-t\u00f6ken-value"}, "must be 16 or more"),
    ],
)
def test_bad_token_settings_are_one_clear_error(values: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(**values)
    message = info.value.message
    assert expected in message
    assert TOKEN not in message and str(values.get("web_token")) not in message


def test_an_unreadable_token_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00token")
    with pytest.raises(SettingsError, match="UnicodeDecodeError"):
        load_settings(web_token_file=tmp_path / "binary")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SettingsError, match="content of STREAMREC_WEB_TOKEN_FILE must be"):
        load_settings(web_token_file=tmp_path / "empty")


# --- the check -----------------------------------------------------------------------------


@given(st.one_of(st.none(), st.text(), st.text().map(lambda t: f"Bearer {t}")))
def test_any_header_is_refused_without_raising(header: str | None) -> None:
    assert bearer_matches(header, TOKEN.encode()) is (header is not None and _exact(header))


def _exact(header: str) -> bool:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower() == "bearer" and rest.strip() == TOKEN


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN} "])
def test_the_token_is_accepted(header: str) -> None:
    assert bearer_matches(header, TOKEN.encode())


@pytest.mark.parametrize(
    "header",
    ["", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", "Bearer \udcff"],
)
def test_anything_else_is_refused(header: str) -> None:
    assert not bearer_matches(header, TOKEN.encode())


@pytest.mark.parametrize(
    ("bind", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("::", False), ("10.1.2.3", False), ("worker.example", False)],
)  # fmt: skip
def test_public_binds(bind: str, loopback: bool) -> None:
    assert is_loopback(bind) is loopback


# --- the middleware on a real worker's web application ---------------------------------------


def worker_app(tmp_path: Path, **settings: object):
    return create_app(
        Settings(datadir=tmp_path / "faust", model_store=f"file://{tmp_path}/m", **settings),
        role="scorer",
    )


async def _served(app) -> AsyncIterator[tuple[TestServer, aiohttp.ClientSession]]:
    server = TestServer(app.web.web_app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            yield server, http
    finally:
        await server.close()


def paths_of(app) -> dict[str, str]:
    """Every route the worker serves (canonical -> a concrete path to GET)."""
    out = {}
    for resource in app.web.web_app.router.resources():
        canonical = resource.canonical
        out[canonical] = (
            canonical.replace("{name}", "dashboard.js").replace("{", "").replace("}", "")
        )
    return out


def ask(app, requests: list[tuple[str, dict[str, str]]]) -> list[tuple[int, dict, object]]:
    async def run() -> list[tuple[int, dict, object]]:
        answers = []
        async for server, http in _served(app):
            for path, headers in requests:
                async with http.get(server.make_url(path), headers=headers) as response:
                    body = await response.read()
                    is_json = response.content_type == "application/json"
                    answers.append(
                        (
                            response.status,
                            dict(response.headers),
                            body if not is_json else await response.json(),
                        )
                    )
        return answers

    return asyncio.run(run())


def test_every_route_but_the_open_ones_needs_the_token(tmp_path: Path) -> None:
    app = worker_app(tmp_path, web_token=TOKEN)
    routes = paths_of(app)
    assert {"/users/{user_id}/", "/model/", "/dashboard/series/", "/items/popular/"} <= set(routes)
    assert OPEN_ROUTES == OPEN and set(routes) >= OPEN
    # Faust adds /router/ when the worker starts; unknown paths are refused as well
    guarded = [*sorted(set(routes) - OPEN), "/router/", "/no/such/view/"]
    wrong = {"Authorization": f"Bearer {TOKEN[:-1]}"}
    asked = [(routes.get(c, c), h) for c in guarded for h in ({}, wrong)]
    for (path, headers), (status, response_headers, body) in zip(
        asked, ask(app, asked), strict=True
    ):
        assert status == 401, (path, headers, status, body)
        challenge = response_headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer realm=")
        assert ("invalid_token" in challenge) == bool(headers)
        assert "bearer token" in body["error"] and TOKEN not in body["error"]


def test_the_open_routes_need_no_token(tmp_path: Path) -> None:
    app = worker_app(tmp_path, web_token=TOKEN)
    routes = paths_of(app)
    answers = ask(app, [(routes[c], {}) for c in sorted(OPEN)])
    statuses = dict(zip(sorted(OPEN), (a[0] for a in answers), strict=True))
    # /health/ runs (and fails: no consumer without a broker) instead of being refused;
    # tests/integration/service/test_web_auth.py sees it answer 200 on a live worker.
    assert statuses.pop("/health/") not in (401, 200)
    assert statuses == {"/": 200, "/metrics": 200, "/static/{name}": 200}


def test_with_the_token_the_views_answer(tmp_path: Path) -> None:
    app = worker_app(tmp_path, web_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    (model, _, _), (series, _, _), (missing, _, _) = ask(
        app, [("/model/", auth), ("/dashboard/series/", auth), ("/no/such/view/", auth)]
    )
    assert (model, series, missing) == (503, 200, 404)  # no model yet; the series; no route


def test_without_a_token_everything_stays_open(tmp_path: Path) -> None:
    app = worker_app(tmp_path)
    (model, _, _), (series, _, _) = ask(app, [("/model/", {}), ("/dashboard/series/", {})])
    assert (model, series) == (503, 200)


def test_a_public_bind_without_a_token_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.webauth"):
        worker_app(tmp_path / "a", web_bind="0.0.0.0")
        warned = [r for r in caplog.records if r.name == "app.webauth"]
        assert len(warned) == 1 and "STREAMREC_WEB_TOKEN" in warned[0].getMessage()
        caplog.clear()
        worker_app(tmp_path / "b", web_bind="0.0.0.0", web_token=TOKEN)
        worker_app(tmp_path / "c", web_bind="127.0.0.1")
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
