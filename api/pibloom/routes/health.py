"""Liveness and readiness: piBLOOM's /health/* and the Triton / KServe v2 probes."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel

from ..deps import RuntimeDep
from ..protocol import Health

router = APIRouter(tags=["health"])


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool
    error: str | None = None


def _unavailable(model: type[BaseModel], what: str) -> dict[int | str, dict[str, object]]:
    return {503: {"model": model, "description": what}}


_NOT_LIVE = "The engine thread died or the model failed to load: restart the process"
_NOT_READY = "Loading, draining or failed: send no traffic (see Retry-After)"


def _health(runtime: RuntimeDep, response: Response, ok: bool) -> Health:
    if not ok:
        response.status_code = 503
        response.headers["Retry-After"] = str(runtime.settings.retry_after_seconds)
    return Health(status=runtime.status(), model=runtime.model_name, detail=runtime.load_error)


@router.get(
    "/health/live",
    response_model=Health,
    summary="Liveness: the process and its engine work",
    responses=_unavailable(Health, _NOT_LIVE),
)
async def live(runtime: RuntimeDep, response: Response) -> Health:
    return _health(runtime, response, runtime.live)


@router.get(
    "/health/ready",
    response_model=Health,
    summary="Readiness: the model is loaded, not draining",
    responses=_unavailable(Health, _NOT_READY),
)
async def ready(runtime: RuntimeDep, response: Response) -> Health:
    return _health(runtime, response, runtime.ready)


@router.get("/v2/health/live", summary="KServe v2 liveness", responses=_unavailable(V2Live, _NOT_LIVE))
async def v2_live(runtime: RuntimeDep, response: Response) -> V2Live:
    response.status_code = 200 if runtime.live else 503
    return V2Live(live=runtime.live)


@router.get("/v2/health/ready", summary="KServe v2 readiness", responses=_unavailable(V2Ready, _NOT_READY))
async def v2_ready(runtime: RuntimeDep, response: Response) -> V2Ready:
    response.status_code = 200 if runtime.ready else 503
    return V2Ready(ready=runtime.ready)


@router.get(
    "/v2/models/{name}/ready",
    summary="KServe v2 model readiness",
    response_model_exclude_none=True,
    responses={**_unavailable(V2ModelReady, _NOT_READY), 404: {"model": V2ModelReady, "description": "Unknown"}},
)
async def v2_model_ready(name: str, runtime: RuntimeDep, response: Response) -> V2ModelReady:
    known = name in {runtime.model_name, runtime.model_name.split("/")[-1]}
    if not known:
        response.status_code = 404
        return V2ModelReady(name=name, ready=False, error=f"unknown model; this server serves {runtime.model_name}")
    response.status_code = 200 if runtime.ready else 503
    return V2ModelReady(name=name, ready=runtime.ready)
