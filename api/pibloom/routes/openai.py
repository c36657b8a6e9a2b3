"""The OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable

import anyio
from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from ..deps import ApiKey, RuntimeDep
from ..engine.request import Event, SamplingParams
from ..errors import error_body
from ..protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    DeltaMessage,
    ModelCard,
    ModelList,
    Usage,
)
from ..runtime import Runtime
from .streaming import until_disconnect

router = APIRouter(prefix="/v1", tags=["OpenAI"])
inference = APIRouter(prefix="/v1", tags=["OpenAI"], dependencies=[ApiKey])

# OpenAI's default for /v1/completions when max_tokens is not given.
COMPLETIONS_DEFAULT_MAX = 16


@router.get("/models", response_model=ModelList, summary="The served model")
async def list_models(runtime: RuntimeDep) -> ModelList:
    max_len = runtime.loaded.max_context if runtime.loaded else 0
    return ModelList(data=[ModelCard(id=runtime.model_name, created=runtime.created, max_model_len=max_len)])


def _usage(prompt: int, completion: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _sse(
    runtime: Runtime,
    prompt_ids: list[int],
    params: SamplingParams,
    events: AsyncIterator[Event],
    first: Event,
    render: Callable[[Event | None, Usage | None], str],
    include_usage: bool,
) -> EventSourceResponse:
    """Stream `events` as OpenAI SSE chunks; `render(event, usage)` builds one chunk's JSON."""

    async def body() -> AsyncIterator[str]:
        event: Event | None = first
        generated = 0
        try:
            while event is not None:
                generated = event.generated
                if event.finish_reason == "error":
                    yield json.dumps(error_body(event.error or "generation failed", "server_error", None))
                    break
                usage = None
                if event.finish_reason is not None and not include_usage:
                    usage = _usage(len(prompt_ids), generated)
                if event.text or event.finish_reason is not None:
                    yield render(event, usage)
                if event.finish_reason is not None:
                    break
                event = await anext(events, None)
            if include_usage:
                yield render(None, _usage(len(prompt_ids), generated))
            yield "[DONE]"
        finally:
            await events.aclose()

    # On SIGTERM, sse-starlette would cut open streams at once; a grace period just under the server's
    # own lets in-flight generations finish (they are bounded by max_tokens) while the server drains.
    grace = max(runtime.settings.graceful_timeout - 5, 1)
    return EventSourceResponse(body(), sep="\n", ping=15, shutdown_event=anyio.Event(), shutdown_grace_period=grace)


async def _start(runtime: Runtime, prompt_ids: list[int], params: SamplingParams):
    """Submit and wait for the first event, so overload answers 503 before any SSE header is sent."""
    events = runtime.stream(prompt_ids, params)
    first = await anext(events)
    return events, first


@inference.post(
    "/chat/completions",
    response_model=ChatCompletion,
    summary="Chat completion (OpenAI); `stream: true` for server-sent events",
)
async def chat_completions(body: ChatCompletionRequest, request: Request, runtime: RuntimeDep):
    runtime.check_model(body.model)
    prompt = runtime.chat_prompt(body.messages)
    params = runtime.sampling(body, len(prompt))
    if not body.stream:
        result = await until_disconnect(request, runtime.complete(prompt, params))
        return ChatCompletion(
            model=runtime.model_name,
            choices=[ChatChoice(message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)],
            usage=_usage(result.prompt_tokens, result.completion_tokens),
        )
    events, first = await _start(runtime, prompt, params)
    chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    sent_role = False

    def render(event: Event | None, usage: Usage | None) -> str:
        nonlocal sent_role
        choices = []
        if event is not None:
            delta = DeltaMessage(content=event.text)
            if not sent_role:
                delta.role, sent_role = "assistant", True
            choices.append(ChatChunkChoice(delta=delta, finish_reason=_finish(event)))
        chunk = ChatCompletionChunk(
            id=chunk_id, created=created, model=runtime.model_name, choices=choices, usage=usage
        )
        return chunk.model_dump_json(exclude_none=False)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return _sse(runtime, prompt, params, events, first, render, include_usage)


@inference.post(
    "/completions",
    response_model=Completion,
    summary="Text completion (OpenAI); `stream: true` for server-sent events",
)
async def completions(body: CompletionRequest, request: Request, runtime: RuntimeDep):
    runtime.check_model(body.model)
    prompt = runtime.text_prompt(body.prompt)
    params = runtime.sampling(body, len(prompt), default_max=COMPLETIONS_DEFAULT_MAX)
    if not body.stream:
        result = await until_disconnect(request, runtime.complete(prompt, params))
        return Completion(
            model=runtime.model_name,
            choices=[CompletionChoice(text=result.text, finish_reason=result.finish_reason)],
            usage=_usage(result.prompt_tokens, result.completion_tokens),
        )
    events, first = await _start(runtime, prompt, params)
    chunk_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def render(event: Event | None, usage: Usage | None) -> str:
        choices = []
        if event is not None:
            choices.append(CompletionChoice(text=event.text, finish_reason=_finish(event)))
        chunk = Completion(id=chunk_id, created=created, model=runtime.model_name, choices=choices, usage=usage)
        return chunk.model_dump_json()

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return _sse(runtime, prompt, params, events, first, render, include_usage)


def _finish(event: Event) -> str | None:
    # "cancelled" never reaches a client that is still listening; report anything else as OpenAI does.
    return event.finish_reason
