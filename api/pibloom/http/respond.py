"""The one skeleton of every generating route: collect and render one answer, or stream rendered
chunks as server-sent events (usage at the end when asked, an error event if generation fails,
`[DONE]` last). Overload is answered (503) before a stream starts."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from ..serving.execute import Generation, Started
from .disconnect import until_disconnect
from .protocol.common import Usage
from .render.base import Renderer
from .sse import DONE, error_data, event_stream


async def respond(
    request: Request,
    generation: Generation,
    renderer: Renderer,
    *,
    stream: bool,
    include_usage: bool,
    graceful_timeout: int,
) -> BaseModel | EventSourceResponse:
    if not stream:
        return renderer.whole(await until_disconnect(request, generation.collect()))
    started = await generation.start()
    return event_stream(_chunks(generation, started, renderer, include_usage), graceful_timeout)


async def _chunks(
    generation: Generation, started: Started, renderer: Renderer, include_usage: bool
) -> AsyncIterator[str]:
    prompt = generation.prompt_tokens
    event = started.first
    generated: dict[int, int] = {}  # per choice
    open_choices = generation.params.n
    try:
        while event is not None:
            generated[event.index] = event.generated
            if event.finish_reason == "error":
                yield error_data(generation.failure(event))
                break
            finished = event.finish_reason is not None
            open_choices -= finished
            last = not open_choices
            usage = Usage.of(prompt, sum(generated.values())) if last and not include_usage else None
            if event.text or finished or (renderer.with_logprobs and event.generated):
                chunk = renderer.chunk(event, usage)
                if chunk is not None:
                    yield chunk
            if last:
                break
            event = await anext(started.rest, None)
        if include_usage:
            chunk = renderer.chunk(None, Usage.of(prompt, sum(generated.values())))
            if chunk is not None:
                yield chunk
        yield DONE
    finally:
        await started.aclose()
