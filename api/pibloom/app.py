"""The FastAPI application factory. Nothing is loaded at import time: the lifespan loads the model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from . import __version__
from .errors import install_error_handlers
from .metrics import Metrics
from .middleware import install_middleware
from .openapi_errors import document_errors
from .routes import chat, health, metrics, openai, score
from .runtime import Runtime
from .settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the app. Pass `runtime` (with a model already attached) to skip loading, as tests do."""
    settings = settings or Settings()
    runtime = runtime or Runtime(settings, Metrics())
    owns_model = runtime.loaded is None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(runtime.start()) if owns_model else None
        try:
            yield
        finally:
            if loader is not None and not loader.done():
                loader.cancel()
            await runtime.drain(settings.graceful_timeout)

    app = FastAPI(
        title="piBLOOM",
        version=__version__,
        description="A chat and completion API for one small language model, with continuous batching. "
        "OpenAI-compatible under /v1.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.api_keys = settings.all_api_keys()
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(openai.router)
    app.include_router(openai.inference)
    app.include_router(score.router)
    app.include_router(health.router)
    if settings.metrics_port is None:  # else gunicorn's master serves it on that port alone
        app.include_router(metrics.router)
    # CORS, limits, request ids, access log and metrics: one place, one order.
    install_middleware(app, settings, runtime, app.state.api_keys)
    document_errors(app)
    return app
