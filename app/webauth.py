"""The web views' bearer token: with STREAMREC_WEB_TOKEN (or _FILE) set, every view answers
only a request that carries ``Authorization: Bearer <token>``, except the open ones below.

Default-deny: the check is an aiohttp middleware over every route of the worker's web server
(streamrec's views, Faust's own ``/router/``, ``/stats/`` ..., and unknown paths, which get
401 rather than revealing what exists). Open, because they hold no user data, no lineage and
no ratings, and because what calls them cannot send a token:

- ``/health/``: the liveness/readiness probes (Kubernetes, the image's HEALTHCHECK);
- ``/metrics``: the Prometheus scrape (counters by topic, kind and role; no ids);
- ``/`` and ``/static/{name}``: the dashboard page and its assets (the page asks for the
  token and sends it with its API calls, app/static/dashboard.js).

Faust's table routing (``/users/{id}/`` on a worker that does not own the user) forwards the
client's headers, the token included, to the owner; every worker has the same token.
Unset, the views stay open (a developer machine); a worker that binds a non-loopback
address without a token logs one warning.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable

import faust
from aiohttp import web
from prometheus_client import Counter

from agents import metrics
from app.settings import Settings, web_token_of

log = logging.getLogger(__name__)

OPEN_ROUTES = frozenset({"/", "/static/{name}", "/health/", "/metrics"})
"""Route patterns that need no token (see the module docstring for why)."""
REALM = 'Bearer realm="streamrec"'

UNAUTHORIZED = Counter(
    "streamrec_web_unauthorized_total",
    "Web requests refused for a missing or wrong bearer token",
    ["reason"],
    registry=metrics.REGISTRY,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_matches(header: str | None, token: bytes) -> bool:
    """Whether an ``Authorization`` header value carries ``token`` (constant-time compare).

    Never raises, whatever the header holds (any unicode, lone surrogates included).
    """
    if header is None:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"), token)


def is_loopback(bind: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def require_token(token: bytes) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The aiohttp middleware: 401 with ``WWW-Authenticate: Bearer`` and a JSON error body
    unless the route is open or the request carries ``token``."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is not None and resource.canonical in OPEN_ROUTES:
            return await handler(request)
        header = request.headers.get("Authorization")
        if bearer_matches(header, token):
            return await handler(request)
        reason = "missing" if header is None else "invalid"
        UNAUTHORIZED.labels(reason).inc()
        challenge = REALM if header is None else f'{REALM}, error="invalid_token"'
        return web.json_response(
            {"error": f"{reason} bearer token (send Authorization: Bearer <STREAMREC_WEB_TOKEN>)"},
            status=401,
            headers={"WWW-Authenticate": challenge, "Cache-Control": "no-store"},
        )

    return middleware


def install(app: faust.App, settings: Settings) -> None:
    """Guard ``app``'s web server with the settings' token (none: open, maybe a warning)."""
    token = web_token_of(settings)
    if token is None:
        if not is_loopback(settings.web_bind):
            log.warning(
                "The web views on %s:%s are open to anyone who can reach them (user "
                "histories at /users/{id}/, model lineage at /model/): set STREAMREC_WEB_TOKEN "
                "or STREAMREC_WEB_TOKEN_FILE",
                settings.web_bind,
                settings.web_port,
            )
        return
    app.web.web_app.middlewares.append(require_token(token))  # type: ignore[attr-defined]
    log.info("The web views need a bearer token (open: %s)", ", ".join(sorted(OPEN_ROUTES)))
