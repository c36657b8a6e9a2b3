"""Prometheus exposition, and the middleware that times every HTTP request."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..deps import MetricsKey
from ..metrics import Metrics
from ..openapi_errors import Detail

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[MetricsKey],
    responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
        401: {"description": "API key missing or invalid (with PIBLOOM_METRICS_REQUIRE_KEY)", "model": Detail},
    },
)
async def metrics(request: Request) -> Response:
    registry = request.app.state.runtime.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class RequestMetricsMiddleware:
    """Pure ASGI (no response buffering), so streams pass through and disconnects still propagate."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # The route template, never the raw path, keeps label cardinality bounded.
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.request_latency.labels(path, scope["method"], str(status)).observe(time.perf_counter() - start)
