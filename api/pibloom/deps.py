"""Typed FastAPI dependencies shared by the routers."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from .errors import APIError
from .runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require_api_key(request: Request, runtime: RuntimeDep) -> None:
    """Bearer-token check on inference routes; a no-op when no keys are configured."""
    keys: list[str] = request.app.state.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    # Compare against every key in constant time, so timing reveals neither which key nor how much matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token.strip().encode(), key.encode())
    if scheme.lower() != "bearer" or not matched:
        raise APIError(
            401,
            "Missing or invalid API key (send 'Authorization: Bearer <key>')",
            type="authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


ApiKey = Depends(require_api_key)


def require_metrics_key(request: Request, runtime: RuntimeDep) -> None:
    """The API key check on /metrics, only when PIBLOOM_METRICS_REQUIRE_KEY is on."""
    if runtime.settings.metrics_require_key:
        require_api_key(request, runtime)


MetricsKey = Depends(require_metrics_key)
