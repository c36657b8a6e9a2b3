"""`POST /v1/chat/completions` (OpenAI)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...serving.errors import bad_request
from ..deps import ApiKey, ServiceDep
from ..fields import screen
from ..protocol.chat import ChatCompletion, ChatCompletionRequest
from ..render.chat import ChatRenderer
from ..render.logprobs import TokenText
from ..respond import respond

router = APIRouter(prefix="/v1", tags=["OpenAI"], dependencies=[ApiKey])


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    summary="Chat completion (OpenAI); `stream: true` for server-sent events",
)
async def chat_completions(body: ChatCompletionRequest, request: Request, service: ServiceDep):
    screen(body, strict=service.settings.strict_fields)
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    tools, sampling = body.tool_request(), body.sampling()
    await service.structured_ready(sampling, tools)
    generation = service.chat(body.messages, sampling, model=body.model, logprobs=logprobs, tools=tools)
    renderer = ChatRenderer(service.model_name, TokenText(service.tokenizer), logprobs, tools)
    return await respond(
        request,
        generation,
        renderer,
        stream=body.stream,
        include_usage=body.include_usage(),
        graceful_timeout=service.settings.graceful_timeout,
    )
