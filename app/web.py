"""Faust web views: the dashboard and JSON windows onto what each worker holds.

Every view is read-only (GET; Faust answers other methods with 405) and bounded: lists are
paged with ``?limit=`` and ``?offset=``, and no page is longer than :data:`PAGE_MAX`.
``/users/{id}/`` is routed (``app.table_route``) to the worker that owns the user's
``seen-items`` partition, so it answers from any scorer (a plain table view would return
nothing on non-owners; Faust issue 187). With STREAMREC_WEB_TOKEN set, every view but
``/``, ``/static/``, ``/health/`` and ``/metrics`` needs it (:mod:`app.webauth`).
"""

from __future__ import annotations

from typing import Any

import faust
import numpy as np
from faust.exceptions import SameNode
from faust.web import Blueprint, Request, Response, View
from prometheus_client import generate_latest

from agents import metrics
from agents.experiment_results import summary as experiment_summary
from agents.scorer import Catalog, reply_for, title_of
from agents.status import render_status
from app import webauth
from app.dashboard import ASSETS, asset
from app.errors import AppError
from app.runtime import Runtime
from models.events import MAX_K, InvalidEvent, parse_request
from models.seen import decode_row

PAGE_MAX = 200
"""The longest page any view returns (seen items, popular items)."""
PAGE_DEFAULT = PAGE_MAX // 4
NO_CACHE = {"Cache-Control": "no-cache"}


class BadQuery(AppError, ValueError):
    """A query parameter that is not acceptable; the view answers 400 with the message."""


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name} must be an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise BadQuery(f"{name} must be between {low} and {high}, got {value}")
    return value


def page_of(request: Request, *, alias: str | None = None) -> tuple[int, int]:
    """``(limit, offset)`` from the query; ``alias`` (e.g. ``k``) may name the limit."""
    name = alias if alias is not None and alias in request.query else "limit"
    limit = _int_param(request, name, PAGE_DEFAULT, 1, PAGE_MAX)
    return limit, _int_param(request, "offset", 0, 0, 1_000_000)


def _k(request: Request, default: int) -> int:
    return _int_param(request, "k", default, 1, MAX_K)


def _titles(catalog: Catalog, items: list[str]) -> dict[str, str]:
    return {i: t for i in items if (t := title_of(catalog, i)) is not None}


blueprint = Blueprint("streamrec")
"""Every view below; :func:`register` puts them on a worker's app."""


def register(app: faust.App) -> None:
    """Serve the views on ``app`` (whose :class:`~app.runtime.Runtime` they read), behind the
    bearer token when one is set."""
    webauth.install(app, Runtime.of(app).settings)
    blueprint.register(app)


class Base(View):
    """Turns a :class:`BadQuery` into a 400 with its message; :attr:`runtime` is the worker's."""

    @property
    def runtime(self) -> Runtime:
        return Runtime.of(self.app)

    async def dispatch(self, request: Any) -> Any:
        try:
            return await super().dispatch(request)
        except BadQuery as exc:
            return self.json({"error": str(exc)}, status=400)


@blueprint.route("/", name="dashboard")
class Dashboard(Base):
    async def get(self, request: Request) -> Response:
        return self.html(asset("dashboard.html").decode(), headers=dict(NO_CACHE))


@blueprint.route("/static/{name}", name="static")
class Static(Base):
    async def get(self, request: Request, name: str) -> Response:
        if name not in ASSETS:
            return self.json({"error": f"no asset {name!r}"}, status=404)
        return self.bytes(asset(name), content_type=ASSETS[name], headers=dict(NO_CACHE))


@blueprint.route("/dashboard/series/", name="series")
class SeriesView(Base):
    async def get(self, request: Request) -> Response:
        series = self.runtime.series
        if series is None:
            return self.json({"error": "no series"}, status=404)
        since = request.query.get("since")
        try:
            after = None if since is None else float(since)
        except ValueError:
            raise BadQuery(f"since must be a unix time, got {str(since)[:40]!r}") from None
        return self.json(series.as_json(after))


@blueprint.route("/health/", name="health")
class Health(Base):
    async def get(self, request: Request) -> Response:
        runtime = self.runtime
        view = runtime.holder.view
        body: dict[str, Any] = {
            "status": "ok" if view is not None else "starting",
            "role": runtime.role,
            "model_version": None if view is None else view.version,
            "rebalancing": bool(self.app.rebalancing),
            "partitions": sorted(
                f"{tp.topic}:{tp.partition}" for tp in self.app.consumer.assignment()
            ),
        }
        if runtime.ingest is not None:  # a cheap progress probe (/metrics costs ~20 ms)
            body["seen_ratings"] = runtime.ingest.recorded
        failing = runtime.health.problems()  # readers that keep failing (agents.health)
        if failing:
            body["status"], body["failing"] = "degraded", failing
        healthy = view is not None and not failing
        return self.json(body, status=200 if healthy else 503)


@blueprint.route("/model/", name="model")
class Model(Base):
    async def get(self, request: Request) -> Response:
        runtime = self.runtime
        holder = runtime.holder
        info = render_status(holder.info, role=runtime.role, loaded_at=holder.loaded_at)
        return self.json(info, status=200 if holder.ready else 503)


