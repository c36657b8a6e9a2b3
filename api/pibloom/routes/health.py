"""Liveness and readiness: piBLOOM's /health/* and the Triton / KServe v2 probes."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import RuntimeDep
from ..protocol import Health

router = APIRouter(tags=["health"])


def _health(runtime: RuntimeDep, response: Response, ok: bool) -> Health:
    if not ok:
        response.status_code = 503
        response.headers["Retry-After"] = str(runtime.settings.retry_after_seconds)
    return Health(status=runtime.status(), model=runtime.model_name, detail=runtime.load_error)


@router.get("/health/live", response_model=Health, summary="Liveness: the process and its engine work")
async def live(runtime: RuntimeDep, response: Response) -> Health:
    return _health(runtime, response, runtime.live)


@router.get("/health/ready", response_model=Health, summary="Readiness: the model is loaded, not draining")
async def ready(runtime: RuntimeDep, response: Response) -> Health:
    return _health(runtime, response, runtime.ready)


@router.get("/v2/health/live", summary="KServe v2 liveness")
async def v2_live(runtime: RuntimeDep, response: Response) -> dict[str, bool]:
    response.status_code = 200 if runtime.live else 503
    return {"live": runtime.live}


@router.get("/v2/health/ready", summary="KServe v2 readiness")
async def v2_ready(runtime: RuntimeDep, response: Response) -> dict[str, bool]:
    response.status_code = 200 if runtime.ready else 503
    return {"ready": runtime.ready}


@router.get("/v2/models/{name}/ready", summary="KServe v2 model readiness")
async def v2_model_ready(name: str, runtime: RuntimeDep, response: Response) -> dict[str, object]:
    known = name in {runtime.model_name, runtime.model_name.split("/")[-1]}
    if not known:
        response.status_code = 404
        return {
            "name": name,
            "ready": False,
            "error": f"unknown model; this server serves {runtime.model_name}",
        }
    response.status_code = 200 if runtime.ready else 503
    return {"name": name, "ready": runtime.ready}
