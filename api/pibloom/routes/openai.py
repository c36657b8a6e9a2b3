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
from ..errors import bad_request, error_body
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
from .logprobs import TokenText, chat_logprobs, completion_logprobs
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
    with_logprobs: bool = False,
) -> EventSourceResponse:
    """Stream `events` as OpenAI SSE chunks; `render(event, usage)` builds one chunk's JSON."""

    async def body() -> AsyncIterator[str]:
        event: Event | None = first
        generated = 0
        try:
            while event is not None:
                generated = event.generated
                if event.finish_reason == "error":
                    failure = runtime.generation_error(event)
                    yield json.dumps(error_body(failure.message, failure.type, failure.code))
                    break
                usage = None
                if event.finish_reason is not None and not include_usage:
                    usage = _usage(len(prompt_ids), generated)
                if event.text or event.finish_reason is not None or (with_logprobs and event.generated):
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
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    prompt = runtime.chat_prompt(body.messages)
    want = (body.top_logprobs or 0) if body.logprobs else None
    params = runtime.sampling(body, len(prompt), logprobs=want)
    names = TokenText(runtime.tokenizer)
    if not body.stream:
        result = await until_disconnect(request, runtime.complete(prompt, params))
        choice = ChatChoice(message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)
        if want is not None:
            choice.logprobs = chat_logprobs(result.logprobs, names)
        return ChatCompletion(
            model=runtime.model_name,
            choices=[choice],
            usage=_usage(result.prompt_tokens, result.completion_tokens),
        )
    events, first = await _start(runtime, prompt, params)
    chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    sent_role = False
    counted = 0

    def render(event: Event | None, usage: Usage | None) -> str:
        nonlocal sent_role, counted
        choices = []
        if event is not None:
            delta = DeltaMessage(content=event.text)
            if not sent_role:
                delta.role, sent_role = "assistant", True
            choice = ChatChunkChoice(delta=delta, finish_reason=_finish(event))
            if want is not None and event.logprobs and event.generated > counted:
                choice.logprobs = chat_logprobs(event.logprobs, names)
            counted = event.generated
            choices.append(choice)
        chunk = ChatCompletionChunk(
            id=chunk_id, created=created, model=runtime.model_name, choices=choices, usage=usage
        )
        return chunk.model_dump_json(exclude_none=False)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return _sse(runtime, prompt, params, events, first, render, include_usage, want is not None)


@inference.post(
    "/completions",
    response_model=Completion,
    summary="Text completion (OpenAI); `stream: true` for server-sent events",
)
async def completions(body: CompletionRequest, request: Request, runtime: RuntimeDep):
    runtime.check_model(body.model)
    prompt = runtime.text_prompt(body.prompt)
    echo = body.echo
    params = runtime.sampling(
        body,
        len(prompt),
        default_max=COMPLETIONS_DEFAULT_MAX,
        logprobs=body.logprobs,
        prompt_logprobs=echo and body.logprobs is not None,
    )
    names = TokenText(runtime.tokenizer)
    prompt_text = runtime.tokenizer.decode(prompt) if echo else ""
    if not body.stream:
        result = await until_disconnect(request, runtime.complete(prompt, params))
        choice = CompletionChoice(text=prompt_text + result.text, finish_reason=result.finish_reason)
        if body.logprobs is not None:
            echoed = (prompt, result.prompt_logprobs) if echo else None
            choice.logprobs = completion_logprobs(result.logprobs, names, 0, echoed)
        return Completion(
            model=runtime.model_name,
            choices=[choice],
            usage=_usage(result.prompt_tokens, result.completion_tokens),
        )
    events, first = await _start(runtime, prompt, params)
    chunk_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    offset = 0
    counted = 0
    echoed_yet = False

    def render(event: Event | None, usage: Usage | None) -> str:
        nonlocal offset, counted, echoed_yet
        choices = []
        if event is not None:
            text = event.text
            echoed = None
            if echo and not echoed_yet:
                echoed_yet = True
                text = prompt_text + text
                if event.prompt_logprobs is not None:
                    echoed = (prompt, event.prompt_logprobs)
            choice = CompletionChoice(text=text, finish_reason=_finish(event))
            if body.logprobs is not None:
                fresh = event.logprobs if event.logprobs and event.generated > counted else []
                choice.logprobs = completion_logprobs(fresh, names, offset, echoed)
            counted = event.generated
            offset += len(text)
            choices.append(choice)
        chunk = Completion(id=chunk_id, created=created, model=runtime.model_name, choices=choices, usage=usage)
        return chunk.model_dump_json()

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return _sse(runtime, prompt, params, events, first, render, include_usage, body.logprobs is not None)


def _finish(event: Event) -> str | None:
    # "cancelled" never reaches a client that is still listening; report anything else as OpenAI does.
    return event.finish_reason
