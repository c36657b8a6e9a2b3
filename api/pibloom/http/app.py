"""The FastAPI application factory. Nothing is loaded at import time: the lifespan loads the model."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from .. import __version__
from ..serving.lifecycle import ModelHost
from ..serving.service import Service
from ..settings import Settings
from .auth import KeyRing
from .errors import install_error_handlers
from .middleware.wiring import install_middleware
from .openapi import document_errors
from .routes import chat, chat_completions, completions, health, metrics, models, scoring, tokenize


def create_app(settings: Settings | None = None, host: ModelHost | None = None) -> FastAPI:
    """Build the app. Pass `host` (with a model already attached) to skip loading, as tests do."""
    settings = settings or Settings()
    host = host or ModelHost(settings)
    owns_model = host.loaded is None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(host.start()) if owns_model else None
        try:
            yield
        finally:
            if loader is not None and not loader.done():
                loader.cancel()
            await host.drain(settings.graceful_timeout)

    app = FastAPI(
        title="piBLOOM",
        version=__version__,
        description="A chat and completion API for one small language model, with continuous batching. "
        "OpenAI-compatible under /v1.",
        lifespan=lifespan,
    )
    app.state.service = Service(host)
    app.state.api_keys = KeyRing(settings.all_api_keys())
    install_error_handlers(app)
    for module in (chat, models, chat_completions, completions, scoring, tokenize, health):
        app.include_router(module.router)
    if settings.metrics_port is None:  # else gunicorn's master serves it on that port alone
        app.include_router(metrics.router)
    # CORS, limits, request ids, access log and metrics: one place, one order.
    install_middleware(app, settings, host, app.state.api_keys)
    document_errors(app)
    return app
