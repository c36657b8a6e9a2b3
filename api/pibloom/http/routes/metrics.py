"""Prometheus exposition (requests are timed by the request-id middleware); absent from the main port
when PIBLOOM_METRICS_PORT serves it on a port of its own."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ...observability.exposition import render
from ..deps import MetricsKey
from ..openapi import Detail

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
    registry = request.app.state.service.metrics.registry
    return Response(render(registry), media_type=CONTENT_TYPE_LATEST)
