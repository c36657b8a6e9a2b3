"""Server-sent events as OpenAI clients read them: `data: {json}` events, an error event when a
generation fails mid-stream, and `data: [DONE]` at the end, whoever ends the stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
from sse_starlette import EventSourceResponse

from ..serving.errors import ServingError
from .errors import openai_body

DONE = "[DONE]"


def error_data(error: ServingError) -> str:
    return json.dumps(openai_body(error))


def closing_bytes(error: ServingError) -> bytes:
    """What ends a stream cut from outside the route (the engine watchdog): the error, then [DONE]."""
    return f"data: {error_data(error)}\n\ndata: {DONE}\n\n".encode()


def event_stream(data: AsyncIterator[str], graceful_timeout: int) -> EventSourceResponse:
    # On SIGTERM, sse-starlette would cut open streams at once; a grace period just under the server's
    # own lets in-flight generations finish (they are bounded by max_tokens) while the server drains.
    grace = max(graceful_timeout - 5, 1)
    return EventSourceResponse(data, sep="\n", ping=15, shutdown_event=anyio.Event(), shutdown_grace_period=grace)
