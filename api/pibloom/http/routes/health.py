"""Liveness and readiness: piBLOOM's /health/* and the Triton / KServe v2 probes."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel

from ..deps import ServiceDep
from ..protocol.models import Health, V2Live, V2ModelReady, V2Ready

router = APIRouter(tags=["health"])


def _unavailable(model: type[BaseModel], what: str) -> dict[int | str, dict[str, object]]:
    return {503: {"model": model, "description": what}}


_NOT_LIVE = "The engine thread died or the model failed to load: restart the process"
_NOT_READY = "Loading, draining or failed: send no traffic (see Retry-After)"


def _probe(service: ServiceDep, response: Response, ok: bool) -> bool:
    """503 with Retry-After when the probe fails (the same header every 503 of the api carries)."""
    if not ok:
        response.status_code = 503
        response.headers["Retry-After"] = str(service.host.retry_after)
    return ok


def _health(service: ServiceDep, response: Response, ok: bool) -> Health:
    _probe(service, response, ok)
    host = service.host
    return Health(status=host.status(), model=host.model_name, detail=host.load_error)


@router.get(
    "/health/live",
    response_model=Health,
    summary="Liveness: the process and its engine work",
    responses=_unavailable(Health, _NOT_LIVE),
)
async def live(service: ServiceDep, response: Response) -> Health:
    return _health(service, response, service.host.live)


@router.get(
    "/health",
    response_model=Health,
    summary="Bare health check as vLLM, TGI and llama-server answer it: 200 when ready to serve, else 503",
    responses=_unavailable(Health, _NOT_READY),
)
async def bare_health(service: ServiceDep, response: Response) -> Health:
    return _health(service, response, service.host.ready)


@router.get(
    "/health/ready",
    response_model=Health,
    summary="Readiness: the model is loaded, not draining",
    responses=_unavailable(Health, _NOT_READY),
)
async def ready(service: ServiceDep, response: Response) -> Health:
    return _health(service, response, service.host.ready)


@router.get("/v2/health/live", summary="KServe v2 liveness", responses=_unavailable(V2Live, _NOT_LIVE))
async def v2_live(service: ServiceDep, response: Response) -> V2Live:
    return V2Live(live=_probe(service, response, service.host.live))


@router.get("/v2/health/ready", summary="KServe v2 readiness", responses=_unavailable(V2Ready, _NOT_READY))
async def v2_ready(service: ServiceDep, response: Response) -> V2Ready:
    return V2Ready(ready=_probe(service, response, service.host.ready))


@router.get(
    "/v2/models/{name}/ready",
    summary="KServe v2 model readiness",
    response_model_exclude_none=True,
    responses={**_unavailable(V2ModelReady, _NOT_READY), 404: {"model": V2ModelReady, "description": "Unknown"}},
)
async def v2_model_ready(name: str, service: ServiceDep, response: Response) -> V2ModelReady:
    host = service.host
    if not host.serves(name):
        response.status_code = 404
        return V2ModelReady(name=name, ready=False, error=f"unknown model; this server serves {host.model_name}")
    return V2ModelReady(name=name, ready=_probe(service, response, host.ready))
