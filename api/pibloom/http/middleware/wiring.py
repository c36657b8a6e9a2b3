"""Adds the middleware to an app in the one order that works (see the package docstring)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ...settings import Settings
from ..auth import KeyRing
from .bodylimit import BodyLimitMiddleware
from .clients import TrustedProxies
from .promptlog import PromptLogMiddleware
from .ratelimit import RateLimitMiddleware, TokenBuckets
from .requestid import RequestIdMiddleware
from .shared_ratelimit import Limiter, SharedLimiter
from .watchdog import EngineWatchdogMiddleware

if TYPE_CHECKING:  # the engine side imports torch: not at import time
    from ...serving.lifecycle import ModelHost


def install_middleware(app: FastAPI, settings: Settings, host: ModelHost, api_keys: KeyRing) -> None:
    trusted = TrustedProxies(settings.trusted_proxies)
    # Starlette runs the middleware added last first, so this list is written innermost first.
    if settings.log_prompts:
        app.add_middleware(PromptLogMiddleware)
    app.add_middleware(EngineWatchdogMiddleware, host=host)
    spec = settings.rate_limit_spec()
    if spec is not None:
        count, seconds = spec
        buckets: Limiter = TokenBuckets(count / seconds, settings.rate_limit_burst or count)
        if settings.rate_limit_storage:
            buckets = SharedLimiter(settings.rate_limit_storage, count, seconds, metrics=host.metrics)
        app.add_middleware(
            RateLimitMiddleware, buckets=buckets, trusted=trusted, api_keys=api_keys, metrics=host.metrics
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        # Outside the limits, so a browser can read their 413 / 429 answers.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(RequestIdMiddleware, trusted=trusted, access=settings.access_log, metrics=host.metrics)