@blueprint.route("/items/popular/", name="popular")
class Popular(Base):
    async def get(self, request: Request) -> Response:
        limit, offset = page_of(request, alias="k")
        runtime = self.runtime
        view = runtime.holder.view
        if view is None:
            return self.json({"error": "no model loaded yet"}, status=503)
        catalog = runtime.catalog_rows
        top = view.popular(min(offset + limit, max(1, view.n_items)))[offset:]
        items = []
        for s in top:
            entry: dict[str, Any] = {"item": s.item, "score": float(s.score)}
            if (title := title_of(catalog, s.item)) is not None:
                entry["title"] = title
            items.append(entry)
        return self.json(
            {
                "model_version": view.version,
                "items": items,
                "limit": limit,
                "offset": offset,
                "total": view.n_items,
            }
        )


@blueprint.route("/items/{item_id}/", name="item")
class Item(Base):
    async def get(self, request: Request, item_id: str) -> Response:
        runtime = self.runtime
        catalog = runtime.catalog_rows
        title = title_of(catalog, item_id)
        view = runtime.holder.view
        known = view is not None and view.has_item(item_id)
        if title is None and not known:
            return self.json({"error": f"unknown item {item_id!r}"}, status=404)
        body: dict[str, Any] = {"item": item_id, "in_model": known}
        if title is not None:
            body.update(title=title, genres=list(catalog[item_id].get("genres") or ()))
        return self.json(body)


@blueprint.route("/metrics", name="metrics")
class Metrics(Base):
    async def get(self, request: Request) -> Response:
        return self.text(
            generate_latest(metrics.REGISTRY).decode(), content_type="text/plain; version=0.0.4"
        )


def user_body(
    runtime: Runtime, request: Request, user_id: str, hashes: np.ndarray | None
) -> dict[str, Any]:
    """The ``/users/{id}/`` answer: a page of seen items (newest first) and a fresh reply.

    ``hashes`` (the user's seen-items row, :mod:`models.seen`) is None on a trainer (it
    holds no seen-items table): nothing is excluded. The table keeps hashes; the ids
    shown are those the served model knows.
    """
    holder, catalog = runtime.holder, runtime.catalog_rows
    limit, offset = page_of(request)
    k = _k(request, runtime.settings.default_k)
    try:
        rec_request = parse_request(
            {"request_id": "web", "user": user_id, "k": k, "exclude_seen": hashes is not None}
        )
    except InvalidEvent as exc:
        raise BadQuery(str(exc)) from None
    body: dict[str, Any] = {"user": user_id, "limit": limit, "offset": offset}
    if hashes is None:
        body.update(seen=None, seen_total=None, titles={})
        hashes = decode_row(None)
    else:
        view = holder.view
        newest_first = hashes[::-1][offset : offset + limit]
        page = [] if view is None else holder.item_index(view).items(newest_first)
        body.update(seen=page, seen_total=len(hashes), titles=_titles(catalog, page))
    body["recommendation"] = reply_for(rec_request, holder, hashes, catalog=catalog).to_dict()
    return body


@blueprint.route("/users/{user_id}/", name="user")
class User(Base):
    """A user's seen items and a fresh reply, answered by the worker that owns the user's
    ``seen-items`` partition (Faust's router forwards it there, as ``app.table_route``
    does); a trainer holds no seen-items table and answers itself, excluding nothing."""

    async def get(self, request: Request, user_id: str) -> Response:
        runtime = self.runtime
        seen = runtime.seen
        if seen is None:
            return self.json(user_body(runtime, request, user_id, None))
        page_of(request)  # refuse a bad query here, before routing it
        # Faust's router hashes the key with the producer's metadata, which may not know
        # the changelog topic yet (TypeError in aiokafka's _partition); fetch it first.
        await self.app.producer._ensure_producer().partitions_for(seen.changelog)  # type: ignore[attr-defined]
        try:
            return await self.app.router.route_req(seen.table.name, user_id, self.web, request)
        except SameNode:
            return self.json(user_body(runtime, request, user_id, decode_row(seen.get(user_id))))


def experiments_body(runtime: Runtime, name: str | None = None) -> dict[str, Any] | None:
    """The ``/experiments/`` answer: every experiment (or ``name``'s; None if unknown) with
    its newest published tally, per variant hit-rate and interval, the guardrail's verdict,
    the curve of both hit-rates, and what this worker serves for it."""
    parts = runtime.experiments
    if parts is None:
        return {"experiments": []}
    experiments = parts.registry.all()
    if name is not None:
        experiments = [e for e in experiments if e.name == name]
        if not experiments:
            return None
    docs = []
    for experiment in experiments:
        doc = experiment_summary(experiment, parts.results.newest.get(experiment.name))
        doc["curve"] = parts.results.curve(experiment.name, experiment.start)
        if parts.serving is not None:
            doc["serving"] = {
                side: parts.serving.missing(getattr(experiment, side)) or "ready"
                for side in ("control", "candidate")
            }
        docs.append(doc)
    body: dict[str, Any] = {"experiments": docs}
    if parts.registry.refused:
        body["refused"] = dict(parts.registry.refused)
        body["last_refusal"] = parts.registry.last_refusal
    return body


@blueprint.route("/experiments/", name="experiments")
class Experiments(Base):
    async def get(self, request: Request) -> Response:
        body = experiments_body(self.runtime, request.query.get("name"))
        if body is None:
            return self.json({"error": "no such experiment"}, status=404)
        return self.json(body)
