"""Typed FastAPI dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..serving.errors import ErrorKind, ServingError
from ..serving.service import Service
from .auth import KeyRing, bearer_token


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


def require_api_key(request: Request) -> None:
    """Bearer-token check on inference routes; a no-op when no keys are configured."""
    keys: KeyRing = request.app.state.api_keys
    if keys and not keys.matches(bearer_token(request.headers.get("authorization"))):
        raise ServingError(
            ErrorKind.UNAUTHORIZED,
            "Missing or invalid API key (send 'Authorization: Bearer <key>')",
            code="invalid_api_key",
        )


ApiKey = Depends(require_api_key)


def require_metrics_key(request: Request, service: ServiceDep) -> None:
    """The API key check on /metrics, only when PIBLOOM_METRICS_REQUIRE_KEY is on."""
    if service.settings.metrics_require_key:
        require_api_key(request)


MetricsKey = Depends(require_metrics_key)
