"""Faust web views: JSON windows onto what each worker holds.

``/users/{id}/`` is routed (``app.table_route``) to the worker that owns the user's
``seen-items`` partition, so it answers from any worker (a plain table view would return
nothing on non-owners; Faust issue 187).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

import faust
from faust.web import Request, Response, View
from prometheus_client import generate_latest

from agents import metrics
from agents.scorer import reply_for
from models.events import InvalidEvent, parse_request

if TYPE_CHECKING:
    from app.service import Runtime


def _k(request: Request, default: int) -> int:
    try:
        k = int(request.query.get("k", default))
    except ValueError:
        return default
    return max(1, min(k, 1000))


def _age_seconds(stamp: float | str | None) -> float | None:
    """Seconds since ``stamp`` (unix seconds or an ISO 8601 string), or None."""
    if isinstance(stamp, str):
        try:
            stamp = dt.datetime.fromisoformat(stamp).timestamp()
        except ValueError:
            return None
    return None if stamp is None else round(time.time() - stamp, 3)


def register(app: faust.App, runtime: Runtime) -> None:
    holder = runtime.holder

    @app.page("/health/")
    class Health(View):
        async def get(self, request: Request) -> Response:
            view = holder.view
            body = {
                "status": "ok" if view is not None else "starting",
                "role": runtime.role,
                "model_version": None if view is None else view.version,
                "rebalancing": bool(app.rebalancing),
                "partitions": sorted(
                    f"{tp.topic}:{tp.partition}" for tp in app.consumer.assignment()
                ),
            }
            return self.json(body, status=200 if view is not None else 503)

    @app.page("/model/")
    class Model(View):
        async def get(self, request: Request) -> Response:
            info = dict(holder.info)
            age = _age_seconds(info.get("created_at") or (info.get("snapshot") or {}).get("at"))
            if age is not None:
                info["snapshot_age_seconds"] = age
            info["role"] = runtime.role
            info["loaded_at"] = holder.loaded_at
            return self.json(info, status=200 if holder.ready else 503)

    @app.page("/items/popular/")
    class Popular(View):
        async def get(self, request: Request) -> Response:
            view = holder.view
            if view is None:
                return self.json({"error": "no model loaded yet"}, status=503)
            items = [
                {"item": s.item, "score": float(s.score)} for s in view.popular(_k(request, 10))
            ]
            return self.json({"model_version": view.version, "items": items})

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.text(
                generate_latest(metrics.REGISTRY).decode(), content_type="text/plain; version=0.0.4"
            )

    if runtime.seen is None:
        return
    seen = runtime.seen

    changelog = seen.changelog_topic.get_topic_name()

    @app.page("/users/{user_id}/")
    class User(View):
        async def get(self, request: Request, user_id: str) -> Response:
            # Faust's router hashes the key with the producer's metadata, which may not know
            # the changelog topic yet (TypeError in aiokafka's _partition); fetch it first.
            await app.producer._ensure_producer().partitions_for(changelog)
            return await self.routed(request, user_id=user_id)

        @app.table_route(table=seen, match_info="user_id")
        async def routed(self, request: Request, user_id: str) -> Response:
            k = _k(request, runtime.settings.default_k)
            try:
                rec_request = parse_request(
                    {"request_id": "web", "user": user_id, "k": k, "exclude_seen": True}
                )
            except InvalidEvent as exc:
                return self.json({"error": str(exc)}, status=400)
            items = list(seen.get(user_id) or ())
            body: dict[str, Any] = {"user": user_id, "seen": items}
            body["recommendation"] = reply_for(rec_request, holder, items).to_dict()
            return self.json(body)
